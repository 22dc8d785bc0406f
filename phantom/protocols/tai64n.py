"""TAI64N timestamps for replay protection of handshake initiations.

A timestamp is 12 bytes: a big-endian u64 label ``2**62 + seconds`` followed
by a big-endian u32 of nanoseconds (< 10**9).  Because both fields are
big-endian and fixed-size, later timestamps compare greater as plain bytes.

``seconds`` is the Unix time taken from an injected wall clock (no leap
second table: only the order of timestamps from one sender matters, and a
responder only ever compares a peer's timestamp with that same peer's
previous one).

:class:`Tai64nClock` makes every timestamp it emits strictly greater than the
previous one, even when the wall clock steps back, so that a responder which
accepts only increasing timestamps never rejects a genuine new initiation
from a running process.  Nanoseconds are rounded down to a multiple of
``granularity_ns`` (default 2**24 ns, about 16.8 ms, as WireGuard does) so
the timestamp does not leak a precise clock reading.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from typing import Callable

TAI64N = struct.Struct(">QI")
SIZE = TAI64N.size            # 12
BASE = 2 ** 62                # TAI64 label of the Unix epoch (leap seconds ignored)
NANOS_PER_SECOND = 10 ** 9
DEFAULT_GRANULARITY_NS = 2 ** 24
ZERO = bytes(SIZE)            # earlier than any timestamp this module emits


class TimestampError(ValueError):
    """Bytes that are not a valid TAI64N timestamp."""


def encode(seconds: int, nanoseconds: int = 0) -> bytes:
    """The 12-byte TAI64N label for ``seconds`` since the Unix epoch."""
    if not 0 <= nanoseconds < NANOS_PER_SECOND:
        raise TimestampError("nanoseconds out of range")
    label = BASE + seconds
    if not 0 <= label < 2 ** 63:
        raise TimestampError("seconds out of range")
    return TAI64N.pack(label, nanoseconds)


def decode(timestamp: bytes) -> tuple[int, int]:
    """Return (seconds since the Unix epoch, nanoseconds); raise TimestampError."""
    if len(timestamp) != SIZE:
        raise TimestampError("TAI64N timestamp must be %d bytes" % SIZE)
    label, nanos = TAI64N.unpack(bytes(timestamp))
    if label >= 2 ** 63 or nanos >= NANOS_PER_SECOND:
        raise TimestampError("not a valid TAI64N timestamp")
    return label - BASE, nanos


def from_float(seconds: float, granularity_ns: int = 1) -> bytes:
    """Encode a float Unix time, nanoseconds rounded down to the granularity."""
    whole = math.floor(seconds)
    nanos = min(int((seconds - whole) * NANOS_PER_SECOND), NANOS_PER_SECOND - 1)
    nanos -= nanos % granularity_ns
    return encode(whole, nanos)


def to_float(timestamp: bytes) -> float:
    secs, nanos = decode(timestamp)
    return secs + nanos / NANOS_PER_SECOND


def compare(a: bytes, b: bytes) -> int:
    """-1, 0 or 1 as ``a`` is earlier than, equal to or later than ``b``."""
    ka, kb = decode(a), decode(b)
    return (ka > kb) - (ka < kb)


def is_after(a: bytes, b: bytes) -> bool:
    """True when ``a`` is strictly later than ``b`` (the replay rule)."""
    return compare(a, b) > 0


def _successor(timestamp: bytes) -> bytes:
    secs, nanos = decode(timestamp)
    nanos += 1
    if nanos == NANOS_PER_SECOND:
        secs, nanos = secs + 1, 0
    return encode(secs, nanos)


class Tai64nClock:
    """Strictly increasing TAI64N timestamps from an injectable wall clock.

    ``clock`` returns wall-clock seconds as a float (default ``time.time``).
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 granularity_ns: int = DEFAULT_GRANULARITY_NS) -> None:
        if not 1 <= granularity_ns <= NANOS_PER_SECOND:
            raise ValueError("granularity_ns must be in 1..10**9")
        self._clock = clock
        self._granularity = granularity_ns
        self._last = ZERO
        self._lock = threading.Lock()

    @property
    def last(self) -> bytes:
        """The last timestamp emitted (ZERO before the first)."""
        return self._last

    def now(self) -> bytes:
        """A timestamp strictly later than every earlier one from this clock."""
        with self._lock:
            ts = from_float(self._clock(), self._granularity)
            if ts <= self._last:      # wall clock stepped back or same tick
                ts = _successor(self._last)
            self._last = ts
            return ts


_process_clock = Tai64nClock()


def now() -> bytes:
    """A timestamp from the process-wide clock (strictly increasing per process)."""
    return _process_clock.now()
