"""The sans-IO control core: handshakes, sessions and timers for all peers.

It takes datagrams, data-path events, counters and a clock, and returns
:mod:`phantom.control.actions`.  It never touches a socket, a device or the
event loop, so every rule here is unit-tested with an injected clock
(tests/unit/control/: test_engine.py for handshakes and timers,
test_engine_liveness.py for the waiting-traffic invariant, test_engine_scale.py for
the active set and many peers).

The timer rules (retransmit, keepalives, dead-peer detection, rekey, expiry,
dead retry, the waiting-traffic invariant) are :mod:`phantom.control.timers`,
a part of the engine class kept in a module of its own; so are the
handshake messages that arrive (:mod:`phantom.control.inbound`: MACs,
cookies and rate limits, initiations one by one or in a batch, responses,
cookie replies), the allowed IPs and their invariants
(:mod:`phantom.control.allowed`) and admission in the handshake, refusals
both ways (:mod:`phantom.control.admission`).

Cost: a tick walks the *active* peers only (:attr:`Engine.active`), not every
configured one, so a hub with 10,000 idle peers ticks as cheaply as one with
ten.  A peer is active while any rule above could fire for it or change its
state: it has a handshake pending, a session, persistent keepalive, an
unanswered-data or confirm deadline, it is DEAD and wanted, or its last
counters show data not yet answered.  A peer that is none of these is left
out of the tick; a peer cannot send or receive data without keys, so its
counters cannot move until something the engine handles (open, an
initiation, a response, traffic waiting, a confirmation) wakes it, and every
such entry point does.  Counters passed to :meth:`Engine.tick` for a peer
that sleeps wake it if they differ from what it last saw, so a caller that
passes every peer's counters gets exactly the old every-peer behaviour; the
daemon passes only :meth:`Engine.active_ids`'.  Within the active set, a
peer's rules run only from the earliest time one of them could fire
(Timers._next_due), or when its counter times changed or an event woke it:
a peer that just handshook is active for REJECT_AFTER_TIME but costs the
ticks until its deadlines a comparison, not the rules.

Order (invariant, see :mod:`phantom.control.actions`): keys are installed
before anything is sent that lets the peer use them, i.e. the responder's
InstallKeypair precedes its response datagram, and the initiator's precedes
its confirming keepalive (and staged packets, which the install flushes).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from typing import Callable, Iterable, Optional

from .. import crypto
from ..constants import Tunables
from ..dataplane.types import Keypair, PeerCounters, RelayVia
from . import actions as A
from ..protocols import registry as protocols
from ..protocols import tai64n
from ..protocols.limits import LoadDetector, RateLimiter
from ..protocols.phantom import handshake as hs
from .peer import PeerState, Peer, PendingHandshake, SessionInfo
from .admission import REFUSAL_BURST, REFUSALS_PER_SECOND, Admission, AdmitUnknown
from .allowed import AllowedIPs, networks
from .inbound import Inbound
from .timers import Timers

log = logging.getLogger("phantom.control")

Clock = Callable[[], float]

PUNCH_ATTEMPTS = 3         # initiations that answer a peer's punch request (we do not want it ourselves)


def _check_keying(proto, preshared_key, suites) -> None:
    """ValueError unless ``preshared_key`` and ``suites`` fit a peer speaking ``proto``."""
    if preshared_key is not None and proto.protocol is not protocols.Protocol.WIREGUARD:
        raise ValueError("only a WireGuard peer has a preshared key")
    if preshared_key is not None and len(preshared_key) != 32:
        raise ValueError("a preshared key is 32 bytes")
    if suites is not None and proto.protocol is not protocols.Protocol.PHANTOM:
        raise ValueError("only a Phantom peer has cipher suites")


class RandomIndexes:
    """Handshake and session indexes: uniform random 32-bit numbers from
    the system's CSPRNG (libsodium's randombytes), drawn :attr:`CHUNK`
    bytes at a time, each byte used once: one getrandom() call per 1,024
    indexes rather than one per index (a hub answering thousands of
    initiations a second spent ~5 % of its event-loop thread in that
    syscall).  A forked child draws afresh, never its parent's bytes."""

    CHUNK = 4096

    def __init__(self, draw: Optional[Callable[[int], bytes]] = None) -> None:
        self._draw = draw                 # None: crypto.random_bytes
        self._buf = b""
        self._pos = 0
        self._pid = None

    def __call__(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._buf) or self._pid != os.getpid():
            self._buf = (self._draw or crypto.random_bytes)(self.CHUNK)
            self._pid = os.getpid()
            pos = 0
        self._pos = pos + 4
        return int.from_bytes(self._buf[pos:pos + 4], "little")


class Engine(Inbound, Timers, AllowedIPs, Admission):
    def __init__(self, private_key: bytearray, tunables: Tunables, *,
                 clock: Clock = time.monotonic, wall_clock: Clock = time.time,
                 rng: Optional[random.Random] = None, index_source: Optional[Callable[[], int]] = None,
                 suites=None, native_handshake: bool = False):
        """``suites``: the transport suites Phantom sessions may use (wire.Suite
        values, ``[interface] ciphers``); None: protocols.default_suites().
        ``native_handshake``: Phantom initiations are answered by the C
        responder (phantom/protocols/phantom/_responder.pyx) when it is built
        (phantomd --fast); the decisions stay here either way."""
        self._priv = private_key
        self.public_key = crypto.x25519_public(bytes(private_key))
        self.t = tunables
        self.clock = clock
        self.wall = wall_clock
        self._rng = rng or random.SystemRandom()
        self._new_index = index_source or RandomIndexes()
        self._ts = tai64n.Tai64nClock(wall_clock)
        # Each protocol's message code and our mac1/mac2 checker for it; a peer
        # points at the one it speaks (protocols.py).  Load and rate limits are shared.
        self._protocols = protocols.build(private_key, self.public_key, clock,
                                          tunables.cookie_refresh_time, suites=suites,
                                          native=native_handshake)
        self._checker = self._protocols[protocols.Protocol.PHANTOM].checker
        self._load = LoadDetector(tunables.under_load_initiations, clock)
        self._limiter = RateLimiter(tunables.handshakes_per_second_per_source,
                                    tunables.handshake_burst_per_source, clock)
        # Cookie replies are rate-limited per source too: a flood from one
        # address costs us a mac1 check per packet, not a reply per packet.
        self._cookie_limiter = RateLimiter(tunables.handshakes_per_second_per_source,
                                           tunables.handshake_burst_per_source, clock)
        self.peers: dict[int, Peer] = {}
        self.active: dict[int, Peer] = {}                 # peers the tick visits (see the module doc)
        self._slept: dict[int, PeerCounters] = {}         # counters a peer last saw before sleeping
        self._by_key: dict[bytes, Peer] = {}
        self._by_prefix: dict = {}                         # allowed-IPs prefix -> the peer holding it
        self._exclusive: dict[int, Peer] = {}              # peers whose prefixes overlap nobody's
        self._by_name: dict[str, list] = {}                # name -> peers with it, in id order
        self._indexes: dict[int, tuple[str, int]] = {}   # local index -> ("handshake"|"session", peer id)
        self._next_peer_id = 1
        self.drops: Counter = Counter()                   # handshake-level drops by reason
        self.report_unknown_keys = False                  # emit UnknownKey (trusted-signer lookups)
        # Admission in the handshake (a network's member daemon sets it): an
        # authenticated Phantom initiation from an unknown key that carries an
        # attachment (a membership certificate) is handed to it, synchronously;
        # it adds the key through the peer door and returns None (the
        # initiation is then answered at once), or returns why not (a
        # wire.Refusal or a sentence, wire.refusal_of) and we answer with an
        # authenticated refusal.  None (plain nodes): such initiations are
        # dropped silently, as any from an unknown key.
        self.admit_unknown: Optional[AdmitUnknown] = None
        self.refusals: Counter = Counter()                # refusals sent, by reason
        self._refuse_by_source = RateLimiter(REFUSALS_PER_SECOND, REFUSAL_BURST, clock)
        self._refuse_by_key = RateLimiter(REFUSALS_PER_SECOND, REFUSAL_BURST, clock)
        self._refused: dict[int, Peer] = {}               # peers holding back after a refusal
        # NAT traversal: (peer id, learnt candidates) -> those an initiation
        # may go to now (paths.PathTable.gate: bounded tries with backoff)
        self.candidate_gate: Optional[Callable[[int, list], list]] = None

    @property
    def suites(self) -> tuple:
        """The transport suites our Phantom sessions may use, best first."""
        return self._protocols[protocols.Protocol.PHANTOM].suites

    # ================================================================ peers
    def add_peer(self, public_key: bytes, name: str = "", allowed_ips: Iterable = (),
                 endpoint: Optional[tuple] = None, persistent_keepalive: float = 0.0,
                 dynamic: bool = False, protocol: str = "phantom",
                 preshared_key: Optional[bytes] = None, exclusive: bool = False,
                 suites=None) -> Peer:
        """``protocol``: "phantom" or "wireguard"; ``preshared_key``: WireGuard's
        (32 bytes).  ``exclusive``: a peer added at run time (``open``, a
        directory record's claim): its prefixes may overlap no other peer's
        prefix, so adding it never moves another peer's traffic.
        ``suites``: this Phantom peer's own transport suites (None: the engine's).
        A prefix another peer holds, or any overlap involving an exclusive
        peer, is refused (ValueError naming it; :meth:`route_problem`)."""
        public_key = bytes(public_key)
        nets = networks(allowed_ips)
        proto = self._protocols[protocols.protocol_of(protocol)]
        _check_keying(proto, preshared_key, suites)
        if public_key in self._by_key:
            raise ValueError("peer with this public key exists")
        if public_key == self.public_key:
            raise ValueError("a peer cannot have our own public key")
        if crypto.is_small_order(public_key):
            raise ValueError("a small-order public key cannot be a peer's")
        problem = self.route_problem({None: nets}, new_exclusive=exclusive)
        if problem is not None:
            raise ValueError(problem)
        pid = self._next_peer_id
        self._next_peer_id += 1
        peer = Peer(pid, public_key, name or ("peer%d" % pid), nets, endpoint,
                    float(persistent_keepalive or 0), dynamic=dynamic,
                    wanted=bool(endpoint) and bool(persistent_keepalive),
                    cookies=proto.cookie_generator(public_key), proto=proto,
                    preshared_key=bytearray(preshared_key) if preshared_key is not None else None,
                    suites=tuple(suites) if suites else None)
        peer.exclusive = bool(exclusive)
        self.peers[pid] = peer
        self._by_key[public_key] = peer
        self._by_name.setdefault(peer.name, []).append(peer)
        self._index_routes(peer)
        self._wake(peer)
        proto.peer_added(public_key)
        return peer

    # ========================================================= the active set
    def _wake(self, peer: Peer) -> None:
        """``peer`` takes part in the next ticks again."""
        if peer.id in self.peers:
            self.active[peer.id] = peer
            self._slept.pop(peer.id, None)
        peer.tick_until = float("-inf")      # the next tick runs its timer rules

    def active_ids(self) -> list:
        """Peers whose counters the next :meth:`tick` needs."""
        return list(self.active)

    def _quiet(self, peer: Peer, c: PeerCounters) -> bool:
        """No timer rule can fire or change anything for ``peer`` until an
        event wakes it (see the module doc)."""
        return (peer.pending is None and not peer.sessions and not peer.persistent_keepalive
                and peer.first_unanswered is None and peer.confirm_by is None
                and peer.retry_at is None and not peer.waiting
                and (peer.state is PeerState.IDLE or (peer.state is PeerState.DEAD and not peer.wanted))
                and c.last_data_rx <= c.last_tx and c.last_data_tx <= c.last_rx)

    def peer_by_key(self, public_key: bytes) -> Optional[Peer]:
        return self._by_key.get(bytes(public_key))

    # Fields update_peer may change; the rest are the engine's own (sessions, timers, state).
    PEER_FIELDS = frozenset(("name", "endpoint", "persistent_keepalive", "preshared_key", "suites",
                             "wanted"))

    def update_peer(self, peer_id: int, **fields) -> Peer:
        """Change fields of a peer (its name, endpoint, persistent keepalive,
        WireGuard preshared key, Phantom suites, whether it is wanted up): the
        peer's sessions and keys stay; the next handshake uses the new keys
        and suites.  Re-indexes the name and wakes the peer, so the next tick
        looks at it.  Checked before anything changes: ValueError (a preshared
        key for a Phantom peer or not 32 bytes, suites for a WireGuard peer),
        TypeError (an unknown field), KeyError (no such peer).  Costs the
        fields given, never a walk of the peers."""
        peer = self.peers[peer_id]
        unknown = set(fields) - self.PEER_FIELDS
        if unknown:
            raise TypeError("update_peer cannot change %s" % ", ".join(sorted(unknown)))
        psk = fields.get("preshared_key")
        _check_keying(peer.proto, psk, fields.get("suites"))
        if "name" in fields and fields["name"] != peer.name:
            same = self._by_name.get(peer.name, [])
            if peer in same:
                same.remove(peer)
            if not same:
                self._by_name.pop(peer.name, None)
            peer.name = fields["name"]
            same = self._by_name.setdefault(peer.name, [])
            same.append(peer)
            same.sort(key=lambda p: p.id)
        if "endpoint" in fields:
            peer.endpoint = fields["endpoint"]
        if "persistent_keepalive" in fields:
            peer.persistent_keepalive = float(fields["persistent_keepalive"] or 0)
        if "suites" in fields:
            peer.suites = tuple(fields["suites"]) if fields["suites"] else None
        if "preshared_key" in fields:
            if peer.preshared_key is not None:
                crypto.memzero(peer.preshared_key)
            peer.preshared_key = bytearray(psk) if psk is not None else None
        if "wanted" in fields:
            peer.wanted = bool(fields["wanted"])
        self._wake(peer)
        return peer

    def peer_by_name(self, name: str) -> Optional[Peer]:
        """The first-added peer called ``name`` (a dict lookup, not a scan)."""
        same = self._by_name.get(name)
        return same[0] if same else None

    def peers_named(self, name: str) -> list:
        """Every peer called ``name``, first-added first (usually one or none)."""
        return list(self._by_name.get(name, ()))

    @property
    def next_peer_id(self) -> int:
        """The id :meth:`add_peer` gives the next peer (ids count up, never reused)."""
        return self._next_peer_id

    def private_key(self) -> bytes:
        """Our static private key, for WireGuard's UAPI (``wg showconf``, root only)."""
        return bytes(self._priv)

    def remove_peer(self, peer_id: int) -> list:
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        out = self._reset(peer, "removed")
        if peer.preshared_key is not None:
            crypto.memzero(peer.preshared_key)
        self._unindex_routes(peer)
        del self.peers[peer_id]
        self._refused.pop(peer_id, None)
        self.active.pop(peer_id, None)
        self._slept.pop(peer_id, None)
        del self._by_key[peer.public_key]
        peer.proto.peer_removed(peer.public_key)
        same = self._by_name.get(peer.name, [])
        if peer in same:
            same.remove(peer)
        if not same:
            self._by_name.pop(peer.name, None)
        return out

    def open(self, peer_id: int, endpoint: Optional[tuple] = None) -> list:
        """A user asked for a tunnel.  Already up: nothing to do (no duplicate)."""
        peer = self.peers[peer_id]
        self._wake(peer)
        out: list = []
        if endpoint is not None and endpoint != peer.endpoint:
            peer.endpoint = endpoint
            out.append(A.SetEndpoint(peer.id, endpoint))
        peer.wanted = True
        if peer.state is PeerState.ESTABLISHED:
            return out
        if peer.pending is not None:
            peer.max_attempts = max(peer.max_attempts, peer.attempts + self.t.open_attempts)
            return out
        return out + self._begin_handshake(peer, self.t.open_attempts, "open requested")

    def close(self, peer_id: int) -> list:
        peer = self.peers[peer_id]
        self._wake(peer)
        peer.wanted = False
        return self._reset(peer, "closed")

    def open_failed(self, peer_id: int) -> list:
        """``open`` gave up.  The handshake under way is abandoned, but keys
        the peer may still use stay: a live session (confirmed, or one we
        answered and the peer may already send on) is kept until it expires,
        and the peer goes DEAD (not retried: it is no longer wanted).  With
        no live session it is reset to IDLE as by :meth:`close`."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        self._wake(peer)
        peer.wanted = False
        self._abandon_pending(peer)
        peer.retry_at = None
        peer.confirm_by = None
        if not self._live_sessions(peer, self.clock()):
            return self._reset(peer, "open failed")
        if peer.state in (PeerState.HANDSHAKING, PeerState.STALE):
            return self._set_state(peer, PeerState.DEAD, "open failed; live session kept")
        return []

    def _reset(self, peer: Peer, reason: str) -> list:
        out: list = [A.ClearKeys(peer.id)]
        self._abandon_pending(peer)
        peer.retry_at = None
        peer.waiting = False            # the data path drops what it staged with the keys
        peer.requested = False
        for s in peer.sessions:
            self._indexes.pop(s.local_index, None)
        peer.sessions.clear()
        peer.first_unanswered = None
        peer.confirm_by = None
        peer.epoch += 1
        out += self._set_state(peer, PeerState.IDLE, reason)
        return out

    # ============================================================ handshakes
    def _begin_handshake(self, peer: Peer, max_attempts: int, reason: str, requested: bool = False) -> list:
        if reason != "open requested" and self._held(peer):
            # the peer refused us: nothing of ours goes there before the hold
            # ends (the dead retry then tries once); a user's open tries now
            log.debug("peer=%s refused us; no handshake (%s) for %.1fs", peer.name, reason,
                      peer.refused_until - self.clock())
            return []
        peer.attempts = 0
        peer.max_attempts = max_attempts
        peer.requested = requested
        out = self._send_initiation(peer)
        if peer.state in (PeerState.IDLE, PeerState.DEAD):
            out += self._set_state(peer, PeerState.HANDSHAKING, reason)
        return out

    def _targets(self, peer: Peer) -> list:
        """Where an initiation goes: the endpoint, then every NAT-traversal
        candidate (:mod:`phantom.nat.paths`); the first answer wins."""
        out = [peer.endpoint] if peer.endpoint is not None else []
        for ep in peer.candidates:
            if ep not in out:
                out.append(ep)
        # a relay goes last: a direct candidate that works should answer first
        return sorted(out, key=lambda ep: isinstance(ep, RelayVia))

    def _send_targets(self, peer: Peer) -> list:
        """:meth:`_targets` less the learnt candidates that
        :attr:`candidate_gate` holds back now (each one it lets through is
        counted as tried).  The endpoint (configured, or where the peer
        answered from) and a relay are never held back."""
        targets = self._targets(peer)
        gate = self.candidate_gate
        if gate is None:
            return targets
        learnt = [ep for ep in targets if ep != peer.endpoint and not isinstance(ep, RelayVia)]
        if not learnt:
            return targets
        allowed = set(gate(peer.id, learnt))
        return [ep for ep in targets if ep == peer.endpoint or isinstance(ep, RelayVia) or ep in allowed]

    def set_candidates(self, peer_id: int, endpoints) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.candidates = [ep if isinstance(ep, RelayVia) else tuple(ep) for ep in endpoints]

    def wants(self, peer_id: int) -> bool:
        """We try to bring ``peer_id`` up for our own sake: it is wanted
        (configured endpoint with keepalive, opened), traffic waits for it,
        or a handshake of ours (not a mere answer to its punch request) is
        under way.  NAT traversal asks rendezvous nodes and falls back to a
        relay only for such peers."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return False
        if peer.wanted or peer.waiting:
            return True
        return not peer.requested and (peer.pending is not None or peer.retry_at is not None)

    def punch(self, peer_id: int, endpoints, request: bool = False) -> list:
        """NAT traversal: a rendezvous told us where the peer is (we asked),
        or, with ``request``, that the peer wants us (a punch request).
        Initiate now to every candidate, unless already up.  A punch request
        makes a short episode (``PUNCH_ATTEMPTS`` initiations) and never
        makes us want the peer: once it ends, nothing more goes there unless
        we want the peer ourselves."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        self._wake(peer)
        self.set_candidates(peer_id, endpoints)
        if peer.state is PeerState.ESTABLISHED:
            return []
        if peer.pending is not None or peer.retry_at is not None:
            # an episode is under way: the new candidates get an initiation
            # now (both sides send at once), within the episode's attempts
            if not request:
                peer.requested = False
            if peer.attempts >= peer.max_attempts or self._held(peer):
                return []               # the retransmit rule gives up (or tries) at its time
            return self._send_initiation(peer)
        if request and not self.wants(peer_id):
            return self._begin_handshake(peer, PUNCH_ATTEMPTS, "punch request", requested=True)
        return self._begin_handshake(peer, max(self._attempt_limit(), self.t.open_attempts), "hole punching")

    def rehandshake(self, peer_id: int, reason: str, request: bool = False) -> list:
        """A session that looks up but whose far end stopped answering at a
        higher layer (a rendezvous that ignores our registrations: it
        restarted and forgot our keys; a punch request, ``request``, while
        our session looks up): start a new handshake now."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.pending is not None:
            return []
        if request and not self.wants(peer_id):
            return self._begin_handshake(peer, PUNCH_ATTEMPTS, reason, requested=True)
        return self._begin_handshake(peer, self._attempt_limit(), reason)

    def set_endpoint(self, peer_id: int, endpoint: tuple) -> list:
        """The peer is at ``endpoint`` now (a directory record said so).  A
        handshake that waits for an endpoint goes out at once."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        self._wake(peer)
        peer.endpoint = endpoint
        out: list = [A.SetEndpoint(peer.id, endpoint)]
        if peer.state is PeerState.ESTABLISHED or peer.pending is not None:
            return out
        if peer.retry_at is not None:
            if not self._held(peer):
                out += self._send_initiation(peer)
        elif peer.waiting:
            out += self._begin_handshake(peer, self._attempt_limit(), "endpoint learnt")
        return out

    def next_attempt(self, peer_id: int) -> Optional[float]:
        """When the engine next tries to bring ``peer_id`` up by itself (an
        initiation's retransmit, an attempt due without one in flight, the
        check of an answered but unconfirmed session, a dead peer's retry),
        or None.  Invariant: never None for a peer whose traffic waits and
        that has no session up."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return None
        times = []
        if peer.pending is not None:
            times.append(peer.next_retry)
        if peer.retry_at is not None:
            times.append(peer.retry_at)
        if peer.confirm_by is not None and (peer.waiting or peer.state in (PeerState.HANDSHAKING,
                                                                            PeerState.STALE)):
            times.append(peer.confirm_by)
        if peer.state is PeerState.DEAD and (peer.wanted or peer.waiting):
            times.append(peer.next_dead_retry)
        return min(times) if times else None

    def _send_initiation(self, peer: Peer) -> list:
        now = self.clock()
        self._wake(peer)
        targets = self._send_targets(peer)
        if not targets:
            # Nothing to send to now (no endpoint yet, or every learnt
            # candidate is held back): the attempt counts, and the next one
            # is scheduled like a retransmit, so a waiting peer never stalls.
            self._abandon_pending(peer)
            peer.attempts += 1
            peer.retry_at = now + self.t.rekey_timeout + self._rng.uniform(0, self.t.handshake_jitter)
            log.info("peer=%s no endpoint, cannot start a handshake (attempt %d of %d; next in %.1fs)",
                     peer.name, peer.attempts, peer.max_attempts, peer.retry_at - now)
            return []
        self._abandon_pending(peer)
        peer.retry_at = None
        index = self._alloc_index("handshake", peer.id)
        msg, state = peer.proto.create_initiation(peer, index, self._ts.now())
        peer.pending = PendingHandshake(state, index, now)
        peer.attempts += 1
        peer.last_initiation_sent = now
        peer.next_retry = now + self.t.rekey_timeout + self._rng.uniform(0, self.t.handshake_jitter)
        log.debug("peer=%s initiation %d sent (attempt %d)", peer.name, index, peer.attempts)
        return [A.SendDatagram(msg, ep) for ep in targets]

    def _abandon_pending(self, peer: Peer) -> None:
        if peer.pending is not None:
            self._indexes.pop(peer.pending.local_index, None)
            peer.pending.state.clear()
            peer.pending = None

    def _alloc_index(self, kind: str, peer_id: int) -> int:
        while True:
            idx = self._new_index()
            if idx not in self._indexes:
                self._indexes[idx] = (kind, peer_id)
                return idx

    def _install(self, peer: Peer, keys: hs.SessionKeys, confirmed: bool, now: float) -> A.InstallKeypair:
        self._wake(peer)
        cipher = peer.proto.cipher_of(keys)
        peer.sessions.append(SessionInfo(keys.local_index, now, keys.initiator, confirmed, cipher=int(cipher)))
        peer.last_handshake = now
        peer.last_handshake_wall = self.wall()
        peer.first_unanswered = None
        peer.handshakes += 1
        if peer.refusals:               # it takes us again
            peer.refusals = 0
            peer.refused_until = float("-inf")
            self._refused.pop(peer.id, None)
        kp = Keypair(peer.id, keys.local_index, keys.remote_index, keys.send_key, keys.recv_key,
                     time.monotonic(), keys.initiator, int(cipher))
        return A.InstallKeypair(kp, confirmed)

    def _prune_sessions(self, peer: Peer) -> list:
        """At most three sessions per peer, the data path's slots (WireGuard
        keeps three too): the two newest confirmed ones (current and
        previous) and the newest unconfirmed answer if it is newer than
        them (next).  The data path already dropped the others when it
        installed or confirmed the newer keys; they are retired here too, so
        neither the engine's index table nor anything keyed by session grows
        with a peer that initiates again and again."""
        sessions = peer.sessions
        if len(sessions) <= 1:
            return []
        confirmed = [i for i, s in enumerate(sessions) if s.confirmed]
        keep = set(confirmed[-2:])
        last_confirmed = confirmed[-1] if confirmed else -1
        unconfirmed = [i for i, s in enumerate(sessions) if not s.confirmed and i > last_confirmed]
        if unconfirmed:
            keep.add(unconfirmed[-1])
        if len(keep) == len(sessions):
            return []
        out = []
        for i, s in enumerate(sessions):
            if i not in keep:
                self._indexes.pop(s.local_index, None)
                out.append(A.RetireKeypair(s.local_index))
        peer.sessions = [s for i, s in enumerate(sessions) if i in keep]
        return out

    # ========================================================= data-path events
    def handshake_needed(self, peer_id: int) -> list:
        """Traffic waits for keys (or the current keys are worn out).  The
        data path says so once per episode, so from here until a session
        carries the traffic (or the attempts give up and the staged packets
        go with the keys), an attempt is always scheduled."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        self._wake(peer)
        if peer.state is not PeerState.ESTABLISHED:
            # (established: the keys are worn out, traffic still flows on them)
            peer.waiting = True
            peer.requested = False      # we want it ourselves now
        if peer.pending is not None or peer.retry_at is not None:
            return []                   # an initiation or an attempt is scheduled
        now = self.clock()
        if peer.sessions and not peer.sessions[-1].initiator and \
                now - peer.sessions[-1].created < self.t.rekey_timeout:
            # we just answered: the initiator's confirmation is on its way;
            # if it does not come, we initiate then
            if peer.waiting:
                self._schedule(peer, peer.sessions[-1].created + self.t.rekey_timeout)
            return []
        if now - peer.last_initiation_sent < self.t.rekey_timeout:
            if peer.waiting:
                self._schedule(peer, peer.last_initiation_sent + self.t.rekey_timeout)
            return []
        if self._held(peer):
            if peer.waiting:
                self._schedule(peer, peer.refused_until)
            return []
        return self._begin_handshake(peer, self._attempt_limit(), "traffic waiting")

    def _schedule(self, peer: Peer, at: float) -> None:
        """An attempt without an initiation in flight, due at ``at`` (not
        before a refusal's hold ends): the first of a new episode."""
        at = max(at, peer.refused_until)
        peer.attempts = 0
        peer.max_attempts = self._attempt_limit()
        peer.retry_at = at

    def keypair_confirmed(self, peer_id: int, local_index: int) -> list:
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        self._wake(peer)
        for s in peer.sessions:
            if s.local_index == local_index:
                s.confirmed = True
        peer.confirm_by = None
        peer.retry_at = None
        peer.waiting = False            # the confirmation flushes what waited
        peer.requested = False
        self._abandon_pending(peer)
        out = self._prune_sessions(peer)
        return out + self._set_state(peer, PeerState.ESTABLISHED, "peer confirmed the session")

    def _attempt_limit(self) -> int:
        return max(1, int(self.t.rekey_attempt_time // self.t.rekey_timeout))

    def _set_state(self, peer: Peer, new: PeerState, reason: str) -> list:
        self._wake(peer)
        old = peer.set_state(new)
        if old is None:
            return []
        log.info("peer=%s %s -> %s (%s)", peer.name, old.value, new.value, reason)
        return [A.StateChanged(peer.id, old.value, new.value, reason)]
