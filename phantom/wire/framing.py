"""The framing Phantom's and WireGuard's messages share, checked in one place.

Every datagram on the shared UDP port starts with a one-byte message type
and three reserved bytes, which must be zero; the fields after them are
little-endian::

    type u8 | reserved[3] = 0 | fields ...

The two protocols number their messages alike: 1 handshake initiation,
2 handshake response, 3 cookie reply, 4 transport data; 5 (peer control)
and 6 (relay) are Phantom's alone (:mod:`phantom.wire.phantom`).  Two
layouts are the same byte for byte in both: the cookie reply
(:class:`CookieReply`, 64 bytes) and the transport header (16 bytes).
Handshake messages (types 1 and 2) end in two 16-byte MACs: ``mac1`` covers
everything before it, ``mac2`` everything before *it*, mac1 included
(WireGuard's msg_alpha and msg_beta); :func:`mac1_region` and the helpers
after it cut them for both protocols' cookie code
(:mod:`phantom.protocols.cookie`).

One rule for both protocols: a datagram whose reserved bytes are not zero
is no message of either, wherever it is parsed -- by :func:`header` (what
``message_type`` and the demultiplexer call) or by a message class's
``unpack`` (:meth:`Message.unpack`).  (Until issue 19 Phantom's ``unpack``
did not look at them; every Phantom since the prototype writes zeros there,
``struct`` format ``<B3x``, so no Phantom message is refused for it.)

A message layout is a frozen dataclass over :class:`Message`: its class
attributes say the type, the struct of its fixed head, the sizes it may
have and whether it ends in the two MACs; its fields, in wire order, are the
head's fields after the type, then (if the layout has one) the field that
fills the rest up to the MACs, then ``mac1`` and ``mac2``.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import ClassVar, Collection, Mapping

__all__ = [
    "MessageType", "WireError", "HEADER", "HEADER_SIZE", "MAC_SIZE", "AEAD_TAG_SIZE", "COOKIE_SIZE",
    "COOKIE_NONCE_SIZE", "COOKIE_REPLY", "COOKIE_REPLY_SIZE", "TRANSPORT_HEADER", "TRANSPORT_HEADER_SIZE",
    "Sizes", "sizes_text", "Message", "CookieReply", "header", "check", "expect", "mac1_region",
    "mac2_region", "mac1_of", "mac2_of", "with_macs", "pack_transport_header", "unpack_transport_header",
]


class MessageType(enum.IntEnum):
    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4
    PEER_CONTROL = 5     # Phantom only
    RELAY = 6            # Phantom only
    RELAY_AEGIS = 7      # Phantom only: a relay frame on an aegis256 hop session


class WireError(ValueError):
    """A datagram that is not a well-formed message (of the protocol asked about)."""


HEADER = struct.Struct("<B3x")
HEADER_SIZE = HEADER.size                    # 4
MAC_SIZE = 16            # mac1, mac2, a cookie
AEAD_TAG_SIZE = 16       # Poly1305
COOKIE_SIZE = MAC_SIZE
COOKIE_NONCE_SIZE = 24   # XChaCha20-Poly1305 nonce of a cookie reply
COOKIE_REPLY = struct.Struct("<B3xI%ds%ds" % (COOKIE_NONCE_SIZE, COOKIE_SIZE + AEAD_TAG_SIZE))
COOKIE_REPLY_SIZE = COOKIE_REPLY.size        # 64
TRANSPORT_HEADER = struct.Struct("<B3xIQ")   # type, receiver index, counter
TRANSPORT_HEADER_SIZE = TRANSPORT_HEADER.size  # 16
_MACS = 2 * MAC_SIZE


class Sizes:
    """The sizes a message may have: some exact ones and inclusive ranges
    (``Sizes((164, 166), ((169, 1192),))``); ``n in sizes`` and ``str()``
    (for errors) like a tuple of sizes, without listing a range's members."""

    __slots__ = ("exact", "ranges")

    def __init__(self, exact=(), ranges=()):
        self.exact = tuple(int(x) for x in exact)
        self.ranges = tuple((int(lo), int(hi)) for lo, hi in ranges)

    def __contains__(self, n) -> bool:
        return n in self.exact or any(lo <= n <= hi for lo, hi in self.ranges)

    def __iter__(self):
        yield from self.exact
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)

    @property
    def least(self) -> int:
        return min(self.exact + tuple(lo for lo, _ in self.ranges))

    @property
    def most(self) -> int:
        return max(self.exact + tuple(hi for _, hi in self.ranges))

    def __str__(self) -> str:
        parts = [str(x) for x in self.exact] + ["%d..%d" % r for r in self.ranges]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]

    def __repr__(self) -> str:
        return "Sizes(%r, %r)" % (self.exact, self.ranges)


def sizes_text(sizes) -> str:
    """``sizes`` (a :class:`Sizes` or a tuple of sizes) as words for an error."""
    return str(sizes) if isinstance(sizes, Sizes) else " or ".join(str(x) for x in sizes)


def _name(mtype: MessageType) -> str:
    return mtype.name.lower().replace("_", " ")


def header(datagram) -> MessageType:
    """The message type of ``datagram`` after checking its header: at least
    four bytes, reserved bytes zero, a known type; else WireError."""
    if len(datagram) < HEADER_SIZE:
        raise WireError("truncated header")
    if datagram[1] or datagram[2] or datagram[3]:
        raise WireError("reserved bytes not zero")
    try:
        return MessageType(datagram[0])
    except ValueError:
        raise WireError("unknown message type %d" % datagram[0]) from None


def check(datagram, sizes: Mapping, bounds: Mapping, protocol: str = "") -> MessageType:
    """One protocol's ``message_type``: :func:`header`, then its type's size
    rule -- one of ``sizes[type]`` exactly (handshakes and cookie replies) or
    within ``bounds[type] = (least, most)`` (transport data, peer control,
    relay frames).  A type in neither is not one of this protocol's."""
    mtype = header(datagram)
    n = len(datagram)
    bound = bounds.get(mtype)
    if bound is not None:
        if n < bound[0]:
            raise WireError("truncated %s message" % _name(mtype))
        if n > bound[1]:
            raise WireError("oversized %s message" % _name(mtype))
        return mtype
    allowed = sizes.get(mtype)
    if allowed is None:
        raise WireError("%s%s is not a message of this protocol" % (protocol, _name(mtype)))
    if n not in allowed:
        raise WireError("%s%s of %d bytes, expected %s" % (protocol, mtype.name.lower(), n,
                                                           sizes_text(allowed)))
    return mtype


def expect(data, mtype: MessageType, sizes: Collection[int], what: str) -> bytes:
    """``data`` as bytes when it is a ``mtype`` message of one of ``sizes``
    with zero reserved bytes; else WireError("not a <what>")."""
    if len(data) not in sizes or data[0] != mtype or data[1] or data[2] or data[3]:
        raise WireError("not a %s" % what)
    return bytes(data)


class Message:
    """A message layout (see the module's docstring); subclasses are frozen
    dataclasses and set the class attributes below."""

    MTYPE: ClassVar[MessageType]
    HEAD: ClassVar[struct.Struct]          # the type, reserved bytes and the fixed fields after them
    SIZES: ClassVar[tuple]                 # the sizes the whole message may have
    MACS: ClassVar[bool] = False           # ends in mac1 | mac2
    WHAT: ClassVar[str]                    # its name in errors: "not a <WHAT>"
    _HEAD_FIELDS: ClassVar[int] = 0

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        cls._HEAD_FIELDS = len(cls.HEAD.unpack(bytes(cls.HEAD.size))) - 1

    def pack(self) -> bytes:
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        k = self._HEAD_FIELDS
        out = b"".join([self.HEAD.pack(self.MTYPE, *values[:k]), *(bytes(v) for v in values[k:])])
        if len(out) not in self.SIZES:
            raise WireError("%s of %d bytes, expected %s" % (self.WHAT, len(out), sizes_text(self.SIZES)))
        return out

    @classmethod
    def unpack(cls, data):
        data = expect(data, cls.MTYPE, cls.SIZES, cls.WHAT)
        values = list(cls.HEAD.unpack_from(data)[1:])
        end = len(data) - (_MACS if cls.MACS else 0)
        if len(dataclasses.fields(cls)) > cls._HEAD_FIELDS + (2 if cls.MACS else 0):
            values.append(data[cls.HEAD.size:end])         # the field that fills the rest
        if cls.MACS:
            values += [data[end:end + MAC_SIZE], data[end + MAC_SIZE:]]
        return cls(*values)


@dataclasses.dataclass(frozen=True)
class CookieReply(Message):
    """Type 3, the same in both protocols: receiver u32 | nonce[24] | cookie[16+16]."""

    MTYPE = MessageType.COOKIE_REPLY
    HEAD = COOKIE_REPLY
    SIZES = (COOKIE_REPLY_SIZE,)
    WHAT = "cookie reply"

    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes


# --- the two MACs that end a handshake message ---------------------------------------
def mac1_region(message) -> bytes:
    """The bytes mac1 covers (msg_alpha): everything before it."""
    return bytes(message[: len(message) - _MACS])


def mac2_region(message) -> bytes:
    """The bytes mac2 covers (msg_beta): everything before it, mac1 included."""
    return bytes(message[: len(message) - MAC_SIZE])


def mac1_of(message) -> bytes:
    return bytes(message[len(message) - _MACS: len(message) - MAC_SIZE])


def mac2_of(message) -> bytes:
    return bytes(message[len(message) - MAC_SIZE:])


def with_macs(message, mac1: bytes, mac2: bytes) -> bytes:
    """``message`` with its last 32 bytes replaced by ``mac1 | mac2``."""
    return bytes(message[: len(message) - _MACS]) + bytes(mac1) + bytes(mac2)


# --- the transport header, the same in both protocols ----------------------------------
def pack_transport_header(receiver_index: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(MessageType.TRANSPORT, receiver_index, counter)


def unpack_transport_header(datagram) -> tuple[int, int]:
    """(receiver_index, counter) of a transport message (its framing already checked)."""
    _, idx, ctr = TRANSPORT_HEADER.unpack_from(datagram, 0)
    return idx, ctr
