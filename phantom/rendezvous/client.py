"""The rendezvous role, the peer's side (sans-IO).

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

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from .. import wire
from .endpoints import MAX_HINT_ENDPOINTS, MAX_LOCAL_ENDPOINTS, dedupe

Clock = Callable[[], float]


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
        return wire.Register(dedupe(self.local_endpoints)[:MAX_LOCAL_ENDPOINTS], keys)

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

    def register_soon(self) -> None:
        """What we accept changed (a peer came or went): every server's
        registration is due now, so a rendezvous learns the new key at
        once instead of up to ``register_interval`` later."""
        self._registered.clear()

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
            eps = dedupe(msg.endpoints)
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
