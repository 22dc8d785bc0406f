"""A settable clock: a real object, not a mock.  Tests move time explicitly."""

from __future__ import annotations


class Clock:
    """``clock()`` returns ``clock.t``; ``advance(dt)`` moves it on."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
