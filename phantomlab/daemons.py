"""phantomd (or any daemon with an HTTP status route) inside a namespace:
start, readiness, API calls, kill and restart, logs."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .namespaces import REGISTRY, HttpReply, Namespace, RigError, as_ns

# How long a started daemon may take to answer its API.  A quiet machine needs
# under a second; CI's four workers on two cores have been seen past 10 s
# (phantomd, then its privileged helper, each a fresh interpreter).  Readiness
# is polled, so a generous bound costs nothing when the daemon is quick.
READY_TIMEOUT = 30.0

if TYPE_CHECKING:
    from .topology import Host

__all__ = ["DaemonExited", "DaemonProcess", "phantomd_command", "first_error_line", "stop_all"]


class DaemonExited(RigError):
    """A daemon process exited while we waited for it to become ready."""


# ---------------------------------------------------------------------------
# Daemons
# ---------------------------------------------------------------------------

def phantomd_command() -> list[str]:
    """argv prefix that starts phantomd: ``<sys.prefix>/bin/phantomd`` if
    installed there, else ``python -m phantom.node``."""
    exe = Path(sys.prefix) / "bin" / "phantomd"
    if exe.exists() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-m", "phantom.node"]


class DaemonProcess:
    """A daemon (phantomd by default) running inside a namespace.

    stdout and stderr go to ``log_path`` (appended across restarts, one
    ``=== start #n`` line per start).  Readiness is ``GET /status`` on
    ``http_host:http_port`` (default 127.0.0.1:4567) inside the namespace answering 200.
    """

    def __init__(self, ns: "Namespace | Host", args: Sequence[str], *, http_port: int = 4567,
                 http_host: str = "127.0.0.1", log_path: str | os.PathLike | None = None, name: str = "phantomd",
                 executable: Sequence[str] | None = None, env: dict | None = None,
                 token: str | None = None, token_file: str | os.PathLike | None = None,
                 cwd: str | os.PathLike | None = None) -> None:
        self.ns = as_ns(ns)
        self.name = name
        self.args = [str(a) for a in args]
        self.command = list(executable) if executable else phantomd_command()
        self.http_port = http_port
        self.http_host = http_host
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self._token = token
        self.token_file = Path(token_file) if token_file else None
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"DaemonProcess({self.name!r}, ns={self.ns.name!r}, pid={self.pid})"

    @property
    def argv(self) -> list[str]:
        return self.command + self.args

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def token(self) -> str | None:
        if self._token is not None:
            return self._token
        if self.token_file and self.token_file.exists():
            return self.token_file.read_text().strip()
        return None

    def start(self) -> "DaemonProcess":
        if self.running:
            raise RigError(f"{self!r} already running")
        self.starts += 1
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"=== start #{self.starts}: {shlex.join(self.argv)} "
                      f"(netns {self.ns.name})\n".encode())
            log.flush()
            self.proc = self.ns.popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                      start_new_session=True)
        REGISTRY.add(self)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT, path: str = "/status") -> None:
        """Poll ``GET path`` until it answers 200.  Raises DaemonExited (with
        the log tail) as soon as the process exits, RigError on timeout."""
        if self.proc is None:
            raise RigError(f"{self!r} was never started")
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise DaemonExited(f"{self.name} exited with code {code} before it was ready "
                                   f"(netns {self.ns.name}); log tail:\n{self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RigError(f"{self.name} not ready after {timeout}s ({last}); "
                               f"log tail:\n{self.log_tail()}")
            try:
                status, body = self.ns.http("GET", path, port=self.http_port,
                                            host=self.http_host, timeout=max(0.1, min(1.0, left)))
                if status == 200:
                    return
                last = f"GET {path} -> {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"GET {path}: {exc.__class__.__name__}: {exc}"
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def api(self, method: str, path: str, json_body: object = None,
            timeout: float = 5.0) -> HttpReply:
        """Call this daemon's HTTP API (with its token when known)."""
        return self.ns.http(method, path, port=self.http_port, host=self.http_host, token=self.token,
                            json_body=json_body, timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int | None:
        """Send ``sig`` to the daemon's process group and wait for it to exit.
        Returns the exit code (negative signal number when killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                raise RigError(f"{self!r} survived SIGKILL")
            return None

    def terminate(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        code = self.kill(signal.SIGTERM, timeout)
        if self.running:
            code = self.kill(signal.SIGKILL)
        return code

    def restart(self, sig: int = signal.SIGKILL, wait: bool = True,
                timeout: float = READY_TIMEOUT) -> "DaemonProcess":
        """Stop (default: SIGKILL) and start again with the same argv (so the
        same config and key); waits for readiness unless ``wait`` is False."""
        if self.running:
            self.kill(sig)
            if self.running:
                self.kill(signal.SIGKILL)
        self.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        """Terminate (SIGTERM, grace, SIGKILL) and forget.  Idempotent."""
        REGISTRY.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM, timeout=3.0)
            if self.running:
                self.kill(signal.SIGKILL)

    _rig_close = stop

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def stop_all(daemons: "Sequence[DaemonProcess]", grace: float = 3.0) -> None:
    """Stop several daemons at once, with what :meth:`DaemonProcess.stop`
    does to each (SIGTERM to its process group, ``grace`` seconds to exit,
    then SIGKILL), but the grace periods overlap instead of adding up: a
    test's teardown of seven daemons costs one daemon's exit, not seven."""
    live = []
    for d in daemons:
        REGISTRY.discard(d)
        if d.proc is not None and d.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.proc.pid, signal.SIGTERM)
            live.append(d)
    deadline = time.monotonic() + grace
    for d in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(max(0.0, deadline - time.monotonic()))
    for d in live:
        if d.running:
            d.kill(signal.SIGKILL)


_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b|\berror\b|\bfailed\b|\bcannot\b", re.I)


def first_error_line(log: str) -> str:
    """The line of a daemon log that best says why it failed."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith("=== start")]
    for ln in lines:                       # "ImportError: ..." style (end of a traceback)
        if re.match(r"^[\w.]*(Error|Exception|Exit)\b.*:", ln):
            return ln[:200]
    for ln in lines:
        if _ERROR_LINE.search(ln) and not ln.startswith("Traceback"):
            return ln[:200]
    return lines[-1][:200] if lines else "no output"
