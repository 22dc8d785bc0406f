"""Routes and exits in a network (issue 22): advertised by the member,
approved by the admin into its certificate, overlaps settled the same way
everywhere (phantom/network/routes.py)."""

from __future__ import annotations

import ipaddress

import pytest

from phantom.network import MemberSet
from phantom.network import join as J
from phantom.network import routes as R
from phantom.network.canonical import canonical

from .factory import NOW
from .test_join import Node, invite, run_join, setup

N = ipaddress.ip_network


def members(net, ledger, *names, now=NOW):
    token = invite(net, ledger, uses=len(names))
    out = {}
    for i, name in enumerate(names):
        node = Node("rt-" + name)
        run_join(net, ledger, node.request(token, name=name), now + i)
        out[name] = node
    return out


def advert(net, node, routes=(), exit=False, now=NOW):
    return R.make_advertisement(net.definition.fingerprint, node.key, node.signer.signing_key,
                                node.signer.sign, routes, exit, now)


def cert_of(ledger, node):
    return ledger.member(node.key).cert


def test_an_advertisement_grants_nothing_until_the_admin_approves():
    net, ledger = setup()
    r = members(net, ledger, "r")["r"]
    events = len(ledger.events)
    adv, reissued = R.advertise(ledger, net.definition, net.admission,
                                advert(net, r, ["192.168.50.0/24", "10.20.0.0/16"], True), NOW)
    assert reissued is None and len(ledger.events) == events       # nothing to members
    assert cert_of(ledger, r).routes == () and not cert_of(ledger, r).exit
    assert adv.routes == (N("10.20.0.0/16"), N("192.168.50.0/24")) and adv.exit
    result = R.approve(ledger, net.definition, net.admission, "r", ["192.168.50.0/24"], now=NOW)
    c = result.certificate
    assert c.routes == (N("192.168.50.0/24"),) and not c.exit and c.since == cert_of(ledger, r).since
    assert ledger.stream()[-1]["cert"] == c.doc                     # the member event carries it
    c = R.approve(ledger, net.definition, net.admission, "r", exit=True, now=NOW).certificate
    assert c.exit and c.routes == (N("192.168.50.0/24"),)
    # a member of the network sees the approval in the certificate
    ms = MemberSet(net.definition, lambda: NOW)
    for ev in ledger.stream():
        ms.apply(ev)
    assert ms.cert(r.key).routes == (N("192.168.50.0/24"),) and ms.cert(r.key).exit


def test_an_approval_is_never_wider_than_the_advertisement():
    net, ledger = setup()
    r = members(net, ledger, "r")["r"]
    with pytest.raises(J.JoinError) as e:                        # nothing advertised
        R.approve(ledger, net.definition, net.admission, "r", ["192.168.50.0/24"], now=NOW)
    assert e.value.code == "not_advertised"
    R.advertise(ledger, net.definition, net.admission, advert(net, r, ["192.168.50.0/24"]), NOW)
    before = canonical(ledger.to_doc())
    for prefix in ("192.168.0.0/16", "10.0.0.0/8"):              # wider, or another one
        with pytest.raises(J.JoinError, match="never wider"):
            R.approve(ledger, net.definition, net.admission, "r", [prefix], now=NOW)
    with pytest.raises(J.JoinError, match="exit"):
        R.approve(ledger, net.definition, net.admission, "r", exit=True, now=NOW)
    assert canonical(ledger.to_doc()) == before                  # refused: nothing changed
    c = R.approve(ledger, net.definition, net.admission, "r", ["192.168.50.128/25"],
                  now=NOW).certificate                           # narrower is fine
    assert c.routes == (N("192.168.50.128/25"),)
    c = R.approve(ledger, net.definition, net.admission, "r", now=NOW).certificate   # all of it
    assert c.routes == (N("192.168.50.0/24"),)


def test_revoke_and_withdrawal_take_the_approval_back_at_once():
    net, ledger = setup()
    r = members(net, ledger, "r")["r"]
    R.advertise(ledger, net.definition, net.admission,
                advert(net, r, ["192.168.50.0/24", "192.168.60.0/24"], True), NOW)
    R.approve(ledger, net.definition, net.admission, "r", now=NOW)
    assert cert_of(ledger, r).routes == (N("192.168.50.0/24"), N("192.168.60.0/24"))
    c = R.revoke(ledger, net.definition, net.admission, "r", ["192.168.60.0/24"],
                 now=NOW + 1).certificate
    assert c.routes == (N("192.168.50.0/24"),) and c.exit
    with pytest.raises(J.JoinError) as e:
        R.revoke(ledger, net.definition, net.admission, "r", ["192.168.60.0/24"], now=NOW + 1)
    assert e.value.code == "not_approved"
    # the member withdraws the exit: the directory narrows the certificate in the same step
    _, result = R.advertise(ledger, net.definition, net.admission,
                            advert(net, r, ["192.168.50.0/24"], False, now=NOW + 2), NOW + 2)
    assert result is not None and not result.certificate.exit
    assert result.certificate.routes == (N("192.168.50.0/24"),)
    # an older advertisement (a replay) cannot bring anything back
    with pytest.raises(J.JoinError) as e:
        R.advertise(ledger, net.definition, net.admission,
                    advert(net, r, ["192.168.50.0/24"], True, now=NOW), NOW + 3)
    assert e.value.code == "stale"
    c = R.revoke(ledger, net.definition, net.admission, "r", now=NOW + 4).certificate
    assert c.routes == () and not c.exit


def test_forged_foreign_and_hostile_advertisements_are_refused():
    net, ledger = setup()
    nodes = members(net, ledger, "r")
    r, stranger = nodes["r"], Node("rt-stranger")
    doc = advert(net, r, ["192.168.50.0/24"])
    doc["routes"] = ["192.168.0.0/16"]                          # changed after signing
    with pytest.raises(J.JoinError) as e:
        R.advertise(ledger, net.definition, net.admission, doc, NOW)
    assert e.value.code == "bad_proof"
    with pytest.raises(J.JoinError) as e:
        R.advertise(ledger, net.definition, net.admission, advert(net, stranger, ["10.0.0.0/8"]),
                    NOW)
    assert e.value.code == "not_member"
    for routes in (["0.0.0.0/0"], ["127.0.0.0/8"], ["100.87.0.0/24"], ["10.0.0.1/8"],
                   ["192.168.60.0/24", "192.168.50.0/24"], ["x"] , ["10.0.%d.0/24" % i
                                                                    for i in range(17)]):
        d = advert(net, r)
        d["routes"] = routes
        with pytest.raises(J.JoinError) as e:
            R.advertise(ledger, net.definition, net.admission, d, NOW)
        assert e.value.code in ("malformed", "bad_proof")
    with pytest.raises(J.JoinError) as e:
        R.advertise(ledger, net.definition, net.admission, advert(net, r, now=NOW - 3600), NOW)
    assert e.value.code == "stale"
    for bad in (b"{", b"[]", "x" * 5000, {"v": 1}):
        with pytest.raises(J.JoinError):
            R.advertise(ledger, net.definition, net.admission, bad, NOW)
    assert ledger.advert(r.key) is None


def test_overlapping_approvals_one_primary_by_join_order_whatever_the_order_seen():
    net, ledger = setup()
    nodes = members(net, ledger, "a", "b", "c")
    for name, routes in (("a", ["10.1.0.0/16"]), ("b", ["10.1.2.0/24", "10.9.0.0/16"]),
                         ("c", ["10.1.0.0/16"])):
        R.advertise(ledger, net.definition, net.admission, advert(net, nodes[name], routes), NOW)
    for name in ("c", "b", "a"):                                 # approved latest-joined first
        R.approve(ledger, net.definition, net.admission, name, now=NOW + 10)
    certs = [m.cert for m in ledger.members()]
    a, b, c = (nodes[n].key for n in "abc")
    want = {a: ((N("10.1.0.0/16"),), []),
            b: ((N("10.9.0.0/16"),), [(N("10.1.2.0/24"), a)]),
            c: ((), [(N("10.1.0.0/16"), a)])}
    assert R.assign(certs) == want and R.assign(reversed(certs)) == want
    rows = {r["name"]: r for r in R.listing(ledger.members(), ledger.adverts(), net.definition)}
    assert rows["b"]["primary"] == ["10.9.0.0/16"]
    assert rows["b"]["standby"] == [{"prefix": "10.1.2.0/24", "behind": "a"}]
    # the primary's route revoked: the earliest standby takes over
    R.revoke(ledger, net.definition, net.admission, "a", now=NOW + 20)
    assign = R.assign(m.cert for m in ledger.members())
    assert assign[b] == ((N("10.1.2.0/24"), N("10.9.0.0/16")), [])
    assert assign[c] == ((), [(N("10.1.0.0/16"), b)])


def test_advertisements_survive_the_authority_ledger_round_trip():
    net, ledger = setup()
    r = members(net, ledger, "r")["r"]
    R.advertise(ledger, net.definition, net.admission, advert(net, r, ["192.168.50.0/24"]), NOW)
    again = J.MemoryLedger.from_doc(ledger.to_doc(), net.definition)
    assert again.advert(r.key) == ledger.advert(r.key)
    rows = R.listing(again.members(), again.adverts(), net.definition)
    assert rows == [{"name": "r", "key": rows[0]["key"], "advertised": ["192.168.50.0/24"],
                     "advertised_exit": False, "approved": [], "exit": False, "primary": [],
                     "standby": [], "pending": ["192.168.50.0/24"]}]


def test_phantom_network_routes_lists_approves_and_revokes_on_the_authority_ledger(tmp_path,
                                                                                   capsys):
    from phantom.network import authority as A
    from phantom.network import cli
    from phantom.network.invite import parse_token

    def run(*argv):
        rc = cli.main([str(a) for a in argv], now=lambda: NOW)
        out, err = capsys.readouterr()
        return rc, out, err

    d = tmp_path / "corp"
    assert run("init", "corp", "--dir", d, "--directory", "https://dir.example.com")[0] == 0
    token = parse_token(run("invite", "--dir", d)[1].strip())
    auth = A.AuthorityDir.open(d)
    node = Node("rt-cli")
    with auth.transaction() as ledger:
        J.join(ledger, auth.definition, auth.admission, node.request(token, name="r"), NOW)
    assert run("routes", "--dir", d)[1].strip() == "no member advertises routes or an exit"
    adv = R.make_advertisement(auth.definition.fingerprint, node.key, node.signer.signing_key,
                               node.signer.sign, ["192.168.50.0/24"], True, NOW)
    with auth.transaction() as ledger:
        R.advertise(ledger, auth.definition, auth.admission, adv, NOW)
    rc, out, _ = run("routes", "--dir", d)
    assert rc == 0 and "192.168.50.0/24,exit" in out and "PENDING" in out
    rc, _, err = run("routes", "approve", "r", "10.0.0.0/8", "--dir", d)
    assert rc == 1 and "never wider" in err
    rc, out, err = run("routes", "approve", "r", "--dir", d)
    assert rc == 0 and "approved routes 192.168.50.0/24, exit" in out, err
    cert = A.AuthorityDir.open(d).read_ledger().member(node.key).cert
    assert cert.routes == (N("192.168.50.0/24"),) and cert.exit
    rc, out, _ = run("routes", "--json", "--dir", d)
    (row,) = __import__("json").loads(out)
    assert row["primary"] == ["192.168.50.0/24"] and row["pending"] == []
    rc, out, _ = run("routes", "revoke", "r", "--exit", "--dir", d)
    assert rc == 0 and A.AuthorityDir.open(d).read_ledger().member(node.key).cert.exit is False
    assert run("routes", "frobnicate", "r", "--dir", d)[0] == 1
    assert run("routes", "approve", "--dir", d)[0] == 1
