"""WireGuard keypairs (cipher CHACHA20POLY1305) on both data paths.

* the fast path's C seal/open against dataplane/ciphers.py (and so against
  libsodium's whole-message AEAD), hypothesis-driven;
* whole data paths over loopback UDP in test mode, fast <-> reference in
  every combination, carrying IPv4/IPv6 packets (WireGuard's padding is
  trimmed by the inner packet's length, so test-port payloads are IP packets);
* byte-identical datagrams on both paths; keepalives, replays, forgeries and
  non-IP payloads decided the same way; the Phantom cipher is untouched.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phantom import crypto
from phantom.dataplane import ciphers
from phantom.dataplane.ciphers import CipherKind
from phantom.dataplane.types import Drop
from phantom.wire import wireguard as wgw

from phantomlab.packets import icmp_echo
from tests.contract.conftest import KEY_A, captured, fed, keypairs
from tests.support.datapath import Node, run, until
from tests.support.datapath import pair as _pair
from tests.support.datapath import udp_socket as _udp

_testing = pytest.importorskip("phantom.fastpath._testing", reason="phantom.fastpath._testing is not built")

pytestmark = pytest.mark.timeout(60)

CHACHA = CipherKind.CHACHA20POLY1305
MTU = 1420


# ===================================================================== the C cipher
@settings(max_examples=80, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), counter=st.integers(0, 2 ** 64 - 1),
       index=st.integers(0, 2 ** 32 - 1), plaintext=st.binary(max_size=3000),
       mtu=st.sampled_from([0, 1280, 1420, 1500, 9000]))
def test_c_seal_is_byte_identical_to_ciphers_module(key, counter, index, plaintext, mtu):
    mine = _testing.chacha_seal_packet(key, index, counter, plaintext, mtu)
    ref = ciphers.seal_packet(CHACHA, key, index, counter, plaintext, mtu)
    assert mine == ref
    assert len(mine) == 32 + wgw.padded_length(len(plaintext), mtu)
    got = _testing.chacha_open_packet(key, ref)
    padded = wgw.padded_length(len(plaintext), mtu)
    assert got == (index, counter, plaintext + bytes(padded - len(plaintext)))


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=500), flip=st.integers(0, 10 ** 6))
def test_c_open_refuses_every_corruption(plaintext, flip):
    dg = bytearray(ciphers.seal_packet(CHACHA, KEY_A, 7, 99, plaintext))
    pos = 8 + flip % (len(dg) - 8)           # the counter (nonce) onwards
    dg[pos] ^= 1 << (flip % 8)
    assert _testing.chacha_open_packet(KEY_A, bytes(dg)) is None
    assert ciphers.open_packet(CHACHA, KEY_A, bytes(dg)) is None


# ================================================================ whole data paths
def wg_keypairs(peer_a=1, peer_b=2, idx_a=0x1111, idx_b=0x2222, cipher=CHACHA):
    return keypairs(peer_a, peer_b, idx_a, idx_b, cipher)


def _packets():
    out = []
    for size in (0, 1, 3, 15, 16, 17, 100, 1000, 1392):
        out.append(icmp_echo("10.99.0.1", "10.99.0.2", 1, size, bytes([size % 256]) * size))
    for size in (0, 13, 1352):
        out.append(icmp_echo("fd99::1", "fd99::2", 2, size, bytes([size % 256]) * size))
    return out


PAIRS = [("reference", "reference"), ("fast", "fast"), ("fast", "reference"), ("reference", "fast")]


@pytest.mark.parametrize("impl_a,impl_b", PAIRS)
def test_wireguard_keypairs_carry_ip_packets_both_ways(impl_a, impl_b):
    async def main():
        a, b = await _pair(impl_a, impl_b)
        try:
            first = icmp_echo("10.99.0.1", "10.99.0.2", 9, 9)
            a.send_app(first)
            await until(lambda: a.events.needed == [1])
            ka, kb = wg_keypairs()
            b.dp.install_keypair(kb, confirmed=False)
            a.dp.install_keypair(ka, confirmed=True)            # flushes the staged packet
            assert await asyncio.to_thread(b.recv_app) == first
            await until(lambda: b.events.confirmed == [(2, 0x2222)])
            pkts = _packets()
            for p in pkts:
                a.send_app(p)
            for p in pkts:
                assert await asyncio.to_thread(b.recv_app) == p   # padding trimmed
            for p in pkts:
                b.send_app(p)
            for p in pkts:
                assert await asyncio.to_thread(a.recv_app) == p
            ca, cb = a.dp.counters(1), b.dp.counters(2)
            wire_bytes = sum(32 + wgw.padded_length(len(p), MTU) for p in [first] + pkts)
            assert ca.tx_packets == cb.rx_packets == 1 + len(pkts)
            assert ca.tx_bytes == cb.rx_bytes == wire_bytes
            assert a.dp.global_drops() == b.dp.global_drops() == {d.name.lower(): 0 for d in Drop}
        finally:
            a.close()
            b.close()
    run(main())


def _capture(impl, payloads, keepalives=2, cipher=CHACHA):
    return run(captured(Node(impl), wg_keypairs(cipher=cipher)[0], payloads, keepalives))


def test_wireguard_datagrams_byte_identical_on_both_paths_and_to_the_spec():
    payloads = _packets()
    ref = _capture("reference", payloads)
    mine = _capture("fast", payloads)
    assert mine == ref
    for i, d in enumerate(mine[:2]):                       # keepalives: 32 bytes
        assert len(d) == 32 and d[:16] == wgw.pack_transport_header(0x2222, i)
        assert d[16:] == crypto.aead_encrypt(KEY_A, i, b"", b"")
    for i, (p, d) in enumerate(zip(payloads, mine[2:]), start=2):
        padded = p + bytes(wgw.padded_length(len(p), MTU) - len(p))
        assert d == wgw.pack_transport_header(0x2222, i) + crypto.aead_encrypt(KEY_A, i, b"", padded)
        assert (len(d) % 16 == 0 or len(padded) == MTU) and p not in d


def test_phantom_keypairs_keep_the_secretbox_format_on_both_paths():
    payloads = [b"", b"plain", os.urandom(700)]

    for impl in ("reference", "fast"):
        got = _capture(impl, payloads[1:], keepalives=1, cipher=CipherKind.SECRETBOX)   # b"": the keepalive
        for i, (p, d) in enumerate(zip(payloads, got)):
            assert d == wgw.pack_transport_header(0x2222, i) + crypto.secretbox_seal(KEY_A, i, p)


async def _feed(impl, datagrams):
    """Feed raw datagrams to a data path holding B's WireGuard keypair; (drops, delivered)."""
    node = Node(impl)
    src = _udp()
    try:
        node.dp.add_peer(2, [])
        node.dp.set_test_peer(2)
        node.dp.start()
        _, kb = wg_keypairs()
        node.dp.install_keypair(kb, confirmed=True)
        drops, delivered = await fed(node, src, node.addr, datagrams, gap=0)
        return drops, delivered, node.dp.counters(2).rx_packets
    finally:
        node.close()
        src.close()


def test_replays_forgeries_and_bad_inner_decided_alike():
    good = icmp_echo("10.99.0.1", "10.99.0.2", 3, 3)
    seal = lambda ctr, p=good: ciphers.seal_packet(CHACHA, KEY_A, 0x2222, ctr, p, MTU)  # noqa: E731
    too_long = bytearray(good)
    too_long[2:4] = (len(good) + 40).to_bytes(2, "big")   # says more than the padded payload holds
    forged = bytearray(seal(5))
    forged[-1] ^= 1
    datagrams = [seal(0), seal(0),                      # replay
                 bytes(forged),                         # auth failed
                 seal(1, b"not an ip packet" * 2),      # bad inner
                 seal(2, bytes(too_long)),              # IP length beyond the payload: bad inner
                 seal(3, b""),                          # keepalive
                 ciphers.seal_packet(CHACHA, KEY_A, 0x9999, 4, good),   # unknown index
                 seal(6)]
    ref = run(_feed("reference", datagrams))
    mine = run(_feed("fast", datagrams))
    assert ref == mine
    drops, delivered, rx = ref
    assert drops == {"replay": 1, "auth_failed": 1, "bad_inner": 2, "unknown_index": 1}
    assert delivered == [good, good] and rx == 5
