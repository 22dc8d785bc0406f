"""The C responder (phantom/protocols/phantom/_responder.pyx, issue 23 item 3)
against the reference NoiseIK (noise.py), differentially: for the same
initiation and the same ephemeral key both give byte-identical payloads,
responses, refusals, session keys and handshake hashes; both reject the same
bad initiations (truncated, every byte flipped, low-order keys, out of
order) with the same HandshakeError.  And the engine with
``native_handshake`` (phantomd --fast) keeps its decisions: unknown keys,
replays, cookies and per-source rate limits under load."""

from __future__ import annotations

import random

import pytest

from phantom import crypto, wire
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.protocols import tai64n
from phantom.protocols.phantom import _responder
from phantom.protocols.phantom import handshake as hs
from phantom.protocols.phantom.noise import NoiseIK, SymmetricState, State
from tests.support.clock import Clock
from tests.support.engines import handshake, of, sends
from tests.support.engines import private_key as _key

pytestmark = pytest.mark.timeout(120)

ADDR_A = ("10.0.0.1", 9000)
ADDR_B = ("10.0.0.2", 9000)

# small-order X25519 encodings (phantom/crypto.py's list), top bit clear and set
SMALL_ORDER = [bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
)]
SMALL_ORDER += [k[:31] + bytes([k[31] | 0x80]) for k in SMALL_ORDER]


class Hub:
    def __init__(self):
        self.priv = bytearray(crypto.x25519_private())
        self.pub = crypto.x25519_public(bytes(self.priv))
        self.key = hs.native_responder_key(self.priv, self.pub)
        assert isinstance(self.key, _responder.ResponderKey), "the C responder is built"

    def consume(self, msg, native: bool, eph=None):
        return hs.consume_initiation(self.priv, msg, ephemeral_private=eph, local_static_public=self.pub,
                                     responder_key=self.key if native else None)


@pytest.fixture
def hub():
    return Hub()


def initiation(hub, form="164", priv=None, ts=None, index=0x01020304):
    priv = priv or crypto.x25519_private()
    suites = None if form == "164" else [wire.Suite.SECRETBOX, wire.Suite.AEGIS256]
    attachment = crypto.random_bytes(300) if form == "attached" else None
    ts = ts or tai64n.encode(1_700_000_000, random.randrange(10 ** 9))
    msg, ist = hs.create_initiation(priv, hub.pub, index, ts, crypto.random_bytes(16), suites=suites,
                                    attachment=attachment)
    return msg, ist


def outcome(fn):
    """(True, value) or (False, exception class name, message)."""
    try:
        return True, fn()
    except hs.HandshakeError as exc:
        return False, type(exc).__name__, str(exc)


def info_tuple(info):
    return (info.remote_static, info.timestamp, info.client_nonce, info.sender_index, info.offered,
            info.attachment)


def keys_tuple(k):
    return (bytes(k.send_key), bytes(k.recv_key), k.local_index, k.remote_index, k.initiator,
            k.handshake_hash, k.suite)


@pytest.mark.parametrize("form", ["164", "166", "attached"])
def test_same_payload_response_and_keys(hub, form):
    ipriv = crypto.x25519_private()
    for rnd in range(3):            # the second and third hit the remembered ss
        msg, ist = initiation(hub, form, ipriv)
        eph = crypto.x25519_private()
        ref, nat = hub.consume(msg, False, eph), hub.consume(msg, True, eph)
        assert isinstance(nat.state.noise, _responder.Responder)
        assert isinstance(ref.state.noise, NoiseIK)
        assert info_tuple(ref) == info_tuple(nat)
        assert ref.remote_static == crypto.x25519_public(ipriv)
        suite = hs.choose_suite(tuple(wire.Suite), ref.offered)
        m_ref, k_ref = hs.create_response(ref.state, 77, suite=suite)
        m_nat, k_nat = hs.create_response(nat.state, 77, suite=suite)
        assert m_ref == m_nat
        assert keys_tuple(k_ref) == keys_tuple(k_nat)
        # and the initiator takes it
        assert keys_tuple(hs.consume_response(ist, m_nat))[:2] == (bytes(k_nat.recv_key), bytes(k_nat.send_key))
    assert (hub.key.ss_misses, hub.key.ss_hits) == (1, 2)
    assert hub.key.cached == 1


def test_same_refusal(hub):
    msg, ist = initiation(hub, "attached")
    eph = crypto.x25519_private()
    ref, nat = hub.consume(msg, False, eph), hub.consume(msg, True, eph)
    r1 = hs.create_refusal(ref.state, 5, wire.Refusal.NOT_MEMBER)
    r2 = hs.create_refusal(nat.state, 5, wire.Refusal.NOT_MEMBER)
    assert r1 == r2
    with pytest.raises(hs.HandshakeRefused):
        hs.consume_response(ist, r2)
    assert nat.state.noise.state is State.DONE


def test_fresh_ephemeral_keys_differ_and_are_accepted(hub):
    msg, ist = initiation(hub, "166")
    one = hub.consume(msg, True)
    two = hub.consume(msg, True)
    m1, k1 = hs.create_response(one.state, 1, suite=wire.Suite.SECRETBOX)
    m2, _ = hs.create_response(two.state, 1, suite=wire.Suite.SECRETBOX)
    assert m1[12:44] != m2[12:44], "each response has its own ephemeral key"
    keys = hs.consume_response(ist, m1)
    assert bytes(keys.send_key) == bytes(k1.recv_key)


@pytest.mark.parametrize("form", ["164", "166", "attached"])
def test_every_flipped_byte_is_rejected_alike(hub, form):
    ipriv = crypto.x25519_private()
    msg, _ = initiation(hub, form, ipriv)
    hub.consume(msg, True).state.clear()          # ss of this key remembered: the cached path too
    body_end = len(msg) - 2 * wire.MAC_SIZE
    for pos in range(4, body_end):          # after type and reserved; the MACs are the engine's
        bad = bytearray(msg)
        bad[pos] ^= 1 << (pos % 8)
        bad = bytes(bad)
        ref, nat = outcome(lambda: hub.consume(bad, False)), outcome(lambda: hub.consume(bad, True))
        if ref[0]:          # the sender index is not authenticated: both accept it
            assert nat[0] and info_tuple(ref[1]) == info_tuple(nat[1]), pos
        else:
            assert ref == nat, pos
    assert hub.key.cached == 1, "no forged initiation is remembered"


def test_truncated_and_padded_initiations_are_rejected_alike(hub):
    msg, _ = initiation(hub, "166")
    for n in list(range(0, len(msg))) + [len(msg) + 1, len(msg) + 40]:
        bad = (msg + bytes(64))[:n]
        ref, nat = outcome(lambda: hub.consume(bad, False)), outcome(lambda: hub.consume(bad, True))
        assert ref == nat, n
        assert not ref[0], n


def test_noise_messages_too_short_rejected_alike(hub):
    for n in (0, 1, 31, 32, 95):
        ref = outcome(lambda: NoiseIK.responder(hub.priv, static_public=hub.pub).read_message(bytes(n)))
        nat = outcome(lambda: hub.key.responder().read_message(bytes(n)))
        assert ref == nat == (False, "HandshakeError", "handshake message 1 too short")


def _message1(hub, e_pub, e_priv, s_pub, payload_len=28):
    """An initiator's message 1 written out by the reference SymmetricState
    with chosen e and s (a low-order key), and garbage where a payload the
    responder cannot reach would be."""
    ss = SymmetricState()
    from phantom.constants import PROLOGUE
    ss.mix_hash(PROLOGUE)
    ss.mix_hash(hub.pub)
    ss.mix_hash(e_pub)
    if e_priv is not None:
        ss.mix_key(crypto.x25519(e_priv, hub.pub))
    else:                       # e is low order: es is refused first, the rest is never read
        return e_pub + crypto.random_bytes(48 + 16 + payload_len)
    return e_pub + ss.encrypt_and_hash(s_pub) + crypto.random_bytes(16 + payload_len)


@pytest.mark.parametrize("bad", range(len(SMALL_ORDER)))
def test_low_order_keys_rejected_alike(hub, bad):
    point = SMALL_ORDER[bad]
    e_priv = crypto.x25519_private()
    for body in (_message1(hub, point, None, None),                                  # e
                 _message1(hub, crypto.x25519_public(e_priv), e_priv, point)):      # s
        ref = outcome(lambda: NoiseIK.responder(hub.priv, static_public=hub.pub).read_message(body))
        nat = outcome(lambda: hub.key.responder().read_message(body))
        assert ref == nat == (False, "HandshakeError", "invalid public key in handshake")


def test_order_is_enforced_alike(hub):
    msg, _ = initiation(hub, "166")
    body = wire.Initiation.unpack(msg).noise_message
    for make in (lambda: NoiseIK.responder(hub.priv, static_public=hub.pub), hub.key.responder):
        r = make()
        with pytest.raises(hs.HandshakeError, match="out of order: responder must read message 1"):
            r.write_message(b"x")
        with pytest.raises(hs.HandshakeError, match="out of order"):
            r.split()
        with pytest.raises(hs.HandshakeError, match="not complete"):
            r.handshake_hash
        r.read_message(body)
        with pytest.raises(hs.HandshakeError, match="out of order: responder must write message 2"):
            r.read_message(body)
        r.write_message(b"x")
        r.split()
        assert r.state is State.DONE
        with pytest.raises(hs.HandshakeError, match="out of order"):
            r.split()


def test_failed_read_leaves_the_handshake_usable(hub):
    msg, _ = initiation(hub, "164")
    body = wire.Initiation.unpack(msg).noise_message
    r = hub.key.responder()
    forged = body[:-1] + bytes([body[-1] ^ 1])
    with pytest.raises(hs.HandshakeError, match="failed authentication"):
        r.read_message(forged)
    assert r.state is State.RESPONDER_READ_1
    assert len(r.read_message(body)) == wire.INITIATION_PAYLOAD_SIZE


def test_forget_and_bounded_cache(hub, monkeypatch):
    for _ in range(3):
        hub.consume(initiation(hub, "164")[0], True).state.clear()
    assert hub.key.cached == 3
    monkeypatch.setattr(_responder, "SS_CACHE_SIZE", 3)
    hub.consume(initiation(hub, "164")[0], True).state.clear()
    assert hub.key.cached == 1, "a full cache is emptied (zeroed), then filled again"
    hub.key.forget()
    assert hub.key.cached == 0


def test_a_primed_key_costs_no_ss_from_its_first_initiation(hub):
    """ResponderKey.prime (a configured peer's key, computed when it is
    added, as wireguard-go does): the first initiation from that key finds
    its ss (no miss: one X25519 fewer), and the answer is byte for byte the
    reference's; a small-order key is refused, not remembered."""
    ipriv = crypto.x25519_private()
    assert hub.key.prime(crypto.x25519_public(ipriv)) is True
    assert hub.key.prime(crypto.x25519_public(ipriv)) is True        # already there: no work
    assert hub.key.cached == 1
    msg, ist = initiation(hub, "166", ipriv)
    eph = crypto.x25519_private()
    ref, nat = hub.consume(msg, False, eph), hub.consume(msg, True, eph)
    assert (hub.key.ss_misses, hub.key.ss_hits) == (0, 1)
    assert info_tuple(ref) == info_tuple(nat)
    suite = hs.choose_suite(tuple(wire.Suite), ref.offered)
    m_ref, k_ref = hs.create_response(ref.state, 5, suite=suite)
    m_nat, k_nat = hs.create_response(nat.state, 5, suite=suite)
    assert m_ref == m_nat and keys_tuple(k_ref) == keys_tuple(k_nat)
    assert hs.consume_response(ist, m_nat)
    for bad in SMALL_ORDER[:3]:
        assert hub.key.prime(bad) is False
    assert hub.key.cached == 1
    with pytest.raises(ValueError):
        hub.key.prime(b"\x01" * 31)


def test_engine_primes_configured_peers_and_forgets_removed_ones():
    """An engine with the C responder computes each configured Phantom
    peer's ss when the peer is added (so a hub whose 10,000 keys each
    initiate once pays as little per initiation as one whose keys repeat)
    and drops it when the peer is removed."""
    t = Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    hub = Engine(_key(), t, clock=clock, wall_clock=wall, native_handshake=True)
    clients = [Engine(_key(), t, clock=clock, wall_clock=wall) for _ in range(3)]
    pids = [hub.add_peer(c.public_key, "c%d" % i, []).id for i, c in enumerate(clients)]
    hub.add_peer(crypto.x25519_public(bytes(_key())), "wg", [], protocol="wireguard")
    from phantom.protocols.phantom.protocol import PhantomHandshakes
    (proto,) = [p for p in hub._protocols.values() if isinstance(p, PhantomHandshakes)]
    key = proto.responder_key
    assert key.cached == 3, "the Phantom peers' ss, not the WireGuard peer's"
    for i, c in enumerate(clients):
        p = c.add_peer(hub.public_key, "hub", endpoint=ADDR_A)
        wall.advance(0.01)
        (init,) = sends(c.open(p.id))
        assert of(hub.handle_datagram(init.data, ("10.0.1.%d" % (i + 1), 9000)), A.InstallKeypair)
    assert (key.ss_misses, key.ss_hits) == (0, 3)
    hub.remove_peer(pids[0])
    assert key.cached == 2


# --- the engine with the C responder (phantomd --fast) ---------------------------------
def make_pair(tunables=None, native=True):
    t = tunables or Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    a = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(1))
    b = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(2), native_handshake=native)
    pa = a.add_peer(b.public_key, "b", endpoint=ADDR_B)
    pb = b.add_peer(a.public_key, "a", endpoint=ADDR_A)
    return a, b, pa, pb, clock, wall


@pytest.mark.parametrize("native", [True, False])
def test_an_answered_initiation_reads_its_header_once(native):
    """The engine reads an initiation's sender index for a cookie reply only
    (the Noise step reads the header anyway): an answered initiation, one
    by one or in a batch, costs no extra unpack; a cookie reply still goes
    to the initiation's sender index."""
    from phantom.protocols.phantom.protocol import PhantomHandshakes
    for batch in (False, True):
        a, b, pa, pb, clock, wall = make_pair(native=native)
        (proto,) = [p for p in b._protocols.values() if isinstance(p, PhantomHandshakes)]
        calls = []
        real = proto.initiation_sender
        proto.initiation_sender = lambda data: calls.append(1) or real(data)
        wall.advance(0.01)
        (init,) = sends(a.open(pa.id))
        if batch:
            out = [x for acts in b.handle_datagrams([(init.data, ADDR_A)] * 2) for x in acts]
        else:
            out = b.handle_datagram(init.data, ADDR_A)
        assert of(out, A.InstallKeypair) and calls == []
    b._load.record = lambda: True                  # under load: no mac2, so a cookie reply
    wall.advance(0.01)
    pa.pending = None
    (init,) = sends(a._send_initiation(pa))
    (reply,) = sends(b.handle_datagram(init.data, ADDR_A))
    assert len(calls) == 1
    assert wire.CookieReply.unpack(reply.data).receiver_index == wire.Initiation.unpack(init.data).sender_index


def test_engine_native_flag_picks_the_responder():
    from phantom.protocols.phantom.protocol import PhantomHandshakes
    for native in (True, False):
        k = _key()
        p = PhantomHandshakes(k, crypto.x25519_public(bytes(k)), Clock(), 120.0, native=native)
        assert p.native is native


def test_engine_handshake_replay_and_unknown_key():
    a, b, pa, pb, clock, wall = make_pair()
    acts_a, acts_b = handshake(a, b, pa, wall)
    (ia,) = of(acts_a, A.InstallKeypair)
    (ib,) = of(acts_b, A.InstallKeypair)
    assert ia.keypair.send_key == ib.keypair.recv_key and ia.keypair.recv_key == ib.keypair.send_key
    wall.advance(0.01)
    pa.pending = None
    (init,) = sends(a._send_initiation(pa))
    assert sends(b.handle_datagram(init.data, ADDR_A))
    assert b.handle_datagram(init.data, ADDR_A) == []
    assert b.drops["replayed_initiation"] == 1
    stranger = Engine(_key(), Tunables(), clock=clock, wall_clock=wall)
    p = stranger.add_peer(b.public_key, "b", endpoint=ADDR_B)
    (init,) = sends(stranger.open(p.id))
    assert b.handle_datagram(init.data, ("10.0.0.9", 9000)) == []
    assert b.drops["unknown_key"] == 1
    forged = bytearray(init.data)
    forged[60] ^= 1
    # mac1 covers the body: recompute it so the forgery reaches the Noise part
    gen = stranger.peers[p.id].cookies
    forged = gen.add_macs(bytes(forged[:-32]) + bytes(32))
    assert b.handle_datagram(forged, ("10.0.0.9", 9000)) == []
    assert b.drops["bad_handshake"] == 1


def test_engine_flood_gets_cookies_and_rate_limits_with_native_responder():
    t = Tunables(handshake_jitter=0.0, under_load_initiations=3)
    a, b, pa, pb, clock, wall = make_pair(t)
    replies = []
    for i in range(6):
        wall.advance(0.001)
        pa.pending = None
        (init,) = sends(a._send_initiation(pa))
        replies.append(b.handle_datagram(init.data, ADDR_A))
    cookie = [sends(r) for r in replies if sends(r) and sends(r)[0].data[0] == 3]
    assert cookie, "under load b demands a cookie"
    assert b.drops["cookie_sent"] >= 1
    assert a.handle_datagram(cookie[-1][0].data, ADDR_B) == []
    answered = limited = 0
    for i in range(t.handshake_burst_per_source + 5):      # same instant: only the burst passes
        wall.advance(0.001)
        pa.pending = None
        (init,) = sends(a._send_initiation(pa))
        out = sends(b.handle_datagram(init.data, ADDR_A))
        answered += bool(out and out[0].data[0] == 2)
    assert answered == t.handshake_burst_per_source
    assert b.drops["rate_limited"] >= 5


# --- ephemeral key pairs made ahead on the C thread ------------------------------------------
def _poll(cond, seconds=10.0):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_ephemeral_pairs_made_ahead_are_fresh_and_accepted(hub):
    # the first take starts the thread (it may find none ready: the responder then makes its own)
    msg, ist = initiation(hub, "166")
    hs.create_response(hub.consume(msg, True).state, 1, suite=wire.Suite.SECRETBOX)
    assert _poll(lambda: _responder.ephemeral_pool_stats()["ready"] >= 8), _responder.ephemeral_pool_stats()
    before = _responder.ephemeral_pool_stats()["taken"]
    seen = set()
    for i in range(8):
        msg, ist = initiation(hub, "166")
        resp, keys = hs.create_response(hub.consume(msg, True).state, i + 1, suite=wire.Suite.SECRETBOX)
        e_pub = wire.Response.unpack(resp).ephemeral
        assert e_pub not in seen
        seen.add(e_pub)
        got = hs.consume_response(ist, resp)
        assert bytes(got.send_key) == bytes(keys.recv_key) and bytes(got.recv_key) == bytes(keys.send_key)
    assert _responder.ephemeral_pool_stats()["taken"] >= before + 1


def test_a_forked_child_never_uses_its_parents_pairs(hub):
    import os
    msg, _ = initiation(hub, "166")
    hs.create_response(hub.consume(msg, True).state, 1, suite=wire.Suite.SECRETBOX)
    assert _poll(lambda: _responder.ephemeral_pool_stats()["ready"] >= 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:            # the child: starts empty, no thread until its first take
        try:
            st = _responder.ephemeral_pool_stats()
            ok = st["ready"] == 0 and not st["running"]
            m, ist = initiation(hub, "166")
            resp, _ = hs.create_response(hub.consume(m, True).state, 2, suite=wire.Suite.SECRETBOX)
            hs.consume_response(ist, resp)
            os.write(w, b"ok" if ok else repr(st).encode())
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 200)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"ok"


# --- many at once (read_many / write_many, Engine.handle_datagrams) ---------------------------
def _mixed_messages(hub):
    """Valid initiations of every form, and bad ones of every kind."""
    good = [initiation(hub, form)[0] for form in ("164", "166", "attached", "166", "164")]
    body = [wire.Initiation.unpack(m).noise_message for m in good]
    flipped = bytearray(body[1])
    flipped[70] ^= 4
    e_priv = crypto.x25519_private()
    bad = [bytes(flipped), body[0][:50], _message1(hub, SMALL_ORDER[2], None, None),
           _message1(hub, crypto.x25519_public(e_priv), e_priv, SMALL_ORDER[3]), body[2][:-1]]
    mixed = []
    for g, b in zip(body, bad):
        mixed += [g, b]
    return mixed


def test_read_many_and_write_many_equal_one_by_one(hub):
    bodies = _mixed_messages(hub) * 2          # twice: the second time with ss remembered
    ephs = [crypto.x25519_private() for _ in bodies]
    one = [hub.key.responder(e) for e in ephs]
    many = [hub.key.responder(e) for e in ephs]
    ref = [NoiseIK.responder(hub.priv, e, static_public=hub.pub) for e in ephs]
    got_one = [outcome(lambda: r.read_message(b)) for r, b in zip(one, bodies)]
    got_ref = [outcome(lambda: r.read_message(b)) for r, b in zip(ref, bodies)]
    got_many = [(False, type(x).__name__, str(x)) if isinstance(x, hs.HandshakeError) else (True, x)
                for x in _responder.read_many(hub.key, many, bodies)]
    assert got_many == got_one == got_ref
    assert [g[0] for g in got_many] == [True, False] * 10
    ok = [i for i, g in enumerate(got_many) if g[0]]
    assert all(many[i].remote_static == ref[i].remote_static for i in ok)
    assert all(many[i].state is State.RESPONDER_READ_1 for i in range(len(bodies)) if i not in ok), \
        "a failed read leaves the handshake as it was"
    payloads = [crypto.random_bytes(17) for _ in ok]
    w_many = _responder.write_many([many[i] for i in ok], payloads)
    w_ref = [ref[i].write_message(p) for i, p in zip(ok, payloads)]
    assert w_many == w_ref
    for i in ok:
        assert many[i].handshake_hash == ref[i].handshake_hash
        assert many[i].split() == ref[i].split()
    # out of order, alike
    again = _responder.read_many(hub.key, [many[ok[0]]], [bodies[ok[0]]])
    assert isinstance(again[0], hs.HandshakeError) and "out of order" in str(again[0])
    again = _responder.write_many([hub.key.responder()], [b""])
    assert isinstance(again[0], hs.HandshakeError) and "out of order" in str(again[0])
    assert _responder.read_many(hub.key, [], []) == [] and _responder.write_many([], []) == []


def _engine_pair_set(native, n_peers=4, tunables=None, seed=0):
    """One responder b with n initiators; deterministic indexes and rngs."""
    t = tunables or Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    counter = iter(range(1000, 10 ** 6))
    kb = bytearray(random.Random(seed).randbytes(32))
    b = Engine(kb, t, clock=clock, wall_clock=wall, rng=random.Random(2), native_handshake=native,
               index_source=lambda: next(counter))
    inits = []
    for i in range(n_peers):
        ka = bytearray(random.Random(seed + 1 + i).randbytes(32))
        a = Engine(ka, t, clock=clock, wall_clock=wall, rng=random.Random(3 + i))
        pa = a.add_peer(b.public_key, "b", endpoint=ADDR_B)
        b.add_peer(a.public_key, "a%d" % i, endpoint=ADDR_A)
        inits.append((a, pa))
    return b, inits, wall


def _batch(inits, wall, forge=True):
    """A batch of datagrams to b: an initiation from each, a replay, a forged
    one (mac1 recomputed), garbage, an unknown key's."""
    out = []
    for a, pa in inits:
        wall.advance(0.001)
        pa.pending = None
        (init,) = sends(a._send_initiation(pa))
        out.append((init.data, ("10.0.1.%d" % (len(out) + 1), 9000)))
    out.append(out[0])                                    # replayed
    if forge:
        a, pa = inits[1]
        forged = bytearray(out[1][0])
        forged[70] ^= 1
        out.append((pa.cookies.add_macs(bytes(forged[:-32]) + bytes(32)), ("10.0.1.99", 9000)))
    out.append((b"\x01" + bytes(10), ("10.0.1.98", 9000)))
    return out


def _shape(results):
    return [[(type(x).__name__, x.data[0] if isinstance(x, A.SendDatagram) else None) for x in acts]
            for acts in results]


@pytest.mark.parametrize("load", [None, 3])
def test_engine_batch_decides_as_one_by_one(load):
    t = Tunables(handshake_jitter=0.0, under_load_initiations=load) if load else None
    shapes, drops = [], []
    for mode in ("serial-python", "serial-native", "batch-native"):
        b, inits, wall = _engine_pair_set(mode != "serial-python", n_peers=6, tunables=t)
        results = []
        for rnd in range(3):
            batch = _batch(inits, wall)
            if mode == "batch-native":
                res = b.handle_datagrams(batch)
            else:
                res = [b.handle_datagram(d, a) for d, a in batch]
            assert len(res) == len(batch)
            results += res
            # every answer is a response the initiator takes
            for (a, pa), acts in zip(inits, res):
                for x in sends(acts):
                    if x.data[0] == 2:
                        assert any(isinstance(y, A.InstallKeypair) for y in a.handle_datagram(x.data, ADDR_B))
                    elif x.data[0] == 3:
                        a.handle_datagram(x.data, ADDR_B)       # the cookie: later rounds carry mac2
        shapes.append(_shape(results))
        drops.append(dict(b.drops))
    assert shapes[0] == shapes[1] == shapes[2]
    assert drops[0] == drops[1] == drops[2]
    assert drops[0]["malformed"] == 3
    if load:        # under load: cookie replies first, then answers to mac2 within the rate limit
        assert drops[0]["cookie_sent"] >= 1, drops[0]
        assert any(s == ("SendDatagram", 2) for acts in shapes[0] for s in acts), "answers with mac2"
    else:
        assert drops[0]["replayed_initiation"] == 3 and drops[0]["bad_handshake"] == 3
