"""Noise_IK_25519_ChaChaPoly_BLAKE2b: round trips, tampering, interop with noiseprotocol."""

from __future__ import annotations

import warnings

import pytest

from phantom import crypto
from phantom.constants import NOISE_PROTOCOL_NAME, PROLOGUE
from phantom.protocols.phantom.noise import (HandshakeError, NoiseIK, State, SymmetricState)

noise_connection = pytest.importorskip("noise.connection")
NoiseConnection = noise_connection.NoiseConnection
NKeypair = noise_connection.Keypair

pytestmark = pytest.mark.timeout(60)


def keypair():
    priv = crypto.x25519_private()
    return priv, crypto.x25519_public(priv)


def run_handshake(p1=b"one", p2=b"two", i_keys=None, r_keys=None):
    i_priv, i_pub = i_keys or keypair()
    r_priv, r_pub = r_keys or keypair()
    ini = NoiseIK.initiator(i_priv, r_pub)
    resp = NoiseIK.responder(r_priv)
    m1 = ini.write_message(p1)
    assert resp.read_message(m1) == p1
    assert resp.remote_static == i_pub
    m2 = resp.write_message(p2)
    assert ini.read_message(m2) == p2
    return ini, resp, m1, m2


# --- our own implementation, both roles --------------------------------------------
def test_round_trip_keys_agree():
    ini, resp, m1, m2 = run_handshake()
    assert len(m1) == 32 + 48 + 3 + 16 and len(m2) == 32 + 3 + 16
    assert ini.handshake_hash == resp.handshake_hash
    i_send, i_recv = ini.split()
    r_send, r_recv = resp.split()
    assert isinstance(i_send, bytearray) and len(i_send) == 32
    assert i_send == r_recv and i_recv == r_send
    assert i_send != i_recv


def test_fresh_ephemerals_give_fresh_keys():
    i_keys, r_keys = keypair(), keypair()
    a, b, _, _ = run_handshake(i_keys=i_keys, r_keys=r_keys)
    c, d, _, _ = run_handshake(i_keys=i_keys, r_keys=r_keys)
    assert a.split() != c.split()


def test_empty_payloads():
    ini, resp, m1, m2 = run_handshake(b"", b"")
    assert len(m1) == 96 and len(m2) == 48


def test_initialize_symmetric_pads_short_name_and_hashes_long_one():
    s = SymmetricState(NOISE_PROTOCOL_NAME)
    assert bytes(s.h) == NOISE_PROTOCOL_NAME + bytes(64 - len(NOISE_PROTOCOL_NAME))
    assert s.ck == s.h
    long_name = b"N" * 65
    assert bytes(SymmetricState(long_name).h) == crypto.blake2b(long_name)


@pytest.mark.parametrize("which", ["m1", "m2"])
def test_tampering_any_byte_fails(which):
    i_keys, r_keys = keypair(), keypair()
    ini, resp, m1, m2 = run_handshake(i_keys=i_keys, r_keys=r_keys)
    msg = m1 if which == "m1" else m2
    for pos in range(len(msg)):
        bad = bytearray(msg)
        bad[pos] ^= 0x01
        # Replay the same handshake up to the tampered message, fresh each time.
        i2 = NoiseIK.initiator(i_keys[0], r_keys[1])
        r2 = NoiseIK.responder(r_keys[0])
        if which == "m1":
            i2.write_message(b"one")
            with pytest.raises(HandshakeError):
                r2.read_message(bytes(bad))
        else:
            # A response is bound to the exact message 1, so build a matching pair.
            good1 = i2.write_message(b"one")
            r2.read_message(good1)
            good2 = bytearray(r2.write_message(b"two"))
            good2[pos] ^= 0x01
            with pytest.raises(HandshakeError):
                i2.read_message(bytes(good2))


def test_failed_read_leaves_state_usable():
    i_priv, _ = keypair()
    r_priv, r_pub = keypair()
    ini = NoiseIK.initiator(i_priv, r_pub)
    resp = NoiseIK.responder(r_priv)
    m1 = ini.write_message(b"x")
    with pytest.raises(HandshakeError):
        resp.read_message(m1[:-1] + bytes([m1[-1] ^ 1]))
    assert resp.state is State.RESPONDER_READ_1
    resp.read_message(m1)
    m2 = resp.write_message(b"y")
    with pytest.raises(HandshakeError):
        ini.read_message(bytes([m2[0] ^ 1]) + m2[1:])
    assert ini.state is State.INITIATOR_READ_2
    assert ini.read_message(m2) == b"y"
    assert ini.split()[0] == resp.split()[1]


def test_wrong_responder_key_fails():
    i_priv, _ = keypair()
    r_priv, _ = keypair()
    _, other_pub = keypair()
    ini = NoiseIK.initiator(i_priv, other_pub)
    resp = NoiseIK.responder(r_priv)
    with pytest.raises(HandshakeError):
        resp.read_message(ini.write_message(b"x"))


def test_response_from_wrong_responder_fails():
    i_priv, _ = keypair()
    r_priv, r_pub = keypair()
    ini = NoiseIK.initiator(i_priv, r_pub)
    m1 = ini.write_message(b"x")
    other_priv, _ = keypair()
    # A responder with another static key cannot even read message 1 ...
    with pytest.raises(HandshakeError):
        NoiseIK.responder(other_priv).read_message(m1)
    # ... and a response made for another initiation is rejected.
    ini2 = NoiseIK.initiator(i_priv, r_pub)
    r2 = NoiseIK.responder(r_priv)
    r2.read_message(ini2.write_message(b"x"))
    with pytest.raises(HandshakeError):
        ini.read_message(r2.write_message(b"y"))


@pytest.mark.parametrize("length", [0, 31, 32, 95])
def test_short_messages_fail(length):
    r_priv, r_pub = keypair()
    with pytest.raises(HandshakeError):
        NoiseIK.responder(r_priv).read_message(bytes(length))
    ini = NoiseIK.initiator(keypair()[0], r_pub)
    ini.write_message(b"")
    with pytest.raises(HandshakeError):
        ini.read_message(bytes(min(length, 47)))


def test_low_order_keys_rejected():
    r_priv, r_pub = keypair()
    # The identity point (all zeros) makes X25519 output zero: refused.
    zero_point = bytes(32)
    m1 = NoiseIK.initiator(keypair()[0], r_pub).write_message(b"")
    with pytest.raises(HandshakeError):
        NoiseIK.responder(r_priv).read_message(zero_point + m1[32:])
    ini = NoiseIK.initiator(keypair()[0], zero_point)
    with pytest.raises(HandshakeError):
        ini.write_message(b"")
    assert ini.state is State.DONE


def test_out_of_order_calls_rejected():
    r_priv, r_pub = keypair()
    ini = NoiseIK.initiator(keypair()[0], r_pub)
    resp = NoiseIK.responder(r_priv)
    with pytest.raises(HandshakeError):
        ini.read_message(bytes(48))
    with pytest.raises(HandshakeError):
        resp.write_message(b"")
    with pytest.raises(HandshakeError):
        ini.split()
    with pytest.raises(HandshakeError):
        ini.handshake_hash
    m1 = ini.write_message(b"")
    with pytest.raises(HandshakeError):
        ini.write_message(b"")
    resp.read_message(m1)
    with pytest.raises(HandshakeError):
        resp.read_message(m1)
    ini.read_message(resp.write_message(b""))
    ini.split()
    with pytest.raises(HandshakeError):
        ini.split()


def test_secrets_zeroed_after_split():
    ini, resp, _, _ = run_handshake()
    ck = ini._ss.ck
    s = ini._s
    ini.split()
    assert not any(ck) and not any(s)
    assert ini._e is not None and not any(ini._e)
    assert ini.state is State.DONE


def test_bad_key_sizes():
    with pytest.raises(HandshakeError):
        NoiseIK.initiator(bytes(31), bytes(32))
    with pytest.raises(HandshakeError):
        NoiseIK.initiator(bytes(32), bytes(33))
    with pytest.raises(HandshakeError):
        NoiseIK.responder(bytes(32), ephemeral_private=b"short")


# --- interop with the independent noiseprotocol package ------------------------------
def their(initiator: bool, static_priv: bytes, remote_pub: bytes | None = None,
          ephemeral_priv: bytes | None = None):
    conn = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
    conn.set_prologue(PROLOGUE)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(NKeypair.STATIC, static_priv)
    if remote_pub is not None:
        conn.set_keypair_from_public_bytes(NKeypair.REMOTE_STATIC, remote_pub)
    if ephemeral_priv is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # it warns that fixed ephemerals are for tests
            conn.set_keypair_from_private_bytes(NKeypair.EPHEMERAL, ephemeral_priv)
            conn.start_handshake()
    else:
        conn.start_handshake()
    return conn


def their_keys(conn) -> tuple[bytes, bytes]:
    """(send, recv) keys noiseprotocol installed after its Split()."""
    p = conn.noise_protocol
    return bytes(p.cipher_state_encrypt.k), bytes(p.cipher_state_decrypt.k)


def test_interop_our_initiator_their_responder():
    i_priv, i_pub = keypair()
    r_priv, r_pub = keypair()
    ours = NoiseIK.initiator(i_priv, r_pub)
    theirs = their(False, r_priv)
    assert bytes(theirs.read_message(ours.write_message(b"hello from phantom"))) == b"hello from phantom"
    assert bytes(theirs.noise_protocol.handshake_state.rs.public_bytes) == i_pub
    assert ours.read_message(bytes(theirs.write_message(b"hello from noiseprotocol"))) \
        == b"hello from noiseprotocol"
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    send, recv = ours.split()
    assert (bytes(send), bytes(recv)) == their_keys(theirs)[::-1]
    # And their transport cipher opens what our key seals (Noise transport, n = 0).
    ct = crypto.aead_encrypt(send, 0, b"", b"transport")
    assert bytes(theirs.decrypt(ct)) == b"transport"


def test_interop_their_initiator_our_responder():
    i_priv, i_pub = keypair()
    r_priv, r_pub = keypair()
    theirs = their(True, i_priv, r_pub)
    ours = NoiseIK.responder(r_priv)
    assert ours.read_message(bytes(theirs.write_message(b"ping"))) == b"ping"
    assert ours.remote_static == i_pub
    assert bytes(theirs.read_message(ours.write_message(b"pong"))) == b"pong"
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    send, recv = ours.split()
    assert (bytes(send), bytes(recv)) == their_keys(theirs)[::-1]
    ct = theirs.encrypt(b"from them")
    assert crypto.aead_decrypt(recv, 0, b"", ct) == b"from them"


def test_interop_tampered_message_rejected_by_them():
    r_priv, r_pub = keypair()
    m1 = bytearray(NoiseIK.initiator(keypair()[0], r_pub).write_message(b"x"))
    m1[40] ^= 0x80
    with pytest.raises(Exception):
        their(False, r_priv).read_message(bytes(m1))


# --- a pinned vector ------------------------------------------------------------------
# Generated once with this module and checked to be byte-identical with
# noiseprotocol 0.3.1 given the same fixed ephemerals (the test below re-checks).
VEC_I_STATIC = bytes(range(0, 32))
VEC_R_STATIC = bytes(range(32, 64))
VEC_I_EPHEMERAL = bytes(range(64, 96))
VEC_R_EPHEMERAL = bytes(range(96, 128))
VEC_P1 = b"phantom vector 1"
VEC_P2 = b"phantom vector 2"
VEC_M1 = bytes.fromhex(
    "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a"
    "b7fe662fc9e12e3e58fc8818a2d0ee30a83aecf62316a62c9dc74dd4b198ebfc"
    "43d9225d89030e3861c7a6b6611340381642dc6b9c067249ed9a276ca60e21cd"
    "b95992792a8a9562c97535b53f225b73")
VEC_M2 = bytes.fromhex(
    "675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f"
    "e347c48b90fda7a9c82671250b7e22dd0fb7d05dff0d0a7965cc2ae02564be6a")
VEC_HASH = bytes.fromhex(
    "906e613a60e5babea0e7431574a36fa721bce8ac32ab4c73b9942f782d9b1407"
    "eb70e28d2b4268bafaf51e40f2e96ac054b9584b4c7c46f60414764de0ebb078")
VEC_K1 = bytes.fromhex("361692ccfa3ca6c4acd9bbd6d846a727dc4626b9bb6aa11c78aef39024259aa2")
VEC_K2 = bytes.fromhex("c22807781fc0ce59685b2e538e3b8d307b308098c24f02a9a88ccc3fd92f6df8")


def test_pinned_vector_ours():
    ini = NoiseIK.initiator(VEC_I_STATIC, crypto.x25519_public(VEC_R_STATIC), VEC_I_EPHEMERAL)
    resp = NoiseIK.responder(VEC_R_STATIC, VEC_R_EPHEMERAL)
    assert ini.write_message(VEC_P1) == VEC_M1
    assert resp.read_message(VEC_M1) == VEC_P1
    assert resp.write_message(VEC_P2) == VEC_M2
    assert ini.read_message(VEC_M2) == VEC_P2
    assert ini.handshake_hash == resp.handshake_hash == VEC_HASH
    assert ini.split() == (bytearray(VEC_K1), bytearray(VEC_K2))
    assert resp.split() == (bytearray(VEC_K2), bytearray(VEC_K1))


def test_pinned_vector_noiseprotocol():
    ini = their(True, VEC_I_STATIC, crypto.x25519_public(VEC_R_STATIC), VEC_I_EPHEMERAL)
    resp = their(False, VEC_R_STATIC, None, VEC_R_EPHEMERAL)
    assert bytes(ini.write_message(VEC_P1)) == VEC_M1
    assert bytes(resp.read_message(VEC_M1)) == VEC_P1
    assert bytes(resp.write_message(VEC_P2)) == VEC_M2
    assert bytes(ini.read_message(VEC_M2)) == VEC_P2
    assert ini.get_handshake_hash() == VEC_HASH
    assert their_keys(ini) == (VEC_K1, VEC_K2)
    assert their_keys(resp) == (VEC_K2, VEC_K1)
