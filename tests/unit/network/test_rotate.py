"""Admission-key rotation (a stolen directory host): after it, members that
follow the watch stream keep every current member and every removal, and
refuse whatever the retired key signs, including what a thief signs with it.
And `phantom network rotate` on the authority directory."""

from __future__ import annotations

import pytest

from phantom.network import (MemberSet, Reason, Refused, SigningKey, issue_certificate,
                             make_removal, parse_definition)
from phantom.network import authority as A
from phantom.network import join as J
from phantom.network.rotate import rotate

from .factory import DAY, NOW, Net, seed
from .test_cli import URL, run
from .test_join import Node, invite, run_join


def follow(net, ledger, now):
    ms = MemberSet(net.definition, lambda: now)
    for event in ledger.stream():
        ms.apply(event)
    return ms


def test_after_a_rotation_members_keep_everyone_and_refuse_the_retired_key():
    net = Net(tag="rot")
    ledger = J.MemoryLedger()
    token = invite(net, ledger, uses=4)
    nodes = [Node("r%d" % i) for i in range(4)]
    for i, n in enumerate(nodes):
        run_join(net, ledger, n.request(token, name="r%d" % i))
    J.remove(ledger, net.definition, net.admission, "r3", NOW + 10)
    t = NOW + 100
    before = follow(net, ledger, t)
    seen = ledger.seq
    new = SigningKey(seed("admission:rotated"))
    r = rotate(ledger, net.definition, net.authority, new, t)
    assert (r.reissued, r.resigned, r.definition.seq) == (3, 1, 2)
    assert [a.key for a in r.definition.admission] == [new.public]
    # a member that followed the stream before the rotation applies the rest
    for event in ledger.stream(since=seen):
        before.apply(event)
    assert before.definition == r.definition
    assert sorted(m.name for m in before) == ["r0", "r1", "r2"]
    assert all(m.cert.issuer == new.public for m in before)
    assert all(before.cert(n.key).ipv4 == ledger.member(n.key).cert.ipv4 for n in nodes[:3])
    assert before.is_removed(nodes[3].key)
    # what the thief signs with the stolen key counts nowhere any more
    thief_cert = issue_certificate(net.definition, net.admission, key=Node("thief").key,
                                   name="thief", ipv4="100.87.0.200",
                                   ipv6="fd3c:9a41:7e02::200", serial=99, now=t)
    with pytest.raises(Refused) as info:
        before.apply({"seq": ledger.seq + 1, "op": "member", "cert": thief_cert.doc})
    assert info.value.reason == Reason.UNKNOWN_ISSUER
    forged_removal = make_removal(net.definition, net.admission, nodes[0].key, t)
    with pytest.raises(Refused):
        before.apply({"seq": ledger.seq + 2, "op": "removed", "removal": forged_removal.doc})
    assert nodes[0].key in before
    # a member starting from scratch with the new definition reads the same
    fresh = MemberSet(r.definition, lambda: t)
    for event in ledger.stream():
        try:
            fresh.apply(event)
        except Refused as exc:                # the old events: signed by the retired key
            assert exc.reason == Reason.UNKNOWN_ISSUER
    assert {m.key for m in fresh} == {m.key for m in before}


def test_a_network_event_of_another_authority_is_refused():
    net = Net(tag="rot2")
    ms = MemberSet(net.definition, lambda: NOW)
    with pytest.raises(Refused) as info:
        ms.apply({"seq": 1, "op": "network", "definition": Net(tag="thief").definition.doc})
    assert info.value.reason == Reason.WRONG_AUTHORITY
    # the same definition again (seq not higher): ignored
    assert ms.apply({"seq": 2, "op": "network", "definition": net.definition.doc}) == []
    assert ms.definition == net.definition


def test_phantom_network_rotate(tmp_path, capsys):
    d = tmp_path / "corp"
    assert run(capsys, "init", "corp", "--dir", d, "--directory", URL)[0] == 0
    token = run(capsys, "invite", "--dir", d, "--uses", "2")[1].strip()
    from phantom.network import parse_token
    tok = parse_token(token)
    auth = A.AuthorityDir.open(d)
    with auth.transaction() as ledger:
        J.join(ledger, auth.definition, auth.admission, Node("a").request(tok, name="a"), NOW)
    old_admission = (d / "admission.key").read_bytes()
    # the authority key offline: rotate asks for it
    (d / "authority.key").rename(tmp_path / "offline.key")
    rc, out, err = run(capsys, "rotate", "--dir", d, now=NOW + 60)
    assert rc == 1 and "--authority-key" in err
    rc, out, err = run(capsys, "rotate", "--dir", d, "--authority-key", tmp_path / "offline.key",
                       now=NOW + 60)
    assert rc == 0 and "1 certificate(s) re-issued" in out, err
    assert (d / "admission.key").read_bytes() != old_admission
    defn = parse_definition((d / "network.json").read_bytes(), tok.network)
    assert defn.seq == 2
    auth = A.AuthorityDir.open(d)
    assert [a.key for a in defn.admission] == [auth.admission.public]
    member = auth.read_ledger().member(Node("a").key)
    assert member.cert.issuer == auth.admission.public
    # the old invite still works (invites are the store's, not signed), under the new key
    with auth.transaction() as ledger:
        res = J.join(ledger, auth.definition, auth.admission,
                     Node("b").request(tok, name="b", now=NOW + 60), NOW + 60)
    assert res.certificate.issuer == auth.admission.public
    wrong = tmp_path / "wrong"
    assert run(capsys, "init", "x", "--dir", wrong)[0] == 0
    rc, out, err = run(capsys, "rotate", "--dir", d, "--authority-key", wrong / "authority.key")
    assert rc == 1 and "is not the authority key of network corp" in err


def test_a_rotation_does_not_revive_an_expired_certificate():
    net = Net(tag="rot3", lifetime=DAY)
    ledger = J.MemoryLedger()
    token = invite(net, ledger, uses=2, ttl=10 * DAY)
    run_join(net, ledger, Node("old").request(token, name="old"))
    t = NOW + DAY // 2
    run_join(net, ledger, Node("new").request(token, name="new", now=t), now=t)
    later = NOW + DAY                                       # old's certificate just expired
    r = rotate(ledger, net.definition, net.authority, SigningKey(seed("admission:r3")), later)
    assert r.reissued == 1
    assert ledger.member(Node("old").key).cert.issuer == net.admission.public
    assert ledger.member(Node("new").key).cert.issuer != net.admission.public
