"""Data-path tests, written once and run against every data path
(uvloop habit: same tests, two implementations).

Two data paths in one process, in test-port mode, joined by real loopback
UDP sockets; keys are installed by hand, as the control plane would."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phantom import crypto, wire
from phantom.constants import Tunables
from phantom.dataplane.types import Keypair, Mode
from tests.support.datapath import Recorder as Events

DATAPATHS = ["reference", "fast"]


def make_datapath(kind, mode, udp, test, events, tunables, deliver):
    if kind == "reference":
        from phantom.dataplane.reference import ReferenceDataPath
        return ReferenceDataPath(mode, udp, None, test, events=events, tunables=tunables,
                                 test_deliver=deliver)
    from phantom.dataplane.fast import FastDataPath
    return FastDataPath(mode, udp, None, test, events=events, tunables=tunables, test_deliver=deliver)


def _udp(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


class Side:
    def __init__(self, kind, tunables):
        self.udp = _udp()
        self.test = _udp()
        self.app = _udp()                       # the local program on the test port
        self.app.settimeout(2)
        self.events = Events()
        self.dp = make_datapath(kind, Mode.TEST, self.udp, self.test, self.events, tunables,
                                self.app.getsockname())
        self.dp.add_peer(1, [])
        self.dp.set_test_peer(1)

    def close(self):
        self.dp.close()
        for s in (self.udp, self.test, self.app):
            s.close()


def keypairs(ia=11, ib=22, created=None):
    k1, k2 = crypto.random_bytes(32), crypto.random_bytes(32)
    now = time.monotonic() if created is None else created
    a = Keypair(1, ia, ib, bytearray(k1), bytearray(k2), now, True)
    b = Keypair(1, ib, ia, bytearray(k2), bytearray(k1), now, False)
    return a, b


@pytest.fixture(params=DATAPATHS)
def kind(request):
    return request.param


@contextlib.contextmanager
def running_pair(kind, tunables):
    """Two data paths of ``kind`` on their own event loop, peered with each other."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    a, b = Side(kind, tunables), Side(kind, tunables)
    try:
        a.dp.set_endpoint(1, b.udp.getsockname())
        b.dp.set_endpoint(1, a.udp.getsockname())

        async def _start():
            a.dp.start()
            b.dp.start()
        loop.run_until_complete(_start())
        yield a, b, loop
    finally:
        a.close()
        b.close()
        loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def pair(kind):
    with running_pair(kind, Tunables(burst=64)) as p:
        yield p


def spin(loop, seconds=0.1):
    loop.run_until_complete(asyncio.sleep(seconds))


def recv(side, loop, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spin(loop, 0.01)
        try:
            side.app.setblocking(False)
            return side.app.recvfrom(70000)
        except BlockingIOError:
            continue
    raise AssertionError("nothing delivered")


def established(a, b, loop):
    """Install keys in handshake order: the responder's first, then the initiator's."""
    ka, kb = keypairs()
    b.dp.install_keypair(kb, confirmed=False)
    a.dp.install_keypair(ka, confirmed=True)
    return ka, kb


def test_datagram_crosses_and_confirms_next_keypair(pair):
    a, b, loop = pair
    established(a, b, loop)
    a.app.sendto(b"hello", a.test.getsockname())
    data, _ = recv(b, loop)
    assert data == b"hello"
    assert b.events.confirmed == [(1, 22)], "b's 'next' keypair became current"
    b.app.sendto(b"back", b.test.getsockname())
    data, _ = recv(a, loop)
    assert data == b"back"
    ca = a.dp.counters(1)
    assert ca.tx_packets == 1 and ca.rx_packets == 1 and ca.last_data_rx > 0


def test_counters_of_many_peers_at_once_equal_each_peers(pair):
    """counters_many (the timer tick's read: the fast path holds its table
    lock once for all the peers) gives exactly what counters gives for each,
    traffic, a replayed packet's per-peer drop and the send counter included."""
    a, b, loop = pair
    established(a, b, loop)
    a.app.sendto(b"hello", a.test.getsockname())
    recv(b, loop)
    b.app.sendto(b"back", b.test.getsockname())
    recv(a, loop)
    pkt = _capture_one(a, b, loop)
    _inject(b, pkt)
    recv(b, loop)
    _inject(b, pkt)                     # a replay: a drop counted on peer 1
    spin(loop, 0.1)
    b.dp.add_peer(2, [])
    for side, ids in ((a, [1]), (b, [2, 1, 1])):
        many = side.dp.counters_many(ids)
        assert set(many) == set(ids)
        for pid in ids:
            assert many[pid] == side.dp.counters(pid)
    assert b.dp.counters_many([1])[1].drops and b.dp.counters_many([1])[1].tx_packets == 1
    assert a.dp.counters_many([]) == {}
    with pytest.raises(KeyError):
        b.dp.counters_many([1, 99])


def test_counters_changed_reports_only_peers_whose_times_moved(pair):
    """counters_changed (the timer tick's read since the tick keeps what it
    was given): a peer is reported the first time, then only once its
    counter times moved; what it reports equals counters; a peer removed and
    added again is reported afresh; an unknown peer is a KeyError."""
    a, b, loop = pair
    established(a, b, loop)
    b.dp.add_peer(2, [])
    first = b.dp.counters_changed([1, 2])
    assert set(first) == {1, 2} and first[1] == b.dp.counters(1)
    assert b.dp.counters_changed([1, 2]) == {}, "nothing moved: nothing read"
    a.app.sendto(b"hello", a.test.getsockname())
    recv(b, loop)
    moved = b.dp.counters_changed([1, 2])
    assert set(moved) == {1} and moved[1] == b.dp.counters(1) and moved[1].last_data_rx > 0
    assert b.dp.counters_changed([2, 1]) == {}
    assert a.dp.counters_changed([]) == {}
    b.dp.remove_peer(2)
    b.dp.add_peer(2, [])
    assert set(b.dp.counters_changed([1, 2])) == {2}
    with pytest.raises(KeyError):
        b.dp.counters_changed([1, 99])


def test_staged_until_keys_then_flushed(pair):
    a, b, loop = pair
    for i in range(3):
        a.app.sendto(b"early %d" % i, a.test.getsockname())
    spin(loop, 0.1)
    assert a.events.needed == [1], "one handshake request for the whole burst"
    established(a, b, loop)
    got = sorted(recv(b, loop)[0] for _ in range(3))
    assert got == [b"early 0", b"early 1", b"early 2"]


def test_keepalive_is_counted_not_delivered(pair):
    a, b, loop = pair
    established(a, b, loop)
    a.dp.send_keepalive(1)
    spin(loop, 0.1)
    c = b.dp.counters(1)
    assert c.rx_packets == 1 and c.last_rx > 0 and c.last_data_rx == 0


def _capture_one(a, b, loop, payload=b"x" * 100):
    """Send one datagram a -> b and capture the wire bytes with a tap socket."""
    tap = _udp()
    a.dp.set_endpoint(1, tap.getsockname())
    a.app.sendto(payload, a.test.getsockname())
    spin(loop, 0.1)
    tap.settimeout(2)
    data, _ = tap.recvfrom(70000)
    tap.close()
    a.dp.set_endpoint(1, b.udp.getsockname())
    return data


def _inject(b, data):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(data, b.udp.getsockname())
    s.close()


def test_ciphertext_layout_matches_the_wire_module(pair):
    a, b, loop = pair
    ka, kb = established(a, b, loop)
    pkt = _capture_one(a, b, loop, b"payload")
    idx, ctr = wire.unpack_transport_header(pkt)
    assert pkt[0] == wire.MessageType.TRANSPORT and idx == 22 and ctr == 0
    assert pkt[16:] == crypto.secretbox_seal(bytes(ka.send_key), 0, b"payload")
    assert b"payload" not in pkt


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p[:20], "truncated"),
    (lambda p: p[:3], "truncated"),
    (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "auth_failed"),
    (lambda p: p[:4] + (999).to_bytes(4, "little") + p[8:], "unknown_index"),
    (lambda p: bytes([9]) + p[1:], "malformed"),
    (lambda p: p[:1] + b"\x01" + p[2:], "malformed"),
    (lambda p: p + bytes(2000), "oversized"),          # inner payload above the MTU (1420)
])
def test_bad_datagrams_are_counted_drops(pair, mutate, reason):
    a, b, loop = pair
    established(a, b, loop)
    pkt = _capture_one(a, b, loop)
    bad = mutate(pkt)
    _inject(b, bad)
    spin(loop, 0.1)
    assert b.dp.global_drops()[reason] == 1
    _inject(b, pkt)
    data, _ = recv(b, loop)
    assert data == b"x" * 100, "a good packet still passes afterwards"


def test_oversized_inner_packet_is_not_sent(pair):
    a, b, loop = pair
    established(a, b, loop)
    a.app.sendto(bytes(1421), a.test.getsockname())
    spin(loop, 0.1)
    assert a.dp.global_drops()["oversized"] == 1 and a.dp.counters(1).tx_packets == 0


def test_replayed_packet_is_dropped(pair):
    a, b, loop = pair
    established(a, b, loop)
    pkt = _capture_one(a, b, loop)
    _inject(b, pkt)
    recv(b, loop)
    _inject(b, pkt)
    spin(loop, 0.1)
    assert b.dp.global_drops()["replay"] == 1


def test_handshake_messages_go_to_the_control_plane(pair):
    a, b, loop = pair
    msg = wire.Initiation(5, bytes(32), bytes(48), bytes(44)).pack()
    _inject(b, msg)
    spin(loop, 0.1)
    assert [m for m, _ in b.events.control] == [msg]


def test_retire_zeroes_keys_and_stops_traffic(pair):
    a, b, loop = pair
    ka, kb = established(a, b, loop)
    a.dp.retire_keypair(ka.local_index)
    assert not any(ka.send_key) and not any(ka.recv_key)
    a.app.sendto(b"after retire", a.test.getsockname())
    spin(loop, 0.1)
    assert a.events.needed == [1]


def test_expired_keypair_is_not_used(pair):
    a, b, loop = pair
    ka, kb = keypairs(created=time.monotonic() - 1000)
    a.dp.install_keypair(ka, confirmed=True)
    a.app.sendto(b"stale", a.test.getsockname())
    spin(loop, 0.1)
    assert a.events.needed == [1] and a.dp.counters(1).tx_packets == 0


def test_roaming_follows_authenticated_packets_only(pair):
    a, b, loop = pair
    established(a, b, loop)
    pkt = _capture_one(a, b, loop)
    # a forged packet from elsewhere does not move the endpoint
    forged = bytearray(pkt)
    forged[-1] ^= 1
    other = _udp()
    other.sendto(bytes(forged), b.udp.getsockname())
    spin(loop, 0.1)
    assert b.dp.endpoint(1)[1] == a.udp.getsockname()[1]
    # an authentic one does
    other.sendto(pkt, b.udp.getsockname())
    spin(loop, 0.1)
    assert b.dp.endpoint(1)[1] == other.getsockname()[1]
    other.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=300))
def test_fuzzed_datagrams_never_crash_and_are_counted(pair, data):
    a, b, loop = pair
    if not hasattr(b, "_keys"):
        b._keys = established(a, b, loop)
    before = sum(b.dp.global_drops().values()) + len(b.events.control)
    _inject(b, data)
    deadline = time.monotonic() + 2
    while True:
        spin(loop, 0.002)
        after = sum(b.dp.global_drops().values()) + len(b.events.control)
        if after > before or time.monotonic() > deadline:
            break
    assert after == before + 1, "every datagram is a counted drop or a control message"


def test_rekey_after_messages_asks_for_a_handshake_once(kind):
    with running_pair(kind, Tunables(rekey_after_messages=3, reject_after_messages=5)) as (a, b, loop):
        established(a, b, loop)
        for i in range(7):
            a.app.sendto(b"m%d" % i, a.test.getsockname())
            spin(loop, 0.02)
        spin(loop, 0.1)
        # one request when the counter reaches rekey_after_messages, one more when the
        # keypair is worn out (reject_after_messages) and packets start to wait
        assert a.events.needed == [1, 1]
        assert a.dp.counters(1).tx_packets == 5, "nothing is sent past reject_after_messages"


def test_failed_open_of_a_created_peer_forgets_it_everywhere(kind):
    """A peer that `open` added for a handshake that never completes is
    removed again: engine peers and indexes, and the data path's tables."""
    import base64

    from phantom.node.config import Settings
    from phantom.errors import HandshakeTimeout
    from phantom.node.daemon import Daemon

    t = Tunables(rekey_timeout=0.1, handshake_jitter=0.0, open_attempts=2, timer_tick=0.02)
    d = Daemon(Settings(mode=Mode.TEST, fast=kind == "fast", tunables=t), bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()
    absent = _udp()                             # nobody answers there
    stranger = crypto.x25519_public(crypto.x25519_private())

    async def main():
        d.build()
        d.dp.start()
        ticker = asyncio.get_running_loop().create_task(d.executor.run_ticker(d.shutdown))
        try:
            with pytest.raises(HandshakeTimeout):
                await d.controller.open(absent.getsockname(), public_key=base64.b64encode(stranger).decode())
        finally:
            d.shutdown.set()
            await ticker
        assert d.engine.peers == {} and d.engine._indexes == {}
        if kind == "fast":
            assert d.dp._peers == set() and d.dp._keys == {}
        else:
            assert d.dp._peers == {} and d.dp._sessions == {}
        d.dp.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        for s in (d.udp, d.test_sock, absent):
            s.close()


def test_a_refused_open_fails_at_once_with_the_reason(kind, caplog):
    """A member daemon's ``open`` to a peer that refuses its membership
    (issue 20): the peer's authenticated refusal fails the open at once with
    the reason (HandshakeRefused, HTTP 403), not after the handshake
    attempts; the daemon logs it at warning, and the peer the open added is
    forgotten again.  The peer here is a real engine behind a real UDP
    socket whose admission refuses every key as removed."""
    import base64

    from phantom.control.engine import Engine
    from phantom.errors import HandshakeRefused
    from phantom.node.config import Settings
    from phantom.node.daemon import Daemon

    # attempts that would take 60 s to time out: the refusal must end it long before
    t = Tunables(rekey_timeout=10.0, handshake_jitter=0.0, open_attempts=6, timer_tick=0.02)
    d = Daemon(Settings(mode=Mode.TEST, fast=kind == "fast", tunables=t), bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()
    remote_sock = _udp()
    remote = Engine(bytearray(crypto.x25519_private()), t)
    asked = []

    def admit(key, attachment, addr):
        asked.append((key, attachment))
        return "removed by the network"
    remote.admit_unknown = admit

    async def serve():
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await loop.sock_recvfrom(remote_sock, 2048)
            for act in remote.handle_datagram(data, addr):
                if type(act).__name__ == "SendDatagram":
                    remote_sock.sendto(act.data, act.addr)

    async def main():
        d.build()
        d.engine.membership = b'{"certificate": "of this member"}'
        d.dp.start()
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(d.executor.run_ticker(d.shutdown))
        server = loop.create_task(serve())
        t0 = time.monotonic()
        try:
            with pytest.raises(HandshakeRefused) as exc:
                await d.controller.open(remote_sock.getsockname(),
                                        public_key=base64.b64encode(remote.public_key).decode(), name="r")
        finally:
            server.cancel()
            d.shutdown.set()
            await ticker
        assert time.monotonic() - t0 < 5.0
        assert exc.value.message == "peer r refused us: removed by the network"
        assert asked == [(d.engine.public_key, b'{"certificate": "of this member"}')]
        assert remote.drops["refused"] == 1 and d.engine.drops["refused_us"] == 1
        assert d.engine.peers == {} and d.engine._indexes == {}
        d.dp.close()

    try:
        with caplog.at_level("WARNING"):
            asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        for s in (d.udp, d.test_sock, remote_sock):
            s.close()
    assert any(r.getMessage() == "peer=r refused us: removed by the network" and r.name == "phantom.daemon"
               for r in caplog.records)


def test_failed_open_keeps_the_keys_of_a_session_the_peer_uses(kind):
    """`open` times out, but meanwhile the peer's own initiation was answered:
    the peer sends on that session, so its keys must stay in the data path
    (a failed open used to close() the peer and clear them)."""
    import base64

    from phantom.node.config import Settings
    from phantom.control.engine import Engine
    from phantom.errors import HandshakeTimeout
    from phantom.node.daemon import Daemon

    t = Tunables(rekey_timeout=0.1, handshake_jitter=0.0, open_attempts=2, timer_tick=0.02)
    d = Daemon(Settings(mode=Mode.TEST, fast=kind == "fast", tunables=t), bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()
    remote_sock = _udp()                        # the peer: its answers to our initiations never come
    remote = Engine(bytearray(crypto.x25519_private()), t)
    rp = remote.add_peer(d.engine.public_key, "d", endpoint=d.udp.getsockname())

    async def main():
        d.build()
        peer = d.engine.add_peer(remote.public_key, "r", [], None)
        d.dp.add_peer(peer.id, [])
        d.dp.set_test_peer(peer.id)
        d.dp.start()
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(d.executor.run_ticker(d.shutdown))
        (init,) = [x for x in remote.open(rp.id) if type(x).__name__ == "SendDatagram"]
        loop.call_later(0.05, d.executor.control_packet, init.data, remote_sock.getsockname())
        try:
            with pytest.raises(HandshakeTimeout):
                await d.controller.open(remote_sock.getsockname(), public_key=base64.b64encode(remote.public_key).decode())
        finally:
            d.shutdown.set()
            await ticker
        assert peer.sessions, "the answered session is kept"
        idx = peer.sessions[-1].local_index
        assert d.engine._indexes.get(idx) == ("session", peer.id)
        if kind == "fast":
            assert idx in d.dp._fwd.key_slots(peer.id)
        else:
            assert idx in d.dp._sessions
        assert peer.pending is None and peer.state.value == "dead"
        d.dp.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        for s in (d.udp, d.test_sock, remote_sock):
            s.close()


def test_open_closed_while_waiting_leaves_the_next_open_alone(kind):
    """A close during an open ends that open (409) at once; its failure path
    never runs later against the peer's next round."""
    import base64

    from phantom.node.config import Settings
    from phantom.errors import Conflict
    from phantom.node.daemon import Daemon

    t = Tunables(rekey_timeout=0.1, handshake_jitter=0.0, open_attempts=3, timer_tick=0.02)
    d = Daemon(Settings(mode=Mode.TEST, fast=kind == "fast", tunables=t), bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()
    absent = _udp()
    other = crypto.x25519_public(crypto.x25519_private())

    async def main():
        d.build()
        peer = d.engine.add_peer(other, "r", [], None)
        d.dp.add_peer(peer.id, [])
        d.dp.start()
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(d.executor.run_ticker(d.shutdown))
        key = base64.b64encode(other).decode()
        try:
            first = loop.create_task(d.controller.open(absent.getsockname(), public_key=key))
            await asyncio.sleep(0.05)
            assert peer.pending is not None
            await d.controller.close("r")
            t0 = time.monotonic()
            with pytest.raises(Conflict):
                await first
            assert time.monotonic() - t0 < 0.2
            second = loop.create_task(d.controller.open(absent.getsockname(), public_key=key))
            await asyncio.sleep(0.05)
            assert peer.pending is not None and peer.state.value == "handshaking"
            second.cancel()
        finally:
            d.shutdown.set()
            await ticker
        d.dp.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        for s in (d.udp, d.test_sock, absent):
            s.close()
