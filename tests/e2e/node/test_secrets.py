"""Secrets are never echoed (issue #10, items 2 and 3).

A real phantomd (in a network namespace, TCP listener and Unix socket) gets
its own private key and its API token in every place a request can carry
them: the path, the query string, JSON body keys and values, header names and
values, an over-long header, an over-long Authorization header, in standard,
URL-safe, unpadded and hex form.  Every response (status line, headers, body)
and the whole daemon log are searched for any form of either secret, also
for fragments of them.  aiohttp's parser errors must come back in the normal
JSON error shape, and an HTTP/1.0 request without Host must be refused on
TCP (it sidestepped the DNS-rebinding Host check).

The key directory gets the same treatment where it applies (it holds no
secret of its own, so it must simply echo nothing).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import socket
import threading
import time
from urllib.parse import quote

import pytest

from phantom import logsetup
from phantomlab.nodes import make_node, start
from phantomlab.templates import FAST_TUNABLES, HTTP_PORT, write_config

FRAGMENT = 20          # a run of this many characters of a secret's rendering is a leak


# --- secrets and how they may be written --------------------------------------------------------
def renderings(raw: bytes) -> dict[str, str]:
    b64 = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {"b64": b64, "b64-unpadded": b64.rstrip("="), "urlsafe": url,
            "urlsafe-unpadded": url.rstrip("="), "hex": raw.hex(), "HEX": raw.hex().upper(),
            "b64-percent": quote(b64, safe="")}


def leaks(text: str, secrets: dict[str, bytes]) -> list[str]:
    """Every (secret, form) of which ``text`` holds the whole or a fragment."""
    found = []
    low = text.lower()
    for name, raw in secrets.items():
        for form, value in renderings(raw).items():
            if form == "b64-percent":
                if value in text or value.lower() in low:
                    found.append("%s/%s" % (name, form))
                continue
            hay = low if form in ("hex", "HEX") else text
            needle = value.lower() if form in ("hex", "HEX") else value
            if any(needle[i:i + FRAGMENT] in hay for i in range(len(needle) - FRAGMENT + 1)):
                found.append("%s/%s" % (name, form))
    return sorted(set(found))


# --- raw HTTP -----------------------------------------------------------------------------------
def request(method: str, target: str, headers=(), body: bytes | None = None, *,
            version: str = "HTTP/1.1", host: str | None = "127.0.0.1") -> bytes:
    lines = ["%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append("Host: " + host)
    lines += ["%s: %s" % kv for kv in headers]
    lines.append("Connection: close")
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin1") + (body or b"")


def exchange(sock: socket.socket, data: bytes, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                 # the server answered and closed before reading it all
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        sock.close()


def parse(reply: bytes) -> tuple[int, dict, object]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    try:
        parsed = json.loads(body.decode("utf-8")) if body.strip() else None
    except ValueError:
        parsed = body.decode("latin1")
    return status, headers, parsed


def assert_error_shape(reply: bytes, status: int | tuple | None = None) -> dict:
    code, headers, body = parse(reply)
    if status is not None:
        assert code in ((status,) if isinstance(status, int) else status), (code, body)
    assert 400 <= code <= 599, (code, body)
    assert headers.get("content-type", "").startswith("application/json"), (code, headers, body)
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body
    assert body["error"]
    return body


# --- the daemon ---------------------------------------------------------------------------------
class Daemon:
    def __init__(self, node, sock_path):
        self.node = node
        self.sock_path = sock_path
        self.key = base64.b64decode(node.keyfile.read_text().strip())
        self.token = node.daemon.token
        self.secrets = {"private key": self.key, "token": bytes.fromhex(self.token)}

    def tcp(self, data: bytes, timeout: float = 30.0) -> bytes:
        return exchange(self.node.host.ns.tcp_connect("127.0.0.1", HTTP_PORT, timeout), data,
                        timeout)

    def unix(self, data: bytes, timeout: float = 30.0) -> bytes:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(self.sock_path))
        return exchange(s, data, timeout)

    def log(self) -> str:
        return self.node.daemon.log()


@pytest.fixture
def daemon(two_hosts, daemon_factory, tmp_path):
    node = make_node(tmp_path, "n1", 1, two_hosts.a)
    sock = tmp_path / "api.sock"
    write_config(node, mode="test", peers=[], tunables=FAST_TUNABLES,
                 extra={"http_socket": str(sock)})
    start(daemon_factory, node)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, node.daemon.log_tail()
        time.sleep(0.05)
    d = Daemon(node, sock)
    assert len(d.key) == 32 and len(d.token) == 64
    return d


def secret_requests(d: Daemon) -> list[tuple[str, bytes]]:
    """(label, raw request) with a secret in every place a request carries one."""
    auth = ("Authorization", "Bearer " + d.token)
    json_h = ("Content-Type", "application/json")
    out = []
    for name, raw in d.secrets.items():
        for form, s in renderings(raw).items():
            tag = "%s/%s" % (name, form)
            q = quote(s, safe="")
            out += [
                (tag + " in an unknown path", request("GET", "/x/" + q)),
                (tag + " glued to a path", request("GET", "/status" + q)),
                (tag + " in the path of POST /open", request("POST", "/open/" + q, [auth])),
                (tag + " as a peer name", request("POST", "/open/" + s.replace("/", "_")
                                                  .replace("+", "-").rstrip("="), [auth])),
                (tag + " in an endpoint", request("POST", "/open/%s:9000" % q, [auth])),
                (tag + " in POST /close", request("POST", "/close/" + q, [auth])),
                (tag + " in a 405", request("GET", "/open/" + q)),
                (tag + " in the query", request("GET", "/status?k=%s&%s=1" % (q, q))),
                (tag + " in the query of a 404", request("GET", "/nope?k=" + q)),
                (tag + " as a body key", request("POST", "/open/192.0.2.7:9000", [auth, json_h],
                                                 json.dumps({s: 1}).encode())),
                (tag + " as the name", request("POST", "/open/192.0.2.7:9000", [auth, json_h],
                                               json.dumps({"name": s}).encode())),
                (tag + " as allowed_ips", request("POST", "/open/192.0.2.7:9000", [auth, json_h],
                                                  json.dumps({"public_key": "x",
                                                              "allowed_ips": [s]}).encode())),
                (tag + " as a firewall rule", request("PUT", "/firewall", [auth, json_h],
                                                      json.dumps({"rules": [{s: s}]}).encode())),
                (tag + " in a body that is not JSON", request("PUT", "/firewall", [auth, json_h],
                                                              b"{" + s.encode())),
                (tag + " as a header name", request("GET", "/status", [("X-" + s, "1")])),
                (tag + " as a header value", request("GET", "/status", [("X-Key", s)])),
                (tag + " as Host", request("GET", "/status", host=s)),
                (tag + " as the bearer token", request("POST", "/close/x",
                                                       [("Authorization", "Bearer " + s)])),
                (tag + " in an over-long header", request(
                    "GET", "/status", [("X-Pad", "a" * 9000 + s)])),
                (tag + " at the start of an over-long header", request(
                    "GET", "/status", [("X-Pad", s + "a" * 9000)])),
                (tag + " in an over-long URL", request("GET", "/" + q + "a" * 9000)),
                (tag + " as the method", ("%s / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % s).encode()),
                (tag + " in a bad chunk", request("PUT", "/firewall", [
                    auth, json_h, ("Transfer-Encoding", "chunked")])[:-len(b"Connection: close\r\n\r\n")]
                    + b"Connection: close\r\n\r\nZZ" + s.encode() + b"\r\n\r\n"),
            ]
        if name == "private key":
            # a well-formed request: the private key given as a peer's public key
            out.append(("private key as public_key", request(
                "POST", "/open/192.0.2.7:9000", [auth, json_h],
                json.dumps({"public_key": renderings(raw)["b64"], "name": "mistake"}).encode())))
    # the token itself, over-long, in Authorization (aiohttp quoted it in its 400 and its log)
    out.append(("over-long Authorization", request(
        "POST", "/close/x", [("Authorization", "Bearer " + d.token + "x" * 9000)])))
    out.append(("over-long Authorization, token at the end", request(
        "POST", "/close/x", [("Authorization", "Bearer " + "x" * 9000 + d.token)])))
    return out


# --- the tests ----------------------------------------------------------------------------------
@pytest.mark.netns
def test_secrets_in_any_part_of_a_request_are_never_echoed_or_logged(daemon):
    d = daemon
    replies = []
    for label, data in secret_requests(d):
        for via in ("tcp", "unix"):
            reply = d.tcp(data) if via == "tcp" else d.unix(data)
            assert reply, (label, via, "no answer")
            replies.append((label, via, reply))
    # what the daemon kept: the peer opened with the private key as its "public key"
    for path in ("/status", "/peers", "/firewall"):
        replies.append((path, "tcp", d.tcp(request("GET", path))))

    problems = []
    for label, via, reply in replies:
        text = reply.decode("latin1")
        found = leaks(text, d.secrets)
        if found:
            problems.append("%s (%s): response holds %s: %.200r"
                            % (label, via, found, text.partition("\r\n\r\n")[2]))
        code, _, body = parse(reply)
        if code >= 400:
            try:
                assert_error_shape(reply)
            except AssertionError:
                problems.append("%s (%s): not the JSON error shape: %d %.120r"
                                % (label, via, code, body))
        if code >= 500 and code != 504:
            problems.append("%s (%s): status %d: %r" % (label, via, code, body))
    log = d.log()
    found = leaks(log, d.secrets)
    if found:
        lines = [ln for ln in log.splitlines() if leaks(ln, d.secrets)]
        problems.append("the daemon log holds %s, e.g. %s" % (found, lines[:3]))
    assert not problems, "\n".join(problems)
    assert d.node.daemon.running


@pytest.mark.netns
def test_overlong_header_gets_the_json_error_shape(daemon):
    d = daemon
    cases = [
        (request("GET", "/status", [("X-Pad", "a" * 9000 + d.token)]), 431),
        (request("POST", "/close/x", [("Authorization", "Bearer " + d.token + "x" * 9000)]), 431),
        (request("GET", "/status", [("X-%d" % i, d.token) for i in range(100)]), 431),
        (request("GET", "/" + "a" * 9000), 414),
        (b"G@T /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET /status HTTP/9.x\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32), 400),
        (b"PUT /firewall HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + d.token.encode()
         + b"\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n\r\n", 400),
    ]
    for data, status in cases:
        for via in (d.tcp, d.unix):
            reply = via(data)
            body = assert_error_shape(reply, status)
            assert d.token not in body["error"]
            assert not leaks(reply.decode("latin1"), d.secrets)
    log = d.log()
    assert not leaks(log, d.secrets), [ln for ln in log.splitlines() if leaks(ln, d.secrets)][:3]
    assert " ERROR " not in log, "a malformed request is not an error of the daemon"
    assert "too long" in log          # logged, in our words


@pytest.mark.netns
def test_http10_without_host_is_refused_on_tcp(daemon):
    d = daemon
    reply = d.tcp(b"GET /status HTTP/1.0\r\n\r\n")
    body = assert_error_shape(reply, 400)
    assert "Host" in body["error"]
    reply = d.tcp(b"POST /close/x HTTP/1.0\r\nAuthorization: Bearer " + d.token.encode()
                  + b"\r\n\r\n")
    assert "Host" in assert_error_shape(reply, 400)["error"]
    # with a Host header HTTP/1.0 is fine, and a bad Host is still 403
    assert parse(d.tcp(b"GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))[0] == 200
    assert_error_shape(d.tcp(b"GET /status HTTP/1.0\r\nHost: evil.example\r\n\r\n"), 403)
    # The Unix socket may go without Host: no browser can reach it (DNS rebinding
    # needs one), and only its owner can connect (0600).
    code, _, body = parse(d.unix(b"GET /status HTTP/1.0\r\n\r\n"))
    assert code == 200 and body["mode"] == "test"


# --- the redaction itself (no daemon needed) -----------------------------------------------------
@pytest.fixture
def captured():
    stream = io.StringIO()
    logsetup.setup_logging("debug", stream=stream)
    yield stream
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_phantom", False):
            root.removeHandler(h)


def test_redaction_finds_every_form_anywhere_in_every_log_record(captured):
    key, token = os.urandom(32), os.urandom(32)
    logsetup.register_secret(key)
    logsetup.register_secret(token)
    secrets = {"key": key, "token": token}
    contexts = ["%s", "/open/%s", "/x/%s/y", "x_%s_y", "AAAA%sBBBB", "Bearer %s", "%s:9000",
                "%s%s", "k=%s&", "'%s'"]
    texts = []
    for raw in secrets.values():
        for form, value in renderings(raw).items():
            for ctx in contexts:
                texts.append(ctx.replace("%s", value))
    log = logsetup.get_logger("api")
    other = logging.getLogger("aiohttp.server")       # not phantom's: the handler redacts it too
    for t in texts:
        assert not leaks(logsetup.redact(t), secrets), t
        log.info("message %s", t)
        other.error("arg %r", t)
        log.warning(t)
        try:
            raise ValueError(t)
        except ValueError:
            log.exception("failed")
            other.exception("failed")
    out = captured.getvalue()
    assert out.count("\n") == 5 * len(texts)
    assert not leaks(out, secrets), [ln for ln in out.splitlines() if leaks(ln, secrets)][:3]
    # the API token is registered as its hex text, as create_app does
    text_token = os.urandom(32).hex()
    logsetup.register_secret(text_token)
    for t in (text_token, text_token.upper(), "/x/" + text_token + "/y",
              base64.urlsafe_b64encode(bytes.fromhex(text_token)).decode().rstrip("=")):
        assert logsetup.redact(t).replace("/x/", "").replace("/y", "") == logsetup.REDACTED, t
    # public keys and ordinary text are left alone
    public = base64.b64encode(os.urandom(32)).decode()
    assert logsetup.redact("peer %s /open/%s" % (public, public)) == "peer %s /open/%s" % (public, public)


# --- the key directory --------------------------------------------------------------------------
@pytest.fixture
def directory(captured):
    from phantom import directory as dmod

    ready = threading.Event()
    box: dict = {}

    def serve():
        async def main():
            store = dmod.DirectoryStore(":memory:")
            runner = await dmod.start_server(dmod.create_app(store), "127.0.0.1", 0)
            box["port"] = runner.addresses[0][1]
            box["stop"] = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await box["stop"].wait()
            await runner.cleanup()
            store.close()
        asyncio.run(main())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    yield box["port"], captured
    box["loop"].call_soon_threadsafe(box["stop"].set)
    t.join(10)


def test_directory_echoes_no_secret_and_answers_parser_errors_in_json(directory):
    port, captured = directory
    secrets = {"key": os.urandom(32), "token": os.urandom(32)}     # the directory knows neither

    def send(data):
        return exchange(socket.create_connection(("127.0.0.1", port), timeout=10), data, 10)

    replies = []
    for raw in secrets.values():
        for form, s in renderings(raw).items():
            q = quote(s, safe="")
            for data in (request("GET", "/nope/" + q), request("GET", "/records/" + q),
                         request("GET", "/records/" + s.replace("/", "_").replace("+", "-")),
                         request("GET", "/names/" + q), request("GET", "/records?after=" + q),
                         request("POST", "/status/" + q),
                         request("PUT", "/records/" + q, [("Content-Type", "application/json")],
                                 json.dumps({s: s}).encode()),
                         request("GET", "/status", [("X-Pad", "a" * 9000 + s)]),
                         request("GET", "/status", [("X-" + s, s)]),
                         request("GET", "/" + q + "a" * 9000),
                         ("%s / HTTP/1.1\r\nHost: x\r\n\r\n" % s).encode()):
                replies.append(send(data))
    for reply in replies:
        assert not leaks(reply.decode("latin1"), secrets), reply[:300]
        if parse(reply)[0] >= 400:
            assert_error_shape(reply)
    assert_error_shape(send(request("GET", "/status", [("X-Pad", "a" * 9000)])), 431)
    assert_error_shape(send(request("GET", "/" + "a" * 9000)), 414)
    assert_error_shape(send(b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"), 400)
    assert_error_shape(send(b"PUT /records/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                            b"\r\n\r\nZZ\r\n\r\n"), 400)
    out = captured.getvalue()
    assert not leaks(out, secrets), [ln for ln in out.splitlines() if leaks(ln, secrets)][:3]
    assert " ERROR " not in out


# --- the same checks in-process (no root needed): start_api with the test double -------------------
def test_start_api_answers_parser_errors_in_json_and_needs_host_on_tcp(tmp_path, captured):
    from tests.support.apidouble import FakeController
    from phantom.control.api import create_app, start_api

    token = os.urandom(32).hex()
    key = os.urandom(32)
    logsetup.register_secret(key)
    secrets = {"key": key, "token": bytes.fromhex(token)}
    sock_path = tmp_path / "api.sock"
    ready = threading.Event()
    box: dict = {}

    def serve():
        async def main():
            runner = await start_api(create_app(FakeController(), token), "127.0.0.1", 0,
                                     unix_path=sock_path)
            box["port"] = next(a[1] for a in runner.addresses if isinstance(a, tuple))
            box["stop"] = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await box["stop"].wait()
            await runner.cleanup()
        asyncio.run(main())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        def tcp(data):
            return exchange(socket.create_connection(("127.0.0.1", box["port"]), timeout=10),
                            data, 10)

        def unix(data):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(sock_path))
            return exchange(s, data, 10)

        b64 = base64.b64encode(key).decode()
        auth = ("Authorization", "Bearer " + token)
        for via in (tcp, unix):
            assert_error_shape(via(request("GET", "/status", [("X-Pad", "a" * 9000 + token)])), 431)
            assert_error_shape(via(request("POST", "/close/x", [
                ("Authorization", "Bearer " + token + "x" * 9000)])), 431)
            assert_error_shape(via(request("GET", "/" + "a" * 9000)), 414)
            for reply in (via(request("GET", "/x/" + b64)),
                          via(request("GET", "/status", host=token)),
                          via(request("POST", "/open/192.0.2.7:9000", [auth], json.dumps(
                              {b64.rstrip("="): 1, "name": token}).encode())),
                          via(request("POST", "/open/" + quote(b64, safe="") + ":1", [auth]))):
                assert_error_shape(reply)
                assert not leaks(reply.decode("latin1"), secrets), reply
        body = assert_error_shape(tcp(b"GET /status HTTP/1.0\r\n\r\n"), 400)
        assert "Host" in body["error"]
        assert parse(unix(b"GET /status HTTP/1.0\r\n\r\n"))[0] == 200
        assert parse(tcp(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n"))[0] == 200
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(10)
    out = captured.getvalue()
    assert not leaks(out, secrets), out
    assert " ERROR " not in out
