"""Admission in the handshake: :class:`Admission`, the part of
:class:`phantom.control.engine.Engine` that answers an initiation from an
unknown key carrying a membership certificate (admitted at once, or an
authenticated, rate-limited refusal) and holds back after a peer refused us.
A mixin, like :mod:`phantom.control.timers`: the engine inherits it, and its
methods work on the engine's own state.  The wire form is docs/protocol.md,
"Attachments and refusals"; a network's member daemon
(phantom/node/membership.py) sets :attr:`Admission.membership` and
``admit_unknown``.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from .. import wire
from ..keys import encode_key
from ..protocols import registry as protocols
from . import actions as A
from .peer import Peer, PeerState

__all__ = ["Admission", "AdmitUnknown", "REFUSALS_PER_SECOND", "REFUSAL_BURST", "REFUSAL_HOLD",
           "REFUSAL_HOLD_MAX"]

log = logging.getLogger("phantom.control")

# Refusals (an initiation carrying a membership, answered "not a member ..."):
# we send at most this many per second per source address and per key ...
REFUSALS_PER_SECOND = 1.0
REFUSAL_BURST = 3
# ... and a refused initiator waits this long before trying the peer again by
# itself, doubling with each refusal in a row up to the maximum (an explicit
# `open` tries at once)
REFUSAL_HOLD = 10.0
REFUSAL_HOLD_MAX = 300.0

# admit_unknown(remote_static, attachment, addr): None once the key is a peer
# (added through the peer door), else the reason to refuse it
AdmitUnknown = Callable[[bytes, bytes, tuple], Optional[str]]


class Admission:
    """Membership attachments, admission of unknown keys, refusals both ways."""

    @property
    def membership(self) -> Optional[bytes]:
        """What our Phantom initiations attach (a membership certificate,
        1..wire.MAX_ATTACHMENT_SIZE bytes), or None (nothing: the
        initiations of a node without a network).  Setting it (a renewed
        certificate) lets every peer that refused us be tried again."""
        return self._protocols[protocols.Protocol.PHANTOM].attachment

    @membership.setter
    def membership(self, value: Optional[bytes]) -> None:
        if value is not None:
            value = bytes(value)
            if not 1 <= len(value) <= wire.MAX_ATTACHMENT_SIZE:
                raise ValueError("a membership attachment is 1 to %d bytes, not %d"
                                 % (wire.MAX_ATTACHMENT_SIZE, len(value)))
        self._protocols[protocols.Protocol.PHANTOM].attachment = value
        now = self.clock()
        for peer in self._refused.values():      # the next tick tries what waited for the hold
            peer.refused_until = float("-inf")
            peer.next_dead_retry = min(peer.next_dead_retry, now)
            if peer.retry_at is not None:
                peer.retry_at = min(peer.retry_at, now)
            self._wake(peer)
        self._refused.clear()

    def _held(self, peer: Peer) -> bool:
        """The peer refused us and its hold has not ended: nothing of ours
        goes there by itself (an explicit open does)."""
        return self.clock() < peer.refused_until

    def _admit(self, info, addr: tuple) -> tuple:
        """An authenticated initiation from an unknown key with an
        attachment: (the peer admit_unknown just added, []) or (None, the
        actions that answer it: a refusal, or nothing)."""
        key = info.remote_static
        try:
            reason = self.admit_unknown(key, info.attachment, addr)
        except Exception:  # a bug or bad input in the admission: a drop, never a crash
            info.state.clear()
            self.drops["admit_failed"] += 1
            log.exception("admitting the key at %s failed; initiation dropped", addr[0])
            return None, []
        if reason is None:
            peer = self._by_key.get(key)
            if peer is not None:
                log.info("peer=%s admitted by its handshake's attachment", peer.name)
                return peer, []
            reason = "not admitted"           # it said yes but added no peer: a refusal
        code = wire.refusal_of(reason)
        if not self._refuse_by_source.allow(addr) or not self._refuse_by_key.allow(key):
            info.state.clear()
            self.drops["refusal_rate_limited"] += 1
            return None, []
        msg = self._protocols[protocols.Protocol.PHANTOM].create_refusal(info, code, self._new_index())
        self.drops["refused"] += 1
        self.refusals[code.name.lower()] += 1
        log.warning("refused the handshake of key %s at %s: %s", encode_key(key), addr[0], reason)
        return None, [A.SendDatagram(msg, addr)]

    def _refused_by(self, peer: Peer, reason, now: float) -> list:
        """The peer refused our initiation: no keys, no retries before the
        hold (doubling with each refusal in a row); its sessions go, since it
        no longer accepts us."""
        self._abandon_pending(peer)
        peer.retry_at = None
        peer.confirm_by = None
        peer.requested = False
        reason = wire.refusal_code(int(reason))
        peer.refused = reason
        peer.refusals += 1
        hold = min(REFUSAL_HOLD_MAX, REFUSAL_HOLD * 2 ** min(peer.refusals - 1, 16))
        peer.refused_until = now + hold
        peer.next_dead_retry = max(peer.next_dead_retry, peer.refused_until)
        self._refused[peer.id] = peer
        self.drops["refused_us"] += 1
        # (the daemon logs the action at warning; here the hold)
        log.info("peer=%s refused us: %s (no handshake of ours for %.0fs)", peer.name,
                 wire.refusal_sentence(reason), hold)
        out: list = [A.HandshakeRefused(peer.id, peer.name, reason), A.ClearKeys(peer.id)]
        for s in peer.sessions:
            self._indexes.pop(s.local_index, None)
        peer.sessions.clear()
        peer.waiting = False            # the data path drops what it staged with the keys
        sentence = "refused: %s" % wire.refusal_sentence(reason)
        if peer.state is PeerState.IDLE:
            out += self._set_state(peer, PeerState.HANDSHAKING, sentence)
        return out + self._set_state(peer, PeerState.DEAD, sentence)
