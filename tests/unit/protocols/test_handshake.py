"""The WireGuard-framed handshake through real wire bytes, and TAI64N timestamps."""

from __future__ import annotations

import dataclasses

import pytest

from phantom import crypto, wire
from phantom.protocols import tai64n
from phantom.protocols.phantom.cookie import CookieChecker, CookieGenerator
from phantom.protocols.phantom.handshake import (HandshakeError, InitiatorState, SessionKeys,
                                       consume_initiation, consume_response,
                                       create_initiation, create_response)
from tests.support.clock import Clock as FakeClock

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keys():
    i_priv = crypto.x25519_private()
    r_priv = crypto.x25519_private()
    return i_priv, crypto.x25519_public(i_priv), r_priv, crypto.x25519_public(r_priv)


def initiate(keys, index=0x11223344, nonce=None, ts=None, cookie_gen=None):
    i_priv, _, _, r_pub = keys
    ts = ts or tai64n.encode(1_700_000_000, 5)
    nonce = nonce or crypto.random_bytes(16)
    return create_initiation(i_priv, r_pub, index, ts, nonce, cookie_gen)


def test_full_exchange(keys):
    i_priv, i_pub, r_priv, r_pub = keys
    ts = tai64n.encode(1_700_000_000, 123)
    nonce = crypto.random_bytes(16)
    msg1, ist = create_initiation(i_priv, r_pub, 7, ts, nonce)
    assert len(msg1) == wire.INITIATION_SIZE
    assert wire.message_type(msg1) is wire.MessageType.INITIATION
    assert wire.Initiation.unpack(msg1).sender_index == 7

    info = consume_initiation(r_priv, msg1)
    assert info.remote_static == i_pub
    assert info.timestamp == ts
    assert info.client_nonce == nonce
    assert info.sender_index == 7

    msg2, r_keys = create_response(info.state, 99)
    assert len(msg2) == wire.RESPONSE_SIZE
    resp = wire.Response.unpack(msg2)
    assert (resp.sender_index, resp.receiver_index) == (99, 7)

    i_keys = consume_response(ist, msg2)
    assert isinstance(i_keys, SessionKeys)
    assert (i_keys.local_index, i_keys.remote_index, i_keys.initiator) == (7, 99, True)
    assert (r_keys.local_index, r_keys.remote_index, r_keys.initiator) == (99, 7, False)
    assert i_keys.send_key == r_keys.recv_key and i_keys.recv_key == r_keys.send_key
    assert i_keys.send_key != i_keys.recv_key
    assert i_keys.handshake_hash == r_keys.handshake_hash and len(i_keys.handshake_hash) == 64

    # The keys carry transport data (secretbox with the counter nonce) both ways.
    box = crypto.secretbox_seal(i_keys.send_key, 0, b"ping")
    assert crypto.secretbox_open(r_keys.recv_key, 0, box) == b"ping"
    box = crypto.secretbox_seal(r_keys.send_key, 5, b"pong")
    assert crypto.secretbox_open(i_keys.recv_key, 5, box) == b"pong"


def test_plaintext_payload_not_on_wire(keys):
    nonce = b"CLIENTNONCE-1234"
    ts = tai64n.encode(1_700_000_000, 0)
    msg1, ist = initiate(keys, nonce=nonce, ts=ts)
    assert nonce not in msg1 and ts not in msg1
    msg2, _ = create_response(consume_initiation(keys[2], msg1).state, 1)
    assert nonce not in msg2


def test_session_keys_clear(keys):
    msg1, ist = initiate(keys)
    _, k = create_response(consume_initiation(keys[2], msg1).state, 1)
    k.clear()
    assert not any(k.send_key) and not any(k.recv_key)


def test_macs_added_and_checked(keys):
    i_priv, i_pub, r_priv, r_pub = keys
    clock = FakeClock()
    msg1, ist = initiate(keys, cookie_gen=CookieGenerator(r_pub, clock))
    assert CookieChecker(r_pub, clock).check_mac1(msg1)
    assert not CookieChecker(i_pub, clock).check_mac1(msg1)
    info = consume_initiation(r_priv, msg1)
    msg2, _ = create_response(info.state, 5, CookieGenerator(info.remote_static, clock))
    assert CookieChecker(i_pub, clock).check_mac1(msg2)
    consume_response(ist, msg2)


def test_macs_not_part_of_noise(keys):
    """mac1/mac2 are outside the Noise message: changing them does not break it."""
    msg1, ist = initiate(keys)
    msg1 = wire.with_macs(msg1, b"\x01" * 16, b"\x02" * 16)
    info = consume_initiation(keys[2], msg1)
    msg2, _ = create_response(info.state, 5)
    consume_response(ist, wire.with_macs(msg2, b"\x03" * 16, b"\x04" * 16))


@pytest.mark.parametrize("delta", [-1, 1, -50])
def test_wrong_sizes_rejected(keys, delta):
    msg1, ist = initiate(keys)
    bad = msg1[:len(msg1) + delta] if delta < 0 else msg1 + bytes(delta)
    with pytest.raises(HandshakeError):
        consume_initiation(keys[2], bad)
    msg2, _ = create_response(consume_initiation(keys[2], msg1).state, 1)
    bad = msg2[:len(msg2) + delta] if delta < 0 else msg2 + bytes(delta)
    with pytest.raises(HandshakeError):
        consume_response(ist, bad)


def test_wrong_type_rejected(keys):
    msg1, ist = initiate(keys)
    with pytest.raises(HandshakeError):
        consume_response(ist, msg1)
    with pytest.raises(HandshakeError):
        consume_initiation(keys[2], b"\x02" + msg1[1:])
    with pytest.raises(HandshakeError):
        consume_initiation(keys[2], msg1[:1] + b"\x01" + msg1[2:])   # reserved byte
    with pytest.raises(HandshakeError):
        consume_initiation(keys[2], b"")


def test_forged_initiation_bytes_rejected(keys):
    msg1, _ = initiate(keys)
    # Every byte of the Noise part (ephemeral .. payload) is authenticated.
    for pos in range(wire.INITIATION_NOISE_OFFSET, wire.INITIATION_MAC1_OFFSET):
        bad = bytearray(msg1)
        bad[pos] ^= 0x04
        with pytest.raises(HandshakeError):
            consume_initiation(keys[2], bytes(bad))


def test_forged_response_bytes_rejected_then_genuine_accepted(keys):
    msg1, ist = initiate(keys)
    msg2, r_keys = create_response(consume_initiation(keys[2], msg1).state, 1)
    for pos in range(wire.RESPONSE_NOISE_OFFSET, wire.RESPONSE_MAC1_OFFSET):
        bad = bytearray(msg2)
        bad[pos] ^= 0x10
        with pytest.raises(HandshakeError):
            consume_response(ist, bytes(bad))
    # Forged responses did not spoil the handshake in flight.
    assert consume_response(ist, msg2).send_key == r_keys.recv_key


def test_response_for_other_index_rejected(keys):
    msg1, ist = initiate(keys, index=1)
    msg2, _ = create_response(consume_initiation(keys[2], msg1).state, 2)
    resp = wire.Response.unpack(msg2)
    forged = dataclasses.replace(resp, receiver_index=3).pack()
    with pytest.raises(HandshakeError):
        consume_response(ist, forged)


def test_sender_index_in_initiation_is_not_authenticated_but_reported(keys):
    """The index is framing (as in WireGuard); the responder echoes whatever came."""
    msg1, _ = initiate(keys, index=1)
    forged = dataclasses.replace(wire.Initiation.unpack(msg1), sender_index=42).pack()
    assert consume_initiation(keys[2], forged).sender_index == 42


def test_wrong_responder_key(keys):
    i_priv, _, r_priv, _ = keys
    other = crypto.x25519_public(crypto.x25519_private())
    msg1, _ = create_initiation(i_priv, other, 1, tai64n.encode(1, 0), bytes(16))
    with pytest.raises(HandshakeError):
        consume_initiation(r_priv, msg1)


def test_client_nonce_mismatch_rejected(keys):
    msg1, ist = initiate(keys, nonce=b"A" * 16)
    info = consume_initiation(keys[2], msg1)
    # A responder holding the right keys but echoing another nonce.
    wrong = dataclasses.replace(info.state, client_nonce=b"B" * 16)
    msg2, _ = create_response(wrong, 9)
    with pytest.raises(HandshakeError, match="client nonce"):
        consume_response(ist, msg2)
    # The handshake is abandoned: its secrets are gone and it cannot complete.
    with pytest.raises(HandshakeError):
        consume_response(ist, msg2)


def test_response_from_another_handshake_rejected(keys):
    msg1a, ist_a = initiate(keys, index=1)
    msg1b, _ = initiate(keys, index=1)
    msg2b, _ = create_response(consume_initiation(keys[2], msg1b).state, 2)
    with pytest.raises(HandshakeError):
        consume_response(ist_a, msg2b)


def test_states_are_single_use(keys):
    msg1, ist = initiate(keys)
    info = consume_initiation(keys[2], msg1)
    msg2, _ = create_response(info.state, 1)
    with pytest.raises(HandshakeError):
        create_response(info.state, 2)
    consume_response(ist, msg2)
    with pytest.raises(HandshakeError):
        consume_response(ist, msg2)


def test_replayed_initiation_is_reported_with_same_timestamp(keys):
    """Replay protection is the caller's: a replay authenticates but carries the old timestamp."""
    msg1, _ = initiate(keys, ts=tai64n.encode(1_700_000_000, 0))
    first = consume_initiation(keys[2], msg1)
    again = consume_initiation(keys[2], msg1)
    assert again.timestamp == first.timestamp
    assert not tai64n.is_after(again.timestamp, first.timestamp)


def test_invalid_timestamp_rejected(keys):
    bad_ts = (2 ** 62).to_bytes(8, "big") + (10 ** 9).to_bytes(4, "big")
    msg1, _ = initiate(keys, ts=bad_ts)
    with pytest.raises(HandshakeError, match="timestamp"):
        consume_initiation(keys[2], msg1)


def test_bad_arguments(keys):
    i_priv, _, _, r_pub = keys
    ts = tai64n.encode(1, 0)
    with pytest.raises(HandshakeError):
        create_initiation(i_priv, r_pub, 1, ts[:11], bytes(16))
    with pytest.raises(HandshakeError):
        create_initiation(i_priv, r_pub, 1, ts, bytes(15))
    with pytest.raises(HandshakeError):
        create_initiation(i_priv, r_pub, 2 ** 32, ts, bytes(16))
    with pytest.raises(HandshakeError):
        create_initiation(i_priv, r_pub[:31], 1, ts, bytes(16))
    with pytest.raises(HandshakeError):
        create_initiation(i_priv, bytes(32), 1, ts, bytes(16))   # low-order peer key


def test_fixed_ephemerals_deterministic(keys):
    i_priv, _, r_priv, r_pub = keys
    ts, nonce = tai64n.encode(5, 6), bytes(range(16))
    e_i, e_r = bytes(range(32)), bytes(range(32, 64))
    a, _ = create_initiation(i_priv, r_pub, 1, ts, nonce, ephemeral_private=e_i)
    b, ist = create_initiation(i_priv, r_pub, 1, ts, nonce, ephemeral_private=e_i)
    assert a == b
    assert wire.Initiation.unpack(a).ephemeral == crypto.x25519_public(e_i)
    info = consume_initiation(r_priv, a, ephemeral_private=e_r)
    msg2, _ = create_response(info.state, 3)
    assert wire.Response.unpack(msg2).ephemeral == crypto.x25519_public(e_r)
    consume_response(ist, msg2)


def test_initiator_state_records_request(keys):
    msg1, ist = initiate(keys, index=77, nonce=b"N" * 16)
    assert isinstance(ist, InitiatorState)
    assert (ist.sender_index, ist.client_nonce, ist.remote_static) == (77, b"N" * 16, keys[3])
    ist.clear()
    with pytest.raises(HandshakeError):
        consume_response(ist, create_response(consume_initiation(keys[2], msg1).state, 1)[0])


def test_interop_with_noiseprotocol_through_wire_framing(keys):
    """Their responder reads our framed initiation's Noise part; we read theirs."""
    nc = pytest.importorskip("noise.connection")
    from phantom.constants import NOISE_PROTOCOL_NAME, PROLOGUE
    i_priv, i_pub, r_priv, r_pub = keys
    theirs = nc.NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
    theirs.set_prologue(PROLOGUE)
    theirs.set_as_responder()
    theirs.set_keypair_from_private_bytes(nc.Keypair.STATIC, r_priv)
    theirs.start_handshake()
    ts, nonce = tai64n.encode(1_700_000_000, 0), crypto.random_bytes(16)
    msg1, ist = create_initiation(i_priv, r_pub, 4, ts, nonce)
    assert bytes(theirs.read_message(wire.Initiation.unpack(msg1).noise_message)) == ts + nonce
    body = bytes(theirs.write_message(nonce))
    msg2 = wire.Response(8, 4, body[:32], body[32:]).pack()
    k = consume_response(ist, msg2)
    assert bytes(k.send_key) == bytes(theirs.noise_protocol.cipher_state_decrypt.k)
    assert bytes(k.recv_key) == bytes(theirs.noise_protocol.cipher_state_encrypt.k)


# --- TAI64N ---------------------------------------------------------------------------
def test_tai64n_layout():
    ts = tai64n.encode(0, 0)
    assert ts == bytes.fromhex("4000000000000000") + bytes(4)
    ts = tai64n.encode(1_700_000_000, 999_999_999)
    assert len(ts) == 12
    assert ts[:8] == (2 ** 62 + 1_700_000_000).to_bytes(8, "big")
    assert ts[8:] == (999_999_999).to_bytes(4, "big")
    assert tai64n.decode(ts) == (1_700_000_000, 999_999_999)
    assert tai64n.to_float(tai64n.encode(10, 500_000_000)) == 10.5


def test_tai64n_invalid():
    with pytest.raises(tai64n.TimestampError):
        tai64n.decode(bytes(11))
    with pytest.raises(tai64n.TimestampError):
        tai64n.decode(bytes(8) + (10 ** 9).to_bytes(4, "big"))
    with pytest.raises(tai64n.TimestampError):
        tai64n.decode(b"\xff" * 12)
    with pytest.raises(tai64n.TimestampError):
        tai64n.encode(1, 10 ** 9)


def test_tai64n_compare():
    a = tai64n.encode(100, 5)
    b = tai64n.encode(100, 6)
    c = tai64n.encode(101, 0)
    assert tai64n.compare(a, b) == -1 and tai64n.compare(b, a) == 1 and tai64n.compare(a, a) == 0
    assert tai64n.is_after(c, b) and not tai64n.is_after(b, c) and not tai64n.is_after(a, a)
    assert tai64n.is_after(a, tai64n.ZERO)


def test_tai64n_clock_monotonic_with_injected_clock():
    clock = FakeClock(1_700_000_000.0)
    gen = tai64n.Tai64nClock(clock, granularity_ns=1)
    t1 = gen.now()
    assert tai64n.decode(t1) == (1_700_000_000, 0)
    clock.t += 2.25
    t2 = gen.now()
    assert tai64n.decode(t2) == (1_700_000_002, 250_000_000)
    # Same reading again: still strictly later.
    t3 = gen.now()
    assert tai64n.is_after(t3, t2)
    # The wall clock steps back an hour: never goes backwards.
    clock.t -= 3600
    t4 = gen.now()
    assert tai64n.is_after(t4, t3)
    # When the wall clock passes the last value again, it is followed.
    clock.t += 7200
    t5 = gen.now()
    assert tai64n.decode(t5)[0] == 1_700_003_602
    assert gen.last == t5


def test_tai64n_clock_granularity_and_carry():
    clock = FakeClock(50.999_999_999)
    gen = tai64n.Tai64nClock(clock)                  # WireGuard-like 2**24 ns steps
    t1 = gen.now()
    assert tai64n.decode(t1)[1] % tai64n.DEFAULT_GRANULARITY_NS == 0
    many = [gen.now() for _ in range(100)]
    assert all(tai64n.is_after(b, a) for a, b in zip([t1] + many, many))
    # Successor carries into the seconds field at the end of a second.
    gen2 = tai64n.Tai64nClock(FakeClock(7.0), granularity_ns=1)
    gen2._last = tai64n.encode(7, 999_999_999)
    assert tai64n.decode(gen2.now()) == (8, 0)


def test_tai64n_handshake_timestamps_increase_with_injected_clock(keys):
    clock = FakeClock(1_700_000_000.0)
    gen = tai64n.Tai64nClock(clock)
    seen = []
    for step in (0.0, 0.0, 5.0, -30.0, 0.001):
        clock.t += step
        msg1, _ = initiate(keys, ts=gen.now())
        seen.append(consume_initiation(keys[2], msg1).timestamp)
    assert all(tai64n.is_after(b, a) for a, b in zip(seen, seen[1:]))


def test_process_clock_monotonic():
    a = tai64n.now()
    b = tai64n.now()
    assert tai64n.is_after(b, a)
