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
mac1; ``msg_beta`` (covered by mac2) is everything before mac2.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .phantom import MessageType, WireError

__all__ = [
    "MessageType", "WireError", "INITIATION_SIZE", "RESPONSE_SIZE", "COOKIE_REPLY_SIZE",
    "TRANSPORT_HEADER_SIZE", "TRANSPORT_MIN_SIZE", "PADDING_MULTIPLE", "Initiation", "Response",
    "CookieReply", "message_type", "padded_length", "transport_nonce", "pack_transport_header",
    "unpack_transport_header",
]

KEY_SIZE = 32
AEAD_TAG_SIZE = 16
TIMESTAMP_SIZE = 12
MAC_SIZE = 16
COOKIE_SIZE = 16
COOKIE_NONCE_SIZE = 24
PADDING_MULTIPLE = 16
AEAD_NONCE_SIZE = 12

INITIATION = struct.Struct("<B3xI%ds%ds%ds%ds%ds" % (
    KEY_SIZE, KEY_SIZE + AEAD_TAG_SIZE, TIMESTAMP_SIZE + AEAD_TAG_SIZE, MAC_SIZE, MAC_SIZE))
RESPONSE = struct.Struct("<B3xII%ds%ds%ds%ds" % (KEY_SIZE, AEAD_TAG_SIZE, MAC_SIZE, MAC_SIZE))
COOKIE_REPLY = struct.Struct("<B3xI%ds%ds" % (COOKIE_NONCE_SIZE, COOKIE_SIZE + AEAD_TAG_SIZE))
TRANSPORT_HEADER = struct.Struct("<B3xIQ")

INITIATION_SIZE = INITIATION.size              # 148
RESPONSE_SIZE = RESPONSE.size                  # 92
COOKIE_REPLY_SIZE = COOKIE_REPLY.size          # 64
TRANSPORT_HEADER_SIZE = TRANSPORT_HEADER.size  # 16
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE   # 32
TRANSPORT_MIN_SIZE = TRANSPORT_OVERHEAD        # a keepalive
MAX_INNER_SIZE = 65535
MAX_DATAGRAM_SIZE = MAX_INNER_SIZE + PADDING_MULTIPLE + TRANSPORT_OVERHEAD

assert (INITIATION_SIZE, RESPONSE_SIZE, COOKIE_REPLY_SIZE) == (148, 92, 64)

_EXPECTED_SIZE = {
    MessageType.INITIATION: INITIATION_SIZE,
    MessageType.RESPONSE: RESPONSE_SIZE,
    MessageType.COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


def message_type(datagram) -> MessageType:
    """The type of a WireGuard datagram after checking its framing, or raise WireError."""
    n = len(datagram)
    if n < 4:
        raise WireError("truncated header")
    if datagram[1] or datagram[2] or datagram[3]:
        raise WireError("reserved bytes not zero")
    try:
        mtype = MessageType(datagram[0])
    except ValueError:
        raise WireError("unknown message type %d" % datagram[0]) from None
    if mtype is MessageType.TRANSPORT:
        if n < TRANSPORT_MIN_SIZE:
            raise WireError("truncated transport message")
        if n > MAX_DATAGRAM_SIZE:
            raise WireError("oversized transport message")
    elif n != _EXPECTED_SIZE[mtype]:
        raise WireError("wireguard %s of %d bytes, expected %d"
                        % (mtype.name.lower(), n, _EXPECTED_SIZE[mtype]))
    return mtype


@dataclass(frozen=True)
class Initiation:
    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    def pack(self) -> bytes:
        return INITIATION.pack(MessageType.INITIATION, self.sender_index, self.ephemeral,
                               self.encrypted_static, self.encrypted_timestamp, self.mac1, self.mac2)

    @classmethod
    def unpack(cls, data) -> "Initiation":
        if len(data) != INITIATION_SIZE or data[0] != MessageType.INITIATION or any(data[1:4]):
            raise WireError("not a wireguard handshake initiation")
        _, idx, e, s, t, m1, m2 = INITIATION.unpack(bytes(data))
        return cls(idx, e, s, t, m1, m2)


@dataclass(frozen=True)
class Response:
    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    def pack(self) -> bytes:
        return RESPONSE.pack(MessageType.RESPONSE, self.sender_index, self.receiver_index,
                             self.ephemeral, self.encrypted_nothing, self.mac1, self.mac2)

    @classmethod
    def unpack(cls, data) -> "Response":
        if len(data) != RESPONSE_SIZE or data[0] != MessageType.RESPONSE or any(data[1:4]):
            raise WireError("not a wireguard handshake response")
        _, s_idx, r_idx, e, x, m1, m2 = RESPONSE.unpack(bytes(data))
        return cls(s_idx, r_idx, e, x, m1, m2)


@dataclass(frozen=True)
class CookieReply:
    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        return COOKIE_REPLY.pack(MessageType.COOKIE_REPLY, self.receiver_index, self.nonce,
                                 self.encrypted_cookie)

    @classmethod
    def unpack(cls, data) -> "CookieReply":
        if len(data) != COOKIE_REPLY_SIZE or data[0] != MessageType.COOKIE_REPLY or any(data[1:4]):
            raise WireError("not a cookie reply")
        _, idx, nonce, enc = COOKIE_REPLY.unpack(bytes(data))
        return cls(idx, nonce, enc)


def mac1_region(message) -> bytes:
    """msg_alpha: everything before mac1."""
    return bytes(message[: len(message) - 2 * MAC_SIZE])


def mac2_region(message) -> bytes:
    """msg_beta: everything before mac2 (mac1 included)."""
    return bytes(message[: len(message) - MAC_SIZE])


def mac1_of(message) -> bytes:
    return bytes(message[len(message) - 2 * MAC_SIZE: len(message) - MAC_SIZE])


def mac2_of(message) -> bytes:
    return bytes(message[len(message) - MAC_SIZE:])


def with_macs(message, mac1: bytes, mac2: bytes) -> bytes:
    return bytes(message[: len(message) - 2 * MAC_SIZE]) + mac1 + mac2


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


def pack_transport_header(receiver_index: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(MessageType.TRANSPORT, receiver_index, counter)


def unpack_transport_header(datagram) -> tuple[int, int]:
    """(receiver_index, counter) of a transport message (framing already checked)."""
    _, idx, ctr = TRANSPORT_HEADER.unpack_from(datagram, 0)
    return idx, ctr
