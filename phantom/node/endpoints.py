"""Peer endpoints given as DNS names (``endpoint = "vpn.example.com:51820"``
in the config, ``phantom open vpn.example.com:51820``, a wg-quick import).

The engine and the data path only ever see addresses.  A name is looked up
here, and the address it gives reaches the peer through the peer table's
door (:meth:`phantom.node.peers.PeerTable.move`, the engine's
``set_endpoint``), like a directory record's move:

* at start, every configured name at once, each lookup bounded by
  ``resolve_timeout`` (a name that does not resolve does not stop the start:
  the peer waits, the lookup is retried, see below);
* again, as wg-quick's ``reresolve-dns.sh`` does, every
  ``reresolve_interval`` (30 s) while the peer's last handshake is older
  than ``reresolve_after`` (135 s) or it never had one, and at once (at most
  once a second) when a series of handshake attempts gave up (the peer went
  ``dead``);
* a name without an address yet (it never resolved) is retried after 1, 2,
  4 ... seconds, then every ``reresolve_interval``; a failed lookup is
  logged (a warning the first time, and when the reason changes) and
  counted, never fatal; a peer keeps its last address while its name fails.

An answer that holds the address in use changes nothing (a peer that roamed
within the name's addresses stays where it is); otherwise the endpoint moves
to the answer's first address.  Lookups run on the event loop's
``getaddrinfo`` (uvloop: libuv's thread pool; asyncio: a thread), so the
loop never blocks on DNS.

:class:`ResolveSchedule` is the sans-IO part (which names to look up when,
what an answer changes: an injected clock); :class:`EndpointResolver` does
the lookups and the moves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..control import actions as A
from ..control.peer import PeerState
from ..dataplane.types import RelayVia
from ..dataplane.udp import format_endpoint, plain
from ..errors import NotFound, Timeout
from ..syntax import LOOKUP_FAILED, NO_ADDRESS
from .executor import Observer

log = logging.getLogger("phantom.daemon")

RETRY_FIRST = 1.0            # a name with no address yet: retried after 1, 2, 4 ... s
GAVE_UP_GAP = 1.0            # at most one forced lookup a second per name
MAX_ADDRESSES = 16           # of one answer, kept


class ResolveError(Exception):
    """A lookup that gave no address (the message says why).  ``missing``:
    the resolver answered that the name has no address (NXDOMAIN, no data),
    as opposed to a lookup that failed or timed out."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


# getaddrinfo's answers that mean "this name has no address" (not a failure)
_MISSING = {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY")
            if hasattr(socket, n)}


@dataclass
class Name:
    """One peer's endpoint name and what its lookups found."""
    peer_id: int
    public_key: bytes
    host: str
    port: int
    origin: str = "config"                 # "config" (the file's) or "open" (phantom open NAME:PORT)
    addresses: list = field(default_factory=list)   # the last answer: [(ip, port), ...]
    resolved_at: Optional[float] = None    # clock time of the last answer
    resolved_wall: Optional[float] = None  # time.time() of it
    tried_at: float = float("-inf")        # the last lookup's start
    due: float = float("-inf")             # a lookup is due then (no address yet, or forced)
    forced: bool = False                   # the peer's handshakes gave up: look up at ``due``
    failures: int = 0                      # lookups failed in a row
    error: Optional[str] = None            # the last failure's reason (None after an answer)
    in_flight: bool = False

    @property
    def text(self) -> str:
        return "%s:%d" % (self.host, self.port)


class ResolveSchedule:
    """Which names to look up when, and what an answer changes (sans-IO)."""

    def __init__(self, tunables, clock: Callable[[], float] = time.monotonic):
        self.t = tunables
        self.clock = clock
        self.names: dict = {}              # peer id -> Name
        self.counters = {"lookups": 0, "failures": 0, "moves": 0}

    def track(self, peer_id: int, public_key: bytes, host: str, port: int,
              origin: str = "config") -> Name:
        """Follow ``host:port`` for the peer; a new or changed name is due now."""
        old = self.names.get(peer_id)
        if old is not None and (old.host, old.port, old.public_key) == (host, port, bytes(public_key)):
            old.origin = origin if origin == "config" else old.origin
            return old
        n = Name(peer_id, bytes(public_key), host, port, origin)
        self.names[peer_id] = n
        return n

    def forget(self, peer_id: int) -> None:
        self.names.pop(peer_id, None)

    def get(self, peer_id: int) -> Optional[Name]:
        return self.names.get(peer_id)

    def take_due(self, last_handshake: Callable[[int], float]) -> list:
        """The names whose lookup is due now (marked as under way).
        ``last_handshake(peer_id)``: the clock time of the peer's last
        handshake (-inf without one)."""
        now = self.clock()
        out = []
        for n in self.names.values():
            if n.in_flight:
                continue
            if n.forced or not n.addresses:
                due = now >= n.due
            else:
                due = (now - n.tried_at >= self.t.reresolve_interval
                       and now - last_handshake(n.peer_id) >= self.t.reresolve_after)
            if due:
                n.in_flight = True
                n.tried_at = now
                out.append(n)
        return out

    def gave_up(self, peer_id: int) -> None:
        """The peer's handshake attempts gave up: look its name up again now
        (the server may have moved), at most once every GAVE_UP_GAP."""
        n = self.names.get(peer_id)
        if n is not None:
            n.forced = True
            n.due = max(self.clock(), n.tried_at + GAVE_UP_GAP)

    def answered(self, n: Name, addresses: list, current: Optional[tuple]) -> Optional[tuple]:
        """A lookup of ``n`` gave ``addresses``; returns the endpoint the peer
        moves to, or None when ``current`` (the address in use) is one of them."""
        n.in_flight = False
        n.forced = False
        self.counters["lookups"] += 1
        n.failures = 0
        n.error = None
        n.addresses = list(addresses)[:MAX_ADDRESSES]
        n.resolved_at = self.clock()
        n.resolved_wall = time.time()
        if not n.addresses or (current is not None and tuple(current) in n.addresses):
            return None
        self.counters["moves"] += 1
        return n.addresses[0]

    def failed(self, n: Name, reason: str) -> bool:
        """A lookup of ``n`` failed; True when this is news to log (the first
        failure in a row, or another reason than the last)."""
        n.in_flight = False
        n.forced = False
        news = n.failures == 0 or reason != n.error
        n.failures += 1
        n.error = reason
        self.counters["lookups"] += 1
        self.counters["failures"] += 1
        n.due = self.clock() + min(self.t.reresolve_interval, RETRY_FIRST * 2 ** (n.failures - 1))
        return news

    def unresolved(self) -> int:
        """Names that have no address yet."""
        return sum(1 for n in self.names.values() if not n.addresses)

    def describe(self, peer_id: int) -> Optional[dict]:
        n = self.names.get(peer_id)
        if n is None:
            return None
        now = self.clock()
        return {"name": n.text,
                "addresses": [format_endpoint(a) for a in n.addresses],
                "resolved_ago": round(now - n.resolved_at, 3) if n.resolved_at is not None else None,
                "error": n.error}


class EndpointResolver(Observer):
    """The daemon's side: lookups on the loop's resolver, moves through the
    peer table.  An executor observer: its :meth:`tick` runs with the timers,
    and it sees a peer go ``dead``."""

    def __init__(self, daemon):
        self.d = daemon
        self.schedule = ResolveSchedule(daemon.t)
        self._tasks: set = set()

    # ------------------------------------------------------------ the names
    def sync(self) -> None:
        """Follow the config file's names (at start and after a reload); names
        from ``open`` stay while their peer does."""
        d, sched = self.d, self.schedule
        wanted = {}
        for pc in d.s.peers:
            if pc.endpoint_name is None:
                continue
            peer = d.engine.peer_by_key(bytes(pc.public_key))
            if peer is not None:
                wanted[peer.id] = (peer.public_key, pc.endpoint_name)
        for pid, n in list(sched.names.items()):
            if n.origin == "config" and pid not in wanted:
                sched.forget(pid)
        for pid, (key, (host, port)) in wanted.items():
            sched.track(pid, key, host, port, "config")

    def track(self, peer, host: str, port: int, addresses: list) -> None:
        """``phantom open NAME:PORT`` opened ``peer`` at the first of
        ``addresses`` (just looked up): follow the name from now on."""
        n = self.schedule.track(peer.id, peer.public_key, host, port, "open")
        n.addresses = list(addresses)[:MAX_ADDRESSES]
        n.tried_at = n.resolved_at = self.schedule.clock()
        n.resolved_wall = time.time()
        n.failures, n.error, n.forced = 0, None, False

    def _prune(self) -> None:
        peers = self.d.engine.peers
        for pid, n in list(self.schedule.names.items()):
            p = peers.get(pid)
            if p is None or bytes(p.public_key) != n.public_key:
                self.schedule.forget(pid)

    # ------------------------------------------------------------ lookups
    async def lookup(self, host: str, port: int) -> list:
        """``host``'s addresses as [(ip, port), ...] (getaddrinfo's order),
        within ``resolve_timeout``; ResolveError saying why not."""
        loop = asyncio.get_running_loop()
        udp = self.d.udp
        family = socket.AF_UNSPEC if udp is None or udp.family == socket.AF_INET6 else socket.AF_INET
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM),
                self.d.t.resolve_timeout)
        except asyncio.TimeoutError:
            raise ResolveError("no answer within %gs" % self.d.t.resolve_timeout) from None
        except socket.gaierror as exc:
            raise ResolveError(exc.strerror or str(exc), missing=exc.errno in _MISSING) from None
        except (OSError, UnicodeError) as exc:
            raise ResolveError(str(exc)) from None
        out = []
        for fam, _, _, _, addr in infos:
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            ep = plain((addr[0], port))
            if ep not in out:
                out.append(ep)
        if not out:
            raise ResolveError("no IPv4 or IPv6 address", missing=True)
        return out

    async def resolve_now(self, host: str, port: int) -> list:
        """For ``phantom open NAME:PORT``: the addresses; NotFound (404) when
        the resolver says the name has no address, Timeout (504) when the
        lookup fails or takes too long.  The answer never repeats the name: it
        is request text, and a secret pasted in its place must not come back
        (the CLI names it from its own argument)."""
        counters = self.schedule.counters
        counters["lookups"] += 1
        try:
            return await self.lookup(host, port)
        except ResolveError as exc:
            counters["failures"] += 1
            if exc.missing:
                raise NotFound("%s: %s" % (NO_ADDRESS, exc)) from None
            raise Timeout("%s: %s" % (LOOKUP_FAILED, exc)) from None

    async def resolve_peer(self, peer) -> Optional[tuple]:
        """For ``phantom open NAME`` of a peer whose endpoint is a DNS name and
        has no address yet: look it up now (NotFound/Timeout when it does not
        resolve); None when the peer's endpoint is not a name."""
        n = self.schedule.get(peer.id)
        if n is None:
            return None
        try:
            addresses = await self.resolve_now(n.host, n.port)
        except (NotFound, Timeout) as exc:
            # the name comes from the config, not from the request: say it
            raise type(exc)("cannot resolve %s (peer %s's endpoint): %s"
                            % (n.host, peer.name, exc)) from None
        if self.schedule.get(peer.id) is n:
            n.addresses = addresses[:MAX_ADDRESSES]
            n.resolved_at = self.schedule.clock()
            n.resolved_wall = time.time()
            n.failures, n.error = 0, None
        return addresses[0]

    async def start(self) -> None:
        """Look every configured name up once, all at once, each bounded:
        the peers with an answer have their endpoint before the daemon
        brings them up; the others are retried (never a start failure)."""
        self.sync()
        due = self.schedule.take_due(self._last_handshake)
        if due:
            await asyncio.gather(*(self._lookup(n) for n in due))

    def _last_handshake(self, peer_id: int) -> float:
        p = self.d.engine.peers.get(peer_id)
        return p.last_handshake if p is not None else float("-inf")

    async def _lookup(self, n: Name) -> None:
        try:
            addresses = await self.lookup(n.host, n.port)
        except ResolveError as exc:
            if self.schedule.failed(n, str(exc)):
                p = self.d.engine.peers.get(n.peer_id)
                log.warning("peer=%s endpoint %s does not resolve: %s; %s, retrying",
                            p.name if p else "?", n.text, exc,
                            "keeping %s" % format_endpoint(p.endpoint)
                            if p is not None and p.endpoint else "no endpoint yet")
            return
        except Exception:  # a bug must not stop the lookups of the other names
            n.in_flight = False
            log.exception("endpoint lookup of %s failed", n.text)
            return
        self._answered(n, addresses)

    def _answered(self, n: Name, addresses: list) -> None:
        d = self.d
        peer = d.engine.peers.get(n.peer_id)
        if peer is None or bytes(peer.public_key) != n.public_key or \
                self.schedule.get(n.peer_id) is not n:
            n.in_flight = False            # forgotten meanwhile
            return
        current = d.dp.endpoint(peer.id) if d.dp is not None else None
        if isinstance(current, RelayVia) and peer.state is PeerState.ESTABLISHED:
            # up through a relay (NAT traversal): the answer is kept, nothing moves
            self.schedule.answered(n, addresses, addresses[0] if addresses else None)
            return
        if current is None or isinstance(current, RelayVia):
            current = peer.endpoint if not isinstance(peer.endpoint, RelayVia) else None
        new = self.schedule.answered(n, addresses, plain(current) if current else None)
        if new is None:
            log.debug("peer=%s %s resolves to %s: endpoint unchanged", peer.name, n.text,
                      ", ".join(format_endpoint(a) for a in addresses))
            return
        log.info("peer=%s %s resolves to %s: endpoint %s (was %s)", peer.name, n.text,
                 ", ".join(format_endpoint(a) for a in addresses), format_endpoint(new),
                 format_endpoint(current) if current else "-")
        first = peer.endpoint is None
        d.peers.move(peer, new)            # the door: Engine.set_endpoint, then the data path
        if peer.state is PeerState.ESTABLISHED or peer.pending is not None:
            return
        if first and peer.persistent_keepalive and not peer.wanted:
            d.executor.do(d.engine.open(peer.id))       # kept up, as a configured address is at start
        elif peer.state is PeerState.DEAD and d.engine.wants(peer.id):
            d.executor.do(d.engine.rehandshake(peer.id, "endpoint re-resolved"))

    # ------------------------------------------------------ executor hooks
    def observe(self, action) -> list:
        if isinstance(action, A.StateChanged) and action.new == PeerState.DEAD.value:
            self.schedule.gave_up(action.peer_id)
        return []

    def tick(self) -> list:
        if not self.schedule.names:
            return []
        self._prune()
        for n in self.schedule.take_due(self._last_handshake):
            task = asyncio.get_running_loop().create_task(self._lookup(n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return []

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------ reading
    def describe(self, peer_id: int) -> Optional[dict]:
        return self.schedule.describe(peer_id)

    def stats(self) -> dict:
        return dict(self.schedule.counters, names=len(self.schedule.names),
                    unresolved=self.schedule.unresolved())
