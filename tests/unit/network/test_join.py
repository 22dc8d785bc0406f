"""The join transaction's server side (verify the invite -> allocate ->
issue the certificate -> record), removals and invites on a ledger; the
ledger's event log read back as the watch stream by a member's MemberSet.
Hostile requests: a used, expired, revoked or unknown invite, a wrong secret,
a request for another key (no proof of possession), tampered, stale,
truncated and oversized requests; duplicate names; a full prefix.  The clock
is always passed in."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from phantom.directory.records import NodeSigner
from phantom.network import (AllocationError, FormatError, InviteError, MemberSet, NetworkError,
                             Reason, Refused, create_invite, verify_certificate, verify_removal)
from phantom.network import join as J
from phantom.network.canonical import b64, canonical
from phantom.network.keys import CERTIFICATE_DOMAIN

from .factory import DAY, NOW, Net, seed


class Node:
    """A machine with its X25519 node key, signing as `phantom join` will (NodeSigner)."""

    def __init__(self, label: str):
        self.signer = NodeSigner(seed("node:" + label))
        self.key = self.signer.public_key

    def request(self, token, now=NOW, name=None, **override):
        doc = J.make_join_request(token, self.key, self.signer.signing_key, self.signer.sign,
                                  now, name=name)
        doc.update(override)
        return doc


def setup(ipv4="100.87.0.0/16", lifetime=30 * DAY, tag="join"):
    net = Net(tag=tag, ipv4=ipv4, lifetime=lifetime)
    return net, J.MemoryLedger()


def invite(net, ledger, now=NOW, **kw):
    token, record = create_invite(net.definition, now, **kw)
    J.add_invite(ledger, record)
    return token


def run_join(net, ledger, request, now=NOW):
    return J.join(ledger, net.definition, net.admission, request, now)


def frozen(ledger):
    return canonical(ledger.to_doc())


# --- the good path -----------------------------------------------------------------------------

def test_a_join_redeems_the_invite_allocates_issues_and_records():
    net, ledger = setup()
    token = invite(net, ledger, groups=["laptops", "dev"])
    node = Node("a")
    result = run_join(net, ledger, node.request(token, name="laptop"))
    cert = verify_certificate(result.certificate.encode(), net.definition, NOW, key=node.key)
    assert cert.name == "laptop" and cert.groups == ("dev", "laptops")
    assert str(cert.ipv4) == "100.87.0.1" and str(cert.ipv6) == "fd3c:9a41:7e02::6457:1"
    assert cert.since == cert.not_before == NOW
    assert ledger.invite(token.id).used == 1 and ledger.invite(token.id).status(NOW) == "used"
    assert ledger.member(node.key).cert == cert and ledger.member_named("laptop").key == node.key
    assert result.seq == 1 and ledger.stream() == [{"seq": 1, "op": "member", "cert": cert.doc}]


def test_members_read_the_ledger_as_their_watch_stream():
    net, ledger = setup()
    token = invite(net, ledger, uses=5)
    nodes = [Node("s%d" % i) for i in range(5)]
    for i, n in enumerate(nodes):
        run_join(net, ledger, n.request(token, name="n%d" % i))
    J.remove(ledger, net.definition, net.admission, "n2", NOW + 10)
    ms = MemberSet(net.definition, lambda: NOW + 20)
    for event in ledger.stream():
        ms.apply(event)
    assert sorted(m.name for m in ms) == ["n0", "n1", "n3", "n4"] and ms.is_removed(nodes[2].key)
    assert ms.seq == ledger.seq == 6
    # a member that saw the first three events resumes from its seq
    late = MemberSet(net.definition, lambda: NOW + 20)
    for event in ledger.stream()[:3]:
        late.apply(event)
    for event in ledger.stream(since=late.seq):
        late.apply(event)
    assert {m.key for m in late} == {m.key for m in ms}


def test_a_multi_use_invite_gives_distinct_addresses_then_nothing():
    net, ledger = setup()
    token = invite(net, ledger, uses=3, groups=["ci"])
    certs = [run_join(net, ledger, Node("m%d" % i).request(token, name="m%d" % i)).certificate
             for i in range(3)]
    assert [str(c.ipv4) for c in certs] == ["100.87.0.1", "100.87.0.2", "100.87.0.3"]
    assert len({c.ipv6 for c in certs}) == 3 and len({c.serial for c in certs}) == 3
    before = frozen(ledger)
    with pytest.raises(InviteError) as info:
        run_join(net, ledger, Node("m3").request(token, name="m3"))
    assert info.value.code == "used" and frozen(ledger) == before


def test_a_retry_after_a_lost_answer_gets_the_same_certificate_without_a_second_use():
    net, ledger = setup()
    token = invite(net, ledger, uses=2)
    node = Node("r")
    first = run_join(net, ledger, node.request(token, name="r"))
    again = run_join(net, ledger, node.request(token, name="r", now=NOW + 5), now=NOW + 5)
    assert again.retried and again.certificate == first.certificate and again.seq == 0
    assert ledger.invite(token.id).used == 1 and ledger.seq == 1


# --- invites that grant nothing ---------------------------------------------------------------

@pytest.mark.parametrize("case, code", [("used", "used"), ("expired", "expired"),
                                        ("revoked", "revoked"), ("wrong-secret", "invalid"),
                                        ("unknown", "invalid"), ("other-network", "invalid")])
def test_an_invite_that_grants_nothing_changes_nothing(case, code):
    net, ledger = setup()
    token = invite(net, ledger, ttl=3600)
    when = NOW
    if case == "used":
        run_join(net, ledger, Node("first").request(token, name="first"))
    elif case == "expired":
        when = NOW + 3600
    elif case == "revoked":
        J.revoke_invite(ledger, token.id)
    elif case == "wrong-secret":
        token = type(token)(token.directory, token.network, token.id, bytes(32))
    elif case == "unknown":
        token = type(token)(token.directory, token.network, "a" * 16, token.secret)
    elif case == "other-network":
        other = Net(tag="other-net")
        record = create_invite(other.definition, NOW)[1]
        ledger.save_invite(record)                    # a hostile store row, another network's
        token = type(token)(token.directory, token.network, record.id, token.secret)
    before = frozen(ledger)
    with pytest.raises(InviteError) as info:
        run_join(net, ledger, Node("x").request(token, now=when, name="x"), now=when)
    assert info.value.code == code
    if code == "invalid":
        assert str(info.value) == "invite not valid"      # no oracle for ids or secrets
    assert frozen(ledger) == before and ledger.member(Node("x").key) is None


# --- hostile requests --------------------------------------------------------------------------

def test_a_request_must_prove_possession_of_the_key_it_enrols():
    net, ledger = setup()
    token = invite(net, ledger)
    victim, thief = Node("victim"), Node("thief")
    # the thief signs a request enrolling the victim's key with its own signing key
    forged = J.make_join_request(token, victim.key, thief.signer.signing_key, thief.signer.sign,
                                 NOW, name="victim")
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, forged)
    assert info.value.code == "bad_proof"
    # the victim's signing key, but a signature by someone else
    forged = J.make_join_request(token, victim.key, victim.signer.signing_key, thief.signer.sign,
                                 NOW, name="victim")
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, forged)
    assert info.value.code == "bad_proof" and ledger.invite(token.id).used == 0


@pytest.mark.parametrize("field, value", [("name", "mallory"), ("invite", "b" * 16),
                                          ("time", NOW + 1), ("secret", b64(bytes(32)))])
def test_a_field_changed_after_signing_is_refused(field, value):
    net, ledger = setup()
    token = invite(net, ledger)
    doc = Node("a").request(token, name="alice")
    doc[field] = value
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, doc)
    assert info.value.code == "bad_proof" and ledger.invite(token.id).used == 0


def test_stale_and_foreign_requests():
    net, ledger = setup()
    token = invite(net, ledger)
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, Node("a").request(token, now=NOW - 301, name="a"))
    assert info.value.code == "stale" and "check the clocks" in str(info.value)
    run_join(net, ledger, Node("b").request(token, now=NOW - 300, name="b"))   # at the bound
    other = Net(tag="elsewhere")
    with pytest.raises(J.JoinError) as info:
        J.join(ledger, other.definition, other.admission, Node("c").request(token, name="c"), NOW)
    assert info.value.code == "wrong_network"


@pytest.mark.parametrize("raw", [
    b"", b"{", b"[]", b'"x"', b"{}", b"\xff" * 10, b"{" * 5000, b"x" * 5000,
    json.dumps({"v": 1}).encode(),
])
def test_malformed_requests_are_refused_clearly(raw):
    net, ledger = setup()
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, raw)
    assert info.value.code == "malformed" and str(info.value).startswith("malformed join request")


def test_truncated_requests_are_refused():
    net, ledger = setup()
    token = invite(net, ledger)
    raw = canonical(Node("a").request(token, name="a"))
    for cut in range(0, len(raw), 7):
        with pytest.raises(J.JoinError):
            run_join(net, ledger, raw[:cut])
    assert run_join(net, ledger, raw).certificate.name == "a"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(J.REQUEST_FIELDS),
       st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.text(max_size=80),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                      st.integers(), max_size=2)))
def test_property_any_field_value_is_refused_or_joins_never_a_crash(field, value):
    net, ledger = setup(tag="prop")
    token = invite(net, ledger)
    doc = Node("p").request(token, name="p")
    doc[field] = value
    try:
        result = run_join(net, ledger, doc)
    except NetworkError:
        assert ledger.member(Node("p").key) is None
        return
    assert result.certificate.key == Node("p").key     # only an unchanged value can join


# --- names -------------------------------------------------------------------------------------

def test_names_fixed_by_the_invite_required_unique_and_freed_by_a_removal():
    net, ledger = setup()
    fixed = invite(net, ledger, name="db")
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, Node("a").request(fixed, name="web"))
    assert info.value.code == "name_mismatch"
    assert run_join(net, ledger, Node("a").request(fixed)).certificate.name == "db"
    anon = invite(net, ledger, uses=5)
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, Node("b").request(anon))
    assert info.value.code == "name_required"
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, Node("b").request(anon, name="db"))
    assert info.value.code == "name_taken" and "'db' is taken in corp" in str(info.value)
    assert ledger.invite(anon.id).used == 0
    J.remove(ledger, net.definition, net.admission, "db", NOW + 1)
    c = run_join(net, ledger, Node("b").request(anon, name="db", now=NOW + 2), now=NOW + 2)
    assert c.certificate.name == "db" and c.certificate.key == Node("b").key


def test_a_member_cannot_join_again_with_another_invite():
    net, ledger = setup()
    one, two = invite(net, ledger), invite(net, ledger)
    node = Node("a")
    run_join(net, ledger, node.request(one, name="a"))
    with pytest.raises(J.JoinError) as info:
        run_join(net, ledger, node.request(two, name="a2"))
    assert info.value.code == "already_member" and ledger.invite(two.id).used == 0


# --- removal and addresses ---------------------------------------------------------------------

def test_a_removal_is_signed_recorded_and_retires_the_addresses_until_it_lapses():
    net, ledger = setup(lifetime=DAY)
    token = invite(net, ledger, uses=10, ttl=10 * DAY)
    gone = run_join(net, ledger, Node("g").request(token, name="g")).certificate
    removal, seq = J.remove(ledger, net.definition, net.admission, b64(gone.key), NOW + 5)
    assert verify_removal(removal.encode(), net.definition, NOW + 5).key == gone.key
    assert ledger.member(gone.key).removed == NOW + 5
    assert ledger.stream(since=seq - 1) == [{"seq": seq, "op": "removed", "removal": removal.doc}]
    with pytest.raises(J.JoinError) as info:
        J.remove(ledger, net.definition, net.admission, "g", NOW + 6)
    assert info.value.code == "not_member"
    # the next member does not get the removed one's address while a certificate may hold it
    t = NOW + 100
    nxt = run_join(net, ledger, Node("n").request(token, name="n", now=t), now=t).certificate
    assert nxt.ipv4 != gone.ipv4 and nxt.ipv6 != gone.ipv6
    # once the removal has lapsed (time + lifetime), it is free again
    t = NOW + 5 + DAY + 1
    later = run_join(net, ledger, Node("l").request(token, name="l", now=t), now=t).certificate
    assert later.ipv4 == gone.ipv4


def test_a_removed_key_invited_again_gets_a_certificate_the_removal_does_not_refuse():
    net, ledger = setup()
    token = invite(net, ledger, uses=2)
    node = Node("back")
    run_join(net, ledger, node.request(token, name="back"))
    removal, _ = J.remove(ledger, net.definition, net.admission, "back", NOW)
    again = run_join(net, ledger, node.request(token, name="back"))      # the same second
    assert again.certificate.not_before > removal.time
    ms = MemberSet(net.definition, lambda: NOW + 10)
    for event in ledger.stream():
        ms.apply(event)
    assert node.key in ms and ms.member(node.key).cert == again.certificate


def test_a_full_prefix_is_a_clear_error_that_consumes_nothing():
    net, ledger = setup(ipv4="100.87.0.0/28", tag="small")
    token = invite(net, ledger, uses=20)
    certs = [run_join(net, ledger, Node("f%d" % i).request(token, name="f%d" % i)).certificate
             for i in range(14)]
    assert len({c.ipv4 for c in certs}) == 14
    assert all(c.ipv4 in ipaddress.ip_network("100.87.0.0/28") for c in certs)
    before = frozen(ledger)
    with pytest.raises(AllocationError) as info:
        run_join(net, ledger, Node("f14").request(token, name="f14"))
    assert "no free IPv4 address left in 100.87.0.0/28 (14 of 14 host addresses taken)" \
        in str(info.value)
    assert frozen(ledger) == before and ledger.invite(token.id).used == 14


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.tuples(st.just("join"), st.integers(0, 11)),
                          st.tuples(st.just("remove"), st.integers(0, 11)),
                          st.tuples(st.just("wait"), st.integers(1, 2 * DAY))), max_size=30))
def test_property_no_two_members_ever_share_an_address_and_the_stream_agrees(ops):
    net = PROP_NET
    ledger = J.MemoryLedger()
    token = invite(net, ledger, uses=1000, ttl=300 * DAY)
    now = NOW
    for op, arg in ops:
        if op == "wait":
            now += arg
            continue
        name = "k%d" % arg
        try:
            if op == "join":
                run_join(net, ledger, PROP_NODES[arg].request(token, name=name, now=now),
                         now=now)
            else:
                J.remove(ledger, net.definition, net.admission, name, now)
        except NetworkError:
            pass
        live = [m for m in ledger.members()
                if m.removed is None or m.removed + net.definition.cert_lifetime >= now]
        assert len({m.cert.ipv4 for m in live}) == len(live)
        assert len({m.cert.ipv6 for m in live}) == len(live)
        current = [m for m in live if m.removed is None]
        assert len({m.name for m in current}) == len(current)
    ms = MemberSet(net.definition, lambda: now)
    for event in ledger.stream():
        try:
            ms.apply(event)
        except Refused as exc:                  # a certificate that expired meanwhile
            assert exc.reason == Reason.EXPIRED
    ms.expire(now)
    want = {m.key for m in ledger.members() if m.removed is None and m.cert.not_after > now}
    assert {m.key for m in ms} == want


PROP_NET = Net(tag="prop-alloc", ipv4="100.87.0.0/28", lifetime=DAY)
PROP_NODES = [Node("pa%d" % i) for i in range(12)]


# --- renewal, invites, persistence -------------------------------------------------------------

def renew_request(node, net, now):
    return J.make_renew_request(net.definition.fingerprint, node.key, node.signer.signing_key,
                                node.signer.sign, now)


def test_renewal_keeps_name_addresses_groups_and_since():
    net, ledger = setup()
    token = invite(net, ledger, groups=["ops"])
    node = Node("ren")
    first = run_join(net, ledger, node.request(token, name="ren")).certificate
    t = NOW + 20 * DAY
    result = J.renew(ledger, net.definition, net.admission, renew_request(node, net, t), t)
    c = result.certificate
    assert (c.name, c.ipv4, c.ipv6, c.groups, c.since) == (first.name, first.ipv4, first.ipv6,
                                                           first.groups, first.since)
    assert c.serial > first.serial and c.not_after == NOW + 50 * DAY
    ms = MemberSet(net.definition, lambda: t)
    for event in ledger.stream():
        try:
            ms.apply(event)
        except Refused:
            pass
    assert ms.cert(node.key) == c


def test_a_renewal_needs_a_current_member_and_a_proof():
    net, ledger = setup()
    token = invite(net, ledger)
    node, other = Node("ren2"), Node("other")
    run_join(net, ledger, node.request(token, name="ren2"))
    with pytest.raises(J.JoinError) as info:            # not a member
        J.renew(ledger, net.definition, net.admission, renew_request(other, net, NOW), NOW)
    assert info.value.code == "not_member"
    forged = J.make_renew_request(net.definition.fingerprint, node.key,
                                  other.signer.signing_key, other.signer.sign, NOW)
    with pytest.raises(J.JoinError) as info:            # someone else asks for node's key
        J.renew(ledger, net.definition, net.admission, forged, NOW)
    assert info.value.code == "bad_proof"
    with pytest.raises(J.JoinError) as info:
        J.renew(ledger, net.definition, net.admission, renew_request(node, net, NOW - 301), NOW)
    assert info.value.code == "stale"
    with pytest.raises(J.JoinError) as info:
        J.renew(ledger, net.definition, net.admission, b'{"v":1}', NOW)
    assert info.value.code == "malformed"
    other_net = Net(tag="renew-other")
    with pytest.raises(J.JoinError) as info:
        J.renew(ledger, other_net.definition, other_net.admission,
                renew_request(node, net, NOW), NOW)
    assert info.value.code == "wrong_network"
    J.remove(ledger, net.definition, net.admission, "ren2", NOW)
    with pytest.raises(J.JoinError) as info:            # removed: no renewal
        J.renew(ledger, net.definition, net.admission, renew_request(node, net, NOW), NOW)
    assert info.value.code == "not_member"
    # a join request is not a renewal request (another domain, other fields)
    with pytest.raises(J.JoinError):
        J.renew(ledger, net.definition, net.admission, node.request(token, name="ren2"), NOW)


# --- the joining machine's side ----------------------------------------------------------------

def test_the_joining_machine_accepts_its_answer_only_for_the_tokens_network_and_its_key():
    net, ledger = setup()
    token = invite(net, ledger, uses=2)
    node = Node("j")
    result = run_join(net, ledger, node.request(token, name="j"))
    answer = canonical(J.join_answer(net.definition, result.certificate))
    defn, cert = J.accept_join_answer(answer, token.network, node.key, NOW)
    assert defn == net.definition and cert == result.certificate
    # a hostile directory answers with its own network (another authority, the same name)
    rogue = Net(tag="rogue-directory")
    assert rogue.definition.name == net.definition.name
    with pytest.raises(Refused) as info:
        J.accept_join_answer(J.join_answer(rogue.definition, result.certificate), token.network,
                             node.key, NOW)
    assert info.value.reason == Reason.WRONG_AUTHORITY
    # another member's certificate
    other = run_join(net, ledger, Node("k").request(token, name="k")).certificate
    with pytest.raises(Refused) as info:
        J.accept_join_answer(J.join_answer(net.definition, other), token.network, node.key, NOW)
    assert info.value.reason == Reason.WRONG_KEY
    # a certificate for this network signed by a key the definition does not list
    doc = {k: v for k, v in result.certificate.doc.items() if k != "sig"}
    doc["iss"] = b64(rogue.admission.public)
    doc["sig"] = b64(rogue.admission.sign(CERTIFICATE_DOMAIN, canonical(doc)))
    with pytest.raises(Refused) as info:
        J.accept_join_answer({"definition": net.definition.doc, "certificate": doc},
                             token.network, node.key, NOW)
    assert info.value.reason == Reason.UNKNOWN_ISSUER
    for bad in (b"", b"[]", b'{"definition":{}}', canonical({"definition": 1, "certificate": 2}),
                b"{" * 10000):
        with pytest.raises(FormatError):
            J.accept_join_answer(bad, token.network, node.key, NOW)


def test_revoking_an_unknown_invite_and_adding_one_twice():
    net, ledger = setup()
    with pytest.raises(InviteError):
        J.revoke_invite(ledger, "c" * 16)
    record = create_invite(net.definition, NOW)[1]
    J.add_invite(ledger, record)
    with pytest.raises(J.JoinError):
        J.add_invite(ledger, record)


def test_the_ledger_round_trips_and_a_damaged_one_is_refused():
    net, ledger = setup()
    token = invite(net, ledger, uses=3)
    for i in range(2):
        run_join(net, ledger, Node("rt%d" % i).request(token, name="rt%d" % i))
    J.remove(ledger, net.definition, net.admission, "rt0", NOW + 1)
    doc = json.loads(canonical(ledger.to_doc()))
    again = J.MemoryLedger.from_doc(doc, net.definition)
    assert frozen(again) == frozen(ledger)
    assert again.next_serial() == ledger.serial + 1
    for damage in ({}, {"v": 2}, dict(doc, members=[{"cert": {}, "invite": "", "removed": None}]),
                   dict(doc, events=[{"op": "member"}]), dict(doc, invites=[{"id": 1}])):
        with pytest.raises(FormatError):
            J.MemoryLedger.from_doc(damage, net.definition)
    with pytest.raises(FormatError):
        J.MemoryLedger.from_doc(doc, Net(tag="foreign").definition)
    # a file where two members hold one address (edited by hand, or a bug) is refused
    other = J.MemoryLedger()
    tok = invite(net, other)
    run_join(net, other, Node("same-address").request(tok, name="zz"))
    clash = json.loads(canonical(other.to_doc()))["members"][0]
    with pytest.raises(FormatError) as info:
        J.MemoryLedger.from_doc(dict(doc, members=doc["members"] + [clash]), net.definition)
    assert "unique constraint: address 100.87.0.1" in str(info.value)


def test_an_expired_member_is_not_renewed_but_may_join_again():
    net, ledger = setup(lifetime=DAY, tag="expiry")
    token = invite(net, ledger, uses=2, ttl=10 * DAY)
    node = Node("sleeper")
    first = run_join(net, ledger, node.request(token, name="sleeper")).certificate
    t = first.not_after                                    # the machine slept past its expiry
    with pytest.raises(J.JoinError) as info:
        J.renew(ledger, net.definition, net.admission, renew_request(node, net, t), t)
    assert info.value.code == "expired" and "join corp again" in str(info.value)
    again = run_join(net, ledger, node.request(token, name="sleeper", now=t), now=t)
    assert not again.retried and again.certificate.not_before == t
    assert again.certificate.name == "sleeper" and ledger.invite(token.id).used == 2
