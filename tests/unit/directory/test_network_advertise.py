"""Routes and exits through the directory (issue 22): a member's signed
advertisement (POST /network/advertise), the admin's listing, approval and
revocation (the certificate reissued, on the member stream); hostile
requests get a 4xx with a sentence, never a 500."""

from __future__ import annotations

import pytest

from phantom.directory.records import NodeSigner
from phantom.network import join as J
from phantom.network import routes as RT

from ..network.factory import NOW
from .test_network_routes import ADMIN, Node, directory, run

pytestmark = pytest.mark.timeout(60)


def advert(node, network, routes=(), exit=False, now=NOW):
    s = NodeSigner(node.private)
    try:
        return RT.make_advertisement(network, s.public_key, s.signing_key, s.sign, routes, exit,
                                     now)
    finally:
        s.wipe()


def test_advertise_list_approve_and_revoke_through_the_directory():
    async def main():
        async with directory() as dr:
            token, _ = await dr.invite(uses=2)
            r, other = Node(), Node()
            for node, name in ((r, "r"), (other, "o")):
                status, answer = await dr.call("POST", "/network/join",
                                               node.join_request(token, name))
                assert status == 200, answer
            net = token.network
            status, doc = await dr.call("GET", "/network/admin/routes")
            assert status == 401
            status, doc = await dr.call("GET", "/network/admin/routes", admin=ADMIN)
            assert status == 200 and doc == {"routes": []}
            status, doc = await dr.call("POST", "/network/advertise",
                                        advert(r, net, ["192.168.50.0/24"], True))
            assert status == 200 and doc["certificate"] is None, doc
            status, doc = await dr.call("GET", "/network/admin/routes", admin=ADMIN)
            (row,) = doc["routes"]
            assert (row["name"], row["advertised"], row["advertised_exit"], row["approved"],
                    row["pending"]) == ("r", ["192.168.50.0/24"], True, [],
                                        ["192.168.50.0/24", "exit"])
            # never wider than advertised; an unknown member; not the admin
            status, doc = await dr.call("POST", "/network/admin/routes/r/approve",
                                        {"routes": ["192.168.0.0/16"]}, admin=ADMIN)
            assert status == 409 and doc["code"] == "not_advertised"
            status, doc = await dr.call("POST", "/network/admin/routes/o/approve", {},
                                        admin=ADMIN)
            assert status == 409 and doc["code"] == "not_advertised"
            status, doc = await dr.call("POST", "/network/admin/routes/nobody/approve", {},
                                        admin=ADMIN)
            assert status == 404
            status, doc = await dr.call("POST", "/network/admin/routes/r/approve", {})
            assert status == 401
            _, page = await dr.call("GET", "/network/members?since=0")
            seq = page["seq"]
            status, doc = await dr.call("POST", "/network/admin/routes/r/approve",
                                        {"routes": ["192.168.50.0/24"], "exit": True},
                                        admin=ADMIN)
            assert status == 200, doc
            assert doc["certificate"]["routes"] == ["192.168.50.0/24"] and \
                doc["certificate"]["exit"]
            _, page = await dr.call("GET", "/network/members?since=%d" % seq)
            (ev,) = page["events"]
            cert = J.verify_certificate(ev["cert"], dr.net.definition, NOW)
            assert cert.key == r.public and [str(n) for n in cert.routes] == \
                ["192.168.50.0/24"] and cert.exit
            status, doc = await dr.call("POST", "/network/admin/routes/r/revoke",
                                        {"exit": True}, admin=ADMIN)
            assert status == 200 and not doc["certificate"]["exit"]
            # the member withdraws the route: its certificate loses it at once
            dr.clock[0] = NOW + 5
            status, doc = await dr.call("POST", "/network/advertise", advert(r, net, now=NOW + 5))
            assert status == 200 and doc["certificate"]["routes"] == []
            status, doc = await dr.call("GET", "/network/admin/routes", admin=ADMIN)
            assert doc["routes"][0]["advertised"] == [] and doc["routes"][0]["approved"] == []
    run(main())


def test_hostile_advertisements_and_route_requests_get_a_4xx():
    async def main():
        async with directory() as dr:
            token, _ = await dr.invite()
            r = Node()
            await dr.call("POST", "/network/join", r.join_request(token, "r"))
            net = token.network
            forged = advert(r, net, ["192.168.50.0/24"])
            forged["routes"] = ["10.0.0.0/8"]
            stranger = advert(Node(), net, ["10.0.0.0/8"])
            for body, code in ((forged, "bad_proof"), (stranger, "not_member"),
                               ({"v": 1}, "malformed"), ([1, 2], "malformed"),
                               (advert(r, net, now=NOW - 3600), "stale")):
                status, doc = await dr.call("POST", "/network/advertise", body)
                assert 400 <= status < 500 and doc["code"] == code, (body, status, doc)
            for raw in (b"{", b"\xff" * 10, b"x" * 70000):
                status, doc = await dr.call("POST", "/network/advertise", raw=raw)
                assert 400 <= status < 500, (raw[:10], status)
            for body in ({"routes": "10.0.0.0/8"}, {"exit": "yes"}, {"other": 1},
                         {"routes": ["nope"]}, {"routes": [1]}, [1]):
                status, doc = await dr.call("POST", "/network/admin/routes/r/approve", body,
                                            admin=ADMIN)
                assert 400 <= status < 500, (body, status, doc)
    run(main())
