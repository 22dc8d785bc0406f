"""The directory service: an aiohttp application over a store."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any, Callable, Iterable

from aiohttp import web

from phantom import __version__, logsetup
from phantom.control.api import json_errors
from phantom.control.config import PEER_NAME, PEER_NAME_RULE
from phantom.control.errors import ApiError, BadRequest, Conflict, NotFound, PayloadTooLarge
from phantom.control.keys import KeyFormatError

from .records import Record, RecordError, b64, key_from_text, parse_record, strict_loads, \
    verify_endorsement, MAX_ENDORSEMENTS
from .store import LIST_LIMIT, DirectoryStore

log = logsetup.get_logger("directory")

# --- service tunables ---------------------------------------------------------------------------
DEFAULT_PORT = 4568
DEFAULT_DB = "phantom-directory.sqlite"
MAX_BODY = 16 * 1024                  # one record with 16 endpoints, 64 prefixes, 16 endorsements
BODY_TIMEOUT = 10.0
DEFAULT_MAX_TTL = 30 * 86400          # the server refuses records that live longer
CLOCK_SKEW = 300                      # seconds of clock difference tolerated on publish
PURGE_INTERVAL = 60.0


class Gone(ApiError):
    status = 410


class Forbidden(ApiError):
    status = 403


class RequestTimeout(ApiError):
    status = 408


# --- the server -------------------------------------------------------------------------------------
STORE_KEY = web.AppKey("store", DirectoryStore)
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


def _endorsed_until(rec: Record, doc: dict, trusted: frozenset, now: float) -> int:
    if not trusted:
        return 0
    best = 0
    for end in doc.get("endorsements", []):
        try:
            signer = verify_endorsement(end, rec.public_key, rec.name, now)
        except RecordError:
            continue
        if signer in trusted:
            best = max(best, end["expires"])
    return best


def _merge_endorsements(rec: Record, new: list, old: list, trusted: frozenset,
                        now: float) -> list:
    """Endorsements still valid for this record's key and name, one per signer."""
    by_signer: dict[str, dict] = {}
    for end in list(old) + list(new):             # new ones replace old ones by signer
        try:
            signer = verify_endorsement(end, rec.public_key, rec.name, now)
        except RecordError:
            continue
        if trusted and signer not in trusted:
            continue
        by_signer[end["signer"]] = end
    kept = sorted(by_signer.values(), key=lambda e: -e["expires"])[:MAX_ENDORSEMENTS]
    return sorted(kept, key=lambda e: e["signer"])


async def get_status(request: web.Request) -> web.Response:
    return _json({"service": "phantom-directory", "version": __version__,
                  "records": request.app[STORE_KEY].count(), "time": int(_now(request))})


async def get_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    row = request.app[STORE_KEY].get(key)
    if row is None or (not row.revoked and row.expires <= _now(request)):
        raise NotFound("no record for %s" % key)
    return _json(row.doc)


async def get_name(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not PEER_NAME.match(name):
        raise BadRequest("%r is not a valid name (%s)" % (name, PEER_NAME_RULE))
    row = request.app[STORE_KEY].by_name(name, int(_now(request)))
    if row is None:
        raise NotFound("no record named %r" % name)
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
    rows = request.app[STORE_KEY].list(int(_now(request)), after, int(text))
    nxt = rows[-1].public_key if len(rows) == int(text) else None
    return _json({"records": [r.doc for r in rows], "next": nxt})


async def put_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    doc = await _body(request)
    app, now = request.app, _now(request)
    trusted = app[TRUST_KEY]
    try:
        rec = parse_record(doc, now, trusted_signers=trusted or None, strict_endorsements=True)
    except RecordError as exc:
        status = 403 if "signature" in str(exc) or "forged" in str(exc) else 400
        raise (Forbidden if status == 403 else BadRequest)(str(exc)) from None
    if rec.key_text != key:
        raise BadRequest("the record's public_key %s differs from the key in the path %s"
                         % (rec.key_text, key))
    if not rec.revoked and rec.expires > now + app[MAX_TTL_KEY] + CLOCK_SKEW:
        raise BadRequest("record lives too long: expires in %d s, this directory keeps at most "
                         "%d s" % (rec.expires - now, app[MAX_TTL_KEY]))
    store = app[STORE_KEY]
    # From here to store.put there is no await: no other request can interleave.
    old = store.get(key)
    if old is not None and old.doc.get("sig") == doc.get("sig"):
        return _json(old.doc)                      # the same record again: idempotent
    if old is not None and old.revoked:
        raise Gone("key %s was revoked; a revocation is final" % key)
    if old is not None and rec.seq <= old.seq:
        raise Conflict("stale seq %d: the directory holds seq %d for this key (newer wins)"
                       % (rec.seq, old.seq))
    merged = _merge_endorsements(rec, doc.get("endorsements", []),
                                 old.doc.get("endorsements", []) if old else [], trusted, now)
    stored = dict(doc, endorsements=merged)
    endorsed_until = _endorsed_until(rec, stored, trusted, now)
    if not rec.revoked:
        holder = store.by_name(rec.name, int(now), exclude=key)
        if holder is not None and not (endorsed_until > now and holder.endorsed_until <= now):
            raise Conflict("name %r is held by another key (%s) until %d"
                           % (rec.name, holder.public_key, holder.expires))
    store.put(rec, stored, endorsed_until, now)
    log.info("%s %s seq=%d name=%s endpoints=%s", "revoked" if rec.revoked else
             ("updated" if old else "published"), key, rec.seq, rec.name,
             ",".join(stored["endpoints"]) or "-")
    return _json(stored, status=200 if old else 201)


async def post_endorsement(request: web.Request) -> web.Response:
    key = _path_key(request)
    end = await _body(request)
    app, now, store = request.app, _now(request), request.app[STORE_KEY]
    old = store.get(key)
    if old is None or (not old.revoked and old.expires <= now):
        raise NotFound("no record for %s to endorse" % key)
    if old.revoked:
        raise Gone("key %s was revoked" % key)
    try:
        rec = parse_record(old.doc, now, trusted_signers=None)
        signer = verify_endorsement(end, rec.public_key, rec.name, now)
    except RecordError as exc:
        raise BadRequest(str(exc)) from None
    trusted = app[TRUST_KEY]
    if trusted and signer not in trusted:
        raise Forbidden("signer %s is not trusted by this directory" % b64(signer))
    merged = _merge_endorsements(rec, [end], old.doc.get("endorsements", []), trusted, now)
    stored = dict(old.doc, endorsements=merged)
    store.put(rec, stored, _endorsed_until(rec, stored, trusted, now), now)
    log.info("endorsement of %s (name=%s) by %s until %d", key, rec.name, b64(signer),
             end["expires"])
    return _json(stored)


def create_app(store: DirectoryStore, *, clock: Callable[[], float] = time.time,
               trusted_signers: Iterable[bytes] = (),
               max_ttl: int = DEFAULT_MAX_TTL) -> web.Application:
    """The directory application (routes in README.md, "Directory")."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[STORE_KEY] = store
    app[CLOCK_KEY] = clock
    app[TRUST_KEY] = frozenset(bytes(s) for s in trusted_signers)
    app[MAX_TTL_KEY] = int(max_ttl)
    r = app.router
    r.add_get("/status", get_status)
    r.add_get("/records", list_records)
    r.add_get("/records/{public_key}", get_record)
    r.add_put("/records/{public_key}", put_record)
    r.add_post("/records/{public_key}/endorsements", post_endorsement)
    r.add_get("/names/{name}", get_name)
    return app


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app``; ``runner.addresses`` tells the bound port (use port 0 in tests)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=15.0, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, backlog=128).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _purge_loop(store: DirectoryStore, clock) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        n = store.purge(int(clock()))
        if n:
            log.info("purged %d expired record(s)", n)


async def serve_forever(host: str, port: int, db, trusted_signers=(),
                        max_ttl: int = DEFAULT_MAX_TTL) -> None:
    """Run the directory until SIGINT/SIGTERM."""
    store = DirectoryStore(db)
    runner = await start_server(create_app(store, trusted_signers=trusted_signers,
                                           max_ttl=max_ttl), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    purger = asyncio.ensure_future(_purge_loop(store, time.time))
    log.info("directory listening on http://%s:%d (db %s, %d record(s), %d trusted signer(s))",
             host if ":" not in host else "[%s]" % host, port, db, store.count(),
             len(tuple(trusted_signers)))
    try:
        await stop.wait()
    finally:
        purger.cancel()
        await runner.cleanup()
        store.close()
        log.info("directory stopped")

