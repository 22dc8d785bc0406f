"""Phantom's own wire format (``protocol = "phantom"``), shared by both planes.

Re-exported as :mod:`phantom.wire`; WireGuard's format is
:mod:`phantom.wire.wireguard`, and :mod:`phantom.wire.demux` tells the two
apart on the shared UDP port.

Every UDP datagram that Phantom sends starts with a one-byte message type and
three reserved zero bytes, followed by little-endian fields (as in WireGuard;
the header check, the cookie reply, the transport header and the MAC regions
are the two protocols' shared framing, :mod:`phantom.wire.framing`):

  type 1  handshake initiation   (164 bytes, 166 with a suite offer, 169..1192 with an attachment)
      sender_index u32 | ephemeral[32] | encrypted_static[32+16]
      | encrypted_payload[28+16, 30+16 or 32+n+16] | mac1[16] | mac2[16]
      payload plaintext = TAI64N timestamp[12] | client_nonce[16]
                          [ | suites u16: the initiator's transport suites, bit i = Suite(i)
                            [ | attachment_len u16 = n | attachment[n] ] ]
      An attachment (1 <= n <= MAX_ATTACHMENT_SIZE bytes: a membership
      certificate, opaque here) follows only a suites offer.  The MACs are
      always the message's last 32 bytes (framing.mac1_region).
  type 2  handshake response      (108 bytes, or 109 answering an offer)
      sender_index u32 | receiver_index u32 | ephemeral[32]
      | encrypted_payload[16+16 or 17+16] | mac1[16] | mac2[16]
      payload plaintext = the initiator's client_nonce[16], echoed
                          [ | suite u8: the suite the session uses, or
                              REFUSAL_FLAG | reason (a Refusal): no session ]
      An initiation without an offer (the prototype's, 164 bytes) gets a
      response without a choice (108 bytes), and the session uses secretbox.
      A refusal answers only an initiation with an attachment; it is the
      same size as an acceptance (109 bytes) and authenticated like one.
  type 3  cookie reply            (64 bytes)
      receiver_index u32 | nonce[24] | encrypted_cookie[16+16]
  type 4  transport data          (32 + n bytes with secretbox, 48 + n with aegis256)
      Suite.SECRETBOX: receiver_index u32 | counter u64 | secretbox(mac[16] | ciphertext[n])
        nonce for crypto_secretbox = counter as u64 little-endian | 16 zero bytes
      Suite.AEGIS256:  receiver_index u32 | counter u64 | ciphertext[n] | tag[32]
        crypto_aead_aegis256 (no associated data) under the session key
        derived for it (:mod:`phantom.dataplane.ciphers`), 32-byte nonce =
        counter as u64 little-endian | 24 zero bytes
      n == 0 is a keepalive.
  type 5  peer control            (48 + 9 + m bytes, m < PEER_CONTROL_MAX_BODY)
      receiver_index u32 | nonce[24] | secretbox(mac[16] | body)
      sealed with the session's send key (with secretbox, whatever the
      session's transport suite), like transport data, but under a
      random nonce whose last byte is 1 (:func:`control_nonce`), so it never
      equals a transport nonce (counter | 16 zero bytes).  Both data paths
      hand it to the control plane as they hand handshakes; the control plane
      opens it with its own reference to the session's keys.
      body = seq u64 | kind u8 | fields (:class:`ControlKind`, NAT traversal:
      rendezvous registration, where-is, answers and punch requests).
  type 6  relay                   (32 + 4 + m bytes)
      receiver_index u32 | counter u64 | secretbox(mac[16] | relay_id u32 | inner[m])
      one hop (A -> relay, or relay -> B), sealed like secretbox transport
      data with that hop's session key (its counter, its replay window; always
      secretbox, whatever the hop session's suite), so each hop is
      authenticated by its own keys.  relay_id names the pair (A, B) at the
      relay: random, unique there, the same on both hops and both ways, given
      to A and B in the rendezvous' Endpoints / Punch; the relay forwards a
      frame only if (its sender, its relay_id) is a pair whose other end
      accepts the sender.  ``inner`` is an A <-> B
      Phantom message (handshake or transport data), end-to-end encrypted with
      A's and B's keys: the relay forwards it and cannot read it.  A relay never
      delivers a relay frame's content to its own device.
  type 7  relay, aegis256 hop     (48 + 4 + m bytes)
      receiver_index u32 | counter u64 | ciphertext[4 + m] | tag[32]
      the same plaintext (relay_id u32 | inner[m]) as type 6, on a hop whose
      session negotiated aegis256: crypto_aead_aegis256 under that session's
      transport data key, nonce as type 4's (the counter is the hop's
      transport counter, shared with type 4, so a nonce is never reused), and
      the 16-byte header as associated data (so a type-4 datagram cannot be
      passed off as a relay frame, nor the reverse).  A sender uses it on
      every aegis256 hop; a relay forwards with it only a frame that came in
      as type 7, toward a destination whose session is aegis256 (otherwise
      type 6); a receiver takes type 6 on any Phantom session and type 7 on
      an aegis256 one only (else a ``malformed`` drop).

The Noise handshake messages proper are the bytes from ``ephemeral`` up to
(not including) ``mac1``; see :func:`noise_bytes`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from . import framing
from .framing import (AEAD_TAG_SIZE, COOKIE_NONCE_SIZE, COOKIE_REPLY, COOKIE_REPLY_SIZE, HEADER,  # noqa: F401
                      MAC_SIZE, TRANSPORT_HEADER, TRANSPORT_HEADER_SIZE, CookieReply, MessageType,
                      WireError, mac1_of, mac1_region, mac2_of, mac2_region, pack_transport_header,
                      unpack_transport_header, with_macs)

# --- sizes of the primitives ------------------------------------------------
KEY_SIZE = 32            # X25519 keys, secretbox keys, ChaCha20-Poly1305 keys
TIMESTAMP_SIZE = 12      # TAI64N
CLIENT_NONCE_SIZE = 16   # the prototype's client nonce
SECRETBOX_NONCE_SIZE = 24

INITIATION_PAYLOAD_SIZE = TIMESTAMP_SIZE + CLIENT_NONCE_SIZE
RESPONSE_PAYLOAD_SIZE = CLIENT_NONCE_SIZE
AEGIS256_TAG_SIZE = 32   # crypto_aead_aegis256_ABYTES
AEGIS256_NONCE_SIZE = 32


class Suite(enum.IntEnum):
    """Transport ciphers a Phantom session can use (the handshake picks one).

    The number is the suite's bit in an initiation's ``suites`` offer and its
    value in a response's ``suite`` byte."""

    SECRETBOX = 0          # XSalsa20-Poly1305 (crypto_secretbox): every Phantom speaks it
    AEGIS256 = 1           # AEGIS-256 (crypto_aead_aegis256): where both ends have AES hardware


SUITE_NAMES = {"secretbox": Suite.SECRETBOX, "aegis256": Suite.AEGIS256}
# Best first: the responder picks the first of these that both sides offer.
SUITE_PREFERENCE = (Suite.AEGIS256, Suite.SECRETBOX)
SUITES_FIELD = struct.Struct("<H")       # an initiation's offer: bit i = Suite(i)
SUITE_FIELD = struct.Struct("<B")        # a response's choice


class Refusal(enum.IntEnum):
    """Why a responder refused an initiation that carried an attachment (a
    membership certificate): the low 7 bits of a refusal's suite byte
    (:data:`REFUSAL_FLAG` set).  Codes 1..15 are the network's refusal
    reasons (:class:`phantom.network.errors.Reason`, the same numbers: never
    renumber, only add); codes an initiator does not know read as REFUSED."""

    REFUSED = 0            # no reason given
    MALFORMED = 1
    NOT_MEMBER = 2
    WRONG_NETWORK = 3
    WRONG_AUTHORITY = 4
    BAD_SIGNATURE = 5
    UNKNOWN_ISSUER = 6
    ISSUER_EXPIRED = 7
    EXPIRED = 8
    NOT_YET_VALID = 9
    LIFETIME = 10
    OUTSIDE_PREFIX = 11
    BAD_ROUTE = 12
    REMOVED = 13
    WRONG_KEY = 14
    STALE = 15
    NOT_ENDORSED = 16      # the key directory's trusted signer has not endorsed the key

    @property
    def sentence(self) -> str:
        return _REFUSAL_SENTENCES[self]


REFUSAL_FLAG = 0x80       # a response's suite byte with this bit: a refusal, not a suite
# what the refused initiator says (it does not know the responder's words)
_REFUSAL_SENTENCES = {
    Refusal.REFUSED: "refused",
    Refusal.MALFORMED: "malformed certificate",
    Refusal.NOT_MEMBER: "not a member of the network",
    Refusal.WRONG_NETWORK: "certificate is for another network",
    Refusal.WRONG_AUTHORITY: "certificate is not signed by the network's authority",
    Refusal.BAD_SIGNATURE: "certificate signature does not verify",
    Refusal.UNKNOWN_ISSUER: "certificate signed by a key the network does not list",
    Refusal.ISSUER_EXPIRED: "certificate signed by an expired admission key",
    Refusal.EXPIRED: "certificate expired",
    Refusal.NOT_YET_VALID: "certificate not yet valid",
    Refusal.LIFETIME: "certificate lifetime is longer than the network allows",
    Refusal.OUTSIDE_PREFIX: "certificate addresses are outside the network's prefixes",
    Refusal.BAD_ROUTE: "certificate routes overlap the network's prefixes",
    Refusal.REMOVED: "removed by the network",
    Refusal.WRONG_KEY: "certificate is for another key",
    Refusal.STALE: "certificate is older than the one already known",
    Refusal.NOT_ENDORSED: "not endorsed",
}
# how a responder's own words start, for each code (refusal_of): the
# network's headlines (phantom.network.errors.headline) name the network
_REFUSAL_STEMS = (
    ("not a member", Refusal.NOT_MEMBER), ("removed", Refusal.REMOVED),
    ("not endorsed", Refusal.NOT_ENDORSED), ("malformed", Refusal.MALFORMED),
    ("certificate expired", Refusal.EXPIRED), ("expired", Refusal.EXPIRED),
    ("certificate not yet valid", Refusal.NOT_YET_VALID), ("not yet valid", Refusal.NOT_YET_VALID),
    ("certificate is for another network", Refusal.WRONG_NETWORK),
    ("certificate is not signed by the authority", Refusal.WRONG_AUTHORITY),
    ("certificate is not signed by the network's authority", Refusal.WRONG_AUTHORITY),
    ("certificate signature", Refusal.BAD_SIGNATURE),
    ("certificate signed by an expired", Refusal.ISSUER_EXPIRED),
    ("certificate signed by a key", Refusal.UNKNOWN_ISSUER),
    ("certificate lifetime", Refusal.LIFETIME), ("certificate addresses", Refusal.OUTSIDE_PREFIX),
    ("certificate routes", Refusal.BAD_ROUTE), ("certificate is for another key", Refusal.WRONG_KEY),
    ("certificate is older", Refusal.STALE),
)


def refusal_of(reason) -> Refusal:
    """The code to send for a responder's reason: a :class:`Refusal` or its
    number (a ``network.errors.Reason``), its name ("removed",
    "NOT_MEMBER"), or a sentence that starts like one of the codes' (the
    network's headlines: "not a member of corp" -> NOT_MEMBER, "removed by
    the network" -> REMOVED, "certificate expired (at ...)" -> EXPIRED);
    anything else is REFUSED (the responder's own log keeps its words)."""
    if isinstance(reason, Refusal):
        return reason
    if isinstance(reason, int) and not isinstance(reason, bool):
        return refusal_code(reason)
    text = str(reason).strip().lower()
    by_name = Refusal.__members__.get(text.upper().replace(" ", "_"))
    if by_name is not None:
        return by_name
    for stem, code in _REFUSAL_STEMS:
        if text.startswith(stem):
            return code
    return Refusal.REFUSED


def refusal_code(value: int) -> Refusal:
    """A received reason (0..127) as a Refusal; unknown codes are REFUSED."""
    try:
        return Refusal(value)
    except ValueError:
        return Refusal.REFUSED


def refusal_sentence(reason, network: str = "") -> str:
    """What a refused initiator says ("removed by the network"); with the
    network's name, NOT_MEMBER reads "not a member of corp"."""
    reason = refusal_code(int(reason))
    if reason is Refusal.NOT_MEMBER and network:
        return "not a member of %s" % network
    return reason.sentence


def suite_name(suite) -> str:
    return Suite(suite).name.lower()


def suites_mask(suites) -> int:
    """The offer field for an iterable of suites."""
    mask = 0
    for s in suites:
        mask |= 1 << int(Suite(s))
    return mask


def suites_of(mask: int) -> tuple:
    """The suites an offer names, best first (unknown bits are ignored)."""
    return tuple(s for s in SUITE_PREFERENCE if mask >> int(s) & 1)


# --- layouts ------------------------------------------------------------------
# The fixed heads of the handshake messages: type, reserved bytes, indexes,
# and the Noise fields of fixed size; the encrypted payload (its size depends
# on the suites fields) and mac1 | mac2 follow.
INITIATION_HEAD = struct.Struct("<B3xI%ds%ds" % (KEY_SIZE, KEY_SIZE + AEAD_TAG_SIZE))
RESPONSE_HEAD = struct.Struct("<B3xII%ds" % KEY_SIZE)

INITIATION_SIZE = INITIATION_HEAD.size + INITIATION_PAYLOAD_SIZE + AEAD_TAG_SIZE + 2 * MAC_SIZE  # 164
RESPONSE_SIZE = RESPONSE_HEAD.size + RESPONSE_PAYLOAD_SIZE + AEAD_TAG_SIZE + 2 * MAC_SIZE        # 108
INITIATION_OFFER_SIZE = INITIATION_SIZE + SUITES_FIELD.size   # 166: with the suites offer
RESPONSE_CHOICE_SIZE = RESPONSE_SIZE + SUITE_FIELD.size       # 109: with the chosen suite
# An attachment (a membership certificate) after the suites offer: u16 length
# and 1..MAX_ATTACHMENT_SIZE bytes, inside the encrypted payload.
ATTACHMENT_LENGTH = struct.Struct("<H")
MAX_ATTACHMENT_SIZE = 1024
INITIATION_ATTACHED_MIN_SIZE = INITIATION_OFFER_SIZE + ATTACHMENT_LENGTH.size + 1             # 169
INITIATION_MAX_SIZE = INITIATION_OFFER_SIZE + ATTACHMENT_LENGTH.size + MAX_ATTACHMENT_SIZE    # 1192
INITIATION_SIZES = framing.Sizes((INITIATION_SIZE, INITIATION_OFFER_SIZE),
                                 ((INITIATION_ATTACHED_MIN_SIZE, INITIATION_MAX_SIZE),))
RESPONSE_SIZES = (RESPONSE_SIZE, RESPONSE_CHOICE_SIZE)
# Amplification: nothing a responder sends (a response, a refusal, a cookie
# reply) is larger than the smallest initiation that can cause it.
assert max(RESPONSE_SIZES) < INITIATION_SIZE and COOKIE_REPLY_SIZE < INITIATION_SIZE
# Encrypt in place: the plaintext sits at TRANSPORT_PAYLOAD_OFFSET, the MAC
# right before it, the header before that.
TRANSPORT_PAYLOAD_OFFSET = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE  # 32
TRANSPORT_OVERHEAD = TRANSPORT_PAYLOAD_OFFSET
TRANSPORT_MIN_SIZE = TRANSPORT_OVERHEAD      # a keepalive
# AEGIS-256 transport: header, ciphertext, a 32-byte tag (16 bytes more than secretbox)
AEGIS256_OVERHEAD = TRANSPORT_HEADER_SIZE + AEGIS256_TAG_SIZE      # 48
AEGIS256_EXTRA = AEGIS256_OVERHEAD - TRANSPORT_OVERHEAD            # 16

# Field offsets inside handshake messages, named rather than summed by hand
# (mac1 and mac2 are always the last 32 bytes: see mac1_region; an
# initiation's size varies, so its MAC offsets are taken from its end:
# :func:`mac1_offset`; the two constants are the 164-byte form's).
INITIATION_NOISE_OFFSET = 8                  # ephemeral starts here
INITIATION_MAC1_OFFSET = INITIATION_SIZE - 2 * MAC_SIZE
INITIATION_MAC2_OFFSET = INITIATION_SIZE - MAC_SIZE
RESPONSE_NOISE_OFFSET = 12
RESPONSE_MAC1_OFFSET = RESPONSE_SIZE - 2 * MAC_SIZE
RESPONSE_MAC2_OFFSET = RESPONSE_SIZE - MAC_SIZE


def mac1_offset(message) -> int:
    """Where mac1 starts in a handshake message of any size (its end less 32)."""
    return len(message) - 2 * MAC_SIZE


def mac2_offset(message) -> int:
    """Where mac2 starts in a handshake message of any size (its end less 16)."""
    return len(message) - MAC_SIZE

# Largest inner packet a peer may send (TUN MTU up to 65535, or a GSO-sized
# test datagram); anything bigger is dropped as oversized.
MAX_INNER_SIZE = 65535
MAX_DATAGRAM_SIZE = MAX_INNER_SIZE + AEGIS256_OVERHEAD     # the larger of the two suites

PEER_CONTROL_HEADER = struct.Struct("<B3xI%ds" % SECRETBOX_NONCE_SIZE)
PEER_CONTROL_BODY_HEADER = struct.Struct("<QB")           # seq, kind
PEER_CONTROL_MIN_SIZE = PEER_CONTROL_HEADER.size + AEAD_TAG_SIZE + PEER_CONTROL_BODY_HEADER.size
PEER_CONTROL_MAX_BODY = 12288
PEER_CONTROL_MAX_SIZE = PEER_CONTROL_HEADER.size + AEAD_TAG_SIZE + PEER_CONTROL_MAX_BODY
MAX_CONTROL_ENDPOINTS = 8      # endpoints in one message
MAX_CONTROL_KEYS = 256         # accepted keys in one registration
RELAY_ID = struct.Struct("<I")
RELAY_MIN_SIZE = TRANSPORT_OVERHEAD + RELAY_ID.size + HEADER.size   # an inner message has a header
RELAY_AEGIS_MIN_SIZE = AEGIS256_OVERHEAD + RELAY_ID.size + HEADER.size
# a relay frame's bytes beyond its inner datagram (relay id, the hop's header and tag)
RELAY_OVERHEAD = TRANSPORT_OVERHEAD + RELAY_ID.size                  # 36 (type 6)
RELAY_AEGIS_OVERHEAD = AEGIS256_OVERHEAD + RELAY_ID.size             # 52 (type 7)

EXPECTED_SIZES = {                 # the sizes a handshake or cookie message may have
    MessageType.INITIATION: INITIATION_SIZES,
    MessageType.RESPONSE: RESPONSE_SIZES,
    MessageType.COOKIE_REPLY: (COOKIE_REPLY_SIZE,),
}
_BOUNDS = {
    MessageType.TRANSPORT: (TRANSPORT_MIN_SIZE, MAX_DATAGRAM_SIZE),
    MessageType.PEER_CONTROL: (PEER_CONTROL_MIN_SIZE, PEER_CONTROL_MAX_SIZE),
    MessageType.RELAY: (RELAY_MIN_SIZE, MAX_DATAGRAM_SIZE),
    MessageType.RELAY_AEGIS: (RELAY_AEGIS_MIN_SIZE, MAX_DATAGRAM_SIZE),
}


def message_type(datagram: bytes) -> MessageType:
    """Return the type of a datagram after checking its framing, or raise WireError.

    Checks (:func:`phantom.wire.framing.check`): known type byte, zero
    reserved bytes, exact size for handshake messages and cookie replies,
    minimum and maximum size for transport data, peer control and relay frames.
    """
    return framing.check(datagram, EXPECTED_SIZES, _BOUNDS)


@dataclass(frozen=True)
class Initiation(framing.Message):
    """164 bytes, 166 when the encrypted payload carries a suite offer,
    169..1192 when it carries an attachment after the offer."""

    MTYPE = MessageType.INITIATION
    HEAD = INITIATION_HEAD
    SIZES = INITIATION_SIZES
    MACS = True
    WHAT = "handshake initiation"

    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_payload: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    @property
    def offers_suites(self) -> bool:
        """True for the 166-byte form and longer (its payload has a suites offer)."""
        return len(self.encrypted_payload) >= INITIATION_PAYLOAD_SIZE + SUITES_FIELD.size + AEAD_TAG_SIZE

    @property
    def attachment_size(self) -> int:
        """n, the attachment's size the message's length implies (0: none)."""
        extra = len(self.encrypted_payload) - (INITIATION_PAYLOAD_SIZE + SUITES_FIELD.size
                                               + ATTACHMENT_LENGTH.size + AEAD_TAG_SIZE)
        return max(0, extra)

    @property
    def noise_message(self) -> bytes:
        return self.ephemeral + self.encrypted_static + self.encrypted_payload


@dataclass(frozen=True)
class Response(framing.Message):
    """108 bytes, or 109 when the encrypted payload carries the chosen suite."""

    MTYPE = MessageType.RESPONSE
    HEAD = RESPONSE_HEAD
    SIZES = RESPONSE_SIZES
    MACS = True
    WHAT = "handshake response"

    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_payload: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    @property
    def chooses_suite(self) -> bool:
        """True for the 109-byte form (its payload ends in the chosen suite)."""
        return len(self.encrypted_payload) == RESPONSE_PAYLOAD_SIZE + SUITE_FIELD.size + AEAD_TAG_SIZE

    @property
    def noise_message(self) -> bytes:
        return self.ephemeral + self.encrypted_payload


def transport_nonce(counter: int) -> bytes:
    """The 24-byte crypto_secretbox nonce for a transport counter."""
    return counter.to_bytes(8, "little") + bytes(SECRETBOX_NONCE_SIZE - 8)


def aegis256_nonce(counter: int) -> bytes:
    """The 32-byte crypto_aead_aegis256 nonce for a transport counter: the
    counter u64 little-endian, then 24 zero bytes.  Unique per key because a
    key never reuses a counter (as for secretbox)."""
    return counter.to_bytes(8, "little") + bytes(AEGIS256_NONCE_SIZE - 8)


# --- peer control (NAT traversal) -------------------------------------------------
def control_nonce(random23: bytes) -> bytes:
    """A peer-control nonce: 23 random bytes and a final 1, never a transport nonce."""
    if len(random23) != SECRETBOX_NONCE_SIZE - 1:
        raise ValueError("23 random bytes")
    return bytes(random23) + b"\x01"


def pack_peer_control(receiver_index: int, nonce: bytes, box: bytes) -> bytes:
    return PEER_CONTROL_HEADER.pack(MessageType.PEER_CONTROL, receiver_index, nonce) + box


def unpack_peer_control(datagram) -> tuple[int, bytes, bytes]:
    """(receiver_index, nonce, mac||ciphertext); WireError when not one."""
    datagram = framing.expect(datagram, MessageType.PEER_CONTROL,
                              range(PEER_CONTROL_MIN_SIZE, PEER_CONTROL_MAX_SIZE + 1), "peer control message")
    _, idx, nonce = PEER_CONTROL_HEADER.unpack_from(datagram, 0)
    if nonce[-1] != 1:
        raise WireError("peer control nonce outside its domain")
    return idx, bytes(nonce), bytes(datagram[PEER_CONTROL_HEADER.size:])


class ControlKind(enum.IntEnum):
    REGISTER = 1      # client -> rendezvous: my local endpoints, the keys I accept
    WHERE_IS = 2      # client -> rendezvous: where is key K?
    ENDPOINTS = 3     # rendezvous -> client: K's endpoints (none: unknown or not for you)
    PUNCH = 4         # rendezvous -> client: key K wants you; send toward these endpoints
    REGISTERED = 5    # rendezvous -> client: your reflexive endpoint as seen from here


@dataclass(frozen=True)
class Register:
    endpoints: tuple = ()
    accepts: tuple = ()          # 32-byte public keys whose handshakes this peer accepts


@dataclass(frozen=True)
class WhereIs:
    key: bytes


@dataclass(frozen=True)
class Endpoints:
    key: bytes
    endpoints: tuple = ()
    relay_id: int = 0            # the pair's relay id at this node when it relays for us (0: no relay)


@dataclass(frozen=True)
class Punch:
    key: bytes
    endpoints: tuple = ()
    relay_id: int = 0


@dataclass(frozen=True)
class Registered:
    endpoints: tuple = ()


_KIND_OF = {Register: ControlKind.REGISTER, WhereIs: ControlKind.WHERE_IS, Endpoints: ControlKind.ENDPOINTS,
            Punch: ControlKind.PUNCH, Registered: ControlKind.REGISTERED}


def _pack_endpoints(eps) -> bytes:
    import ipaddress
    eps = list(eps)
    if len(eps) > MAX_CONTROL_ENDPOINTS:
        raise WireError("too many endpoints")
    out = [bytes([len(eps)])]
    for host, port in eps:
        a = ipaddress.ip_address(host)
        out.append(bytes([a.version]) + a.packed + struct.pack("!H", port))
    return b"".join(out)


def _unpack_endpoints(body: bytes, off: int) -> tuple[tuple, int]:
    import ipaddress
    if off >= len(body):
        raise WireError("truncated endpoint list")
    n = body[off]
    off += 1
    if n > MAX_CONTROL_ENDPOINTS:
        raise WireError("too many endpoints")
    eps = []
    for _ in range(n):
        if off >= len(body):
            raise WireError("truncated endpoint")
        fam = body[off]
        size = 4 if fam == 4 else 16 if fam == 6 else 0
        if not size or off + 1 + size + 2 > len(body):
            raise WireError("bad endpoint")
        addr = str(ipaddress.ip_address(body[off + 1:off + 1 + size]))
        port = struct.unpack_from("!H", body, off + 1 + size)[0]
        eps.append((addr, port))
        off += 1 + size + 2
    return tuple(eps), off


def encode_control(seq: int, msg) -> bytes:
    """The plaintext body of a peer-control message."""
    kind = _KIND_OF[type(msg)]
    head = PEER_CONTROL_BODY_HEADER.pack(seq, kind)
    if isinstance(msg, Register):
        if len(msg.accepts) > MAX_CONTROL_KEYS or any(len(k) != KEY_SIZE for k in msg.accepts):
            raise WireError("bad accepted keys")
        body = _pack_endpoints(msg.endpoints) + struct.pack("<H", len(msg.accepts)) + b"".join(msg.accepts)
    elif isinstance(msg, Registered):
        body = _pack_endpoints(msg.endpoints)
    elif isinstance(msg, WhereIs):
        body = bytes(msg.key)
    else:
        body = bytes(msg.key) + RELAY_ID.pack(msg.relay_id) + _pack_endpoints(msg.endpoints)
    if len(getattr(msg, "key", bytes(KEY_SIZE))) != KEY_SIZE:
        raise WireError("bad key")
    out = head + body
    if len(out) > PEER_CONTROL_MAX_BODY:
        raise WireError("peer control body too large")
    return out


def decode_control(body: bytes):
    """(seq, message) from a peer-control body, or WireError."""
    if len(body) < PEER_CONTROL_BODY_HEADER.size:
        raise WireError("truncated peer control body")
    seq, kind = PEER_CONTROL_BODY_HEADER.unpack_from(body, 0)
    off = PEER_CONTROL_BODY_HEADER.size
    try:
        kind = ControlKind(kind)
    except ValueError:
        raise WireError("unknown peer control kind %d" % kind) from None
    if kind is ControlKind.REGISTER:
        eps, off = _unpack_endpoints(body, off)
        if off + 2 > len(body):
            raise WireError("truncated key count")
        (n,) = struct.unpack_from("<H", body, off)
        off += 2
        if n > MAX_CONTROL_KEYS or off + n * KEY_SIZE != len(body):
            raise WireError("bad accepted keys")
        keys = tuple(bytes(body[off + i * KEY_SIZE: off + (i + 1) * KEY_SIZE]) for i in range(n))
        return seq, Register(eps, keys)
    if kind is ControlKind.REGISTERED:
        eps, off = _unpack_endpoints(body, off)
        msg = Registered(eps)
    elif kind is ControlKind.WHERE_IS:
        if len(body) - off != KEY_SIZE:
            raise WireError("bad where-is")
        return seq, WhereIs(bytes(body[off:]))
    else:
        if len(body) - off < KEY_SIZE + RELAY_ID.size:
            raise WireError("truncated key")
        key = bytes(body[off:off + KEY_SIZE])
        (relay_id,) = RELAY_ID.unpack_from(body, off + KEY_SIZE)
        eps, off = _unpack_endpoints(body, off + KEY_SIZE + RELAY_ID.size)
        msg = (Endpoints if kind is ControlKind.ENDPOINTS else Punch)(key, eps, relay_id)
    if off != len(body):
        raise WireError("trailing bytes in peer control body")
    return seq, msg
