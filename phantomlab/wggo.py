"""Stock WireGuard (Debian's wireguard-go and wg) inside the rig's namespaces.

:class:`WgSide` runs ``wireguard-go -f`` in a host's namespace (waits for its
control socket, kills it and removes the socket on stop; everything still
running is stopped at exit); :class:`WgDevice` adds what tests need: keys,
addresses, ``wg set`` for a peer, ``wg show dump``.  The ``wg_factory``
fixture (tests/conftest.py) stops every device a test made.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phantom import crypto
from phantom.keys import encode_key

from .procs import kill_proc
from .namespaces import RigError

WG_SOCK_DIR = Path("/var/run/wireguard")
WG_SOCKET_TIMEOUT = 5.0      # wireguard-go created its control socket

WG_PORT = 51820
WG4 = "10.99.0.%d"   # the same tunnel net as phantomlab/templates.py
WG6 = "fd99::%d"
_counter = [0]


def missing() -> Optional[str]:
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            return "%s is not installed (Debian: wireguard-go, wireguard-tools)" % tool
    return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def ifname(tag: str = "t") -> str:
    """A machine-unique device name: the control sockets share /var/run/wireguard,
    so the name carries this process's whole pid (base 36, so that pid and
    counter cannot run together, e.g. pid 1998 + device 48 vs pid 19984 +
    device 8, as pytest-xdist workers and other users' runs would) and a counter."""
    _counter[0] += 1
    name = "wg%s%sx%d" % (tag, _base36(os.getpid()), _counter[0])
    if len(name) > 15:
        raise RuntimeError("interface name %s is too long" % name)
    return name


def keypair() -> tuple[bytes, bytes]:
    priv = crypto.x25519_private()
    return priv, crypto.x25519_public(priv)


def write_secret(path: Path, raw: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(raw) + "\n")
    return path


class WgDevice:
    """One wireguard-go device in ``host``'s namespace, configured with ``wg``."""

    def __init__(self, host, tmp_path: Path, *, index: int, private: bytes,
                 listen_port: int = WG_PORT, mtu: int = 1420, ipv6: bool = True):
        self.host = host
        self.index = index
        self.private = private
        self.public = crypto.x25519_public(private)
        self.tmp = tmp_path
        self.listen_port = listen_port
        self.name = ifname()
        self.side = WgSide(host, self.name, tmp_path / ("%s.log" % self.name))
        self.side.start()
        key = write_secret(tmp_path / ("%s.key" % self.name), private)
        self.wg("set", self.name, "listen-port", str(listen_port), "private-key", str(key))
        lines = ["addr add %s/24 dev %s" % (self.ip4, self.name)]
        if ipv6:
            lines.append("addr add %s/64 dev %s nodad" % (self.ip6, self.name))
        lines.append("link set dev %s mtu %d up" % (self.name, mtu))
        host.ns.ip_batch(lines)

    @property
    def ip4(self) -> str:
        return WG4 % self.index

    @property
    def ip6(self) -> str:
        return WG6 % self.index

    def wg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.host.run(["wg", *args], check=check, timeout=10)

    def set_peer(self, public: bytes, *, allowed_ips=(), endpoint: Optional[str] = None,
                 preshared_key: Optional[bytes] = None, keepalive: int = 0) -> None:
        args = ["set", self.name, "peer", encode_key(public)]
        if allowed_ips:
            args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint:
            args += ["endpoint", endpoint]
        if preshared_key is not None:
            path = write_secret(self.tmp / ("%s.psk" % self.name), preshared_key)
            args += ["preshared-key", str(path)]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        self.wg(*args)

    def show_dump(self) -> list[list[str]]:
        out = self.wg("show", self.name, "dump").stdout
        return [line.split("\t") for line in out.strip().splitlines()]

    def latest_handshake(self, public: bytes) -> int:
        for row in self.show_dump()[1:]:
            if row[0] == encode_key(public):
                return int(row[4])
        return 0

    def log_tail(self) -> str:
        return self.side.log_tail()

    def stop(self) -> None:
        self.side.stop()


_WG_LIVE: list["WgSide"] = []      # for the atexit path


def wait_listening(path: Path, proc: subprocess.Popen, timeout: float, what: str,
                   log_tail=lambda: "") -> None:
    """Until the control socket ``path`` accepts a connection.

    Its file appears at bind(), before listen(); a `wg` run in between gets
    ECONNREFUSED, and stock `wg` then *unlinks* the socket as stale and falls
    back to the kernel ("Unable to modify interface: Protocol not supported").
    So the socket counts only once a connect() succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RigError(f"{what} exited ({proc.returncode}): {log_tail()}")
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as s:
            try:
                s.connect(str(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        if time.monotonic() > deadline:
            raise RigError(f"{what} made no listening control socket {path} in {timeout}s: "
                           f"{log_tail()}")
        time.sleep(0.01)


@dataclass
class WgSide:
    """``wireguard-go -f IFNAME`` in ``host``'s namespace, logging to ``log_path``."""
    host: object                    # netns.Host
    ifname: str
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def sock(self) -> Path:
        return WG_SOCK_DIR / f"{self.ifname}.sock"

    def start(self) -> None:
        WG_SOCK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.sock.exists():                      # left by a SIGKILLed run of ours
            self.sock.unlink()
        env = dict(os.environ, LOG_LEVEL="error")
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen(["wireguard-go", "-f", self.ifname], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        _WG_LIVE.append(self)
        wait_listening(self.sock, self.proc, WG_SOCKET_TIMEOUT,
                       f"wireguard-go -f {self.ifname}", self.log_tail)

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Kill the process, remove its control socket.  Idempotent."""
        kill_proc(self.proc)
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        with contextlib.suppress(ValueError):
            _WG_LIVE.remove(self)


def stop_all() -> None:
    """Stop every wireguard-go this process started and has not stopped."""
    for side in list(_WG_LIVE):
        with contextlib.suppress(Exception):
            side.stop()


atexit.register(stop_all)
