"""Operator-free discovery: records as BEP 44 mutable items on the mainline DHT.

The DHT engine is libtorrent's (the ``libtorrent`` package): one session per
:class:`DhtNode`, used only as a DHT node -- no torrents, no peer
connections, no trackers, and none of libtorrent's ways of reaching out on
its own (default bootstrap routers, local peer discovery, UPnP, NAT-PMP are
all off).  It talks only to the bootstrap nodes it is given and to the nodes
they tell it about.

Where a record lives.  BEP 44 keys are Ed25519 keys.  A record is published
as the mutable item of the *sign-normalised* Ed25519 form of the node's
X25519 key (the point with the positive x coordinate, as XEdDSA does): the
node signs with ``a`` or ``-a`` (libsodium's scalar_negate) so that its
item key is the one anybody can compute from the X25519 key alone
(:func:`dht_key_of`: ``y = (u - 1) / (u + 1) mod p``, sign bit 0).  The salt
is ``phantom-directory-v1``.  The value is the record's canonical JSON as a
bencoded string, at most 1000 bytes (BEP 44); endorsements are dropped
first when the record would not fit.

What is trusted.  libtorrent checks each item's BEP 44 signature under the
key it was asked for; Phantom then parses the value strictly and verifies the
record (binding, signature, expiry) with ``parse_record`` and checks that it
names the key that was looked up.  Anything else -- not a string, too long,
not JSON, forged, another key's record -- is a counted drop (``stats``),
never a crash.  Names are never taken from the DHT: this store answers by
key only (``supports_names = False``).

Bounded answers.  libtorrent ends a lookup only when its closest nodes answered
or timed out in full (15 s), so one departed node would turn every lookup near
it into a timeout: a missing key would read as "unavailable".  While a get is
pending, the node samples libtorrent's lookups and calls the key not found once
they wait only for nodes past the 1 s short timeout (:meth:`DhtNode._stalled`).
Bootstrap nodes are asked again with a backoff up to a minute, for as long as
the node runs, so a node started before its bootstrap node still joins it.  A
node keeps at most MAX_ITEMS items for others (libtorrent drops the least
wanted past it): the DHT's bound on what one sender can make it store.

Lifetimes.  DHT nodes forget items after about two hours, so a publisher
republishes well before that (``REPUBLISH``) and before its record expires.
A revocation on the DHT lasts as long as it is republished (and clients that
saw it remember it); the DHT cannot keep it forever for a node that stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Iterable, Optional

import nacl.bindings as _nb

from phantom import crypto, logsetup

from ..records import KEY_SIZE, NodeSigner, Record, RecordError, b64, canonical, \
    parse_record, strict_loads
from .base import Store, StoredRecord, StoreUnavailable, Txn, Unsupported

log = logsetup.get_logger("directory")

SALT = b"phantom-directory-v1"
MAX_ITEM = 1000                      # BEP 44: the bencoded value is at most 1000 bytes
LOOKUP_TIMEOUT = 10.0                # a get or put gives up after this
GET_GRACE = 0.5                      # after the first item, wait this long for newer ones
PUT_TIMEOUT = 20.0                   # a put is confirmed when the k closest nodes answered or
                                     # timed out: dead nodes among them cost libtorrent's RPC timeout
REPUBLISH = 20 * 60.0                # items live ~2 h on DHT nodes; republish well before
DEFAULT_PORT = 6881
MAX_ITEMS = 700                      # BEP 44 items one node keeps for others (libtorrent's
                                     # dht_max_dht_items: past it, the least wanted is dropped)
STALL_GRACE = 1.0                    # a get whose traversal only waits for nodes that missed
                                     # libtorrent's 1 s short timeout ends "not found" after this
STATS_EVERY = 0.5                    # how often a pending get samples libtorrent's lookups
BOOTSTRAP_RETRY = 1.0                # bootstrap nodes are asked again after 1, 2, 4 .. s
BOOTSTRAP_RETRY_MAX = 60.0           # .. and then every minute, for as long as the node runs
_P = 2 ** 255 - 19
PREFIX_LABEL = b"phantom-dht-bep44-prefix-v1"


class DhtError(StoreUnavailable):
    """The DHT did not answer in time, or the node is not running."""


class RecordTooLarge(Unsupported):
    status = 400


# --- keys ------------------------------------------------------------------------------------------
def dht_key_of(public_key: bytes) -> bytes:
    """The BEP 44 key under which the record of X25519 ``public_key`` is published:
    the Edwards y of the Montgomery u, with the sign bit clear."""
    if len(public_key) != KEY_SIZE:
        raise ValueError("a public key is %d bytes" % KEY_SIZE)
    u = int.from_bytes(bytes(public_key), "little") & ((1 << 255) - 1)
    if u >= _P or (u + 1) % _P == 0:
        raise ValueError("not a usable Curve25519 public key")
    y = (u - 1) * pow(u + 1, _P - 2, _P) % _P
    return y.to_bytes(32, "little")


def bep44_secret(signer: NodeSigner) -> tuple[bytes, bytes]:
    """(64-byte secret, 32-byte key) for libtorrent's BEP 44 signer.

    libtorrent's Ed25519 secret is ``scalar || nonce prefix``; the scalar is
    ours, negated when needed so the key is the sign-normalised one."""
    scalar, prefix = signer.expanded_secret(PREFIX_LABEL)
    key = signer.signing_key
    if key[31] & 0x80:
        scalar = _nb.crypto_core_ed25519_scalar_negate(scalar)
        key = _nb.crypto_scalarmult_ed25519_base_noclamp(scalar)
    if key != dht_key_of(signer.public_key):          # cannot happen; be sure
        raise crypto.CryptoError("the BEP 44 key does not match the X25519 key")
    return scalar + prefix, key


def encode_item(doc: dict) -> bytes:
    """The value published for a record (canonical JSON); endorsements go first
    when it would not fit in a BEP 44 item."""
    raw = canonical(doc)
    if len(raw) + 6 > MAX_ITEM and doc.get("endorsements"):
        raw = canonical(dict(doc, endorsements=[]))
    if len(raw) + 6 > MAX_ITEM:
        raise RecordTooLarge("the record is %d bytes; a DHT item holds at most %d (publish "
                             "fewer endpoints or prefixes)" % (len(raw), MAX_ITEM - 6))
    return raw


# --- one libtorrent session as a DHT node ----------------------------------------------------------
def _settings(listen: str, max_items: int = MAX_ITEMS) -> dict:
    import libtorrent as lt
    cat = lt.alert.category_t
    return {
        "dht_max_dht_items": int(max_items),
        "listen_interfaces": listen,
        "enable_dht": True,
        "dht_bootstrap_nodes": "",               # never the public routers
        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_incoming_tcp": False, "enable_outgoing_tcp": False,
        "enable_incoming_utp": False, "enable_outgoing_utp": False,
        "dht_restrict_routing_ips": False,       # a private swarm may share one subnet
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_enforce_node_id": False,
        "dht_prefer_verified_node_ids": False,
        "dht_read_only": False,
        # libtorrent blocks an IP sending more than 5 packets/s and caps DHT upload at
        # 8 kB/s; several nodes behind one address (a swarm on one host, a NAT) trip
        # both, so lookups stall.  Lenient values, still bounded:
        "dht_block_ratelimit": 1000,
        "dht_upload_rate_limit": 256 * 1024,
        "user_agent": "phantom", "handshake_client_version": "",
        "alert_mask": cat.dht_notification | cat.error_notification | cat.status_notification,
        "alert_queue_size": 10000,
    }


class DhtNode:
    """A libtorrent session that is only a DHT node, driven from asyncio.

    ``listen`` is "IP:PORT" ("0.0.0.0:6881"); ``bootstrap`` is a list of
    (host, port) the node joins through -- and nothing else."""

    def __init__(self, listen: str = "0.0.0.0:%d" % DEFAULT_PORT,
                 bootstrap: Iterable = (), timeout: float = LOOKUP_TIMEOUT,
                 max_items: int = MAX_ITEMS):
        self.listen = listen
        self.bootstrap = [(str(h), int(p)) for h, p in bootstrap]
        self.timeout = timeout
        self.max_items = int(max_items)
        self.items = 0                           # BEP 44 items this node keeps for others
        self._lookups: list = []                 # libtorrent's active lookups, last sampled
        self._lookups_at = 0.0
        self._get_started: dict[tuple, float] = {}
        self._stall_since: dict[tuple, float] = {}
        self._ses = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._alert_r: Optional[int] = None  # the pipe libtorrent writes to when alerts wait
        self._alert_w: Optional[int] = None
        self._pump: Optional[asyncio.Task] = None
        self._gets: dict[tuple, list] = {}       # (key, salt) -> [futures, best (value, seq)]
        self._puts: dict[tuple, list] = {}       # (key, salt) -> [futures]
        self.nodes = 0
        self.port: Optional[int] = None
        self.stats = {"gets": 0, "puts": 0, "timeouts": 0, "alerts": 0, "not_found": 0,
                      "not_found_stalled": 0, "bootstrap_pings": 0}

    async def start(self) -> "DhtNode":
        try:
            import libtorrent as lt
        except ImportError:              # pragma: no cover - an optional dependency
            raise DhtError("the DHT needs libtorrent (pip install 'phantom[dht]')") from None
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ses = lt.session(_settings(self.listen, self.max_items))
        # libtorrent says "alerts are waiting" by writing a byte to a pipe, not
        # by calling Python: a callback on libtorrent's thread needs the GIL,
        # and a session destroyed while that thread waits for it deadlocks
        # (the destroying thread holds the GIL and waits for libtorrent's).
        self._alert_r, self._alert_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._loop.add_reader(self._alert_r, self._on_alert_fd)
        self._ses.set_alert_fd(self._alert_w)
        for host, port in self.bootstrap:
            self._ses.add_dht_node((host, port))
        self._pump = asyncio.ensure_future(self._run())
        self.port = self._ses.listen_port()
        log.info("DHT node on %s (port %s), bootstrap %s", self.listen, self.port,
                 ", ".join("%s:%d" % b for b in self.bootstrap) or "none")
        return self

    def _on_alert_fd(self) -> None:      # on the loop: libtorrent wrote to the pipe
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._alert_r, 4096):
                pass
        if self._wake is not None:
            self._wake.set()

    def add_node(self, host: str, port: int) -> None:
        if self._ses is not None:
            self._ses.add_dht_node((str(host), int(port)))

    async def close(self) -> None:
        ses, self._ses = self._ses, None
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        for table in (self._gets, self._puts):
            for entry in table.values():
                for f in entry[0]:
                    f.cancel()           # their waiters raise DhtError (see get/put)
            table.clear()
        fds, self._alert_r, self._alert_w = (self._alert_r, self._alert_w), None, None
        if fds[0] is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fds[0])
        if ses is not None:
            ses.pause()
            holder = [ses]
            del ses
            # the session's destructor waits for libtorrent's threads: not on the loop
            await asyncio.get_running_loop().run_in_executor(None, holder.clear)
        # closed only once the session is gone: libtorrent writes to the fd until then,
        # and a number closed earlier could be reused by another file
        for fd in fds:
            if fd is not None:
                os.close(fd)

    async def _run(self) -> None:
        import libtorrent as lt
        stats_due = lookups_due = 0.0
        retry, bootstrap_due = BOOTSTRAP_RETRY, time.monotonic() + BOOTSTRAP_RETRY
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), STATS_EVERY if self._gets else 1.0)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            ses = self._ses
            if ses is None:
                return
            now = time.monotonic()
            if now >= stats_due:
                ses.post_session_stats()
                stats_due = now + 2.0
            if self._gets and now >= lookups_due:
                ses.post_dht_stats()             # what the pending gets still wait for
                lookups_due = now + STATS_EVERY
            if self.bootstrap and now >= bootstrap_due:
                # Ask the bootstrap nodes again (one ping each), whatever the routing
                # table holds: a node started before its bootstrap node, or whose own
                # sibling nodes fill its table, still joins the swarm once it is up.
                for host, port in self.bootstrap:
                    ses.add_dht_node((host, port))
                self.stats["bootstrap_pings"] += 1
                retry = min(BOOTSTRAP_RETRY_MAX, retry * 2)
                bootstrap_due = now + retry
            lookups = None
            for a in ses.pop_alerts():
                self.stats["alerts"] += 1
                try:
                    if isinstance(a, lt.dht_mutable_item_alert):
                        self._on_item(a)
                    elif isinstance(a, lt.dht_put_alert):
                        self._on_put(a)
                    elif isinstance(a, lt.dht_stats_alert):
                        # one alert per DHT node of the session ("0.0.0.0": one per local
                        # address), posted together: their lookups, all of them
                        lookups = (lookups or []) + list(a.active_requests)
                    elif isinstance(a, lt.session_stats_alert):
                        # the session-wide counters: with "0.0.0.0" libtorrent runs one
                        # DHT node per local address (dht_stats_alert comes once per node)
                        values = a.values
                        if isinstance(values, dict):
                            self.nodes = int(values.get("dht.dht_nodes", 0))
                            self.items = int(values.get("dht.dht_mutable_data", 0))
                        else:
                            self.nodes = 0
                        if self.nodes == 0 and self.bootstrap:
                            # an empty table (start, or libtorrent reopened its sockets
                            # after an address change): join through the bootstrap again
                            for host, port in self.bootstrap:
                                ses.add_dht_node((host, port))
                except Exception:        # a malformed alert must not stop the pump
                    log.exception("handling a DHT alert failed")
            if lookups is not None:
                self._lookups, self._lookups_at = lookups, time.monotonic()
            self._end_stalled_gets()

    def _stalled(self) -> bool:
        """True when every get traversal libtorrent runs waits only for nodes that
        missed the 1 s short timeout, with at least one answer: the live part of the
        swarm has answered.

        libtorrent ends a traversal only when its k closest nodes answered or timed
        out in full (15 s): one node that left the swarm (and that the others still
        list) holds every lookup near it for 15 s.  A missing item would then read as
        "no answer" (unavailable) instead of "not found".  Lookups carry no target
        in libtorrent's stats, so this holds only when *all* of them are stalled."""
        gets = [r for r in self._lookups if isinstance(r, dict) and r.get("type") == "get"]
        if not gets:
            return False
        for r in gets:
            # (nodes it did not ask are ones libtorrent skips: it has k live answers
            # above them; past a short timeout it widens its branching and asks more)
            if r.get("outstanding_requests", 1) > r.get("first_timeout", 0):
                return False
        return any(r.get("responses", 0) > 0 for r in gets)

    def _end_stalled_gets(self) -> None:
        if not self._gets:
            return
        now = time.monotonic()
        fresh = now - self._lookups_at <= 2 * STATS_EVERY + 0.5
        stalled = fresh and self._stalled()
        for k, entry in list(self._gets.items()):
            if entry[1] is not None:
                continue                     # an item is in hand: GET_GRACE ends it
            started = self._get_started.get(k, now)
            if not stalled or self._lookups_at <= started:
                self._stall_since.pop(k, None)   # (a sample from before this get began
                continue                         # says nothing about it)
            since = self._stall_since.setdefault(k, now)
            if now - since >= STALL_GRACE:
                self.stats["not_found_stalled"] += 1
                log.debug("DHT get %s: only unresponsive nodes left; not found", k[0].hex())
                self._finish_get(k)

    def _on_item(self, a) -> None:
        entry = self._gets.get((bytes(a.key), bytes(a.salt)))
        if entry is None:
            return
        item = a.item
        if isinstance(item, (bytes, bytearray)) and item and (entry[1] is None or
                                                              a.seq > entry[1][1]):
            entry[1] = (bytes(item), int(a.seq))
        elif item not in (b"", None) and not isinstance(item, (bytes, bytearray)):
            entry[1] = entry[1] or (item, int(a.seq))       # not a string: the caller drops it
        if a.authoritative:
            self._finish_get((bytes(a.key), bytes(a.salt)))
        elif entry[1] is not None and len(entry) == 2:
            # An item is in hand; the traversal may still wait out dead nodes for
            # seconds.  Take the newest seen within GET_GRACE (a node holding an older
            # seq cannot roll a client back: clients keep the highest record seq seen).
            entry.append(self._loop.call_later(GET_GRACE, self._finish_get,
                                               (bytes(a.key), bytes(a.salt))))

    def _finish_get(self, k) -> None:
        self._get_started.pop(k, None)
        self._stall_since.pop(k, None)
        entry = self._gets.pop(k, None)
        if entry is None:
            return
        if len(entry) > 2:
            entry[2].cancel()
        for f in entry[0]:
            if not f.done():
                f.set_result(entry[1])

    def _on_put(self, a) -> None:
        entry = self._puts.pop((bytes(a.public_key), bytes(a.salt)), None)
        if entry is None:
            return
        for f in entry[0]:
            if not f.done():
                f.set_result(int(a.num_success))

    @property
    def running(self) -> bool:
        """Started and not closed."""
        return self._ses is not None

    def _need(self):
        if self._ses is None:
            raise DhtError("the DHT node is not running")
        return self._ses

    async def get(self, key: bytes, salt: bytes = SALT, timeout: Optional[float] = None):
        """The newest (value, seq) under a BEP 44 key, or None when no node has one.
        Raises DhtError when the lookup does not finish in time with nothing found."""
        ses = self._need()
        self.stats["gets"] += 1
        k = (bytes(key), bytes(salt))
        fut = self._loop.create_future()
        entry = self._gets.get(k)
        if entry is None:
            entry = self._gets[k] = [[], None]
            self._get_started[k] = time.monotonic()
            ses.dht_get_mutable_item(bytes(key), bytes(salt))
            if self._wake is not None:
                self._wake.set()                 # sample the lookups from now on
        entry[0].append(fut)
        try:
            found = await self._answer(fut, timeout or self.timeout)
        except asyncio.TimeoutError:
            best = entry[1]
            if fut in entry[0]:
                entry[0].remove(fut)
            if not entry[0]:
                self._gets.pop(k, None)
                self._get_started.pop(k, None)
                self._stall_since.pop(k, None)
            if best is not None:
                return best                  # the newest seen so far
            raise DhtError("no answer from the DHT within %g s (%d node(s) in the routing "
                           "table)" % (timeout or self.timeout, self.nodes)) from None
        if found is None:
            self.stats["not_found"] += 1
        if found is None and self.nodes == 0:
            raise DhtError("the DHT routing table is empty: no node to ask (bootstrap %s)"
                           % (", ".join("%s:%d" % b for b in self.bootstrap) or "none"))
        return found

    async def _answer(self, fut: asyncio.Future, timeout: float):
        """What ``fut`` (a lookup's, a put's) resolves to within ``timeout``:
        DhtError when the node stopped under it, asyncio.TimeoutError (counted)
        when no answer came in time."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.CancelledError:
            if fut.cancelled() and self._ses is None:
                raise DhtError("the DHT node stopped") from None
            raise
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            raise

    async def put(self, secret: bytes, key: bytes, value: bytes, salt: bytes = SALT,
                  timeout: Optional[float] = None) -> int:
        """Store ``value`` under our BEP 44 key; the number of nodes that took it."""
        ses = self._need()
        if len(secret) != 64 or len(key) != 32:
            raise ValueError("a BEP 44 secret is 64 bytes and a key 32")
        self.stats["puts"] += 1
        k = (bytes(key), bytes(salt))
        fut = self._loop.create_future()
        self._puts.setdefault(k, [[]])[0].append(fut)
        ses.dht_put_mutable_item(bytes(secret), bytes(key), bytes(value), bytes(salt))
        try:
            n = await self._answer(fut, timeout or max(self.timeout, PUT_TIMEOUT))
        except asyncio.TimeoutError:
            self._puts.pop(k, None)
            raise DhtError("the DHT did not confirm the put within %g s (%d node(s) in the "
                           "routing table)" % (timeout or max(self.timeout, PUT_TIMEOUT),
                                               self.nodes)) from None
        if n == 0:
            raise DhtError("no DHT node stored the item (%d node(s) in the routing table)"
                           % self.nodes)
        return n

    async def wait_nodes(self, n: int, timeout: float) -> int:
        """Wait until the routing table holds at least ``n`` nodes."""
        deadline = time.monotonic() + timeout
        while self.nodes < n:
            if time.monotonic() > deadline:
                raise DhtError("the DHT routing table has %d node(s), wanted %d" % (self.nodes, n))
            if self._ses is not None:
                self._ses.post_session_stats()
            await asyncio.sleep(0.1)
        return self.nodes


# --- the store ---------------------------------------------------------------------------------------
class _DhtTxn(Txn):
    def __init__(self, store: "DhtStore"):
        self.s = store
        self.signer: Optional[NodeSigner] = None

    async def get(self, public_key: str) -> Optional[StoredRecord]:
        return await self.s.get(public_key)

    async def holder(self, name: str, now: int, exclude: str) -> Optional[StoredRecord]:
        return None                          # names are never taken from the DHT

    async def put(self, rec: Record, stored: StoredRecord, now: float) -> None:
        signer = self.signer or self.s._signers.get(rec.public_key)
        if signer is None or signer.public_key != rec.public_key:
            raise Unsupported("only the key's owner can publish its record on the DHT "
                              "(a BEP 44 item is signed by its key)")
        secret, key = bep44_secret(signer)
        try:
            await self.s.node.put(secret, key, encode_item(stored.doc))
        finally:
            crypto.memzero(bytearray(secret))


class DhtStore(Store):
    """Records on the mainline DHT, by key only.  Publishing needs the key's signer."""

    kind = "dht"
    supports_names = False
    supports_list = False
    supports_endorse = False
    shared = True
    needs_signer = True

    def __init__(self, node: DhtNode, *, own_node: bool = False):
        super().__init__()
        self.node = node
        self._own = own_node
        self._signers: dict[bytes, NodeSigner] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.stats.update({"dropped_malformed": 0, "dropped_forged": 0, "not_found": 0})

    def add_signer(self, signer: NodeSigner) -> None:
        """Let this store publish records of ``signer``'s key."""
        self._signers[signer.public_key] = signer

    async def open(self) -> "DhtStore":
        if self._own and not self.node.running:
            await self.node.start()
        return self

    async def close(self) -> None:
        await super().close()
        if self._own:
            await self.node.close()

    def parse_item(self, value, public_key: bytes) -> Optional[Record]:
        """The verified record in a DHT value, or None (a counted drop)."""
        if not isinstance(value, (bytes, bytearray)) or not value or len(value) > MAX_ITEM:
            self.stats["dropped_malformed"] += 1
            log.warning("dropped a DHT item for %s: not a string of 1..%d bytes",
                        b64(public_key), MAX_ITEM)
            return None
        try:
            doc = strict_loads(bytes(value))
        except (UnicodeDecodeError, ValueError) as exc:
            self.stats["dropped_malformed"] += 1
            log.warning("dropped a DHT item for %s: not JSON (%s)", b64(public_key), exc)
            return None
        try:
            rec = parse_record(doc, 0, trusted_signers=None)   # expiry is the caller's
            if rec.public_key != bytes(public_key):
                raise RecordError("the item holds the record of another key (%s)" % rec.key_text)
        except RecordError as exc:
            self.stats["dropped_forged"] += 1
            log.warning("dropped a DHT item for %s: %s", b64(public_key), exc)
            return None
        return rec

    async def get(self, public_key: str) -> Optional[StoredRecord]:
        raw = base64_key(public_key)
        found = await self.node.get(dht_key_of(raw))
        if found is None:
            self.stats["not_found"] += 1
            return None
        rec = self.parse_item(found[0], raw)
        if rec is None:
            return None
        return StoredRecord(rec.key_text, rec.name, rec.seq, rec.expires, rec.revoked, 0, rec.doc)

    @contextlib.asynccontextmanager
    async def _locked(self, key: str, name: str, source: str = ""):
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield _DhtTxn(self)


def base64_key(text: str) -> bytes:
    import base64
    raw = base64.b64decode(text, validate=True)
    if len(raw) != KEY_SIZE:
        raise ValueError("a public key is %d bytes" % KEY_SIZE)
    return raw


__all__ = ["DhtNode", "DhtStore", "DhtError", "RecordTooLarge", "dht_key_of", "bep44_secret",
           "encode_item", "SALT", "MAX_ITEM", "REPUBLISH"]
