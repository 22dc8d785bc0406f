"""The HTTP command API of phantomd (aiohttp).

Routes (all JSON; see :data:`OPENAPI` and README.md, "HTTP command API"):

====== ======================= ============================================
POST   /open/{target}          open a tunnel; target is ``IP:PORT``,
                               ``[IPv6]:PORT`` or a peer name; optional body
                               ``{"public_key": "...", "name": "...",
                               "allowed_ips": ["10.9.0.2/32"]}``
POST   /close/{peer}           close the tunnel to a peer (name or public
                               key, URL-encoded)
GET    /status                 the daemon's status
GET    /peers                  ``{"peers": [...]}``
GET    /firewall               the firewall rules in force
PUT    /firewall               replace the firewall rules (JSON object body)
GET    /dns                    the names the name service answers ([dns])
GET    /openapi.json           an OpenAPI 3 description of these routes
====== ======================= ============================================

The operations routes (the dashboard at ``/``, ``/metrics``, ``/events``,
``/auth``, ``POST /reload``) live in :mod:`phantom.control.opsapi`, behind
the same middlewares.

Security (see README "Security model"):

* every state-changing request (any method but GET/HEAD/OPTIONS) needs
  ``Authorization: Bearer <token>``; the token is compared in constant time
  and checked before the body is read or the controller is called;
* a GET on a state-changing route is refused (405): a web page in a local
  browser can fire GETs at localhost but cannot set the header;
* the Host header must be an IP literal or ``localhost`` (or one of
  ``allowed_hosts``), which defeats DNS rebinding against the read routes;
  on the TCP listener it is required, HTTP/1.0 included (400 without it);
  over the Unix socket (0600, out of a browser's reach) it may be missing;
* bodies are limited to :data:`MAX_BODY` bytes (413) and must arrive within
  :data:`BODY_TIMEOUT` seconds (408);
* errors are ``{"error": message}`` with a 4xx status; an unexpected
  exception is logged and answered with a generic 500;
* errors never quote the request (path, query, headers, body keys): they
  name route templates, known fields and limits.  aiohttp's parser errors
  (over-long request line 414, over-long or too many headers 431, bad
  request line, method, header or chunking 400) get the same JSON shape
  through :class:`JsonErrorRunner`, and are logged without the request's
  bytes;
* responses pass through :func:`phantom.logsetup.redact`, so the registered
  private key and the API token can never leave through the API in any
  encoding.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import hmac
import inspect
import ipaddress
import json
import os
import secrets
import socket
import stat
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import (BadHttpMethod, BadStatusLine, ContentLengthError,
                                     HttpProcessingError, InvalidHeader, InvalidURLError,
                                     LineTooLong, TransferEncodingError)

from phantom import __version__, logsetup
from phantom.control.config import PEER_NAME, PEER_NAME_RULE, parse_endpoint, parse_network
from phantom.control.errors import (ApiError, BadRequest, ConfigError, PayloadTooLarge,
                                    Unauthorized)

log = logsetup.get_logger("api")

MAX_BODY = 64 * 1024             # bytes
BODY_TIMEOUT = 10.0              # seconds to receive a request body
HANDLER_TIMEOUT = 120.0          # seconds for one controller call (open retries fit in it)
TOKEN_FILE = "token"
TOKEN_BYTES = 32
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
# Methods an error message may name (anything else is not echoed).
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                           "CONNECT"))
# Parser limits.  They differ by two bytes so that an over-long request line
# (414) can be told from an over-long header (431): aiohttp reports both as
# LineTooLong with the limit that was hit.
MAX_REQUEST_LINE = 8190          # bytes: method, target, version
MAX_HEADER = 8192                # bytes: one header, name and value
MAX_HEADERS = 64                 # header lines

CONTROLLER_KEY = web.AppKey("controller", object)
TOKEN_KEY = web.AppKey("token", bytes)
HOSTS_KEY = web.AppKey("allowed_hosts", frozenset)


# --- the token --------------------------------------------------------------------------------
def load_or_create_token(state_dir) -> str:
    """Return the API token from ``<state_dir>/token``, creating it at first start.

    The token is 32 random bytes as 64 hex digits, in a file of mode 0600
    (created atomically; the directory is created 0700).  An existing token
    file that group or others can access, or that another user owns, is
    refused with ConfigError.
    """
    from phantom.control.keys import KeyFileError, check_secret_file, write_secret_file

    state_dir = Path(state_dir)
    path = state_dir / TOKEN_FILE
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("state_dir", "cannot create %s: %s" % (state_dir, exc.strerror or exc))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            token = secrets.token_hex(TOKEN_BYTES)
            try:
                write_secret_file(path, (token + "\n").encode("ascii"))
            except FileExistsError:
                continue          # another daemon created it first: read theirs
            except OSError as exc:
                raise ConfigError("state_dir", "cannot write %s: %s"
                                  % (path, exc.strerror or exc)) from None
            log.info("created API token file %s", path)
            return token
        except OSError as exc:
            raise ConfigError("state_dir", "cannot open %s: %s" % (path, exc.strerror or exc))
        try:
            try:
                check_secret_file(fd, path, kind="API token file")
            except KeyFileError as exc:
                raise ConfigError("state_dir", exc.problem) from None
            token = os.read(fd, 4096).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        if len(token) < 32 or not all(c in "0123456789abcdefABCDEF" for c in token):
            raise ConfigError("state_dir", "%s does not hold a token (64 hex digits); delete it "
                              "and a new one is made at the next start" % path)
        return token
    raise ConfigError("state_dir", "cannot create %s" % path)


# --- JSON helpers -----------------------------------------------------------------------------
def _json_default(obj):
    if isinstance(obj, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                        ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface,
                        Path)):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    # bytes are refused on purpose: key material must be encoded deliberately.
    raise TypeError("%s is not JSON serialisable" % type(obj).__name__)


def json_response(data: Any, status: int = 200) -> web.Response:
    text = logsetup.redact(json.dumps(data, default=_json_default, separators=(",", ":")))
    return web.Response(text=text, status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


# --- middlewares -------------------------------------------------------------------------------
def _over_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def _host_ok(request: web.Request) -> bool:
    host = request.headers.get("Host")
    if host is None:
        # Only over the Unix socket (the TCP listener refuses a missing Host
        # before this): no browser reaches a Unix socket, so DNS rebinding
        # does not apply, and the socket is 0600.
        return True
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if name in ("localhost", "localhost.") or name in request.app[HOSTS_KEY]:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


# --- errors that echo nothing of the request ------------------------------------------------
# An error message names only what the server defines (route templates, known
# field names, limits), never the path, a header or a body key as received: any
# of them may be a secret (a key pasted in the wrong place, the token).
def _method(request: web.BaseRequest) -> str:
    return request.method if request.method in KNOWN_METHODS else "this method"


def route_template(request: web.BaseRequest) -> str:
    """``METHOD /template`` of the matched route, or ``"this request"``."""
    try:
        route = request.match_info.route
        info = route.resource.get_info() if route.resource is not None else {}
    except Exception:
        return "this request"
    template = info.get("path") or info.get("formatter")
    return "%s %s" % (_method(request), template) if template else "this request"


def _routes(app: web.Application) -> str:
    seen = []
    for r in app.router.routes():
        info = r.resource.get_info() if r.resource is not None else {}
        template = info.get("path") or info.get("formatter")
        handler = getattr(r.handler, "__name__", "")
        if template and r.method != "HEAD" and handler != "_refuse_get":
            entry = "%s %s" % (r.method, template)
            if entry not in seen:
                seen.append(entry)
    return ", ".join(seen)


def parser_error(exc: BaseException) -> tuple[int, str]:
    """Status and message for an error of aiohttp's HTTP parser.  The message
    describes the problem in our words: the parser's own text quotes the
    request's bytes (an over-long Authorization header is the token)."""
    text = getattr(exc, "message", "") if isinstance(exc, HttpProcessingError) else ""
    text = text if isinstance(text, str) else ""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == MAX_REQUEST_LINE:
            return 414, "request line too long (limit %d bytes)" % MAX_REQUEST_LINE
        return 431, "a request header is too long (limit %d bytes per header)" % MAX_HEADER
    if text.startswith("Too many headers"):
        return 431, "too many request headers (limit %d)" % MAX_HEADERS
    if text.startswith("Missing 'Host' header"):
        return 400, "missing Host header (HTTP/1.1 requires one)"
    if text.startswith("Duplicate"):
        return 400, "a header that may appear once (Host, Content-Length, ...) appears twice"
    if isinstance(exc, BadHttpMethod):
        return 400, "malformed request line: unknown method (or not HTTP at all)"
    if isinstance(exc, BadStatusLine):
        return 400, "malformed request line (expected METHOD /path HTTP/1.1)"
    if isinstance(exc, InvalidURLError):
        return 400, "malformed request target"
    if isinstance(exc, InvalidHeader):
        return 400, "malformed request header"
    if isinstance(exc, TransferEncodingError):
        return 400, "malformed body: bad chunked transfer encoding"
    if isinstance(exc, ContentLengthError):
        return 400, "malformed body: it does not match its Content-Length"
    if "Content-Length" in text or "Transfer-Encoding" in text or "chunk" in text.lower():
        return 400, "malformed body framing (Content-Length / Transfer-Encoding)"
    return 400, "malformed HTTP request"


def _client_gone(request: web.BaseRequest, exc: BaseException) -> bool:
    """The client closed the connection (while we read its body): not a bug."""
    transport = request.transport
    return isinstance(exc, ConnectionResetError) and (transport is None or transport.is_closing())


def json_errors(respond: Callable[[int, str], web.Response], max_body: int, who: str):
    """An aiohttp middleware that turns every failure into ``{"error": ...}``
    with a fitting status and never leaks a traceback or any of the request.
    Shared by the daemon's API and the key directory; ``who`` names the log a
    500 points to."""

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            return respond(exc.status if 400 <= exc.status <= 599 else 500, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = exc.headers.get("Allow", "")
            if exc.status == 404:
                message = "no such route (the routes are: %s)" % _routes(request.app)
            elif exc.status == 405:
                message = "method %s is not allowed on this route (allowed: %s)" % (
                    _method(request), allow or "none")
            elif exc.status == 413:
                message = "request body too large (limit %d bytes)" % max_body
            else:
                message = exc.reason or "error"
            resp = respond(exc.status, message)
            if exc.status == 405 and allow:
                resp.headers["Allow"] = allow
            return resp
        except HttpProcessingError as exc:       # the body's framing, found while reading it
            status, message = parser_error(exc)
            log.info("refused a request from %s: %s", request.remote or "the Unix socket", message)
            return respond(status, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _client_gone(request, exc):
                log.debug("client went away during %s", route_template(request))
                return respond(400, "connection closed before the request was complete")
            log.exception("internal error handling %s", route_template(request))
            return respond(500, "internal error (see the %s's log)" % who)

    return errors


class JsonErrorHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, with errors that happen outside the
    application (the HTTP parser's: over-long line or header, bad request line
    or method, bad chunking, ...; a 500 or 504 past the middlewares) answered
    in the JSON error shape, with a fitting status, and logged without the
    request's bytes (aiohttp's own answer is plain text that quotes them, and
    it logs them at ERROR)."""

    def handle_error(self, request, status: int = 500, exc: Optional[BaseException] = None,
                     message: Optional[str] = None) -> web.StreamResponse:
        server = self._manager
        if isinstance(exc, HttpProcessingError):
            status, text = parser_error(exc)
            log.info("refused a malformed request from %s: %s", request.remote or "the Unix socket", text)
        elif status == 500:
            log.error("internal error handling a request from %s", request.remote,
                      exc_info=exc)
            text = "internal error (see the %s's log)" % server.who
        elif status == 504:
            text = "the request took too long"
        else:
            text = "bad request"
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        resp = server.respond(status, text)
        resp.force_close()
        return resp


class JsonErrorServer(web_server.Server):
    """aiohttp's low-level server (the protocol factory), making
    :class:`JsonErrorHandler` connections."""

    respond: Callable[[int, str], web.Response]
    who: str

    def __call__(self) -> web_protocol.RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """An AppRunner whose connections answer parser errors in JSON (see
    :class:`JsonErrorHandler`), with :data:`MAX_REQUEST_LINE`,
    :data:`MAX_HEADER` and :data:`MAX_HEADERS` as the parser's limits."""

    def __init__(self, app: web.Application, *, respond: Callable[[int, str], web.Response],
                 who: str, **kwargs):
        kwargs.setdefault("max_line_size", MAX_REQUEST_LINE)
        kwargs.setdefault("max_field_size", MAX_HEADER)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        super().__init__(app, **kwargs)
        self._respond, self._who = respond, who

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        if type(server) is not web_server.Server:      # pragma: no cover (aiohttp changed)
            raise TypeError("unexpected aiohttp server class %r" % type(server))
        server.__class__ = JsonErrorServer
        server.respond, server.who = self._respond, self._who
        return server


_errors = json_errors(error_response, MAX_BODY, "daemon")


@web.middleware
async def _guard(request: web.Request, handler):
    """Host check, then the token on every state-changing method, before any work."""
    if "Host" not in request.headers and not _over_unix_socket(request):
        # HTTP/1.0 lets a client leave Host out; on TCP that would sidestep the check below.
        return error_response(400, "missing Host header: send 'Host: 127.0.0.1' (or localhost); "
                              "it is required on the TCP listener")
    if not _host_ok(request):
        return error_response(403, "the Host header is not allowed (use 127.0.0.1, [::1] or "
                              "localhost)")
    if request.method not in SAFE_METHODS:
        match = request.match_info
        if match.http_exception is not None:
            raise match.http_exception       # unknown route or method: 404/405, no state change
        if not _authorized(request):
            resp = error_response(401, "missing or wrong API token: send 'Authorization: Bearer "
                                  "<token>' (the token is in the daemon's state directory)")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="phantom"'
            return resp
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise PayloadTooLarge("request body too large (%d bytes, limit %d)" % (length, MAX_BODY))
    return await handler(request)


def _authorized(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    expected = request.app[TOKEN_KEY]
    # Always run the comparison, so a missing header costs the same as a wrong one.
    ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)
    return ok and scheme.lower() == "bearer"


# --- request helpers ---------------------------------------------------------------------------
async def _read_json(request: web.Request, *, required: bool) -> Any:
    if not request.body_exists:
        if required:
            raise BadRequest("this request needs a JSON body")
        return None
    try:
        # request.read() enforces client_max_size (413), chunked bodies included.
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
    except asyncio.TimeoutError:
        raise RequestTimeout("request body not received within %g s" % BODY_TIMEOUT) from None
    if not raw.strip():
        if required:
            raise BadRequest("this request needs a JSON body")
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("body is not valid JSON: %s" % exc) from None


class RequestTimeout(ApiError):
    status = 408


async def _call(value):
    if inspect.isawaitable(value):
        return await asyncio.wait_for(value, HANDLER_TIMEOUT)
    return value


def _controller(request: web.Request):
    return request.app[CONTROLLER_KEY]


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not PEER_NAME.match(value):
        raise BadRequest("%s is not a valid peer name (%s)" % (what, PEER_NAME_RULE))
    return value


# --- handlers ---------------------------------------------------------------------------------
async def open_tunnel(request: web.Request) -> web.Response:
    target = request.match_info["target"]
    body = await _read_json(request, required=False)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object like {\"public_key\": \"...\", \"name\": \"...\"}")
    unknown = set(body) - {"public_key", "name", "allowed_ips", "protocol"}
    if unknown:
        raise BadRequest("unknown field(s) in body: %d (known: public_key, name, allowed_ips, protocol)"
                         % len(unknown))
    public_key = body.get("public_key")
    if public_key is not None:
        from phantom.control.keys import KeyFormatError, decode_public_key
        try:
            decode_public_key(public_key)
        except KeyFormatError as exc:
            raise BadRequest("public_key: %s" % exc) from None
    name = body.get("name")
    if name is not None:
        _check_name(name, "name")
    extra = {}
    if body.get("allowed_ips") is not None:
        nets = body["allowed_ips"]
        if not isinstance(nets, list) or len(nets) > 256:
            raise BadRequest("allowed_ips must be a list of CIDR strings like \"10.9.0.2/32\"")
        try:
            extra["allowed_ips"] = [str(parse_network(n, "allowed_ips[%d]" % i))
                                    for i, n in enumerate(nets)]
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
    if body.get("protocol") is not None:
        if body["protocol"] not in ("phantom", "wireguard"):
            raise BadRequest("protocol must be \"phantom\" or \"wireguard\"")
        extra["protocol"] = body["protocol"]

    endpoint: Optional[tuple[str, int]]
    if PEER_NAME.match(target) and not _looks_like_address(target):
        # `phantom open NAME`: the controller finds the endpoint (config or directory).
        if name is not None and name != target:
            raise BadRequest("the name in the body differs from the peer name in the path")
        endpoint, name = None, target
    else:
        try:
            endpoint = parse_endpoint(target, "endpoint")
        except ConfigError:
            raise BadRequest("malformed endpoint: write IP:PORT (port 1..65535) or [IPv6]:PORT "
                             "with a unicast address, or a peer name") from None
    # allowed_ips and protocol are passed only when given, so a controller may omit the keywords.
    result = await _call(_controller(request).open(endpoint, public_key, name, **extra))
    return json_response(result)


def _looks_like_address(text: str) -> bool:
    head = text.partition(":")[0]
    return all(c.isdigit() or c == "." for c in head)


async def close_tunnel(request: web.Request) -> web.Response:
    peer = request.match_info["peer"]
    if not peer or len(peer) > 128 or not peer.isprintable():
        raise BadRequest("malformed peer name")
    result = await _call(_controller(request).close(peer))
    return json_response(result)


async def get_status(request: web.Request) -> web.Response:
    return json_response(await _call(_controller(request).status()))


async def get_peers(request: web.Request) -> web.Response:
    return json_response({"peers": list(await _call(_controller(request).peers()))})


async def get_dns(request: web.Request) -> web.Response:
    return json_response(await _call(_controller(request).dns()))


async def get_firewall(request: web.Request) -> web.Response:
    return json_response(await _call(_controller(request).firewall()))


async def put_firewall(request: web.Request) -> web.Response:
    rules = await _read_json(request, required=True)
    if not isinstance(rules, dict):
        raise BadRequest("body must be a JSON object holding the firewall rules")
    return json_response(await _call(_controller(request).set_firewall(rules)))


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


async def _refuse_get(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


# --- the application ----------------------------------------------------------------------------
def create_app(controller, token: str, *, allowed_hosts: Iterable[str] = ()) -> web.Application:
    """The API application.  ``controller`` implements open/close/status/peers/firewall."""
    if not token:
        raise ValueError("the API token must not be empty")
    app = web.Application(middlewares=[_errors, _guard], client_max_size=MAX_BODY)
    logsetup.register_secret(token)          # never echoed, never logged
    app[CONTROLLER_KEY] = controller
    app[TOKEN_KEY] = token.encode("utf-8")
    app[HOSTS_KEY] = frozenset(h.lower() for h in allowed_hosts)
    r = app.router
    r.add_post("/open/{target}", open_tunnel)
    r.add_get("/open/{target}", _refuse_get, allow_head=False)
    r.add_post("/close/{peer}", close_tunnel)
    r.add_get("/close/{peer}", _refuse_get, allow_head=False)
    r.add_get("/status", get_status)
    r.add_get("/peers", get_peers)
    r.add_get("/firewall", get_firewall)
    r.add_get("/dns", get_dns)
    r.add_put("/firewall", put_firewall)
    r.add_get("/openapi.json", get_openapi)
    from phantom.control import opsapi   # dashboard, /metrics, /events, /auth, /reload
    opsapi.add_routes(app)
    return app


async def start_api(app: web.Application, host: Optional[str], port: int,
                    unix_path=None, what: str = "API",
                    hint: str = "stop it, or choose another port with http_port or --http-port"
                    ) -> web.AppRunner:
    """Serve ``app`` on host:port (TCP; ``host=None`` for none) and/or a Unix socket.

    The Unix socket is created with mode 0600 (only its owner, and root, may
    connect); a stale socket file at ``unix_path`` is replaced, any other file
    is not.  Returns the runner: ``await runner.cleanup()`` stops serving.
    ``runner.addresses`` lists what is bound (useful with port 0).  A port
    another process holds is an OSError naming it ("API port 4567 on
    127.0.0.1 is in use ..."; ``what`` and ``hint`` word it).
    """
    runner = JsonErrorRunner(app, respond=error_response, who="daemon", access_log=None,
                             handle_signals=False, keepalive_timeout=15.0, shutdown_timeout=2.0)
    await runner.setup()
    try:
        if host is not None:
            site = web.TCPSite(runner, host, port, reuse_address=True, backlog=64)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                from phantom.dataplane.udp import in_use
                raise in_use("%s port %d on %s" % (what, port, host), hint) from None
        if unix_path is not None:
            sock = _unix_socket(Path(unix_path))
            await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _unix_socket(path: Path) -> socket.socket:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError("http_socket", "%s exists and is not a socket; not replacing it" % path)
        os.unlink(path)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)            # the socket is 0600 from the moment it exists
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


# --- OpenAPI -------------------------------------------------------------------------------------
def _err(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_COMMON_ERRORS = {"403": _err("Host header not allowed"), "500": _err("internal error")}
_MUTATION_ERRORS = dict(_COMMON_ERRORS, **{
    "400": _err("malformed request: endpoint, peer name or body"),
    "401": _err("missing or wrong bearer token"),
    "408": _err("request body not received in time"),
    "413": _err("request body larger than 64 KiB"),
})
_OBJ = {"type": "object", "additionalProperties": True}

OPENAPI: dict = {
    "openapi": "3.0.3",
    "info": {"title": "phantomd command API", "version": __version__,
             "description": "Control a Phantom tunnel daemon. State-changing requests need "
                            "'Authorization: Bearer <token>' (the token file is in the "
                            "daemon's state directory)."},
    "servers": [{"url": "http://127.0.0.1:4567"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "OpenRequest": {"type": "object", "additionalProperties": False,
                            "properties": {
                                "public_key": {"type": "string",
                                               "description": "the peer's base64 X25519 key"},
                                "name": {"type": "string", "pattern": PEER_NAME.pattern},
                                "allowed_ips": {"type": "array", "maxItems": 256,
                                                "items": {"type": "string"},
                                                "description": "CIDR prefixes routed to a "
                                                               "new peer"},
                                "protocol": {"type": "string", "enum": ["phantom", "wireguard"],
                                             "description": "what a new peer speaks "
                                                            "(default phantom)"}}},
            "Peer": _OBJ,
            "Firewall": _OBJ,
        },
    },
    "paths": {
        "/open/{target}": {
            "post": {
                "summary": "Open a tunnel to IP:PORT, [IPv6]:PORT or a peer name",
                "operationId": "open",
                "security": [{"bearer": []}],
                "parameters": [{"name": "target", "in": "path", "required": True,
                                "schema": {"type": "string"},
                                "example": "192.0.2.7:9000"}],
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/OpenRequest"}}}},
                "responses": dict(_MUTATION_ERRORS, **{
                    "200": _ok("the tunnel is up", _OBJ),
                    "404": _err("no such peer or no key known for it"),
                    "409": _err("conflict with an existing peer"),
                    "504": _err("the peer did not answer the handshake"),
                }),
            },
        },
        "/close/{peer}": {
            "post": {
                "summary": "Close the tunnel to a peer",
                "operationId": "close",
                "security": [{"bearer": []}],
                "parameters": [{"name": "peer", "in": "path", "required": True,
                                "schema": {"type": "string"}, "example": "bob"}],
                "responses": dict(_MUTATION_ERRORS, **{
                    "200": _ok("closed", _OBJ),
                    "404": _err("no such peer"),
                }),
            },
        },
        "/status": {"get": {"summary": "Daemon status", "operationId": "status",
                            "responses": dict(_COMMON_ERRORS, **{"200": _ok("status", _OBJ)})}},
        "/peers": {"get": {"summary": "Peers and their sessions", "operationId": "peers",
                           "responses": dict(_COMMON_ERRORS, **{"200": _ok("peers", {
                               "type": "object", "required": ["peers"],
                               "properties": {"peers": {"type": "array", "items": {
                                   "$ref": "#/components/schemas/Peer"}}}})})}},
        "/firewall": {
            "get": {"summary": "Firewall rules in force", "operationId": "getFirewall",
                    "responses": dict(_COMMON_ERRORS, **{"200": _ok("rules", {
                        "$ref": "#/components/schemas/Firewall"})})},
            "put": {"summary": "Replace the firewall rules", "operationId": "setFirewall",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Firewall"}}}},
                    "responses": dict(_MUTATION_ERRORS, **{
                        "200": _ok("the rules now in force", _OBJ),
                        "409": _err("the rules conflict with the daemon's state"),
                    })},
        },
        "/dns": {"get": {"summary": "The name service: domain, addresses served on, the names "
                                    "and their addresses, counters", "operationId": "dns",
                         "responses": dict(_COMMON_ERRORS, **{"200": _ok("names", _OBJ)})}},
        "/openapi.json": {"get": {"summary": "This description", "operationId": "openapi",
                                  "responses": {"200": _ok("OpenAPI 3 document", _OBJ)}}},
    },
}


def _add_ops_paths() -> None:
    from phantom.control import opsapi
    OPENAPI["paths"].update(opsapi.openapi_paths(_ok, _err, _COMMON_ERRORS, _MUTATION_ERRORS, _OBJ))


_add_ops_paths()
