"""The network policy on the directory (issue 21 item 3): set through the
admin API (the front end signs with its admission key; a bad policy is
refused whole naming the line and the old one stays), kept in the network
tables, appended to the member stream as a ``policy`` event, served by GET
/network/policy and in the snapshot; the ledger functions on SQLite rows and
in the authority's own ledger; a rotation re-signs the policy in force.
(PostgreSQL: tests/e2e/directory/test_network_policy_pg.py.)"""

from __future__ import annotations

import json

import pytest

from phantom.network import join as J
from phantom.network import policy as P
from phantom.network.errors import Reason, Refused
from phantom.network.rotate import rotate
from phantom.network.keys import SigningKey

from ..network.factory import NOW, Net, seed
from .test_network_ledger import opened
from .test_network_routes import ADMIN, directory, run

pytestmark = pytest.mark.timeout(60)

SOURCE = """\
default = "deny"

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "tcp"
ports = [22]
"""
BAD = SOURCE.replace("ports = [22]", "ports = [22, 99999]")


def test_the_admin_api_sets_a_policy_the_stream_and_the_snapshot_carry_it():
    async def main():
        async with directory() as dr:
            status, doc = await dr.call("GET", "/network/policy")
            assert status == 404 and doc["code"] == "no_policy"
            status, snap = await dr.call("GET", "/network/members")
            assert snap["policy"] is None
            status, doc = await dr.call("POST", "/network/admin/policy", {"source": SOURCE},
                                        admin=ADMIN)
            assert status == 200, doc
            assert (doc["seq"], doc["rules"], doc["default"], doc["event"]) == (1, 1, "deny", 1)
            status, signed = await dr.call("GET", "/network/policy")
            assert status == 200
            p = P.verify_policy(signed, dr.net.definition, NOW)
            assert p.seq == 1 and p.issuer == dr.net.admission.public
            assert p.body == P.parse_policy_source(SOURCE)
            status, page = await dr.call("GET", "/network/members?since=0")
            assert [(e["op"], e["seq"]) for e in page["events"]] == [("policy", 1)]
            assert page["events"][0]["policy"] == signed
            # a member reads the page with the network documents' strict parser (depth 8)
            from phantom.network.canonical import strict_loads
            assert strict_loads(json.dumps(page), 1 << 20)["events"][0]["policy"] == signed
            # a bad one is refused whole, naming the line; the old one stays
            status, doc = await dr.call("POST", "/network/admin/policy", {"source": BAD},
                                        admin=ADMIN)
            assert status == 400 and doc["code"] == "malformed"
            assert doc["error"].startswith("policy rule 1 (line 7), ports[1]: "), doc
            status, again = await dr.call("GET", "/network/policy")
            assert again == signed
            # the next one gets the next seq; the snapshot carries the one in force
            json_source = json.dumps({"default": "allow", "rules": []})
            status, doc = await dr.call("POST", "/network/admin/policy",
                                        {"source": json_source}, admin=ADMIN)
            assert status == 200 and doc["seq"] == 2 and doc["event"] == 2
            status, snap = await dr.call("GET", "/network/members")
            assert snap["seq"] == 2 and P.parse_policy(snap["policy"]).body.default == "allow"
    run(main())


def test_hostile_policy_requests_get_a_4xx_never_a_500():
    async def main():
        async with directory() as dr:
            status, _ = await dr.call("POST", "/network/admin/policy", {"source": SOURCE})
            assert status == 401
            status, _ = await dr.call("POST", "/network/admin/policy", {"source": SOURCE},
                                      admin="wrong-token-wrong-token-wrong")
            assert status == 401
            for body in ({"source": 3}, {"source": SOURCE, "x": 1}, [SOURCE], "just text"):
                status, doc = await dr.call("POST", "/network/admin/policy", body, admin=ADMIN)
                assert status == 400 and "source" in doc["error"], (body, doc)
            for raw in (b"{", b"\xff\xfe", b'{"source": "a", "source": "b"}'):
                status, doc = await dr.call("POST", "/network/admin/policy", raw=raw,
                                            admin=ADMIN)
                assert status == 400, (raw, doc)
            huge = json.dumps({"source": "#" * (P.MAX_SOURCE_SIZE * 2 + 2000)})
            status, doc = await dr.call("POST", "/network/admin/policy", raw=huge, admin=ADMIN)
            assert status == 400 and "Content-Length" in doc["error"]
            big = json.dumps({"source": "#" * (P.MAX_SOURCE_SIZE + 10)})
            status, doc = await dr.call("POST", "/network/admin/policy", raw=big, admin=ADMIN)
            assert status == 400 and "larger than" in doc["error"]
            for source in ("", "default = 'deny'\n[[rule]]\n", "[" * 5000, "{" * 5000):
                status, doc = await dr.call("POST", "/network/admin/policy",
                                            {"source": source}, admin=ADMIN)
                assert status == 400, (source[:20], doc)
            status, doc = await dr.call("GET", "/network/policy")
            assert status == 404, "nothing was set"
    run(main())


def test_the_ledger_keeps_the_policy_on_sqlite_rows():
    net = Net()
    store, tables = opened(net)
    body = P.parse_policy_source(SOURCE)
    p1, e1 = tables.transact_sync(lambda led: J.set_policy(led, net.definition, net.admission,
                                                           body, NOW))
    p2, e2 = tables.transact_sync(lambda led: J.set_policy(led, net.definition, net.admission,
                                                           body, NOW + 5))
    assert (p1.seq, p2.seq, e1, e2) == (1, 2, 1, 2)
    got = run(tables.read(lambda led: (J.current_policy(led), led.stream(0))))
    assert got[0] == p2 and got[0].doc == p2.doc
    assert [e["op"] for e in got[1]] == ["policy", "policy"]
    # a failed transaction leaves the policy in force as it was
    with pytest.raises(RuntimeError):
        def half(led):
            J.set_policy(led, net.definition, net.admission, body, NOW)
            raise RuntimeError("crash after the append")
        tables.transact_sync(half)
    assert run(tables.read(lambda led: J.current_policy(led))).seq == 2
    store.close()


def test_the_authority_ledger_and_a_rotation_resign_the_policy():
    net = Net()
    led = J.MemoryLedger()
    body = P.parse_policy_source(SOURCE)
    assert J.current_policy(led) is None
    p, _ = J.set_policy(led, net.definition, net.admission, body, NOW)
    # the ledger's file keeps it
    again = J.MemoryLedger.from_doc(json.loads(json.dumps(led.to_doc())), net.definition)
    assert J.current_policy(again) == p
    new = SigningKey(seed("admission-2"))
    r = rotate(again, net.definition, net.authority, new, NOW + 10)
    held = J.current_policy(again)
    assert held.seq == 2 and held.issuer == new.public and held.body == body
    assert again.stream(0)[-1]["op"] == "policy" and r.seq == again.seq
    P.verify_policy(held.doc, r.definition, NOW + 10)
    with pytest.raises(Refused) as e:                 # the old key's policy counts no more
        P.verify_policy(p.doc, r.definition, NOW + 10)
    assert e.value.reason is Reason.UNKNOWN_ISSUER
