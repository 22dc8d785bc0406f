"""Phantom's own wire format (``protocol = "phantom"``), shared by both planes.

Re-exported as :mod:`phantom.wire`; WireGuard's format is
:mod:`phantom.wire.wireguard`, and :mod:`phantom.wire.demux` tells the two
apart on the shared UDP port.

Every UDP datagram that Phantom sends starts with a one-byte message type and
three reserved zero bytes, followed by little-endian fields (as in WireGuard):

  type 1  handshake initiation   (164 bytes)
      sender_index u32 | ephemeral[32] | encrypted_static[32+16]
      | encrypted_payload[28+16] | mac1[16] | mac2[16]
      payload plaintext = TAI64N timestamp[12] | client_nonce[16]
  type 2  handshake response      (108 bytes)
      sender_index u32 | receiver_index u32 | ephemeral[32]
      | encrypted_payload[16+16] | mac1[16] | mac2[16]
      payload plaintext = the initiator's client_nonce[16], echoed
  type 3  cookie reply            (64 bytes)
      receiver_index u32 | nonce[24] | encrypted_cookie[16+16]
  type 4  transport data          (32 + n bytes)
      receiver_index u32 | counter u64 | secretbox(mac[16] | ciphertext[n])
      nonce for crypto_secretbox = counter as u64 little-endian | 16 zero bytes
      n == 0 is a keepalive.

The Noise handshake messages proper are the bytes from ``ephemeral`` up to
(not including) ``mac1``; see :func:`noise_bytes`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

# --- sizes of the primitives ------------------------------------------------
KEY_SIZE = 32            # X25519 keys, secretbox keys, ChaCha20-Poly1305 keys
AEAD_TAG_SIZE = 16       # Poly1305 tag (secretbox MAC and AEAD tag)
TIMESTAMP_SIZE = 12      # TAI64N
CLIENT_NONCE_SIZE = 16   # the prototype's client nonce
MAC_SIZE = 16            # mac1 / mac2 / cookie
COOKIE_NONCE_SIZE = 24   # XChaCha20-Poly1305 nonce of a cookie reply
SECRETBOX_NONCE_SIZE = 24

INITIATION_PAYLOAD_SIZE = TIMESTAMP_SIZE + CLIENT_NONCE_SIZE
RESPONSE_PAYLOAD_SIZE = CLIENT_NONCE_SIZE


class MessageType(enum.IntEnum):
    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4


# --- layouts ------------------------------------------------------------------
HEADER = struct.Struct("<B3x")
INITIATION = struct.Struct(
    "<B3xI%ds%ds%ds%ds%ds"
    % (KEY_SIZE, KEY_SIZE + AEAD_TAG_SIZE, INITIATION_PAYLOAD_SIZE + AEAD_TAG_SIZE, MAC_SIZE, MAC_SIZE)
)
RESPONSE = struct.Struct(
    "<B3xII%ds%ds%ds%ds" % (KEY_SIZE, RESPONSE_PAYLOAD_SIZE + AEAD_TAG_SIZE, MAC_SIZE, MAC_SIZE)
)
COOKIE_REPLY = struct.Struct("<B3xI%ds%ds" % (COOKIE_NONCE_SIZE, MAC_SIZE + AEAD_TAG_SIZE))
TRANSPORT_HEADER = struct.Struct("<B3xIQ")

INITIATION_SIZE = INITIATION.size            # 164
RESPONSE_SIZE = RESPONSE.size                # 108
COOKIE_REPLY_SIZE = COOKIE_REPLY.size        # 64
TRANSPORT_HEADER_SIZE = TRANSPORT_HEADER.size  # 16
# Encrypt in place: the plaintext sits at TRANSPORT_PAYLOAD_OFFSET, the MAC
# right before it, the header before that.
TRANSPORT_PAYLOAD_OFFSET = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE  # 32
TRANSPORT_OVERHEAD = TRANSPORT_PAYLOAD_OFFSET
TRANSPORT_MIN_SIZE = TRANSPORT_OVERHEAD      # a keepalive

# Field offsets inside handshake messages, named rather than summed by hand.
INITIATION_NOISE_OFFSET = 8                  # ephemeral starts here
INITIATION_MAC1_OFFSET = INITIATION_SIZE - 2 * MAC_SIZE
INITIATION_MAC2_OFFSET = INITIATION_SIZE - MAC_SIZE
RESPONSE_NOISE_OFFSET = 12
RESPONSE_MAC1_OFFSET = RESPONSE_SIZE - 2 * MAC_SIZE
RESPONSE_MAC2_OFFSET = RESPONSE_SIZE - MAC_SIZE

# Largest inner packet a peer may send (TUN MTU up to 65535, or a GSO-sized
# test datagram); anything bigger is dropped as oversized.
MAX_INNER_SIZE = 65535
MAX_DATAGRAM_SIZE = MAX_INNER_SIZE + TRANSPORT_OVERHEAD

_EXPECTED_SIZE = {
    MessageType.INITIATION: INITIATION_SIZE,
    MessageType.RESPONSE: RESPONSE_SIZE,
    MessageType.COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


class WireError(ValueError):
    """A datagram that is not a well-formed Phantom message."""


def message_type(datagram: bytes) -> MessageType:
    """Return the type of a datagram after checking its framing, or raise WireError.

    Checks: known type byte, zero reserved bytes, exact size for handshake
    messages, minimum and maximum size for transport data.
    """
    n = len(datagram)
    if n < HEADER.size:
        raise WireError("truncated header")
    t = datagram[0]
    if datagram[1] or datagram[2] or datagram[3]:
        raise WireError("reserved bytes not zero")
    try:
        mtype = MessageType(t)
    except ValueError:
        raise WireError("unknown message type %d" % t) from None
    if mtype is MessageType.TRANSPORT:
        if n < TRANSPORT_MIN_SIZE:
            raise WireError("truncated transport message")
        if n > MAX_DATAGRAM_SIZE:
            raise WireError("oversized transport message")
    elif n != _EXPECTED_SIZE[mtype]:
        raise WireError("%s of %d bytes, expected %d" % (mtype.name.lower(), n, _EXPECTED_SIZE[mtype]))
    return mtype


@dataclass(frozen=True)
class Initiation:
    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_payload: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    def pack(self) -> bytes:
        return INITIATION.pack(MessageType.INITIATION, self.sender_index, self.ephemeral,
                               self.encrypted_static, self.encrypted_payload, self.mac1, self.mac2)

    @classmethod
    def unpack(cls, data: bytes) -> "Initiation":
        if len(data) != INITIATION_SIZE or data[0] != MessageType.INITIATION:
            raise WireError("not a handshake initiation")
        _, idx, e, s, p, m1, m2 = INITIATION.unpack(data)
        return cls(idx, e, s, p, m1, m2)

    @property
    def noise_message(self) -> bytes:
        return self.ephemeral + self.encrypted_static + self.encrypted_payload


@dataclass(frozen=True)
class Response:
    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_payload: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    def pack(self) -> bytes:
        return RESPONSE.pack(MessageType.RESPONSE, self.sender_index, self.receiver_index,
                             self.ephemeral, self.encrypted_payload, self.mac1, self.mac2)

    @classmethod
    def unpack(cls, data: bytes) -> "Response":
        if len(data) != RESPONSE_SIZE or data[0] != MessageType.RESPONSE:
            raise WireError("not a handshake response")
        _, s_idx, r_idx, e, p, m1, m2 = RESPONSE.unpack(data)
        return cls(s_idx, r_idx, e, p, m1, m2)

    @property
    def noise_message(self) -> bytes:
        return self.ephemeral + self.encrypted_payload


@dataclass(frozen=True)
class CookieReply:
    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        return COOKIE_REPLY.pack(MessageType.COOKIE_REPLY, self.receiver_index, self.nonce,
                                 self.encrypted_cookie)

    @classmethod
    def unpack(cls, data: bytes) -> "CookieReply":
        if len(data) != COOKIE_REPLY_SIZE or data[0] != MessageType.COOKIE_REPLY:
            raise WireError("not a cookie reply")
        _, idx, nonce, enc = COOKIE_REPLY.unpack(data)
        return cls(idx, nonce, enc)


def mac1_region(message: bytes) -> bytes:
    """The bytes covered by mac1: everything before it."""
    return message[: len(message) - 2 * MAC_SIZE]


def mac2_region(message: bytes) -> bytes:
    """The bytes covered by mac2: everything before it (mac1 included)."""
    return message[: len(message) - MAC_SIZE]


def with_macs(message: bytes, mac1: bytes, mac2: bytes) -> bytes:
    return message[: len(message) - 2 * MAC_SIZE] + mac1 + mac2


def transport_nonce(counter: int) -> bytes:
    """The 24-byte crypto_secretbox nonce for a transport counter."""
    return counter.to_bytes(8, "little") + bytes(SECRETBOX_NONCE_SIZE - 8)


def pack_transport_header(receiver_index: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(MessageType.TRANSPORT, receiver_index, counter)


def unpack_transport_header(datagram) -> tuple[int, int]:
    """Return (receiver_index, counter); the caller has checked message_type()."""
    _, idx, ctr = TRANSPORT_HEADER.unpack_from(datagram, 0)
    return idx, ctr
