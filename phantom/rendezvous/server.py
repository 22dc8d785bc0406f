"""Rendezvous: the sans-IO server and client logic of NAT traversal.

A rendezvous node is any phantomd with a reachable address and
``[interface] rendezvous = true``.  Its peers keep a session with it (a
normal Noise session, kept up by persistent keepalives) and talk to it in
peer-control messages (:mod:`phantom.wire`, type 5) sealed with that
session's keys, so every message is authenticated as coming from one key.

Server (:class:`RendezvousServer`):

* every authenticated message tells it the sender's **reflexive** endpoint
  (the outer source address: the sender's NAT mapping);
* ``Register`` adds the endpoints the sender sees on its own interfaces
  (**local** endpoints, for two peers behind one NAT) and the keys whose
  handshakes it accepts;
* ``WhereIs(K)`` from A: if K is registered **and K accepts A's key**, A gets
  ``Endpoints(K, reflexive + local)`` and K gets ``Punch(A, A's endpoints)``
  over K's session, so both send handshake initiations toward each other at
  once.  Otherwise A gets an empty ``Endpoints(K)``: unknown and refused look
  the same (no oracle for who accepts whom);
* only peers with a session may ask (the caller passes the authenticated key;
  the daemon calls :meth:`RendezvousServer.session_lost` when it ends) and
  where-is requests are rate-limited per asking key (token bucket);
* a registration lives with its session: it ends when the session does
  (:meth:`RendezvousServer.session_lost`) or when it was not renewed for
  ``registration_ttl`` seconds (clients renew every 5 s;
  :meth:`RendezvousServer.expire`), and what a peer registered is bounded:
  at most ``MAX_LOCAL_ENDPOINTS`` local endpoints besides the reflexive one.

Client (:class:`RendezvousClient`): builds the registration, decides when a
where-is may be sent (at most one per target per ``ask_interval``), and
checks what comes back: only configured rendezvous keys are listened to,
a ``Punch`` or ``Endpoints`` for a key that is not our peer is dropped, and
endpoints that cannot be a peer (unspecified, multicast, broadcast, port 0)
are filtered out.  Everything refused is a counted drop.

A hostile rendezvous can at worst withhold or delay answers, or point us
at wrong endpoints: all we send there is a handshake initiation, and only
the holder of the peer's private key can answer it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from .. import wire

log = logging.getLogger("phantom.rendezvous")

Clock = Callable[[], float]


def usable_endpoint(ep) -> bool:
    """An endpoint a peer may really sit at (not 0.0.0.0, multicast, broadcast, port 0)."""
    try:
        host, port = ep
        a = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        return False
    if not 0 < int(port) < 65536:
        return False
    if a.is_unspecified or a.is_multicast or (a.version == 4 and a == ipaddress.IPv4Address("255.255.255.255")):
        return False
    return True


MAX_LOCAL_ENDPOINTS = 4        # local endpoints a registration may carry (besides the reflexive one)
MAX_HINT_ENDPOINTS = MAX_LOCAL_ENDPOINTS + 1   # endpoints a client takes from one answer or punch request


def _dedupe(eps: Iterable) -> tuple:
    out = []
    for ep in eps:
        ep = (str(ep[0]), int(ep[1]))
        if ep not in out and usable_endpoint(ep):
            out.append(ep)
    return tuple(out[:wire.MAX_CONTROL_ENDPOINTS])


class TokenBucket:
    """Per-key token buckets with an injected clock (bounded table)."""

    def __init__(self, rate: float, burst: float, clock: Clock, max_keys: int = 4096):
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._b: dict = {}

    def allow(self, key) -> bool:
        now = self.clock()
        tokens, last = self._b.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._b[key] = (tokens, now)
            return False
        if key not in self._b and len(self._b) >= self.max_keys:
            self._b = {k: v for k, v in self._b.items() if now - v[1] < self.burst / max(self.rate, 1e-9)}
            if len(self._b) >= self.max_keys:
                return False
        self._b[key] = (tokens - 1, now)
        return True


@dataclass
class Registration:
    key: bytes
    reflexive: Optional[tuple] = None
    local: tuple = ()
    accepts: frozenset = frozenset()
    registered: bool = False
    last_seen: float = 0.0
    registered_at: float = float("-inf")     # the last Register

    def endpoints(self) -> tuple:
        return _dedupe(([self.reflexive] if self.reflexive else []) + list(self.local))


class RendezvousServer:
    """The rendezvous role.  ``handle`` takes an authenticated message and
    returns ``[(destination key, message), ...]`` to send over sessions."""

    def __init__(self, clock: Clock, punch_rate: float = 2.0, punch_burst: float = 5.0,
                 max_peers: int = 4096, registration_ttl: float = 20.0,
                 relay_id: Callable[[bytes, bytes], int] = lambda asker, target: 0):
        self.clock = clock
        # relay_id(asker, target): the pair's relay id here, when the target
        # accepts the asker (0: we do not relay for them)
        self.relay_id = relay_id
        self.registration_ttl = registration_ttl
        self._regs: dict[bytes, Registration] = {}
        self._limit = TokenBucket(punch_rate, punch_burst, clock)
        self.max_peers = max_peers
        self.drops: Counter = Counter()
        self.stats: Counter = Counter()

    def registration(self, key: bytes) -> Optional[Registration]:
        return self._regs.get(bytes(key))

    def observe(self, key: bytes, addr: tuple) -> None:
        """Any authenticated packet from ``key`` arrived from outer source ``addr``."""
        reg = self._regs.get(key)
        if reg is None:
            if len(self._regs) >= self.max_peers:
                self.drops["too_many_peers"] += 1
                return
            reg = self._regs[key] = Registration(key)
        reg.reflexive = (str(addr[0]), int(addr[1]))
        reg.last_seen = self.clock()

    def session_lost(self, key: bytes) -> bool:
        """``key`` has no session with us any more: forget it (it re-registers).
        True if it had a registration."""
        return self._regs.pop(bytes(key), None) is not None

    def _live(self, reg: Optional[Registration], now: float) -> bool:
        return reg is not None and reg.registered and now - reg.registered_at < self.registration_ttl

    def expire(self) -> list:
        """Forget registrations not renewed for ``registration_ttl``; returns their keys."""
        now = self.clock()
        gone = [k for k, r in self._regs.items() if r.registered and now - r.registered_at >= self.registration_ttl]
        for k in gone:
            del self._regs[k]
            self.stats["registrations_expired"] += 1
        return gone

    def registered_peers(self) -> int:
        now = self.clock()
        return sum(1 for r in self._regs.values() if self._live(r, now))

    def accepts(self, target: bytes, asker: bytes) -> bool:
        """``target`` has a live registration that accepts ``asker``."""
        reg = self._regs.get(bytes(target))
        return self._live(reg, self.clock()) and bytes(asker) in reg.accepts

    def handle(self, src_key: bytes, addr: tuple, msg) -> list:
        src_key = bytes(src_key)
        self.observe(src_key, addr)
        reg = self._regs.get(src_key)
        if reg is None:
            return []
        if isinstance(msg, wire.Register):
            local = _dedupe(msg.endpoints)
            if len(local) > MAX_LOCAL_ENDPOINTS:
                self.drops["too_many_endpoints"] += len(local) - MAX_LOCAL_ENDPOINTS
            reg.local = local[:MAX_LOCAL_ENDPOINTS]
            reg.accepts = frozenset(bytes(k) for k in msg.accepts)
            reg.registered = True
            reg.registered_at = self.clock()
            self.stats["registrations"] += 1
            return [(src_key, wire.Registered(_dedupe([reg.reflexive])))]
        if isinstance(msg, wire.WhereIs):
            now = self.clock()
            if not self._live(reg, now):
                self.drops["not_registered"] += 1
                return []
            if not self._limit.allow(src_key):
                self.drops["rate_limited"] += 1
                return []
            target = self._regs.get(bytes(msg.key))
            if not self._live(target, now) or src_key not in target.accepts or target.key == src_key:
                self.stats["where_is_unanswered"] += 1
                return [(src_key, wire.Endpoints(bytes(msg.key), ()))]
            self.stats["punches"] += 1
            log.info("rendezvous: punch %s <-> %s", _short(src_key), _short(target.key))
            relay = self.relay_id(src_key, target.key)
            return [(src_key, wire.Endpoints(target.key, target.endpoints(), relay)),
                    (target.key, wire.Punch(src_key, reg.endpoints(), relay))]
        # Endpoints / Punch / Registered are answers, never requests
        self.drops["unexpected_kind"] += 1
        return []


@dataclass(frozen=True)
class Candidates:
    """What the client learnt: ``key``'s endpoints, ``kind`` "answer" (we asked)
    or "punch" (``key`` asked for us), from rendezvous ``via``."""
    key: bytes
    endpoints: tuple
    kind: str
    via: bytes
    relay_id: int = 0


@dataclass
class RendezvousClient:
    """The peer side.  ``servers``: rendezvous public keys we trust for hints;
    ``peers``: keys we accept handshakes from (sent with the registration)."""
    clock: Clock
    servers: set = field(default_factory=set)
    peers: set = field(default_factory=set)
    local_endpoints: tuple = ()
    ask_interval: float = 1.0
    register_interval: float = 5.0
    drops: Counter = field(default_factory=Counter)
    reflexive: dict = field(default_factory=dict)        # server key -> our reflexive endpoint there
    _asked: dict = field(default_factory=dict)            # (server, target) -> time
    _registered: dict = field(default_factory=dict)       # server key -> time we sent Register
    _acked: dict = field(default_factory=dict)            # server key -> time of its last Registered

    def registration(self) -> wire.Register:
        keys = tuple(sorted(bytes(k) for k in self.peers - self.servers))[:wire.MAX_CONTROL_KEYS]
        return wire.Register(_dedupe(self.local_endpoints)[:MAX_LOCAL_ENDPOINTS], keys)

    def due_registrations(self, up_servers: Iterable) -> list:
        """Servers (with a live session) whose registration is due: never sent,
        or older than ``register_interval``."""
        now = self.clock()
        out = []
        for s in up_servers:
            t = self._registered.get(s)
            if t is None or now - t >= self.register_interval:
                self._registered[s] = now
                out.append(s)
        return out

    def session_lost(self, server: bytes) -> None:
        self._registered.pop(server, None)
        self._acked.pop(server, None)
        self.reflexive.pop(server, None)

    def unanswered(self, timeout: float) -> list:
        """Servers whose last registration got no ``Registered`` within
        ``timeout``: their session is dead at the far end (e.g. it restarted)."""
        now = self.clock()
        return [s for s, t in self._registered.items()
                if now - t >= timeout and self._acked.get(s, float("-inf")) < t]

    def may_ask(self, server: bytes, target: bytes) -> bool:
        now = self.clock()
        k = (server, bytes(target))
        t = self._asked.get(k)
        if t is not None and now - t < self.ask_interval:
            return False
        if len(self._asked) > 4096:
            self._asked = {kk: v for kk, v in self._asked.items() if now - v < self.ask_interval}
        self._asked[k] = now
        return True

    def handle(self, server: bytes, msg) -> Optional[Candidates]:
        server = bytes(server)
        if server not in self.servers:
            self.drops["not_a_rendezvous"] += 1
            return None
        if isinstance(msg, wire.Registered):
            self._acked[server] = self.clock()
            if msg.endpoints:
                self.reflexive[server] = msg.endpoints[0]
            return None
        if isinstance(msg, (wire.Endpoints, wire.Punch)):
            key = bytes(msg.key)
            if key not in self.peers or key in self.servers:
                self.drops["hint_for_unknown_key"] += 1
                return None
            eps = _dedupe(msg.endpoints)
            if len(eps) != len(msg.endpoints):
                self.drops["unusable_endpoint"] += len(msg.endpoints) - len(eps)
            if len(eps) > MAX_HINT_ENDPOINTS:
                self.drops["too_many_endpoints"] += len(eps) - MAX_HINT_ENDPOINTS
                eps = eps[:MAX_HINT_ENDPOINTS]
            if isinstance(msg, wire.Endpoints):
                if (server, key) not in self._asked:
                    self.drops["unsolicited_answer"] += 1
                    return None
                return Candidates(key, eps, "answer", server, msg.relay_id)
            return Candidates(key, eps, "punch", server, msg.relay_id)
        self.drops["unexpected_kind"] += 1
        return None


def _short(key: bytes) -> str:
    import base64
    return base64.b64encode(bytes(key)).decode()[:8]
