"""Processes of the lab: stop a process group, the CPU a process used, and
whether a process's namespace has a TCP port listening."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def kill_proc(proc: subprocess.Popen | None, grace: float = 2.0) -> None:
    """SIGTERM the process group of ``proc`` (started with
    ``start_new_session=True``), then SIGKILL it if it has not exited after
    ``grace`` seconds.  Nothing happens to a process that already exited."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (all threads), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the comm field may contain spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) + int(fields[12])


class CpuMeter:
    """CPU used by named processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._ticks0: dict[str, int | None] = {}

    def start(self) -> None:
        self._ticks0 = {n: cpu_ticks(p) for n, p in self.pids.items()}
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        """Percent of one core per process (None if it died meanwhile)."""
        wall = time.monotonic() - self._t0
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            t0, t1 = self._ticks0.get(name), cpu_ticks(pid)
            out[name] = (None if t0 is None or t1 is None or wall <= 0
                         else round(100.0 * (t1 - t0) / CLK_TCK / wall, 1))
        return out


def listening(pid: int, port: int, ns_inode: int) -> bool:
    """True when ``pid`` lives in the namespace ``ns_inode`` and that
    namespace has a TCP socket listening on ``port``.

    /proc/PID/net/tcp shows the sockets of PID's network namespace; the
    inode check guards against reading the root namespace in the instant
    before ``ip netns exec`` has switched namespaces."""
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino != ns_inode:
            return False
        for name in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                parts = line.split()
                local, state = parts[1], parts[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return False
    return False
