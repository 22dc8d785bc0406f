"""The directory client: publish our record, resolve peers, verify everything."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from phantom import logsetup
from phantom.syntax import PEER_NAME

from .records import DirectoryError, DirectoryRejected, DirectoryUnavailable, MAX_SEQ, \
    NodeSigner, Record, RecordError, name_field, b64, b64url, canonical, key_from_text, \
    make_endorsement, make_record, parse_record, strict_loads
from .defaults import CLIENT_TIMEOUT, DEFAULT_TTL, DHT_TIMEOUT
from .records import MAX_BODY
from .store.base import LIST_LIMIT

log = logsetup.get_logger("directory")

# --- client tunables ----------------------------------------------------------------------------
# (DEFAULT_TTL, CLIENT_TIMEOUT and DHT_TIMEOUT: in defaults.py, for the command line's parser)
REVOCATION_TTL = 365 * 86400
CACHE_REFRESH = 30.0                  # a cached record younger than this is served without asking
CACHE_TTL = 3600.0                    # the oldest cached record served while the directory is down
NEGATIVE_TTL = 5.0                    # "no such record" is remembered this long
CACHE_ENTRIES = 4096
MAX_RESPONSE = 1024 * 1024
STRAGGLER = 0.5                       # once one directory answered, the others get this long
WATCH_RETRY = 1.0                     # first reconnect delay of a watch stream (doubles to 30 s)
WATCH_RETRY_MAX = 30.0
WATCH_POLL = 5.0                      # directories without /watch (and the DHT) are polled
WATCH_CHUNK = 256                     # keys per watch stream (the server's limit)
WATCH_READ = 40.0                     # a watch stream silent this long (no heartbeat) is redone
ENDPOINT_CHECK = 2.0                  # how often keep_published asks for changed endpoints


def _header_seconds(value) -> float:
    """A Retry-After in seconds (0 when absent or not a number of seconds)."""
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0


def _retry_after(payload) -> Optional[float]:
    """The "retry_after" of a 429's JSON body, if any."""
    wait = payload.get("retry_after") if isinstance(payload, dict) else None
    return float(wait) if isinstance(wait, int) and not isinstance(wait, bool) and wait > 0 \
        else None


def parse_urls(url) -> list:
    """One directory URL, several (a list, or one string with commas or spaces)."""
    items = url.replace(",", " ").split() if isinstance(url, str) else list(url)
    if not items:
        raise ValueError("no directory URL given")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("a directory URL is a string, not %r" % (item,))
        u = urllib.parse.urlsplit(item)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError("directory URL must be http:// or https://, not %r" % item)
        if item.rstrip("/") not in out:
            out.append(item.rstrip("/"))
    return out

# --- the client -------------------------------------------------------------------------------------
@dataclass
class _Entry:
    record: Record
    fetched: float


class DirectoryClient:
    """Publish our record and resolve peers, verifying everything the directory says.

    ``private_key`` (a bytearray; None for a read-only client) signs our
    records; ``trusted_signers`` are Ed25519 keys whose endorsements count
    (``Record.endorsed_by``).  Lookups are cached: a record fetched less than
    ``refresh`` seconds ago is served without asking; when the directory is
    down, one fetched less than ``cache_ttl`` ago (and not expired) is served
    with a warning; without one, :class:`DirectoryUnavailable` is raised.

    Names are pinned on first use (TOFU): once ``name`` resolved to a key,
    another key claiming it is refused unless a trusted signer endorsed it
    or the pinned key was revoked.  :meth:`pin` seeds pins from the config.
    """

    def __init__(self, url, private_key=None, clock: Callable[[], float] = time.time, *,
                 trusted_signers: Iterable[bytes] = (), timeout: float = CLIENT_TIMEOUT,
                 refresh: float = CACHE_REFRESH, cache_ttl: float = CACHE_TTL,
                 negative_ttl: float = NEGATIVE_TTL, poll: float = WATCH_POLL):
        self.urls = parse_urls(url)
        self.poll = poll
        self.url = self.urls[0]
        self.clock = clock
        self.timeout = timeout
        self.refresh = refresh
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.trusted_signers = frozenset(bytes(s) for s in trusted_signers)
        self._signer = NodeSigner(private_key) if private_key is not None else None
        self.public_key: Optional[bytes] = self._signer.public_key if self._signer else None
        self._seq = 0
        self._name: Optional[str] = None
        self._cache: dict[bytes, _Entry] = {}
        self._missing: dict[Any, float] = {}
        self._pins: dict[str, bytes] = {}
        self._highest: dict[bytes, int] = {}
        self._revoked: set[bytes] = set()
        self._session = None
        self.stats = {"lookups": 0, "cache_hits": 0, "stale_served": 0, "not_found": 0,
                      "rejected": 0, "pin_refused": 0, "watch_updates": 0,
                      "watch_heartbeats": 0, "watch_refused": 0, "watch_polling": 0}

    # lifecycle
    async def reset_connections(self) -> None:
        """Drop pooled HTTP connections (after our address changed they are dead);
        running watch streams reconnect by themselves."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wipe(self) -> None:
        """Forget the signing key (zeroed)."""
        if self._signer is not None:
            self._signer.wipe()

    async def __aenter__(self) -> "DirectoryClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # state the daemon may read without I/O
    def pin(self, name: str, public_key: bytes) -> None:
        """Bind ``name`` to ``public_key`` (e.g. a [[peer]] in the config)."""
        self._pins[name_field(name)] = bytes(public_key)

    def cached(self, public_key: bytes) -> Optional[Record]:
        """The cached record of a key, if any and not expired (no network)."""
        entry = self._cache.get(bytes(public_key))
        if entry is None or entry.record.expires <= self.clock():
            return None
        return entry.record

    def is_revoked(self, public_key: bytes) -> bool:
        return bytes(public_key) in self._revoked

    def counters(self) -> dict:
        """This client's counters (a copy), for the daemon's /status and metrics."""
        return dict(self.stats)

    # HTTP
    def _http(self):
        if self._session is None:
            import aiohttp
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False)
        return self._session

    async def _request_one(self, url: str, method: str, path: str, data: Optional[bytes],
                           limit: int) -> tuple[int, Any]:
        import aiohttp
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(method, url + path, data=data,
                                             headers=headers) as resp:
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    buf += chunk
                    if len(buf) > limit:
                        raise DirectoryUnavailable("%s sent more than %d bytes" % (url, limit))
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            reason = exc.__class__.__name__ + (": %s" % exc if str(exc) else "")
            raise DirectoryUnavailable("%s unreachable (%s)" % (url, reason)) from None
        if status >= 500:
            raise DirectoryUnavailable("%s answered HTTP %d" % (url, status))
        try:
            payload = strict_loads(bytes(buf)) if buf else None
        except (UnicodeDecodeError, ValueError):
            raise DirectoryUnavailable("%s sent a response that is not JSON (HTTP %d)"
                                       % (url, status)) from None
        return status, payload

    async def _gather(self, method: str, path: str, body: Any = None,
                      limit: int = MAX_BODY * 4) -> list[tuple[int, Any]]:
        """Ask every directory at once; the answers of those that answered.

        Once one has answered well (2xx), the others get STRAGGLER seconds more
        (so a hung front end costs little); raises DirectoryUnavailable when
        none answered."""
        data = canonical(body) if body is not None else None
        if len(self.urls) == 1:
            return [await self._request_one(self.url, method, path, data, limit)]
        tasks = [asyncio.ensure_future(self._request_one(u, method, path, data, limit))
                 for u in self.urls]
        answers, errors = [], []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout + 1.0
        pending = set(tasks)
        try:
            while pending:
                wait = deadline - loop.time()
                if any(200 <= st < 300 for st, _ in answers):
                    wait = min(wait, STRAGGLER)
                if wait <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=wait,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                for t in done:
                    exc = t.exception()
                    if exc is None:
                        answers.append(t.result())
                    else:
                        errors.append(exc)
        finally:
            for t in pending:
                t.cancel()
        if pending and not answers:
            errors.append(DirectoryUnavailable("%d director%s did not answer in time"
                                               % (len(pending), "y" if len(pending) == 1
                                                  else "ies")))
        if not answers:
            if len(errors) == 1 and isinstance(errors[0], DirectoryUnavailable):
                raise errors[0]
            raise DirectoryUnavailable("no directory answered: " + "; ".join(
                getattr(e, "detail", str(e)) for e in errors))
        for e in errors:
            log.info("one directory failed (the others answered): %s", e)
        return answers

    def _best_record(self, answers: list, by_name: bool = False) -> tuple[int, Any]:
        """Of several answers to a record lookup: the valid record with the highest seq
        (a revocation has the highest of all; for a name, endorsed claims first),
        else a 404, else the first answer."""
        now, best, best_seq = self.clock(), None, (-1, -1)
        for st, payload in answers:
            if st != 200:
                continue
            try:
                rec = self._verify(payload, now)
            except RecordError as exc:
                if len(answers) > 1:          # with one answer the caller counts and says why
                    self.stats["rejected"] += 1
                    log.warning("one directory served an invalid record: %s", exc)
                continue
            rank = (int(rec.endorsed) if by_name else 0, rec.seq)
            if rank > best_seq:
                best, best_seq = (st, payload), rank
        if best is not None:
            return best
        for st, payload in answers:
            if st == 404:
                return st, payload
        return answers[0]

    @staticmethod
    def _best_write(answers: list) -> tuple[int, Any]:
        """Of several answers to a write: a success if any (a publish that reached one
        directory is published), else a 'stale seq' conflict, else the first refusal."""
        for st, payload in answers:
            if 200 <= st < 300:
                return st, payload
        for st, payload in answers:
            if st == 409:
                return st, payload
        return answers[0]

    async def _request(self, method: str, path: str, body: Any = None,
                       limit: int = MAX_BODY * 4) -> tuple[int, Any]:
        answers = await self._gather(method, path, body, limit)
        if method == "GET":
            return self._best_record(answers, by_name=path.startswith("/names/"))
        return self._best_write(answers)

    @staticmethod
    def _message(payload: Any) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"]
        return "no reason given"

    # lookups
    def _verified_or_counted(self, doc: Any, now: float, what: str) -> Optional[Record]:
        """The verified record, or None: a rejected one is counted and logged as ``what``."""
        try:
            return self._verify(doc, now)
        except RecordError as exc:
            self.stats["rejected"] += 1
            log.warning("%s: %s", what, exc)
            return None

    def _verify(self, doc: Any, now: float) -> Record:
        return parse_record(doc, now, trusted_signers=self.trusted_signers)

    def _stale(self, entry: Optional[_Entry], what: str, exc: Exception, now: float) -> Record:
        if entry is not None and now - entry.fetched <= self.cache_ttl and \
                entry.record.expires > now and entry.record.public_key not in self._revoked:
            self.stats["stale_served"] += 1
            log.warning("%s; serving the cached record of %s from %d s ago", exc, what,
                        int(now - entry.fetched))
            return entry.record
        if isinstance(exc, DirectoryUnavailable):
            raise exc
        raise DirectoryUnavailable(str(exc))

    def _accept(self, rec: Record, now: float) -> Optional[Record]:
        """Anti-rollback, revocation and caching of a verified record."""
        key = rec.public_key
        if rec.revoked:
            if key not in self._revoked:
                log.warning("the key of %s (%s) is revoked", rec.name, rec.key_text)
            self._revoked.add(key)
            self._cache.pop(key, None)
            for name, pinned in list(self._pins.items()):
                if pinned == key:
                    del self._pins[name]
            return None
        if key in self._revoked:
            return None
        highest = self._highest.get(key, -1)
        if rec.seq < highest:
            log.warning("directory served seq %d for %s but seq %d was seen; keeping the newer",
                        rec.seq, rec.name, highest)
            entry = self._cache.get(key)
            return entry.record if entry and entry.record.expires > now else None
        self._highest[key] = rec.seq
        if len(self._cache) >= CACHE_ENTRIES and key not in self._cache:
            oldest = min(self._cache, key=lambda k: self._cache[k].fetched)
            del self._cache[oldest]
        self._cache[key] = _Entry(rec, now)
        self._missing.pop(key, None)
        return rec

    def _negative(self, what, now: float) -> bool:
        until = self._missing.get(what)
        if until is not None and until > now:
            return True
        self._missing.pop(what, None)
        return False

    def _remember_missing(self, what, now: float) -> None:
        if len(self._missing) >= CACHE_ENTRIES:
            self._missing.clear()
        self._missing[what] = now + self.negative_ttl

    async def resolve_key(self, public_key: bytes, fresh: bool = False) -> Optional[Record]:
        """The verified, live record of ``public_key``; None if absent, revoked or forged.

        ``fresh`` asks the directory even when the cache is recent (used to
        see new endorsements); the cache still answers when it is down."""
        key = bytes(public_key)
        now = self.clock()
        self.stats["lookups"] += 1
        if key in self._revoked:
            return None
        entry = self._cache.get(key)
        if not fresh and entry is not None and now - entry.fetched < self.refresh and \
                entry.record.expires > now:
            self.stats["cache_hits"] += 1
            return entry.record
        if not fresh and self._negative(key, now):
            return None
        what = b64(key)
        try:
            status, payload = await self._request("GET", "/records/" + b64url(key))
        except DirectoryUnavailable as exc:
            return self._stale(entry, what, exc, now)
        if status == 404:
            self.stats["not_found"] += 1
            self._cache.pop(key, None)
            self._remember_missing(key, now)
            return None
        if status != 200:
            return self._stale(entry, what, DirectoryUnavailable(
                "the directory answered HTTP %d: %s" % (status, self._message(payload))), now)
        try:
            rec = self._verify(payload, now)
            if rec.public_key != key:
                raise RecordError("the directory answered with the record of another key (%s)"
                                  % rec.key_text)
        except RecordError as exc:
            self.stats["rejected"] += 1
            log.warning("rejected the record the directory served for %s: %s", what, exc)
            return entry.record if entry is not None and entry.record.expires > now else None
        return self._accept(rec, now)

    async def resolve_name(self, name: str) -> Optional[Record]:
        """The verified record holding ``name``; None if absent, refused or forged."""
        name_field(name)
        now = self.clock()
        self.stats["lookups"] += 1
        pinned = self._pins.get(name)
        entry = self._cache.get(pinned) if pinned is not None else None
        if entry is not None and entry.record.name == name and \
                now - entry.fetched < self.refresh and entry.record.expires > now:
            self.stats["cache_hits"] += 1
            return entry.record
        if self._negative(("name", name), now):
            return None
        try:
            status, payload = await self._request("GET", "/names/" + urllib.parse.quote(name))
        except DirectoryUnavailable as exc:
            if entry is not None and entry.record.name == name:
                return self._stale(entry, name, exc, now)
            raise
        if status == 404:
            self.stats["not_found"] += 1
            self._remember_missing(("name", name), now)
            return None
        if status != 200:
            exc = DirectoryUnavailable("the directory answered HTTP %d: %s"
                                       % (status, self._message(payload)))
            if entry is not None and entry.record.name == name:
                return self._stale(entry, name, exc, now)
            raise exc
        try:
            rec = self._verify(payload, now)
            if rec.name != name:
                raise RecordError("asked for %r, the directory answered with a record named %r"
                                  % (name, rec.name))
        except RecordError as exc:
            self.stats["rejected"] += 1
            log.warning("rejected the record the directory served for name %s: %s", name, exc)
            return entry.record if entry is not None and entry.record.expires > now else None
        if pinned is not None and rec.public_key != pinned and not rec.endorsed and \
                pinned not in self._revoked:
            self.stats["pin_refused"] += 1
            log.warning("name %s now claims key %s but was pinned to %s; refused (needs a "
                        "trusted endorsement or a revocation of the pinned key)", name,
                        rec.key_text, b64(pinned))
            return entry.record if entry is not None and entry.record.expires > now else None
        accepted = self._accept(rec, now)
        if accepted is not None and accepted.public_key == rec.public_key:
            self._pins[name] = rec.public_key
        return accepted

    async def is_endorsed(self, public_key: bytes) -> bool:
        """True when the key's live record carries a trusted signer's endorsement."""
        try:
            rec = await self.resolve_key(public_key)
        except DirectoryUnavailable:
            return False
        return rec is not None and rec.endorsed

    async def list_records(self, limit: int = LIST_LIMIT) -> list[Record]:
        """Every verifiable live record (one page of ``limit``); forged ones are skipped."""
        answers = await self._gather("GET", "/records?limit=%d" % limit, limit=MAX_RESPONSE)
        pages = [p["records"] for st, p in answers if st == 200 and isinstance(p, dict) and
                 isinstance(p.get("records"), list)]
        if not pages:
            raise DirectoryUnavailable("the directory answered HTTP %d to a listing"
                                       % answers[0][0])
        now, best = self.clock(), {}
        for page in pages:                    # several directories: the newest of each key
            for doc in page:
                rec = self._verified_or_counted(doc, now, "skipping a listed record")
                if rec is None:
                    continue
                if rec.public_key not in best or rec.seq > best[rec.public_key].seq:
                    best[rec.public_key] = rec
        return sorted(best.values(), key=lambda r: r.key_text)

    # publishing
    def _need_signer(self) -> NodeSigner:
        if self._signer is None:
            raise DirectoryError("this client has no private key (read-only)")
        return self._signer

    async def _put(self, doc: dict) -> tuple[int, Any]:
        return await self._request("PUT", "/records/" + b64url(self._need_signer().public_key),
                                   doc)

    async def publish(self, name: str, endpoints: Iterable, allowed_ips: Iterable,
                      ttl: int = DEFAULT_TTL, protocol: str = "phantom",
                      endorsers: Iterable[bytes] = ()) -> dict:
        """Sign and publish our record; returns the record as the directory stored it.

        ``endorsers`` (Ed25519 keys), when given, are the only signers whose
        endorsements the record takes (its "endorsers" field).

        ``seq`` is the time in milliseconds (monotonic per client); if the
        directory holds a newer one (clock went back), we continue after it once.
        Raises DirectoryRejected (4xx) or DirectoryUnavailable.
        """
        signer = self._need_signer()
        endpoints, allowed_ips, endorsers = list(endpoints), list(allowed_ips), list(endorsers)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise ValueError("ttl must be a positive number of seconds")
        for attempt in range(2):
            now = self.clock()
            self._seq = max(int(now * 1000), self._seq + 1)
            try:
                doc = make_record(signer, name, endpoints, allowed_ips, self._seq, int(now) + ttl,
                                  protocol=protocol, endorsers=endorsers)
            except RecordError as exc:
                raise ValueError(str(exc)) from None
            status, payload = await self._put(doc)
            if status in (200, 201):
                break
            if status == 409 and attempt == 0 and "stale seq" in self._message(payload):
                current = await self._current_seq()
                if current is not None and current >= self._seq:
                    log.info("the directory holds seq %d for our key; continuing after it", current)
                    self._seq = current
                    continue
            raise DirectoryRejected(status, self._message(payload), _retry_after(payload))
        self._name = name
        try:
            self._accept(self._verify(payload, self.clock()), self.clock())
        except RecordError as exc:
            raise DirectoryUnavailable("the directory answered our publish with an invalid "
                                       "record: %s" % exc) from None
        self._pins.setdefault(name, signer.public_key)
        return payload

    async def _current_seq(self) -> Optional[int]:
        status, payload = await self._request("GET", "/records/" +
                                              b64url(self._need_signer().public_key))
        if status != 200:
            return None
        try:
            return parse_record(payload, self.clock(), trusted_signers=()).seq
        except RecordError:
            return None

    async def revoke(self) -> dict:
        """Publish a final, self-signed revocation of our key."""
        signer = self._need_signer()
        name = self._name
        if name is None:
            status, payload = await self._request("GET", "/records/" + b64url(signer.public_key))
            name = payload.get("name") if status == 200 and isinstance(payload, dict) else None
            if not isinstance(name, str) or not PEER_NAME.match(name):
                name = "revoked"
        now = self.clock()
        doc = make_record(signer, name, [], [], MAX_SEQ, int(now) + REVOCATION_TTL, revoked=True)
        status, payload = await self._put(doc)
        if status not in (200, 201):
            raise DirectoryRejected(status, self._message(payload))
        self._revoked.add(signer.public_key)
        self._cache.pop(signer.public_key, None)
        log.info("revoked our key %s in the directory", b64(signer.public_key))
        return payload

    async def endorse(self, public_key: bytes, name: str, ttl: int) -> dict:
        """As a signer, endorse (public_key, name) for ``ttl`` seconds at the directory."""
        signer = self._need_signer()
        end = make_endorsement(signer, bytes(public_key), name, int(self.clock()) + int(ttl))
        status, payload = await self._request("POST", "/records/%s/endorsements"
                                              % b64url(public_key), end)
        if status != 200:
            raise DirectoryRejected(status, self._message(payload))
        carried = payload.get("endorsements") if isinstance(payload, dict) else None
        if not isinstance(carried, list) or end not in carried:
            raise DirectoryUnavailable("the directory answered 200 to our endorsement but the "
                                       "record it returned does not carry it")
        return payload

    def republish_every(self, ttl: int) -> float:
        return ttl / 2

    async def keep_published(self, name: str, endpoints, allowed_ips: Iterable,
                             ttl: int = DEFAULT_TTL, retry: float = 30.0,
                             check: float = ENDPOINT_CHECK, endorsers: Iterable[bytes] = ()
                             ) -> None:
        """Publish now and again every ttl/2 until cancelled; failures are logged and retried.
        ``endorsers``: who may endorse our record (see :meth:`publish`).

        ``endpoints`` may be a callable returning the current endpoints: it is
        asked every ``check`` seconds and a change is published at once (a node
        that moved network is found at its new address within seconds)."""
        current = endpoints if callable(endpoints) else (lambda eps=list(endpoints): eps)
        allowed_ips, endorsers = list(allowed_ips), list(endorsers)
        loop = asyncio.get_running_loop()
        announced = None
        while True:
            eps = list(current())
            try:
                stored = await self.publish(name, eps, allowed_ips, ttl, endorsers=endorsers)
                delay = self.republish_every(ttl)
                (log.info if eps != announced else log.debug)(
                    "published our record to %s: seq=%s endpoints=%s", ", ".join(self.urls),
                    stored.get("seq"), ",".join(stored.get("endpoints", [])) or "-")
                announced = eps
            except DirectoryError as exc:
                delay = min(retry, max(1.0, ttl / 4))
                wait = getattr(exc, "retry_after", None)
                if wait:                             # 429: the directory said when
                    delay = max(delay, min(float(wait), ttl / 4))
                log.warning("publishing our record failed: %s; retrying in %g s", exc, delay)
            due = loop.time() + delay
            while loop.time() < due:
                await asyncio.sleep(min(check, max(0.0, due - loop.time())))
                if callable(endpoints) and list(current()) != eps:
                    log.info("our endpoints changed (%s -> %s); republishing",
                             ",".join(map(str, eps)) or "-",
                             ",".join(map(str, current())) or "-")
                    await self.reset_connections()     # pooled ones left from the old address
                    break

    # watching
    def _on_watched(self, doc: Any, keys: frozenset, on_change) -> None:
        now = self.clock()
        rec = self._verified_or_counted(doc, now, "rejected a watched record")
        if rec is None:
            return
        if rec.public_key not in keys:
            return
        was_revoked = rec.public_key in self._revoked
        before = self._highest.get(rec.public_key, -1)
        accepted = self._accept(rec, now)
        if (accepted is not None and rec.seq > before) or (rec.revoked and not was_revoked):
            self.stats["watch_updates"] += 1
            on_change(rec)

    async def watch(self, keys: Iterable[bytes], on_change: Callable[[Record], None]) -> None:
        """Follow the records of ``keys`` until cancelled, calling ``on_change(record)``
        for each verified record newer than the one known (and for a revocation).

        Every directory is watched at once through ``POST /watch`` (pushed: a
        PostgreSQL-backed front end forwards any front end's commit at once);
        a directory without that route is polled every WATCH_POLL seconds."""
        keys = frozenset(bytes(k) for k in keys)
        if not keys:
            return
        ordered = sorted(keys)
        chunks = [frozenset(ordered[i:i + WATCH_CHUNK]) for i in range(0, len(ordered),
                                                                         WATCH_CHUNK)]
        await asyncio.gather(*(self._watch_url(u, chunk, on_change) for u in self.urls
                               for chunk in chunks))

    async def _watch_url(self, url: str, keys: frozenset, on_change) -> None:
        """One watch stream to ``url``, kept up.  A directory that refuses it for
        now (503: all its streams are taken; 429: ours are) is polled every
        WATCH_POLL seconds instead -- for its Retry-After, at least WATCH_RETRY
        and doubling up to WATCH_RETRY_MAX -- and then asked again; one without
        the route is polled for good."""
        import aiohttp
        body = canonical({"keys": sorted(b64(k) for k in keys)})
        delay = WATCH_RETRY
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                        sock_read=WATCH_READ)
        while True:
            poll_for = 0.0
            try:
                async with self._http().post(url + "/watch", data=body, timeout=timeout, headers={
                        "Content-Type": "application/json"}) as resp:
                    if resp.status in (404, 405):
                        log.info("directory %s cannot push changes; polling every %g s", url,
                                 WATCH_POLL)
                        await self._poll(keys, on_change)
                        return
                    if resp.status in (429, 503):
                        poll_for = max(delay, min(WATCH_RETRY_MAX, _header_seconds(
                            resp.headers.get("Retry-After"))))
                        self.stats["watch_refused"] += 1
                        raise DirectoryUnavailable("%s refused a watch (HTTP %d); polling every "
                                                   "%g s" % (url, resp.status, WATCH_POLL))
                    if resp.status != 200:
                        raise DirectoryUnavailable("%s answered HTTP %d to a watch"
                                                   % (url, resp.status))
                    delay = WATCH_RETRY
                    while True:
                        line = await resp.content.readline()
                        if not line:
                            break
                        if len(line) > MAX_BODY * 4:
                            raise DirectoryUnavailable("a watched record over %d bytes"
                                                       % (MAX_BODY * 4))
                        line = line.strip()
                        if not line:
                            continue
                        if line == b"{}":
                            self.stats["watch_heartbeats"] += 1
                            continue
                        try:
                            doc = strict_loads(line)
                        except (UnicodeDecodeError, ValueError):
                            self.stats["rejected"] += 1
                            log.warning("directory %s sent a watch line that is not JSON", url)
                            continue
                        self._on_watched(doc, keys, on_change)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError,
                    DirectoryUnavailable) as exc:
                log.info("watching %s: %s; reconnecting in %g s", url,
                         exc.__class__.__name__ + (": %s" % exc if str(exc) else ""),
                         poll_for or delay)
            if poll_for:
                self.stats["watch_polling"] += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._poll(keys, on_change), poll_for)
            else:
                await asyncio.sleep(delay)
            delay = min(WATCH_RETRY_MAX, delay * 2)

    async def _poll(self, keys: frozenset, on_change, interval: Optional[float] = None) -> None:
        interval = self.poll if interval is None else interval
        while True:
            for key in sorted(keys):
                before = self._highest.get(key, -1)
                was_revoked = key in self._revoked
                try:
                    rec = await self.resolve_key(key, fresh=True)
                except DirectoryError as exc:
                    log.info("polling %s: %s", b64(key), exc)
                    continue
                if rec is not None and rec.seq > before:
                    self.stats["watch_updates"] += 1
                    on_change(rec)
                elif rec is None and key in self._revoked and not was_revoked:
                    log.warning("watched key %s was revoked", b64(key))
            await asyncio.sleep(interval)


# --- the DHT as the directory -----------------------------------------------------------------------
class DhtDirectoryClient(DirectoryClient):
    """The client API over the mainline DHT instead of a directory server.

    Records are BEP 44 items (store/dht.py) read and written through our own
    libtorrent DHT node.  Lookups are by key only: :meth:`resolve_name`
    answers only for names pinned by the config (names are never taken from
    the DHT), listings are empty, endorsements can only be carried by the
    owner.  Everything fetched is verified and cached exactly as from a
    server.  ``watch`` polls (the DHT pushes nothing)."""

    def __init__(self, private_key=None, clock: Callable[[], float] = time.time, *,
                 listen: str = "0.0.0.0:6881", bootstrap: Iterable = (), node=None,
                 trusted_signers: Iterable[bytes] = (), timeout: float = DHT_TIMEOUT,
                 refresh: float = CACHE_REFRESH, cache_ttl: float = CACHE_TTL,
                 negative_ttl: float = NEGATIVE_TTL, poll: float = WATCH_POLL):
        from .store.dht import DhtNode, DhtStore
        super().__init__("http://dht.invalid", private_key, clock,
                         trusted_signers=trusted_signers, timeout=timeout, refresh=refresh,
                         cache_ttl=cache_ttl, negative_ttl=negative_ttl, poll=poll)
        self.urls = ["dht"]
        self.url = "dht"
        self.node = node or DhtNode(listen, bootstrap, timeout=timeout)
        self.store = DhtStore(self.node, own_node=node is None)   # starts and stops a node of its own

    async def start(self) -> "DhtDirectoryClient":
        await self.store.open()
        return self

    async def close(self) -> None:
        await super().close()
        await self.store.close()

    def republish_every(self, ttl: int) -> float:
        from .store.dht import REPUBLISH
        return min(ttl / 2, REPUBLISH)

    def counters(self) -> dict:
        """The client's counters, and under "dht" the DHT's: items dropped as malformed
        or forged, keys not found, the node's gets, puts, timeouts and routing table."""
        out = super().counters()
        dht = {k: v for k, v in self.store.counters().items()
               if k in ("dropped_malformed", "dropped_forged", "not_found")}
        dht.update({k: self.node.stats[k] for k in ("gets", "puts", "timeouts",
                                                    "not_found_stalled")})
        dht.update(routing_nodes=self.node.nodes, items=self.node.items)
        out["dht"] = dht
        return out

    async def _request(self, method: str, path: str, body: Any = None,
                       limit: int = MAX_BODY * 4) -> tuple[int, Any]:
        """The directory's HTTP routes, answered from the DHT."""
        from phantom.errors import PhantomError
        from phantom.http.statuses import status_of
        from .store.base import StaleSeq, StoreUnavailable
        try:
            if method == "GET" and path.startswith("/records/"):
                key = key_from_text(urllib.parse.unquote(path[len("/records/"):]))
                stored = await self.store.get(b64(key))
                if stored is None:
                    return 404, {"error": "no record for %s on the DHT" % b64(key)}
                return 200, stored.doc
            if method == "GET" and path.startswith("/names/"):
                return 404, {"error": "names are never taken from the DHT"}
            if method == "GET" and path.startswith("/records"):
                return 200, {"records": [], "next": None}
            if method == "PUT" and path.startswith("/records/"):
                stored, created = await self.store.publish(body, self.clock(),
                                                           signer=self._signer)
                return (201 if created else 200), stored.doc
            return 501, {"error": "the DHT cannot do %s %s" % (method, path.split("?")[0])}
        except StaleSeq as exc:
            return 409, {"error": exc.message}
        except StoreUnavailable as exc:
            raise DirectoryUnavailable("DHT: %s" % exc.message) from None
        except PhantomError as exc:
            return status_of(exc), {"error": exc.message}

    async def _gather(self, method: str, path: str, body: Any = None,
                      limit: int = MAX_BODY * 4) -> list[tuple[int, Any]]:
        return [await self._request(method, path, body, limit)]

    async def resolve_name(self, name: str) -> Optional[Record]:
        """Only a pinned name resolves (to its pinned key's record): names are never
        taken from the DHT."""
        name_field(name)
        pinned = self._pins.get(name)
        if pinned is None:
            self.stats["not_found"] += 1
            log.info("name %s is not pinned; the DHT is looked up by key only", name)
            return None
        return await self.resolve_key(pinned)

    async def watch(self, keys: Iterable[bytes], on_change: Callable[[Record], None]) -> None:
        keys = frozenset(bytes(k) for k in keys)
        if keys:
            await self._poll(keys, on_change, self.poll)
