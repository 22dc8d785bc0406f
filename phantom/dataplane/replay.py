"""Anti-replay sliding window for transport counters, in the style of RFC 6479.

The window is a ring of ``RING_BLOCKS`` machine words (``BLOCK_BITS`` = 64
bits each).  Bit ``c % RING_BITS`` records whether counter ``c`` was seen.
When the highest counter seen (``last``) moves forward, only the whole blocks
it moves over are zeroed: no bit shifting, at most ``RING_BLOCKS`` word
writes however far it jumps, and usually none.

Acceptance rule (the contract the Cython fast path must match exactly)::

    accept(c)  <=>  c < REJECT_AFTER_MESSAGES
                    and c > last - REPLAY_WINDOW_SIZE     (inside the window)
                    and c was not accepted before

``last`` starts at 0 with nothing seen, so the very first packet may carry
any counter, 0 included.  The window therefore holds the
``REPLAY_WINDOW_SIZE`` counters ``last - REPLAY_WINDOW_SIZE + 1 .. last``.
The ring is one block larger than the window (RFC 6479 section 2): the block
holding ``last`` is only partly inside the window, and the oldest counter the
window admits still has its own, uncleared bit.  (WireGuard admits
``last - window`` as well; Phantom's window is exactly ``window`` counters
wide, one fewer.)

Use: :meth:`ReplayWindow.check` before decrypting (cheap, no state change),
:meth:`ReplayWindow.update` only after the packet authenticated.  The receive
path must never update on an unauthenticated counter, or a forged packet with
a huge counter would slide the window past all real traffic.
"""

from __future__ import annotations

from phantom import constants

BLOCK_BITS = 64                      # bits per ring word (a machine word)
BLOCK_SHIFT = 6                      # log2(BLOCK_BITS)
BIT_MASK = BLOCK_BITS - 1
WINDOW_SIZE = constants.REPLAY_WINDOW_SIZE
RING_BITS = WINDOW_SIZE + BLOCK_BITS
RING_BLOCKS = RING_BITS // BLOCK_BITS
RING_MASK = RING_BLOCKS - 1
LIMIT = constants.REJECT_AFTER_MESSAGES

if RING_BITS % BLOCK_BITS or RING_BLOCKS & RING_MASK:
    raise ImportError("REPLAY_WINDOW_SIZE + %d must be a power-of-two multiple of %d bits"
                      % (BLOCK_BITS, BLOCK_BITS))
if WINDOW_SIZE < 2048:
    raise ImportError("REPLAY_WINDOW_SIZE must be at least 2048 packets")

_ZERO_RING = (0,) * RING_BLOCKS


class ReplayWindow:
    """Sliding replay window over 64-bit transport counters (one per keypair)."""

    __slots__ = ("_ring", "_last")

    def __init__(self) -> None:
        self._ring = list(_ZERO_RING)
        self._last = 0

    @property
    def last(self) -> int:
        """The highest counter accepted so far (0 when none)."""
        return self._last

    def reset(self) -> None:
        """Forget every counter: the state of a fresh window."""
        self._ring[:] = _ZERO_RING
        self._last = 0

    def check(self, counter: int) -> bool:
        """Would ``counter`` be accepted now?  Changes nothing."""
        if counter >= LIMIT or counter < 0:
            return False
        last = self._last
        if counter > last:
            return True
        if last - counter >= WINDOW_SIZE:
            return False
        return not (self._ring[(counter >> BLOCK_SHIFT) & RING_MASK] >> (counter & BIT_MASK)) & 1

    def update(self, counter: int) -> bool:
        """Accept and record ``counter``; False (and no change) if it is a replay,
        too old, or past the message limit.  Call only for authenticated packets."""
        if counter >= LIMIT or counter < 0:
            return False
        ring = self._ring
        last = self._last
        block = counter >> BLOCK_SHIFT
        if counter > last:
            # Slide forward: zero the blocks between last's block (exclusive)
            # and counter's block (inclusive); a jump past the whole ring
            # zeroes it all.
            cur = last >> BLOCK_SHIFT
            if block - cur >= RING_BLOCKS:
                ring[:] = _ZERO_RING
            else:
                while cur < block:
                    cur += 1
                    ring[cur & RING_MASK] = 0
            self._last = counter
        elif last - counter >= WINDOW_SIZE:
            return False
        index = block & RING_MASK
        bit = 1 << (counter & BIT_MASK)
        word = ring[index]
        if word & bit:
            return False
        ring[index] = word | bit
        return True

    def __repr__(self) -> str:
        return "<ReplayWindow last=%d window=%d>" % (self._last, WINDOW_SIZE)
