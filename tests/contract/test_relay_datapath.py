"""The relay in the reference data path, in one process: A -> relay -> B over
loopback UDP, keys installed by hand.  The relay authenticates both hops,
forwards the A<->B ciphertext it cannot read, never to its own device, and
within a per-peer budget."""

from __future__ import annotations

import socket
import time

from phantom import crypto, wire
from phantom.constants import Tunables
from phantom.dataplane.reference import ReferenceDataPath
from phantom.dataplane.types import Keypair, Mode, RelayVia
from tests.support.datapath import Recorder as Events

MARKER = b"RELAYED-PLAINTEXT-MARKER"
OFFSET = wire.TRANSPORT_PAYLOAD_OFFSET


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1)
    return s


class Node:
    def __init__(self):
        self.udp, self.test, self.app = _udp(), _udp(), _udp()
        self.events = Events()
        self.dp = ReferenceDataPath(Mode.TEST, self.udp, None, self.test, events=self.events,
                                    tunables=Tunables(), test_deliver=self.app.getsockname())

    def addr(self):
        return self.udp.getsockname()

    def receive(self):
        data, addr = self.udp.recvfrom(70000)
        self.dp._rx[:len(data)] = data
        self.dp._inbound(len(data), addr)
        return data

    def close(self):
        for s in (self.udp, self.test, self.app):
            s.close()


_idx = iter(range(100, 10000))


def session(x, x_peer, y, y_peer):
    k1, k2 = crypto.random_bytes(32), crypto.random_bytes(32)
    ix, iy = next(_idx), next(_idx)
    now = time.monotonic()
    x.dp.install_keypair(Keypair(x_peer, ix, iy, bytearray(k1), bytearray(k2), now, True), True)
    y.dp.install_keypair(Keypair(y_peer, iy, ix, bytearray(k2), bytearray(k1), now, False), True)


def build():
    a, r, b = Node(), Node(), Node()
    # ids: at a: r=1, b=2; at r: a=1, b=2; at b: r=1, a=2
    for n in (a, r, b):
        n.dp.add_peer(1, [])
        n.dp.add_peer(2, [])
    session(a, 1, r, 1)
    session(b, 1, r, 2)
    session(a, 2, b, 2)
    a.dp.set_endpoint(1, r.addr())
    b.dp.set_endpoint(1, r.addr())
    r.dp.set_endpoint(1, a.addr())
    r.dp.set_endpoint(2, b.addr())
    r.dp.set_relay(True, bytes_per_second=10_000, packets_per_second=5)
    a.dp.set_endpoint(2, RelayVia(1, 2))       # b is id 2 at the relay
    b.dp.set_relay_route(2, 1, 1)              # frames from the relay tagged 1 are a's
    a.dp.set_relay_route(2, 1, 2)              # ... and tagged 2, b's
    b.dp.set_endpoint(2, RelayVia(1, 1))
    return a, r, b


def send_from(node, peer_id, payload):
    node.dp.set_test_peer(peer_id)
    node.dp._tx[OFFSET:OFFSET + len(payload)] = payload
    node.dp._outbound(len(payload))


def test_relay_forwards_ciphertext_both_ways_and_never_to_its_device():
    a, r, b = build()
    try:
        send_from(a, 2, MARKER + b" a->b")
        on_wire1 = r.receive()
        assert on_wire1[0] == wire.MessageType.RELAY and MARKER not in on_wire1
        on_wire2 = b.receive()
        assert on_wire2[0] == wire.MessageType.RELAY and MARKER not in on_wire2
        assert b.app.recvfrom(1000)[0] == MARKER + b" a->b"
        send_from(b, 2, MARKER + b" b->a")
        r.receive()
        a.receive()
        assert a.app.recvfrom(1000)[0] == MARKER + b" a->b".replace(b"a->b", b"b->a")
        assert r.dp.relayed["forwarded"] == 2
        big = MARKER + bytes(1420 - len(MARKER))      # a full-MTU packet: the relay frame is bigger
        send_from(a, 2, big)
        r.receive()
        b.receive()
        assert b.app.recvfrom(2000)[0] == big
        # nothing reached the relay's own device (its test port's app)
        r.app.settimeout(0.2)
        try:
            got = r.app.recvfrom(1000)
        except socket.timeout:
            got = None
        assert got is None
        # a relayed packet never moves the peer's endpoint
        assert isinstance(b.dp.endpoint(2), RelayVia)
    finally:
        for n in (a, r, b):
            n.close()


def test_relay_budget_and_refusals_are_counted_drops():
    a, r, b = build()
    try:
        for i in range(8):
            send_from(a, 2, b"x" * 100)
            r.receive()
        for i in range(5):
            b.receive()
        assert r.dp.relayed["forwarded"] == 5 and r.dp.relayed["budget"] == 3
        # to an id the relay has no session for: dropped
        a.dp.set_endpoint(2, RelayVia(1, 77))
        send_from(a, 2, b"y" * 10)
        r.receive()
        assert r.dp.relayed["no_dest"] == 1
        # a frame from the relay with an unknown source tag: dropped at b
        r.dp.set_relay(False)
        before = b.dp.global_drops()["src_not_allowed"]
        r.dp._relay_send(RelayVia(2, 55), bytes([4, 0, 0, 0]) + bytes(40))
        b.receive()
        assert b.dp.global_drops()["src_not_allowed"] == before + 1
    finally:
        for n in (a, r, b):
            n.close()


# ---------------------------------------------------------------------------
# Both data paths, running loops: the fast path's relay (in C) finds the
# destination by peer id and a relayed client finds the relayed peer by
# (relay, relay id) through hash indexes (issue #15: no linear lookups on the
# packet path).  Filler peers added, removed and re-routed around the real
# ones exercise the indexes' links and unlinks.

import asyncio

import pytest

from phantom.dataplane import fast


class LoopNode:
    def __init__(self, impl):
        self.udp, self.test, self.app = _udp(), _udp(), _udp()
        for s in (self.udp, self.test):
            s.setblocking(False)                   # the loops read them when ready
        self.events = Events()
        cls = fast.FastDataPath if impl == "fast" else ReferenceDataPath
        self.dp = cls(Mode.TEST, self.udp, None, self.test, events=self.events, tunables=Tunables(),
                      test_deliver=self.app.getsockname())

    def addr(self):
        return self.udp.getsockname()

    def send_app(self, payload):
        self.app.sendto(payload, self.test.getsockname())

    def recv_app(self, timeout=2.0):
        self.app.settimeout(timeout)
        try:
            return self.app.recvfrom(70000)[0]
        except socket.timeout:
            return None

    def close(self):
        self.dp.close()
        for s in (self.udp, self.test, self.app):
            s.close()


def _fillers(dp, ids, relay_peer=None):
    for i in ids:
        dp.add_peer(i, [])
        if relay_peer is not None:
            dp.set_relay_route(i, relay_peer, i)
            dp.set_relay_route(i, relay_peer, i + 50_000)     # moved: the first tag is forgotten


@pytest.mark.parametrize("relay_impl,end_impl", [("fast", "fast"), ("fast", "reference"),
                                                 ("reference", "fast"), ("reference", "reference")])
def test_relay_lookups_among_many_peers(relay_impl, end_impl):
    async def main():
        a, r, b = LoopNode(end_impl), LoopNode(relay_impl), LoopNode(end_impl)
        try:
            _fillers(r.dp, range(1000, 1300))
            for i in range(1000, 1300, 2):
                r.dp.remove_peer(i)                            # stale ids: never a destination
            r.dp.add_peer(1000, [])                            # an id back, on a new slot (no session)
            for n in (a, r, b):
                n.dp.add_peer(1, [])
                n.dp.add_peer(2, [])
            for n in (a, b):                                   # fillers relayed via the relay too
                _fillers(n.dp, range(3, 200), relay_peer=1)
                for i in range(3, 200, 3):
                    n.dp.remove_peer(i)
            session(a, 1, r, 1)
            session(b, 1, r, 2)
            session(a, 2, b, 2)
            a.dp.set_endpoint(1, r.addr())
            b.dp.set_endpoint(1, r.addr())
            r.dp.set_endpoint(1, a.addr())
            r.dp.set_endpoint(2, b.addr())
            r.dp.set_relay(True)
            a.dp.set_endpoint(2, RelayVia(1, 2))               # b is id 2 at the relay
            b.dp.set_endpoint(2, RelayVia(1, 1))               # a is id 1 there
            a.dp.set_relay_route(2, 1, 2)
            b.dp.set_relay_route(2, 1, 1)
            a.dp.set_test_peer(2)
            b.dp.set_test_peer(2)
            for n in (a, r, b):
                n.dp.start()

            async def deliver(src, dst, payload, timeout=2.0):
                src.send_app(payload)
                return await asyncio.to_thread(dst.recv_app, timeout)

            assert await deliver(a, b, MARKER + b" a->b") == MARKER + b" a->b"
            assert await deliver(b, a, MARKER + b" b->a") == MARKER + b" b->a"
            big = MARKER + bytes(1420 - len(MARKER))
            assert await deliver(a, b, big) == big
            assert r.dp.relayed["forwarded"] == 3
            assert await asyncio.to_thread(r.recv_app, 0.2) is None     # never the relay's device
            # no such destination: unknown, removed, or without a session
            for rid in (77, 1002, 1000, 1001):
                a.dp.set_endpoint(2, RelayVia(1, rid))
                assert await deliver(a, b, b"to %d" % rid, 0.5) is None
            assert r.dp.relayed["no_dest"] == 4
            a.dp.set_endpoint(2, RelayVia(1, 2))
            # b re-routes a's tag: frames tagged 1 are no longer a's, then again
            before = b.dp.global_drops()["src_not_allowed"]
            b.dp.set_relay_route(2, 1, 9)
            assert await deliver(a, b, b"old tag", 0.5) is None
            assert b.dp.global_drops()["src_not_allowed"] == before + 1
            b.dp.set_relay_route(2, 1, 1)
            assert await deliver(a, b, b"tag back") == b"tag back"
            assert r.dp.relayed["forwarded"] == 5
        finally:
            for n in (a, r, b):
                n.close()

    asyncio.run(asyncio.wait_for(main(), 60))
