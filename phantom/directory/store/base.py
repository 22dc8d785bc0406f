"""The store interface every directory backend implements, and the policy they share.

A store keeps one record per public key and enforces, atomically per
publish, the directory's rules (the same for every backend):

* **verify on write**: a record is stored only after ``parse_record`` accepted
  its shape, key binding, signature, expiry and (strictly) its endorsements;
* **per-key highest seq wins**: a publish whose ``seq`` is not above the stored
  one is refused (``StaleSeq``); the same signed record again is idempotent;
* **revocations are final, their storage is bounded**: once a key's revocation
  is stored, every later record for it is refused (``KeyRevoked``); the row is
  kept until its own ``expires``, cut to ``max_ttl`` from when it was stored,
  and never before the key's last record would have expired
  (:func:`revocation_keep_until`); then ``purge`` deletes it like any record;
* **name claims**: a live name belongs to its first claimant; a claim endorsed
  by a trusted signer displaces an unendorsed one (``NameTaken`` otherwise);
* **expiry**: expired records are not served and ``purge`` deletes them;
* **endorsements** (:func:`merge_endorsements`): at most one per signer, the
  latest; at most MAX_ENDORSEMENTS per record, and a new signer's endorsement
  never displaces one already stored (``EndorsementsFull``, 409); none lives
  longer than ``max_ttl``; with a trusted-signer list, other signers'
  endorsements are refused (``UntrustedSigner``, 403), never stored; a record
  that names its ``endorsers`` takes endorsements from them only
  (``NotAnEndorser``, 403), so nobody can fill its places before they endorse;
* **quotas**: a write may name its ``source`` (the server passes the client's
  address, IPv6 by /64); a source holds at most ``quota`` stored rows (records
  and revocations it wrote last, expired ones until they are purged), and a
  write that would add one more is refused with ``QuotaExceeded`` (429);
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
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterable, Optional

from phantom.errors import (Conflict, Forbidden, Gone, Invalid, NotFound, PhantomError,  # noqa: F401
                            RateLimited, Unavailable, Unsupported)

from ..defaults import DEFAULT_MAX_TTL  # noqa: F401  (the server refuses records that live longer)
from ..records import MAX_ENDORSEMENTS, NodeSigner, Record, RecordError, b64, parse_record, \
    verify_endorsement

LIST_LIMIT = 500
CLOCK_SKEW = 300                      # seconds of clock difference tolerated on publish
WATCH_QUEUE = 1024                    # changes a slow watcher may fall behind before it is dropped


@dataclass
class StoredRecord:
    public_key: str
    name: str
    seq: int
    expires: int                      # a revocation: until when the row is kept
    revoked: bool
    endorsed_until: int
    doc: dict
    source: str = ""                  # who wrote it last (quotas), "" when not known


# --- refusals (domain errors: the server answers each with its status, phantom/http/statuses.py;
# Gone, Forbidden and Unsupported are phantom.errors' own) ------------------------------------------
class BadRecord(Invalid):
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


class NotAnEndorser(Forbidden):
    """The record names its endorsers, and this signer is not one of them."""


class StaleEndorsement(Conflict):
    """The signer's later endorsement of this record is stored already."""


class EndorsementsFull(Conflict):
    """The record carries MAX_ENDORSEMENTS already; none is ever displaced by a new signer."""


class TooManyRequests(RateLimited):
    """A per-source or per-key limit; ``retry_after`` says when to try again (seconds)."""


class QuotaExceeded(TooManyRequests):
    """The source already holds its quota of stored rows."""


class StoreUnavailable(Unavailable):
    """The backend (database, DHT) did not answer in time."""


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
        if signer in trusted and rec.may_endorse(signer):
            best = max(best, end["expires"])
    return best


def check_endorsement(rec: Record, end, trusted: frozenset, now: float, max_ttl: int) -> bytes:
    """One endorsement offered for ``rec`` (by a third party or carried by the owner):
    its signer, or a refusal saying why (400 malformed, expired or too long-lived,
    403 a signer this directory does not trust, or one the record's ``endorsers``
    do not name)."""
    try:
        signer = verify_endorsement(end, rec.public_key, rec.name, now)
    except RecordError as exc:
        raise BadRecord(str(exc)) from None     # (a bad signature: made for another key or name)
    if trusted and signer not in trusted:
        raise UntrustedSigner("signer %s is not trusted by this directory: it keeps only its "
                              "trusted signers' endorsements" % b64(signer))
    if not rec.may_endorse(signer):
        raise NotAnEndorser("signer %s is not one of the endorsers this record names: its "
                            "owner lets only them endorse it" % b64(signer))
    if end["expires"] > now + max_ttl + CLOCK_SKEW:
        raise BadRecord("the endorsement by %s lives too long: expires in %d s, this directory "
                        "keeps endorsements at most %d s" % (b64(signer), end["expires"] - now,
                                                             max_ttl))
    return signer


def merge_endorsements(rec: Record, new: list, old: list, trusted: frozenset, now: float,
                       max_ttl: int = DEFAULT_MAX_TTL) -> list:
    """The endorsements to store: the stored ones still valid, plus ``new``.

    At most one per signer (a signer's newer endorsement replaces its own, never
    the other way round), at most MAX_ENDORSEMENTS, and a new signer is never
    given the place of one already stored: when the record is full the new one
    is refused (``EndorsementsFull``).  Every new endorsement is checked with
    :func:`check_endorsement` and refused, not dropped, when it does not qualify.
    Stored ones that no longer qualify (expired, a signer no longer trusted or no
    longer among the record's endorsers, a lifetime over ``max_ttl``) are dropped."""
    by_signer: dict[str, dict] = {}
    for end in old:
        try:
            check_endorsement(rec, end, trusted, now, max_ttl)
        except PhantomError:
            continue
        by_signer[end["signer"]] = end
    offered: dict[str, dict] = {}
    for end in new:
        check_endorsement(rec, end, trusted, now, max_ttl)
        if end["signer"] in offered and offered[end["signer"]] != end:
            raise BadRecord("two endorsements by signer %s: send one" % end["signer"])
        offered[end["signer"]] = end
    for who, end in offered.items():
        held = by_signer.get(who)
        if held is not None:
            if held == end:
                continue                                  # the same endorsement again
            if end["expires"] < held["expires"]:
                raise StaleEndorsement("signer %s's endorsement of this record until %d is "
                                       "stored; an older one (until %d) cannot replace it"
                                       % (who, held["expires"], end["expires"]))
            by_signer[who] = end
            continue
        if len(by_signer) >= MAX_ENDORSEMENTS:
            raise EndorsementsFull("this record already carries %d endorsements, the most a "
                                   "record holds; an endorsement never displaces another "
                                   "signer's (try again when one expires)" % MAX_ENDORSEMENTS)
        by_signer[who] = end
    return sorted(by_signer.values(), key=lambda e: e["signer"])


def revocation_keep_until(rec: Record, old: Optional["StoredRecord"], now: float,
                          max_ttl: int) -> int:
    """Until when a revocation is stored: its own ``expires``, at most ``max_ttl``
    (plus the clock skew) from now, and never before the key's last record (``old``)
    would have expired -- until then that record could be replayed."""
    until = min(rec.expires, int(now) + max_ttl + CLOCK_SKEW)
    if old is not None:
        until = max(until, old.expires)
    return until


def stored_of(rec: Record, doc: dict, until: int, source: str = "",
              expires: Optional[int] = None) -> StoredRecord:
    return StoredRecord(rec.key_text, rec.name, rec.seq, rec.expires if expires is None
                        else expires, rec.revoked, until, doc, source)


class Txn(abc.ABC):
    """The primitives a backend offers inside :meth:`Store._locked`."""

    @abc.abstractmethod
    async def get(self, public_key: str) -> Optional[StoredRecord]: ...

    @abc.abstractmethod
    async def holder(self, name: str, now: int, exclude: str) -> Optional[StoredRecord]:
        """The live record (another key's) holding ``name``; None when names are not kept."""

    @abc.abstractmethod
    async def put(self, rec: Record, stored: StoredRecord, now: float) -> None: ...

    async def held_by(self, source: str, now: int) -> int:
        """How many stored rows ``source`` wrote last (records and revocations; expired
        ones too, until ``purge`` deletes them); stores that keep no sources answer 0."""
        return 0


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
        self.stats = {"published": 0, "endorsed": 0, "refused": 0, "notified": 0,
                      "watch_dropped": 0}

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

    def network(self):
        """The network's tables (issue 20): SQLite and PostgreSQL have them."""
        raise Unsupported("the %s store cannot hold a network's members: use SQLite or "
                          "PostgreSQL" % self.kind)

    async def purge(self, now: int) -> int:
        """Delete expired records and revocations kept long enough
        (:func:`revocation_keep_until`); the number deleted."""
        return 0

    # writes
    @abc.abstractmethod
    def _locked(self, key: str, name: str,
                source: str = "") -> contextlib.AbstractAsyncContextManager[Txn]:
        """A context where this publish's reads and write do not interleave with another's
        of the same key, name or source (so a source's quota cannot be overrun by a race)."""

    async def publish(self, doc, now: float, *, trusted: Iterable[bytes] = (),
                      max_ttl: int = DEFAULT_MAX_TTL, key: Optional[str] = None,
                      signer: Optional[NodeSigner] = None, source: str = "",
                      quota: int = 0) -> tuple[StoredRecord, bool]:
        """Verify and store a record; returns (what is stored, created).

        Raises BadRecord, ForgedRecord, StaleSeq, NameTaken, KeyRevoked,
        UntrustedSigner, NotAnEndorser, EndorsementsFull or QuotaExceeded.  ``source`` names
        the writer and ``quota`` (0: none) bounds the rows one source holds.
        ``signer`` is needed only by stores that sign what they store (DHT)."""
        trusted = frozenset(bytes(s) for s in trusted)
        with self._refusals_counted():
            rec = verify_publish(doc, now, trusted, max_ttl, key)
            async with self._locked(rec.key_text, rec.name, source) as tx:
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
                                            trusted, now, max_ttl)
                stored_doc = dict(doc, endorsements=merged)
                until = endorsed_until(rec, stored_doc, trusted, now)
                if not rec.revoked:
                    holder = await tx.holder(rec.name, int(now), rec.key_text)
                    if holder is not None and not (until > now and holder.endorsed_until <= now):
                        raise NameTaken("name %r is held by another key (%s) until %d"
                                        % (rec.name, holder.public_key, holder.expires))
                if source and quota and (old is None or old.source != source):
                    held = await tx.held_by(source, int(now))       # (its own row: no growth)
                    if held >= quota:
                        raise QuotaExceeded(
                            "source %s already holds %d records here, its quota; they free "
                            "up as they expire (and are purged, every minute)" % (source, held))
                expires = revocation_keep_until(rec, old, now, max_ttl) if rec.revoked \
                    else rec.expires
                stored = stored_of(rec, stored_doc, until, source, expires)
                await tx.put(rec, stored, now)
        return self._written(stored, "published"), old is None

    async def endorse(self, public_key: str, end, now: float, *,
                      trusted: Iterable[bytes] = (),
                      max_ttl: int = DEFAULT_MAX_TTL) -> StoredRecord:
        """Add a signer's endorsement to a live record (see :func:`merge_endorsements`).

        Returns the record as stored, which carries ``end``; anything else is a
        refusal (BadRecord, ForgedRecord, UntrustedSigner, NotAnEndorser,
        EndorsementsFull, StaleEndorsement, NoRecord, KeyRevoked), never a silent
        drop."""
        if not self.supports_endorse:
            raise Unsupported("the %s store carries only what the key's owner signed"
                              % self.kind)
        trusted = frozenset(bytes(s) for s in trusted)
        with self._refusals_counted():
            first = await self.get(public_key)
            if first is None:
                raise NoRecord("no record for this key to endorse")
            async with self._locked(public_key, first.name) as tx:   # (adds no row: no quota)
                old = await tx.get(public_key)
                if old is None or (not old.revoked and old.expires <= now):
                    raise NoRecord("no record for this key to endorse")
                if old.revoked:
                    raise KeyRevoked("this key was revoked")
                try:
                    rec = parse_record(old.doc, now, trusted_signers=None)
                except RecordError as exc:
                    raise BadRecord(str(exc)) from None
                merged = merge_endorsements(rec, [end], old.doc.get("endorsements", []),
                                            trusted, now, max_ttl)
                stored_doc = dict(old.doc, endorsements=merged)
                stored = stored_of(rec, stored_doc, endorsed_until(rec, stored_doc, trusted, now),
                                   old.source, old.expires)
                await tx.put(rec, stored, now)
        return self._written(stored, "endorsed")

    @contextlib.contextmanager
    def _refusals_counted(self):
        """A write's checks and store: any refusal (a PhantomError) is counted, then raised."""
        try:
            yield
        except PhantomError:
            self.stats["refused"] += 1
            raise

    def _written(self, stored: StoredRecord, counter: str) -> StoredRecord:
        """After a write: count it (``stats[counter]``) and tell this process's watchers."""
        self.stats[counter] += 1
        self._notify_local(stored)
        return stored

    def counters(self) -> dict:
        """This store's counters (a copy), for status pages and metrics."""
        return dict(self.stats)

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

    async def watch(self, keys: Iterable[str], *, heartbeat: float, duration: float,
                    clock: Callable[[], float] = time.time
                    ) -> AsyncIterator[Optional[StoredRecord]]:
        """Follow the records of ``keys`` (standard base64): first the live record of
        each that has one, then every change to one of them; ``None`` is a heartbeat,
        due whenever nothing was yielded for ``heartbeat`` seconds -- changes to other
        keys never put it off.  Ends after ``duration`` seconds, or when the store
        lost its push channel (the watcher re-reads)."""
        keys = frozenset(keys)
        q = self.subscribe()                 # before reading the current records: no gap
        try:
            now = clock()
            for k in sorted(keys):
                row = await self.get(k)
                if row is not None and (row.revoked or row.expires > now):
                    yield row
            loop = asyncio.get_running_loop()
            end = loop.time() + duration
            beat = loop.time() + heartbeat
            while True:
                t = loop.time()
                if t >= end:
                    return
                if t >= beat:
                    yield None
                    beat = loop.time() + heartbeat
                    continue
                try:
                    item = await asyncio.wait_for(q.get(), min(beat, end) - t)
                except asyncio.TimeoutError:
                    continue
                if item is None:
                    return
                if item.public_key in keys:
                    yield item
                    beat = loop.time() + heartbeat
        finally:
            self.unsubscribe(q)

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
