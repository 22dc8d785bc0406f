"""A peer as the control plane sees it: identity, endpoint, state and timers.

Keys and packets live in the data path; the control plane keeps only what
it needs to run handshakes and timers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

from ..protocols.cookie import CookieGenerator
from ..protocols.phantom.handshake import InitiatorState


class PeerState(str, enum.Enum):
    IDLE = "idle"                # configured; no session, no handshake under way
    HANDSHAKING = "handshaking"  # an initiation is out, no session yet
    ESTABLISHED = "established"  # a session carries traffic
    STALE = "stale"              # we sent and heard nothing back: re-handshaking
    DEAD = "dead"                # handshakes gave up; retried slowly


# Whitelisted transitions (uvloop habit): anything else is a bug and raises.
_ALLOWED = {
    PeerState.IDLE: {PeerState.HANDSHAKING, PeerState.ESTABLISHED},
    PeerState.HANDSHAKING: {PeerState.ESTABLISHED, PeerState.DEAD, PeerState.IDLE},
    PeerState.ESTABLISHED: {PeerState.STALE, PeerState.IDLE, PeerState.DEAD},
    PeerState.STALE: {PeerState.ESTABLISHED, PeerState.DEAD, PeerState.IDLE},
    PeerState.DEAD: {PeerState.HANDSHAKING, PeerState.ESTABLISHED, PeerState.IDLE},
}


class InvalidTransition(RuntimeError):
    pass


@dataclass
class PendingHandshake:
    """Our initiation in flight."""
    state: InitiatorState
    local_index: int
    sent_at: float


@dataclass
class SessionInfo:
    """A keypair the control plane installed (keys themselves are in the data path)."""
    local_index: int
    created: float
    initiator: bool
    confirmed: bool = False                 # initiator side, or the peer has sent on it
    cipher: int = 0                         # dataplane.ciphers.CipherKind its transport uses


@dataclass
class Peer:
    id: int
    public_key: bytes
    name: str
    allowed_ips: list
    endpoint: Optional[tuple] = None        # (host, port) as configured or last learned
    persistent_keepalive: float = 0.0
    dynamic: bool = False                   # added by `open`, not from config
    # added at run time (`open`, a directory record's claim): its prefixes
    # overlap no other peer's, either way (Engine.route_problem), so adding
    # it never changes where another peer's traffic goes
    exclusive: bool = False
    wanted: bool = False                    # keep it up: configured endpoint, opened or keepalive
    cookies: Optional[CookieGenerator] = None   # (a WgCookieGenerator for a WireGuard peer)
    state: PeerState = PeerState.IDLE
    path: str = "direct"                    # how traffic reaches it: "direct" (relays: later)
    handshakes: int = 0                     # completed handshakes (metrics)
    # what the peer speaks: a protocols.PhantomHandshakes or WireGuardHandshakes
    # (the engine's, shared by all peers of that protocol); WireGuard's psk
    proto: Optional[object] = None
    preshared_key: Optional[bytearray] = field(default=None, repr=False)
    # Phantom: its last accepted initiation offered no cipher suites (it runs a
    # version before suites, or speaks secretbox only): every second initiation
    # of ours to it offers none either (protocols.PhantomHandshakes.offer_for)
    suites_legacy: bool = False
    suites_alternate: bool = False          # ... and the next one is that second one
    suites: Optional[tuple] = None          # its own [[peer]] ciphers (wire.Suite); None: the interface's

    # handshake
    pending: Optional[PendingHandshake] = None
    attempts: int = 0                       # initiations sent in this episode
    max_attempts: int = 0                   # give up after this many
    next_retry: float = 0.0
    last_initiation_sent: float = float("-inf")
    last_initiation_ts: bytes = bytes(12)   # greatest TAI64N accepted from the peer
    last_initiation_rx: float = float("-inf")
    next_dead_retry: float = 0.0
    # traffic waits for keys (the data path asked for a handshake) and no
    # session carries it yet: while this holds, a next attempt is always
    # scheduled (Engine.next_attempt)
    waiting: bool = False
    # an attempt without an initiation in flight is due at this time: the
    # last one found no endpoint to send to, or traffic came too soon after
    # the previous initiation
    retry_at: Optional[float] = None
    # the handshake under way only answers the peer's punch request (through
    # a rendezvous): a short episode, and it does not make us want the peer
    requested: bool = False

    # refusals (Phantom, our initiation carried our membership): the last
    # reason the peer gave (a wire.Refusal), how many refusals in a row, and
    # until when no handshake of ours goes to it unless a user opens it
    refused: Optional[int] = None
    refusals: int = 0
    refused_until: float = float("-inf")

    # sessions (the data path holds the keys)
    sessions: list = field(default_factory=list)
    last_handshake_wall: float = 0.0        # time.time() of the last completed handshake
    last_handshake: float = float("-inf")   # monotonic
    first_unanswered: Optional[float] = None
    last_keepalive_sent: float = float("-inf")
    confirm_by: Optional[float] = None      # our unconfirmed responder session: initiate after this
    epoch: int = 0                          # bumped whenever the peer is closed/reset
    candidates: list = field(default_factory=list)   # NAT traversal: more endpoints to initiate to
    # the tick (control/timers.py): no timer rule can fire before tick_until
    # while the times in its counters equal tick_seen and no event touched it
    tick_until: float = float("-inf")
    tick_seen: Optional[tuple] = None
    # the counters the tick was last given for this peer (tick(changed_only=True)
    # is given only the peers whose counter times changed; the others keep these)
    tick_counters: Optional[object] = None

    @property
    def cipher(self) -> Optional[int]:
        """The CipherKind of the session traffic goes out on (the newest
        confirmed one, else the newest), None without a session."""
        if not self.sessions:
            return None
        for s in reversed(self.sessions):
            if s.confirmed:
                return s.cipher
        return self.sessions[-1].cipher

    @property
    def protocol(self) -> str:
        """"phantom" or "wireguard"."""
        return self.proto.protocol.value if self.proto is not None else "phantom"

    def set_state(self, new: PeerState) -> Optional[PeerState]:
        """Move to ``new``; returns the old state, or None when unchanged."""
        old = self.state
        if new is old:
            return None
        if new not in _ALLOWED[old]:
            raise InvalidTransition("peer %s: %s -> %s" % (self.name, old.value, new.value))
        self.state = new
        return old
