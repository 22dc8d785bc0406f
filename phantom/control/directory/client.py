"""The directory client: publish our record, resolve peers, verify everything."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from phantom import logsetup
from phantom.control.config import PEER_NAME

from .records import DirectoryError, DirectoryRejected, DirectoryUnavailable, MAX_SEQ, \
    NodeSigner, Record, RecordError, _name_field, b64, b64url, canonical, make_endorsement, \
    make_record, parse_record, strict_loads
from .server import LIST_LIMIT, MAX_BODY

log = logsetup.get_logger("directory")

# --- client tunables ----------------------------------------------------------------------------
DEFAULT_TTL = 3600                    # a published record lives this long; republish at half
REVOCATION_TTL = 365 * 86400
CLIENT_TIMEOUT = 5.0
CACHE_REFRESH = 30.0                  # a cached record younger than this is served without asking
CACHE_TTL = 3600.0                    # the oldest cached record served while the directory is down
NEGATIVE_TTL = 5.0                    # "no such record" is remembered this long
CACHE_ENTRIES = 4096
MAX_RESPONSE = 1024 * 1024

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

    def __init__(self, url: str, private_key=None, clock: Callable[[], float] = time.time, *,
                 trusted_signers: Iterable[bytes] = (), timeout: float = CLIENT_TIMEOUT,
                 refresh: float = CACHE_REFRESH, cache_ttl: float = CACHE_TTL,
                 negative_ttl: float = NEGATIVE_TTL):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError("directory URL must be http:// or https://, not %r" % url)
        self.url = url.rstrip("/")
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
                      "rejected": 0, "pin_refused": 0}

    # lifecycle
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
        self._pins[_name_field(name)] = bytes(public_key)

    def cached(self, public_key: bytes) -> Optional[Record]:
        """The cached record of a key, if any and not expired (no network)."""
        entry = self._cache.get(bytes(public_key))
        if entry is None or entry.record.expires <= self.clock():
            return None
        return entry.record

    def is_revoked(self, public_key: bytes) -> bool:
        return bytes(public_key) in self._revoked

    # HTTP
    def _http(self):
        if self._session is None:
            import aiohttp
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False)
        return self._session

    async def _request(self, method: str, path: str, body: Any = None,
                       limit: int = MAX_BODY * 4) -> tuple[int, Any]:
        import aiohttp
        data = canonical(body) if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(method, self.url + path, data=data,
                                             headers=headers) as resp:
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    buf += chunk
                    if len(buf) > limit:
                        raise DirectoryUnavailable("directory %s sent more than %d bytes"
                                                   % (self.url, limit))
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            reason = exc.__class__.__name__ + (": %s" % exc if str(exc) else "")
            raise DirectoryUnavailable("directory %s unreachable (%s)" % (self.url, reason)) from None
        if status >= 500:
            raise DirectoryUnavailable("directory %s answered HTTP %d" % (self.url, status))
        try:
            payload = strict_loads(bytes(buf)) if buf else None
        except (UnicodeDecodeError, ValueError):
            raise DirectoryUnavailable("directory %s sent a response that is not JSON "
                                       "(HTTP %d)" % (self.url, status)) from None
        return status, payload

    @staticmethod
    def _message(payload: Any) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"]
        return "no reason given"

    # lookups
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
                "directory answered HTTP %d: %s" % (status, self._message(payload))), now)
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
        _name_field(name)
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
            exc = DirectoryUnavailable("directory answered HTTP %d: %s"
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
        status, payload = await self._request("GET", "/records?limit=%d" % limit,
                                              limit=MAX_RESPONSE)
        if status != 200 or not isinstance(payload, dict) or \
                not isinstance(payload.get("records"), list):
            raise DirectoryUnavailable("directory answered HTTP %d to a listing" % status)
        now, out = self.clock(), []
        for doc in payload["records"]:
            try:
                out.append(self._verify(doc, now))
            except RecordError as exc:
                self.stats["rejected"] += 1
                log.warning("skipping a listed record: %s", exc)
        return out

    # publishing
    def _need_signer(self) -> NodeSigner:
        if self._signer is None:
            raise DirectoryError("this client has no private key (read-only)")
        return self._signer

    async def _put(self, doc: dict) -> tuple[int, Any]:
        return await self._request("PUT", "/records/" + b64url(self._need_signer().public_key),
                                   doc)

    async def publish(self, name: str, endpoints: Iterable, allowed_ips: Iterable,
                      ttl: int = DEFAULT_TTL) -> dict:
        """Sign and publish our record; returns the record as the directory stored it.

        ``seq`` is the time in milliseconds (monotonic per client); if the
        directory holds a newer one (clock went back), we continue after it once.
        Raises DirectoryRejected (4xx) or DirectoryUnavailable.
        """
        signer = self._need_signer()
        endpoints, allowed_ips = list(endpoints), list(allowed_ips)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise ValueError("ttl must be a positive number of seconds")
        for attempt in range(2):
            now = self.clock()
            self._seq = max(int(now * 1000), self._seq + 1)
            try:
                doc = make_record(signer, name, endpoints, allowed_ips, self._seq, int(now) + ttl)
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
            raise DirectoryRejected(status, self._message(payload))
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
        return payload

    async def keep_published(self, name: str, endpoints: Iterable, allowed_ips: Iterable,
                             ttl: int = DEFAULT_TTL, retry: float = 30.0) -> None:
        """Publish now and again every ttl/2 until cancelled; failures are logged and retried."""
        endpoints, allowed_ips = list(endpoints), list(allowed_ips)
        while True:
            try:
                await self.publish(name, endpoints, allowed_ips, ttl)
                delay = ttl / 2
            except DirectoryError as exc:
                log.warning("publishing our record failed: %s; retrying", exc)
                delay = min(retry, max(1.0, ttl / 4))
            await asyncio.sleep(delay)

