"""Replay window: a numbered vector table and a comparison with a set-based model."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phantom import constants
from phantom.dataplane.replay import RING_BITS, ReplayWindow

W = constants.REPLAY_WINDOW_SIZE
L = constants.REJECT_AFTER_MESSAGES
X = 3 * RING_BITS + 12345            # a far jump: more than a whole ring ahead
H = RING_BITS // 2                   # a jump by half the ring
U64_MAX = 2 ** 64 - 1

# (counter, accepted) applied in order to ONE window.  Numbered so a failure
# names its row.  Comments say what each row exercises.
VECTORS = [
    (0, True),            # 1  zero on a fresh window
    (0, False),           # 2  duplicate of zero
    (1, True),            # 3  in order
    (2, True),            # 4  in order
    (2, False),           # 5  duplicate of the newest
    (1, False),           # 6  duplicate, older
    (9, True),            # 7  gap ahead
    (5, True),            # 8  late, inside the window
    (5, False),           # 9  late duplicate
    (3, True),            # 10 late
    (9, False),           # 11 duplicate of the newest
    (63, True),           # 12 last bit of ring block 0
    (64, True),           # 13 first bit of ring block 1
    (62, True),           # 14 late, block 0 again
    (64, False),          # 15 duplicate across a block boundary
    (W - 1, True),        # 16 window is now 0..W-1: counter 0 sits exactly on the edge
    (4, True),            # 17 unseen, deep in the window
    (W, True),            # 18 window is now 1..W: 0 has just fallen out
    (0, False),           # 19 one beyond the edge
    (6, True),            # 20 unseen, inside
    (1, False),           # 21 on the edge, but seen (row 3)
    (X, True),            # 22 far jump (more than the ring): everything older is gone
    (X - W, False),       # 23 one beyond the edge, never seen
    (X - W + 1, True),    # 24 exactly on the edge, never seen
    (X - W + 1, False),   # 25 duplicate on the edge
    (X - W + 2, True),    # 26 just inside the edge
    (W + 1, False),       # 27 too old (never seen, far behind)
    (10, False),          # 28 too old
    (X + 1, True),        # 29 in order after the jump
    (X - W + 1, False),   # 30 the old edge is now one beyond the edge
    (X - W + 2, False),   # 31 on the new edge, seen (row 26)
    (X - W + 3, True),    # 32 just inside the new edge (X - W + 2), unseen
    (X + H, True),        # 33 jump by half the ring: a partial slide
    (X + 1, False),       # 34 still remembered after the partial slide
    (X, False),           # 35 still remembered after the partial slide
    (X + H - W + 1, True),  # 36 exactly on the new edge, unseen
    (X + H - W, False),   # 37 one beyond the new edge
    (X + H - 1, True),    # 38 just behind the newest
    (L - 1, True),        # 39 the largest counter allowed (REJECT_AFTER_MESSAGES - 1)
    (L - 1, False),       # 40 its duplicate
    (L, False),           # 41 REJECT_AFTER_MESSAGES itself is refused
    (U64_MAX, False),     # 42 the largest u64 is refused
    (L + 1, False),       # 43 past the limit
    (L - 2, True),        # 44 late, below the maximum
    (L - W, True),        # 45 exactly on the edge below the maximum
    (L - W - 1, False),   # 46 one beyond the edge below the maximum
    (X + H, False),       # 47 far behind now
    (0, False),           # 48 zero, far behind
]


def test_window_is_large_enough():
    assert W >= 2048
    assert RING_BITS == W + 64 and (RING_BITS & (RING_BITS - 1)) == 0


def test_vector_table():
    w = ReplayWindow()
    for number, (counter, expected) in enumerate(VECTORS, 1):
        last = w.last
        assert w.check(counter) is expected, "row %d: check(%d)" % (number, counter)
        assert w.last == last, "row %d: check() changed state" % number
        assert w.update(counter) is expected, "row %d: update(%d)" % (number, counter)
        # A counter just accepted is never accepted again.
        assert w.check(counter) is False, "row %d: accepted twice" % number


def test_ring_slots_are_reused_after_a_slide():
    # c and c + RING_BITS share a ring bit: the slide must clear it.
    w = ReplayWindow()
    for c in (5, 5 + RING_BITS, 5 + 2 * RING_BITS, 5 + 3 * RING_BITS):
        assert w.update(c)
    assert not w.update(5 + 2 * RING_BITS)      # out of the window now
    assert w.update(5 + 3 * RING_BITS - 64)     # inside, shares no bit with an accepted one
    assert not w.update(5 + 3 * RING_BITS - 64)


def test_reset_forgets_everything():
    w = ReplayWindow()
    for c in (0, 1, 2, 100_000):
        assert w.update(c)
    w.reset()
    assert w.last == 0
    for c in (0, 1, 2, 100_000):
        assert w.update(c)


def test_check_never_changes_state():
    w = ReplayWindow()
    assert w.check(10 ** 6)
    assert w.last == 0
    assert w.update(0)


def test_negative_counter_is_refused():
    w = ReplayWindow()
    assert not w.check(-1)
    assert not w.update(-1)


class SetModel:
    """Obviously correct: accepted iff below the limit, never seen, and
    counter > max_seen - W."""

    def __init__(self):
        self.seen = set()
        self.max_seen = None

    def check(self, c):
        if not 0 <= c < L or c in self.seen:
            return False
        return self.max_seen is None or c > self.max_seen - W

    def update(self, c):
        ok = self.check(c)
        if ok:
            self.seen.add(c)
            self.max_seen = c if self.max_seen is None else max(self.max_seen, c)
        return ok


def _counter_for(op, model):
    kind, value = op
    base = model.max_seen or 0
    if kind == "abs":
        return value
    if kind == "rel":          # around the window's edge and the newest
        return max(0, base + value)
    if kind == "jump":
        return base + value
    return max(0, L - 1 - value)   # "limit": near REJECT_AFTER_MESSAGES


OPS = st.one_of(
    st.tuples(st.just("abs"), st.integers(0, 3 * RING_BITS)),
    st.tuples(st.just("rel"), st.sampled_from([-W - 1, -W, -W + 1, -W + 2, -1, 0, 1, 63, 64, 65])),
    st.tuples(st.just("rel"), st.integers(-W - 200, 200)),
    st.tuples(st.just("jump"), st.integers(0, 3 * RING_BITS)),
    st.tuples(st.just("limit"), st.integers(-3, W + 3)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(OPS, st.booleans()), min_size=1, max_size=200))
def test_matches_set_model_hypothesis(ops):
    w, model = ReplayWindow(), SetModel()
    for op, only_check in ops:
        c = _counter_for(op, model)
        if only_check:
            assert w.check(c) == model.check(c), c
        else:
            assert w.update(c) == model.update(c), c


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_set_model_random_walk(seed):
    # A long run of mostly-forward traffic with reordering, duplicates and jumps,
    # like a real receive path, checked at every step.
    rnd = random.Random(seed)
    w, model = ReplayWindow(), SetModel()
    nxt = 0
    for _ in range(30_000):
        r = rnd.random()
        if r < 0.6:
            c = nxt
            nxt += rnd.choice((1, 1, 1, 2, 3))
        elif r < 0.8:
            c = max(0, nxt - rnd.randrange(W + 100))     # reordered or replayed
        elif r < 0.95:
            c = max(0, nxt - W + rnd.randrange(-3, 4))   # around the edge
        else:
            nxt += rnd.randrange(RING_BITS * 2)          # a burst of loss
            c = nxt
        assert w.check(c) == model.check(c)
        assert w.update(c) == model.update(c), (seed, c)
