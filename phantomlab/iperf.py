"""iperf3 between hosts of the rig: the one iperf3 helper of the tests,
bench/ and ``phantom demo``.

* :class:`Server` -- ``iperf3 -s`` bound to an address in a host's namespace;
  ``start()`` returns once the namespace has the port listening (read from
  /proc, no probe connection, so a one-off ``-1`` server is not used up);
* :class:`Client` -- ``iperf3 -c`` in the background (``start()``, then
  ``result()``), for tests that change something while traffic runs;
* :func:`run` -- a whole run: a fresh server, the client to the end, the
  client retried while the server is not reachable yet, optionally the CPU
  of named processes measured over the client's run.

Every process is started in its own session and its process group is
killed on stop, so nothing outlives the helper (and the namespace's
deletion kills whatever a crash leaves).
"""

from __future__ import annotations

import json as _json
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Sequence

from .namespaces import RigError, as_ns
from .procs import CpuMeter, kill_proc, listening

DEFAULT_PORT = 5201
LISTEN_TIMEOUT = 5.0         # the server bound and listening
CLIENT_SLACK = 30.0          # client timeout beyond -t
SERVER_SLACK = 10.0          # a -J server's report after the client ends
CONNECT_ATTEMPTS = 5

__all__ = ["IperfError", "Result", "Server", "Client", "run", "client_argv", "DEFAULT_PORT"]


class IperfError(RigError):
    """An iperf3 server or client could not be run; the message says why."""


@dataclass
class Result:
    """One client run.  ``report`` is the client's -J report ({} without -J
    or when the output was not JSON); ``server`` the server's, when asked."""
    returncode: int | None
    stdout: str
    stderr: str
    report: dict = field(default_factory=dict)
    server: dict | None = None
    wall: float = 0.0
    cpu: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and "error" not in self.report

    @property
    def error(self) -> str:
        return self.report.get("error") or (self.stderr or self.stdout).strip()[-300:]

    @property
    def end(self) -> dict:
        return self.report.get("end", {})

    @property
    def intervals(self) -> list:
        return self.report.get("intervals", [])

    @property
    def received_bps(self) -> float:
        return self.end["sum_received"]["bits_per_second"]

    @property
    def received_bytes(self) -> int:
        return self.end["sum_received"]["bytes"]


def _parse(text: str) -> dict:
    try:
        out = _json.loads(text) if text and text.strip() else {}
    except ValueError:
        return {"error": "no JSON from iperf3"}
    return out if isinstance(out, dict) else {"error": "no JSON from iperf3"}


def client_argv(server_ip: str, *, port: int = DEFAULT_PORT, seconds: float = 5,
                json: bool = True, extra: Sequence[str] = (), nbytes: int | None = None) -> list[str]:
    """``nbytes``: send that many bytes (``-n``) instead of for ``seconds``
    (``-t``); for a test that checks an amount carried, not a duration,
    it ends as soon as that amount is across (``seconds`` still bounds the
    wait for it: the caller's timeout)."""
    end = ["-n", str(int(nbytes))] if nbytes is not None else ["-t", str(seconds)]
    argv = ["iperf3", "-c", server_ip, "-p", str(port), *end]
    if json:
        argv.append("-J")
    return argv + [str(a) for a in extra]


class Server:
    """``iperf3 -s [-1] [-J] [-B bind] -p port`` inside ``host``'s namespace
    (``bind`` None: every address, e.g. for a device that comes and goes)."""

    def __init__(self, host, bind: str | None, port: int = DEFAULT_PORT, *, one_off: bool = True,
                 json: bool = False) -> None:
        self.host, self.bind, self.port = host, bind, port
        self.one_off, self.json = one_off, json
        self.proc: subprocess.Popen | None = None

    @property
    def argv(self) -> list[str]:
        return (["iperf3", "-s"] + (["-1"] if self.one_off else []) + (["-J"] if self.json else [])
                + (["-B", self.bind] if self.bind else []) + ["-p", str(self.port)])

    def start(self, timeout: float = LISTEN_TIMEOUT) -> "Server":
        """Start the server; return once its port is listening."""
        inode = os.stat(as_ns(self.host).path).st_ino
        out = subprocess.PIPE if self.json else subprocess.DEVNULL
        self.proc = self.host.popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not listening(self.proc.pid, self.port, inode):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise IperfError(f"iperf3 server exited ({self.proc.returncode}): {err.strip()[:300]}")
            if time.monotonic() > deadline:
                self.stop()
                raise IperfError(f"iperf3 server not listening on {self.bind}:{self.port} "
                                 f"after {timeout}s")
            time.sleep(0.01)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def report(self, timeout: float = SERVER_SLACK) -> dict:
        """The -J report of a one-off server, once its client has ended."""
        try:
            out, _err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise IperfError("iperf3 server gave no report after the client ended") from None
        try:
            return _json.loads(out)
        except ValueError:
            raise IperfError(f"iperf3 server report is not JSON: {out[:200]!r}") from None

    def stop(self) -> None:
        """Kill the server's process group; idempotent."""
        if self.proc is None:
            return
        kill_proc(self.proc)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> "Server":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class Client:
    """``iperf3 -c`` in the background in ``host``'s namespace."""

    def __init__(self, host, server_ip: str, *, port: int = DEFAULT_PORT, seconds: float = 5,
                 json: bool = True, extra: Sequence[str] = (), nbytes: int | None = None) -> None:
        self.host = host
        self.argv = client_argv(server_ip, port=port, seconds=seconds, json=json, extra=extra,
                                nbytes=nbytes)
        self.seconds = seconds
        self.proc: subprocess.Popen | None = None
        self._t0 = 0.0

    def start(self) -> "Client":
        self._t0 = time.monotonic()
        self.proc = self.host.popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the client to end (default: its -t plus a slack) and
        return its result."""
        timeout = self.seconds + CLIENT_SLACK if timeout is None else timeout
        out, err = self.proc.communicate(timeout=timeout)
        return Result(self.proc.returncode, out, err, _parse(out),
                      wall=time.monotonic() - self._t0)

    def stop(self) -> None:
        kill_proc(self.proc)

    def __enter__(self) -> "Client":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def run(client_host, server_host, server_ip: str, *, port: int = DEFAULT_PORT,
        seconds: float = 5, extra: Sequence[str] = (), server_report: bool = False,
        cpu_pids: dict[str, int] | None = None, attempts: int = CONNECT_ATTEMPTS,
        check: bool = False, nbytes: int | None = None) -> Result:
    """One iperf3 run from ``client_host`` to a fresh one-off server on
    ``server_host`` bound to ``server_ip``.

    The client is retried (with a fresh server) while the server cannot be
    reached yet.  ``cpu_pids`` names processes whose CPU is measured over
    the client's run; ``server_report`` adds the server's -J report;
    ``nbytes``: that many bytes (``-n``) instead of ``seconds`` (``-t``).  With
    ``check`` a failed run raises IperfError; otherwise the Result says."""
    argv = client_argv(server_ip, port=port, seconds=seconds, json=True,
                       extra=["--connect-timeout", "3000", *extra], nbytes=nbytes)
    res = Result(None, "", "not run")
    for _attempt in range(max(1, attempts)):
        with Server(server_host, server_ip, port, one_off=True, json=server_report) as srv:
            meter = CpuMeter(cpu_pids or {})
            meter.start()
            t0 = time.monotonic()
            try:
                cp = client_host.run(argv, check=False, timeout=seconds + CLIENT_SLACK)
            except RigError as exc:
                raise IperfError(f"iperf3 client: {exc}") from None
            res = Result(cp.returncode, cp.stdout, cp.stderr, _parse(cp.stdout),
                         wall=time.monotonic() - t0, cpu=meter.stop())
            if not res.ok:
                if "unable to connect" in res.error or "Connection refused" in res.error:
                    continue                 # leaving the with reaps this server; try a fresh one
                if check:
                    raise IperfError(f"iperf3 client failed: {res.error}")
                return res
            if server_report:
                res.server = srv.report()
            return res
    if check:
        raise IperfError(f"iperf3 client could not connect after {attempts} attempts: {res.error}")
    return res
