"""The directory's /network routes over HTTP on a real localhost socket, on a
SQLite store: joins, renewals, the member stream, the admin API, and hostile
requests (oversized, truncated, forged, replayed, used invites, wrong tokens):
always a 4xx with a sentence, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

import aiohttp
import pytest

from phantom import crypto
from phantom import directory as d
from phantom.directory.network import NetworkService
from phantom.directory.records import NodeSigner
from phantom.directory.server import Limits
from phantom.network import create_invite, parse_token
from phantom.network import join as J

from ..network.factory import NOW, Net

pytestmark = pytest.mark.timeout(60)
ADMIN = "admin-token-for-the-tests-0123456789"


def run(coro, timeout: float = 40.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Node:
    def __init__(self):
        self.private = bytearray(crypto.x25519_private())
        self.public = crypto.x25519_public(bytes(self.private))

    def join_request(self, token, name=None, now=NOW):
        s = NodeSigner(self.private)
        try:
            return J.make_join_request(token, s.public_key, s.signing_key, s.sign, now, name=name)
        finally:
            s.wipe()

    def renew_request(self, network, now=NOW):
        s = NodeSigner(self.private)
        try:
            return J.make_renew_request(network, s.public_key, s.signing_key, s.sign, now)
        finally:
            s.wipe()


class Dir:
    def __init__(self, url, session, net, clock):
        self.url, self.s, self.net, self.clock = url, session, net, clock

    async def call(self, method, path, body=None, *, raw=None, admin=None, headers=None):
        h = dict(headers or {})
        if admin is not None:
            h["Authorization"] = "Bearer " + admin
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        async with self.s.request(method, self.url + path, data=data, headers=h) as r:
            text = await r.text()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = text
            return r.status, doc

    async def invite(self, **kw):
        status, doc = await self.call("POST", "/network/admin/invites", kw, admin=ADMIN)
        assert status == 201, doc
        return parse_token(doc["token"]), doc["invite"]


@contextlib.asynccontextmanager
async def directory(limits=None, net=None):
    net = net or Net()
    now = [float(NOW)]
    store = d.DirectoryStore(":memory:")
    app = d.create_app(store, clock=lambda: now[0], limits=limits or Limits.unlimited())
    service = NetworkService(net.definition, net.admission, ADMIN.encode())
    await service.attach(app, store)
    runner = await d.start_server(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            yield Dir("http://127.0.0.1:%d" % runner.addresses[0][1], s, net, now)
    finally:
        await runner.cleanup()
        store.close()


def test_join_renew_and_the_member_stream():
    async def main():
        async with directory() as dr:
            status, doc = await dr.call("GET", "/network")
            assert status == 200 and doc == dr.net.definition.doc
            token, summary = await dr.invite(groups=["laptops"], uses=2)
            assert summary["status"] == "active" and summary["uses"] == 2
            node = Node()
            status, answer = await dr.call("POST", "/network/join", node.join_request(token, "a"))
            assert status == 200, answer
            definition, cert = J.accept_join_answer(answer, token.network, node.public, NOW)
            assert cert.name == "a" and cert.groups == ("laptops",) and str(cert.ipv4) == \
                "100.87.0.1"
            # the snapshot and the events
            status, snap = await dr.call("GET", "/network/members")
            assert status == 200 and snap["seq"] == 1 and snap["members"] == [cert.doc]
            status, page = await dr.call("GET", "/network/members?since=0")
            assert [e["op"] for e in page["events"]] == ["member"] and page["more"] is False
            status, page = await dr.call("POST", "/network/members", {"since": 1})
            assert status == 200 and page == {"seq": 1, "events": [], "more": False}
            # renewal: same addresses, a later serial
            dr.clock[0] = NOW + 100
            status, answer = await dr.call("POST", "/network/renew",
                                           node.renew_request(token.network, NOW + 100))
            assert status == 200, answer
            _, renewed = J.accept_join_answer(answer, token.network, node.public, NOW + 100)
            assert renewed.ipv4 == cert.ipv4 and renewed.serial > cert.serial
            # a stranger cannot renew
            status, doc = await dr.call("POST", "/network/renew",
                                        Node().renew_request(token.network, NOW + 100))
            assert status == 404 and doc["code"] == "not_member"
    run(main())


def test_a_used_expired_or_revoked_invite_grants_nothing_and_a_replay_is_the_same_answer():
    async def main():
        async with directory() as dr:
            token, _ = await dr.invite()
            node = Node()
            req = node.join_request(token, "a")
            status, first = await dr.call("POST", "/network/join", req)
            assert status == 200
            # the same request again (a lost answer): the same certificate, no second use
            status, again = await dr.call("POST", "/network/join", req)
            assert status == 200 and again == first
            status, invites = await dr.call("GET", "/network/admin/invites?all=1", admin=ADMIN)
            assert [(i["used"], i["status"]) for i in invites["invites"]] == [(1, "used")]
            # another key with the used token
            status, doc = await dr.call("POST", "/network/join", Node().join_request(token, "b"))
            assert status == 403 and doc["code"] == "used" and "already used" in doc["error"]
            # revoked
            t2, s2 = await dr.invite()
            status, _ = await dr.call("POST", "/network/admin/invites/%s/revoke" % s2["id"],
                                      admin=ADMIN)
            assert status == 200
            status, doc = await dr.call("POST", "/network/join", Node().join_request(t2, "c"))
            assert status == 403 and doc["code"] == "revoked"
            # expired
            t3, _ = await dr.invite(expires=60)
            dr.clock[0] = NOW + 61
            status, doc = await dr.call("POST", "/network/join",
                                        Node().join_request(t3, "d", now=NOW + 61))
            assert status == 403 and doc["code"] == "expired"
            # a wrong secret and an unknown invite: the same sentence
            forged = J.make_join_request  # noqa: F841
            bad = parse_token(t3.encode())
            wrong = type(bad)(bad.directory, bad.network, bad.id, bytes(32))
            status, doc = await dr.call("POST", "/network/join",
                                        Node().join_request(wrong, "e", now=NOW + 61))
            assert status == 403 and doc == {"error": "invite not valid", "code": "invalid"}
            unknown = type(bad)(bad.directory, bad.network, "a" * 16, bad.secret)
            status, doc = await dr.call("POST", "/network/join",
                                        Node().join_request(unknown, "e", now=NOW + 61))
            assert status == 403 and doc == {"error": "invite not valid", "code": "invalid"}
            status, snap = await dr.call("GET", "/network/members")
            assert len(snap["members"]) == 1
    run(main())


def test_hostile_bodies_get_a_4xx_with_a_sentence_never_a_500():
    async def main():
        async with directory() as dr:
            token, _ = await dr.invite(uses=1000)
            good = Node().join_request(token, "x")
            text = json.dumps(good, separators=(",", ":"))
            assert '"v":1' in text
            cases = [
                (b"", 400), (b"{", 400), (text[: len(text) // 2].encode(), 400),
                (b"[]", 400), (b"null", 400), (b'{"v":1}', 400),
                (b"x" * (17 * 1024), 413),
                (json.dumps(dict(good, key=good["signing_key"])).encode(), 403),
                (json.dumps(dict(good, sig="A" * 86 + "==")).encode(), 403),
                (json.dumps(dict(good, sig="A" * 80)).encode(), 400),
                (json.dumps(dict(good, name="X" * 70)).encode(), 400),
                (json.dumps(dict(good, time=NOW - 3600)).encode(), 400),
                (json.dumps(dict(good, net="a" * 32)).encode(), 400),
                (json.dumps(dict(good, extra=1)).encode(), 400),
                (json.dumps(dict(good, v=1.0)).encode(), 400),
                (text.replace('"v":1', '"v":1,"v":1').encode(), 400),
            ]
            for raw, want in cases:
                status, doc = await dr.call("POST", "/network/join", raw=raw)
                assert status == want, (raw[:80], status, doc)
                assert isinstance(doc, dict) and doc["error"], raw[:80]
            # a signature over another request: forged
            other = Node().join_request(token, "y")
            status, doc = await dr.call("POST", "/network/join", dict(good, sig=other["sig"]))
            assert status == 403 and doc["code"] == "bad_proof"
            # random damage of a valid request: a 4xx or (rarely) a join, never a 5xx
            rng = random.Random(20)
            raw = text.encode()
            for _ in range(150):
                b = bytearray(raw)
                for _ in range(rng.randint(1, 4)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
                status, doc = await dr.call("POST", "/network/join", raw=bytes(b))
                assert status < 500, (bytes(b), status, doc)
            for path in ("/network/members?since=-1", "/network/members?since=x",
                         "/network/members?since=99999999999999999999"):
                status, doc = await dr.call("GET", path)
                assert status == 400, (path, doc)
            status, doc = await dr.call("POST", "/network/members", raw=b'{"since":"1","x":2}')
            assert status == 400
            status, doc = await dr.call("POST", "/network/renew", raw=b'{"v":1}')
            assert status == 400 and doc["code"] == "malformed"
    run(main())


def test_the_admin_api_needs_the_token_and_a_removal_is_on_the_stream():
    async def main():
        async with directory() as dr:
            for admin in (None, "wrong", ADMIN + "x", ""):
                for method, path in (("GET", "/network/admin/invites"),
                                     ("POST", "/network/admin/invites"),
                                     ("GET", "/network/admin/members"),
                                     ("POST", "/network/admin/members/a/remove"),
                                     ("POST", "/network/admin/invites/aaaaaaaaaaaaaaaa/revoke")):
                    status, doc = await dr.call(method, path, {}, admin=admin)
                    assert status == 401 and "admin token" in doc["error"], (admin, path)
            status, doc = await dr.call("POST", "/network/admin/invites", {"uses": 0},
                                        admin=ADMIN)
            assert status == 400
            status, doc = await dr.call("POST", "/network/admin/invites", {"groups": ["Bad!"]},
                                        admin=ADMIN)
            assert status == 400 and doc["code"] == "malformed"
            token, _ = await dr.invite(uses=2)
            a, b = Node(), Node()
            while not set("+/") & set(J.b64(b.public)):     # b's key differs URL-safe
                b = Node()
            for node, name in ((a, "a"), (b, "b")):
                status, _ = await dr.call("POST", "/network/join", node.join_request(token, name))
                assert status == 200
            status, doc = await dr.call("POST", "/network/admin/members/nobody/remove",
                                        admin=ADMIN)
            assert status == 404 and doc["code"] == "not_member"
            status, doc = await dr.call("POST", "/network/admin/members/a/remove", admin=ADMIN)
            assert status == 200 and doc["seq"] == 3
            status, members = await dr.call("GET", "/network/admin/members", admin=ADMIN)
            assert [(m["name"], m["status"]) for m in members["members"]] == \
                [("a", "removed"), ("b", "member")]
            status, page = await dr.call("GET", "/network/members?since=2")
            assert [e["op"] for e in page["events"]] == ["removed"]
            assert page["events"][0]["removal"] == doc["removal"]
            status, snap = await dr.call("GET", "/network/members")
            assert [c["name"] for c in snap["members"]] == ["b"]
            assert snap["removals"] == [doc["removal"]]
            # the removed member cannot renew; its name is free again
            status, doc = await dr.call("POST", "/network/renew", a.renew_request(token.network))
            assert status == 404
            # by key: URL-safe base64 in the path, or standard base64 percent-encoded
            import base64
            import urllib.parse
            for node, form in ((b, base64.urlsafe_b64encode(b.public).decode()),):
                status, doc = await dr.call("POST", "/network/admin/members/%s/remove" % form,
                                            admin=ADMIN)
                assert status == 200 and doc["removal"]["key"] == J.b64(node.public), doc
            token2, _ = await dr.invite()
            c = Node()
            status, _ = await dr.call("POST", "/network/join", c.join_request(token2, "c"))
            std = urllib.parse.quote(J.b64(c.public), safe="")
            status, doc = await dr.call("POST", "/network/admin/members/%s/remove" % std,
                                        admin=ADMIN)
            assert status == 200 and doc["removal"]["key"] == J.b64(c.public), doc
    run(main())


def test_joins_draw_on_the_per_source_write_bucket():
    async def main():
        async with directory(limits=Limits(source_writes_per_minute=3)) as dr:
            token, _ = await dr.invite(uses=10)       # one write
            codes = []
            for i in range(3):
                status, doc = await dr.call("POST", "/network/join",
                                            Node().join_request(token, "n%d" % i))
                codes.append(status)
            assert codes[:2] == [200, 200] and codes[2] == 429 and doc["retry_after"] >= 1
    run(main())


def test_a_store_without_network_tables_cannot_serve_one():
    from phantom.directory.store.base import Store, Unsupported

    class NoTables(d.DirectoryStore):
        def network(self):
            return Store.network(self)

    store = NoTables(":memory:")
    app = d.create_app(store)
    with pytest.raises(Unsupported):
        run(NetworkService(Net().definition, Net().admission, ADMIN.encode()).attach(app, store))
    store.close()
