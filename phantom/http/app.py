"""An aiohttp application assembled from route parts, behind the guard.

A *part* is a module with ``add_routes(app)`` (its handlers find the
controller with :func:`controller`) and ``openapi_paths()`` (its routes'
OpenAPI description, :mod:`phantom.http.openapi`); a part declares each route
once, with its description, as a :class:`Route` in a table that gives both
(:func:`add_route_table`, :func:`paths_of`).  :func:`create_app` gives
every part the same middlewares, outermost first: JSON errors
(:func:`phantom.http.server.json_errors`), then the Host check and the token
on every state-changing method (:func:`phantom.http.guard.guard`).  Parts
never import each other: phantomd's API is phantom/node/api.py and
phantom/node/opsapi.py, listed together in phantom/node/app.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

from aiohttp import web

from .. import logsetup
from . import openapi
from .guard import HOSTS_KEY, TOKEN_KEY, guard, host_check
from .server import MAX_BODY, add_post, error_response, json_errors

CONTROLLER_KEY = web.AppKey("controller", object)
OPENAPI_KEY = web.AppKey("openapi", dict)


def controller(request: web.Request):
    """The object the app's handlers call (phantomd's: phantom.node.controller.Controller)."""
    return request.app[CONTROLLER_KEY]



@dataclass(frozen=True)
class Route:
    """One route of a part: ``method`` (GET, PUT, DELETE, POST: a POST route
    refuses a GET, :func:`phantom.http.server.add_post`), ``path``, its
    ``handler`` and its OpenAPI operation (:func:`phantom.http.openapi.operation`)."""

    method: str
    path: str
    handler: Callable
    doc: dict


def add_route_table(app: web.Application, routes: Iterable[Route]) -> None:
    """Add ``routes`` to ``app``, in their order."""
    r = app.router
    add = {"GET": r.add_get, "PUT": r.add_put, "DELETE": r.add_delete, "POST": partial(add_post, r)}
    for route in routes:
        add[route.method](route.path, route.handler)


def paths_of(routes: Iterable[Route]) -> dict:
    """The OpenAPI ``paths`` of ``routes``: path -> method -> operation."""
    out: dict = {}
    for route in routes:
        out.setdefault(route.path, {})[route.method.lower()] = copy.deepcopy(route.doc)
    return out

def create_app(ctl, token: str, parts: Iterable, *, openapi_info: dict,
               allowed_hosts: Iterable[str] = (), who: str = "daemon") -> web.Application:
    """The application of ``parts`` over ``ctl``; ``token`` guards every change.
    ``openapi_info``: the document's title, version, description and servers."""
    if not token:
        raise ValueError("the API token must not be empty")
    parts = tuple(parts)
    app = web.Application(middlewares=[json_errors(error_response, MAX_BODY, who), guard],
                          client_max_size=MAX_BODY)
    logsetup.register_secret(token)          # never echoed, never logged
    app[CONTROLLER_KEY] = ctl
    app[TOKEN_KEY] = token.encode("utf-8")
    app[HOSTS_KEY] = frozenset(h.lower() for h in allowed_hosts)
    for part in parts:
        part.add_routes(app)
    app[OPENAPI_KEY] = openapi.document(parts, **openapi_info)
    return app


def create_read_only_app(ctl, add_routes: Callable[[web.Application], None],
                         who: str = "daemon") -> web.Application:
    """An app without a token (read routes only, e.g. GET /metrics on its own
    address), with the Host check and JSON errors."""
    app = web.Application(middlewares=[json_errors(error_response, MAX_BODY, who), host_check],
                          client_max_size=MAX_BODY)
    app[CONTROLLER_KEY] = ctl
    app[HOSTS_KEY] = frozenset()
    add_routes(app)
    return app
