"""The directory service: an aiohttp application over a store."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from aiohttp import web

from phantom import __version__, logsetup
from phantom.http.server import JsonErrorRunner, json_errors
from phantom.http.statuses import RequestTimeout, status_of
from phantom.syntax import PEER_NAME, PEER_NAME_RULE
from phantom.errors import Invalid, NotFound, PhantomError, TooLarge, Unavailable
from phantom.keys import KeyFormatError

from .defaults import DEFAULT_DB, DEFAULT_PORT, KEY_WRITES, MAX_HEARTBEAT, SOURCE_QUOTA, \
    SOURCE_WATCHES, SOURCE_WRITES, WATCH_HEARTBEAT, WATCHERS_MAX
from .records import MAX_BODY, b64, canonical, key_from_text, strict_loads
from .store import CLOCK_SKEW, DEFAULT_MAX_TTL, LIST_LIMIT, Forbidden, Gone, Store, \
    Unsupported, open_store
from .store.base import TooManyRequests
from .store.base import endorsed_until as _endorsed_until, \
    merge_endorsements as _merge_endorsements  # noqa: F401  (old private names)

log = logsetup.get_logger("directory")

# --- service tunables ---------------------------------------------------------------------------
# (DEFAULT_PORT, DEFAULT_DB, WATCHERS_MAX, WATCH_HEARTBEAT, MAX_HEARTBEAT and the per-source
# limits SOURCE_WRITES, KEY_WRITES, SOURCE_QUOTA, SOURCE_WATCHES: in defaults.py, which the
# command line's parser reads without importing this module)
BODY_TIMEOUT = 10.0
PURGE_INTERVAL = 60.0
WATCH_KEYS = 256                      # keys one watch may follow (fits in MAX_BODY)
WATCH_MAX = 300.0                     # a watch stream ends after this; the client reconnects
WATCH_GONE_CHECK = 0.5                # how often a stream checks that its client is still there
WATCH_RETRY_AFTER = 30                # what a refused watch is told (it polls meanwhile)
LIMITER_KEYS = 65536                  # sources (and keys) a rate limiter remembers


@dataclass(frozen=True)
class Limits:
    """What one source may do (``phantom directory serve`` flags of the same names)."""

    source_writes_per_minute: int = SOURCE_WRITES
    key_writes_per_minute: int = KEY_WRITES
    source_quota: int = SOURCE_QUOTA
    source_watches: int = SOURCE_WATCHES
    max_watches: int = WATCHERS_MAX

    @classmethod
    def unlimited(cls) -> "Limits":
        """No per-source limit (benchmarks, tests of other things); still WATCHERS_MAX."""
        return cls(0, 0, 0, 0, WATCHERS_MAX)


class TooManyWatchers(Unavailable):
    def __init__(self, message: str, retry_after: float = WATCH_RETRY_AFTER):
        super().__init__(message)
        self.retry_after = retry_after


def source_of(request: web.Request) -> str:
    """Who is asking, for the per-source limits: the peer's IPv4 address, or its
    IPv6 /64 (one host usually holds a whole /64); "local" over a Unix socket."""
    try:
        ip = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        return "local"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 6:
        return str(ipaddress.ip_network((ip, 64), strict=False))
    return str(ip)


class RateLimiter:
    """Token buckets by key (a source, a public key): ``per_minute`` tokens, refilled
    evenly; memory bounded by ``max_keys`` (full buckets go first, then the least
    recently used).  ``per_minute`` 0 allows everything."""

    def __init__(self, per_minute: int, max_keys: int = LIMITER_KEYS,
                 clock: Callable[[], float] = time.monotonic):
        self.capacity = float(max(0, per_minute))
        self.rate = self.capacity / 60.0
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0.0 when ``key`` may go ahead (one token taken), else the seconds until it may."""
        if self.capacity <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)               # (re)inserted: most recent last
        if len(self._buckets) > self.max_keys:
            self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        """Down to 90% of ``max_keys`` at once, so a flood of new keys costs one scan
        per tenth of the table, not one per request."""
        target = self.max_keys * 9 // 10
        for k, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.capacity:
                del self._buckets[k]                     # a full bucket carries nothing
        while len(self._buckets) > target:
            del self._buckets[next(iter(self._buckets))]


def _limited(what: str, wait: float) -> TooManyRequests:
    return TooManyRequests("too many %s; try again in %d s" % (what, math.ceil(wait)), wait)


# --- the server -------------------------------------------------------------------------------------
STORE_KEY = web.AppKey("store", Store)
WATCHERS_KEY = web.AppKey("watchers", list)
CLOCK_KEY = web.AppKey("clock", object)
TRUST_KEY = web.AppKey("trusted_signers", frozenset)
MAX_TTL_KEY = web.AppKey("max_ttl", int)
HEARTBEAT_KEY = web.AppKey("heartbeat", float)
LIMITS_KEY = web.AppKey("limits", Limits)
LIMITERS_KEY = web.AppKey("limiters", dict)
STATS_KEY = web.AppKey("stats", dict)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


# The daemon API's JSON error handling, with this service's body limit.
_errors = json_errors(_error, MAX_BODY, "directory")


@web.middleware
async def _retry_after(request: web.Request, handler):
    """429 and a refused watch (503) say when to come back: a Retry-After header
    (whole seconds) and "retry_after" in the JSON body."""
    try:
        return await handler(request)
    except (TooManyRequests, TooManyWatchers) as exc:
        wait = max(1, math.ceil(exc.retry_after))
        request.app[STATS_KEY]["limited"] += 1
        resp = _json({"error": exc.message, "retry_after": wait}, status_of(exc))
        resp.headers["Retry-After"] = str(wait)
        return resp


async def _body(request: web.Request) -> Any:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise TooLarge("request body too large (%d bytes, limit %d)" % (length, MAX_BODY))
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)   # 413 past client_max_size
    except asyncio.TimeoutError:
        raise RequestTimeout("request body not received within %g s" % BODY_TIMEOUT) from None
    if not raw.strip():
        raise Invalid("this request needs a JSON body")
    try:
        return strict_loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid("body is not valid JSON: %s" % exc) from None


read_body = _body           # for the network's routes (directory/network.py)


def _path_key(request: web.Request) -> str:
    try:
        return b64(key_from_text(request.match_info["public_key"]))
    except KeyFormatError as exc:
        raise Invalid("public key in the path: %s (use URL-safe base64)" % exc) from None


def _now(request: web.Request) -> float:
    return request.app[CLOCK_KEY]()


async def get_status(request: web.Request) -> web.Response:
    app = request.app
    store = app[STORE_KEY]
    try:
        records = await store.count()
    except Unsupported:
        records = None
    limits = app[LIMITS_KEY]
    return _json({"service": "phantom-directory", "version": __version__, "store": store.kind,
                  "records": records, "time": int(_now(request)),
                  "watches": app[WATCHERS_KEY][0],
                  "counters": dict(store.counters(), **app[STATS_KEY]),
                  "limits": {"source_writes_per_minute": limits.source_writes_per_minute,
                             "key_writes_per_minute": limits.key_writes_per_minute,
                             "source_quota": limits.source_quota,
                             "source_watches": limits.source_watches,
                             "max_watches": limits.max_watches,
                             "max_ttl": app[MAX_TTL_KEY]}})


def _take(request: web.Request, which: str, key: str, what: str) -> None:
    wait = request.app[LIMITERS_KEY][which].take(key)
    if wait > 0:
        raise _limited(what, wait)


take = _take
now_of = _now


async def get_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    row = await request.app[STORE_KEY].get(key)
    if row is None or (not row.revoked and row.expires <= _now(request)):
        raise NotFound("no record for this key")
    return _json(row.doc)


async def get_name(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not PEER_NAME.match(name):
        raise Invalid("not a valid name (%s)" % PEER_NAME_RULE)
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
            raise Invalid("after: %s" % exc) from None
    text = request.query.get("limit", str(LIST_LIMIT))
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= LIST_LIMIT:
        raise Invalid("limit must be an integer in 1..%d" % LIST_LIMIT)
    rows = await request.app[STORE_KEY].list(int(_now(request)), after, int(text))
    nxt = rows[-1].public_key if len(rows) == int(text) else None
    return _json({"records": [r.doc for r in rows], "next": nxt})


async def put_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    source = source_of(request)
    _take(request, "source", source, "writes from %s" % source)
    _take(request, "key", key, "updates of this key's record")
    doc = await _body(request)
    app, now = request.app, _now(request)
    stored, created = await app[STORE_KEY].publish(doc, now, trusted=app[TRUST_KEY],
                                                   max_ttl=app[MAX_TTL_KEY], key=key,
                                                   source=source,
                                                   quota=app[LIMITS_KEY].source_quota)
    log.info("%s %s seq=%d name=%s endpoints=%s", "revoked" if stored.revoked else
             ("published" if created else "updated"), key, stored.seq, stored.name,
             ",".join(stored.doc.get("endpoints", [])) or "-")
    return _json(stored.doc, status=201 if created else 200)


async def post_endorsement(request: web.Request) -> web.Response:
    key = _path_key(request)
    source = source_of(request)
    _take(request, "source", source, "writes from %s" % source)
    end = await _body(request)
    app, now = request.app, _now(request)
    stored = await app[STORE_KEY].endorse(key, end, now, trusted=app[TRUST_KEY],
                                          max_ttl=app[MAX_TTL_KEY])
    log.info("endorsement of %s (name=%s) until %s", key, stored.name,
             end.get("expires") if isinstance(end, dict) else "?")
    return _json(stored.doc)


async def watch(request: web.Request) -> web.StreamResponse:
    """``POST /watch {"keys": [...]}``: a stream of newline-delimited records.

    First the current record of each watched key that has one, then every
    change to any of them as the store reports it (for PostgreSQL: the moment
    any front end commits it), with ``{}`` as a heartbeat whenever the stream
    was silent for WATCH_HEARTBEAT seconds.  The stream ends after WATCH_MAX
    seconds or when the store loses its push channel; the client reconnects
    (and gets the current records again).  A source holds at most
    ``source_watches`` streams (429 past it), the front end ``max_watches``
    (503); both answers carry Retry-After, and clients poll meanwhile.  A
    stream whose client went away frees its slot within WATCH_GONE_CHECK."""
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"keys"} or not isinstance(body["keys"], list) \
            or not 1 <= len(body["keys"]) <= WATCH_KEYS:
        raise Invalid('a watch is {"keys": [KEY, ...]} with 1..%d keys' % WATCH_KEYS)
    keys = set()
    for k in body["keys"]:
        try:
            keys.add(b64(key_from_text(k)))
        except (KeyFormatError, TypeError, AttributeError) as exc:
            raise Invalid("keys: %s" % exc) from None
    app = request.app
    limits = app[LIMITS_KEY]
    count, by_source = app[WATCHERS_KEY]
    source = source_of(request)
    if limits.source_watches and by_source.get(source, 0) >= limits.source_watches:
        raise TooManyRequests("%s already holds %d watch streams here, the most one source "
                              "may; poll GET /records/KEY meanwhile" % (source,
                                                                        limits.source_watches),
                              WATCH_RETRY_AFTER)
    if count >= limits.max_watches:
        raise TooManyWatchers("this directory already serves %d watches; poll GET "
                              "/records/KEY meanwhile" % limits.max_watches)
    app[WATCHERS_KEY][0] += 1
    by_source[source] = by_source.get(source, 0) + 1
    try:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        stream = asyncio.ensure_future(_stream(request, resp, keys))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (stream, gone):
                t.cancel()
            await asyncio.gather(stream, gone, return_exceptions=True)
        return resp
    finally:
        app[WATCHERS_KEY][0] -= 1
        by_source[source] -= 1
        if not by_source[source]:
            del by_source[source]


async def _stream(request: web.Request, resp: web.StreamResponse, keys: set) -> None:
    store = request.app[STORE_KEY]
    async with contextlib.aclosing(store.watch(keys, heartbeat=request.app[HEARTBEAT_KEY],
                                               duration=WATCH_MAX,
                                               clock=request.app[CLOCK_KEY])) as changes:
        async for row in changes:
            await resp.write(b"{}\n" if row is None else canonical(row.doc) + b"\n")


async def _client_gone(request: web.Request) -> None:
    """Returns once the client closed the connection (aiohttp tells a handler
    only when it next writes, i.e. at the next heartbeat)."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(WATCH_GONE_CHECK)


def create_app(store: Store, *, clock: Callable[[], float] = time.time,
               trusted_signers: Iterable[bytes] = (),
               max_ttl: int = DEFAULT_MAX_TTL,
               limits: Optional[Limits] = None,
               watch_heartbeat: Optional[float] = None) -> web.Application:
    """The directory application over an opened store (routes in docs/directory.md).
    ``limits`` are the per-source limits (default: :class:`Limits`' defaults, with
    the module's WATCHERS_MAX as it is now); ``watch_heartbeat`` the seconds of
    silence after which a watch stream gets ``{}`` (default WATCH_HEARTBEAT)."""
    limits = limits or Limits(max_watches=WATCHERS_MAX)
    heartbeat = WATCH_HEARTBEAT if watch_heartbeat is None else float(watch_heartbeat)
    if not 0 < heartbeat <= MAX_HEARTBEAT:
        raise ValueError("the watch heartbeat must be in (0, %g] seconds (clients redo a "
                         "stream silent for %g s)" % (MAX_HEARTBEAT, 40.0))
    app = web.Application(middlewares=[_errors, _retry_after], client_max_size=MAX_BODY)
    app[STORE_KEY] = store
    app[CLOCK_KEY] = clock
    app[TRUST_KEY] = frozenset(bytes(s) for s in trusted_signers)
    app[MAX_TTL_KEY] = int(max_ttl)
    app[LIMITS_KEY] = limits
    app[HEARTBEAT_KEY] = heartbeat
    app[LIMITERS_KEY] = {"source": RateLimiter(limits.source_writes_per_minute),
                         "key": RateLimiter(limits.key_writes_per_minute)}
    app[STATS_KEY] = {"limited": 0}
    app[WATCHERS_KEY] = [0, {}]              # streams, streams by source
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
        except PhantomError as exc:
            log.warning("purging expired records failed: %s", exc)
            continue
        if n:
            log.info("purged %d expired record(s)", n)


async def serve_forever(host: str, port: int, db, trusted_signers=(),
                        max_ttl: int = DEFAULT_MAX_TTL, drop_to=None,
                        limits: Optional[Limits] = None,
                        watch_heartbeat: Optional[float] = None, network=None) -> None:
    """Run the directory until SIGINT/SIGTERM.  ``db`` is a SQLite path or a
    postgresql:// URL (any number of front ends may share one database).

    ``drop_to`` (a passwd entry from :func:`phantom.privileges.resolve_user`;
    the caller has already called ``lock_down``): switch to that user once the
    store is open and the port bound.  A SQLite server then reads and writes
    the db only through the descriptors SQLite opened as root; a PostgreSQL
    front end opens its further pool connections as that user.

    ``network`` (a :class:`phantom.directory.network.NetworkService`): serve
    that network's routes too (its tables are made in the store at start)."""
    store = await open_store(db).open()
    try:
        app = create_app(store, trusted_signers=trusted_signers, max_ttl=max_ttl,
                         limits=limits, watch_heartbeat=watch_heartbeat)
        if network is not None:
            await network.attach(app, store)
        runner = await start_server(app, host, port)
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
    limits = limits or Limits()
    log.info("directory listening on http://%s:%d (%s store %s, %d record(s), %d trusted "
             "signer(s); per source: %s writes/min, %s records, %s watches; %s writes/min per "
             "key)", host if ":" not in host else "[%s]" % host, port, store.kind,
             _describe(db), await store.count(), len(tuple(trusted_signers)),
             *(n or "unlimited" for n in (limits.source_writes_per_minute, limits.source_quota,
                                          limits.source_watches,
                                          limits.key_writes_per_minute)))
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
    from .store.postgres import safe_dsn
    return safe_dsn(str(db))
