"""One JSON request over HTTP(S), synchronous (the standard library's
http.client): what the command line asks a directory (``phantom join``,
``phantom network ... --admin-token-file``).  phantomd's own directory link
is asynchronous (phantom/directory/client.py)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any, Optional

DEFAULT_TIMEOUT = 20.0
MAX_ANSWER = 64 * 1024                # bytes of an answer, at most


class Unreachable(Exception):
    """The directory at this URL could not be asked (connection, timeout, garbage)."""


def request_json(url: str, method: str, path: str, body: Any = None, *, token: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT) -> tuple:
    """(status, JSON body) of one HTTP request to ``url`` + ``path``; Unreachable
    when there is no HTTP answer or the answer is not JSON."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise Unreachable("not an http:// or https:// URL")
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port, timeout=timeout)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    try:
        conn.request(method, (u.path.rstrip("/") or "") + path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(MAX_ANSWER + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(str(exc) or exc.__class__.__name__) from None
    finally:
        conn.close()
    if len(raw) > MAX_ANSWER:
        raise Unreachable("answer larger than %d bytes" % MAX_ANSWER)
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        raise Unreachable("HTTP %d with a body that is not JSON" % resp.status) from None
