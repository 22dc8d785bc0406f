"""Stock WireGuard (Debian's wireguard-go and wg) inside the rig's namespaces.

Reuses bench/e2e.py's :class:`WgSide` (start ``wireguard-go -f``, wait for its
control socket, kill it and remove the socket on stop) and adds what tests
need: keys, ``wg set`` for a peer, ICMP echo packets for the sans-IO tests.
Every :class:`WgDevice` is stopped by the ``wg_factory`` fixture.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from phantom import crypto
from phantom.control.keys import encode_key
from phantom.dataplane import packet as pkt

_E2E_PATH = Path(__file__).resolve().parent.parent / "bench" / "e2e.py"
_spec = importlib.util.spec_from_file_location("phantom_bench_e2e", _E2E_PATH)
e2e = sys.modules.get("phantom_bench_e2e")
if e2e is None:
    e2e = importlib.util.module_from_spec(_spec)
    sys.modules["phantom_bench_e2e"] = e2e
    _spec.loader.exec_module(e2e)

WG_PORT = 51820
WG4 = "10.99.0.%d"   # the same tunnel net as tests/tunnelkit.py
WG6 = "fd99::%d"
_counter = [0]


def missing() -> Optional[str]:
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            return "%s is not installed (Debian: wireguard-go, wireguard-tools)" % tool
    return None


def ifname(tag: str = "t") -> str:
    """A machine-unique device name: the control sockets share /var/run/wireguard."""
    _counter[0] += 1
    return ("wg%s%d%s" % (tag, os.getpid() % 100000, _counter[0]))[:15]


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
        self.side = e2e.WgSide(host, self.name, tmp_path / ("%s.log" % self.name))
        e2e.WG_SOCK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
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


# --- ICMP echo, for tests that seal packets themselves ----------------------------------------
_ICMP_ECHO = struct.Struct("!BBHHH")


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes = b"phantom-wg",
              reply: bool = False) -> bytes:
    """An IPv4 ICMP or IPv6 ICMPv6 echo request (or reply) with correct checksums."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        body = bytearray(_ICMP_ECHO.pack(0 if reply else 8, 0, 0, ident, seq) + payload)
        struct.pack_into("!H", body, 2, pkt.internet_checksum(bytes(body)))
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, 1, 0,
                                    s.packed, d.packed))
        struct.pack_into("!H", hdr, 10, pkt.internet_checksum(bytes(hdr)))
        return bytes(hdr + body)
    body = bytearray(_ICMP_ECHO.pack(129 if reply else 128, 0, 0, ident, seq) + payload)
    csum = pkt.internet_checksum(bytes(body), pkt.pseudo_header_sum(s.packed, d.packed, 58, len(body)))
    struct.pack_into("!H", body, 2, csum)
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 64, s.packed, d.packed)
    return hdr + bytes(body)


def parse_echo(packet: bytes) -> Optional[tuple[str, str, int, int, int]]:
    """(src, dst, icmp type, ident, seq) of an echo packet, else None."""
    info = pkt.parse_ip(packet)
    if info is None:
        return None
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        if packet[9] != 1:
            return None
        t, _, _, ident, seq = _ICMP_ECHO.unpack_from(packet, ihl)
        src, dst = packet[12:16], packet[16:20]
    else:
        if packet[6] != 58:
            return None
        t, _, _, ident, seq = _ICMP_ECHO.unpack_from(packet, 40)
        src, dst = packet[8:24], packet[24:40]
    return (str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), t, ident, seq)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


import pytest  # noqa: E402


@pytest.fixture
def wg_factory(tmp_path):
    """``make(host, index=, private=, ...)`` -> a running WgDevice; all stopped at teardown."""
    why = missing()
    if why:
        pytest.skip(why)
    made: list[WgDevice] = []

    def make(host, **kw) -> WgDevice:
        d = WgDevice(host, tmp_path, **kw)
        made.append(d)
        return d

    yield make
    for d in reversed(made):
        d.stop()
