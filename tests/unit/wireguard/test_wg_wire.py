"""WireGuard's wire format, the shared-port demultiplexer and the transport ciphers."""

from __future__ import annotations

import pytest

from phantom import crypto, wire
from phantom.dataplane import ciphers
from phantom.dataplane.ciphers import CipherKind, inner_length, open_packet, seal_packet
from phantom.wire import demux
from phantom.wire import wireguard as wgw
from phantom.wire.demux import Protocol

from phantomlab.packets import icmp_echo


def test_from_phantom_import_wire_still_means_phantoms_format():
    assert wire.INITIATION_SIZE == 164 and wire.RESPONSE_SIZE == 108
    assert wire.TRANSPORT_PAYLOAD_OFFSET == 32
    assert wire.MessageType is wgw.MessageType


@pytest.mark.parametrize("t,size,proto", [
    (1, 164, Protocol.PHANTOM), (1, 148, Protocol.WIREGUARD),
    (2, 108, Protocol.PHANTOM), (2, 92, Protocol.WIREGUARD),
    (3, 64, None), (4, 32, None), (4, 1500, None)])
def test_demux_by_type_and_length(t, size, proto):
    kind = demux.classify(bytes([t]) + bytes(size - 1))
    assert kind.protocol is proto and kind.mtype == t


@pytest.mark.parametrize("data", [b"\x01\x00\x00", b"\x01\x00\x00\x00" + bytes(100),
                                  b"\x02" + bytes(147), b"\x03" + bytes(62), b"\x04" + bytes(30),
                                  b"\x05" + bytes(40), b"\x01\x01\x00\x00" + bytes(144)])
def test_demux_refuses_bad_framing(data):
    with pytest.raises(wire.WireError):
        demux.classify(data)
    assert not demux.is_control(data)


def test_wireguard_message_round_trips():
    i = wgw.Initiation(5, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16)
    assert len(i.pack()) == 148 and wgw.Initiation.unpack(i.pack()) == i
    assert wgw.message_type(i.pack()) is wgw.MessageType.INITIATION
    r = wgw.Response(5, 6, b"e" * 32, b"x" * 16, b"1" * 16, b"2" * 16)
    assert len(r.pack()) == 92 and wgw.Response.unpack(r.pack()) == r
    c = wgw.CookieReply(9, b"n" * 24, b"c" * 32)
    assert len(c.pack()) == 64 and wgw.CookieReply.unpack(c.pack()) == c
    assert wgw.mac1_region(i.pack()) == i.pack()[:116]
    assert wgw.mac2_region(i.pack()) == i.pack()[:132]
    with pytest.raises(wgw.WireError):
        wgw.Initiation.unpack(i.pack()[:-1])
    with pytest.raises(wgw.WireError):
        wgw.message_type(i.pack()[:-1])


@pytest.mark.parametrize("n,mtu,padded", [(0, 1420, 0), (1, 1420, 16), (16, 1420, 16), (17, 1420, 32),
                                          (1419, 1420, 1420), (1420, 1420, 1420), (1413, 1420, 1420),
                                          (84, 0, 96), (1500, 1500, 1500), (1490, 1500, 1500)])
def test_padding_to_16_never_past_the_mtu(n, mtu, padded):
    assert wgw.padded_length(n, mtu) == padded


def test_nonce_is_ietf_from_the_counter():
    assert wgw.transport_nonce(0x0102030405060708) == bytes(4) + bytes([8, 7, 6, 5, 4, 3, 2, 1])


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 84, 1420])
def test_chacha_seal_matches_libsodium_and_opens(n):
    key = crypto.random_bytes(32)
    plain = bytes(range(256)) * 6
    plain = plain[:n]
    dg = seal_packet(CipherKind.CHACHA20POLY1305, key, 0xA1B2C3D4, 5, plain, mtu=1420)
    padded = wgw.padded_length(n, 1420)
    assert len(dg) == 16 + padded + 16
    assert dg[:16] == wgw.pack_transport_header(0xA1B2C3D4, 5)
    # the same bytes as a whole-message AEAD over the padded plaintext, no AD
    assert dg[16:] == crypto.aead_encrypt(key, 5, b"", plain + bytes(padded - n))
    idx, ctr, out = open_packet(CipherKind.CHACHA20POLY1305, key, dg)
    assert (idx, ctr, out) == (0xA1B2C3D4, 5, plain + bytes(padded - n))


def test_chacha_open_refuses_forgeries_and_wrong_counters():
    key = crypto.random_bytes(32)
    dg = bytearray(seal_packet(CipherKind.CHACHA20POLY1305, key, 1, 7, b"hello"))
    for pos in (8, 20, len(dg) - 1):            # counter (nonce), ciphertext, tag
        bad = bytearray(dg)
        bad[pos] ^= 1
        assert open_packet(CipherKind.CHACHA20POLY1305, key, bytes(bad)) is None
    assert open_packet(CipherKind.CHACHA20POLY1305, crypto.random_bytes(32), bytes(dg)) is None
    assert open_packet(CipherKind.CHACHA20POLY1305, key, bytes(dg[:31])) is None


def test_secretbox_kind_is_phantoms_format_unchanged():
    key = crypto.random_bytes(32)
    dg = seal_packet(CipherKind.SECRETBOX, key, 3, 9, b"abc")
    assert len(dg) == 32 + 3
    assert dg[16:] == crypto.secretbox_seal(key, 9, b"abc")
    assert open_packet(CipherKind.SECRETBOX, key, dg) == (3, 9, b"abc")


def test_in_place_buffers_keep_the_layout():
    """Outbound plaintext is read at offset 32 for both kinds; WireGuard's
    datagram starts at 16, Phantom's at 0."""
    key = crypto.random_bytes(32)
    buf = bytearray(2048)
    buf[32:37] = b"hello"
    start, end = ciphers.seal_chacha(key, 0, 1, buf, 5, 1420)
    assert (start, end) == (16, 16 + 16 + 16 + 16)
    rx = bytearray(2048)
    rx[:end - start] = buf[start:end]
    assert ciphers.open_chacha(key, 0, rx, end - start) == (16, 16)
    assert rx[16:21] == b"hello" and rx[21:32] == bytes(11)


def test_inner_length_trims_padding():
    p4 = icmp_echo("10.0.0.1", "10.0.0.2", 1, 1)
    p6 = icmp_echo("fd00::1", "fd00::2", 1, 1)
    assert inner_length(p4 + bytes(5)) == len(p4)
    assert inner_length(p6 + bytes(9)) == len(p6)
    assert inner_length(b"") == 0 and inner_length(b"\x45" + bytes(5)) == 0
