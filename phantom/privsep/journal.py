"""The helper's journal: what it installed, for crash recovery.

One JSON line per change, appended with one ``write()`` on an ``O_APPEND``
descriptor: ``{"+": ENTRY}`` *before* the helper installs something,
``{"-": ENTRY}`` after it removed it.  Replaying the lines gives what may
still be in the kernel; a torn last line (the helper killed mid-write) is
skipped.  When everything is removed the file is truncated.

The helper opens the file while it is still root (in the daemon's state
directory) and keeps the descriptor, so it can write after it dropped to
the daemon's user.  At start it replays what a killed predecessor left and
removes each entry that the kernel still holds with our marker (routes and
rules carry protocol :data:`~phantom.privsep.protocol.RTPROT_PHANTOM`;
the nftables table is ours by its name) before it answers the daemon.

ENTRY forms::

    {"route": {"prefix": "10.9.0.0/16", "table": 254, "ifindex": 7}}
    {"rule": {"family": 4, "priority": 5180, "table": 254, "fwmark": null,
              "invert": false, "suppress_prefixlength": 0}}
    {"addr": {"address": "10.99.0.1/24", "ifindex": 7}}
    {"link": {"ifindex": 7, "was_up": false}}
    {"nft": "phantom_phantom0"}
    {"forwarding": {"family": 4, "previous": "0"}}
    {"resolved": {"ifindex": 7}}
"""

from __future__ import annotations

import json
import os
from typing import Iterable

MAX_JOURNAL = 4 * 1024 * 1024     # bytes replayed at most (a bigger file: its head only)


def _key(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def replay(text: str) -> list:
    """The entries added and not removed, in the order they were added."""
    live: dict = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue                                  # a torn line
        if not isinstance(rec, dict) or len(rec) != 1:
            continue
        (sign, entry), = rec.items()
        if not isinstance(entry, dict) or len(entry) != 1:
            continue
        k = _key(entry)
        if sign == "+":
            live[k] = entry
        elif sign == "-":
            live.pop(k, None)
    return list(live.values())


class Journal:
    """Append-only, on a descriptor opened once (see the module's text)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.live = 0

    @classmethod
    def open(cls, path: str) -> "Journal":
        d = os.path.dirname(path)
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        return cls(fd)

    def read(self) -> list:
        os.lseek(self.fd, 0, os.SEEK_SET)
        data = os.read(self.fd, MAX_JOURNAL)
        return replay(data.decode("utf-8", "replace"))

    def _write(self, sign: str, entry: dict) -> None:
        os.write(self.fd, (json.dumps({sign: entry}, sort_keys=True, separators=(",", ":")) + "\n").encode())

    def add(self, entry: dict) -> None:
        self._write("+", entry)
        self.live += 1

    def remove(self, entry: dict) -> None:
        self._write("-", entry)
        self.live = max(0, self.live - 1)
        if self.live == 0:
            self.clear()

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)
        self.live = 0

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def entries_of(kind: str, entries: Iterable) -> list:
    return [e[kind] for e in entries if kind in e]
