"""Load and rate limits of the handshake responder, shared by both protocols
and by the rendezvous role: a per-source token bucket with bounded memory
(:class:`RateLimiter`) and the "under load" switch that makes the engine
demand cookies (:class:`LoadDetector`).  Sans-IO: every clock is injected.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from typing import Callable

from ..constants import DEFAULT_TUNABLES

Clock = Callable[[], float]


@functools.lru_cache(maxsize=8192)
def packed_ip(host: str) -> bytes:
    """``ipaddress.ip_address(host).packed``, remembered for the last 8,192
    addresses: a hub under a handshake load sees the same sources again and
    again, and parsing the string was ~4 % of its event-loop thread (the rate
    limit and the cookie MAC each parse it).  ValueError for a bad address,
    as ip_address (an error is not remembered)."""
    return ipaddress.ip_address(host).packed


def _ip_key(src) -> bytes:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    if isinstance(src, str):
        return packed_ip(src)
    return packed_ip(src[0])


class RateLimiter:
    """Token bucket per source IP (or per key: any bytes) with bounded memory.

    Each source IP may do ``burst`` handshakes at once, refilled at ``rate``
    per second (the rendezvous role limits where-is requests per asking
    public key the same way).  An entry that has been idle long enough to be full again is
    forgotten (dropping it changes nothing), so memory follows the number of
    recently active sources, never more than ``max_entries``.  When the table
    is full of active sources, new sources are refused (fail closed).

    Keys are the IP only: ports cost an attacker nothing.
    """

    def __init__(self, rate: float = DEFAULT_TUNABLES.handshakes_per_second_per_source,
                 burst: int = DEFAULT_TUNABLES.handshake_burst_per_source,
                 clock: Clock | None = None, max_entries: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_entries < 1:
            raise ValueError("rate, burst and max_entries must be positive")
        if clock is None:
            raise ValueError("clock is required")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_entries = max_entries
        self._clock = clock
        self._idle_forget = self.burst / self.rate     # time for an empty bucket to fill
        # ip -> [tokens, last_seen]; ordered by last_seen (oldest first).
        self._entries: "OrderedDict[bytes, list]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _collect(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry[1] < self._idle_forget:
                break
            del entries[key]

    def allow(self, src) -> bool:
        """Take one token for ``src`` (IP string, socket address tuple or bytes)."""
        now = self._clock()
        self._collect(now)
        key = _ip_key(src)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_entries:
                return False
            self._entries[key] = [self.burst - 1.0, now]
            return True
        elapsed = max(0.0, now - entry[1])
        entry[0] = min(self.burst, entry[0] + elapsed * self.rate)
        entry[1] = now
        self._entries.move_to_end(key)
        if entry[0] >= 1.0:
            entry[0] -= 1.0
            return True
        return False

    def clear(self) -> None:
        self._entries.clear()


class LoadDetector:
    """Decides when we are 'under load': demand cookies above a handshake rate.

    Call :meth:`record` for each handshake message received; :attr:`under_load`
    is true while more than ``threshold`` arrived within the current
    one-second window, and for ``hold`` seconds after.
    """

    def __init__(self, threshold: int = DEFAULT_TUNABLES.under_load_initiations,
                 clock: Clock | None = None, hold: float = 1.0) -> None:
        if clock is None:
            raise ValueError("clock is required")
        self.threshold = threshold
        self.hold = hold
        self._clock = clock
        self._window_start = clock()
        self._count = 0
        self._until = float("-inf")

    def record(self) -> bool:
        """Count one handshake message; return whether we are now under load."""
        now = self._clock()
        if now - self._window_start >= 1.0 or now < self._window_start:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self.threshold:
            self._until = now + self.hold
        return now < self._until

    @property
    def under_load(self) -> bool:
        return self._clock() < self._until
