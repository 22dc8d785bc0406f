"""Recent events for the dashboard: the daemon's own INFO-and-above log
records (peer state changes, handshakes given up, firewall edits, reloads),
kept in a bounded ring in memory.

It is a :class:`logging.Handler` on the ``phantom`` logger, so the event
list needs no hook in the engine or the data path and sees exactly what the
log says.  Messages pass through :func:`phantom.logsetup.redact` when they
are recorded (and the API redacts every response again).
"""

from __future__ import annotations

import collections
import logging
import threading

from .. import logsetup

DEFAULT_SIZE = 200


class EventLog(logging.Handler):
    def __init__(self, size: int = DEFAULT_SIZE, level: int = logging.INFO):
        super().__init__(level)
        self._ring: collections.deque = collections.deque(maxlen=size)
        self._seq = 0
        self._lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = logsetup.redact(record.getMessage())
        except Exception:            # a bad format string must not break logging
            message = str(record.msg)
        with self._lock_:
            self._seq += 1
            self._ring.append({"seq": self._seq, "time": round(record.created, 3),
                               "level": record.levelname.lower(), "source": record.name,
                               "message": message[:500]})

    def recent(self, since: int = 0, limit: int = DEFAULT_SIZE) -> list:
        with self._lock_:
            items = [e for e in self._ring if e["seq"] > since]
        return items[-limit:]


def attach(logger_name: str = "phantom", size: int = DEFAULT_SIZE) -> EventLog:
    """A new EventLog on ``logger_name``; :func:`detach` removes it."""
    h = EventLog(size)
    logging.getLogger(logger_name).addHandler(h)
    return h


def detach(handler: EventLog, logger_name: str = "phantom") -> None:
    logging.getLogger(logger_name).removeHandler(handler)
