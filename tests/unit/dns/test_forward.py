"""An exit's DNS forwarder (phantom/dns/forward.py) on loopback: a real
upstream (the project's DnsServer with a zone) on 127.0.0.1; the forwarder
on 127.0.0.1 passes the queries of its allowed sources (127.0.0.1/32) and
answers everyone else REFUSED without asking the upstream; hostile
datagrams are dropped or refused, counted, and never stop it."""

from __future__ import annotations

import asyncio
import socket

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode

from phantom.dns import DnsServer
from phantom.dns.forward import ExitResolver, upstream_from_resolv_conf
from tests.unit.dns.test_server import make_zone

HOST, STRANGER = "127.0.0.1", "127.0.0.3"


def run(fn, upstream_alive=True, **kw):
    async def main():
        upstream = DnsServer(make_zone())
        await upstream.start([HOST], port=0)
        up_port = upstream.endpoints()[0][1][1]
        if not upstream_alive:
            await upstream.close()
        fwd = ExitResolver([HOST], [HOST], ["127.0.0.1/32"], port=0, upstream_port=up_port, **kw)
        fwd.bind()
        port = fwd.endpoints()[0][1][1]
        await fwd.start()
        try:
            return await asyncio.wait_for(fn(fwd, port, upstream), 30)
        finally:
            await fwd.close()
            await upstream.close()
    return asyncio.run(main())


def raw_udp(port, data, source=HOST, timeout=1.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, (HOST, port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None
    finally:
        s.close()


def test_allowed_sources_are_answered_by_the_upstream_over_udp_and_tcp():
    async def go(fwd, port, upstream):
        out = []
        for fn in (dns.asyncquery.udp, dns.asyncquery.tcp):
            q = dns.message.make_query("n3.corp.phantom", "A")
            r = await fn(q, HOST, port=port, timeout=5)
            out.append((r.id == q.id, r.rcode(), r.answer[0][0].to_text()))
        return out, fwd.stats()["counters"], upstream.stats()["queries"]
    out, counters, upstream_queries = run(go)
    assert out == [(True, dns.rcode.NOERROR, "100.64.0.3")] * 2
    assert counters["forwarded"] == 2 and upstream_queries == 2


def test_other_sources_are_refused_and_never_reach_the_upstream():
    async def go(fwd, port, upstream):
        q = dns.message.make_query("n3.corp.phantom", "A")
        wire = await asyncio.to_thread(raw_udp, port, q.to_wire(), STRANGER)
        return wire, len(q.to_wire()), fwd.stats()["counters"], upstream.stats()["queries"]
    wire, qlen, counters, upstream_queries = run(go)
    r = dns.message.from_wire(wire)
    assert r.rcode() == dns.rcode.REFUSED and not r.answer
    assert len(wire) <= qlen, "a refusal is never larger than the query"
    assert counters["refused.not_allowed"] == 1 and upstream_queries == 0


def test_hostile_datagrams_are_dropped_or_refused_and_counted():
    async def go(fwd, port, upstream):
        q = dns.message.make_query("n3.corp.phantom", "A")
        response = dns.message.make_response(q).to_wire()
        two = bytearray(q.to_wire())
        two[5] = 2                                        # qdcount 2
        replies = []
        for data in (b"", b"\x00" * 5, response, bytes(two), b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 40,
                     q.to_wire() + b"\x00" * 5000):
            replies.append(await asyncio.to_thread(raw_udp, port, data, HOST, 0.5))
        # still serving
        r = await dns.asyncquery.udp(dns.message.make_query("n3.corp.phantom", "A"), HOST, port=port, timeout=5)
        return replies, r, fwd.stats()["counters"]
    replies, r, counters = run(go)
    assert replies[0] is None and replies[1] is None and replies[2] is None and replies[5] is None
    assert dns.message.from_wire(replies[3]).rcode() == dns.rcode.FORMERR
    assert dns.message.from_wire(replies[4]).rcode() == dns.rcode.FORMERR
    assert r.rcode() == dns.rcode.NOERROR
    assert counters["drop.size"] == 3 and counters["drop.not_a_query"] == 1
    assert counters["refused.malformed"] == 2


def test_an_upstream_that_does_not_answer_gives_servfail():
    async def go(fwd, port, upstream):
        q = dns.message.make_query("n3.corp.phantom", "A")
        return await dns.asyncquery.udp(q, HOST, port=port, timeout=5), fwd.stats()["counters"]
    r, counters = run(go, upstream_alive=False, timeout=0.3)
    assert r.rcode() == dns.rcode.SERVFAIL and counters["servfail"] == 1


def test_the_allowed_sources_follow_set_allowed():
    async def go(fwd, port, upstream):
        fwd.set_allowed([])
        q = dns.message.make_query("n3.corp.phantom", "A")
        r = await dns.asyncquery.udp(q, HOST, port=port, timeout=5)
        return r.rcode()
    assert run(go) == dns.rcode.REFUSED


def test_upstream_from_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# x\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver bogus\nsearch x\n")
    assert upstream_from_resolv_conf(str(p)) == ["192.0.2.53", "fe80::1"]
    assert upstream_from_resolv_conf(str(tmp_path / "none")) == []


def test_tcp_bad_lengths_idle_clients_and_too_many_connections_are_closed():
    async def go(fwd, port, upstream):
        out = {}
        r, w = await asyncio.open_connection(HOST, port)
        w.write(b"\x00\x05hello")                              # shorter than a DNS header
        out["short"] = await asyncio.wait_for(r.read(), 5)      # closed: EOF
        w.close()
        r, w = await asyncio.open_connection(HOST, port)        # says nothing: closed after tcp_idle
        out["idle"] = await asyncio.wait_for(r.read(), 5)
        w.close()
        conns = [await asyncio.open_connection(HOST, port) for _ in range(3)]
        out["third"] = await asyncio.wait_for(conns[2][0].read(), 5)   # over tcp_per_source: closed
        q = dns.message.make_query("n3.corp.phantom", "A")
        for _, w in conns:
            w.close()
        await asyncio.sleep(0.1)
        r2 = await dns.asyncquery.tcp(q, HOST, port=port, timeout=5)
        return out, r2.rcode(), fwd.stats()["counters"]
    out, rcode, counters = run(go, tcp_idle=0.5, tcp_per_source=2)
    assert out == {"short": b"", "idle": b"", "third": b""}
    assert rcode == dns.rcode.NOERROR, "still serving"
    assert counters["drop.tcp_bad_length"] == 1 and counters["drop.tcp_connections"] == 1, counters
