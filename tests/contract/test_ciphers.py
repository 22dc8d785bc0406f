"""Transport ciphers on both data paths, byte for byte (issue 23, items 1 and 2).

* AEGIS-256 (suite aegis256): the fast path's C seal against
  dataplane/ciphers.py and against libsodium's whole-message AEAD under the
  crypto_kdf-derived key and the 32-byte counter nonce; every corruption
  refused; whole data paths (fast <-> reference, every combination) carry
  datagrams both ways, byte-identical to the spec; replays, forgeries,
  truncated and oversized datagrams decided alike; relays carry AEGIS-256
  end-to-end sessions over AEGIS-256 hops (type-7 relay frames: see
  test_relay_frames.py);
* ChaCha20-Poly1305 (WireGuard): OpenSSL's libcrypto and libsodium give the
  same bytes, in C (the fast path) and through cffi (the reference path),
  over random keys and counters and lengths 0..65535 with the 16-byte
  padding edges; forgeries refused by both with the output zeroed; the fast
  path's per-thread EVP contexts hold up under threads sealing at once;
* the start-up choice between the two (measurement, rule, PHANTOM_CHACHA).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phantom import crypto, libcrypto, wire
from phantom.constants import Tunables
from phantom.dataplane import ciphers
from phantom.dataplane.ciphers import ChachaPolicy, CipherKind
from phantom.dataplane.reference import ReferenceDataPath
from phantom.dataplane.types import Drop, Mode, RelayVia
from phantom.wire import wireguard as wgw
from tests.contract.conftest import KEY_A, KEY_B, aegis_spec, captured, derived, fed, keypair, keypairs

_testing = pytest.importorskip("phantom.fastpath._testing", reason="phantom.fastpath._testing is not built")
from phantom.dataplane import fast  # noqa: E402

pytestmark = pytest.mark.timeout(120)

AEGIS = CipherKind.AEGIS256
CHACHA = CipherKind.CHACHA20POLY1305
PAIRS = [("reference", "reference"), ("fast", "fast"), ("fast", "reference"), ("reference", "fast")]
needs_libcrypto = pytest.mark.skipif(not libcrypto.available(), reason="no libcrypto.so.3")


# ====================================================================== AEGIS-256, C
@settings(max_examples=80, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), counter=st.integers(0, 2 ** 64 - 1),
       index=st.integers(0, 2 ** 32 - 1), plaintext=st.binary(max_size=3000))
def test_aegis_c_seal_is_byte_identical_to_ciphers_module_and_libsodium(key, counter, index, plaintext):
    dkey = derived(key)
    mine = _testing.aegis_seal_packet(dkey, index, counter, plaintext)
    ref = ciphers.seal_packet(AEGIS, dkey, index, counter, plaintext)
    assert mine == ref == aegis_spec(key, index, counter, plaintext)
    assert len(mine) == len(plaintext) + 48
    assert _testing.aegis_open_packet(dkey, ref) == (index, counter, plaintext)
    assert ciphers.open_packet(AEGIS, dkey, mine) == (index, counter, plaintext)


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=500), flip=st.integers(0, 10 ** 6))
def test_aegis_open_refuses_every_corruption(plaintext, flip):
    good = ciphers.seal_packet(AEGIS, KEY_A, 7, 9, plaintext)
    bad = bytearray(good)
    pos = 8 + flip % (len(bad) - 8)            # counter, ciphertext or tag (the index only routes)
    bad[pos] ^= 1 << (flip % 8)
    assert _testing.aegis_open_packet(KEY_A, bytes(bad)) is None
    assert ciphers.open_packet(AEGIS, KEY_A, bytes(bad)) is None
    for short in (0, 16, 47):
        assert ciphers.open_packet(AEGIS, KEY_A, good[:short]) is None
        assert _testing.aegis_open_packet(KEY_A, good[:short]) is None


# ================================================================ data paths, AEGIS-256
def _udp(timeout=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    if timeout is None:
        s.setblocking(False)
    else:
        s.settimeout(timeout)
    return s


class Recorder:
    def __init__(self):
        self.control, self.needed, self.confirmed = [], [], []

    def control_packet(self, data, addr):
        self.control.append((data, addr))

    def handshake_needed(self, peer_id):
        self.needed.append(peer_id)

    def keypair_confirmed(self, peer_id, local_index):
        self.confirmed.append((peer_id, local_index))


class Node:
    def __init__(self, impl, mtu=1420):
        self.udp, self.test, self.app = _udp(), _udp(), _udp(2.0)
        self.events = Recorder()
        cls = fast.FastDataPath if impl == "fast" else ReferenceDataPath
        self.dp = cls(Mode.TEST, self.udp, None, self.test, events=self.events, tunables=Tunables(),
                      test_deliver=self.app.getsockname(), mtu=mtu)

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


async def until(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        await asyncio.sleep(0.005)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


PAYLOADS = [b"x", bytes(15), bytes(range(256)) * 4, os.urandom(1420), os.urandom(1)]


@pytest.mark.parametrize("impl_a,impl_b", PAIRS)
def test_aegis_keypairs_carry_datagrams_both_ways(impl_a, impl_b):
    async def main():
        a, b = Node(impl_a), Node(impl_b)
        try:
            a.dp.add_peer(1, [])
            b.dp.add_peer(2, [])
            a.dp.set_test_peer(1)
            b.dp.set_test_peer(2)
            a.dp.set_endpoint(1, b.addr())
            b.dp.set_endpoint(2, a.addr())
            a.dp.start()
            b.dp.start()
            a.send_app(b"first")
            await until(lambda: a.events.needed == [1])
            ka, kb = keypairs(cipher=AEGIS)
            b.dp.install_keypair(kb, confirmed=False)
            a.dp.install_keypair(ka, confirmed=True)           # flushes the staged packet
            assert await asyncio.to_thread(b.recv_app) == b"first"
            await until(lambda: b.events.confirmed == [(2, 0x2222)])
            for p in PAYLOADS:
                a.send_app(p)
                assert await asyncio.to_thread(b.recv_app) == p
                b.send_app(p[::-1])
                assert await asyncio.to_thread(a.recv_app) == p[::-1]
            a.dp.send_keepalive(1)
            await until(lambda: b.dp.counters(2).rx_packets == 2 + len(PAYLOADS))
            ca, cb = a.dp.counters(1), b.dp.counters(2)
            assert ca.tx_packets == cb.rx_packets == 2 + len(PAYLOADS)
            assert ca.tx_bytes == cb.rx_bytes == sum(48 + len(p) for p in [b"first", b""] + PAYLOADS)
            assert a.dp.global_drops() == b.dp.global_drops() == {d.name.lower(): 0 for d in Drop}
        finally:
            a.close()
            b.close()
    run(main())


def _capture(impl, payloads, cipher=AEGIS, keepalives=2):
    return run(captured(Node(impl), keypairs(cipher=cipher)[0], payloads, keepalives))


def test_aegis_datagrams_byte_identical_on_both_paths_and_to_the_spec():
    ref = _capture("reference", PAYLOADS)
    mine = _capture("fast", PAYLOADS)
    assert mine == ref
    for i, (p, d) in enumerate(zip([b"", b""] + PAYLOADS, mine)):
        assert d == aegis_spec(KEY_A, 0x2222, i, p)
        assert len(d) == 48 + len(p) and (len(p) < 8 or p not in d)


async def _feed(impl, datagrams, mtu=1420, cipher=AEGIS):
    """Raw datagrams to a data path holding B's keypair: (drops, delivered, rx)."""
    node = Node(impl, mtu)
    src = _udp()
    try:
        node.dp.add_peer(2, [])
        node.dp.set_test_peer(2)
        node.dp.start()
        _, kb = keypairs(cipher=cipher)
        node.dp.install_keypair(kb, confirmed=True)
        drops, delivered = await fed(node, src, node.addr(), datagrams)
        return drops, delivered, node.dp.counters(2).rx_packets
    finally:
        node.close()
        src.close()


def test_aegis_replays_forgeries_and_sizes_decided_alike():
    dkey = derived(KEY_A)
    seal = lambda ctr, p=b"good": ciphers.seal_packet(AEGIS, dkey, 0x2222, ctr, p)  # noqa: E731
    forged = bytearray(seal(5))
    forged[-1] ^= 1
    mtu = 1420
    datagrams = [seal(0), seal(0),                                  # replay
                 bytes(forged),                                     # auth failed
                 seal(1)[:47],                                      # shorter than a keepalive: auth failed
                 seal(2, bytes(mtu)),                               # the largest: delivered
                 seal(3, bytes(mtu + 1)),                           # one byte over: oversized
                 ciphers.seal_packet(CipherKind.SECRETBOX, KEY_A, 0x2222, 4, b"secretbox"),  # wrong cipher
                 ciphers.seal_packet(AEGIS, KEY_A, 0x2222, 6, b"session key, not the derived one"),
                 ciphers.seal_packet(AEGIS, dkey, 0x9999, 7, b"x"),  # unknown index
                 seal(8, b""),                                      # keepalive
                 seal(9)]
    ref = run(_feed("reference", datagrams, mtu))
    mine = run(_feed("fast", datagrams, mtu))
    assert ref == mine
    drops, delivered, rx = ref
    assert drops == {"replay": 1, "auth_failed": 4, "oversized": 1, "unknown_index": 1}
    assert delivered == [b"good", bytes(mtu), b"good"] and rx == 4


def test_secretbox_sizes_keep_their_own_limit():
    """The size check allows AEGIS-256's 16 extra bytes only on AEGIS-256
    sessions: a secretbox datagram one to sixteen bytes over the MTU is still
    oversized (on both paths), not opened and delivered."""
    seal = lambda ctr, n: ciphers.seal_packet(CipherKind.SECRETBOX, KEY_A, 0x2222, ctr, bytes(n))  # noqa: E731
    datagrams = [seal(0, 1420), seal(1, 1421), seal(2, 1436), seal(3, 1437), seal(4, 100)]
    ref = run(_feed("reference", datagrams, 1420, CipherKind.SECRETBOX))
    mine = run(_feed("fast", datagrams, 1420, CipherKind.SECRETBOX))
    assert ref == mine
    drops, delivered, rx = ref
    assert drops == {"oversized": 3} and delivered == [bytes(1420), bytes(100)] and rx == 2


@pytest.mark.parametrize("impl_a,impl_b", PAIRS)
@pytest.mark.parametrize("first,then", [(AEGIS, CipherKind.SECRETBOX), (CipherKind.SECRETBOX, AEGIS)],
                         ids=["aegis-then-secretbox", "secretbox-then-aegis"])
def test_rekey_to_another_suite_keeps_traffic_flowing(impl_a, impl_b, first, then):
    """A new handshake may settle on another suite (a peer reconfigured):
    the new keypair takes over as a rekey always does, and a packet sealed
    on the previous one just before still opens."""
    async def main():
        a, b = Node(impl_a), Node(impl_b)
        try:
            a.dp.add_peer(1, [])
            b.dp.add_peer(2, [])
            a.dp.set_test_peer(1)
            b.dp.set_test_peer(2)
            a.dp.set_endpoint(1, b.addr())
            b.dp.set_endpoint(2, a.addr())
            a.dp.start()
            b.dp.start()
            ka, kb = keypairs(cipher=first)
            b.dp.install_keypair(kb, confirmed=False)
            a.dp.install_keypair(ka, confirmed=True)
            a.send_app(b"on the first")
            assert await asyncio.to_thread(b.recv_app) == b"on the first"
            b.send_app(b"reply on the first")
            assert await asyncio.to_thread(a.recv_app) == b"reply on the first"
            late = ciphers.seal_packet(first, derived(KEY_B) if first == AEGIS else KEY_B, 0x1111, 5,
                                       b"late on the first")
            # b initiates the rekey: it installs as current, a as next
            kb2, ka2 = keypairs(peer_a=2, peer_b=1, idx_a=0x3333, idx_b=0x4444, cipher=then,
                                ka=KEY_B[::-1], kb=KEY_A[::-1])
            a.dp.install_keypair(ka2, confirmed=False)
            b.dp.install_keypair(kb2, confirmed=True)
            b.send_app(b"on the second")
            assert await asyncio.to_thread(a.recv_app) == b"on the second"
            await until(lambda: a.events.confirmed == [(1, 0x4444)])
            a.send_app(b"answer on the second")
            assert await asyncio.to_thread(b.recv_app) == b"answer on the second"
            src = _udp()
            try:
                src.sendto(late, a.addr())                       # on the previous keypair
                assert await asyncio.to_thread(a.recv_app) == b"late on the first"
            finally:
                src.close()
            assert a.dp.global_drops() == b.dp.global_drops() == {d.name.lower(): 0 for d in Drop}
        finally:
            a.close()
            b.close()
    run(main())


# ============================================================= relays over AEGIS-256
_idx = iter(range(300, 100000))


def _session(x, x_peer, y, y_peer, cipher):
    k1, k2 = crypto.random_bytes(32), crypto.random_bytes(32)
    ix, iy = next(_idx), next(_idx)
    x.dp.install_keypair(keypair(x_peer, ix, iy, k1, k2, cipher, True), True)
    y.dp.install_keypair(keypair(y_peer, iy, ix, k2, k1, cipher, False), True)


@pytest.mark.parametrize("relay_impl,end_impl", PAIRS)
@pytest.mark.parametrize("hop,e2e", [(AEGIS, AEGIS), (CipherKind.SECRETBOX, AEGIS),
                                     (AEGIS, CipherKind.SECRETBOX)], ids=["aegis-aegis", "sb-aegis", "aegis-sb"])
def test_relay_carries_aegis_sessions(relay_impl, end_impl, hop, e2e):
    async def main():
        a, r, b = Node(end_impl), Node(relay_impl), Node(end_impl)
        try:
            for n in (a, r, b):
                n.dp.add_peer(1, [])
                n.dp.add_peer(2, [])
            _session(a, 1, r, 1, hop)
            _session(b, 1, r, 2, hop)
            _session(a, 2, b, 2, e2e)
            a.dp.set_endpoint(1, r.addr())
            b.dp.set_endpoint(1, r.addr())
            r.dp.set_endpoint(1, a.addr())
            r.dp.set_endpoint(2, b.addr())
            r.dp.set_relay(True)
            rid = 4242                                 # the pair (a, b) at the relay
            r.dp.set_relay_pair(1, rid, 2)
            r.dp.set_relay_pair(2, rid, 1)
            a.dp.set_endpoint(2, RelayVia(1, rid))
            b.dp.set_endpoint(2, RelayVia(1, rid))
            a.dp.set_relay_route(2, 1, rid)
            b.dp.set_relay_route(2, 1, rid)
            a.dp.set_test_peer(2)
            b.dp.set_test_peer(2)
            for n in (a, r, b):
                n.dp.start()
            for p in (b"a->b", bytes(range(200)), os.urandom(1420)):
                a.send_app(p)
                assert await asyncio.to_thread(b.recv_app) == p
                b.send_app(p[::-1])
                assert await asyncio.to_thread(a.recv_app) == p[::-1]
            a.dp.send_keepalive(2)                     # an empty end-to-end datagram, relayed
            await until(lambda: b.dp.counters(2).rx_packets == 4)
            assert r.dp.relayed["forwarded"] == 7
            assert await asyncio.to_thread(r.recv_app, 0.2) is None      # never the relay's device
            for n in (a, r, b):
                assert not any(n.dp.global_drops().values()), n.dp.global_drops()
        finally:
            for n in (a, r, b):
                n.close()
    run(main())


# ================================================== ChaCha20-Poly1305: OpenSSL = libsodium
@pytest.fixture
def chacha():
    """set(impl): force "openssl" or "libsodium" (both paths); restored afterwards."""
    before = ciphers.chacha_policy()

    def set_(impl):
        ciphers.set_chacha_policy(ChachaPolicy(0 if impl == "openssl" else None, "test"))
    yield set_
    ciphers.set_chacha_policy(before)


def _lengths():
    out = set(range(0, 2049))
    for base in list(range(2048, 65536, 1024)) + [1280, 1420, 1500, 9000, 65520, 65535]:
        for d in (-17, -16, -15, -1, 0, 1, 15, 16, 17):
            if 0 <= base + d <= 65535:
                out.add(base + d)
    return sorted(out)


@needs_libcrypto
def test_openssl_and_libsodium_chacha_are_byte_identical_over_lengths_0_to_65535(chacha):
    """Every length up to 2048 and the 16-byte edges around 1 KiB steps up to
    65535: padded as WireGuard pads (mtu 0) and unpadded (mtu = the length:
    padding never goes past the MTU), so ChaCha20-Poly1305 sees lengths that
    are and are not multiples of 16."""
    rng = random.Random(23)
    for n in _lengths():
        key = rng.randbytes(32)
        counter = rng.getrandbits(64) if n % 3 else n
        index = rng.getrandbits(32)
        pt = rng.randbytes(n)
        for mtu in (0, n):
            padded = pt + bytes(wgw.padded_length(n, mtu) - n)
            expect = wgw.pack_transport_header(index, counter) + crypto.aead_encrypt(key, counter, b"", padded)
            got = {}
            for impl in ("openssl", "libsodium"):
                chacha(impl)
                got["c-" + impl] = _testing.chacha_seal_packet(key, index, counter, pt, mtu)
                got["py-" + impl] = ciphers.seal_packet(CHACHA, key, index, counter, pt, mtu)
                assert _testing.chacha_open_packet(key, expect) == (index, counter, padded), (n, mtu, impl)
                assert ciphers.open_packet(CHACHA, key, expect) == (index, counter, padded), (n, mtu, impl)
            assert all(v == expect for v in got.values()), (n, mtu, {k: v == expect for k, v in got.items()})


@needs_libcrypto
@pytest.mark.parametrize("mtu", [0, 1280, 1420, 1500])
def test_openssl_chacha_pads_like_wireguard_at_every_edge(chacha, mtu):
    chacha("openssl")
    for n in list(range(0, 80)) + list(range(max(0, (mtu or 1420) - 40), (mtu or 1420) + 40)):
        pt = bytes([n % 251]) * n
        ref = ciphers.seal_packet(CHACHA, KEY_A, 3, n, pt, mtu)
        padded = wgw.padded_length(n, mtu)
        assert ref == wgw.pack_transport_header(3, n) + crypto.aead_encrypt(
            KEY_A, n, b"", pt + bytes(padded - n))
        assert _testing.chacha_seal_packet(KEY_A, 3, n, pt, mtu) == ref


@needs_libcrypto
@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=3000), flip=st.integers(0, 10 ** 6))
def test_openssl_open_refuses_every_corruption_and_leaves_no_plaintext(plaintext, flip):
    good = ciphers.seal_packet(CHACHA, KEY_A, 7, 9, plaintext)
    bad = bytearray(good)
    pos = 8 + flip % (len(bad) - 8)
    bad[pos] ^= 1 << (flip % 8)
    before = ciphers.chacha_policy()
    try:
        for impl in (0, None):
            ciphers.set_chacha_policy(ChachaPolicy(impl, "test"))
            assert _testing.chacha_open_packet(KEY_A, bytes(bad)) is None
            assert ciphers.open_packet(CHACHA, KEY_A, bytes(bad)) is None
            buf = bytearray(bad)
            assert ciphers.open_chacha(KEY_A, int.from_bytes(buf[8:16], "little"), buf, len(buf)) is None
            assert not any(buf[16:-16])                # no unauthenticated plaintext left
    finally:
        ciphers.set_chacha_policy(before)


@needs_libcrypto
def test_openssl_contexts_are_per_thread():
    """Four threads seal and open at once through the fast path's OpenSSL
    code, each in a long loop without the GIL, every result checked against
    libsodium in C: one EVP context shared between threads would mix their
    keys and nonces."""
    results = {}

    def work(seed):
        results[seed] = _testing.chacha_crosscheck(3000, seed)
    threads = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {1: 0, 2: 0, 3: 0, 4: 0}


@needs_libcrypto
@pytest.mark.parametrize("impl", ["openssl", "libsodium"])
def test_wireguard_data_paths_byte_identical_with_either_chacha(chacha, impl):
    from phantomlab.packets import icmp_echo
    chacha(impl)
    payloads = [icmp_echo("10.99.0.1", "10.99.0.2", 1, n, bytes([n % 256]) * n) for n in (0, 15, 16, 17, 1000, 1392)]
    ref = _capture("reference", payloads, cipher=CHACHA)
    mine = _capture("fast", payloads, cipher=CHACHA)
    assert ref == mine
    for i, (p, d) in enumerate(zip([b"", b""] + payloads, mine)):
        padded = p + bytes(wgw.padded_length(len(p), 1420) - len(p))
        assert d == wgw.pack_transport_header(0x2222, i) + crypto.aead_encrypt(KEY_A, i, b"", padded)


# ============================================================= the start-up choice
def test_crossover_rule():
    m = lambda **kw: {int(k[1:]): {"libsodium": v[0], "openssl": v[1]} for k, v in kw.items()}  # noqa: E731
    assert ciphers.chacha_crossover(m(s64=(1, 2), s512=(3, 2), s1024=(5, 2))) == 512
    assert ciphers.chacha_crossover(m(s64=(1, 2), s512=(3, 2), s1024=(1, 2))) is None    # slower at the top
    assert ciphers.chacha_crossover(m(s64=(3, 2), s512=(3, 2))) == 0                       # faster everywhere
    assert ciphers.chacha_crossover(m(s64=(1, 2), s128=(3, 2), s512=(1, 2), s1024=(5, 2))) == 1024


def test_policy_from_the_environment_and_the_measurement():
    p = ciphers.decide_chacha("libsodium")
    assert p.openssl_from is None and p.implementation == "libsodium"
    if not libcrypto.available():
        assert ciphers.decide_chacha("openssl").decided_by == "libcrypto absent"
        return
    p = ciphers.decide_chacha("openssl")
    assert p.openssl_from == 0 and p.implementation == "openssl" and p.libcrypto.startswith("OpenSSL")
    p = ciphers.decide_chacha("auto")
    assert p.decided_by == "measurement" and set(p.measured) == set(ciphers.CHACHA_PROBE_SIZES)
    assert p.openssl_from == ciphers.chacha_crossover(p.measured)
    assert ciphers.decide_chacha("nonsense").decided_by == "measurement"     # warned, then auto
    d = p.describe()
    assert d["implementation"] == p.implementation and d["libcrypto"] == libcrypto.version()


# ================================================ handshake forms reach the control plane
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_initiations_with_an_attachment_reach_the_control_plane(impl):
    """Phantom's initiations with an attachment (a membership certificate)
    are 169..1192 bytes: both data paths hand every size of that range to
    the control plane unchanged -- a real 700-byte one byte for byte -- and
    drop 167, 168 and 1193 as malformed."""
    from phantom.protocols import tai64n
    from phantom.protocols.phantom import handshake as hs
    i_priv, r_priv = crypto.x25519_private(), crypto.x25519_private()
    real, _ = hs.create_initiation(i_priv, crypto.x25519_public(r_priv), 9, tai64n.encode(1_700_000_000, 1),
                                   bytes(16), suites=(wire.Suite.SECRETBOX,), attachment=os.urandom(532))
    assert len(real) == 700
    good = [real] + [bytes([1, 0, 0, 0]) + os.urandom(n - 4) for n in (169, 170, 1000, 1191, 1192)]
    bad = [bytes([1, 0, 0, 0]) + os.urandom(n - 4) for n in (167, 168, 1193, 1400)]

    async def main():
        node = Node(impl)
        src = _udp()
        try:
            node.dp.add_peer(2, [])
            node.dp.start()
            for d in good + bad:
                src.sendto(d, node.addr())
            await until(lambda: len(node.events.control) == len(good) and
                        node.dp.global_drops()["malformed"] == len(bad))
            assert sorted(d for d, _ in node.events.control) == sorted(good)
            got = next(d for d, _ in node.events.control if len(d) == 700)
            assert hs.consume_initiation(r_priv, got).attachment is not None
        finally:
            node.close()
            src.close()
    run(main())


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_both_forms_of_phantom_handshakes_reach_the_control_plane(impl):
    """The data paths hand handshakes to the control plane by type and exact
    size: Phantom's with and without suites (164/166, 108/109), WireGuard's
    (148, 92); any other size is a malformed drop."""
    sizes = {(1, 164): True, (1, 166): True, (1, 148): True, (2, 108): True, (2, 109): True,
             (2, 92): True, (1, 165): False, (1, 167): False, (2, 110): False, (2, 107): False}

    async def main():
        node = Node(impl)
        src = _udp()
        try:
            node.dp.add_peer(2, [])
            node.dp.start()
            for (t, n) in sizes:
                src.sendto(bytes([t, 0, 0, 0]) + os.urandom(n - 4), node.addr())
            await until(lambda: len(node.events.control) == sum(sizes.values()) and
                        node.dp.global_drops()["malformed"] == len(sizes) - sum(sizes.values()))
            got = sorted((d[0], len(d)) for d, _ in node.events.control)
            assert got == sorted(k for k, ok in sizes.items() if ok)
        finally:
            node.close()
            src.close()
    run(main())
