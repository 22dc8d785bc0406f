"""Packet capture with tcpdump inside a namespace, and a small pcap reader."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from .namespaces import REGISTRY, Namespace, RigError, as_ns

if TYPE_CHECKING:
    from .topology import Host, Router

__all__ = ["Sniffer", "Packet", "UdpDatagram", "read_pcap"]


# ---------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------

class UdpDatagram(NamedTuple):
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass
class Packet:
    ts: float
    data: bytes          # the captured frame, link-layer header included
    linktype: int

    def ip_packet(self) -> bytes | None:
        """The IP packet inside the frame, or None (ARP, unknown link)."""
        d, lt = self.data, self.linktype
        if lt == 1:                                   # Ethernet
            off, ethertype = 14, struct.unpack_from("!H", d, 12)[0] if len(d) >= 14 else 0
            while ethertype in (0x8100, 0x88A8) and len(d) >= off + 4:
                ethertype = struct.unpack_from("!H", d, off + 2)[0]
                off += 4
            return d[off:] if ethertype in (0x0800, 0x86DD) else None
        if lt == 113:                                 # Linux cooked v1
            return d[16:] if len(d) >= 16 and struct.unpack_from("!H", d, 14)[0] in (0x0800, 0x86DD) else None
        if lt == 276:                                 # Linux cooked v2
            return d[20:] if len(d) >= 20 and struct.unpack_from("!H", d, 0)[0] in (0x0800, 0x86DD) else None
        if lt in (12, 14, 101, 228, 229):             # raw IP
            return d
        return None

    def udp(self) -> UdpDatagram | None:
        """Decode an IPv4/IPv6 UDP datagram (unfragmented), else None."""
        ip = self.ip_packet()
        if not ip:
            return None
        version = ip[0] >> 4
        if version == 4 and len(ip) >= 20:
            ihl = (ip[0] & 0x0F) * 4
            total, frag, proto = struct.unpack_from("!H", ip, 2)[0], struct.unpack_from("!H", ip, 6)[0], ip[9]
            if proto != 17 or frag & 0x1FFF:
                return None
            src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
            l4 = ip[ihl:total]
        elif version == 6 and len(ip) >= 40:
            nxt, off = ip[6], 40
            while nxt in (0, 43, 60) and len(ip) >= off + 8:   # hop-by-hop, routing, dest opts
                nxt, off = ip[off], off + (ip[off + 1] + 1) * 8
            if nxt != 17:
                return None
            src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
            l4 = ip[off:]
        else:
            return None
        if len(l4) < 8:
            return None
        sport, dport, length = struct.unpack_from("!HHH", l4)
        return UdpDatagram(src, sport, dst, dport, bytes(l4[8:length]))


_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_PCAP_GLOBAL = struct.Struct("4sHHiIII")      # magic, major, minor, zone, sigfigs, snaplen, linktype
_PCAP_RECORD_LEN = 16                         # ts_sec, ts_frac, incl_len, orig_len


def read_pcap(data: bytes) -> list[Packet]:
    """Parse a classic pcap file (any byte order, us or ns timestamps).
    A truncated last record (file still being written) is ignored."""
    if len(data) < _PCAP_GLOBAL.size:
        return []
    magic = data[:4]
    if magic not in _PCAP_MAGIC:
        raise RigError(f"not a pcap file (magic {magic.hex()})")
    order, unit = _PCAP_MAGIC[magic]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    packets, off = [], _PCAP_GLOBAL.size
    while off + _PCAP_RECORD_LEN <= len(data):
        sec, frac, incl, _orig = record.unpack_from(data, off)
        off += _PCAP_RECORD_LEN
        if off + incl > len(data):
            break
        packets.append(Packet(sec + frac * unit, bytes(data[off:off + incl]), linktype))
        off += incl
    return packets


class Sniffer:
    """tcpdump in a namespace, writing a pcap file.

    ``with Sniffer(ns, "eth0", "udp port 9000") as sn: ...`` -- entering
    returns once tcpdump reports it is listening; leaving stops it and
    fills ``sn.result``.  ``stop()`` does the same and returns the packets.
    """

    def __init__(self, ns: "Namespace | Host | Router", iface: str, bpf_filter: str = "", *,
                 path: str | os.PathLike | None = None, ready_timeout: float = 5.0) -> None:
        self.ns = as_ns(ns)
        self.iface = iface
        self.bpf_filter = bpf_filter
        if path is None:
            fd, path = tempfile.mkstemp(prefix="phantom-", suffix=".pcap")
            os.close(fd)
        self.path = Path(path)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.result: list[Packet] | None = None
        self._stderr: list[str] = []
        self._drain: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Sniffer(ns={self.ns.name!r}, iface={self.iface!r}, filter={self.bpf_filter!r})"

    def start(self) -> "Sniffer":
        if self.proc is not None:
            return self
        argv = ["tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-Z", "root",
                "-s", "0", "-w", str(self.path)]
        if self.bpf_filter:
            argv.append(self.bpf_filter)
        self.proc = self.ns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True)
        REGISTRY.add(self)
        stream = self.proc.stderr
        assert stream is not None
        deadline = time.monotonic() + self.ready_timeout
        buf = b""
        while b"listening on" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._kill()
                raise RigError(f"tcpdump did not start on {self.iface} in {self.ns.name}: "
                               f"{buf.decode(errors='replace').strip()}")
            r, _, _ = select.select([stream], [], [], left)
            if r:
                chunk = os.read(stream.fileno(), 4096)
                if not chunk:
                    continue
                buf += chunk
        self._stderr.append(buf.decode(errors="replace"))
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr.append(line.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def packets(self) -> list[Packet]:
        """Packets captured so far (readable while running)."""
        try:
            return read_pcap(self.path.read_bytes())
        except FileNotFoundError:
            return []

    def wait_for(self, predicate: Callable[[list[Packet]], bool], timeout: float = 5.0) -> bool:
        """Poll the capture until ``predicate(packets)`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.packets()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _settle(self, quiet: float = 0.1, limit: float = 1.0) -> None:
        """Let packets already on their way reach the file: wait until the
        file has not grown for ``quiet`` seconds (at most ``limit``)."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.02)

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)     # tcpdump flushes on SIGINT
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5.0)
        if self._drain is not None:
            self._drain.join(2.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> list[Packet]:
        """Stop tcpdump and return every captured packet.  Idempotent."""
        REGISTRY.discard(self)
        if self.result is not None:
            return self.result
        if self.proc is not None and self.proc.poll() is None:
            self._settle()
        self._kill()
        self.result = self.packets()
        return self.result

    def _rig_close(self) -> None:
        if self.proc is not None and self.result is None:
            self._kill()
        REGISTRY.discard(self)

    def find(self, marker: bytes) -> list[Packet]:
        """Captured packets whose bytes contain ``marker`` anywhere."""
        pkts = self.result if self.result is not None else self.packets()
        return [p for p in pkts if marker in p.data]

    def udp(self) -> list[UdpDatagram]:
        pkts = self.result if self.result is not None else self.packets()
        return [u for u in (p.udp() for p in pkts) if u is not None]

    def __enter__(self) -> "Sniffer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
