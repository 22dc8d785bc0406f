"""The engine's timers: :class:`Timers`, the part of
:class:`phantom.control.engine.Engine` that :meth:`Timers.tick` runs.  It is
a mixin: the engine inherits it, and its methods work on the engine's own
state (its peers, indexes, active set, tunables and clock).

Timer rules (one hook each, evaluated in :meth:`Timers.tick`; wording after
the WireGuard whitepaper, section 6):

* retransmit: an initiation unanswered for REKEY_TIMEOUT (+ jitter) is sent
  again with a fresh ephemeral key; after ``max_attempts`` the peer is DEAD;
* passive keepalive: "if we received a data packet and have not sent anything
  for KEEPALIVE_TIMEOUT, send a keepalive";
* persistent keepalive: a keepalive every ``persistent_keepalive`` seconds of
  silence, for NAT mappings;
* new handshake (dead-peer detection): "data sent and nothing received for
  KEEPALIVE_TIMEOUT + REKEY_TIMEOUT": the peer is STALE, start a handshake;
* rekey after time: the initiator of the current session starts a new
  handshake once it is REKEY_AFTER_TIME old and still used;
* expiry: a session older than REJECT_AFTER_TIME is retired and its keys
  zeroed (the data path zeroes them in place);
* dead retry: a DEAD peer that should be up (wanted, or traffic waits for
  it) is tried again every ``dead_retry_interval``, so a tunnel comes back
  when the peer returns;
* waiting traffic (invariant): a peer whose traffic waits for keys always
  has a next attempt scheduled (:meth:`Engine.next_attempt`): an
  initiation's retransmit, or, when the last attempt found no endpoint (a
  peer listed by key only whose directory answer or rendezvous hint has not
  come yet), another attempt after REKEY_TIMEOUT (+ jitter); an endpoint
  learnt meanwhile (:meth:`Engine.set_endpoint`, :meth:`Engine.punch`)
  brings it forward;
* unconfirmed answer: a peer we want up (HANDSHAKING or STALE) whose own
  initiation we gave up for the peer's (simultaneous open: the greater key
  yields) and whose answered session is still unconfirmed after
  REKEY_TIMEOUT (+ jitter), with nothing pending, starts its own initiation:
  a lost confirmation never leaves a peer handshaking with nothing to wait for.
"""

from __future__ import annotations

import logging

from ..dataplane.types import PeerCounters
from . import actions as A
from .peer import Peer, PeerState

log = logging.getLogger("phantom.control")


class Timers:
    """The timer rules of the engine (inherited by Engine)."""

    def tick(self, counters: dict, changed_only: bool = False) -> list:
        """Run every timer rule once for every active peer.  ``counters``:
        peer id -> PeerCounters, at least for :meth:`active_ids` (a sleeping
        peer's counters, when given and changed, wake it).  ``changed_only``:
        ``counters`` holds only the active peers whose counter times changed
        since the last such tick (DataPath.counters_changed); every other
        active peer's are those it was last given."""
        now = self.clock()
        out: list = []
        if changed_only:
            peers = self.peers
            for pid, c in counters.items():
                peer = peers.get(pid)
                if peer is not None:
                    peer.tick_counters = c
        if len(counters) > len(self.active):
            slept = self._slept
            for pid, c in counters.items():
                if pid not in self.active and pid in slept and slept[pid] != c:
                    self._wake(self.peers[pid])
        empty = PeerCounters()
        active = self.active
        if self.t is not getattr(self, "_tick_tunables", None):   # deadlines were computed with others
            self._tick_tunables = self.t
            for peer in active.values():
                peer.tick_until = float("-inf")
        for pid in sorted(active):          # configuration order, as when every peer was walked
            peer = active[pid]
            if changed_only:
                if now < peer.tick_until and pid not in counters:
                    continue                # neither its deadline nor its counters moved
                c = peer.tick_counters or empty
            else:
                c = counters.get(pid) or empty
            seen = (c.last_rx, c.last_tx, c.last_data_rx, c.last_data_tx)   # what the rules read
            if now < peer.tick_until and seen == peer.tick_seen:
                continue                    # nothing can fire yet (see _next_due)
            out += self._timer_expire_sessions(peer, now)
            out += self._timer_retransmit_handshake(peer, now)
            out += self._timer_unconfirmed_answer(peer, now)
            out += self._timer_new_handshake(peer, c, now)
            out += self._timer_rekey_after_time(peer, c, now)
            out += self._timer_passive_keepalive(peer, c, now)
            out += self._timer_persistent_keepalive(peer, c, now)
            out += self._timer_dead_retry(peer, now)
            if self._quiet(peer, c):
                # asleep until an event (or changed counters) wakes it
                del self.active[peer.id]
                self._slept[peer.id] = c
            else:
                peer.tick_until = self._next_due(peer, c, now)
                peer.tick_seen = seen
                peer.tick_counters = c
        return out

    # margin for the float arithmetic of the rules' own comparisons (now - x < T)
    _DUE_MARGIN = 1e-6

    def _next_due(self, peer: Peer, c: PeerCounters, now: float) -> float:
        """The earliest time any timer rule could fire for ``peer`` (or
        change it) while its counters stay ``c`` and no event touches it
        (every event goes through ``_wake``, which resets this): the tick
        then skips the peer's rules until then, so a hub whose 10,000 peers
        all handshook ticks in the cost of those with a timer due, not of
        every one.  Early is always safe (the rules run and find nothing to
        do); each term below is the rule's own condition turned into a time."""
        t = self.t
        due = float("inf")
        sessions = peer.sessions
        for s in sessions:                                   # expire_sessions
            due = min(due, s.created + t.reject_after_time)
        if peer.pending is not None:                         # retransmit
            due = min(due, peer.next_retry)
        elif peer.retry_at is not None:
            due = min(due, peer.retry_at)
        if peer.confirm_by is not None:                      # unconfirmed_answer
            due = min(due, peer.confirm_by)
        if peer.first_unanswered is not None:                # new_handshake (dead-peer detection)
            due = min(due, peer.first_unanswered + t.keepalive_timeout + t.rekey_timeout)
        if peer.pending is None and sessions:                # rekey_after_time
            cur = sessions[-1]
            limit = t.rekey_after_time if cur.initiator else \
                t.reject_after_time - t.keepalive_timeout - t.rekey_timeout
            at = cur.created + limit
            if at > now:
                due = min(due, at)
            elif now - max(c.last_data_tx, c.last_data_rx) <= t.keepalive_timeout:
                return now                                   # waits only for last_initiation_sent: every tick
        if c.last_data_rx > c.last_tx:                       # passive keepalive
            due = min(due, max(c.last_data_rx, peer.last_keepalive_sent) + t.keepalive_timeout)
        if peer.persistent_keepalive:                        # persistent keepalive
            due = min(due, max(c.last_tx, peer.last_keepalive_sent) + peer.persistent_keepalive)
        if peer.state is PeerState.DEAD and (peer.wanted or peer.waiting) and \
                peer.pending is None and peer.retry_at is None:   # dead retry
            due = min(due, peer.next_dead_retry)
        return due - self._DUE_MARGIN

    def _timer_retransmit_handshake(self, peer: Peer, now: float) -> list:
        """Call on every tick: resend an unanswered initiation (or make an
        attempt that is due without one in flight), or give up."""
        if peer.pending is not None:
            if now < peer.next_retry:
                return []
        elif peer.retry_at is None or now < peer.retry_at:
            return []
        if peer.attempts >= peer.max_attempts:
            self._abandon_pending(peer)
            peer.retry_at = None
            peer.requested = False
            log.warning("peer=%s no answer after %d handshake attempts", peer.name, peer.attempts)
            peer.next_dead_retry = now + self.t.dead_retry_interval
            out = []
            if not self._live_sessions(peer, now):
                out.append(A.ClearKeys(peer.id))
                for s in peer.sessions:
                    self._indexes.pop(s.local_index, None)
                peer.sessions.clear()
                peer.waiting = False    # the data path drops what it staged with the keys
            if peer.state is PeerState.IDLE:
                return out + self._set_state(peer, PeerState.HANDSHAKING, "traffic waiting") + \
                    self._set_state(peer, PeerState.DEAD, "handshake gave up")
            return out + self._set_state(peer, PeerState.DEAD, "handshake gave up")
        out = self._send_initiation(peer)
        if peer.state in (PeerState.IDLE, PeerState.DEAD):
            out += self._set_state(peer, PeerState.HANDSHAKING, "traffic waiting")
        return out

    def _timer_unconfirmed_answer(self, peer: Peer, now: float) -> list:
        """We answered the peer's initiation (and, wanting the peer up, gave
        up our own for it) but the peer never confirmed: initiate ourselves."""
        if peer.confirm_by is None or now < peer.confirm_by:
            return []
        peer.confirm_by = None
        if peer.pending is not None or peer.retry_at is not None or \
                (peer.state not in (PeerState.HANDSHAKING, PeerState.STALE) and not peer.waiting):
            return []
        if not peer.sessions or peer.sessions[-1].initiator or peer.sessions[-1].confirmed:
            return []
        log.info("peer=%s did not confirm the session we answered: initiating", peer.name)
        return self._begin_handshake(peer, max(1, peer.max_attempts - peer.attempts),
                                     "answered session unconfirmed")

    def _timer_new_handshake(self, peer: Peer, c: PeerCounters, now: float) -> list:
        """Dead-peer detection: data sent, nothing heard for KEEPALIVE + REKEY_TIMEOUT.

        A completed handshake is hearing from the peer too (WireGuard stops
        this timer on any authenticated packet): data sent before it is not
        unanswered, else a stale peer whose new handshake completed would be
        stale again at the next tick and re-handshake once a tick."""
        heard = max(c.last_rx, peer.last_handshake)
        if c.last_data_tx > heard:
            if peer.first_unanswered is None or peer.first_unanswered < heard:
                peer.first_unanswered = c.last_data_tx
        else:
            peer.first_unanswered = None
            return []
        if now - peer.first_unanswered < self.t.keepalive_timeout + self.t.rekey_timeout:
            return []
        if peer.pending is not None or peer.state not in (PeerState.ESTABLISHED,):
            return []
        peer.first_unanswered = None
        out = self._set_state(peer, PeerState.STALE, "no reply to data for %.1fs"
                              % (self.t.keepalive_timeout + self.t.rekey_timeout))
        return out + self._begin_handshake(peer, self._attempt_limit(), "peer stale")

    def _timer_rekey_after_time(self, peer: Peer, c: PeerCounters, now: float) -> list:
        """The initiator of the current session rekeys after REKEY_AFTER_TIME while it is used;
        the responder does at REJECT_AFTER_TIME - KEEPALIVE - REKEY_TIMEOUT."""
        if peer.pending is not None or not peer.sessions:
            return []
        cur = peer.sessions[-1]
        age = now - cur.created
        limit = self.t.rekey_after_time if cur.initiator else \
            self.t.reject_after_time - self.t.keepalive_timeout - self.t.rekey_timeout
        if age < limit or now - max(c.last_data_tx, c.last_data_rx) > self.t.keepalive_timeout:
            return []
        if now - peer.last_initiation_sent < self.t.rekey_timeout:
            return []
        return self._begin_handshake(peer, self._attempt_limit(), "rekey after time")

    def _timer_passive_keepalive(self, peer: Peer, c: PeerCounters, now: float) -> list:
        """Data received, nothing sent since for KEEPALIVE_TIMEOUT: send a keepalive."""
        if c.last_data_rx > c.last_tx and now - c.last_data_rx >= self.t.keepalive_timeout \
                and now - peer.last_keepalive_sent >= self.t.keepalive_timeout:
            peer.last_keepalive_sent = now
            return [A.SendKeepalive(peer.id)]
        return []

    def _timer_persistent_keepalive(self, peer: Peer, c: PeerCounters, now: float) -> list:
        """Every persistent_keepalive seconds of silence, a keepalive (or a handshake)."""
        pk = peer.persistent_keepalive
        if not pk or now - max(c.last_tx, peer.last_keepalive_sent) < pk:
            return []
        peer.last_keepalive_sent = now
        if self._live_sessions(peer, now):
            return [A.SendKeepalive(peer.id)]
        if peer.pending is None and self._targets(peer) and peer.state is not PeerState.DEAD:
            return self._begin_handshake(peer, self._attempt_limit(), "persistent keepalive")
        return []

    def _timer_expire_sessions(self, peer: Peer, now: float) -> list:
        """Sessions older than REJECT_AFTER_TIME are retired; their keys are zeroed."""
        out: list = []
        keep = []
        for s in peer.sessions:
            if now - s.created >= self.t.reject_after_time:
                self._indexes.pop(s.local_index, None)
                out.append(A.RetireKeypair(s.local_index))
            else:
                keep.append(s)
        if len(keep) != len(peer.sessions):
            peer.sessions = keep
            if not keep and peer.state in (PeerState.ESTABLISHED, PeerState.STALE) and peer.pending is None:
                out += self._set_state(peer, PeerState.IDLE, "session expired")
        return out

    def _timer_dead_retry(self, peer: Peer, now: float) -> list:
        """A DEAD peer that should be up is tried again now and then."""
        if peer.state is not PeerState.DEAD or not (peer.wanted or peer.waiting) or \
                peer.pending is not None or peer.retry_at is not None:
            return []
        if now < peer.next_dead_retry:
            return []
        peer.next_dead_retry = now + self.t.dead_retry_interval
        return self._begin_handshake(peer, 1, "retrying dead peer")

    def _live_sessions(self, peer: Peer, now: float) -> list:
        return [s for s in peer.sessions if now - s.created < self.t.reject_after_time]
