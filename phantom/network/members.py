"""The member set: what a member daemon knows of its network, kept by deltas.

The directory's watch stream sends one event per change (``{"seq", "op",
...}``: op ``member``, ``removed``, ``endpoints``, or ``network`` -- a newer
definition of the same authority, after an admission-key rotation);
:meth:`MemberSet.apply` takes one and returns what changed
(:class:`MemberChange`: added, updated, removed, endpoints), in time
proportional to the members the change touches -- never the whole list
(headscale's documented failure at a few hundred nodes).  It answers:
who owns an address (:meth:`owner`), a key's member and certificate
(:meth:`member`), a name's addresses (:meth:`addresses_of`, for DNS), a
group's members (:meth:`group`, for firewall groups).  A snapshot in
state_dir (:meth:`save`/:meth:`load`, an atomic write) lets a restarted
daemon work without the directory, within certificate lifetimes.

Rules:

* every certificate is verified against the definition (signature, issuer,
  validity, prefixes, removals) before it counts; a delta that fails is
  refused whole (:class:`~phantom.network.errors.Refused`, counted by reason);
* a key holds one certificate, the latest by ``(nbf, serial)``; an older
  one is ignored (a hostile directory cannot roll a member back);
* a removal drops the member whose certificate it covers and refuses that
  certificate from then on;
* **conflicts** -- two valid certificates claiming one IPv4 address, one
  IPv6 address or one name (only a faulty or compromised directory issues
  them) -- are settled by a total order, so every member reaches the same
  answer whatever order the deltas came in: the member that joined earlier
  (``since``), then the lower key, keeps the claim.  A certificate that
  loses any of its claims is *shadowed*: known, not active, answering no
  lookup, promoted by itself if the winner goes.  Each conflict is logged
  and counted (``stats["conflicts"]``).

The active set is thus exactly what a from-scratch greedy pass over all held
certificates in that order would give (tests/unit/network/test_members.py
checks it against such a naive model on random delta sequences).
"""

from __future__ import annotations

import heapq
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

from phantom import logsetup

from . import names
from .canonical import KEY_SIZE, SEQ_MAX, b64, bytes_field, canonical, int_field, list_field, \
    object_fields, strict_loads
from .certificate import Certificate, Certified, verify_certificate
from .definition import Definition, is_newer, parse_definition
from .errors import FormatError, Reason, Refused
from .keys import atomic_write, read_limited
from .removal import Removal, RemovalSet, verify_removal

log = logsetup.get_logger("network")

MAX_ENDPOINTS = 16
MAX_SNAPSHOT_SIZE = 64 * 1024 * 1024
SNAPSHOT_VERSION = 1
OPS = ("member", "removed", "endpoints", "network")


@dataclass(frozen=True)
class Member(Certified):
    cert: Certificate
    endpoints: tuple = ()

    def summary(self) -> dict:
        d = self.cert.summary()
        d["endpoints"] = list(self.endpoints)
        return d


@dataclass(frozen=True)
class MemberChange:
    """One member's change: ``kind`` is added, updated, removed or endpoints;
    ``old``/``new`` are the active Member before/after (None when not active)."""

    kind: str
    key: bytes
    old: Optional[Member]
    new: Optional[Member]


@dataclass(frozen=True)
class Delta:
    seq: int
    op: str
    cert: Any = None              # op "member": the certificate document
    removal: Any = None           # op "removed": the removal document
    definition: Any = None        # op "network": a newer definition (rotated admission keys)
    key: Optional[bytes] = None   # op "endpoints"
    endpoints: Optional[tuple] = None


def _endpoints(value: Any, path: str = "endpoints") -> tuple:
    return tuple(names.endpoint(e, "%s[%d]" % (path, i))
                 for i, e in enumerate(list_field(value, path, MAX_ENDPOINTS)))


def parse_delta(obj: Any) -> Delta:
    """One watch-stream event of the member set (FormatError if malformed)."""
    try:
        if not isinstance(obj, dict):
            raise FormatError("must be a JSON object")
        op = obj.get("op")
        if op not in OPS:
            raise FormatError("%r is not a member-set event (%s)" % (op, ", ".join(OPS)), "op")
        if op == "member":
            object_fields(obj, ("seq", "op", "cert"), ("endpoints",))
            eps = _endpoints(obj["endpoints"]) if "endpoints" in obj else None
            return Delta(int_field(obj["seq"], "seq", 1, SEQ_MAX), op, cert=obj["cert"],
                         endpoints=eps)
        if op == "removed":
            object_fields(obj, ("seq", "op", "removal"))
            return Delta(int_field(obj["seq"], "seq", 1, SEQ_MAX), op, removal=obj["removal"])
        if op == "network":
            object_fields(obj, ("seq", "op", "definition"))
            return Delta(int_field(obj["seq"], "seq", 1, SEQ_MAX), op,
                         definition=obj["definition"])
        object_fields(obj, ("seq", "op", "key", "endpoints"))
        return Delta(int_field(obj["seq"], "seq", 1, SEQ_MAX), op,
                     key=bytes_field(obj["key"], "key", KEY_SIZE),
                     endpoints=_endpoints(obj["endpoints"]))
    except FormatError as exc:
        raise exc.about("member event") from None


def _claims(cert: Certificate) -> tuple:
    return (cert.ipv4, cert.ipv6, ("name", cert.name))


def _claim_text(claim: Any) -> str:
    return "name %s" % claim[1] if isinstance(claim, tuple) else "address %s" % claim


class _Entry:
    __slots__ = ("cert", "endpoints", "active", "expiry")

    def __init__(self, cert: Certificate, endpoints: tuple, expiry: int):
        self.cert = cert
        self.endpoints = endpoints
        self.active = False
        self.expiry = expiry

    def member(self) -> Member:
        return Member(self.cert, self.endpoints)


class MemberSet:
    """See the module documentation.  ``clock`` returns unix time (injected in tests)."""

    def __init__(self, definition: Definition, clock: Callable[[], float] = time.time,
                 removals: Iterable[Removal] = ()):
        self._definition = definition
        self._clock = clock
        self._removals = RemovalSet(removals)
        self._entries: dict = {}          # key -> _Entry (active or shadowed)
        self._contenders: dict = {}       # claim -> set of keys whose certificate claims it
        self._owner: dict = {}            # claim -> key of the active holder
        self._groups: dict = {}           # group -> set of active keys
        self._routers: set = set()        # active keys whose certificate has routes or exit
        self._expiry: list = []           # heap of (expiry, serial, key)
        self._before: dict = {}           # key -> Member|None, during one operation
        self._active = 0                  # how many entries are active
        self.seq = 0
        self.stats: Counter = Counter()

    # --- what it knows --------------------------------------------------------------------------

    @property
    def definition(self) -> Definition:
        return self._definition

    @property
    def removals(self) -> RemovalSet:
        return self._removals

    def __len__(self) -> int:
        """Active members."""
        return self._active

    def _active_entries(self) -> Iterator[_Entry]:
        return (e for e in self._entries.values() if e.active)

    def __iter__(self) -> Iterator[Member]:
        return (e.member() for e in list(self._active_entries()))

    def __contains__(self, key: bytes) -> bool:
        e = self._entries.get(bytes(key))
        return e is not None and e.active

    def member(self, key: bytes) -> Optional[Member]:
        e = self._entries.get(bytes(key))
        return e.member() if e is not None and e.active else None

    def cert(self, key: bytes) -> Optional[Certificate]:
        e = self._entries.get(bytes(key))
        return e.cert if e is not None and e.active else None

    def shadowed(self) -> list:
        """Members held but not active (they lost a conflict)."""
        return [e.member() for e in self._entries.values() if not e.active]

    def owner(self, address: Any) -> Optional[Member]:
        """The active member whose certificate holds this address, or None."""
        try:
            addr = address if isinstance(address, ipaddress._BaseAddress) else \
                ipaddress.ip_address(address)
        except ValueError:
            return None
        key = self._owner.get(addr)
        return self._entries[key].member() if key is not None else None

    def by_name(self, name: str) -> Optional[Member]:
        key = self._owner.get(("name", name))
        return self._entries[key].member() if key is not None else None

    def addresses_of(self, name: str) -> Optional[tuple]:
        """(IPv4, IPv6) of the member called ``name`` (DNS), or None."""
        m = self.by_name(name)
        return (m.cert.ipv4, m.cert.ipv6) if m is not None else None

    def name_map(self) -> dict:
        """name -> (IPv4, IPv6) of every active member (a copy)."""
        return {e.cert.name: (e.cert.ipv4, e.cert.ipv6) for e in self._active_entries()}

    def group(self, name: str) -> frozenset:
        """The keys of the active members in group ``name``."""
        return frozenset(self._groups.get(name, ()))

    def groups(self) -> dict:
        return {g: frozenset(keys) for g, keys in self._groups.items() if keys}

    def routers(self) -> list:
        """The active members with approved routes or exit (issue 22): the
        few a route decision looks at, never all N."""
        return [self._entries[k].member() for k in self._routers]

    def is_removed(self, key: bytes) -> bool:
        return bytes(key) in self._removals

    def verify(self, raw: Any, key: Optional[bytes] = None) -> Certificate:
        """Verify a certificate against the definition and removals now (Refused if not)."""
        return verify_certificate(raw, self._definition, self._clock(), removals=self._removals,
                                  key=key)

    # --- changes --------------------------------------------------------------------------------

    def apply(self, delta: Any) -> list:
        """Apply one watch-stream event (a dict or :class:`Delta`); return the
        MemberChanges.  An event at or below the current seq is ignored
        (``stats["stale"]``).  A refused certificate or removal raises
        Refused after counting it; the seq still advances (the event was seen)."""
        d = delta if isinstance(delta, Delta) else parse_delta(delta)
        if d.seq <= self.seq:
            self.stats["stale"] += 1
            return []
        self.seq = d.seq
        if d.op == "member":
            return self.admit(d.cert, endpoints=d.endpoints)[1]
        if d.op == "removed":
            return self.remove(d.removal)
        if d.op == "network":
            return self.set_definition(parse_definition(d.definition,
                                                        self._definition.fingerprint))
        return self.set_endpoints(d.key, d.endpoints)

    def admit(self, raw: Any, key: Optional[bytes] = None, endpoints: Optional[tuple] = None
              ) -> tuple:
        """Verify a certificate (from a delta, or from a handshake with the
        ``key`` that presented it) and hold it; return (Certificate, changes)."""
        try:
            cert = self.verify(raw, key)
        except Refused as exc:
            self.stats["refused_" + exc.code] += 1
            raise
        e = self._entries.get(cert.key)
        if e is not None:
            if cert.version < e.cert.version:
                self.stats["stale"] += 1
                return e.cert, []
            if cert.version == e.cert.version:
                if endpoints is not None and endpoints != e.endpoints:
                    return e.cert, self.set_endpoints(cert.key, endpoints)
                return e.cert, []
        self.stats["admitted"] += 1
        self._touch(cert.key)
        seeds = [cert.key]
        if e is not None:
            seeds += self._drop(e)
            if endpoints is None:
                endpoints = e.endpoints
        self._insert(cert, endpoints or ())
        self._settle(seeds, new=cert.key)
        return cert, self._flush()

    def remove(self, raw: Any) -> list:
        """Verify a removal and apply it; return the changes."""
        try:
            r = verify_removal(raw, self._definition, self._clock())
        except Refused as exc:
            self.stats["refused_" + exc.code] += 1
            raise
        self._removals.add(r)
        e = self._entries.get(r.key)
        if e is None or not r.removes(e.cert):
            return []
        self.stats["removed"] += 1
        self._touch(r.key)
        self._settle(self._drop(e))
        return self._flush()

    def set_endpoints(self, key: bytes, endpoints: Iterable[str]) -> list:
        key = bytes(key)
        e = self._entries.get(key)
        if e is None:
            self.stats["unknown_endpoints"] += 1
            return []
        eps = tuple(endpoints)
        if eps == e.endpoints:
            return []
        self._touch(key)
        e.endpoints = eps
        return self._flush()

    def expire(self, now: Optional[float] = None) -> list:
        """Drop members whose certificate (or its issuer) expired, and removals
        with nothing left to refuse.  Call it periodically; O(k log n) for k expiries."""
        now = self._clock() if now is None else now
        seeds = []
        while self._expiry and self._expiry[0][0] <= now:
            expiry, serial, key = heapq.heappop(self._expiry)
            e = self._entries.get(key)
            if e is None or e.cert.serial != serial or e.expiry != expiry:
                continue                           # replaced or dropped since
            self.stats["expired"] += 1
            self._touch(key)
            seeds += self._drop(e)
        self._removals.prune(self._definition, now)
        self._settle(seeds)
        return self._flush()

    def set_definition(self, definition: Definition) -> list:
        """Take a newer definition of the same network (rotated admission keys,
        a shorter lifetime...): re-verify every certificate and recompute.
        O(n), as rare as the authority's signature.  An older one is ignored."""
        if not is_newer(self._definition, definition):
            self.stats["stale"] += 1
            return []
        self._definition = definition
        now = self._clock()
        self._removals.discard_issuer_invalid(definition, now)
        entries = list(self._entries.values())
        for e in entries:
            self._touch(e.cert.key)
        self._clear()
        for e in entries:
            try:
                cert = verify_certificate(e.cert.doc, definition, now, removals=self._removals)
            except Refused as exc:
                self.stats["dropped_" + exc.code] += 1
                continue
            self._insert(cert, e.endpoints)
        self._settle(list(self._entries))
        return self._flush()

    def reset(self, members: Iterable[Any], removals: Iterable[Any], seq: int) -> list:
        """Replace everything with a directory snapshot (a resumed watch whose
        seq was too old): ``members`` are (certificate document, endpoints) pairs.
        Invalid items are skipped and counted; returns the changes."""
        for key in list(self._entries):
            self._touch(key)
        self._clear()
        self._removals = RemovalSet()
        self._load_items(members, removals)
        self.seq = seq
        return self._flush()

    # --- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        items = sorted(self._entries.values(), key=lambda e: e.cert.key)
        doc = {"v": SNAPSHOT_VERSION, "net": self._definition.fingerprint, "seq": self.seq,
               "members": [{"cert": e.cert.doc, "endpoints": list(e.endpoints)} for e in items],
               "removals": [r.doc for r in sorted(self._removals, key=lambda r: r.key)]}
        return canonical(doc)

    def save(self, path: Any) -> None:
        """Write the snapshot atomically (mode 0600)."""
        atomic_write(path, self.snapshot())

    @classmethod
    def load(cls, path: Any, definition: Definition, clock: Callable[[], float] = time.time
             ) -> "MemberSet":
        """A member set from a snapshot file, every item verified again now
        (expired or no longer valid ones are skipped and counted).  A file of
        another network, or not a snapshot, is refused (FormatError / Refused)."""
        data = read_limited(path, MAX_SNAPSHOT_SIZE)
        return cls.from_snapshot(data, definition, clock)

    @classmethod
    def from_snapshot(cls, data: bytes, definition: Definition,
                      clock: Callable[[], float] = time.time) -> "MemberSet":
        doc = strict_loads(data, MAX_SNAPSHOT_SIZE, "member snapshot")
        try:
            object_fields(doc, ("v", "net", "seq", "members", "removals"))
            if doc["v"] != SNAPSHOT_VERSION or isinstance(doc["v"], bool):
                raise FormatError("version %r is not supported" % (doc["v"],), "v")
            seq = int_field(doc["seq"], "seq", 0, SEQ_MAX)
            if not isinstance(doc["members"], list) or not isinstance(doc["removals"], list):
                raise FormatError("members and removals must be lists")
            items = []
            for i, m in enumerate(doc["members"]):
                object_fields(m, ("cert", "endpoints"), path="members[%d]" % i)
                items.append((m["cert"], m["endpoints"]))
        except FormatError as exc:
            raise exc.about("member snapshot") from None
        if doc["net"] != definition.fingerprint:
            raise Refused(Reason.WRONG_NETWORK, "member snapshot", definition.name,
                          "it is for network %r" % (doc["net"],))
        ms = cls(definition, clock)
        ms._load_items(items, doc["removals"])
        ms.seq = seq
        ms._before.clear()
        return ms

    # --- internals ------------------------------------------------------------------------------

    def _load_items(self, members: Iterable[Any], removals: Iterable[Any]) -> None:
        now = self._clock()
        for raw in removals:
            try:
                self._removals.add(verify_removal(raw, self._definition, now))
            except Refused as exc:
                self.stats["dropped_" + exc.code] += 1
        for raw, eps in members:
            try:
                cert = verify_certificate(raw, self._definition, now, removals=self._removals)
            except Refused as exc:
                self.stats["dropped_" + exc.code] += 1
                continue
            try:
                endpoints = _endpoints(eps)
            except FormatError:
                # the member stays (its certificate is valid); only its endpoints go
                # (a cache written before relay paths were kept out of it held "relay:...")
                self.stats["endpoints_dropped"] += 1
                endpoints = ()
            e = self._entries.get(cert.key)
            if e is not None:
                if e.cert.version >= cert.version:
                    continue
                self._drop(e)
            self._touch(cert.key)
            self._insert(cert, endpoints)
        self._settle(list(self._entries))

    def _clear(self) -> None:
        self._entries.clear()
        self._contenders.clear()
        self._owner.clear()
        self._groups.clear()
        self._routers.clear()
        self._expiry.clear()
        self._active = 0

    def _touch(self, key: bytes) -> None:
        if key not in self._before:
            e = self._entries.get(key)
            self._before[key] = e.member() if e is not None and e.active else None

    def _flush(self) -> list:
        changes = []
        for key, old in self._before.items():
            new = self.member(key)
            if old == new:
                continue
            if old is None:
                kind = "added"
            elif new is None:
                kind = "removed"
            elif old.cert == new.cert:
                kind = "endpoints"
            else:
                kind = "updated"
            changes.append(MemberChange(kind, key, old, new))
        self._before.clear()
        return changes

    def _expiry_of(self, cert: Certificate) -> int:
        expiry = cert.not_after
        for ak in self._definition.admission:
            if ak.key == cert.issuer:
                expiry = min(expiry, ak.expires)
        return expiry

    def _insert(self, cert: Certificate, endpoints: tuple) -> None:
        e = _Entry(cert, tuple(endpoints), self._expiry_of(cert))
        self._entries[cert.key] = e
        for c in _claims(cert):
            self._contenders.setdefault(c, set()).add(cert.key)
        heapq.heappush(self._expiry, (e.expiry, cert.serial, cert.key))

    def _drop(self, e: _Entry) -> list:
        """Forget an entry; return the other contenders of its claims (to settle)."""
        if e.active:
            self._deactivate(e)
        key = e.cert.key
        del self._entries[key]
        others = []
        for c in _claims(e.cert):
            s = self._contenders.get(c)
            if s is not None:
                s.discard(key)
                if s:
                    others.extend(s)
                else:
                    del self._contenders[c]
        return others

    def _activate(self, e: _Entry) -> None:
        e.active = True
        self._active += 1
        for c in _claims(e.cert):
            self._owner[c] = e.cert.key
        for g in e.cert.groups:
            self._groups.setdefault(g, set()).add(e.cert.key)
        if e.cert.routes or e.cert.exit:
            self._routers.add(e.cert.key)

    def _deactivate(self, e: _Entry) -> None:
        e.active = False
        self._active -= 1
        key = e.cert.key
        self._routers.discard(key)
        for c in _claims(e.cert):
            if self._owner.get(c) == key:
                del self._owner[c]
        for g in e.cert.groups:
            s = self._groups.get(g)
            if s is not None:
                s.discard(key)
                if not s:
                    del self._groups[g]

    def _blocker(self, e: _Entry) -> Optional[tuple]:
        """(claim, key) of an active, earlier contender holding one of e's claims."""
        prio = e.cert.priority
        for c in _claims(e.cert):
            for other in self._contenders.get(c, ()):
                if other != e.cert.key:
                    o = self._entries[other]
                    if o.active and o.cert.priority < prio:
                        return c, other
        return None

    def _settle(self, seeds: Iterable[bytes], new: Optional[bytes] = None) -> None:
        """Re-decide who is active among ``seeds`` and whoever their changes
        affect, in priority order (an entry depends only on earlier ones)."""
        heap = []
        for k in set(seeds):
            e = self._entries.get(k)
            if e is not None:
                heap.append((e.cert.priority, k))
        heapq.heapify(heap)
        done = set()
        while heap:
            prio, k = heapq.heappop(heap)
            if k in done:
                continue
            done.add(k)
            e = self._entries.get(k)
            if e is None:
                continue
            self.stats["evaluated"] += 1
            blocker = self._blocker(e)
            if blocker is None and not e.active:
                self._touch(k)
                self._activate(e)
            elif blocker is not None and (e.active or k == new):
                self._touch(k)
                if e.active:
                    self._deactivate(e)
                self._conflict(e, *blocker)
                if k == new:
                    continue                        # it was never active: nothing freed
            else:
                continue
            for c in _claims(e.cert):
                for other in self._contenders.get(c, ()):
                    if other not in done:
                        o = self._entries[other]
                        if o.cert.priority > prio:
                            heapq.heappush(heap, (o.cert.priority, other))

    def _conflict(self, e: _Entry, claim: Any, holder: bytes) -> None:
        self.stats["conflicts"] += 1
        h = self._entries[holder].cert
        log.warning("member %s (%s) claims %s, which %s (%s, a member since %d) holds: it is "
                    "not admitted while that lasts", e.cert.name, b64(e.cert.key),
                    _claim_text(claim), h.name, b64(h.key), h.since)
