"""The directory service: an aiohttp application over a store."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any, Callable, Iterable

from aiohttp import web

from phantom import __version__, logsetup
from phantom.control.api import JsonErrorRunner, json_errors
from phantom.control.config import PEER_NAME, PEER_NAME_RULE
from phantom.control.errors import ApiError, BadRequest, NotFound, PayloadTooLarge
from phantom.control.keys import KeyFormatError

from .records import b64, canonical, key_from_text, strict_loads
from .store import CLOCK_SKEW, DEFAULT_MAX_TTL, LIST_LIMIT, Forbidden, Gone, Store, \
    Unsupported, open_store
from .store.base import endorsed_until as _endorsed_until, \
    merge_endorsements as _merge_endorsements  # noqa: F401  (old private names)

log = logsetup.get_logger("directory")

# --- service tunables ---------------------------------------------------------------------------
DEFAULT_PORT = 4568
DEFAULT_DB = "phantom-directory.sqlite"
MAX_BODY = 16 * 1024                  # one record with 16 endpoints, 64 prefixes, 16 endorsements
BODY_TIMEOUT = 10.0
PURGE_INTERVAL = 60.0
WATCH_KEYS = 256                      # keys one watch may follow (fits in MAX_BODY)
WATCHERS_MAX = 1024                   # concurrent watch streams per front end
WATCH_HEARTBEAT = 15.0
WATCH_MAX = 300.0                     # a watch stream ends after this; the client reconnects


class RequestTimeout(ApiError):
    status = 408


class TooManyWatchers(ApiError):
    status = 503


# --- the server -------------------------------------------------------------------------------------
STORE_KEY = web.AppKey("store", Store)
WATCHERS_KEY = web.AppKey("watchers", list)
CLOCK_KEY = web.AppKey("clock", object)
TRUST_KEY = web.AppKey("trusted_signers", frozenset)
MAX_TTL_KEY = web.AppKey("max_ttl", int)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


# The daemon API's JSON error handling, with this service's body limit.
_errors = json_errors(_error, MAX_BODY, "directory")


async def _body(request: web.Request) -> Any:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise PayloadTooLarge("request body too large (%d bytes, limit %d)" % (length, MAX_BODY))
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)   # 413 past client_max_size
    except asyncio.TimeoutError:
        raise RequestTimeout("request body not received within %g s" % BODY_TIMEOUT) from None
    if not raw.strip():
        raise BadRequest("this request needs a JSON body")
    try:
        return strict_loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("body is not valid JSON: %s" % exc) from None


def _path_key(request: web.Request) -> str:
    try:
        return b64(key_from_text(request.match_info["public_key"]))
    except KeyFormatError as exc:
        raise BadRequest("public key in the path: %s (use URL-safe base64)" % exc) from None


def _now(request: web.Request) -> float:
    return request.app[CLOCK_KEY]()


async def get_status(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    try:
        records = await store.count()
    except Unsupported:
        records = None
    return _json({"service": "phantom-directory", "version": __version__, "store": store.kind,
                  "records": records, "time": int(_now(request))})


async def get_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    row = await request.app[STORE_KEY].get(key)
    if row is None or (not row.revoked and row.expires <= _now(request)):
        raise NotFound("no record for this key")
    return _json(row.doc)


async def get_name(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not PEER_NAME.match(name):
        raise BadRequest("not a valid name (%s)" % PEER_NAME_RULE)
    row = await request.app[STORE_KEY].by_name(name, int(_now(request)))
    if row is None:
        raise NotFound("no record with this name")
    return _json(row.doc)


async def list_records(request: web.Request) -> web.Response:
    after = request.query.get("after", "")
    if after:
        try:
            after = b64(key_from_text(after))
        except KeyFormatError as exc:
            raise BadRequest("after: %s" % exc) from None
    text = request.query.get("limit", str(LIST_LIMIT))
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= LIST_LIMIT:
        raise BadRequest("limit must be an integer in 1..%d" % LIST_LIMIT)
    rows = await request.app[STORE_KEY].list(int(_now(request)), after, int(text))
    nxt = rows[-1].public_key if len(rows) == int(text) else None
    return _json({"records": [r.doc for r in rows], "next": nxt})


async def put_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    doc = await _body(request)
    app, now = request.app, _now(request)
    stored, created = await app[STORE_KEY].publish(doc, now, trusted=app[TRUST_KEY],
                                                   max_ttl=app[MAX_TTL_KEY], key=key)
    log.info("%s %s seq=%d name=%s endpoints=%s", "revoked" if stored.revoked else
             ("published" if created else "updated"), key, stored.seq, stored.name,
             ",".join(stored.doc.get("endpoints", [])) or "-")
    return _json(stored.doc, status=201 if created else 200)


async def post_endorsement(request: web.Request) -> web.Response:
    key = _path_key(request)
    end = await _body(request)
    app, now = request.app, _now(request)
    stored = await app[STORE_KEY].endorse(key, end, now, trusted=app[TRUST_KEY])
    log.info("endorsement of %s (name=%s) until %s", key, stored.name,
             end.get("expires") if isinstance(end, dict) else "?")
    return _json(stored.doc)


async def watch(request: web.Request) -> web.StreamResponse:
    """``POST /watch {"keys": [...]}``: a stream of newline-delimited records.

    First the current record of each watched key that has one, then every
    change to any of them as the store reports it (for PostgreSQL: the moment
    any front end commits it), with ``{}`` as a heartbeat.  The stream ends
    after WATCH_MAX seconds or when the store loses its push channel; the
    client reconnects (and gets the current records again)."""
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"keys"} or not isinstance(body["keys"], list) \
            or not 1 <= len(body["keys"]) <= WATCH_KEYS:
        raise BadRequest('a watch is {"keys": [KEY, ...]} with 1..%d keys' % WATCH_KEYS)
    keys = set()
    for k in body["keys"]:
        try:
            keys.add(b64(key_from_text(k)))
        except (KeyFormatError, TypeError, AttributeError) as exc:
            raise BadRequest("keys: %s" % exc) from None
    app = request.app
    if app[WATCHERS_KEY][0] >= WATCHERS_MAX:
        raise TooManyWatchers("this directory already serves %d watches" % WATCHERS_MAX)
    store = app[STORE_KEY]
    q = store.subscribe()                # before reading the current records: no gap
    app[WATCHERS_KEY][0] += 1
    try:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        now = _now(request)
        for k in sorted(keys):
            row = await store.get(k)
            if row is not None and (row.revoked or row.expires > now):
                await resp.write(canonical(row.doc) + b"\n")
        loop = asyncio.get_running_loop()
        end = loop.time() + WATCH_MAX
        while loop.time() < end:
            try:
                item = await asyncio.wait_for(q.get(), min(WATCH_HEARTBEAT, end - loop.time()))
            except asyncio.TimeoutError:
                await resp.write(b"{}\n")
                continue
            if item is None:
                break
            if item.public_key in keys:
                await resp.write(canonical(item.doc) + b"\n")
        return resp
    finally:
        app[WATCHERS_KEY][0] -= 1
        store.unsubscribe(q)


def create_app(store: Store, *, clock: Callable[[], float] = time.time,
               trusted_signers: Iterable[bytes] = (),
               max_ttl: int = DEFAULT_MAX_TTL) -> web.Application:
    """The directory application over an opened store (routes in docs/directory.md)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[STORE_KEY] = store
    app[CLOCK_KEY] = clock
    app[TRUST_KEY] = frozenset(bytes(s) for s in trusted_signers)
    app[MAX_TTL_KEY] = int(max_ttl)
    app[WATCHERS_KEY] = [0]
    r = app.router
    r.add_get("/status", get_status)
    r.add_get("/records", list_records)
    r.add_get("/records/{public_key}", get_record)
    r.add_put("/records/{public_key}", put_record)
    r.add_post("/records/{public_key}/endorsements", post_endorsement)
    r.add_get("/names/{name}", get_name)
    r.add_post("/watch", watch)
    return app


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app``; ``runner.addresses`` tells the bound port (use port 0 in tests)."""
    runner = JsonErrorRunner(app, respond=_error, who="directory", access_log=None,
                             handle_signals=False, keepalive_timeout=15.0, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, backlog=128).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _purge_loop(store: Store, clock) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        try:
            n = await store.purge(int(clock()))
        except ApiError as exc:
            log.warning("purging expired records failed: %s", exc)
            continue
        if n:
            log.info("purged %d expired record(s)", n)


async def serve_forever(host: str, port: int, db, trusted_signers=(),
                        max_ttl: int = DEFAULT_MAX_TTL, drop_to=None) -> None:
    """Run the directory until SIGINT/SIGTERM.  ``db`` is a SQLite path or a
    postgresql:// URL (any number of front ends may share one database).

    ``drop_to`` (a passwd entry from :func:`phantom.privileges.resolve_user`;
    the caller has already called ``lock_down``): switch to that user once the
    store is open and the port bound.  A SQLite server then reads and writes
    the db only through the descriptors SQLite opened as root; a PostgreSQL
    front end opens its further pool connections as that user."""
    store = await open_store(db).open()
    try:
        runner = await start_server(create_app(store, trusted_signers=trusted_signers,
                                               max_ttl=max_ttl), host, port)
    except BaseException:
        await store.close()
        raise
    if drop_to is not None:
        from phantom.privileges import switch_user
        try:
            _preload_server()
            switch_user(drop_to)         # every thread; verified task by task
        except BaseException:
            await runner.cleanup()
            await store.close()
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    purger = asyncio.ensure_future(_purge_loop(store, time.time))
    log.info("directory listening on http://%s:%d (%s store %s, %d record(s), %d trusted "
             "signer(s))", host if ":" not in host else "[%s]" % host, port, store.kind,
             _describe(db), await store.count(), len(tuple(trusted_signers)))
    try:
        await stop.wait()
    finally:
        purger.cancel()
        await runner.cleanup()
        await store.close()
        log.info("directory stopped")


def _preload_server() -> None:
    """Import, while still root, what serving may import lazily (the
    unprivileged user may not be able to read the Python installation)."""
    import encodings.idna  # noqa: F401
    import concurrent.futures.thread  # noqa: F401
    import aiohttp.web_urldispatcher  # noqa: F401
    from .store import postgres as _postgres  # noqa: F401


def _describe(db) -> str:
    from .store.postgres import _safe_dsn
    return _safe_dsn(str(db))
