"""A hardened aiohttp server for JSON services (phantomd's API, the key directory).

* errors are ``{"error": message}``: a domain error (:mod:`phantom.errors`)
  with the status :mod:`phantom.http.statuses` maps it to, aiohttp's own
  404/405/413 in our words, an unexpected exception logged and answered
  with a generic 500 (:func:`json_errors`);
* errors never quote the request (path, query, headers, body keys): they name
  route templates, known fields and limits.  aiohttp's parser errors
  (over-long request line 414, over-long or too many headers 431, bad request
  line, method, header or chunking 400) get the same JSON shape through
  :class:`JsonErrorRunner`, and are logged without the request's bytes;
* bodies are limited (413) and must arrive within :data:`BODY_TIMEOUT`
  seconds (408, :func:`read_json`); a controller call within
  :data:`HANDLER_TIMEOUT` (:func:`call`);
* :func:`json_response` passes every answer through
  :func:`phantom.logsetup.redact`, so a registered secret can never leave in
  any encoding;
* :func:`start` serves on TCP and/or a Unix socket made 0600 from the moment
  it exists.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import inspect
import ipaddress
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Callable, Optional

from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import (BadHttpMethod, BadStatusLine, ContentLengthError,
                                     HttpProcessingError, InvalidHeader, InvalidURLError,
                                     LineTooLong, TransferEncodingError)

from .. import logsetup
from ..errors import ConfigError, Invalid, PhantomError
from .statuses import RequestTimeout, status_of

log = logsetup.get_logger("api")

MAX_BODY = 64 * 1024             # bytes
BODY_TIMEOUT = 10.0              # seconds to receive a request body
HANDLER_TIMEOUT = 120.0          # seconds for one controller call (open retries fit in it)
# Methods an error message may name (anything else is not echoed).
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                           "CONNECT"))
# Parser limits.  They differ by two bytes so that an over-long request line
# (414) can be told from an over-long header (431): aiohttp reports both as
# LineTooLong with the limit that was hit.
MAX_REQUEST_LINE = 8190          # bytes: method, target, version
MAX_HEADER = 8192                # bytes: one header, name and value
MAX_HEADERS = 64                 # header lines


# --- JSON in and out ----------------------------------------------------------------------------
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


async def read_json(request: web.Request, *, required: bool) -> Any:
    """The request's JSON body (None when absent and not ``required``)."""
    if not request.body_exists:
        if required:
            raise Invalid("this request needs a JSON body")
        return None
    try:
        # request.read() enforces client_max_size (413), chunked bodies included.
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
    except asyncio.TimeoutError:
        raise RequestTimeout("request body not received within %g s" % BODY_TIMEOUT) from None
    if not raw.strip():
        if required:
            raise Invalid("this request needs a JSON body")
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid("body is not valid JSON: %s" % exc) from None


async def call(value):
    """A controller's answer: awaited (within HANDLER_TIMEOUT) when it is awaitable."""
    if inspect.isawaitable(value):
        return await asyncio.wait_for(value, HANDLER_TIMEOUT)
    return value


async def refuse_get(request: web.Request) -> web.Response:
    """A GET on a state-changing route: 405 (a web page can fire GETs at localhost)."""
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


def add_post(router: web.UrlDispatcher, path: str, handler) -> None:
    """A state-changing route: POST ``path`` to ``handler``, and a GET on it
    refused (:func:`refuse_get`)."""
    router.add_post(path, handler)
    router.add_get(path, refuse_get, allow_head=False)


# --- errors that echo nothing of the request ------------------------------------------------
# An error message names only what the server defines (route templates, known
# field names, limits), never the path, a header or a body key as received: any
# of them may be a secret (a key pasted in the wrong place, the token).
def method_name(request: web.BaseRequest) -> str:
    return request.method if request.method in KNOWN_METHODS else "this method"


def route_template(request: web.BaseRequest) -> str:
    """``METHOD /template`` of the matched route, or ``"this request"``."""
    try:
        route = request.match_info.route
        info = route.resource.get_info() if route.resource is not None else {}
    except Exception:
        return "this request"
    template = info.get("path") or info.get("formatter")
    return "%s %s" % (method_name(request), template) if template else "this request"


def _routes(app: web.Application) -> str:
    seen = []
    for r in app.router.routes():
        info = r.resource.get_info() if r.resource is not None else {}
        template = info.get("path") or info.get("formatter")
        if template and r.method != "HEAD" and r.handler is not refuse_get:
            entry = "%s %s" % (r.method, template)
            if entry not in seen:
                seen.append(entry)
    return ", ".join(seen)


# aiohttp's parser errors that are a 400 with a message of their own, in the
# order they are tried (BadHttpMethod is a BadStatusLine)
_PARSER_ERRORS = (
    (BadHttpMethod, "malformed request line: unknown method (or not HTTP at all)"),
    (BadStatusLine, "malformed request line (expected METHOD /path HTTP/1.1)"),
    (InvalidURLError, "malformed request target"),
    (InvalidHeader, "malformed request header"),
    (TransferEncodingError, "malformed body: bad chunked transfer encoding"),
    (ContentLengthError, "malformed body: it does not match its Content-Length"),
)


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
    for kind, message in _PARSER_ERRORS:
        if isinstance(exc, kind):
            return 400, message
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
        except PhantomError as exc:
            return respond(status_of(exc), exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = exc.headers.get("Allow", "")
            if exc.status == 404:
                message = "no such route (the routes are: %s)" % _routes(request.app)
            elif exc.status == 405:
                message = "method %s is not allowed on this route (allowed: %s)" % (
                    method_name(request), allow or "none")
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


# --- the connection handler: parser errors in JSON too -----------------------------------------
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


# --- serving -------------------------------------------------------------------------------------
async def start(app: web.Application, host: Optional[str], port: int, unix_path=None, *,
                respond: Callable[[int, str], web.Response] = error_response, who: str = "daemon",
                what: str = "API",
                hint: str = "stop it, or choose another port with http_port or --http-port",
                backlog: int = 64) -> web.AppRunner:
    """Serve ``app`` on host:port (TCP; ``host=None`` for none) and/or a Unix socket.

    The Unix socket is created with mode 0600 (only its owner, and root, may
    connect); a stale socket file at ``unix_path`` is replaced, any other file
    is not.  Returns the runner: ``await runner.cleanup()`` stops serving.
    ``runner.addresses`` lists what is bound (useful with port 0).  A port
    another process holds is an OSError naming it ("API port 4567 on
    127.0.0.1 is in use ..."; ``what`` and ``hint`` word it).
    """
    runner = JsonErrorRunner(app, respond=respond, who=who, access_log=None,
                             handle_signals=False, keepalive_timeout=15.0, shutdown_timeout=2.0)
    await runner.setup()
    try:
        if host is not None:
            site = web.TCPSite(runner, host, port, reuse_address=True, backlog=backlog)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                from ..dataplane.udp import in_use
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
