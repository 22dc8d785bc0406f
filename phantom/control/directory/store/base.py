"""The store interface every directory backend implements, and the policy they share.

A store keeps one record per public key and enforces, atomically per
publish, the directory's rules (the same for every backend):

* **verify on write**: a record is stored only after ``parse_record`` accepted
  its shape, key binding, signature, expiry and (strictly) its endorsements;
* **per-key highest seq wins**: a publish whose ``seq`` is not above the stored
  one is refused (``StaleSeq``); the same signed record again is idempotent;
* **revocations are forever**: once a key's revocation is stored, every later
  record for it is refused (``KeyRevoked``) and the revocation is never purged;
* **name claims**: a live name belongs to its first claimant; a claim endorsed
  by a trusted signer displaces an unendorsed one (``NameTaken`` otherwise);
* **expiry**: expired records are not served and ``purge`` deletes them;
* **endorsements** by trusted signers are merged, one per signer;
* **paging**: ``list`` returns live records and revocations ordered by key.

Backends provide the storage primitives inside :meth:`Store._locked`, a
context in which the reads and the write of one publish cannot interleave
with another publish of the same key or name (one process: no await in
between; PostgreSQL: a transaction holding advisory locks).  Backends that
cannot answer a query say so with their capability flags and raise
:class:`Unsupported`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Optional

from phantom.control.errors import ApiError, BadRequest, Conflict, NotFound

from ..records import MAX_ENDORSEMENTS, NodeSigner, Record, RecordError, b64, parse_record, \
    verify_endorsement

LIST_LIMIT = 500
DEFAULT_MAX_TTL = 30 * 86400          # the server refuses records that live longer
CLOCK_SKEW = 300                      # seconds of clock difference tolerated on publish
WATCH_QUEUE = 1024                    # changes a slow watcher may fall behind before it is dropped


@dataclass
class StoredRecord:
    public_key: str
    name: str
    seq: int
    expires: int
    revoked: bool
    endorsed_until: int
    doc: dict


# --- refusals (each is an HTTP error of the server, and a clear error for direct callers) ---------
class Gone(ApiError):
    status = 410


class Forbidden(ApiError):
    status = 403


class BadRecord(BadRequest):
    """Malformed, expired or too long-lived."""


class ForgedRecord(Forbidden):
    """Bad signature or key binding."""


class StaleSeq(Conflict):
    """The store holds this key's record with an equal or higher seq."""

    def __init__(self, message: str, held: int):
        super().__init__(message)
        self.held = held


class NameTaken(Conflict):
    """Another live key holds the name."""


class KeyRevoked(Gone):
    """The key was revoked; a revocation is final."""


class NoRecord(NotFound):
    pass


class UntrustedSigner(Forbidden):
    pass


class Unsupported(ApiError):
    """This backend cannot answer that (e.g. names or listings on the DHT)."""
    status = 501


class StoreUnavailable(ApiError):
    """The backend (database, DHT) did not answer in time."""
    status = 503


# --- the shared policy ------------------------------------------------------------------------------
def verify_publish(doc, now: float, trusted: frozenset, max_ttl: int,
                   key: Optional[str] = None) -> Record:
    """Verify a record offered for publication (verify on write)."""
    try:
        rec = parse_record(doc, now, trusted_signers=trusted or None, strict_endorsements=True)
    except RecordError as exc:
        if "signature" in str(exc) or "forged" in str(exc):
            raise ForgedRecord(str(exc)) from None
        raise BadRecord(str(exc)) from None
    if key is not None and rec.key_text != key:
        raise BadRecord("the record's public_key %s differs from the key in the path"
                        % rec.key_text)
    if not rec.revoked and rec.expires > now + max_ttl + CLOCK_SKEW:
        raise BadRecord("record lives too long: expires in %d s, this directory keeps at most "
                        "%d s" % (rec.expires - now, max_ttl))
    return rec


def endorsed_until(rec: Record, doc: dict, trusted: frozenset, now: float) -> int:
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


def merge_endorsements(rec: Record, new: list, old: list, trusted: frozenset, now: float) -> list:
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


def stored_of(rec: Record, doc: dict, until: int) -> StoredRecord:
    return StoredRecord(rec.key_text, rec.name, rec.seq, rec.expires, rec.revoked, until, doc)


class Txn(abc.ABC):
    """The primitives a backend offers inside :meth:`Store._locked`."""

    @abc.abstractmethod
    async def get(self, public_key: str) -> Optional[StoredRecord]: ...

    @abc.abstractmethod
    async def holder(self, name: str, now: int, exclude: str) -> Optional[StoredRecord]:
        """The live record (another key's) holding ``name``; None when names are not kept."""

    @abc.abstractmethod
    async def put(self, rec: Record, stored: StoredRecord, now: float) -> None: ...


class Store(abc.ABC):
    """A directory store.  All methods are coroutines; see the module doc for the rules."""

    kind = "?"
    supports_names = True       # by_name and name claims
    supports_list = True        # list (paging)
    supports_endorse = True     # third parties may add endorsements
    shared = False              # several front ends may use one store at once
    needs_signer = False        # publish needs the key's NodeSigner (the DHT signs items itself)

    def __init__(self) -> None:
        self._watchers: set[asyncio.Queue] = set()
        self.stats = {"published": 0, "refused": 0, "notified": 0, "watch_dropped": 0}

    # lifecycle
    async def open(self) -> "Store":
        return self

    async def close(self) -> None:
        for q in list(self._watchers):
            self._drop_watcher(q)

    async def __aenter__(self) -> "Store":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # reads
    @abc.abstractmethod
    async def get(self, public_key: str) -> Optional[StoredRecord]:
        """The stored record of a key (expired or not), or None."""

    async def by_name(self, name: str, now: int, exclude: str = "") -> Optional[StoredRecord]:
        """The live record holding ``name``: endorsed claims first, then the newest."""
        raise Unsupported("the %s store keeps no names: look peers up by key" % self.kind)

    async def list(self, now: int, after: str = "", limit: int = LIST_LIMIT) -> list[StoredRecord]:
        """Live records and revocations with keys after ``after``, in key order."""
        raise Unsupported("the %s store cannot list records" % self.kind)

    async def count(self) -> int:
        raise Unsupported("the %s store cannot count records" % self.kind)

    async def purge(self, now: int) -> int:
        """Delete expired records (never revocations); the number deleted."""
        return 0

    # writes
    @abc.abstractmethod
    def _locked(self, key: str, name: str) -> contextlib.AbstractAsyncContextManager[Txn]:
        """A context where this publish's reads and write do not interleave with another's."""

    async def publish(self, doc, now: float, *, trusted: Iterable[bytes] = (),
                      max_ttl: int = DEFAULT_MAX_TTL, key: Optional[str] = None,
                      signer: Optional[NodeSigner] = None) -> tuple[StoredRecord, bool]:
        """Verify and store a record; returns (what is stored, created).

        Raises BadRecord, ForgedRecord, StaleSeq, NameTaken or KeyRevoked.
        ``signer`` is needed only by stores that sign what they store (DHT)."""
        trusted = frozenset(bytes(s) for s in trusted)
        try:
            rec = verify_publish(doc, now, trusted, max_ttl, key)
            async with self._locked(rec.key_text, rec.name) as tx:
                if signer is not None:
                    tx.signer = signer
                old = await tx.get(rec.key_text)
                if old is not None and old.doc.get("sig") == doc.get("sig"):
                    return old, False                 # the same record again: idempotent
                if old is not None and old.revoked:
                    raise KeyRevoked("this key was revoked; a revocation is final")
                if old is not None and rec.seq <= old.seq:
                    raise StaleSeq("stale seq %d: the directory holds seq %d for this key "
                                   "(newer wins)" % (rec.seq, old.seq), old.seq)
                merged = merge_endorsements(rec, doc.get("endorsements", []),
                                            old.doc.get("endorsements", []) if old else [],
                                            trusted, now)
                stored_doc = dict(doc, endorsements=merged)
                until = endorsed_until(rec, stored_doc, trusted, now)
                if not rec.revoked:
                    holder = await tx.holder(rec.name, int(now), rec.key_text)
                    if holder is not None and not (until > now and holder.endorsed_until <= now):
                        raise NameTaken("name %r is held by another key (%s) until %d"
                                        % (rec.name, holder.public_key, holder.expires))
                stored = stored_of(rec, stored_doc, until)
                await tx.put(rec, stored, now)
        except ApiError:
            self.stats["refused"] += 1
            raise
        self.stats["published"] += 1
        self._notify_local(stored)
        return stored, old is None

    async def endorse(self, public_key: str, end, now: float, *,
                      trusted: Iterable[bytes] = ()) -> StoredRecord:
        """Add a trusted signer's endorsement to a live record."""
        if not self.supports_endorse:
            raise Unsupported("the %s store carries only what the key's owner signed"
                              % self.kind)
        trusted = frozenset(bytes(s) for s in trusted)
        first = await self.get(public_key)
        if first is None:
            raise NoRecord("no record for this key to endorse")
        async with self._locked(public_key, first.name) as tx:
            old = await tx.get(public_key)
            if old is None or (not old.revoked and old.expires <= now):
                raise NoRecord("no record for this key to endorse")
            if old.revoked:
                raise KeyRevoked("this key was revoked")
            try:
                rec = parse_record(old.doc, now, trusted_signers=None)
                signer = verify_endorsement(end, rec.public_key, rec.name, now)
            except RecordError as exc:
                raise BadRecord(str(exc)) from None
            if trusted and signer not in trusted:
                raise UntrustedSigner("signer %s is not trusted by this directory" % b64(signer))
            merged = merge_endorsements(rec, [end], old.doc.get("endorsements", []), trusted, now)
            stored_doc = dict(old.doc, endorsements=merged)
            stored = stored_of(rec, stored_doc, endorsed_until(rec, stored_doc, trusted, now))
            await tx.put(rec, stored, now)
        self._notify_local(stored)
        return stored

    # changes
    def subscribe(self) -> asyncio.Queue:
        """A queue of StoredRecords as they change (in this process, and, for shared
        stores that push, in every front end).  Call :meth:`unsubscribe` when done."""
        q: asyncio.Queue = asyncio.Queue(WATCH_QUEUE)
        self._watchers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._watchers.discard(q)

    def _drop_watcher(self, q: asyncio.Queue) -> None:
        self._watchers.discard(q)
        with contextlib.suppress(asyncio.QueueFull):
            q.put_nowait(None)                     # None tells the watcher to reconnect

    def _deliver(self, stored: StoredRecord) -> None:
        for q in list(self._watchers):
            try:
                q.put_nowait(stored)
            except asyncio.QueueFull:
                self.stats["watch_dropped"] += 1
                self._watchers.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(None)

    def _notify_local(self, stored: StoredRecord) -> None:
        """After a write: tell this process's watchers (shared stores push to all instead)."""
        self._deliver(stored)

    async def changes(self) -> AsyncIterator[StoredRecord]:
        q = self.subscribe()
        try:
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item
        finally:
            self.unsubscribe(q)
