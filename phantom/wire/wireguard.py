"""WireGuard v1's wire format (whitepaper section 5.4), byte for byte.

Shared by the control plane (handshake and cookie messages) and both data
paths (transport data).  All integers are little-endian; every message starts
with a one-byte type and three reserved zero bytes::

  type 1  handshake initiation   148 bytes
      sender u32 | ephemeral[32] | static[32+16] | timestamp[12+16] | mac1[16] | mac2[16]
  type 2  handshake response      92 bytes
      sender u32 | receiver u32 | ephemeral[32] | empty[0+16] | mac1[16] | mac2[16]
  type 3  cookie reply            64 bytes
      receiver u32 | nonce[24] | cookie[16+16]
  type 4  transport data          32 + 16k bytes
      receiver u32 | counter u64 | ChaCha20-Poly1305(payload zero-padded to 16) | tag[16]
      AEAD nonce = 4 zero bytes | counter u64 little-endian (the IETF 96-bit nonce);
      no associated data.  An empty payload is a keepalive (32 bytes).

Unlike Phantom's secretbox format (tag before the ciphertext, payload at
offset 32), the transport payload starts right after the 16-byte header and
the tag follows it.  ``msg_alpha`` (covered by mac1) is everything before
mac1; ``msg_beta`` (covered by mac2) is everything before mac2.  The header
check, the cookie reply, the transport header and those regions are the
framing both protocols share (:mod:`phantom.wire.framing`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import framing
from .framing import (AEAD_TAG_SIZE, COOKIE_NONCE_SIZE, COOKIE_REPLY, COOKIE_REPLY_SIZE, COOKIE_SIZE,  # noqa: F401
                      MAC_SIZE, TRANSPORT_HEADER, TRANSPORT_HEADER_SIZE, CookieReply, MessageType,
                      WireError, mac1_of, mac1_region, mac2_of, mac2_region, pack_transport_header,
                      unpack_transport_header, with_macs)

__all__ = [
    "MessageType", "WireError", "INITIATION_SIZE", "RESPONSE_SIZE", "COOKIE_REPLY_SIZE",
    "TRANSPORT_HEADER_SIZE", "TRANSPORT_MIN_SIZE", "PADDING_MULTIPLE", "Initiation", "Response",
    "CookieReply", "message_type", "padded_length", "transport_nonce", "pack_transport_header",
    "unpack_transport_header",
]

KEY_SIZE = 32
TIMESTAMP_SIZE = 12
PADDING_MULTIPLE = 16
AEAD_NONCE_SIZE = 12

INITIATION = struct.Struct("<B3xI%ds%ds%ds%ds%ds" % (
    KEY_SIZE, KEY_SIZE + AEAD_TAG_SIZE, TIMESTAMP_SIZE + AEAD_TAG_SIZE, MAC_SIZE, MAC_SIZE))
RESPONSE = struct.Struct("<B3xII%ds%ds%ds%ds" % (KEY_SIZE, AEAD_TAG_SIZE, MAC_SIZE, MAC_SIZE))

INITIATION_SIZE = INITIATION.size              # 148
RESPONSE_SIZE = RESPONSE.size                  # 92
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE   # 32
TRANSPORT_MIN_SIZE = TRANSPORT_OVERHEAD        # a keepalive
MAX_INNER_SIZE = 65535
MAX_DATAGRAM_SIZE = MAX_INNER_SIZE + PADDING_MULTIPLE + TRANSPORT_OVERHEAD

assert (INITIATION_SIZE, RESPONSE_SIZE, COOKIE_REPLY_SIZE) == (148, 92, 64)

EXPECTED_SIZE = {                  # the size of each handshake or cookie message
    MessageType.INITIATION: INITIATION_SIZE,
    MessageType.RESPONSE: RESPONSE_SIZE,
    MessageType.COOKIE_REPLY: COOKIE_REPLY_SIZE,
}
_BOUNDS = {MessageType.TRANSPORT: (TRANSPORT_MIN_SIZE, MAX_DATAGRAM_SIZE)}


def message_type(datagram) -> MessageType:
    """The type of a WireGuard datagram after checking its framing
    (:func:`phantom.wire.framing.check`), or raise WireError; Phantom's own
    types 5 and 6 are not WireGuard's."""
    return framing.check(datagram, {t: (n,) for t, n in EXPECTED_SIZE.items()}, _BOUNDS, "wireguard ")


@dataclass(frozen=True)
class Initiation(framing.Message):
    MTYPE = MessageType.INITIATION
    HEAD = struct.Struct("<B3xI%ds%ds%ds" % (KEY_SIZE, KEY_SIZE + AEAD_TAG_SIZE, TIMESTAMP_SIZE + AEAD_TAG_SIZE))
    SIZES = (INITIATION_SIZE,)
    MACS = True
    WHAT = "wireguard handshake initiation"

    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)


@dataclass(frozen=True)
class Response(framing.Message):
    MTYPE = MessageType.RESPONSE
    HEAD = struct.Struct("<B3xII%ds%ds" % (KEY_SIZE, AEAD_TAG_SIZE))
    SIZES = (RESPONSE_SIZE,)
    MACS = True
    WHAT = "wireguard handshake response"

    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)


def padded_length(n: int, mtu: int = 0) -> int:
    """Length of an ``n``-byte payload after WireGuard's zero padding (section 5.4.6).

    Rounded up to a multiple of 16 but never past the MTU (a full-MTU packet
    is sent unpadded when the MTU is not a multiple of 16), as wireguard-go's
    calculatePaddingSize does; ``mtu=0`` means no cap.
    """
    if n < 0:
        raise ValueError("negative length")
    last = n
    if mtu and last > mtu:
        last %= mtu
    padded = (last + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
    if mtu and padded > mtu:
        padded = mtu
    return n + (padded - last)


def transport_nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 (IETF) nonce: 4 zero bytes, counter u64 LE."""
    return bytes(4) + counter.to_bytes(8, "little")
