"""The rendezvous role, server side: the sans-IO logic of a rendezvous node.

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

The peer's side of the protocol is :mod:`phantom.rendezvous.client`; what
both check about endpoints is :mod:`phantom.rendezvous.endpoints`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

from .. import wire
from ..protocols.limits import RateLimiter
from .endpoints import MAX_LOCAL_ENDPOINTS, dedupe, short_key

log = logging.getLogger("phantom.rendezvous")

Clock = Callable[[], float]


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
        return dedupe(([self.reflexive] if self.reflexive else []) + list(self.local))


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
        self._limit = RateLimiter(punch_rate, punch_burst, clock)  # per asking key
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
            local = dedupe(msg.endpoints)
            if len(local) > MAX_LOCAL_ENDPOINTS:
                self.drops["too_many_endpoints"] += len(local) - MAX_LOCAL_ENDPOINTS
            reg.local = local[:MAX_LOCAL_ENDPOINTS]
            reg.accepts = frozenset(bytes(k) for k in msg.accepts)
            reg.registered = True
            reg.registered_at = self.clock()
            self.stats["registrations"] += 1
            return [(src_key, wire.Registered(dedupe([reg.reflexive])))]
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
            log.info("rendezvous: punch %s <-> %s", short_key(src_key), short_key(target.key))
            relay = self.relay_id(src_key, target.key)
            return [(src_key, wire.Endpoints(target.key, target.endpoints(), relay)),
                    (target.key, wire.Punch(src_key, reg.endpoints(), relay))]
        # Endpoints / Punch / Registered are answers, never requests
        self.drops["unexpected_kind"] += 1
        return []
