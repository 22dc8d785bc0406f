"""Who may ask what: the API token and the Host check.

* every state-changing request (any method but GET/HEAD/OPTIONS) needs
  ``Authorization: Bearer <token>``; the token is compared in constant time
  and checked before the body is read or the controller is called
  (:func:`guard`);
* the Host header must be an IP literal or ``localhost`` (or one of the
  app's allowed hosts), which defeats DNS rebinding against the read routes;
  on a TCP listener it is required, HTTP/1.0 included (400 without it); over
  the Unix socket (0600, out of a browser's reach) it may be missing;
* the token lives in ``<state_dir>/token``, 0600 (:func:`load_or_create_token`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path

from aiohttp import web

from .. import logsetup
from ..errors import ConfigError, TooLarge
from .server import MAX_BODY, error_response

log = logsetup.get_logger("api")

TOKEN_FILE = "token"
TOKEN_BYTES = 32
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))

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
    from ..keys import KeyFileError, check_secret_file, write_secret_file

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


# --- the checks ---------------------------------------------------------------------------------
def over_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def host_ok(request: web.Request) -> bool:
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


def authorized(request: web.Request) -> bool:
    """Does the request carry the app's bearer token (compared in constant time)?"""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    expected = request.app[TOKEN_KEY]
    # Always run the comparison, so a missing header costs the same as a wrong one.
    ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)
    return ok and scheme.lower() == "bearer"


def unauthorized(message: str) -> web.Response:
    resp = error_response(401, message)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="phantom"'
    return resp


@web.middleware
async def guard(request: web.Request, handler):
    """Host check, then the token on every state-changing method, before any work."""
    if "Host" not in request.headers and not over_unix_socket(request):
        # HTTP/1.0 lets a client leave Host out; on TCP that would sidestep the check below.
        return error_response(400, "missing Host header: send 'Host: 127.0.0.1' (or localhost); "
                              "it is required on the TCP listener")
    if not host_ok(request):
        return error_response(403, "the Host header is not allowed (use 127.0.0.1, [::1] or "
                              "localhost)")
    if request.method not in SAFE_METHODS:
        match = request.match_info
        if match.http_exception is not None:
            raise match.http_exception       # unknown route or method: 404/405, no state change
        if not authorized(request):
            return unauthorized("missing or wrong API token: send 'Authorization: Bearer "
                                "<token>' (the token is in the daemon's state directory)")
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise TooLarge("request body too large (%d bytes, limit %d)" % (length, MAX_BODY))
    return await handler(request)


@web.middleware
async def host_check(request: web.Request, handler):
    """The Host check alone (a server with read routes only, e.g. metrics_listen)."""
    if "Host" not in request.headers:
        return error_response(400, "missing Host header: send 'Host: 127.0.0.1' (or localhost)")
    if not host_ok(request):
        return error_response(403, "the Host header is not allowed (use 127.0.0.1, [::1] or "
                              "localhost)")
    return await handler(request)
