"""The pairs a relay forwards between (sans-IO).

A relay is a rendezvous node with ``[interface] relay = true``.  When peer A
asks it where B is and B's registration accepts A (the rendezvous checked),
the relay makes the pair (A, B) a random relay id, unique here and the same
in both directions, and returns it with the answer and the punch request
(:mod:`phantom.rendezvous.server`); both ends may then send relay frames
(wire type 6) through it under that id.

It forwards a direction only while its destination accepts its source: each
direction is a :class:`~phantom.control.actions.SetRelayPair` for the data
path (source peer id, relay id -> destination peer id), installed when the
destination accepts the source and removed when it no longer does (its next
registration), when either key's registration ends, or when the peer is
removed.  Budgets: at most ``MAX_PAIRS_PER_KEY`` pairs per key (the oldest
goes) and ``MAX_PAIRS`` in all (the oldest goes).

What it needs from the node is injected: ``peer_by_key`` (the engine's
peers), ``has_session`` (a peer-control session with the peer) and
``accepts(dst, src)`` (the rendezvous' live registrations).  The data-path
actions it decides collect until :meth:`RelayPairs.flush`.
"""

from __future__ import annotations

from typing import Callable, Optional

from .. import crypto
from ..control import actions as A

MAX_PAIRS_PER_KEY = 256      # relay pairs one key takes part in (a registration accepts up to 256 keys)
MAX_PAIRS = 65536            # relay pairs on one relay


class _Pair:
    """Two keys a relay forwards between, under one random relay id; ``dirs``:
    source key -> (source peer id, destination peer id) installed in the
    data path (a direction only while its destination accepts its source)."""
    __slots__ = ("relay_id", "keys", "made", "dirs")

    def __init__(self, relay_id: int, keys: frozenset, made: float):
        self.relay_id, self.keys, self.made, self.dirs = relay_id, keys, made, {}


class RelayPairs:
    def __init__(self, peer_by_key: Callable, has_session: Callable[[int], bool],
                 accepts: Callable[[bytes, bytes], bool], clock: Callable[[], float],
                 relay_id_source: Callable[[], int] = crypto.random_u32):
        self.peer_by_key = peer_by_key
        self.has_session = has_session
        self.accepts = accepts
        self.clock = clock
        self.new_relay_id = relay_id_source
        self._pairs: dict = {}                # frozenset({key, key}) -> _Pair, oldest first
        self._pairs_of: dict = {}             # key -> {frozenset, ...}: the pairs it is in
        self._pair_ids: set = set()
        self._actions: list = []              # SetRelayPair actions not yet flushed

    def __len__(self) -> int:
        return len(self._pairs)

    def pair_id(self, asker: bytes, target: bytes) -> int:
        """The relay id of the pair (asker, target), made when the target's
        registration accepts the asker (the rendezvous checked): random,
        unique here, the same in both directions.  0: we do not relay."""
        a, t = self.peer_by_key(asker), self.peer_by_key(target)
        if a is None or t is None or not self.has_session(a.id) or not self.has_session(t.id):
            return 0
        k = frozenset((bytes(asker), bytes(target)))
        pair = self._pairs.get(k)
        if pair is None:
            for key in k:                       # bounded: the oldest pair of a busy key goes
                mine = self._pairs_of.get(key, ())
                if len(mine) >= MAX_PAIRS_PER_KEY:
                    self._drop(min((self._pairs[kk] for kk in mine), key=lambda p: p.made))
            if len(self._pairs) >= MAX_PAIRS:
                self._drop(next(iter(self._pairs.values())))
            rid = 0
            while rid == 0 or rid in self._pair_ids:
                rid = self.new_relay_id() & 0xFFFFFFFF
            pair = self._pairs[k] = _Pair(rid, k, self.clock())
            self._pair_ids.add(rid)
            for key in k:
                self._pairs_of.setdefault(key, set()).add(k)
        self._sync(pair)
        return pair.relay_id

    def resync(self, key: bytes) -> None:
        """``key`` registered again: what it accepts may have changed, and so
        may the directions of its pairs."""
        for k in list(self._pairs_of.get(bytes(key), ())):
            self._sync(self._pairs[k])

    def drop(self, key: Optional[bytes] = None, peer_id: Optional[int] = None) -> None:
        """The pairs ``key`` is in, or (a removed peer, whose key is gone)
        those installed with ``peer_id``."""
        if key is not None:
            for k in list(self._pairs_of.get(bytes(key), ())):
                self._drop(self._pairs[k])
        if peer_id is not None and self._pairs:
            for pair in [p for p in self._pairs.values() if any(peer_id in d for d in p.dirs.values())]:
                self._drop(pair)

    def flush(self) -> list:
        """The SetRelayPair actions decided since the last flush, in order."""
        out, self._actions = self._actions, []
        return out

    def _sync(self, pair: _Pair) -> None:
        """Install the directions whose destination accepts the source now,
        remove those that no longer do."""
        ka, kb = tuple(pair.keys)
        for src, dst in ((ka, kb), (kb, ka)):
            ps, pd = self.peer_by_key(src), self.peer_by_key(dst)
            ok = ps is not None and pd is not None and self.accepts(dst, src)
            have = pair.dirs.get(src)
            if ok and have != (ps.id, pd.id):
                if have is not None:
                    self._actions.append(A.SetRelayPair(have[0], pair.relay_id, None))
                pair.dirs[src] = (ps.id, pd.id)
                self._actions.append(A.SetRelayPair(ps.id, pair.relay_id, pd.id))
            elif not ok and have is not None:
                del pair.dirs[src]
                self._actions.append(A.SetRelayPair(have[0], pair.relay_id, None))

    def _drop(self, pair: _Pair) -> None:
        for src_id, _ in pair.dirs.values():
            self._actions.append(A.SetRelayPair(src_id, pair.relay_id, None))
        pair.dirs.clear()
        self._pairs.pop(pair.keys, None)
        self._pair_ids.discard(pair.relay_id)
        for key in pair.keys:
            mine = self._pairs_of.get(key)
            if mine is not None:
                mine.discard(pair.keys)
                if not mine:
                    del self._pairs_of[key]
