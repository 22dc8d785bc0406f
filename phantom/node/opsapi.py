"""The operations routes of the daemon's API: the dashboard, /metrics,
/events, /auth and /reload (issue #14).  A route part (phantom/http/app.py):
:func:`add_routes` adds them to phantomd's application (phantom/node/app.py),
behind the same middlewares as api.py's (Host check, token on every
state-changing method, JSON errors); :func:`add_metrics_route` alone makes the
``metrics_listen`` server.

====== ===================== ===============================================
GET    /                     the dashboard (static page, no inline script)
GET    /dashboard/{file}     its script and style sheet
GET    /metrics              Prometheus text format (no secrets, no token)
GET    /events               recent log events ``{"events": [...]}``
GET    /auth                 200 when the bearer token is right, else 401
POST   /reload               re-read the config file (token), see
                             :mod:`phantom.node.reload`
====== ===================== ===============================================

The page ships in the wheel (``phantom/dashboard``, package data) and loads
nothing from elsewhere; its Content-Security-Policy allows scripts, styles
and fetches from the daemon itself only.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from ..errors import Invalid, NotFound
from ..http.app import Route, add_route_table, controller, paths_of
from ..http.guard import authorized, unauthorized
from ..http.openapi import OBJ, err, in_path, ok, operation, page
from ..http.server import call, json_response
from . import events as ev

DASHBOARD_FILES = {"index.html": "text/html", "app.js": "text/javascript",
                   "style.css": "text/css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

EVENTS_KEY = web.AppKey("events", ev.EventLog)
FILES_KEY = web.AppKey("dashboard_files", dict)


class NotAvailable(NotFound):
    """The controller has no such operation."""


def _load_files() -> dict:
    base = resources.files("phantom") / "dashboard"
    return {name: (base / name).read_bytes() for name in DASHBOARD_FILES}


def _static(request: web.Request, name: str) -> web.Response:
    body = request.app[FILES_KEY][name]
    resp = web.Response(body=body, content_type=DASHBOARD_FILES[name], charset="utf-8")
    resp.headers.update(PAGE_HEADERS)
    return resp


async def index(request: web.Request) -> web.Response:
    return _static(request, "index.html")


async def dashboard_file(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in DASHBOARD_FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _static(request, name)


async def metrics(request: web.Request) -> web.Response:
    from .metrics import CONTENT_TYPE_LATEST
    fn = getattr(controller(request), "metrics", None)
    if fn is None:
        raise NotAvailable("this controller has no metrics")
    body = fn()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def events(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise Invalid("since must be an integer (the seq of the last event seen)") from None
    return json_response({"events": request.app[EVENTS_KEY].recent(since)})


async def auth(request: web.Request) -> web.Response:
    if authorized(request):            # constant-time, as for every mutation
        return json_response({"signed_in": True})
    return unauthorized("missing or wrong API token")


async def reload(request: web.Request) -> web.Response:
    fn = getattr(controller(request), "reload", None)
    if fn is None:
        raise NotAvailable("this controller cannot reload")
    return json_response(await call(fn()))


async def _detach_events(app: web.Application) -> None:
    ev.detach(app[EVENTS_KEY])


def add_routes(app: web.Application) -> None:
    """Add the operations routes (a part of phantomd's app, phantom/node/app.py)."""
    app[FILES_KEY] = _load_files()
    app[EVENTS_KEY] = ev.attach()
    app.on_cleanup.append(_detach_events)
    add_route_table(app, ROUTES)


def add_metrics_route(app: web.Application) -> None:
    """GET /metrics alone: the ``metrics_listen`` server (no token, no other route)."""
    app.router.add_get("/metrics", metrics)


ROUTES = (
    Route("GET", "/", index, operation("The dashboard (HTML page)", "dashboard",
                                       {"200": page("the page", "text/html")})),
    Route("GET", "/dashboard/{file}", dashboard_file, operation(
        "The dashboard's script and style sheet", "dashboardFile",
        {"200": page("the file", "text/javascript"), "404": err("no such file")},
        parameters=in_path("file", enum=["app.js", "style.css"]))),
    Route("GET", "/metrics", metrics, operation("Prometheus metrics (text exposition format 0.0.4)",
                                                "metrics", {"200": page("metrics", "text/plain")})),
    Route("GET", "/events", events, operation(
        "Recent events (the daemon's INFO+ log records)", "events",
        {"200": ok("events", OBJ), "400": err("since is not an integer")},
        parameters=[{"name": "since", "in": "query", "required": False,
                     "schema": {"type": "integer"}}])),
    Route("GET", "/auth", auth, operation(
        "Check a bearer token (200) or not (401)", "auth",
        {"200": ok("signed in", OBJ), "401": err("missing or wrong token")},
        security=[{"bearer": []}])),
    Route("POST", "/reload", reload, operation(
        "Re-read the config file; peers and firewall change in place", "reload",
        {"200": ok("what changed", OBJ), "404": err("this controller cannot reload")},
        mutation=True)),
)


def openapi_paths() -> dict:
    """The OpenAPI entries of these routes."""
    return paths_of(ROUTES)
