"""WireGuard's IKpsk2 handshake and cookies, sans-IO, with an injected clock.

The handshake is checked against an independent implementation, the
``noiseprotocol`` package's Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with
WireGuard's identifier as the prologue, in both roles, with and without a
preshared key: same handshake hash, and transport keys that open each
other's messages.  Interop with wireguard-go itself is tests/e2e/wireguard/test_wg_interop.py.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection

from phantom import crypto
from phantom.protocols import tai64n
from phantom.protocols.phantom.handshake import HandshakeError
from phantom.protocols.wireguard import handshake as wh
from phantom.protocols.wireguard import symmetric as sym
from phantom.protocols.wireguard.cookie import WgCookieChecker, WgCookieGenerator
from phantom.wire import wireguard as wgw
from tests.support.clock import Clock

NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
TS = tai64n.encode(1_700_000_000, 123_000_000)


def _keys():
    a, b = crypto.x25519_private(), crypto.x25519_private()
    return a, crypto.x25519_public(a), b, crypto.x25519_public(b)


def _noise(role: str, static_priv: bytes, psk: bytes | None, remote_pub: bytes | None = None):
    nc = NoiseConnection.from_name(NAME)
    nc.set_as_initiator() if role == "initiator" else nc.set_as_responder()
    nc.set_prologue(sym.IDENTIFIER)
    nc.set_psks(psk=psk or bytes(32))
    nc.set_keypair_from_private_bytes(NoiseKeypair.STATIC, static_priv)
    if remote_pub is not None:
        nc.set_keypair_from_public_bytes(NoiseKeypair.REMOTE_STATIC, remote_pub)
    nc.start_handshake()
    return nc


def test_constants_are_the_whitepapers():
    assert sym.CONSTRUCTION == NAME
    assert sym.IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"
    assert sym.INITIAL_CHAIN_KEY == hashlib.blake2s(NAME).digest()
    assert sym.INITIAL_HASH == hashlib.blake2s(sym.INITIAL_CHAIN_KEY + sym.IDENTIFIER).digest()
    assert (wgw.INITIATION_SIZE, wgw.RESPONSE_SIZE, wgw.COOKIE_REPLY_SIZE) == (148, 92, 64)
    assert wgw.TRANSPORT_HEADER_SIZE == 16


def test_kdf_is_hkdf_over_hmac_blake2s():
    key, data = b"k" * 32, b"input"
    t0 = hmac.new(key, data, hashlib.blake2s).digest()
    t1 = hmac.new(t0, b"\x01", hashlib.blake2s).digest()
    t2 = hmac.new(t0, t1 + b"\x02", hashlib.blake2s).digest()
    t3 = hmac.new(t0, t2 + b"\x03", hashlib.blake2s).digest()
    assert sym.KDF3(key, data) == (t1, t2, t3)
    assert sym.KDF1(key, data) == t1
    assert sym.MAC(b"m" * 32, b"x") == hashlib.blake2s(b"x", key=b"m" * 32, digest_size=16).digest()


@pytest.mark.parametrize("psk", [None, b"\x42" * 32], ids=["no-psk", "psk"])
def test_our_initiator_against_noiseprotocol_responder(psk):
    a, A, b, B = _keys()
    resp_nc = _noise("responder", b, psk)
    msg, st = wh.create_initiation(a, B, 0x01020304, TS, psk)
    assert len(msg) == 148 and msg[:4] == b"\x01\x00\x00\x00"
    assert msg[4:8] == (0x01020304).to_bytes(4, "little")
    assert bytes(resp_nc.read_message(msg[8:116])) == TS
    body = bytes(resp_nc.write_message(b""))
    assert len(body) == 48
    resp = wgw.Response(77, 0x01020304, body[:32], body[32:]).pack()
    keys = wh.consume_response(st, resp)
    assert keys.handshake_hash == resp_nc.get_handshake_hash()
    assert (keys.local_index, keys.remote_index, keys.initiator) == (0x01020304, 77, True)
    # transport keys: Noise's first message from the responder is counter 0
    assert crypto.aead_decrypt(bytes(keys.recv_key), 0, b"", resp_nc.encrypt(b"to-initiator")) == b"to-initiator"
    assert bytes(resp_nc.decrypt(crypto.aead_encrypt(bytes(keys.send_key), 0, b"", b"to-responder"))) == b"to-responder"


@pytest.mark.parametrize("psk", [None, b"\x17" * 32], ids=["no-psk", "psk"])
def test_noiseprotocol_initiator_against_our_responder(psk):
    a, A, b, B = _keys()
    init_nc = _noise("initiator", a, psk, B)
    body = bytes(init_nc.write_message(TS))
    assert len(body) == 32 + 48 + 28
    msg = wgw.Initiation(9, body[:32], body[32:80], body[80:]).pack()
    info = wh.consume_initiation(b, msg)
    assert info.remote_static == A and info.timestamp == TS and info.sender_index == 9
    resp, keys = wh.create_response(info.state, 0xAABBCCDD, psk)
    assert len(resp) == 92 and resp[:4] == b"\x02\x00\x00\x00"
    assert bytes(init_nc.read_message(resp[12:60])) == b""
    assert init_nc.handshake_finished
    assert keys.handshake_hash == init_nc.get_handshake_hash()
    assert bytes(init_nc.decrypt(crypto.aead_encrypt(bytes(keys.send_key), 0, b"", b"x"))) == b"x"
    assert crypto.aead_decrypt(bytes(keys.recv_key), 0, b"", init_nc.encrypt(b"y")) == b"y"


def _pair(psk_i=None, psk_r=None):
    a, A, b, B = _keys()
    msg, st = wh.create_initiation(a, B, 1, TS, psk_i)
    info = wh.consume_initiation(b, msg)
    resp, rkeys = wh.create_response(info.state, 2, psk_r)
    return st, resp, rkeys


def test_both_ends_agree_and_keys_cross():
    st, resp, rkeys = _pair(b"p" * 32, b"p" * 32)
    ikeys = wh.consume_response(st, resp)
    assert ikeys.send_key == rkeys.recv_key and ikeys.recv_key == rkeys.send_key
    assert ikeys.send_key != ikeys.recv_key
    assert ikeys.handshake_hash == rkeys.handshake_hash


@pytest.mark.parametrize("psks", [(b"p" * 32, b"q" * 32), (None, b"q" * 32), (b"p" * 32, None)],
                         ids=["different", "responder-only", "initiator-only"])
def test_preshared_key_mismatch_gets_no_session(psks):
    st, resp, _ = _pair(*psks)
    with pytest.raises(HandshakeError):
        wh.consume_response(st, resp)


def test_a_forged_response_leaves_the_handshake_usable():
    st, resp, rkeys = _pair()
    bad = bytearray(resp)
    bad[50] ^= 1
    with pytest.raises(HandshakeError):
        wh.consume_response(st, bytes(bad))
    wrong_index = bytearray(resp)
    wrong_index[8] ^= 1
    with pytest.raises(HandshakeError):
        wh.consume_response(st, bytes(wrong_index))
    assert wh.consume_response(st, resp).recv_key == rkeys.send_key
    with pytest.raises(HandshakeError):
        wh.consume_response(st, resp)           # once only


def test_initiation_to_the_wrong_key_or_tampered_fails():
    a, A, b, B = _keys()
    c = crypto.x25519_private()
    msg, _ = wh.create_initiation(a, B, 1, TS)
    with pytest.raises(HandshakeError):
        wh.consume_initiation(c, msg)
    for pos in (8, 40, 100, 115):
        bad = bytearray(msg)
        bad[pos] ^= 0x80
        with pytest.raises(HandshakeError):
            wh.consume_initiation(b, bytes(bad))
    with pytest.raises(HandshakeError):
        wh.consume_initiation(b, msg[:-1])


def test_small_order_remote_key_is_refused():
    a, _, _, _ = _keys()
    with pytest.raises(HandshakeError):
        wh.create_initiation(a, bytes(32), 1, TS)


def test_a_response_state_answers_once():
    a, A, b, B = _keys()
    msg, _ = wh.create_initiation(a, B, 1, TS)
    info = wh.consume_initiation(b, msg)
    wh.create_response(info.state, 2)
    with pytest.raises(HandshakeError):
        wh.create_response(info.state, 3)


def test_fixed_ephemerals_are_deterministic():
    a, A, b, B = _keys()
    e = crypto.x25519_private()
    m1, _ = wh.create_initiation(a, B, 1, TS, ephemeral_private=e)
    m2, _ = wh.create_initiation(a, B, 1, TS, ephemeral_private=e)
    assert m1 == m2 and m1[8:40] == crypto.x25519_public(e)


# --- cookies -------------------------------------------------------------------------------
def test_mac1_is_keyed_blake2s_of_msg_alpha():
    a, A, b, B = _keys()
    clock = Clock()
    msg, _ = wh.create_initiation(a, B, 1, TS, None, WgCookieGenerator(B, clock))
    key = hashlib.blake2s(b"mac1----" + B).digest()
    assert msg[116:132] == hashlib.blake2s(msg[:116], key=key, digest_size=16).digest()
    assert msg[132:] == bytes(16)
    checker = WgCookieChecker(B, clock)
    assert checker.check_mac1(msg)
    assert not WgCookieChecker(A, clock).check_mac1(msg)
    assert not checker.check_mac2(msg, ("10.0.0.1", 5000))


def test_cookie_reply_round_trip_and_mac2():
    a, A, b, B = _keys()
    clock = Clock()
    gen = WgCookieGenerator(B, clock, refresh_time=120)
    checker = WgCookieChecker(B, clock, refresh_time=120)
    src = ("192.0.2.9", 51820)
    msg, _ = wh.create_initiation(a, B, 7, TS, None, gen)
    reply = checker.create_reply(msg, 7, src)
    assert len(reply) == 64 and reply[0] == 3 and wgw.CookieReply.unpack(reply).receiver_index == 7
    assert gen.consume_reply(reply)
    assert not gen.consume_reply(reply)          # once per message sent
    msg2, _ = wh.create_initiation(a, B, 8, TS, None, gen)
    assert msg2[132:] != bytes(16)
    assert checker.check_mac1(msg2) and checker.check_mac2(msg2, src)
    assert not checker.check_mac2(msg2, ("192.0.2.9", 51821))
    assert not checker.check_mac2(msg2, ("192.0.2.10", 51820))
    clock.t += 121                               # the secret and the cookie age out
    assert not checker.check_mac2(msg2, src)
    assert not gen.has_fresh_cookie
    msg3, _ = wh.create_initiation(a, B, 9, TS, None, gen)
    assert msg3[132:] == bytes(16)


def test_cookie_reply_for_another_message_is_refused():
    a, A, b, B = _keys()
    clock = Clock()
    gen = WgCookieGenerator(B, clock)
    checker = WgCookieChecker(B, clock)
    msg, _ = wh.create_initiation(a, B, 1, TS, None, gen)
    other, _ = wh.create_initiation(a, B, 2, TS)   # not sent through gen
    other = WgCookieGenerator(B, clock).add_macs(other)
    assert not gen.consume_reply(checker.create_reply(other, 1, ("10.0.0.1", 1)))
    forged = bytearray(checker.create_reply(msg, 1, ("10.0.0.1", 1)))
    forged[40] ^= 1
    assert not gen.consume_reply(bytes(forged))
