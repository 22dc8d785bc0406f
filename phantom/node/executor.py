"""Carrying out the engine's actions, and the timer tick.

The engine (:mod:`phantom.control.engine`) and NAT traversal are sans-IO:
they return :mod:`phantom.control.actions`.  The :class:`Executor` carries
them out on the data path, in order, then shows each one to its observers
(:class:`Observer`: NAT traversal, nat.py; the key directory's link,
dirlink.py), whose answers it carries out in turn.  It is also the data
path's event sink (:class:`phantom.dataplane.contract.DataPathEvents`): a
control datagram goes to the engine, or to the observer that claims its
message type; a handshake need and a confirmed keypair go to the engine and
the observers.  :meth:`Executor.run_ticker` runs the engine's timers and the
observers' every ``timer_tick``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from ..control import actions as A
from ..dataplane.udp import plain

log = logging.getLogger("phantom.daemon")


class Observer:
    """Sees what the executor does; every hook may answer with more actions.
    Subclasses override what they need (the defaults do nothing)."""

    #: first bytes (message types) of control datagrams this observer takes
    #: instead of the engine
    message_types: frozenset = frozenset()

    def observe(self, action) -> list:
        """``action`` was just carried out (a data-path action) or announced
        (StateChanged, UnknownKey)."""
        return []

    def datagram(self, data: bytes, addr: tuple) -> list:
        """A control datagram of one of :attr:`message_types`."""
        return []

    def handshake_needed(self, peer_id: int) -> list:
        return []

    def keypair_confirmed(self, peer_id: int, local_index: int) -> None:
        pass

    def tick(self) -> list:
        return []


# Actions for the observers alone (the data path has nothing to do for them).
_ANNOUNCED = (A.UnknownKey,)


class Executor:
    def __init__(self, engine, tick_interval: float, on_failure: Callable[[str], None]):
        self.engine = engine
        self.dp = None                    # the data path, attached by startup.build()
        self.observers: list = []
        self.tick_interval = tick_interval
        self.on_failure = on_failure
        # notified on every StateChanged (the controller's open waits on it)
        self.state_changed = asyncio.Condition()
        self._dispatch = {
            A.SendDatagram: lambda dp, a: dp.send_control(a.data, a.addr),
            A.InstallKeypair: lambda dp, a: dp.install_keypair(a.keypair, a.confirmed),
            A.RetireKeypair: lambda dp, a: dp.retire_keypair(a.local_index),
            A.ClearKeys: lambda dp, a: dp.clear_keys(a.peer_id),
            A.SetEndpoint: lambda dp, a: dp.set_endpoint(a.peer_id, a.addr),
            A.SendKeepalive: lambda dp, a: dp.send_keepalive(a.peer_id),
            A.SetRelayRoute: lambda dp, a: dp.set_relay_route(a.peer_id, a.relay_peer, a.relay_id),
            A.SetRelayPair: lambda dp, a: dp.set_relay_pair(a.src_peer, a.relay_id, a.dest_peer),
            A.StateChanged: lambda dp, a: asyncio.get_running_loop().create_task(self._notify()),
            A.HandshakeRefused: lambda dp, a: log.warning("peer=%s refused us: %s", a.name, a.sentence),
        }

    def attach(self, dp) -> None:
        self.dp = dp

    # ----------------------------------------------------- carry out actions
    def do(self, actions: list) -> None:
        """Carry out ``actions`` in order (keys before sends, see actions.py)."""
        if not A.keys_before_sends(actions):   # the engine's order invariant (actions.py)
            log.error("bug: the engine asked to send before installing keys; installing first: %r",
                      [type(a).__name__ for a in actions])
            actions = A.installs_first(actions)
        dp = self.dp
        for act in actions:
            carry_out = self._dispatch.get(type(act))
            if carry_out is not None:
                carry_out(dp, act)
            elif not isinstance(act, _ANNOUNCED):  # pragma: no cover - a new action without a handler is a bug
                raise TypeError("unhandled action %r" % (act,))
            for observer in self.observers:
                more = observer.observe(act)
                if more:
                    self.do(more)

    async def _notify(self) -> None:
        async with self.state_changed:
            self.state_changed.notify_all()

    # ------------------------------------------------- data-path events
    def control_packet(self, data: bytes, addr) -> None:
        kind = data[0] if data else None
        for observer in self.observers:
            if kind in observer.message_types:
                self.do(observer.datagram(data, plain(addr)))
                return
        self.do(self.engine.handle_datagram(data, plain(addr)))

    def control_packets(self, items: list) -> None:
        """:meth:`control_packet` for each ``(data, addr)`` that arrived
        together, in order; the ones no observer takes go to the engine as
        one batch (Engine.handle_datagrams: the C responder does their Noise
        work together)."""
        batch: list = []
        for data, addr in items:
            kind = data[0] if data else None
            for observer in self.observers:
                if kind in observer.message_types:
                    self._engine_batch(batch)
                    self.do(observer.datagram(data, plain(addr)))
                    break
            else:
                batch.append((data, plain(addr)))
        self._engine_batch(batch)

    # at most this many datagrams a call of Engine.handle_datagrams: enough
    # for its two threads, few enough that the first answers leave at once
    # (the fast path drains up to 256 at a time; the initiators wait for them)
    BATCH = 16

    def _engine_batch(self, batch: list) -> None:
        for i in range(0, len(batch), self.BATCH):
            for actions in self.engine.handle_datagrams(batch[i:i + self.BATCH]):
                self.do(actions)
        batch.clear()

    def handshake_needed(self, peer_id: int) -> None:
        self.do(self.engine.handshake_needed(peer_id))
        for observer in self.observers:
            self.do(observer.handshake_needed(peer_id))

    def keypair_confirmed(self, peer_id: int, local_index: int) -> None:
        for observer in self.observers:
            observer.keypair_confirmed(peer_id, local_index)
        self.do(self.engine.keypair_confirmed(peer_id, local_index))

    def data_path_failed(self, reason: str) -> None:
        self.on_failure(reason)

    # ------------------------------------------------------------ the tick
    def tick(self) -> None:
        """One round of every timer rule: the engine's, then the observers'."""
        # only the peers a timer rule can concern (the engine's active set):
        # an idle peer costs the tick nothing
        # (read in one go: the fast path takes its table lock once, not once a
        # peer; and only the peers whose counter times changed since the last
        # tick: the engine keeps the others', so 10,000 peers that handshook
        # and went quiet cost a comparison each in C, not a snapshot each)
        counters = self.dp.counters_changed(self.engine.active_ids())
        self.do(self.engine.tick(counters, changed_only=True))
        for observer in self.observers:
            self.do(observer.tick())

    async def run_ticker(self, stop: asyncio.Event, interval: Optional[float] = None) -> None:
        """:meth:`tick` every ``timer_tick`` seconds until ``stop`` is set."""
        interval = self.tick_interval if interval is None else interval
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug in one tick must not stop the timers
                log.exception("timer tick failed")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
