"""The handshake messages that arrive: :class:`Inbound`, the part of
:class:`phantom.control.engine.Engine` that takes a handshake or cookie
datagram (Phantom's or WireGuard's), checks its MACs (mac1 always; under load
mac2, else a cookie reply, and the per-source rate limit), decides an
initiation (peer, replay, suite, admission, simultaneous open) and answers
it, one by one or a batch whose Noise work the C responder does together,
completes our own handshake on a response, and takes a cookie reply.  A
mixin, like :mod:`phantom.control.timers`: the engine inherits it, and its
methods work on the engine's own state; the order invariant (keys installed
before the datagram that lets the peer use them) is the engine's docstring's.
"""

from __future__ import annotations

import logging
from typing import Optional

from .. import wire
from ..wire import demux
from ..protocols import registry as protocols
from ..protocols import tai64n
from ..protocols.phantom import handshake as hs
from . import actions as A
from .peer import Peer, PeerState

__all__ = ["Inbound", "COOKIE_RETRY_DELAY"]

log = logging.getLogger("phantom.control")

_NO_MAC = bytes(wire.MAC_SIZE)   # mac2 of a sender that holds no cookie
COOKIE_RETRY_DELAY = 0.1   # seconds between a cookie reply and the initiation that carries mac2


class Inbound:
    """Handshake datagrams in: see the module's docstring."""

    def handle_datagram(self, data: bytes, addr: tuple) -> list:
        """A handshake or cookie message from ``addr``, Phantom's or WireGuard's
        (wire.demux: by type and length; a cookie reply by the index it is
        for).  Anything bad is a counted drop."""
        try:
            protocol, mtype = demux.classify(data)
        except wire.WireError:
            self.drops["malformed"] += 1
            return []
        if mtype is wire.MessageType.INITIATION:
            return self._on_initiation(data, addr, self._protocols[protocol])
        if mtype is wire.MessageType.RESPONSE:
            return self._on_response(data, addr, self._protocols[protocol])
        if mtype is wire.MessageType.COOKIE_REPLY:
            return self._on_cookie_reply(data)
        self.drops["malformed"] += 1
        return []

    def _check_macs(self, data: bytes, addr: tuple, proto, sender_index: Optional[int] = None) -> Optional[list]:
        """mac1 always; under load mac2 (else a cookie reply) and a per-source
        rate limit, with ``proto``'s checker.  Returns None to go on, or the
        actions that end it here.  ``sender_index``: the index a cookie reply
        goes to; None for an initiation, whose header is read for it only
        when a cookie reply is made (an answered initiation's is read once,
        by the Noise step)."""
        checker = proto.checker
        if not checker.check_mac1(data):
            self.drops["bad_mac1"] += 1
            return []
        if self._load.record():
            if data[-wire.MAC_SIZE:] == _NO_MAC or not checker.check_mac2(data, addr):
                if not self._cookie_limiter.allow(addr):
                    self.drops["rate_limited"] += 1
                    return []
                self.drops["cookie_sent"] += 1
                if sender_index is None:
                    sender_index = proto.initiation_sender(data)
                return [A.SendDatagram(checker.create_reply(data, sender_index, addr), addr)]
            if not self._limiter.allow(addr):
                self.drops["rate_limited"] += 1
                return []
        return None

    def handle_datagrams(self, batch: list) -> list:
        """:meth:`handle_datagram` for each ``(data, addr)`` of ``batch`` (what
        arrived together), in order: a list of action lists.  Consecutive
        Phantom initiations to a C responder (``native_handshake``) go
        through the same steps, each in its turn (mac1, under load mac2,
        cookie replies and the per-source rate limit; then the peer, replay,
        suite and admission decisions; then the answer), except that their
        Noise work (reading them, writing the answers) is done together on
        two threads between those steps."""
        out: list = []
        i, n = 0, len(batch)
        while i < n:
            j = i
            while j < n and self._batchable(batch[j][0]):
                j += 1
            if j - i >= 2:
                out += self._on_initiations(batch[i:j])
                i = j
            else:
                out.append(self.handle_datagram(*batch[i]))
                i += 1
        return out

    def _batchable(self, data: bytes) -> bool:
        try:
            protocol, mtype = demux.classify(data)
        except wire.WireError:
            return False
        return mtype is wire.MessageType.INITIATION and getattr(self._protocols[protocol], "native", False)

    def _on_initiations(self, items: list) -> list:
        """Phantom initiations to the C responder, as _on_initiation one by one."""
        proto = self._protocols[protocols.Protocol.PHANTOM]
        results: list = [None] * len(items)
        go = []
        for k, (data, addr) in enumerate(items):
            stop = self._check_macs(data, addr, proto)
            if stop is not None:
                results[k] = stop
            else:
                go.append(k)
        answers, pending = [], []
        for k, info in zip(go, proto.consume_initiations([items[k][0] for k in go])):
            if isinstance(info, hs.HandshakeError):
                self.drops["bad_handshake"] += 1
                results[k] = []
                continue
            decided = self._decide_initiation(info, items[k][1], proto)
            if isinstance(decided, list):
                results[k] = decided
                continue
            answers.append(decided[:3])
            pending.append((k, decided))
        for (k, (peer, info, index, out)), got in zip(pending, proto.create_responses(answers)):
            if isinstance(got, hs.HandshakeError):     # cannot happen: the suite was checked
                info.state.clear()
                self.drops["bad_handshake"] += 1
                results[k] = out
                continue
            results[k] = self._answer_initiation(peer, index, got[0], got[1], items[k][1], out)
        return results

    def _on_initiation(self, data: bytes, addr: tuple, proto) -> list:
        stop = self._check_macs(data, addr, proto)
        if stop is not None:
            return stop
        try:
            info = proto.consume_initiation(data)
        except hs.HandshakeError:
            self.drops["bad_handshake"] += 1
            return []
        decided = self._decide_initiation(info, addr, proto)
        if isinstance(decided, list):
            return decided
        peer, info, index, out = decided
        msg, keys = proto.create_response(peer, info, index)
        return self._answer_initiation(peer, index, msg, keys, addr, out)

    def _decide_initiation(self, info, addr: tuple, proto):
        """An authenticated initiation: the actions that end it here (a list),
        or (peer, info, index, actions so far) for an answer."""
        peer = self._by_key.get(info.remote_static)
        if peer is None and self.admit_unknown is not None and \
                proto.protocol is protocols.Protocol.PHANTOM and info.attachment is not None:
            peer, out = self._admit(info, addr)
            if peer is None:
                return out
        if peer is None:
            # Unknown key: no answer at all (no oracle), only a counter.
            info.state.clear()
            self.drops["unknown_key"] += 1
            log.info("initiation from unknown key at %s dropped", addr[0])
            return [A.UnknownKey(info.remote_static, addr)] if self.report_unknown_keys else []
        if peer.proto is not proto:
            # A known key in the other protocol: it is configured for one only.
            info.state.clear()
            self.drops["wrong_protocol"] += 1
            log.info("peer=%s speaks %s; a %s initiation dropped", peer.name, peer.protocol,
                     proto.protocol.value)
            return []
        if not tai64n.is_after(info.timestamp, peer.last_initiation_ts):
            info.state.clear()
            self.drops["replayed_initiation"] += 1
            log.info("peer=%s replayed initiation dropped", peer.name)
            return []
        if proto.session_suite(info, peer) is None:
            # authenticated and fresh, but we share no transport suite with it
            # (one side pinned by [interface] ciphers): no answer, a counter
            info.state.clear()
            self.drops["no_common_suite"] += 1
            log.warning("peer=%s offers no cipher suite we accept (we: %s); initiation dropped",
                        peer.name, ", ".join(wire.suite_name(x) for x in proto.suites_for(peer)))
            return []
        now = self.clock()
        self._wake(peer)
        peer.last_initiation_ts = info.timestamp
        peer.last_initiation_rx = now
        proto.note_initiation(peer, info)
        out: list = []
        # Simultaneous open: both sides initiated.  The side with the greater
        # public key gives up its own initiation, so the pair converges on one
        # session: the one the smaller key started.
        if peer.pending is not None and self.public_key > peer.public_key:
            self._abandon_pending(peer)
        index = self._alloc_index("session", peer.id)
        return peer, info, index, out

    def _answer_initiation(self, peer: Peer, index: int, msg: bytes, keys, addr: tuple, out: list) -> list:
        now = self.clock()
        peer.endpoint = addr
        out.append(A.SetEndpoint(peer.id, addr))
        # Keys first: the initiator sends on the session the moment our
        # response arrives (see the order invariant in actions.py).
        out.append(self._install(peer, keys, confirmed=False, now=now))
        out += self._prune_sessions(peer)
        out.append(A.SendDatagram(msg, addr))
        peer.confirm_by = now + self.t.rekey_timeout + self._rng.uniform(0, self.t.handshake_jitter)
        log.info("peer=%s handshake answered (session %d)", peer.name, index)
        return out

    def _on_response(self, data: bytes, addr: tuple, proto) -> list:
        sender_index, receiver_index = proto.response_indexes(data)
        stop = self._check_macs(data, addr, proto, sender_index)
        if stop is not None:
            return stop
        entry = self._indexes.get(receiver_index)
        peer = self.peers.get(entry[1]) if entry and entry[0] == "handshake" else None
        if peer is None or peer.pending is None or peer.pending.local_index != receiver_index:
            self.drops["unknown_index"] += 1
            return []
        if peer.proto is not proto:
            self.drops["wrong_protocol"] += 1
            return []
        try:
            keys = proto.consume_response(peer.pending.state, data)
        except hs.HandshakeRefused as refused:
            return self._refused_by(peer, refused.reason, self.clock())
        except hs.HandshakeError:
            self.drops["bad_handshake"] += 1
            return []
        proto.note_response(peer, peer.pending.state)
        now = self.clock()
        self._wake(peer)
        self._indexes[peer.pending.local_index] = ("session", peer.id)
        peer.pending = None
        peer.attempts = 0
        peer.endpoint = addr
        peer.confirm_by = None
        peer.retry_at = None
        peer.waiting = False            # the install flushes what waited
        peer.requested = False
        # Keys first (the install also flushes staged packets), then the
        # confirmation: the responder may only send once it has heard from
        # us on the new session, so confirm it at once.
        out: list = [A.SetEndpoint(peer.id, addr), self._install(peer, keys, confirmed=True, now=now)]
        out += self._prune_sessions(peer)
        out.append(A.SendKeepalive(peer.id))
        out += self._set_state(peer, PeerState.ESTABLISHED, "handshake complete")
        return out

    def _on_cookie_reply(self, data: bytes) -> list:
        reply = wire.CookieReply.unpack(data)
        entry = self._indexes.get(reply.receiver_index)
        peer = self.peers.get(entry[1]) if entry else None
        if peer is None or not peer.cookies.consume_reply(data):
            self.drops["bad_cookie_reply"] += 1
            return []
        log.info("peer=%s sent a cookie: it is under load", peer.name)
        self._wake(peer)
        if peer.pending is not None and peer.pending.local_index == reply.receiver_index:
            # resend soon, now with mac2, rather than after a whole REKEY_TIMEOUT
            peer.next_retry = min(peer.next_retry, self.clock() + COOKIE_RETRY_DELAY)
        return []
