"""Transport ciphers: what a keypair seals and opens packets with, in place.

A keypair carries its cipher (:class:`phantom.dataplane.types.Keypair.cipher`);
the reference path calls the two functions of that cipher and the fast path
the libsodium function pointers of the same kind (``_fastpath.pyx``).

Both ciphers work on the data path's buffers, where an outbound plaintext of
``n`` bytes sits at ``PAYLOAD_OFFSET`` (32) and an inbound datagram at 0:

``secretbox`` (Phantom, :mod:`phantom.wire.phantom`)
    out: header at 0, MAC at 16, ciphertext at 32; the datagram is buf[0:32+n].
    in:  plaintext at 32..len.

``chacha20poly1305`` (WireGuard, :mod:`phantom.wire.wireguard`)
    out: plaintext zero-padded to a multiple of 16 (never past the MTU),
    header at 16, ChaCha20-Poly1305 (IETF nonce from the counter, no AD)
    in place at 32, tag right after; the datagram is buf[16:48+padded].
    in:  ciphertext at 16..len-16, tag at len-16; plaintext at 16..len-16
    (still padded: the caller trims it to the inner packet's own length).

libsodium allows ciphertext and plaintext to be the same buffer for both
constructions, so nothing is copied.
"""

from __future__ import annotations

import enum
import struct

from .. import crypto
from ..wire import phantom as phw
from ..wire import wireguard as wgw

ffi, lib = crypto.ffi, crypto.lib

PAYLOAD_OFFSET = phw.TRANSPORT_PAYLOAD_OFFSET      # 32: where outbound plaintext is read to
HEADER_SIZE = phw.TRANSPORT_HEADER_SIZE            # 16, the same for both protocols
TAG = 16
_HEADER = struct.Struct("<B3xIQ")
_TRANSPORT = phw.MessageType.TRANSPORT


class CipherKind(enum.IntEnum):
    """Also the ``cipher`` field of the fast path's keypair slots."""

    SECRETBOX = 0              # Phantom
    CHACHA20POLY1305 = 1       # WireGuard


def seal_secretbox(key, counter: int, remote_index: int, buf: bytearray, n: int, mtu: int) -> tuple[int, int]:
    """Seal buf[32:32+n] in Phantom's format; (start, end) of the datagram in buf."""
    _HEADER.pack_into(buf, 0, _TRANSPORT, remote_index, counter)
    crypto.secretbox_seal_into(key, counter, buf, PAYLOAD_OFFSET, n)
    return 0, PAYLOAD_OFFSET + n


def open_secretbox(key, counter: int, buf: bytearray, n: int):
    """Open a Phantom datagram buf[0:n] in place; (payload start, length) or None."""
    if n < phw.TRANSPORT_MIN_SIZE:
        return None
    if not crypto.secretbox_open_into(key, counter, buf, HEADER_SIZE, n - HEADER_SIZE):
        return None
    return PAYLOAD_OFFSET, n - PAYLOAD_OFFSET


def seal_chacha(key, counter: int, remote_index: int, buf: bytearray, n: int, mtu: int) -> tuple[int, int]:
    """Seal buf[32:32+n] in WireGuard's format; (start, end) of the datagram in buf."""
    padded = wgw.padded_length(n, mtu)
    if padded != n:
        buf[PAYLOAD_OFFSET + n:PAYLOAD_OFFSET + padded] = bytes(padded - n)
    start = PAYLOAD_OFFSET - HEADER_SIZE
    _HEADER.pack_into(buf, start, _TRANSPORT, remote_index, counter)
    p = ffi.from_buffer(buf)
    clen = ffi.new("unsigned long long *")
    rc = lib.crypto_aead_chacha20poly1305_ietf_encrypt(
        p + PAYLOAD_OFFSET, clen, p + PAYLOAD_OFFSET, padded, ffi.NULL, 0, ffi.NULL,
        wgw.transport_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        raise crypto.CryptoError("chacha20poly1305 seal failed")
    return start, PAYLOAD_OFFSET + padded + TAG


def open_chacha(key, counter: int, buf: bytearray, n: int):
    """Open a WireGuard datagram buf[0:n] in place; (payload start, padded length) or None."""
    if n < wgw.TRANSPORT_MIN_SIZE:
        return None
    p = ffi.from_buffer(buf)
    mlen = ffi.new("unsigned long long *")
    rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
        p + HEADER_SIZE, mlen, ffi.NULL, p + HEADER_SIZE, n - HEADER_SIZE, ffi.NULL, 0,
        wgw.transport_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        return None
    return HEADER_SIZE, n - HEADER_SIZE - TAG


SEAL = {CipherKind.SECRETBOX: seal_secretbox, CipherKind.CHACHA20POLY1305: seal_chacha}
OPEN = {CipherKind.SECRETBOX: open_secretbox, CipherKind.CHACHA20POLY1305: open_chacha}


def seal_packet(kind: CipherKind, key, remote_index: int, counter: int, plaintext: bytes,
                mtu: int = 0) -> bytes:
    """A whole transport datagram for ``plaintext`` (tests, tools): not the data path."""
    n = len(plaintext)
    buf = bytearray(PAYLOAD_OFFSET + n + 2 * TAG)
    buf[PAYLOAD_OFFSET:PAYLOAD_OFFSET + n] = plaintext
    start, end = SEAL[CipherKind(kind)](key, counter, remote_index, buf, n, mtu)
    return bytes(buf[start:end])


def open_packet(kind: CipherKind, key, datagram: bytes):
    """(receiver index, counter, plaintext) of a transport datagram, or None if forged."""
    if len(datagram) < HEADER_SIZE:
        return None
    _, index, counter = _HEADER.unpack_from(datagram, 0)
    buf = bytearray(datagram)
    got = OPEN[CipherKind(kind)](key, counter, buf, len(buf))
    if got is None:
        return None
    start, length = got
    return index, counter, bytes(buf[start:start + length])


def inner_length(packet) -> int:
    """The length an IPv4/IPv6 packet says it has (0 when it is neither or too short).

    WireGuard pads transport payloads; the receiver trims them back to this.
    """
    if len(packet) < 1:
        return 0
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return (packet[2] << 8) | packet[3]
    if version == 6 and len(packet) >= 40:
        return 40 + ((packet[4] << 8) | packet[5])
    return 0
