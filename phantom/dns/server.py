"""The name service on the wire: asyncio UDP and TCP listeners around a
:class:`~phantom.dns.zone.Zone`.

* Sockets: :func:`bind_sockets` makes a UDP and a listening TCP socket per
  address (the daemon calls it while still root, for port 53, before the
  privilege drop); :meth:`DnsServer.start` takes such sockets, or addresses
  to bind itself (tests, unprivileged ports).
* Every query, UDP or TCP, first takes a token from its source address's
  bucket (:class:`SourceLimiter`); an empty bucket drops it, counted
  (``drops.rate_limited``), before any parsing.
* TCP (RFC 7766 framing: a two-byte length before each message): at most
  ``tcp_per_source`` connections per source address and ``tcp_max`` in all
  (more are closed at once, counted); a message longer than the zone's
  ``max_query`` closes the connection (counted); a connection that
  completes no message for ``tcp_idle`` seconds is closed (counted); a
  client that does not read its answers stops being read (flow control)
  and is then closed as idle.  Answers on one connection come in order.
* Nothing a client sends can stop the service: an unexpected exception
  answering one message is logged, counted (``drops.internal_error``) and
  that message is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter, OrderedDict
from typing import Callable, Iterable, Sequence

from .names import DNS_PORT
from .zone import Zone

__all__ = ["DnsServer", "SourceLimiter", "bind_sockets", "DNS_PORT"]

log = logging.getLogger("phantom.dns")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)        # Linux; bind before the address exists


class SourceLimiter:
    """Token buckets per source address: ``burst`` queries at once, refilled
    at ``rate`` per second.  Memory is bounded by ``max_sources``: a bucket
    idle long enough to be full again is forgotten (nothing is lost), and
    when the table is full of active sources a new source is refused
    (fail closed) until one goes idle."""

    def __init__(self, rate: float = 100.0, burst: int = 200, max_sources: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate, burst and max_sources must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sources = max_sources
        self._clock = clock
        self._idle = self.burst / self.rate
        self._buckets: OrderedDict[str, list] = OrderedDict()   # oldest use first

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str) -> bool:
        now = self._clock()
        buckets = self._buckets
        entry = buckets.get(source)
        if entry is None:
            while buckets:                       # forget the full ones
                _, oldest = next(iter(buckets.items()))
                if now - oldest[1] < self._idle:
                    break
                buckets.popitem(last=False)
            if len(buckets) >= self.max_sources:
                return False
            entry = buckets[source] = [self.burst, now]
        else:
            buckets.move_to_end(source)
            entry[0] = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
            entry[1] = now
        if entry[0] < 1.0:
            return False
        entry[0] -= 1.0
        return True


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _socket(host: str, port: int, kind: int, freebind: bool) -> socket.socket:
    fam = _family(host)
    s = socket.socket(fam, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if freebind:
            s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        s.setblocking(False)
        return s
    except BaseException:
        s.close()
        raise


def bind_sockets(addresses: Iterable[str], port: int = DNS_PORT, *,
                 freebind: bool = True) -> list[socket.socket]:
    """A UDP socket and a listening TCP socket on each address (port 53 by
    default: call this as root, before dropping privileges, and hand the
    sockets to :meth:`DnsServer.start`).  With ``freebind`` (Linux
    IP_FREEBIND) an address may be bound before it is configured on the
    device.  Port 0 picks one free port for both protocols of an address."""
    out: list[socket.socket] = []
    try:
        for host in addresses:
            host = str(ipaddress.ip_address(host))
            for attempt in range(20):
                udp = _socket(host, port, socket.SOCK_DGRAM, freebind)
                p = udp.getsockname()[1]
                try:
                    tcp = _socket(host, p, socket.SOCK_STREAM, freebind)
                except OSError as exc:
                    udp.close()
                    if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                        continue
                    raise
                out += [udp, tcp]
                break
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def endpoints_of(socks: Iterable[socket.socket]) -> list[tuple[str, tuple]]:
    """``[("udp"|"tcp", (address, port)), ...]`` of bound sockets (closed ones left out)."""
    out = []
    for s in socks:
        with contextlib.suppress(OSError):
            out.append(("udp" if s.type == socket.SOCK_DGRAM else "tcp", s.getsockname()[:2]))
    return out


async def close_served(udp: Iterable, tcp: Iterable, enders: Iterable[Callable[[], None]],
                       wait: float = 2.0) -> None:
    """Stop serving: close the UDP transports and the TCP listeners, end every
    open TCP connection (``enders``: one callable each), then wait for each
    listener to close (at most ``wait`` seconds each)."""
    tcp = list(tcp)
    for t in udp:
        t.close()
    for srv in tcp:
        srv.close()
    for end in list(enders):
        end()
    for srv in tcp:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(srv.wait_closed(), wait)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: "DnsServer") -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        out = self.server.handle(data, addr[0], tcp=False)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:     # ICMP errors for earlier answers
        self.server.counters["udp_errors"] += 1


class _Tcp(asyncio.Protocol):
    def __init__(self, server: "DnsServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.source: str | None = None
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.source = peer[0] if peer else "?"
        if not self.server.tcp_admit(self):
            self.closed = True
            transport.abort()
            return
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.server.tcp_idle, self._idle)

    def _idle(self) -> None:
        self.server.counters["drop.tcp_idle"] += 1
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buf += data
        limit = self.server.zone.max_query
        while len(self.buf) >= 2:
            n = int.from_bytes(self.buf[:2], "big")        # RFC 7766 length prefix
            if n > limit or n == 0:
                self.server.counters["drop.tcp_bad_length"] += 1
                self.abort()
                return
            if len(self.buf) < 2 + n:
                break
            msg = bytes(self.buf[2:2 + n])
            del self.buf[:2 + n]
            self._arm()
            out = self.server.handle(msg, self.source, tcp=True)
            if out is not None and not self.closed:
                self.transport.write(len(out).to_bytes(2, "big") + out)
            if self.closed:
                return

    def eof_received(self) -> bool:
        return False                                        # close our side too

    # flow control: a client that does not read its answers is not read
    def pause_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.tcp_release(self)


class DnsServer:
    """Serves ``zone`` over UDP and TCP.  ``start()`` on the running loop,
    ``close()`` at the end; ``stats()`` for /status and /metrics."""

    def __init__(self, zone: Zone, *, limiter: SourceLimiter | None = None,
                 tcp_idle: float = 10.0, tcp_per_source: int = 8, tcp_max: int = 256) -> None:
        if tcp_idle <= 0 or tcp_per_source < 1 or tcp_max < 1:
            raise ValueError("tcp_idle, tcp_per_source and tcp_max must be positive")
        self.zone = zone
        self.limiter = limiter if limiter is not None else SourceLimiter()
        self.tcp_idle = float(tcp_idle)
        self.tcp_per_source = tcp_per_source
        self.tcp_max = tcp_max
        self.counters: Counter = Counter()
        self._conns: set[_Tcp] = set()
        self._per_source: Counter = Counter()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.base_events.Server] = []
        self._sockets: list[socket.socket] = []

    # -- life ------------------------------------------------------------------------
    async def start(self, addresses: Sequence[str] = (), port: int = DNS_PORT,
                    sockets: Sequence[socket.socket] = ()) -> None:
        """Serve on ``sockets`` (already bound, e.g. by :func:`bind_sockets`
        before the privilege drop: SOCK_DGRAM for UDP, listening SOCK_STREAM
        for TCP) and on ``addresses`` (bound here, UDP and TCP, on ``port``)."""
        loop = asyncio.get_running_loop()
        socks = list(sockets)
        if addresses:
            socks += bind_sockets(addresses, port)
        try:
            for s in socks:
                s.setblocking(False)
                if s.type == socket.SOCK_DGRAM:
                    t, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=s)
                    self._udp.append(t)
                elif s.type == socket.SOCK_STREAM:
                    self._tcp.append(await loop.create_server(lambda: _Tcp(self), sock=s))
                else:
                    raise ValueError("socket %r is neither UDP nor TCP" % (s,))
                self._sockets.append(s)
        except BaseException:
            await self.close()
            raise
        log.info("DNS for %s on %s", self.zone.domain,
                 ", ".join("%s %s" % (kind, ep) for kind, ep in self.endpoints()))

    def endpoints(self) -> list[tuple[str, tuple]]:
        """``[("udp"|"tcp", sockname), ...]`` being served."""
        return endpoints_of(self._sockets)

    async def close(self) -> None:
        await close_served(self._udp, self._tcp, [c.abort for c in self._conns])
        self._udp, self._tcp, self._sockets = [], [], []

    # -- one message ----------------------------------------------------------------
    def handle(self, wire: bytes, source: str, *, tcp: bool) -> bytes | None:
        """Rate limit, then the zone's answer (None: dropped)."""
        if not self.limiter.allow(source):
            self.counters["drop.rate_limited"] += 1
            return None
        try:
            return self.zone.respond(wire, tcp=tcp)
        except Exception:                                  # never let one message stop us
            self.counters["drop.internal_error"] += 1
            log.exception("DNS: answering a %d-byte query from %s failed", len(wire), source)
            return None

    # -- TCP admission ---------------------------------------------------------------
    def tcp_admit(self, conn: _Tcp) -> bool:
        if len(self._conns) >= self.tcp_max or self._per_source[conn.source] >= self.tcp_per_source:
            self.counters["drop.tcp_connections"] += 1
            return False
        self._conns.add(conn)
        self._per_source[conn.source] += 1
        self.counters["tcp_accepted"] += 1
        return True

    def tcp_release(self, conn: _Tcp) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self._per_source[conn.source] -= 1
            if self._per_source[conn.source] <= 0:
                del self._per_source[conn.source]

    # -- numbers ---------------------------------------------------------------------
    def stats(self) -> dict:
        """The zone's counters plus the server's: drops (rate_limited,
        tcp_connections, tcp_bad_length, tcp_idle, internal_error), open TCP
        connections, sources tracked by the limiter, and the name source's
        own counters when it has a ``stats()``."""
        out = self.zone.stats()
        drops = dict(out["drops"])
        for k, v in self.counters.items():
            if k.startswith("drop."):
                drops[k[5:]] = drops.get(k[5:], 0) + v
        out["drops"] = dict(sorted(drops.items()))
        out["tcp_open"] = len(self._conns)
        out["tcp_accepted"] = self.counters["tcp_accepted"]
        out["udp_errors"] = self.counters["udp_errors"]
        out["sources_tracked"] = len(self.limiter)
        names_stats = getattr(self.zone.names, "stats", None)
        if callable(names_stats):
            out["names"] = names_stats()
        return out
