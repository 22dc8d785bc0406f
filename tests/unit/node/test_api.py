"""The HTTP command API: routes, JSON shapes, authentication and hardening."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import string

import pytest
from aiohttp import ClientSession, UnixConnector
from aiohttp.test_utils import TestClient, TestServer

from tests.support.apidouble import KNOWN_KEY, ExplodingController, FakeController
from phantom import logsetup
from phantom import keys
from phantom.http.guard import load_or_create_token
from phantom.http.server import MAX_BODY, refuse_get, start as start_api
from phantom.node.app import create_app, openapi_document
from phantom.errors import ConfigError

TOKEN = "ab" * 32
AUTH = {"Authorization": "Bearer " + TOKEN}
PUB = "3cVJ1x7RRpHcPtZOceZ1+T1f5Qji0l7waRMN/9d8XBk="


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def with_client(test, controller=None):
    """Run ``test(client, controller)`` against a real localhost test server."""
    controller = controller or FakeController()

    async def go():
        async with TestClient(TestServer(create_app(controller, TOKEN))) as client:
            return await test(client, controller)
    return run(go())


async def call(client, method, path, **kw):
    resp = await client.request(method, path, **kw)
    assert resp.content_type == "application/json", (method, path, resp.status)
    return resp.status, await resp.json()


# --- happy paths -----------------------------------------------------------------------------
def test_open_status_peers_close_roundtrip():
    async def t(c, ctl):
        st, body = await call(c, "POST", "/open/192.0.2.7:9000", headers=AUTH,
                              json={"public_key": PUB, "name": "bob"})
        assert (st, body) == (200, {"opened": "bob", "endpoint": "192.0.2.7:9000", "state": "up"})
        assert ctl.calls == [("open", ("192.0.2.7", 9000), PUB, "bob")]
        st, body = await call(c, "GET", "/peers")
        assert st == 200 and [p["name"] for p in body["peers"]] == ["bob"]
        st, body = await call(c, "GET", "/status")
        assert st == 200 and body["peers"] == 1 and body["mode"] == "test"
        st, body = await call(c, "POST", "/close/bob", headers=AUTH)
        assert (st, body) == (200, {"closed": "bob"})
        st, body = await call(c, "GET", "/peers")
        assert body == {"peers": []}
    with_client(t)


def test_open_ipv6_endpoint_and_open_by_name():
    async def t(c, ctl):
        st, _ = await call(c, "POST", "/open/[fd00::1]:9000", headers=AUTH, json={"public_key": PUB})
        assert st == 200 and ctl.calls[-1][1] == ("fd00::1", 9000)
        st, body = await call(c, "POST", "/open/carol", headers=AUTH)
        assert st == 200 and body["opened"] == "carol"
        assert ctl.calls[-1] == ("open", None, None, "carol")
        st, body = await call(c, "POST", "/open/nobody", headers=AUTH)
        assert st == 404 and "nobody" in body["error"]
    with_client(t)


def test_firewall_get_and_put():
    async def t(c, ctl):
        rules = {"rules": [{"action": "drop", "proto": "udp", "port": 53}]}
        st, body = await call(c, "PUT", "/firewall", headers=AUTH, json=rules)
        assert (st, body) == (200, {"rules": 1, "applied": True})
        st, body = await call(c, "GET", "/firewall")
        assert (st, body) == (200, rules)
        st, body = await call(c, "PUT", "/firewall", headers=AUTH, json={"rules": 5})
        assert st == 400 and "rules" in body["error"]           # controller's BadRequest
        st, body = await call(c, "PUT", "/firewall", headers=AUTH, json=[1, 2])
        assert st == 400 and "object" in body["error"]
        st, body = await call(c, "PUT", "/firewall", headers=AUTH)
        assert st == 400 and "JSON body" in body["error"]
    with_client(t)


def test_controller_errors_keep_their_status():
    async def t(c, ctl):
        ctl.unreachable.add("192.0.2.9:9000")
        st, body = await call(c, "POST", "/open/192.0.2.9:9000", headers=AUTH, json={"public_key": PUB})
        assert st == 504 and "192.0.2.9" in body["error"]
        st, body = await call(c, "POST", "/open/192.0.2.8:9000", headers=AUTH)
        assert st == 404 and "public key" in body["error"]
        await call(c, "POST", "/open/192.0.2.1:9000", headers=AUTH, json={"public_key": PUB, "name": "a"})
        st, body = await call(c, "POST", "/open/192.0.2.2:9000", headers=AUTH,
                              json={"public_key": PUB, "name": "b"})
        assert st == 409
        st, body = await call(c, "POST", "/close/ghost", headers=AUTH)
        assert st == 404 and "ghost" in body["error"]
    with_client(t)


# --- authentication -----------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer " + "cd" * 32},
    {"Authorization": "Bearer " + TOKEN[:-1]},
    {"Authorization": "Basic " + TOKEN},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer"},
])
def test_mutations_without_the_right_token_are_refused_and_change_nothing(headers):
    async def t(c, ctl):
        await call(c, "PUT", "/firewall", headers=AUTH, json={"rules": []})
        ctl.calls.clear()
        before = (await call(c, "GET", "/peers"), await call(c, "GET", "/firewall"))
        for method, path, body in [("POST", "/open/192.0.2.7:9000", {"public_key": PUB}),
                                   ("POST", "/close/bob", None),
                                   ("PUT", "/firewall", {"rules": [{"x": 1}]})]:
            resp = await c.request(method, path, headers=headers, json=body)
            assert resp.status == 401, (method, path)
            assert "token" in (await resp.json())["error"]
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert ctl.calls == []
        after = (await call(c, "GET", "/peers"), await call(c, "GET", "/firewall"))
        assert before == after
    with_client(t)


def test_state_changing_get_is_refused():
    async def t(c, ctl):
        for path in ("/open/192.0.2.7:9000", "/close/bob"):
            st, body = await call(c, "GET", path, headers=AUTH)
            assert st == 405 and "not allowed" in body["error"]
        st, body = await call(c, "POST", "/status", headers=AUTH)
        assert st == 405
        st, body = await call(c, "DELETE", "/firewall")
        assert st == 405
        assert ctl.calls == []
    with_client(t)


def test_unknown_routes_are_404_json():
    async def t(c, ctl):
        for method, path in [("GET", "/nope"), ("POST", "/nope"), ("GET", "/dashboard/nope.js"),
                             ("POST", "/open/"), ("POST", "/open/a/b")]:
            st, body = await call(c, method, path, headers=AUTH)
            assert st == 404 and "error" in body, (method, path)
    with_client(t)


def test_dns_rebinding_host_is_refused():
    async def t(c, ctl):
        st, body = await call(c, "GET", "/peers", headers={"Host": "evil.example:4567"})
        assert st == 403 and "Host" in body["error"]
        for host in ("127.0.0.1:4567", "localhost", "[::1]:4567", "10.0.0.1"):
            st, _ = await call(c, "GET", "/peers", headers={"Host": host})
            assert st == 200, host
    with_client(t)


# --- malformed input --------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["1.2.3.4", "1.2.3.4:", "1.2.3.4:99999", "1.2.3.4:x",
                                    "fd00::1:9000", "[fd00::1]", "%5Bfd00%3A%3A1%5D9", "300.1.1.1:9",
                                    "0.0.0.0:9000", "bad name", "-x", "a" * 200, "%00", "1.2.3:4"])
def test_malformed_endpoints_are_400(target):
    async def t(c, ctl):
        st, body = await call(c, "POST", "/open/" + target, headers=AUTH, json={"public_key": PUB})
        assert st == 400 and body["error"], target
        assert ctl.calls == []
    with_client(t)


@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "JSON"),
    (b"[1]", "object"),
    (b'{"public_key": "short"}', "public_key"),
    (b'{"public_key": 5}', "public_key"),
    (b'{"name": "bad name"}', "name"),
    (b'{"colour": "red"}', "unknown field"),
    (b"\xff\xfe", "JSON"),
])
def test_bad_open_bodies_are_400(body, fragment):
    async def t(c, ctl):
        st, reply = await call(c, "POST", "/open/192.0.2.7:9000", data=body,
                               headers=dict(AUTH, **{"Content-Type": "application/json"}))
        assert st == 400 and fragment in reply["error"]
        assert ctl.calls == []
    with_client(t)


def test_oversized_bodies_are_413():
    async def t(c, ctl):
        big = json.dumps({"rules": ["x" * (MAX_BODY + 10)]})
        st, body = await call(c, "PUT", "/firewall", data=big,
                              headers=dict(AUTH, **{"Content-Type": "application/json"}))
        assert st == 413 and "too large" in body["error"]

        async def chunks():                        # no Content-Length: chunked upload
            for _ in range(80):
                yield b" " * 1024
        st, body = await call(c, "PUT", "/firewall", data=chunks(), headers=AUTH)
        assert st == 413
        assert ctl.calls == []
    with_client(t)


def test_unexpected_exceptions_give_a_generic_500():
    async def t(c, ctl):
        st, body = await call(c, "GET", "/status")
        assert st == 500 and body == {"error": "internal error (see the daemon's log)"}
    with_client(t, ExplodingController())


def test_registered_private_keys_never_leave_through_the_api():
    secret = keys.decode_private_key(keys.genkey())
    b64 = keys.encode_key(secret)

    class Leaky(FakeController):
        def status(self):
            return {"private_key": b64, "public_key": PUB}

    async def t(c, ctl):
        st, body = await call(c, "GET", "/status")
        assert st == 200 and body == {"private_key": logsetup.REDACTED, "public_key": PUB}
    with_client(t, Leaky())


def test_bytes_in_a_response_are_refused_not_serialised():
    class Raw(FakeController):
        def status(self):
            return {"key": b"\x01" * 32}

    async def t(c, ctl):
        st, body = await call(c, "GET", "/status")
        assert st == 500 and "01" not in json.dumps(body)
    with_client(t, Raw())


# --- OpenAPI ----------------------------------------------------------------------------------
def test_openapi_describes_every_route():
    async def t(c, ctl):
        st, spec = await call(c, "GET", "/openapi.json")
        assert st == 200 and spec["openapi"].startswith("3.")
        described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
        routes = set()
        for r in c.app.router.routes():
            info = r.resource.get_info()
            path = info.get("path") or info.get("formatter")
            if r.handler is not refuse_get and r.method != "HEAD":
                routes.add((r.method, path))
        assert routes == described
        for ops in spec["paths"].values():
            for op in ops.values():
                if "security" in op:
                    assert "401" in op["responses"]
        return spec
    assert with_client(t) == json.loads(json.dumps(openapi_document()))


# --- the token file and serving ---------------------------------------------------------------------
def test_token_file_is_created_0600_and_reused(tmp_path):
    state = tmp_path / "state"
    token = load_or_create_token(state)
    assert len(token) == 64 and set(token) <= set(string.hexdigits)
    path = state / "token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert load_or_create_token(state) == token
    assert load_or_create_token(tmp_path / "other") != token


def test_token_file_readable_by_others_is_refused(tmp_path):
    load_or_create_token(tmp_path)
    os.chmod(tmp_path / "token", 0o644)
    with pytest.raises(ConfigError) as info:
        load_or_create_token(tmp_path)
    assert "chmod 600" in str(info.value)


def test_garbage_token_file_is_refused(tmp_path):
    fd = os.open(tmp_path / "token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"password\n")
    os.close(fd)
    with pytest.raises(ConfigError):
        load_or_create_token(tmp_path)


def test_start_api_on_tcp_and_a_0600_unix_socket(tmp_path):
    sock_path = tmp_path / "run" / "api.sock"

    async def go():
        controller = FakeController()
        runner = await start_api(create_app(controller, TOKEN), "127.0.0.1", 0, unix_path=sock_path)
        try:
            port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
            assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o600
            assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
            async with ClientSession() as s:
                async with s.get("http://127.0.0.1:%d/status" % port) as r:
                    assert r.status == 200
            async with ClientSession(connector=UnixConnector(path=str(sock_path))) as s:
                async with s.post("http://localhost/close/x", headers=AUTH) as r:
                    assert r.status == 404
                async with s.post("http://localhost/close/x") as r:
                    assert r.status == 401
        finally:
            await runner.cleanup()
        # A stale socket is replaced at the next start; a regular file is not.
        runner = await start_api(create_app(controller, TOKEN), None, 0, unix_path=sock_path)
        await runner.cleanup()
        sock_path.unlink(missing_ok=True)
        sock_path.write_text("not a socket")
        with pytest.raises(ConfigError):
            await start_api(create_app(controller, TOKEN), None, 0, unix_path=sock_path)
    run(go())


def test_port_in_use_raises_and_cleans_up():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        async def go():
            with pytest.raises(OSError):
                await start_api(create_app(FakeController(), TOKEN), "127.0.0.1", port)
        run(go())
    finally:
        blocker.close()


def test_empty_token_is_refused():
    with pytest.raises(ValueError):
        create_app(FakeController(), "")


def test_known_key_in_double_is_valid():
    assert len(keys.decode_public_key(KNOWN_KEY)) == 32


def test_open_with_allowed_ips_and_close_by_public_key():
    async def t(c, ctl):
        st, _ = await call(c, "POST", "/open/192.0.2.7:9000", headers=AUTH,
                           json={"public_key": PUB, "allowed_ips": ["10.9.0.5/32", "fd09::5/128"]})
        assert st == 200
        assert ctl.calls[-1] == ("open", ("192.0.2.7", 9000), PUB, None, ["10.9.0.5/32", "fd09::5/128"])
        for bad in (["10.9.0.5/24"], "10.9.0.5/32", [5], ["x"] * 300):
            st, body = await call(c, "POST", "/open/192.0.2.7:9000", headers=AUTH,
                                  json={"public_key": PUB, "allowed_ips": bad})
            assert st == 400 and "allowed_ips" in body["error"], bad
        assert len(ctl.calls) == 1

    class ByKey(FakeController):
        async def close(self, peer):
            self.calls.append(("close", peer))
            return {"closed": peer}

    async def t2(c, ctl):
        from urllib.parse import quote
        st, body = await call(c, "POST", "/close/" + quote(PUB, safe=""), headers=AUTH)
        assert (st, body) == (200, {"closed": PUB})
    with_client(t)
    with_client(t2, ByKey())


def test_random_input_never_causes_a_5xx():
    """A small fuzz run (hypothesis drives the inputs; the server is real)."""
    from hypothesis import HealthCheck, given, settings, strategies as st
    from urllib.parse import quote

    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                               lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                               max_leaves=8)
    bodies = st.one_of(st.none(), st.binary(max_size=64),
                       json_values.map(lambda v: json.dumps(v).encode()),
                       st.fixed_dictionaries({}, optional={"public_key": st.text(max_size=50),
                                                           "name": st.text(max_size=10),
                                                           "allowed_ips": json_values}
                                             ).map(lambda v: json.dumps(v).encode()))
    methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])
    paths = st.tuples(st.sampled_from(["/open/", "/close/", "/firewall", "/status", "/x/"]),
                      st.text(max_size=30)).map(lambda t: t[0] + quote(t[1], safe=":[]"))
    cases = st.lists(st.tuples(methods, paths, bodies, st.booleans()), min_size=1, max_size=5)

    async def check(batch):
        ctl = FakeController()
        async with TestClient(TestServer(create_app(ctl, TOKEN))) as c:
            for method, path, body, auth in batch:
                resp = await c.request(method, path, data=body, headers=AUTH if auth else {})
                assert resp.status < 500 or resp.status == 504, (method, path, body, resp.status)
                assert "error" in await resp.json() or resp.status == 200

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cases)
    def fuzz(batch):
        run(check(batch))

    fuzz()


def test_a_port_in_use_is_named():
    """A second daemon used to fail with "[Errno 98] Address already in use",
    not saying which port: the UDP, test and API binds name theirs."""
    import errno
    from phantom.dataplane.udp import open_test_socket, open_udp_socket
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            open_udp_socket(port)          # all addresses, dual-stack: collides with 127.0.0.1
        assert str(info.value).startswith("udp port %d is in use" % port), str(info.value)
        assert info.value.errno == errno.EADDRINUSE and "listen_port" in str(info.value)
        with pytest.raises(OSError) as info:
            open_test_socket(port)
        assert str(info.value).startswith("test port %d on 127.0.0.1 is in use" % port)
    finally:
        held.close()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    async def go():
        with pytest.raises(OSError) as info:
            await start_api(create_app(FakeController(), TOKEN), "127.0.0.1", port)
        return info.value
    try:
        err = run(go())
    finally:
        listener.close()
    assert str(err).startswith("API port %d on 127.0.0.1 is in use" % port), str(err)
    assert "http_port" in str(err)
