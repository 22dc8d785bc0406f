"""Bounded polling: wait for a condition instead of sleeping."""

from __future__ import annotations

import time


# Every 0.1 s: most predicates ask a daemon's HTTP API (about 1.3 ms of CPU a
# request on each side), and on this 2-core machine the suite is CPU-bound, so
# polling twice as often costs more than the 50 ms it could save a wait.
POLL_INTERVAL = 0.1


def wait_for(predicate, timeout: float = 10.0, interval: float = POLL_INTERVAL,
             what: str = "condition"):
    """Call ``predicate`` until it returns something true (returned) or
    ``timeout`` seconds pass (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)
