"""What both handshakes share: their error, the session keys they give the
engine, the small checks each step uses, and the base of the protocol
objects the engine dispatches to (:class:`Handshakes`).

Phantom's handshake (:mod:`phantom.protocols.phantom.handshake`) and
WireGuard's (:mod:`phantom.protocols.wireguard.handshake`) both end in a
:class:`SessionKeys` and fail with :class:`HandshakeError`, so the engine
(:mod:`phantom.control.engine`) handles either alike; neither protocol
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable, ClassVar

from .. import crypto, wire
from ..wire.ciphers import CipherKind
from ..wire.demux import Protocol

_U32_MAX = 2 ** 32 - 1


class HandshakeError(Exception):
    """Any failure of a handshake: authentication, length, key, or order."""


class HandshakeRefused(HandshakeError):
    """The responder answered with an authenticated refusal (Phantom, to an
    initiation that carried an attachment): ``reason`` is a wire.Refusal."""

    def __init__(self, reason):
        self.reason = wire.refusal_code(int(reason))
        super().__init__("refused: %s" % self.reason.sentence)


@dataclass
class SessionKeys:
    """Transport keys of one session, from this side's point of view.

    ``local_index`` is the index the peer puts in packets to us;
    ``remote_index`` is the one we put in packets to the peer.  ``suite`` is
    the transport suite a Phantom handshake negotiated; a WireGuard session
    leaves it at the default (its cipher is fixed: the protocol object's
    ``cipher_of`` decides, :mod:`phantom.protocols.registry`).
    """

    send_key: bytearray
    recv_key: bytearray
    local_index: int
    remote_index: int
    initiator: bool = False
    handshake_hash: bytes = b""
    suite: wire.Suite = wire.Suite.SECRETBOX

    def clear(self) -> None:
        """Zero both keys (sodium_memzero)."""
        crypto.memzero(self.send_key)
        crypto.memzero(self.recv_key)


def check_index(name: str, index: int) -> int:
    """``index`` when it is a u32 (a message's sender or receiver index)."""
    if not isinstance(index, int) or not 0 <= index <= _U32_MAX:
        raise HandshakeError("%s must be a u32" % name)
    return index


def dh(private, public) -> bytes:
    """X25519; a low-order public key is a HandshakeError."""
    try:
        return crypto.x25519(bytes(private), bytes(public))
    except crypto.CryptoError as exc:
        raise HandshakeError("invalid public key in handshake") from exc


def wipe(*buffers) -> None:
    """Zero every bytearray given (sodium_memzero); other values are left."""
    for b in buffers:
        if isinstance(b, bytearray):
            crypto.memzero(b)


class Handshakes:
    """One protocol as the engine sees it: the object a peer points at.

    The engine (:mod:`phantom.control.engine`) runs the same state machine
    for every peer -- indexes, timers, retries, replay of timestamps,
    cookies under load -- and asks the peer's protocol object for the
    protocol's own parts: building and checking messages, its mac1/mac2
    checker and cookie generators, and the cipher its transport keys are
    for.  One object per protocol exists per engine (it holds our static key
    and our own cookie checker); :mod:`phantom.protocols.registry` makes them.

    A protocol's subclass sets the class attributes and writes
    ``create_initiation(peer, index, timestamp)``,
    ``consume_initiation(data)`` and ``create_response(peer, info, index)``;
    what is the same for every protocol is here, and so are the answers of a
    protocol that negotiates nothing (WireGuard's cipher is fixed).
    """

    protocol: ClassVar[Protocol]          # wire.demux.Protocol
    cipher: ClassVar[CipherKind]          # the transport cipher (Phantom's: its baseline)
    wire: ClassVar[ModuleType]            # the wire module: Initiation, Response
    handshake: ClassVar[ModuleType]       # the handshake module: consume_response
    Checker: ClassVar[type]               # its cookie.CookieChecker
    Generator: ClassVar[type]             # its cookie.CookieGenerator

    def __init__(self, private_key, public_key: bytes, clock: Callable[[], float],
                 cookie_refresh_time: float) -> None:
        self._priv = private_key
        self._pub = bytes(public_key)
        self._clock = clock
        self._refresh = cookie_refresh_time
        self.checker = self.Checker(public_key, clock, cookie_refresh_time)

    def cookie_generator(self, remote_public: bytes):
        return self.Generator(remote_public, self._clock, self._refresh)

    def peer_added(self, remote_public: bytes) -> None:
        """A peer with this key was configured (what a protocol may prepare for it)."""

    def peer_removed(self, remote_public: bytes) -> None:
        """The peer with this key was removed (what was prepared for it goes)."""

    # message fields the engine needs before any cryptography
    def initiation_sender(self, data: bytes) -> int:
        return self.wire.Initiation.unpack(data).sender_index

    def response_indexes(self, data: bytes) -> tuple[int, int]:
        r = self.wire.Response.unpack(data)
        return r.sender_index, r.receiver_index

    def consume_response(self, state, data: bytes):
        return self.handshake.consume_response(state, data)

    # transport cipher: fixed unless a protocol negotiates one
    def note_initiation(self, peer, info) -> None:
        """An accepted initiation from ``peer`` (what it offered, if anything)."""

    def note_response(self, peer, state) -> None:
        """Our initiation ``state`` to ``peer`` was answered."""

    def session_suite(self, info, peer=None):
        """What an answer to ``info`` uses; None when we share no cipher."""
        return self.cipher

    def cipher_of(self, keys) -> CipherKind:
        return self.cipher
