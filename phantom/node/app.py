"""phantomd's HTTP application, assembled in one place: its own routes
(api.py) and the operations routes (opsapi.py), parts that never import each
other, put together by :func:`phantom.http.app.create_app` behind one guard."""

from __future__ import annotations

from typing import Iterable

from aiohttp import web

from .. import __version__
from ..http import app as http_app
from ..http import openapi
from . import api, opsapi

PARTS = (api, opsapi)
OPENAPI_INFO = {
    "title": "phantomd command API",
    "version": __version__,
    "description": "Control a Phantom tunnel daemon. State-changing requests need "
                   "'Authorization: Bearer <token>' (the token file is in the "
                   "daemon's state directory).",
    "servers": [{"url": "http://127.0.0.1:4567"}],
}


def create_app(controller, token: str, *, allowed_hosts: Iterable[str] = ()) -> web.Application:
    """The API application; ``controller`` implements open/close/status/peers/
    firewall/set_firewall (and, when it can, reload and metrics)."""
    return http_app.create_app(controller, token, PARTS, openapi_info=OPENAPI_INFO,
                               allowed_hosts=allowed_hosts)


def create_metrics_app(controller) -> web.Application:
    """The ``metrics_listen`` server: GET /metrics alone (no token, no other
    route), with the API's Host check and JSON errors."""
    return http_app.create_read_only_app(controller, opsapi.add_metrics_route)


def openapi_document() -> dict:
    """What GET /openapi.json answers."""
    return openapi.document(PARTS, **OPENAPI_INFO)
