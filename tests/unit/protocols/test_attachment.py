"""Phantom initiations with an attachment (a membership certificate in the
encrypted payload) and authenticated refusals, through real wire bytes:

* the wire: 169..1192-byte initiations (u16 length + 1..1024 bytes after the
  suites offer), the MACs taken from the message's end, demux;
* the handshake: the attachment comes out of consume_initiation, the
  response is the usual one; a refusal (109 bytes, suite byte 0x80|reason)
  raises HandshakeRefused at the initiator and derives no keys;
* bad input: truncated, oversized, flipped, lying length fields, garbage:
  a HandshakeError or WireError, never anything else;
* a 164/166-byte initiation is exactly what it was, and never gets a refusal.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phantom import crypto, wire
from phantom.protocols import tai64n
from phantom.protocols.phantom import handshake as hs
from phantom.protocols.phantom.cookie import CookieChecker, CookieGenerator
from phantom.protocols.phantom.noise import NoiseIK
from phantom.wire import demux
from tests.support.clock import Clock

pytestmark = pytest.mark.timeout(60)

OFFER = (wire.Suite.SECRETBOX,)
TS = tai64n.encode(1_700_000_000, 5)


@pytest.fixture
def keys():
    i_priv = crypto.x25519_private()
    r_priv = crypto.x25519_private()
    return i_priv, crypto.x25519_public(i_priv), r_priv, crypto.x25519_public(r_priv)


def initiate(keys, attachment=None, suites=OFFER, cookie_gen=None):
    i_priv, _, _, r_pub = keys
    return hs.create_initiation(i_priv, r_pub, 0x1234, TS, crypto.random_bytes(16), cookie_gen,
                                suites=suites, attachment=attachment)


# ------------------------------------------------------------------------- the wire
def test_sizes_of_the_attached_form():
    assert (wire.INITIATION_ATTACHED_MIN_SIZE, wire.INITIATION_MAX_SIZE) == (169, 1192)
    for n in (164, 166, 169, 700, 1192):
        assert n in wire.INITIATION_SIZES
    for n in (163, 165, 167, 168, 1193, 1500):
        assert n not in wire.INITIATION_SIZES
    assert str(wire.INITIATION_SIZES) == "164, 166 or 169..1192"
    # nothing a responder sends is larger than the smallest initiation
    assert max(wire.RESPONSE_SIZES) < wire.INITIATION_SIZE
    assert wire.COOKIE_REPLY_SIZE < wire.INITIATION_SIZE


@pytest.mark.parametrize("n", [1, 100, 532, 1024])
def test_attachment_round_trip(keys, n):
    i_priv, i_pub, r_priv, r_pub = keys
    att = os.urandom(n)
    msg, ist = initiate(keys, att, cookie_gen=CookieGenerator(r_pub, Clock()))
    assert len(msg) == 168 + n
    assert wire.message_type(msg) is wire.MessageType.INITIATION
    assert demux.classify(msg) == (demux.Protocol.PHANTOM, wire.MessageType.INITIATION)
    init = wire.Initiation.unpack(msg)
    assert init.offers_suites and init.attachment_size == n
    assert wire.mac1_offset(msg) == len(msg) - 32 and wire.mac2_offset(msg) == len(msg) - 16
    assert CookieChecker(r_pub, Clock()).check_mac1(msg)
    assert n < 16 or att not in msg                       # encrypted
    info = hs.consume_initiation(r_priv, msg)
    assert info.attachment == att and info.remote_static == i_pub and info.offered == 1
    resp, r_keys = hs.create_response(info.state, 9)
    assert len(resp) == wire.RESPONSE_CHOICE_SIZE
    i_keys = hs.consume_response(ist, resp)
    assert i_keys.send_key == r_keys.recv_key and i_keys.handshake_hash == r_keys.handshake_hash


def test_the_attachment_is_bound_into_the_handshake_hash(keys):
    """Same keys, same ephemeral, same payload but for the attachment: the
    sessions' handshake hashes differ."""
    i_priv, _, r_priv, r_pub = keys
    eph = crypto.x25519_private()
    hashes = []
    for att in (b"cert-one", b"cert-two"):
        msg, ist = hs.create_initiation(i_priv, r_pub, 1, TS, bytes(16), suites=OFFER,
                                        attachment=att, ephemeral_private=eph)
        info = hs.consume_initiation(r_priv, msg)
        resp, keys_r = hs.create_response(info.state, 2)
        hashes.append(keys_r.handshake_hash)
    assert hashes[0] != hashes[1]


def test_without_attachment_the_forms_are_unchanged(keys):
    assert len(initiate(keys, None, suites=None)[0]) == 164
    assert len(initiate(keys, None)[0]) == 166
    info = hs.consume_initiation(keys[2], initiate(keys, None)[0])
    assert info.attachment is None


@pytest.mark.parametrize("bad, suites", [(b"", OFFER), (bytes(1025), OFFER), (b"cert", None)])
def test_create_refuses_bad_attachments(keys, bad, suites):
    with pytest.raises(hs.HandshakeError):
        initiate(keys, bad, suites=suites)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("size", [167, 168, 1193, 2000])
def test_sizes_outside_the_forms_are_wire_errors(size):
    d = bytes([1, 0, 0, 0]) + os.urandom(size - 4)
    with pytest.raises(wire.WireError):
        wire.message_type(d)
    with pytest.raises(wire.WireError):
        demux.classify(d)


def test_truncated_and_extended_attachments_fail_authentication(keys):
    msg, _ = initiate(keys, b"x" * 50)
    for bad in (msg[:-1], msg[:-33] + msg[-32:], msg[:-32] + b"\0" + msg[-32:], msg + b"\0"):
        with pytest.raises(hs.HandshakeError):
            hs.consume_initiation(keys[2], bad)


@pytest.mark.parametrize("pos", [8, 60, 120, 170, 200, 230])
def test_a_flipped_byte_anywhere_fails(keys, pos):
    msg, _ = initiate(keys, b"y" * 100)
    bad = bytearray(msg)
    bad[pos] ^= 0x40
    with pytest.raises(hs.HandshakeError):
        hs.consume_initiation(keys[2], bytes(bad))


def _forge(keys, payload: bytes) -> bytes:
    """A correctly encrypted initiation whose payload is ``payload`` (the
    initiator's key holder can write anything: a broken or hostile member)."""
    i_priv, _, _, r_pub = keys
    body = NoiseIK.initiator(i_priv, r_pub).write_message(payload)
    return wire.Initiation(5, body[:32], body[32:80], body[80:]).pack()


@pytest.mark.parametrize("claimed, actual", [(10, 11), (11, 10), (0, 1), (1025, 1024), (65535, 3)])
def test_a_length_field_that_lies_is_refused(keys, claimed, actual):
    payload = TS + bytes(16) + wire.SUITES_FIELD.pack(1) + wire.ATTACHMENT_LENGTH.pack(claimed) + \
        b"z" * actual
    msg = _forge(keys, payload)
    with pytest.raises(hs.HandshakeError, match="attachment length"):
        hs.consume_initiation(keys[2], msg)


def test_garbage_of_every_attached_size_is_a_handshake_error(keys):
    for n in range(169, 1193, 37):
        with pytest.raises(hs.HandshakeError):
            hs.consume_initiation(keys[2], bytes([1, 0, 0, 0]) + os.urandom(n - 4))


# ------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("reason", list(wire.Refusal))
def test_refusal_both_ways(keys, reason):
    i_priv, i_pub, r_priv, r_pub = keys
    msg, ist = initiate(keys, b"certificate")
    info = hs.consume_initiation(r_priv, msg)
    refusal = hs.create_refusal(info.state, 77, reason, CookieGenerator(i_pub, Clock()))
    assert len(refusal) == wire.RESPONSE_CHOICE_SIZE < len(msg)      # no amplification
    assert CookieChecker(i_pub, Clock()).check_mac1(refusal)
    with pytest.raises(hs.HandshakeRefused) as exc:
        hs.consume_response(ist, refusal)
    assert exc.value.reason is reason and isinstance(exc.value, hs.HandshakeError)
    assert reason.sentence in str(exc.value)


def test_a_refusal_is_authenticated(keys):
    """Only the responder's key holder can refuse: a flipped byte is a plain
    HandshakeError, and the genuine refusal is still taken afterwards."""
    msg, ist = initiate(keys, b"certificate")
    info = hs.consume_initiation(keys[2], msg)
    refusal = hs.create_refusal(info.state, 77, wire.Refusal.REMOVED)
    for pos in range(12, len(refusal) - 32, 11):
        bad = bytearray(refusal)
        bad[pos] ^= 1
        with pytest.raises(hs.HandshakeError) as exc:
            hs.consume_response(ist, bytes(bad))
        assert not isinstance(exc.value, hs.HandshakeRefused)
    with pytest.raises(hs.HandshakeRefused):
        hs.consume_response(ist, refusal)


def test_a_stranger_cannot_refuse(keys):
    """A refusal made with another responder key does not authenticate."""
    msg, ist = initiate(keys, b"certificate")
    other = crypto.x25519_private()
    # the stranger cannot even read the initiation (it is for r_pub)
    with pytest.raises(hs.HandshakeError):
        hs.consume_initiation(other, msg)


def test_no_refusal_for_an_initiation_without_attachment(keys):
    for suites in (None, OFFER):
        msg, _ = initiate(keys, None, suites=suites)
        info = hs.consume_initiation(keys[2], msg)
        with pytest.raises(hs.HandshakeError, match="only an initiation with an attachment"):
            hs.create_refusal(info.state, 1, wire.Refusal.NOT_MEMBER)


def test_an_initiator_that_attached_nothing_takes_no_refusal(keys):
    """A response whose suite byte has the refusal flag, to an initiation
    without attachment (a responder cannot make one with create_refusal; a
    broken one might): an ordinary error, as before refusals existed."""
    msg, ist = initiate(keys, None)
    info = hs.consume_initiation(keys[2], msg)
    body = info.state.noise.write_message(info.state.client_nonce + bytes([0x83]))
    resp = wire.Response(3, info.state.remote_index, body[:32], body[32:]).pack()
    with pytest.raises(hs.HandshakeError) as exc:
        hs.consume_response(ist, resp)
    assert not isinstance(exc.value, hs.HandshakeRefused)


def test_unknown_reason_codes_read_as_refused(keys):
    msg, ist = initiate(keys, b"certificate")
    info = hs.consume_initiation(keys[2], msg)
    body = info.state.noise.write_message(info.state.client_nonce + bytes([0x80 | 0x55]))
    resp = wire.Response(3, info.state.remote_index, body[:32], body[32:]).pack()
    with pytest.raises(hs.HandshakeRefused) as exc:
        hs.consume_response(ist, resp)
    assert exc.value.reason is wire.Refusal.REFUSED


def test_reasons_from_words():
    R = wire.Refusal
    assert wire.refusal_of("not a member of corp") is R.NOT_MEMBER
    assert wire.refusal_of("removed by the network") is R.REMOVED
    assert wire.refusal_of("certificate expired (at 2026-12-01T00:00:00Z)") is R.EXPIRED
    assert wire.refusal_of("removed") is R.REMOVED
    assert wire.refusal_of("NOT_ENDORSED") is R.NOT_ENDORSED
    assert wire.refusal_of(R.WRONG_NETWORK) is R.WRONG_NETWORK
    assert wire.refusal_of("the moon is full") is R.REFUSED
    assert wire.refusal_of(13) is R.REMOVED and wire.refusal_of(99) is R.REFUSED
    assert wire.refusal_sentence(R.NOT_MEMBER, "corp") == "not a member of corp"
    assert wire.refusal_sentence(R.REMOVED) == "removed by the network"
    assert all(r.sentence for r in R) and max(R) < wire.REFUSAL_FLAG


def test_refusal_codes_are_the_networks_reasons():
    """A refusal carries the network's reason number (network/errors.py says
    so: never renumbered), and the responder's headline for every reason
    maps back to that code, whatever the network's name."""
    from phantom.network.errors import Reason, headline
    for r in Reason:
        assert wire.Refusal[r.name] == r.value
        assert wire.refusal_of(r) is wire.Refusal(r.value)
        for what in ("certificate", "document"):
            if what == "document" and r is not Reason.MALFORMED:
                continue
            got = wire.refusal_of(headline(r, what, "corp"))
            expected = wire.Refusal.NOT_MEMBER if r is Reason.WRONG_NETWORK else wire.Refusal(r.value)
            assert got is expected, (r, headline(r, what, "corp"), got)


_I, _R = crypto.x25519_private(), crypto.x25519_private()
_R_PUB = crypto.x25519_public(_R)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(att=st.binary(min_size=1, max_size=wire.MAX_ATTACHMENT_SIZE),
       pos=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7),
       cut=st.integers(min_value=0, max_value=40))
def test_any_attachment_round_trips_and_any_damage_is_a_handshake_error(att, pos, bit, cut):
    msg, _ = hs.create_initiation(_I, _R_PUB, 3, TS, bytes(16), suites=OFFER, attachment=att)
    assert len(msg) == 168 + len(att) and len(msg) in wire.INITIATION_SIZES
    assert hs.consume_initiation(_R, msg).attachment == att
    bad = bytearray(msg)
    bad[4 + pos % (len(msg) - 4)] ^= 1 << bit          # past the header: a real message's damage
    for damaged in (bytes(bad), msg[:len(msg) - cut - 1], msg + bytes(cut + 1)):
        try:
            info = hs.consume_initiation(_R, damaged)
        except hs.HandshakeError:
            continue
        # only the sender index and the MACs are outside the AEAD: the rest must fail
        changed = [i for i in range(len(msg)) if msg[i] != damaged[i]] if len(damaged) == len(msg) else [-1]
        assert changed and all(4 <= i < 8 or i >= len(msg) - 32 for i in changed), changed
        assert info.attachment == att
