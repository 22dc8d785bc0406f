"""The operations routes on the API (phantom/node/opsapi.py) with the
in-memory controller: the dashboard's files and headers, /auth, /events,
/reload's token, and the page's no-inline-script, no-external-asset rules."""

from __future__ import annotations

import asyncio
import logging
import re
from importlib import resources

from aiohttp.test_utils import TestClient, TestServer

from tests.support.apidouble import FakeController
from phantom.node.app import create_app

TOKEN = "cd" * 32
AUTH = {"Authorization": "Bearer " + TOKEN}


def with_client(test, controller=None):
    controller = controller or FakeController()

    async def go():
        async with TestClient(TestServer(create_app(controller, TOKEN))) as client:
            return await test(client, controller)
    return asyncio.run(asyncio.wait_for(go(), 30))


def test_dashboard_page_and_files_with_strict_headers():
    async def t(c, ctl):
        r = await c.get("/")
        assert r.status == 200 and r.content_type == "text/html"
        html = await r.text()
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
            f = await c.get("/dashboard/" + name)
            assert f.status == 200 and f.content_type == ctype
            assert f.headers["Content-Security-Policy"] == csp
        for bad in ("index.html", "..%2Fapi.py", "nope.js"):
            f = await c.get("/dashboard/" + bad)
            assert f.status == 404 and "error" in await f.json()
        return html
    html = with_client(t)
    # No inline script or handler, nothing from elsewhere.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\son[a-z]+=", html)
    assert "http://" not in html and "https://" not in html and "//" not in html.replace("<!--", "")


def test_dashboard_files_ship_as_package_data():
    base = resources.files("phantom") / "dashboard"
    for name in ("index.html", "app.js", "style.css"):
        assert (base / name).is_file()
    js = (base / "app.js").read_text()
    assert "sessionStorage" in js and "localStorage" not in js
    assert "http" not in re.sub(r"//.*|/\*.*?\*/", "", js, flags=re.S).replace("HTTP ", "")


def test_auth_tells_a_right_token_from_a_wrong_one():
    async def t(c, ctl):
        r = await c.get("/auth", headers=AUTH)
        assert r.status == 200 and (await r.json()) == {"signed_in": True}
        for h in ({}, {"Authorization": "Bearer " + "00" * 32}, {"Authorization": TOKEN}):
            r = await c.get("/auth", headers=h)
            assert r.status == 401 and "error" in await r.json()
    with_client(t)


def test_reload_needs_the_token_and_get_is_refused():
    class Reloading(FakeController):
        reloads = 0

        async def reload(self):
            Reloading.reloads += 1
            return {"added": [], "removed": [], "changed": {}, "unchanged": [], "firewall": False,
                    "notes": []}

    async def t(c, ctl):
        r = await c.post("/reload")
        assert r.status == 401
        r = await c.get("/reload", headers=AUTH)
        assert r.status == 405
        assert Reloading.reloads == 0
        r = await c.post("/reload", headers=AUTH)
        assert r.status == 200 and (await r.json())["added"] == []
        assert Reloading.reloads == 1
    with_client(t, Reloading())


def test_events_show_the_daemons_log_records():
    async def t(c, ctl):
        logging.getLogger("phantom.control").info("peer=%s idle -> handshaking (%s)", "bob", "test")
        logging.getLogger("phantom.control").debug("not an event")
        r = await c.get("/events")
        body = await r.json()
        msgs = [e["message"] for e in body["events"]]
        assert "peer=bob idle -> handshaking (test)" in msgs
        assert "not an event" not in msgs
        last = body["events"][-1]["seq"]
        r = await c.get("/events?since=%d" % last)
        assert (await r.json())["events"] == []
        r = await c.get("/events?since=x")
        assert r.status == 400
    logging.getLogger("phantom").setLevel(logging.INFO)
    with_client(t)


def test_metrics_without_a_daemon_is_404_json():
    async def t(c, ctl):
        r = await c.get("/metrics")
        assert r.status == 404 and "error" in await r.json()
    with_client(t)
