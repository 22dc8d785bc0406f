"""NAT traversal, wired to the engine: the peer-control channel and the
coordinator of the rendezvous roles, the relay role and the path table (sans-IO).

:class:`PeerControlChannel` seals and opens peer-control messages (wire
type 5) with the sessions' own keys.  It holds a reference to every
installed :class:`~phantom.dataplane.types.Keypair` (the same objects the
data path holds: when the data path zeroes a retired keypair in place,
the channel can no longer use it either) and a per-session replay guard
(a strictly increasing sequence number).

:class:`Traversal` is what the daemon calls: it turns peer-control
datagrams into rendezvous server/client work, asks rendezvous nodes for
peers that have no session, hands the candidates it learns to the engine
(:meth:`~phantom.control.engine.Engine.punch`) and keeps the path table
(:mod:`phantom.nat.paths`) for the log and the API.  On a rendezvous node
it serves the rendezvous role (:mod:`phantom.rendezvous`) and, when it also
relays, the relay role (:mod:`phantom.relay`: the pairs it forwards
between); on every peer it is the client side of both (asking, punching,
falling back to a relay a rendezvous offered).  It returns
:mod:`phantom.control.actions` like the engine.  Everything malformed,
forged, replayed or refused is a counted drop in ``drops``.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from typing import Callable, Iterable, Optional

from .. import crypto, wire
from ..constants import REGISTER_INTERVAL
from ..dataplane.types import RelayVia
from ..control import actions as A
from .paths import PathTable
from ..control.peer import PeerState
from ..relay import RelayPairs
from ..rendezvous import Candidates, RendezvousClient, RendezvousServer
from ..rendezvous.endpoints import short_key

log = logging.getLogger("phantom.nat")

UNANSWERED_REASK = 1.0            # s before asking again a rendezvous that knew no endpoint


class PeerControlChannel:
    def __init__(self) -> None:
        self._by_index: dict = {}       # local index -> [keypair, confirmed, last seq received]
        self._seq = 0
        self.drops: Counter = Counter()

    def install(self, kp, confirmed: bool) -> None:
        self._by_index[kp.local_index] = [kp, confirmed, 0]

    def confirm(self, local_index: int) -> None:
        e = self._by_index.get(local_index)
        if e is not None:
            e[1] = True

    def retire(self, local_index: int) -> Optional[int]:
        """Forget the session; returns its peer id (None if unknown)."""
        e = self._by_index.pop(local_index, None)
        return e[0].peer_id if e is not None else None

    def clear(self, peer_id: int) -> None:
        for idx in [i for i, e in self._by_index.items() if e[0].peer_id == peer_id]:
            del self._by_index[idx]

    def has_session(self, peer_id: int) -> bool:
        return self._sending(peer_id) is not None

    def _sending(self, peer_id: int):
        best = None
        for kp, confirmed, _ in self._by_index.values():
            if kp.peer_id == peer_id and any(kp.send_key):
                if best is None or (confirmed, kp.created) > (best[1], best[0].created):
                    best = (kp, confirmed)
        return best[0] if best else None

    def seal(self, peer_id: int, msg) -> Optional[bytes]:
        kp = self._sending(peer_id)
        if kp is None:
            self.drops["no_session"] += 1
            return None
        self._seq += 1
        nonce = wire.control_nonce(crypto.random_bytes(23))
        box = crypto.secretbox_seal_nonce(kp.send_key, nonce, wire.encode_control(self._seq, msg))
        return wire.pack_peer_control(kp.remote_index, nonce, box)

    def open(self, datagram: bytes):
        """(peer id, message) or None (a counted drop)."""
        try:
            idx, nonce, box = wire.unpack_peer_control(datagram)
        except wire.WireError:
            self.drops["malformed"] += 1
            return None
        e = self._by_index.get(idx)
        if e is None:
            self.drops["unknown_index"] += 1
            return None
        try:
            body = crypto.secretbox_open_nonce(e[0].recv_key, nonce, box)
        except crypto.CryptoError:
            self.drops["auth_failed"] += 1
            return None
        try:
            seq, msg = wire.decode_control(body)
        except wire.WireError:
            self.drops["malformed_body"] += 1
            return None
        if seq <= e[2]:
            self.drops["replay"] += 1
            return None
        e[2] = seq
        return e[0].peer_id, msg


class Traversal:
    """``servers``: public keys of our rendezvous nodes; ``serve``: we are one."""

    def __init__(self, engine, *, serve: bool = False, relay: bool = False, relay_capable: bool = False,
                 servers: Iterable = (),
                 local_endpoints: Callable[[tuple], list] = lambda server_ep: [],
                 clock: Optional[Callable[[], float]] = None, ask_interval: float = 1.0,
                 register_interval: float = REGISTER_INTERVAL, register_timeout: float = 2.0,
                 reask_interval: float = 5.0, registration_ttl: float = 20.0,
                 relay_id_source: Callable[[], int] = crypto.random_u32):
        self.engine = engine
        self.clock = clock or engine.clock
        self.channel = PeerControlChannel()
        self.server = RendezvousServer(self.clock, registration_ttl=registration_ttl) if serve else None
        # the relay role: the pairs of keys we forward between (a rendezvous that relays)
        self.relay: Optional[RelayPairs] = None
        if relay and serve:
            self.relay = RelayPairs(engine.peer_by_key, self.channel.has_session, self.server.accepts,
                                    self.clock, relay_id_source)
            self.server.relay_id = self.relay.pair_id
        self.relay_capable = relay_capable
        self._relay_option: dict = {}         # peer id -> RelayVia offered by a rendezvous
        self._relay_tried: dict = {}          # peer id -> when we last initiated through it
        self.client = RendezvousClient(self.clock, servers={bytes(k) for k in servers},
                                       ask_interval=ask_interval, register_interval=register_interval)
        self.paths = PathTable(self.clock, probe_backoff=engine.t.rekey_timeout)
        # every initiation's learnt candidates go through the path table's
        # budget: bounded tries per endpoint, with backoff
        engine.candidate_gate = self.paths.gate
        self._local_endpoints = local_endpoints
        self._reask = reask_interval
        self._register_timeout = register_timeout
        self._last_ask: dict = {}
        self.drops: Counter = Counter()

    @property
    def enabled(self) -> bool:
        return self.server is not None or bool(self.client.servers)

    # ------------------------------------------------------------ keys
    def keypair_installed(self, kp, confirmed: bool) -> None:
        self.channel.install(kp, confirmed)
        peer = self.engine.peers.get(kp.peer_id)
        if peer is not None and peer.public_key in self.client.servers:
            self.client.session_lost(peer.public_key)     # a new session: register on it at once

    def keypair_confirmed(self, peer_id: int, local_index: int) -> None:
        self.channel.confirm(local_index)

    def keypair_retired(self, local_index: int) -> list:
        peer_id = self.channel.retire(local_index)
        if peer_id is None or self.channel.has_session(peer_id):
            return []
        # its last session ended (expired): so does its registration here
        peer = self.engine.peers.get(peer_id)
        if peer is not None and self.server is not None:
            self._registration_gone(peer.public_key, "session ended")
        return self._flush()

    def keys_cleared(self, peer_id: int) -> list:
        self.channel.clear(peer_id)
        peer = self.engine.peers.get(peer_id)
        if peer is None:
            self.paths.forget(peer_id)
            if self.relay is not None:
                self.relay.drop(peer_id=peer_id)
            return self._flush()
        if self.server is not None:
            self._registration_gone(peer.public_key, "keys cleared")
        if peer.public_key in self.client.servers:
            self.client.session_lost(peer.public_key)
        self._log_change(self.paths.down(peer_id, "keys cleared"))
        return self._flush()

    def _registration_gone(self, key: bytes, why: str) -> None:
        if self.server.session_lost(key):
            log.info("rendezvous: registration of %s ends (%s)", short_key(key), why)
        if self.relay is not None:
            self.relay.drop(key=key)

    def _flush(self) -> list:
        """The relay role's data-path actions decided since the last call."""
        return self.relay.flush() if self.relay is not None else []

    def endpoint_set(self, peer_id: int, addr, reason: str = "handshake") -> None:
        if addr is None:
            return
        if not isinstance(addr, RelayVia):
            self.paths.verified(peer_id, addr)
        if isinstance(addr, RelayVia):
            relay = self.engine.peers.get(addr.relay_peer)
            self._log_change(self.paths.relayed(peer_id, relay.name if relay else str(addr.relay_peer),
                                                "handshake through the relay"))
            return
        was = self.paths.peer(peer_id).kind
        self._log_change(self.paths.direct(peer_id, tuple(addr), "direct path works" if was == "relayed"
                                           else reason))

    def _log_change(self, change) -> None:
        if change is None:
            return
        peer = self.engine.peers.get(change.peer_id)
        if peer is not None and hasattr(peer, "path"):
            peer.path = self.paths.peer(change.peer_id).label()
        log.info("peer=%s path %s -> %s (%s)", peer.name if peer else change.peer_id, change.old,
                 change.new, change.reason)

    # ----------------------------------------------------- datagrams
    def handle_datagram(self, data: bytes, addr: tuple) -> list:
        opened = self.channel.open(data)
        if opened is None:
            return []
        peer_id, msg = opened
        peer = self.engine.peers.get(peer_id)
        if peer is None:
            self.drops["unknown_peer"] += 1
            return []
        addr = (str(addr[0]), int(addr[1]))
        if isinstance(msg, (wire.Register, wire.WhereIs)):
            if self.server is None:
                self.drops["not_a_rendezvous"] += 1
                return []
            return self._serve(peer, addr, msg)
        got = self.client.handle(peer.public_key, msg)
        if got is None:
            return []
        return self._candidates(got)

    def _serve(self, peer, addr, msg) -> list:
        replies = self.server.handle(peer.public_key, addr, msg)
        if isinstance(msg, wire.Register) and self.relay is not None:
            self.relay.resync(peer.public_key)     # what it accepts may have changed
        out = self._flush()              # relay pairs before the answers that name them
        for dest_key, reply in replies:
            dest = self.engine.peer_by_key(dest_key)
            if dest is None:
                continue
            reg = self.server.registration(dest_key)
            to = addr if dest is peer else (reg.reflexive if reg else None)
            data = self.channel.seal(dest.id, reply)
            if data is not None and to is not None:
                out.append(A.SendDatagram(data, to))
        return out

    def _candidates(self, got: Candidates) -> list:
        peer = self.engine.peer_by_key(got.key)
        if peer is None:
            return []
        via = self.engine.peer_by_key(got.via)
        out: list = []
        if got.endpoints:
            self.paths.add_candidates(peer.id, got.endpoints, "rendezvous" if got.kind == "answer" else "punch")
        if got.relay_id and self.relay_capable and via is not None:
            offer = RelayVia(via.id, got.relay_id)
            if self._relay_option.get(peer.id) != offer:
                self._relay_option[peer.id] = offer
                out.append(A.SetRelayRoute(peer.id, via.id, got.relay_id))
        targets = self.paths.targets(peer.id)
        if not targets:
            self.paths.punch_started(peer.id)
            log.info("peer=%s rendezvous %s knows no endpoint for it", peer.name, via.name if via else "?")
            # its registration may be a tick away (it learnt of us just now):
            # ask again after UNANSWERED_REASK s rather than the full reask interval
            self._last_ask[peer.id] = min(self._last_ask.get(peer.id, self.clock()),
                                          self.clock() - self._reask + UNANSWERED_REASK)
            return out
        log.info("peer=%s %s from rendezvous %s: trying %s", peer.name,
                 "endpoints" if got.kind == "answer" else "punch request", via.name if via else "?",
                 ", ".join("%s:%d" % ep for ep in targets))
        self.paths.punch_started(peer.id)
        request = got.kind == "punch"
        if peer.state is PeerState.ESTABLISHED:
            self.engine.set_candidates(peer.id, targets)
            if got.kind == "answer" and self.paths.peer(peer.id).kind != "relayed":
                return out
            # A punch request although our session looks up: the peer's side
            # is gone (an expired NAT mapping, a restart); or we are relayed
            # and probe for a direct path.  Our initiations open our NAT
            # toward it; theirs then get through.
            return out + self.engine.rehandshake(peer.id, "punch request while established"
                                                 if request else "probing a direct path", request=request)
        # A punch request for a peer we do not want ourselves is a short
        # episode; either way every learnt endpoint has a bounded number of
        # tries (PathTable.gate)
        return out + self.engine.punch(peer.id, targets, request=request)

    # ------------------------------------------------------- triggers
    def handshake_needed(self, peer_id: int) -> list:
        peer = self.engine.peers.get(peer_id)
        if peer is None or not self.client.servers or peer.public_key in self.client.servers:
            return []
        if peer.state is PeerState.ESTABLISHED and self.channel.has_session(peer_id):
            return []
        return self._ask(peer)

    def _ask(self, peer) -> list:
        out = []
        self._last_ask[peer.id] = self.clock()
        for server in self._up_servers():
            if self.client.may_ask(server.public_key, peer.public_key):
                data = self.channel.seal(server.id, wire.WhereIs(peer.public_key))
                if data is not None and server.endpoint is not None:
                    log.info("peer=%s asking rendezvous %s where it is", peer.name, server.name)
                    out.append(A.SendDatagram(data, server.endpoint))
        return out

    def _up_servers(self) -> list:
        out = []
        for key in self.client.servers:
            p = self.engine.peer_by_key(key)
            if p is not None and self.channel.has_session(p.id):
                out.append(p)
        return out

    def tick(self) -> list:
        out = []
        if self.server is not None:
            for key in self.server.expire():
                log.info("rendezvous: registration of %s expired (not renewed for %.0fs)", short_key(key),
                         self.server.registration_ttl)
                if self.relay is not None:
                    self.relay.drop(key=key)
            out += self._flush()
        if not self.client.servers:
            return out
        up = {p.public_key: p for p in self._up_servers()}
        peers = {p.public_key for p in self.engine.peers.values()}
        if peers != self.client.peers:
            if self.client.peers:        # (the first time, every registration is due anyway)
                self.client.register_soon()
            self.client.peers = peers
        for key in self.client.unanswered(self._register_timeout):
            server = self.engine.peer_by_key(key)
            self.client.session_lost(key)
            if server is not None:
                log.info("peer=%s rendezvous did not answer our registration: new handshake", server.name)
                out += self.engine.rehandshake(server.id, "rendezvous silent")
                up.pop(key, None)
        for key in self.client.due_registrations(list(up)):
            server = up[key]
            if server.endpoint is None:
                continue
            self.client.local_endpoints = tuple(self._local_endpoints(server.endpoint))
            data = self.channel.seal(server.id, self.client.registration())
            if data is not None:
                out.append(A.SendDatagram(data, server.endpoint))
        now = self.clock()
        for peer_id, via in list(self._relay_option.items()):
            peer = self.engine.peers.get(peer_id)
            if peer is None:
                self._relay_option.pop(peer_id, None)
                continue
            if self.paths.wants_relay(peer_id) and peer.state is not PeerState.ESTABLISHED and \
                    self.engine.wants(peer_id) and \
                    now - self._relay_tried.get(peer_id, float("-inf")) >= 5.0:
                self._relay_tried[peer_id] = now
                relay = self.engine.peers.get(via.relay_peer)
                log.info("peer=%s no direct path within %.0fs: trying relay %s", peer.name,
                         self.paths.relay_after, relay.name if relay else "?")
                out += self.engine.punch(peer_id, self.paths.targets(peer_id) + [via])
            elif self.paths.wants_direct_probe(peer_id):
                out += self._ask(peer)
        for peer in list(self.engine.peers.values()):
            if peer.public_key in self.client.servers:
                continue
            if not self.engine.wants(peer.id):
                # nobody wants it (a punch request's episode ended): what a
                # rendezvous told us about it is not sent to any more
                if self.paths.has_learnt(peer.id) and peer.pending is None and peer.retry_at is None:
                    self.paths.drop_learnt(peer.id)
                    self.engine.set_candidates(peer.id, [])
                continue
            # while we want it and no session is up, ask every reask_interval
            if up and peer.state in (PeerState.HANDSHAKING, PeerState.DEAD, PeerState.STALE) and \
                    now - self._last_ask.get(peer.id, float("-inf")) >= self._reask:
                out += self._ask(peer)
        return out

    def describe(self, peer_id: int) -> dict:
        d = self.paths.describe(peer_id)
        return {"path": "relayed via %s" % d["via"] if d["path"] == "relayed" else d["path"],
                "candidates": d["candidates"]}

    def status(self) -> dict:
        out = {"drops": dict(self.channel.drops + self.client.drops + self.drops + self.paths.refused)}
        if self.server is not None:
            out["rendezvous"] = {"peers": self.server.registered_peers(), "drops": dict(self.server.drops),
                                 **dict(self.server.stats)}
            if self.relay is not None:
                out["rendezvous"]["relay_pairs"] = len(self.relay)
        out["reflexive"] = {base64.b64encode(k).decode(): "%s:%d" % ep for k, ep in self.client.reflexive.items()}
        return out
