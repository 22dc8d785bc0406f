"""An exit node's DNS for its exit clients (issue 22 item 3): a small
forwarder on the exit's tunnel addresses, port 53, UDP and TCP, that passes
the queries of the peers allowed to use the exit (their prefixes: the
peers with ``allow_exit``) to the exit's own upstream resolvers and their
answers back.  It is never an open resolver:

* the sockets are bound to the tunnel device (``SO_BINDTODEVICE``): only
  packets that came out of the tunnel, whose source address the data path
  checked against the sending peer's allowed IPs, reach it;
* a query from any other source is answered REFUSED (header and question
  only: never larger than the query) and counted;
* each source address has a token bucket (:class:`~.server.SourceLimiter`),
  at most ``max_inflight`` queries wait for the upstream at once, TCP
  connections are limited per source and in all and closed when idle;
* a query is checked before it is forwarded (one question, no answer or
  authority records, QUERY opcode, not a response, size) and parsed with
  dnspython; the upstream's answer must match it (dnspython checks) and is
  sent with the query's id; a UDP answer larger than the client accepts is
  sent truncated (TC) so that the client asks again over TCP; an upstream
  that fails or does not answer within ``timeout`` gives SERVFAIL.

Used by phantomd with ``exit_node = true`` (node/startup.py): ``bind()``
while root, ``await start()``, ``set_allowed()`` after a reload, ``await
close()``, ``stats()`` for /status.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter
from typing import Iterable, Optional

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.wire

from .server import DNS_PORT, SourceLimiter, bind_sockets, close_served, endpoints_of
from .zone import PARSE_ERRORS

__all__ = ["ExitResolver", "upstream_from_resolv_conf"]

log = logging.getLogger("phantom.dns")

HEADER = 12
MAX_UDP_QUERY = 4096
MAX_TCP_QUERY = 65535


def upstream_from_resolv_conf(path: str = "/etc/resolv.conf") -> list:
    """The nameservers of ``path`` (read at start, while root)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
                    except ValueError:
                        continue
    except OSError:
        pass
    return out[:4]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: "ExitResolver") -> None:
        self.owner = owner
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.owner.udp_query(self, data, addr)

    def error_received(self, exc) -> None:
        self.owner.counters["udp_errors"] += 1


class ExitResolver:
    def __init__(self, listen: Iterable[str], upstream: Iterable[str], allowed: Iterable = (),
                 device: Optional[str] = None, port: int = DNS_PORT, timeout: float = 3.0,
                 upstream_port: int = DNS_PORT,
                 rate: float = 100.0, burst: int = 200, max_inflight: int = 256,
                 tcp_per_source: int = 8, tcp_max: int = 64, tcp_idle: float = 10.0) -> None:
        self.listen = [str(ipaddress.ip_address(a)) for a in listen]
        self.upstream = [str(ipaddress.ip_address(a)) for a in upstream]
        self.device = device
        self.port = port
        self.upstream_port = upstream_port
        self.timeout = float(timeout)
        self.limiter = SourceLimiter(rate=rate, burst=burst)
        self.max_inflight = max_inflight
        self.tcp_per_source, self.tcp_max, self.tcp_idle = tcp_per_source, tcp_max, float(tcp_idle)
        self.allowed: list = []
        self.set_allowed(allowed)
        self.counters: Counter = Counter()
        self.inflight = 0
        self._sockets: list = []
        self._bound: list = []
        self._udp: list = []
        self._tcp: list = []
        self._conns: set = set()
        self._per_source: Counter = Counter()

    # ------------------------------------------------------------ life
    def bind(self) -> None:
        """Port 53 on the tunnel addresses, bound to the device (while root)."""
        try:
            socks = bind_sockets(self.listen, self.port)
        except OSError as exc:
            raise OSError(exc.errno, "exit DNS: cannot serve on %s port %d: %s" % (
                ", ".join(self.listen), self.port, exc.strerror or exc)) from None
        if self.device:
            try:
                for s in socks:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device.encode())
            except OSError:
                for s in socks:
                    s.close()
                raise
        self._sockets = socks
        self._bound = list(socks)

    def endpoints(self) -> list:
        """``[("udp"|"tcp", (address, port)), ...]`` bound."""
        return endpoints_of(self._bound)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        socks, self._sockets = self._sockets, []
        for s in socks:
            s.setblocking(False)
            if s.type == socket.SOCK_DGRAM:
                t, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=s)
                self._udp.append(t)
            else:
                self._tcp.append(await asyncio.start_server(self._tcp_client, sock=s))
        log.info("exit DNS on %s port %d for %s, forwarded to %s", ", ".join(self.listen), self.port,
                 ", ".join(map(str, self.allowed)) or "no peer", ", ".join(self.upstream) or "nobody")

    async def close(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets = []
        await close_served(self._udp, self._tcp, [w.close for w in self._conns])
        self._udp, self._tcp = [], []

    def set_allowed(self, prefixes: Iterable) -> None:
        """The source prefixes whose queries are forwarded (the allowed exit clients')."""
        self.allowed = sorted({ipaddress.ip_network(n) for n in prefixes}, key=lambda n: (n.version, n))

    # ------------------------------------------------------------ one query
    def _is_allowed(self, source: str) -> bool:
        try:
            ip = ipaddress.ip_address(source.split("%")[0])
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.allowed)

    def check(self, wire: bytes, source: str, tcp: bool):
        """(query Message, None) to forward, (None, answer bytes) to send at
        once, or (None, None) to drop; counted."""
        c = self.counters
        c["queries"] += 1
        if not self.limiter.allow(source):
            c["drop.rate_limited"] += 1
            return None, None
        if len(wire) < HEADER or len(wire) > (MAX_TCP_QUERY if tcp else MAX_UDP_QUERY):
            c["drop.size"] += 1
            return None, None
        qid, flags, qd, an, ns, ar = dns.wire.Parser(wire).get_struct("!HHHHHH")
        if flags & dns.flags.QR:
            c["drop.not_a_query"] += 1
            return None, None
        if dns.opcode.from_flags(flags) != dns.opcode.QUERY or qd != 1 or an or ns or ar > 2:
            c["refused.malformed"] += 1
            return None, self._header(qid, flags, dns.rcode.FORMERR)
        if not self._is_allowed(source):
            c["refused.not_allowed"] += 1
            return None, self._header(qid, flags, dns.rcode.REFUSED)
        try:
            query = dns.message.from_wire(wire)
        except PARSE_ERRORS:
            c["refused.malformed"] += 1
            return None, self._header(qid, flags, dns.rcode.FORMERR)
        if self.inflight >= self.max_inflight:
            c["drop.busy"] += 1
            return None, None
        return query, None

    @staticmethod
    def _header(qid: int, flags: int, rcode: int) -> bytes:
        m = dns.message.Message(id=qid)
        m.flags = dns.flags.QR | (flags & dns.flags.RD)
        m.set_rcode(rcode)
        return m.to_wire()

    async def forward(self, query, tcp: bool) -> bytes:
        """The upstream's answer to ``query`` (SERVFAIL when none answers)."""
        self.inflight += 1
        try:
            for server in self.upstream:
                try:
                    if tcp:
                        r = await dns.asyncquery.tcp(query, server, port=self.upstream_port, timeout=self.timeout)
                    else:
                        r = await dns.asyncquery.udp(query, server, port=self.upstream_port, timeout=self.timeout,
                                                     ignore_unexpected=True)
                except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
                    self.counters["upstream_errors"] += 1
                    log.debug("exit DNS: upstream %s: %s", server, exc)
                    continue
                self.counters["forwarded"] += 1
                r.id = query.id
                limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
                try:
                    return r.to_wire(max_size=limit)
                except dns.exception.TooBig:
                    self.counters["truncated"] += 1
                    rcode = r.rcode()
                    r = dns.message.make_response(query)
                    r.set_rcode(rcode)
                    r.flags |= dns.flags.TC
                    return r.to_wire(max_size=limit)
            self.counters["servfail"] += 1
            r = dns.message.make_response(query)
            r.set_rcode(dns.rcode.SERVFAIL)
            return r.to_wire()
        finally:
            self.inflight -= 1

    def udp_query(self, proto: _Udp, data: bytes, addr) -> None:
        try:
            query, answer = self.check(data, addr[0], tcp=False)
        except Exception:                       # never let one datagram stop us
            self.counters["drop.internal_error"] += 1
            log.exception("exit DNS: a %d-byte datagram from %s", len(data), addr[0])
            return
        if answer is not None:
            proto.transport.sendto(answer, addr)
        elif query is not None:
            asyncio.ensure_future(self._udp_answer(proto, query, addr))

    async def _udp_answer(self, proto: _Udp, query, addr) -> None:
        try:
            out = await self.forward(query, tcp=False)
        except Exception:
            self.counters["drop.internal_error"] += 1
            log.exception("exit DNS: forwarding a query from %s", addr[0])
            return
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.sendto(out, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if peer else "?"
        if len(self._conns) >= self.tcp_max or self._per_source[source] >= self.tcp_per_source:
            self.counters["drop.tcp_connections"] += 1
            writer.close()
            return
        self._conns.add(writer)
        self._per_source[source] += 1
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
                n = int.from_bytes(head, "big")
                if n < HEADER:
                    self.counters["drop.tcp_bad_length"] += 1
                    return
                wire = await asyncio.wait_for(reader.readexactly(n), self.tcp_idle)
                query, answer = self.check(wire, source, tcp=True)
                if query is not None:
                    answer = await self.forward(query, tcp=True)
                if answer is None:
                    return
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await asyncio.wait_for(writer.drain(), self.tcp_idle)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            self.counters["drop.internal_error"] += 1
            log.exception("exit DNS: a TCP client %s", source)
        finally:
            self._conns.discard(writer)
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]
            writer.close()

    # ------------------------------------------------------------ reading
    def stats(self) -> dict:
        return {"listen": list(self.listen), "upstream": list(self.upstream),
                "allowed": [str(n) for n in self.allowed], "inflight": self.inflight,
                "tcp_open": len(self._conns), "counters": dict(sorted(self.counters.items()))}
