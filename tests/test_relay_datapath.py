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

MARKER = b"RELAYED-PLAINTEXT-MARKER"
OFFSET = wire.TRANSPORT_PAYLOAD_OFFSET


class Events:
    def __init__(self):
        self.control = []

    def control_packet(self, data, addr):
        self.control.append((data, addr))

    def handshake_needed(self, peer_id):
        pass

    def keypair_confirmed(self, peer_id, local_index):
        pass


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


RID = 0x6B1D3A27        # the a<->b pair's relay id (random at a real relay)


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
    r.dp.set_relay_pair(1, RID, 2)             # a -> b (b accepts a) and b -> a (a accepts b)
    r.dp.set_relay_pair(2, RID, 1)
    a.dp.set_endpoint(2, RelayVia(1, RID))     # b is the pair RID at the relay
    b.dp.set_relay_route(2, 1, RID)            # frames from the relay tagged RID are a's
    a.dp.set_relay_route(2, 1, RID)            # ... and at a, b's
    b.dp.set_endpoint(2, RelayVia(1, RID))
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
        assert r.dp.global_drops()["relay_budget"] == 3
        # to an id that names no pair of a's at the relay: a counted drop of its own
        time.sleep(1.0)                       # a fresh budget second
        a.dp.set_endpoint(2, RelayVia(1, 77))
        send_from(a, 2, b"y" * 10)
        r.receive()
        assert r.dp.relayed["unknown_id"] == 1 and r.dp.global_drops()["relay_unknown_id"] == 1
        assert r.dp.relayed["forwarded"] == 5
        # the pair without a session at the destination
        r.dp.clear_keys(2)
        a.dp.set_endpoint(2, RelayVia(1, RID))
        send_from(a, 2, b"z" * 10)
        r.receive()
        assert r.dp.relayed["no_dest"] == 1
        # a frame from the relay with an unknown tag: dropped at b, counted as such
        r.dp.set_relay(False)
        session(b, 1, r, 2)
        before = b.dp.global_drops()["relay_unknown_id"]
        r.dp._relay_send(RelayVia(2, 55), bytes([4, 0, 0, 0]) + bytes(40))
        b.receive()
        assert b.dp.global_drops()["relay_unknown_id"] == before + 1
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
            for i in range(1000, 1300, 7):                     # filler pairs, some removed again
                r.dp.set_relay_pair(i, i * 3, 2)
                r.dp.set_relay_pair(2, i * 5, i)
            for i in range(1000, 1300, 14):
                r.dp.set_relay_pair(i, i * 3, None)
            r.dp.set_relay_pair(1, RID, 2)
            r.dp.set_relay_pair(2, RID, 1)
            a.dp.set_endpoint(2, RelayVia(1, RID))             # the a<->b pair at the relay
            b.dp.set_endpoint(2, RelayVia(1, RID))
            a.dp.set_relay_route(2, 1, RID)
            b.dp.set_relay_route(2, 1, RID)
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
            # ids that name no pair of a's: unknown, b's peer id, another source's pair
            for rid in (77, 2, 1000 * 5, 1007 * 3):
                a.dp.set_endpoint(2, RelayVia(1, rid))
                assert await deliver(a, b, b"to %d" % rid, 0.5) is None
            assert r.dp.relayed["unknown_id"] == 4
            # pairs to peers that are gone or have no session
            for i in (1000, 1001):
                r.dp.set_relay_pair(1, 4242 + i, i)
                a.dp.set_endpoint(2, RelayVia(1, 4242 + i))
                assert await deliver(a, b, b"to %d" % i, 0.5) is None
            assert r.dp.relayed["no_dest"] == 2
            a.dp.set_endpoint(2, RelayVia(1, RID))
            # b re-routes a's tag: frames tagged RID are no longer a's, then again
            before = b.dp.global_drops()["relay_unknown_id"]
            b.dp.set_relay_route(2, 1, 9)
            assert await deliver(a, b, b"old tag", 0.5) is None
            assert b.dp.global_drops()["relay_unknown_id"] == before + 1
            b.dp.set_relay_route(2, 1, RID)
            assert await deliver(a, b, b"tag back") == b"tag back"
            assert r.dp.relayed["forwarded"] == 5
        finally:
            for n in (a, r, b):
                n.close()

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("relay_impl", ["fast", "reference"])
def test_relay_forwards_only_pairs_the_destination_accepts(relay_impl):
    """A peer of the relay that the destination does not accept (m) has no
    pair with it: whatever relay id it tags its frames with (the a<->b
    pair's, peer ids, guesses), nothing is forwarded and each frame is a
    counted ``relay_unknown_id`` drop.  A pair forwards only in the
    directions whose destination accepts the source."""
    async def main():
        a, r, b, m = (LoopNode("reference"), LoopNode(relay_impl), LoopNode("reference"),
                      LoopNode("reference"))
        try:
            for n in (a, r, b):
                n.dp.add_peer(1, [])
                n.dp.add_peer(2, [])
            r.dp.add_peer(3, [])                               # m, at the relay
            m.dp.add_peer(1, [])                               # the relay, at m
            m.dp.add_peer(2, [])                               # b, as m would address it
            session(a, 1, r, 1)
            session(b, 1, r, 2)
            session(m, 1, r, 3)
            session(a, 2, b, 2)
            session(m, 2, b, 2)        # even keys b would take: the relay must not pass them on
            a.dp.set_endpoint(1, r.addr())
            b.dp.set_endpoint(1, r.addr())
            m.dp.set_endpoint(1, r.addr())
            r.dp.set_endpoint(1, a.addr())
            r.dp.set_endpoint(2, b.addr())
            r.dp.set_endpoint(3, m.addr())
            r.dp.set_relay(True)
            r.dp.set_relay_pair(1, RID, 2)                     # b accepts a; a does not accept b
            for n in (a, b):
                n.dp.set_endpoint(2, RelayVia(1, RID))
                n.dp.set_relay_route(2, 1, RID)
                n.dp.set_test_peer(2)
            m.dp.set_test_peer(2)
            for n in (a, r, b, m):
                n.dp.start()

            async def deliver(src, dst, payload, timeout=2.0):
                src.send_app(payload)
                return await asyncio.to_thread(dst.recv_app, timeout)

            assert await deliver(a, b, b"a->b") == b"a->b"
            assert await deliver(b, a, b"b->a", 0.5) is None
            assert r.dp.relayed["unknown_id"] == 1
            b_rx = b.dp.counters(1).rx_packets
            guesses = [RID, 1, 2, 3, 0, 0xFFFFFFFF] + list(range(4, 40))
            for rid in guesses:
                m.dp.set_endpoint(2, RelayVia(1, rid))
                m.send_app(b"from m via %d" % rid)
            deadline = time.monotonic() + 10
            while r.dp.relayed["unknown_id"] < 1 + len(guesses) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert r.dp.relayed["unknown_id"] == 1 + len(guesses)
            assert r.dp.global_drops()["relay_unknown_id"] == 1 + len(guesses)
            assert r.dp.relayed["forwarded"] == 1
            assert await asyncio.to_thread(b.recv_app, 0.3) is None
            assert b.dp.counters(1).rx_packets == b_rx, "nothing from m reached b"
            # the pair removed: a's frames are unknown too
            r.dp.set_relay_pair(1, RID, None)
            assert await deliver(a, b, b"after", 0.5) is None
            assert r.dp.relayed["unknown_id"] == 2 + len(guesses)
        finally:
            for n in (a, r, b, m):
                n.close()

    asyncio.run(asyncio.wait_for(main(), 60))
