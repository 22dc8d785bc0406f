"""The Cython fast path (phantom.fastpath, phantom.dataplane.fast).

Stage 1 -- the C core against its Python references:
  * secretbox in place, byte-identical to phantom.crypto;
  * the replay window against dataplane/replay.py (vector table + random);
  * the allowed-IPs trie against dataplane/routing.py.
Stage 2 -- whole data paths over loopback UDP in test mode:
  * every behaviour test runs against both paths (``impl`` fixture), and
    fast <-> reference interoperate;
  * the same datagrams give the same drops, counters and deliveries on both
    paths (hypothesis fuzz of forged / replayed / truncated / malformed input);
  * with the same keys and counters the ciphertext is byte-identical;
  * a failed seal never puts plaintext on the wire.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phantom import constants, crypto, wire
from phantom.constants import Tunables
from phantom.dataplane import fast
from phantom.dataplane.reference import ReferenceDataPath
from phantom.dataplane.replay import ReplayWindow as PyReplay
from phantom.dataplane.routing import AllowedIPs
from phantom.dataplane.types import Drop, Keypair, Mode
from tests.contract.conftest import captured
from tests.support.datapath import Node, Recorder, run, until
from tests.support.datapath import pair as _pair
from tests.support.datapath import udp_socket as _udp
from tests.unit.dataplane import test_replay as _replay_tests

_engine = pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")
_testing = pytest.importorskip("phantom.fastpath._testing", reason="phantom.fastpath._testing is not built")

pytestmark = pytest.mark.timeout(60)

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
MARKER = b"PHANTOM-PLAINTEXT-MARKER-7f3a"


# =============================================================== stage 1: crypto
@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), counter=st.integers(0, 2 ** 64 - 1),
       plaintext=st.binary(max_size=3000))
def test_seal_open_match_libsodium_wrappers(key, counter, plaintext):
    off = wire.TRANSPORT_PAYLOAD_OFFSET
    ref = bytearray(off + len(plaintext))
    ref[off:] = plaintext
    mine = bytearray(ref)
    crypto.secretbox_seal_into(key, counter, ref, off, len(plaintext))
    _testing.seal_into(key, counter, mine, off, len(plaintext))
    assert mine == ref
    assert bytes(mine[off - 16:]) == crypto.secretbox_seal(key, counter, plaintext)
    # a whole transport datagram, as the worker builds it
    packet = _testing.seal_packet(key, 0xA1B2C3D4, counter, plaintext)
    assert packet == wire.pack_transport_header(0xA1B2C3D4, counter) + crypto.secretbox_seal(
        key, counter, plaintext)
    # open in place, both ways round
    assert _testing.open_into(key, counter, mine, 16, len(mine) - 16)
    assert bytes(mine[off:]) == plaintext
    box = bytearray(crypto.secretbox_seal(key, counter, plaintext))
    assert _testing.open_into(key, counter, box, 0, len(box))
    assert bytes(box[16:]) == plaintext


@settings(max_examples=40, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=500), flip=st.integers(0, 10 ** 6),
       counter=st.integers(0, 2 ** 64 - 1))
def test_open_rejects_every_corruption(plaintext, flip, counter):
    box = bytearray(crypto.secretbox_seal(KEY_A, counter, plaintext))
    i = flip % len(box)
    box[i] ^= 1 << (flip % 8)
    assert not _testing.open_into(KEY_A, counter, bytearray(box), 0, len(box))
    with pytest.raises(crypto.CryptoError):
        crypto.secretbox_open(KEY_A, counter, bytes(box))
    good = bytearray(crypto.secretbox_seal(KEY_A, counter, plaintext))
    assert not _testing.open_into(KEY_B, counter, good, 0, len(good))       # wrong key
    assert not _testing.open_into(KEY_A, counter ^ 1, good, 0, len(good))   # wrong nonce
    assert not _testing.open_into(KEY_A, counter, bytearray(15), 0, 15)    # shorter than a MAC


def test_seal_rejects_bad_geometry():
    with pytest.raises(ValueError):
        _testing.seal_into(KEY_A, 0, bytearray(40), 8, 10)        # no room for the MAC
    with pytest.raises(ValueError):
        _testing.seal_into(KEY_A, 0, bytearray(40), 32, 9)        # runs past the end
    with pytest.raises(ValueError):
        _testing.seal_into(KEY_A[:31], 0, bytearray(64), 32, 8)   # short key


# =========================================================== stage 1: replay window
REPLAY_VECTORS = list(_replay_tests.VECTORS)


@pytest.mark.skipif(not REPLAY_VECTORS, reason="tests/unit/dataplane/test_replay.py has no VECTORS table")
def test_replay_vector_table():
    w = _testing.ReplayWindow()
    for row, (counter, accepted) in enumerate(REPLAY_VECTORS, 1):
        assert w.check(counter) == accepted, "row %d: check(%d)" % (row, counter)
        assert w.update(counter) == accepted, "row %d: update(%d)" % (row, counter)


W = constants.REPLAY_WINDOW_SIZE
_near = st.integers(0, 3 * W)
_edges = st.sampled_from([0, 1, 63, 64, W - 1, W, W + 1, 2 * W, constants.REJECT_AFTER_MESSAGES - 1,
                          constants.REJECT_AFTER_MESSAGES, 2 ** 64 - 1])


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.one_of(_near, _edges,
                                                       st.integers(0, 2 ** 64 - 1))),
                    max_size=200))
def test_replay_matches_reference(ops):
    mine, ref = _testing.ReplayWindow(), PyReplay()
    for update, counter in ops:
        if update:
            assert mine.update(counter) == ref.update(counter), counter
        else:
            assert mine.check(counter) == ref.check(counter), counter
        assert mine.last == ref.last


def test_replay_random_walk_matches_reference():
    rng = random.Random(6479)
    mine, ref = _testing.ReplayWindow(), PyReplay()
    top = 0
    for _ in range(20000):
        r = rng.random()
        if r < 0.6:
            top += rng.randint(0, 70)
            c = top
        elif r < 0.95:
            c = max(0, top - rng.randint(0, W + 200))
        else:
            top += rng.randint(0, 3 * W)
            c = top
        assert mine.check(c) == ref.check(c)
        assert mine.update(c) == ref.update(c)


# ============================================================ stage 1: allowed IPs
def _random_net(rng, v6):
    bits = 128 if v6 else 32
    plen = rng.choice([0, 1, 7, 8, 9, 16, 23, 24, 25, 31, 32] + ([48, 64, 127, 128] if v6 else []))
    plen = min(plen, bits)
    addr = rng.getrandbits(bits)
    # cluster addresses so prefixes overlap often
    addr = (addr & ((1 << (bits - 8)) - 1)) | ((10 if not v6 else 0xFD) << (bits - 8))
    return ipaddress.ip_network((addr, plen), strict=False)


@pytest.mark.parametrize("seed", range(4))
def test_allowed_ips_match_routing(seed):
    rng = random.Random(seed)
    ref = AllowedIPs()
    eng = _engine.Forwarder(_engine.MODE_IDS["tun"], -1)
    peers = list(range(1, 7))
    for p in peers:
        eng.add_peer(p)
    for _ in range(6):                      # several rounds of edits
        for p in rng.sample(peers, 3):
            nets = [_random_net(rng, rng.random() < 0.5) for _ in range(rng.randint(0, 6))]
            ref.set_peer(p, nets)
        eng.set_routes([(n.max_prefixlen, n.network_address.packed, n.prefixlen, p)
                        for n, p in ref.entries()])
        probes = [n.network_address.packed for n, _ in ref.entries()]
        probes += [(int(n.broadcast_address)).to_bytes(n.max_prefixlen // 8, "big") for n, _ in ref.entries()]
        for _ in range(300):
            v6 = rng.random() < 0.5
            probes.append(_random_net(rng, v6).network_address.packed)
            probes.append(os.urandom(16 if v6 else 4))
        for a in probes:
            assert eng.lookup(a) == ref.lookup(a), ipaddress.ip_address(a)
            for p in peers[:3]:
                assert (eng.lookup(a) == p) == ref.peer_allows(p, a)


# ======================================================= stage 2: whole data paths
def keypairs(peer_a, peer_b, idx_a=0x1111, idx_b=0x2222, now=None):
    """Matching keypairs: A sends with KEY_A, B sends with KEY_B."""
    now = time.monotonic() if now is None else now
    ka = Keypair(peer_a, idx_a, idx_b, bytearray(KEY_A), bytearray(KEY_B), now, True)
    kb = Keypair(peer_b, idx_b, idx_a, bytearray(KEY_B), bytearray(KEY_A), now, False)
    return ka, kb


@pytest.fixture(params=["reference", "fast"])
def impl(request):
    return request.param


@pytest.mark.parametrize("impl_a,impl_b", [("fast", "fast"), ("fast", "reference"),
                                           ("reference", "fast")])
def test_pair_carries_datagrams_both_ways(impl_a, impl_b):
    async def main():
        a, b = await _pair(impl_a, impl_b, mtu=65535)    # test-port datagrams up to 64 KiB
        try:
            a.send_app(b"staged before the handshake")
            await until(lambda: a.events.needed == [1])
            ka, kb = keypairs(1, 2)
            b.dp.install_keypair(kb, confirmed=False)      # responder: waits in "next"
            a.dp.install_keypair(ka, confirmed=True)       # initiator: current, flushes
            assert await asyncio.to_thread(b.recv_app) == b"staged before the handshake"
            await until(lambda: b.events.confirmed == [(2, 0x2222)])
            sizes = [1, 100, 1400, 8192, 65000]    # (an empty datagram would be a keepalive)
            for n in sizes:
                a.send_app(bytes([n % 251]) * n)
            for n in sizes:
                assert await asyncio.to_thread(b.recv_app) == bytes([n % 251]) * n
            b.send_app(b"reply")
            assert await asyncio.to_thread(a.recv_app) == b"reply"
            # The fast path's worker counts a send after sendmmsg returns: the
            # receiver can have the datagram a moment before the sender's
            # counter moves.  Wait (bounded) for the counts to settle, then
            # check them exactly.
            await until(lambda: a.dp.counters(1).tx_packets == 1 + len(sizes)
                        and b.dp.counters(2).tx_packets == 1)
            ca, cb = a.dp.counters(1), b.dp.counters(2)
            assert ca.tx_packets == cb.rx_packets == 1 + len(sizes)
            assert ca.tx_bytes == cb.rx_bytes == sum(32 + n for n in [27] + sizes)
            assert cb.tx_packets == ca.rx_packets == 1
            assert ca.send_counter == 1 + len(sizes) and cb.send_counter == 1
            assert cb.last_data_rx > 0 and ca.last_data_tx > 0
            assert a.dp.global_drops() == b.dp.global_drops() == {d.name.lower(): 0 for d in Drop}
            assert b.events.needed == [] and a.events.confirmed == []
        finally:
            a.close()
            b.close()
    run(main())


def test_keepalive_and_roaming(impl):
    async def main():
        a, b = await _pair(impl, impl)
        try:
            ka, kb = keypairs(1, 2)
            b.dp.install_keypair(kb, confirmed=True)
            a.dp.install_keypair(ka, confirmed=True)
            a.dp.send_keepalive(1)
            await until(lambda: b.dp.counters(2).rx_packets == 1)
            c = b.dp.counters(2)
            assert c.rx_bytes == 32 and c.last_rx > 0 and c.last_data_rx == 0.0
            # a forged packet from a new address does not move the endpoint ...
            mover = _udp()
            forged = bytearray(_testing.seal_packet(KEY_B, 0x2222, 5, b"x"))
            forged[-1] ^= 1
            mover.sendto(bytes(forged), b.addr)
            await until(lambda: b.dp.global_drops()["auth_failed"] == 1)
            assert b.dp.endpoint(2)[1] == a.addr[1]
            # ... an authentic one does (roaming)
            mover.sendto(_testing.seal_packet(KEY_A, 0x2222, 7, b"roamed"), b.addr)
            assert await asyncio.to_thread(b.recv_app) == b"roamed"
            assert b.dp.endpoint(2)[1] == mover.getsockname()[1]
            b.send_app(b"to the new address")
            mover.settimeout(2)
            data = (await asyncio.to_thread(mover.recvfrom, 2000))[0]
            assert data[:4] == b"\x04\0\0\0" and len(data) == 32 + len(b"to the new address")
            assert b.dp.counters(2).drops == {"auth_failed": 1}
            mover.close()
        finally:
            a.close()
            b.close()
    run(main())


def test_staging_overflow_and_handshake_needed_once(impl):
    async def main():
        t = Tunables(staged_packets=4)
        a, b = await _pair(impl, impl, t)
        try:
            for i in range(10):
                a.send_app(b"p%d" % i)
            await until(lambda: a.dp.global_drops()["staged_overflow"] == 6)
            await until(lambda: a.events.needed == [1])
            assert a.dp.counters(1).drops == {"staged_overflow": 6}
            ka, kb = keypairs(1, 2)
            b.dp.install_keypair(kb, confirmed=True)
            a.dp.install_keypair(ka, confirmed=True)
            got = [await asyncio.to_thread(b.recv_app) for _ in range(4)]
            assert got == [b"p6", b"p7", b"p8", b"p9"]          # the oldest were dropped
        finally:
            a.close()
            b.close()
    run(main())


def test_key_slots_rotation_and_retire(impl):
    async def main():
        a, b = await _pair(impl, impl)
        try:
            ka, kb = keypairs(1, 2)
            b.dp.install_keypair(kb, confirmed=True)
            a.dp.install_keypair(ka, confirmed=True)
            a.send_app(b"one")
            assert await asyncio.to_thread(b.recv_app) == b"one"
            # rekey: A initiates, B holds the new pair in "next" until A uses it
            ka2, kb2 = keypairs(1, 2, idx_a=0x3333, idx_b=0x4444)
            ka2.send_key[:] = KEY_B
            ka2.recv_key[:] = KEY_A
            kb2.send_key[:] = KEY_A
            kb2.recv_key[:] = KEY_B
            b.dp.install_keypair(kb2, confirmed=False)
            b.send_app(b"still on the old pair")
            assert await asyncio.to_thread(a.recv_app) == b"still on the old pair"
            a.dp.install_keypair(ka2, confirmed=True)
            a.send_app(b"on the new pair")
            assert await asyncio.to_thread(b.recv_app) == b"on the new pair"
            await until(lambda: b.events.confirmed == [(2, 0x4444)])
            # a packet in flight on the previous pair still authenticates
            late = _testing.seal_packet(KEY_A, 0x2222, 99, b"late on previous")
            a.udp.sendto(late, b.addr)
            assert await asyncio.to_thread(b.recv_app) == b"late on previous"
            # retire zeroes the control plane's key buffers and forgets the index
            b.dp.retire_keypair(0x2222)
            assert not any(kb.send_key) and not any(kb.recv_key)
            a.udp.sendto(_testing.seal_packet(KEY_A, 0x2222, 100, b"x"), b.addr)
            await until(lambda: b.dp.global_drops()["unknown_index"] == 1)
            b.dp.clear_keys(2)
            assert not any(kb2.send_key)
            b.send_app(b"needs a handshake now")
            await until(lambda: b.events.needed == [2])
        finally:
            a.close()
            b.close()
    run(main())


def test_rekey_after_messages_raises_handshake_needed_once(impl):
    async def main():
        t = Tunables(rekey_after_messages=3, reject_after_messages=5)
        a, b = await _pair(impl, impl, t)
        try:
            ka, kb = keypairs(1, 2)
            b.dp.install_keypair(kb, confirmed=True)
            a.dp.install_keypair(ka, confirmed=True)
            for i in range(5):
                a.send_app(b"m%d" % i)
                assert await asyncio.to_thread(b.recv_app) == b"m%d" % i
            await until(lambda: a.events.needed == [1])       # at counter 3, once
            a.send_app(b"over the limit: staged")
            await until(lambda: a.dp.counters(1).send_counter == 5 and len(a.events.needed) == 2)
            assert b.dp.counters(2).rx_packets == 5
        finally:
            a.close()
            b.close()
    run(main())


def test_expired_keypair_stages_and_drops_inbound(impl):
    async def main():
        t = Tunables(reject_after_time=5.0)
        a, b = await _pair(impl, impl, t)
        try:
            old = time.monotonic() - 10
            ka, kb = keypairs(1, 2, now=old)
            b.dp.install_keypair(kb, confirmed=True)
            a.dp.install_keypair(ka, confirmed=True)
            a.send_app(b"staged: key too old")
            await until(lambda: a.events.needed == [1])
            a.udp.sendto(_testing.seal_packet(KEY_A, 0x2222, 0, b"x"), b.addr)
            await until(lambda: b.dp.global_drops()["key_expired"] == 1)
            assert b.dp.counters(2).drops == {"key_expired": 1}
        finally:
            a.close()
            b.close()
    run(main())


def test_control_messages_reach_the_control_plane(impl):
    async def main():
        a, b = await _pair(impl, impl)
        try:
            init = b"\x01\0\0\0" + os.urandom(wire.INITIATION_SIZE - 4)
            resp = b"\x02\0\0\0" + os.urandom(wire.RESPONSE_SIZE - 4)
            cookie = b"\x03\0\0\0" + os.urandom(wire.COOKIE_REPLY_SIZE - 4)
            for m in (init, resp, cookie, init[:-1], cookie + b"x"):
                a.udp.sendto(m, b.addr)
            await until(lambda: len(b.events.control) == 3 and b.dp.global_drops()["malformed"] == 2)
            assert [d for d, _ in b.events.control] == [init, resp, cookie]
            assert all(addr[1] == a.addr[1] for _, addr in b.events.control)
            b.dp.send_control(b"\x03\0\0\0hello", a.addr)
            await until(lambda: len(a.events.control) == 0 and a.dp.global_drops()["malformed"] == 1)
        finally:
            a.close()
            b.close()
    run(main())


# ------------------------------------------------------------- byte-identical output
def _capture_ciphertext(impl, payloads, start_counter_packets=0):
    """Datagrams one data path puts on the wire for ``payloads``."""
    return run(captured(Node(impl, mtu=65535), keypairs(1, 2)[0], payloads, start_counter_packets))


def test_ciphertext_byte_identical_to_reference():
    payloads = [b"", MARKER, bytes(range(256)) * 5, os.urandom(1400), os.urandom(8192)]
    ref = _capture_ciphertext("reference", payloads, start_counter_packets=3)
    mine = _capture_ciphertext("fast", payloads, start_counter_packets=3)
    assert mine == ref
    assert mine[:3] == [wire.pack_transport_header(0x2222, i) + crypto.secretbox_seal(KEY_A, i, b"")
                        for i in range(3)]
    for i, (p, d) in enumerate(zip(payloads, mine[3:])):
        assert d == wire.pack_transport_header(0x2222, 3 + i) + crypto.secretbox_seal(KEY_A, 3 + i, p)
        if p:
            assert MARKER not in d


def test_seal_failure_never_sends_plaintext():
    """Fault injection: every seal 'fails'.  Nothing may reach the wire, the
    packets are counted as SEND_FAILED, and the worker keeps running."""
    async def main():
        node = Node("fast")
        sink = _udp(timeout=0.3)
        try:
            node.dp.add_peer(1, [])
            node.dp.set_test_peer(1)
            node.dp.set_endpoint(1, sink.getsockname())
            node.dp.start()
            ka, _ = keypairs(1, 2)
            node.dp.install_keypair(ka, confirmed=True)
            _testing.set_fault_seal(node.dp._fwd, True)
            for _ in range(20):
                node.send_app(MARKER * 10)
            node.dp.send_keepalive(1)
            await until(lambda: node.dp.counters(1).drops.get("send_failed") == 21)
            with pytest.raises(socket.timeout):
                sink.recvfrom(70000)
            assert node.dp.counters(1).tx_packets == 0
            _testing.set_fault_seal(node.dp._fwd, False)
            node.send_app(MARKER)
            data = sink.recvfrom(70000)[0]
            assert MARKER not in data and len(data) == 32 + len(MARKER)
        finally:
            node.close()
            sink.close()
    run(main())


# ---------------------------------------------------- same drops on both paths (fuzz)
def _valid(counter, payload=b"data", index=0x2222, key=KEY_A):
    return _testing.seal_packet(key, index, counter, payload)


_ops = st.one_of(
    st.tuples(st.just("valid"), st.integers(0, 3 * W), st.binary(max_size=64)),
    st.tuples(st.just("replay"), st.integers(0, 1000), st.just(b"")),
    st.tuples(st.just("flip"), st.integers(0, 10 ** 6), st.binary(min_size=0, max_size=64)),
    st.tuples(st.just("truncate"), st.integers(0, 31), st.just(b"")),
    st.tuples(st.just("junk"), st.integers(0, 0), st.binary(min_size=0, max_size=200)),
    st.tuples(st.just("typed"), st.integers(0, 255), st.binary(min_size=0, max_size=200)),
    st.tuples(st.just("index"), st.integers(0, 2 ** 32 - 1), st.binary(max_size=16)),
    st.tuples(st.just("reserved"), st.integers(1, 255), st.just(b"")),
    st.tuples(st.just("big"), st.integers(60000, 65400), st.just(b"")),
)


def _materialise(ops):
    sent = []
    out = []
    for op, n, data in ops:
        if op == "valid":
            d = _valid(n, data)
            sent.append(d)
        elif op == "replay":
            d = sent[n % len(sent)] if sent else _valid(0)
        elif op == "flip":
            d = bytearray(_valid(n % 5000, data))
            d[n % len(d)] ^= 1 << (n % 8)
            d = bytes(d)
        elif op == "truncate":
            d = _valid(1)[:n]
        elif op == "junk":
            d = data
        elif op == "typed":
            d = bytes([n % 6, 0, 0, 0]) + data
        elif op == "index":
            d = _valid(0, data, index=n)
        elif op == "reserved":
            d = bytearray(_valid(2))
            d[1 + n % 3] = n
            d = bytes(d)
        else:
            d = _valid(n, bytes(n))
        out.append(d)
    return out


async def _feed(impl, datagrams):
    node = Node(impl)
    src = _udp()
    try:
        node.dp.add_peer(2, [])
        node.dp.set_test_peer(2)
        node.dp.start()
        _, kb = keypairs(1, 2)
        node.dp.install_keypair(kb, confirmed=False)
        for d in datagrams:
            src.sendto(d, node.addr)
            await asyncio.sleep(0)

        def processed():
            g = node.dp.global_drops()
            return sum(g.values()) + node.dp.counters(2).rx_packets + len(node.events.control)
        await until(lambda: processed() == len(datagrams), timeout=10)
        delivered = []
        node.app.settimeout(0.05)           # deliveries follow the counters: read until quiet
        while True:
            try:
                delivered.append(node.app.recv(70000))
            except socket.timeout:
                break
        c = node.dp.counters(2)
        return {
            "drops": node.dp.global_drops(),
            "peer_drops": c.drops,
            "rx": (c.rx_packets, c.rx_bytes, c.last_rx > 0, c.last_data_rx > 0),
            "control": [d for d, _ in node.events.control],
            "confirmed": node.events.confirmed,
            "delivered": delivered,
        }
    finally:
        node.close()
        src.close()


@pytest.mark.slow          # seconds of hypothesis: the full suite, not the quick set
@pytest.mark.timeout(180)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_ops, min_size=1, max_size=25))
def test_fuzzed_datagrams_same_decisions_on_both_paths(ops):
    datagrams = _materialise(ops)
    ref = run(_feed("reference", datagrams))
    mine = run(_feed("fast", datagrams))
    # keepalives are not delivered; payload order is the wire order on loopback
    assert mine == ref


# ------------------------------------------------------- counters while the loop runs
def test_counters_readable_while_loop_runs():
    async def main():
        a, b = await _pair("fast", "fast")
        try:
            ka, kb = keypairs(1, 2)
            b.dp.install_keypair(kb, confirmed=True)
            a.dp.install_keypair(ka, confirmed=True)
            seen = []
            for i in range(200):
                a.send_app(b"x" * 200)
                if i % 20 == 0:
                    seen.append(b.dp.counters(2).rx_packets)
                    await asyncio.sleep(0)
            await until(lambda: b.dp.counters(2).rx_packets == 200)
            assert seen == sorted(seen)
            stats = b.dp.worker_stats
            assert stats["udp_packets"] == 200 and stats["udp_batches"] <= 200
        finally:
            a.close()
            b.close()
    run(main())


# ------------------------------------------------------------------ firewall plumbing
class _Verdict:
    def __init__(self, accept):
        self.accept = accept
        self.reject = False


class PayloadPolicy:
    """A firewall with the interface the data paths call (classify/reject_response):
    refuses packets that contain a marker, records every call."""

    def __init__(self, marker):
        self.marker = marker
        self.calls = []

    def classify(self, direction, packet, peer_id, now):
        self.calls.append((direction, bytes(packet), peer_id))
        return _Verdict(self.marker not in bytes(packet))

    def reject_response(self, packet, now):
        return None


def test_firewall_called_like_the_reference_and_drops_counted(impl):
    async def main():
        a, b = await _pair(impl, impl)
        try:
            fa, fb = PayloadPolicy(b"BLOCK-OUT"), PayloadPolicy(b"BLOCK-IN")
            a.dp.set_firewall(fa)
            b.dp.set_firewall(fb)
            ka, kb = keypairs(1, 2)
            b.dp.install_keypair(kb, confirmed=True)
            a.dp.install_keypair(ka, confirmed=True)
            for p in (b"ok 1", b"BLOCK-OUT here", b"BLOCK-IN here", b"ok 2"):
                a.send_app(p)
            got = [await asyncio.to_thread(b.recv_app) for _ in range(2)]
            assert got == [b"ok 1", b"ok 2"]
            # The worker publishes its counters after the batch that counted them:
            # wait for both sides (the sender's drop may land after the receiver's).
            await until(lambda: b.dp.counters(2).drops == {"firewall": 1})
            await until(lambda: a.dp.counters(1).drops == {"firewall": 1})
            assert a.dp.global_drops()["firewall"] == b.dp.global_drops()["firewall"] == 1
            assert [c[0] for c in fa.calls] == ["out"] * 4 and all(c[2] == 1 for c in fa.calls)
            assert [c[1] for c in fb.calls] == [b"ok 1", b"BLOCK-IN here", b"ok 2"]
            assert b.dp.counters(2).rx_packets == 3          # counted before the firewall
            a.dp.set_firewall(None)
            a.send_app(b"BLOCK-OUT now allowed")
            assert await asyncio.to_thread(b.recv_app) == b"BLOCK-OUT now allowed"
        finally:
            a.close()
            b.close()
    run(main())


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF



VNET = struct.Struct("<BBHHHH")        # virtio_net_hdr: flags gso_type hdr_len gso_size csum_start csum_offset


class FakeTun:
    """One Engine + Worker in TUN mode whose device is an AF_UNIX datagram
    socketpair: each datagram is one read()/write() of the device, with a
    virtio_net_hdr in front when ``vnet``.  The test holds the other end."""

    def __init__(self, vnet=True, allowed=((32, bytes([10, 0, 0, 0]), 8),)):
        self.app, self.dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.app, self.dev):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.dev.setblocking(False)
        self.udp = _udp()
        self.peer = _udp(timeout=2.0)         # the remote end of the tunnel
        self.engine = _engine.Forwarder(_engine.MODE_IDS["tun"], self.udp.fileno(), max_inner=65535)
        self.engine.add_peer(1)
        self.engine.set_routes([(bits, a, plen, 1) for bits, a, plen in allowed])
        self.engine.set_endpoint(1, fast.sockaddr_bytes(self.peer.getsockname()))
        self.engine.install_keypair(1, 0x2222, 0x1111, KEY_A, KEY_B, time.monotonic(), True)
        self.worker = _engine.Worker(self.engine, self.udp.fileno(), self.dev.fileno(), False,
                                       burst=64, vnet=vnet, gso=True, gro=False)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def close(self):
        self.worker.stop()
        self.thread.join(5)
        for s in (self.app, self.dev, self.udp, self.peer):
            s.close()


def _ip4_tcp(payload, seq, flags=0x10, src=b"\x0a\x01\x01\x01", dst=b"\x0a\x02\x02\x02",
             sport=1000, dport=2000, ident=1):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 77, 5 << 4, flags, 500, 0, 0)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), ident, 0x4000, 64, 6, 0,
                               src, dst))
    ip[10:12] = struct.pack("!H", _checksum(bytes(ip)))
    pseudo = src + dst + struct.pack("!BBH", 0, 6, 20 + len(payload))
    tcp = bytearray(tcp)
    tcp[16:18] = struct.pack("!H", _checksum(pseudo + bytes(tcp) + payload))
    return bytes(ip) + bytes(tcp) + payload


def _tcp_ok(pkt):
    """Full IPv4 + TCP checksum check of one plain segment."""
    ihl = (pkt[0] & 15) * 4
    tcp = pkt[ihl:]
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    return _checksum(pkt[:ihl]) == 0 and _checksum(pseudo + tcp) == 0


def _resegment(frame):
    """Inverse of the coalescing, written the obvious way: split a written
    super-packet into plain segments (checksums computed from scratch)."""
    flags, gso_type, hdr_len, gso_size, cstart, coff = VNET.unpack_from(frame)
    pkt = frame[VNET.size:]
    if gso_type == 0:
        return [pkt], False
    assert gso_type == 1 and flags == 1 and cstart == 20 and coff == 16, (flags, gso_type, cstart, coff)
    assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt) and _checksum(pkt[:20]) == 0
    head, body = pkt[:hdr_len], pkt[hdr_len:]
    seq = struct.unpack_from("!I", head, 24)[0]
    out = []
    for off in range(0, len(body), gso_size):
        chunk = body[off:off + gso_size]
        last = off + gso_size >= len(body)
        fl = head[33] if last else head[33] & ~0x08
        out.append(_ip4_tcp(chunk, (seq + off) & 0xFFFFFFFF, fl, head[12:16], head[16:20],
                            *struct.unpack_from("!HH", head, 20)))
    return out, True


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 1400), min_size=1, max_size=40),
       pushes=st.sets(st.integers(0, 39)), breaks=st.sets(st.integers(0, 39)))
def test_inbound_tcp_coalescing_preserves_segments(sizes, pushes, breaks):
    """Peer packets carrying TCP segments (some full-size runs, some short, PSH
    flags, another flow in between) are written to a virtio-net TUN coalesced;
    re-cut the obvious way they give back exactly the segments that were sent."""
    tun = FakeTun()
    try:
        sent, seq = [], 1000
        gso = 1200
        for i, n in enumerate(sizes):
            n = gso if i % 3 else min(n, gso)          # mostly full-size runs
            flags = 0x18 if i in pushes else 0x10
            sport = 1001 if i in breaks else 1000         # a different flow breaks a run
            seg = _ip4_tcp(os.urandom(n), seq, flags, sport=sport, ident=i)
            seq += n
            sent.append(seg)
        sender = _udp()
        for c, seg in enumerate(sent):
            sender.sendto(_testing.seal_packet(KEY_B, 0x2222, c, seg), tun.udp.getsockname())
        sender.close()
        got, coalesced = [], 0
        tun.app.settimeout(2.0)
        while len(got) < len(sent):
            frame = tun.app.recv(70000)
            segs, was = _resegment(frame)
            coalesced += was
            got.extend(segs)
        assert [s[20:] for s in got] == [s[20:] for s in sent]      # TCP header + payload
        assert all(_tcp_ok(s) for s in got)
        assert tun.engine.counters(1)["rx_packets"] == len(sent)
    finally:
        tun.close()


def test_outbound_tso_super_packet_is_cut_into_valid_segments():
    """A TSO super-packet from the 'kernel' leaves as MTU-sized transport
    packets whose plaintexts are valid TCP segments covering the payload."""
    tun = FakeTun()
    try:
        payload = os.urandom(20000)
        mss = 1380
        sup = bytearray(_ip4_tcp(payload, 5000, 0x18))
        sup[36:38] = b"\0\0"                                 # partial checksum: pseudo-header sum
        hdr = VNET.pack(1, 1, 40, mss, 20, 16)
        tun.app.send(hdr + bytes(sup))
        out = []
        for c in range((len(payload) + mss - 1) // mss):
            d = tun.peer.recvfrom(70000)[0]
            idx, ctr = wire.unpack_transport_header(d)
            assert idx == 0x1111 and ctr == c
            out.append(crypto.secretbox_open(KEY_A, ctr, d[16:]))
        assert b"".join(p[40:] for p in out) == payload
        assert all(_tcp_ok(p) for p in out)
        assert [struct.unpack_from("!I", p, 24)[0] for p in out] == [5000 + i * mss for i in range(len(out))]
        assert [p[33] for p in out] == [0x10] * (len(out) - 1) + [0x18]   # PSH on the last only
        assert len({struct.unpack_from("!H", p, 4)[0] for p in out}) == len(out)   # IP ids differ
        st = tun.worker.stats()
        assert st["tso_packets"] == 1 and st["tso_segments"] == len(out)
    finally:
        tun.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=st.binary(min_size=0, max_size=300), gso_type=st.sampled_from([0, 1, 3, 4, 5, 0x81, 9]),
       vals=st.tuples(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535),
                      st.integers(0, 65535)), flags=st.integers(0, 3))
def test_fuzzed_device_frames_never_crash(fake_tun, frame, gso_type, vals, flags):
    """Garbage virtio headers and packets from the device side: dropped or
    sent, never a crash; a good packet still passes afterwards."""
    tun = fake_tun
    tun.app.send(VNET.pack(flags, gso_type, *vals) + frame)
    good = _ip4_tcp(b"after garbage", 1, 0x18)
    tun.app.send(VNET.pack(0, 0, 0, 0, 0, 0) + good)
    deadline = time.monotonic() + 2
    while True:
        d = tun.peer.recvfrom(70000)[0]
        ctr = wire.unpack_transport_header(d)[1]
        if crypto.secretbox_open(KEY_A, ctr, d[16:]) == good:
            break
        assert time.monotonic() < deadline


@pytest.fixture(scope="module")
def fake_tun():
    tun = FakeTun(allowed=((32, bytes(4), 0),))
    yield tun
    tun.close()


# --------------------------------------------- firewall: C tables vs firewall.classify
_fw = pytest.importorskip("phantom.dataplane.firewall")
_PEERS = {"p1": 1, "p2": 2, "p3": 3}


def _rule_strategy():
    return st.fixed_dictionaries(
        {"direction": st.sampled_from(["in", "out"]),
         "action": st.sampled_from(["accept", "drop", "reject"])},
        optional={
            "proto": st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "any", 47]),
            "dst_port": st.one_of(st.integers(0, 70), st.just("10-40"), st.just("0-65535")),
            "src_port": st.one_of(st.integers(0, 70), st.just("50-60")),
            "peer": st.sampled_from(["p1", "p2", "p3"]),
            "cidr": st.sampled_from(["10.0.0.0/8", "10.1.2.0/24", "0.0.0.0/0", "fd00::/8",
                                     "fd00:1::/32", "10.1.2.3/32"]),
            "local_cidr": st.sampled_from(["10.9.0.0/16", "fd09::/16", "10.9.9.9/32"]),
            "src_group": st.sampled_from(["g12", "g3", "own", "empty"]),
            "dst_group": st.sampled_from(["g12", "g3", "own", "empty"]),
        })


_GROUPS = {"g12": {1, 2}, "g3": {3}, "own": {2}}     # peer id -> groups, as the peer door keeps it
_OWN = ("own",)                                       # this node's groups


def _ruleset(rules, stateful=False, policy="prototype", defaults=("accept", "accept")):
    """A valid rule set from generated rules (invalid combinations dropped)."""
    ok = []
    for r in rules:
        try:
            _fw.parse_rules({"rule": ok + [r], "default_policy": policy,
                             "allow_protocols": [47]}, _PEERS, _GROUPS, _OWN)
        except _fw.FirewallError:
            continue
        ok.append(r)
    return _fw.compile_rules(_fw.parse_rules(
        {"rule": ok, "default_policy": policy, "allow_protocols": [47], "stateful": stateful,
         "default_in": defaults[0], "default_out": defaults[1]}, _PEERS, _GROUPS, _OWN))


def _packet_strategy():
    addr4 = st.sampled_from([b"\x0a\x01\x02\x03", b"\x0a\x09\x09\x09", b"\xc0\xa8\x00\x01"])
    addr6 = st.sampled_from([bytes.fromhex("fd000000000000000000000000000001"),
                             bytes.fromhex("fd000001000000000000000000000002"),
                             bytes.fromhex("fd090000000000000000000000000009")])
    proto = st.sampled_from([6, 17, 1, 58, 47, 132, 0, 44, 60])
    port = st.integers(0, 70)

    @st.composite
    def pkt(draw):
        v6 = draw(st.booleans())
        p = draw(proto)
        l4 = struct.pack("!HH", draw(port), draw(port)) + draw(st.binary(min_size=0, max_size=24))
        if draw(st.integers(0, 9)) == 0:
            return draw(st.binary(max_size=60))                       # garbage
        if v6:
            body = l4
            if p in (0, 60) and draw(st.booleans()):                  # an extension header
                body = bytes([6, 0]) + bytes(6) + l4
            if p == 44:                                               # a fragment header
                body = bytes([17, 0]) + struct.pack("!HI", draw(st.sampled_from([0, 1, 8])), 7) + l4
            hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), p, 64, draw(addr6), draw(addr6))
            pk = hdr + body
        else:
            frag = draw(st.sampled_from([0, 0, 0, 0x2000, 1, 0x4000]))
            pk = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, p, 0,
                             draw(addr4), draw(addr4)) + l4
        cut = draw(st.integers(0, 3))
        return pk[:len(pk) - cut] if cut == 3 else pk
    return pkt()


@pytest.mark.slow          # seconds of hypothesis: the full suite, not the quick set
@settings(max_examples=300, deadline=None)
@given(rules=st.lists(_rule_strategy(), max_size=12), packets=st.lists(_packet_strategy(), min_size=1,
       max_size=8), direction=st.integers(0, 1), peer=st.sampled_from([1, 2, 3, -1]),
       policy=st.sampled_from(["prototype", "open"]),
       defaults=st.sampled_from([("accept", "accept"), ("drop", "accept"), ("reject", "drop")]))
def test_c_firewall_decides_like_the_reference(rules, packets, direction, peer, policy, defaults):
    tables = _ruleset(rules, policy=policy, defaults=defaults)
    for pk in packets:
        action, rule, reason = _testing.fw_decide(tables.blob, direction, pk, peer)
        ref = _fw.classify(tables, direction, pk, peer)
        if action == 3:          # deferred: a fragment, decided by the Python classifier itself
            continue
        assert (action, rule, reason) == (int(ref.action), ref.rule, int(ref.reason)), pk.hex()


def test_c_firewall_defers_fragments_and_stateful_tables():
    frag = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0x2000, 64, 17, 0, b"\x0a\0\0\1",
                       b"\x0a\0\0\2") + bytes(8)
    plain = frag[:6] + b"\0\0" + frag[8:]
    tables = _ruleset([])
    assert _testing.fw_decide(tables.blob, 0, frag, 1)[0] == 3
    assert _testing.fw_decide(tables.blob, 0, plain, 1) == (0, -1, int(_fw.Reason.DEFAULT))
    assert _testing.fw_decide(_ruleset([], stateful=True).blob, 0, plain, 1)[0] == 3




# ------------------------------------------------------------------------ TAP mode
def _eth(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def _arp(sender_ip, target_ip, sender_mac):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sender_mac, sender_ip, bytes(6), target_ip)


def _ip4_udp(src, dst, payload=b"tap"):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, src, dst) + \
        struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload


def _ip6_udp(src, dst, payload=b"tap6"):
    return struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 17, 64, src, dst) + \
        struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload


MAC_A, MAC_2, MAC_3 = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x02", b"\x02\0\0\0\0\x03"
BCAST = b"\xff" * 6
IP2, IP3, IP9 = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3]), bytes([10, 0, 0, 9])


def _tap_scenario(kind):
    """One TAP data path with two peers; the device is a socketpair.  Returns
    what each peer received (decrypted), what reached the device, and counters."""
    async def main():
        app, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        dev.setblocking(False)
        app.settimeout(2)
        udp, sink2, sink3 = _udp(), _udp(timeout=0.3), _udp(timeout=0.3)
        cls = ReferenceDataPath if kind == "reference" else fast.FastDataPath
        dp = cls(Mode.TAP, udp, dev.fileno(), None, events=Recorder(), tunables=Tunables())
        keys = {2: (KEY_A, KEY_B, 0x20, 0x21, sink2), 3: (KEY_B, KEY_A, 0x30, 0x31, sink3)}
        try:
            dp.add_peer(2, ["10.0.0.2/32"])
            dp.add_peer(3, ["10.0.0.3/32"])
            dp.start()
            for pid, (send, recv, local, remote, sink) in keys.items():
                dp.set_endpoint(pid, sink.getsockname())
                dp.install_keypair(Keypair(pid, local, remote, bytearray(send), bytearray(recv),
                                           time.monotonic(), False), confirmed=True)
            counters = {2: 0, 3: 0}

            def from_peer(pid, frame):
                send, recv, local, remote, sink = keys[pid]
                sink.sendto(_testing.seal_packet(recv, local, counters[pid], frame), udp.getsockname())
                counters[pid] += 1

            async def peers_got():
                out = {}
                for pid, (send, recv, local, remote, sink) in keys.items():
                    got = []
                    while True:
                        try:
                            d = await asyncio.to_thread(sink.recvfrom, 70000)
                        except socket.timeout:
                            break
                        got.append(crypto.secretbox_open(send, wire.unpack_transport_header(d[0])[1],
                                                         d[0][16:]))
                    out[pid] = got
                return out

            async def device_got(expect):
                return [await asyncio.to_thread(app.recv, 70000) for _ in range(expect)]

            log = {}
            arp = _eth(BCAST, MAC_A, 0x0806, _arp(IP9, IP2, MAC_A))
            app.send(arp)                                        # broadcast: both peers
            log["flood"] = await peers_got()
            f2 = _eth(MAC_A, MAC_2, 0x0800, _ip4_udp(IP2, IP9))
            from_peer(2, f2)                                     # learns MAC_2 -> peer 2
            log["in2"] = await device_got(1)
            uni = _eth(MAC_2, MAC_A, 0x0800, _ip4_udp(IP9, IP2))
            app.send(uni)                                        # unicast: peer 2 only
            log["unicast"] = await peers_got()
            from_peer(3, _eth(MAC_A, MAC_3, 0x0800, _ip4_udp(IP2, IP9)))         # spoofed IPv4
            from_peer(3, _eth(MAC_A, MAC_3, 0x0806, _arp(IP9, IP2, MAC_3)))      # spoofed ARP
            ll = bytes.fromhex("fe800000000000000000000000000003")
            f3 = _eth(MAC_A, MAC_3, 0x86DD, _ip6_udp(ll, ll))
            from_peer(3, f3)                                     # link-local: allowed
            from_peer(3, _eth(MAC_A, MAC_3, 0x0806, _arp(IP3, IP9, MAC_3)))      # good ARP
            from_peer(3, b"short")                               # not a frame
            log["in3"] = await device_got(2)
            await until(lambda: dp.counters(3).rx_packets == 5)
            dp.remove_peer(2)
            app.send(uni)                                        # MAC_2 forgotten: floods
            log["after_remove"] = await peers_got()
            log["c3"] = dp.counters(3).drops
            log["global"] = {k: v for k, v in dp.global_drops().items() if v}
            return log
        finally:
            dp.close()
            for s in (app, dev, udp, sink2, sink3):
                s.close()
    return run(main())


@pytest.mark.slow          # seconds of hypothesis: the full suite, not the quick set
def test_tap_mode_learns_floods_and_checks_sources_like_the_reference():
    ref = _tap_scenario("reference")
    mine = _tap_scenario("fast")
    assert mine == ref
    arp = _eth(BCAST, MAC_A, 0x0806, _arp(IP9, IP2, MAC_A))
    uni = _eth(MAC_2, MAC_A, 0x0800, _ip4_udp(IP9, IP2))
    assert mine["flood"] == {2: [arp], 3: [arp]}
    assert mine["unicast"] == {2: [uni], 3: []}
    assert mine["after_remove"] == {3: [uni], 2: []}
    assert mine["c3"] == {"src_not_allowed": 2, "bad_inner": 1}


def test_an_installed_keypair_is_live_for_the_worker_when_install_returns(impl):
    """The daemon sends a handshake response right after install_keypair
    returns (issue #10): a datagram on the new session that arrives at once
    must find the keys, also on the fast path whose worker reads concurrently."""
    async def main():
        a, b = await _pair(impl, impl)
        raw = _udp()
        try:
            for i in range(20):
                idx = 0x3000 + i
                kb = Keypair(2, idx, 0x9000 + i, bytearray(KEY_B), bytearray(KEY_A), time.monotonic(), False)
                b.dp.install_keypair(kb, confirmed=False)
                # no await in between: nothing else runs on the loop
                raw.sendto(_testing.seal_packet(KEY_A, idx, 0, b"first %d" % i), b.addr)
                assert await asyncio.to_thread(b.recv_app) == b"first %d" % i
            assert b.dp.global_drops()["unknown_index"] == 0
        finally:
            raw.close()
            a.close()
            b.close()
    run(main())
