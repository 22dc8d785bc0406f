"""The name service on its sockets (phantom/dns/server.py): a DnsServer on
127.0.0.1, port 0, in this process; dnspython's asyncio client on both
transports, plus raw sockets for what a client library would never send."""

from __future__ import annotations

import asyncio
import socket
import time

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest

from phantom.dns import DnsServer, NameTable, SourceLimiter, Zone, bind_sockets

DOMAIN = "corp.phantom"
HOST = "127.0.0.1"


def make_zone(table=None, **kw):
    table = table if table is not None else NameTable({
        "n3": (["100.64.0.3"], ["fd12:3456:789a::3"]),
        "many": (["100.64.1.%d" % i for i in range(1, 17)], ["fd12:3456:789a::%x" % i for i in range(1, 17)]),
    })
    return Zone(DOMAIN, table, ipv4_prefix="100.64.0.0/16", ipv6_prefix="fd12:3456:789a::/48", **kw)


def run(coro_fn, *args, zone=None, **server_kw):
    """Start a server on 127.0.0.1:0, run ``coro_fn(server, port, *args)``, close."""
    async def main():
        server = DnsServer(zone or make_zone(), **server_kw)
        await server.start([HOST], port=0)
        try:
            port = server.endpoints()[0][1][1]
            return await asyncio.wait_for(coro_fn(server, port, *args), 30)
        finally:
            await server.close()
    return asyncio.run(main())


async def until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in %ss" % timeout)
        await asyncio.sleep(0.01)


def test_udp_and_tcp_answer_a_and_aaaa():
    async def go(server, port):
        out = []
        for rdtype in ("A", "AAAA"):
            q = dns.message.make_query("n3.corp.phantom", rdtype)
            for fn in (dns.asyncquery.udp, dns.asyncquery.tcp):
                r = await fn(q, HOST, timeout=5, port=port)
                out.append((rdtype, r.answer[0][0].to_text(), bool(r.flags & dns.flags.AA)))
        return out, server.stats()
    out, stats = run(go)
    assert out == [("A", "100.64.0.3", True)] * 2 + [("AAAA", "fd12:3456:789a::3", True)] * 2
    assert stats["queries_udp"] == 2 and stats["queries_tcp"] == 2
    assert stats["responses"] == {"NOERROR": 4}


def test_the_endpoints_are_one_port_for_udp_and_tcp():
    async def go(server, port):
        return server.endpoints()
    eps = run(go)
    assert sorted(k for k, _ in eps) == ["tcp", "udp"] and len({ep for _, ep in eps}) == 1


def test_truncated_over_udp_then_whole_over_tcp():
    async def go(server, port):
        q = dns.message.make_query("many.corp.phantom", "ANY")
        r, used_tcp = await dns.asyncquery.udp_with_fallback(q, HOST, timeout=5, port=port)
        return r, used_tcp, server.stats()
    r, used_tcp, stats = run(go)
    assert used_tcp and len(r.answer) == 2 and sum(len(rr) for rr in r.answer) == 32
    assert stats["truncated"] == 1


def test_refused_outside_the_domain_over_both_transports():
    async def go(server, port):
        q = dns.message.make_query("example.com", "A")
        return [await fn(q, HOST, timeout=5, port=port) for fn in (dns.asyncquery.udp, dns.asyncquery.tcp)]
    for r in run(go):
        assert r.rcode() == dns.rcode.REFUSED and not r.answer and not r.flags & dns.flags.RA


def test_tcp_pipelined_queries_are_answered_in_order():
    async def go(server, port):
        reader, writer = await asyncio.open_connection(HOST, port)
        qs = [dns.message.make_query(n, "A") for n in ("n3.corp.phantom", "x.corp.phantom", "example.org")]
        writer.write(b"".join(q.to_wire(prepend_length=True) for q in qs))
        await writer.drain()
        out = []
        for q in qs:
            n = int.from_bytes(await reader.readexactly(2), "big")
            r = dns.message.from_wire(await reader.readexactly(n))
            out.append((r.id == q.id, dns.rcode.to_text(r.rcode())))
        writer.close()
        return out
    assert run(go) == [(True, "NOERROR"), (True, "NXDOMAIN"), (True, "REFUSED")]


def test_rate_limit_per_source_drops_and_counts():
    clock = [100.0]
    limiter = SourceLimiter(rate=1.0, burst=5, clock=lambda: clock[0])

    async def go(server, port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        q = dns.message.make_query("n3.corp.phantom", "A").to_wire()
        for _ in range(20):
            sock.sendto(q, (HOST, port))
        await until(lambda: server.stats()["queries"] + server.stats()["drops"].get("rate_limited", 0) >= 20)
        got = 0
        while True:
            try:
                await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.3)
                got += 1
            except asyncio.TimeoutError:
                break
        clock[0] += 1.0                                   # one token back
        sock.sendto(q, (HOST, port))
        await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
        sock.close()
        return got, server.stats()
    got, stats = run(go, limiter=limiter)
    assert got == 5
    assert stats["drops"]["rate_limited"] == 15
    assert stats["queries"] == 6                           # dropped queries are never parsed


def test_limiter_bounds_its_memory_and_fails_closed_when_full():
    clock = [0.0]
    lim = SourceLimiter(rate=10.0, burst=10, max_sources=3, clock=lambda: clock[0])
    assert all(lim.allow("10.0.0.%d" % i) for i in range(3))
    assert not lim.allow("10.0.0.99") and len(lim) == 3   # full of active sources
    clock[0] += 1.0                                        # all full again: forgotten
    assert lim.allow("10.0.0.99") and len(lim) == 1


def test_tcp_connections_per_source_are_bounded():
    async def go(server, port):
        conns = [await asyncio.open_connection(HOST, port) for _ in range(3)]
        await until(lambda: server.stats()["drops"].get("tcp_connections", 0) == 1)
        third_reader = conns[2][0]
        closed = await asyncio.wait_for(third_reader.read(1), 5) == b""
        # the first two still work
        q = dns.message.make_query("n3.corp.phantom", "A")
        r, w = conns[0]
        w.write(q.to_wire(prepend_length=True))
        n = int.from_bytes(await r.readexactly(2), "big")
        ok = dns.message.from_wire(await r.readexactly(n)).rcode() == dns.rcode.NOERROR
        open_now = server.stats()["tcp_open"]
        for _, w in conns:
            w.close()
        return closed, ok, open_now
    assert run(go, tcp_per_source=2) == (True, True, 2)


def test_tcp_total_connections_are_bounded():
    async def go(server, port):
        conns = [await asyncio.open_connection(HOST, port) for _ in range(5)]
        await until(lambda: server.stats()["drops"].get("tcp_connections", 0) == 2)
        open_now = server.stats()["tcp_open"]
        for _, w in conns:
            w.close()
        return open_now
    assert run(go, tcp_max=3) == 3


def test_tcp_idle_connections_are_closed_and_counted():
    async def go(server, port):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"\x00")                              # half a length prefix, then nothing
        t0 = time.monotonic()
        eof = await asyncio.wait_for(reader.read(1), 5) == b""
        await until(lambda: server.stats()["tcp_open"] == 0)
        return eof, time.monotonic() - t0, server.stats()["drops"]
    eof, waited, drops = run(go, tcp_idle=0.3)
    assert eof and drops.get("tcp_idle") == 1 and waited >= 0.25


def test_tcp_trickle_does_not_keep_a_connection_alive():
    async def go(server, port):
        reader, writer = await asyncio.open_connection(HOST, port)
        q = dns.message.make_query("n3.corp.phantom", "A").to_wire(prepend_length=True)
        for b in q:                                        # one byte each 0.1 s: 3+ s for the message
            writer.write(bytes([b]))
            await asyncio.sleep(0.1)
            if server.stats()["drops"].get("tcp_idle"):
                break
        eof = await asyncio.wait_for(reader.read(1), 5) == b""
        return eof, server.stats()
    eof, stats = run(go, tcp_idle=0.5)
    assert eof and stats["drops"]["tcp_idle"] == 1 and stats["queries"] == 0


@pytest.mark.parametrize("length", [0, 513, 65535])
def test_tcp_bad_length_closes_the_connection(length):
    async def go(server, port):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(length.to_bytes(2, "big") + b"x" * 100)
        eof = await asyncio.wait_for(reader.read(1), 5) == b""
        await until(lambda: server.stats()["tcp_open"] == 0)
        return eof, server.stats()
    eof, stats = run(go)
    assert eof and stats["drops"]["tcp_bad_length"] == 1 and stats["queries"] == 0


def test_a_client_that_does_not_read_is_paused_then_closed():
    async def go(server, port):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        q = dns.message.make_query("many.corp.phantom", "ANY").to_wire(prepend_length=True)
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            for _ in range(20000):                         # ~1 MB of answers it never reads
                await asyncio.wait_for(loop.sock_sendall(sock, q), 0.5)
                sent += 1
        except (asyncio.TimeoutError, OSError):
            pass
        await until(lambda: server.stats()["tcp_open"] == 0, timeout=10)
        sock.close()
        return sent, server.stats()
    sent, stats = run(go, tcp_idle=1.0)
    assert stats["queries_tcp"] < sent                      # reading stopped at some point
    assert stats["drops"]["tcp_idle"] == 1


def test_an_exception_in_the_name_source_is_counted_and_the_service_goes_on():
    class Broken(NameTable):
        def lookup(self, name):
            if name == "boom":
                raise RuntimeError("member set bug")
            return super().lookup(name)

    async def go(server, port):
        q = dns.message.make_query("boom.corp.phantom", "A")
        with pytest.raises(dns.exception.Timeout):
            await dns.asyncquery.udp(q, HOST, timeout=0.5, port=port)
        r = await dns.asyncquery.udp(dns.message.make_query("n3.corp.phantom", "A"), HOST, timeout=5, port=port)
        return r.rcode(), server.stats()["drops"]

    t = Broken({"n3": (["100.64.0.3"], [])})
    rcode, drops = run(go, zone=make_zone(t))
    assert rcode == dns.rcode.NOERROR and drops["internal_error"] == 1


def test_sockets_bound_beforehand_are_served():
    socks = bind_sockets([HOST], port=0)
    assert sorted(s.type for s in socks) == sorted([socket.SOCK_DGRAM, socket.SOCK_STREAM])
    port = socks[0].getsockname()[1]
    assert socks[1].getsockname()[1] == port

    async def main():
        server = DnsServer(make_zone())
        await server.start(sockets=socks)
        try:
            q = dns.message.make_query("n3.corp.phantom", "A")
            a = await dns.asyncquery.udp(q, HOST, timeout=5, port=port)
            b = await dns.asyncquery.tcp(q, HOST, timeout=5, port=port)
            return a.answer[0][0].to_text(), b.answer[0][0].to_text()
        finally:
            await server.close()
    assert asyncio.run(main()) == ("100.64.0.3", "100.64.0.3")


def test_freebind_binds_an_address_no_device_has_yet():
    # the daemon binds port 53 on its tunnel addresses while root, possibly
    # before the address is on the device; nothing is sent here
    socks = bind_sockets(["198.51.100.53", "2001:db8::53"], port=0)
    try:
        assert {s.getsockname()[0] for s in socks} == {"198.51.100.53", "2001:db8::53"}
    finally:
        for s in socks:
            s.close()
    with pytest.raises(OSError):
        bind_sockets(["198.51.100.53"], port=0, freebind=False)


def test_stats_shape_for_status_and_metrics():
    async def go(server, port):
        await dns.asyncquery.udp(dns.message.make_query("n3.corp.phantom", "A"), HOST, timeout=5, port=port)
        return server.stats()
    s = run(go)
    assert set(s) >= {"queries", "queries_udp", "queries_tcp", "responses", "truncated", "drops",
                      "tcp_open", "tcp_accepted", "sources_tracked", "names",
                      "invalid_member_names", "addresses_outside_network"}
    assert s["names"] == {"names": 2, "invalid_names": 0, "invalid_addresses": 0}
    assert s["sources_tracked"] == 1
