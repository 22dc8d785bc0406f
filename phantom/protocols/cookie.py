"""Handshake flood defence: mac1, mac2 and cookie replies, one mechanism for
both protocols (WireGuard's design, whitepaper sections 5.4.4 and 5.4.7),
sans-IO, every clock injected as a callable returning monotonic seconds.

Every handshake message (initiation or response) ends with two 16-byte MACs
(:mod:`phantom.wire.framing` cuts the regions they cover):

* ``mac1 = MAC(key = mac1_key(Spub_receiver), mac1_region(msg))`` -- anyone
  who knows the receiver's public key can compute it, so a receiver can drop
  junk before any Diffie-Hellman;
* ``mac2 = MAC(key = cookie, mac2_region(msg))``, or 16 zero bytes when the
  sender holds no fresh cookie.

A receiver under load answers a message whose mac2 is not valid with a
cookie reply instead of doing the handshake:

* ``cookie = MAC(key = R, source ip || source port)`` where ``R`` is a
  random secret replaced every ``cookie_refresh_time`` seconds;
* ``encrypted_cookie = XChaCha20-Poly1305(key = cookie_key(Spub_receiver),
  nonce = 24 random bytes, ad = mac1 of the message answered, plaintext =
  cookie)``.

Only the host that sent that very mac1 can use the reply, and only from the
address the cookie was made for; it then retries with a valid mac2, and the
receiver applies a per-source-IP rate limiter to those
(:mod:`phantom.protocols.limits`).

What differs between the protocols is the hash (:class:`MacSuite`): Phantom's
MACs are BLAKE2b (:mod:`phantom.protocols.phantom.cookie`), WireGuard's
BLAKE2s (:mod:`phantom.protocols.wireguard.cookie`).  Each protocol binds
:class:`CookieChecker` and :class:`CookieGenerator` to its suite (the ``macs``
class attribute); the cookie reply is the same 64 bytes in both
(:class:`phantom.wire.framing.CookieReply`), and the engine drives both alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from .. import crypto
from ..constants import DEFAULT_TUNABLES
from ..wire import framing
from .limits import packed_ip

Clock = Callable[[], float]

MAC_SIZE = framing.MAC_SIZE
KEY_SIZE = 32
_ZERO_MAC = bytes(MAC_SIZE)
_MIN_MESSAGE = framing.HEADER_SIZE + 2 * MAC_SIZE


@dataclass(frozen=True)
class MacSuite:
    """The hash functions one protocol's MACs are made with, and its labels:
    both protocols key mac1 and the cookie reply alike, HASH(label || static
    public key)."""

    name: str
    hash: Callable[[bytes], bytes]           # 32-byte hash: hash(data)
    mac: Callable[[bytes, bytes], bytes]     # keyed hash, 16 bytes: mac(key, data)
    label_mac1: bytes
    label_cookie: bytes

    def mac1_key(self, static_public: bytes) -> bytes:
        """HASH(LABEL_MAC1 || static_public): the key for mac1 of messages to its owner."""
        return self.hash(self.label_mac1 + bytes(static_public))

    def cookie_key(self, static_public: bytes) -> bytes:
        """HASH(LABEL_COOKIE || static_public): the key sealing cookie replies from its owner."""
        return self.hash(self.label_cookie + bytes(static_public))


def address_bytes(src) -> bytes:
    """Source address as bytes: packed IP followed by the port as u16 big-endian.

    ``src`` is a socket address tuple ``(host, port[, flowinfo, scope_id])``
    or already bytes (returned unchanged).
    """
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    host, port = src[0], src[1]
    return packed_ip(host) + int(port).to_bytes(2, "big")


def _check_message(msg) -> bytes:
    msg = bytes(msg)
    if len(msg) < _MIN_MESSAGE:
        raise ValueError("message too short to carry mac1 and mac2")
    return msg


class _Keyed:
    """The keys of one static public key and the cookie lifetime."""

    macs: ClassVar[MacSuite]       # the protocol's hash functions

    def __init__(self, static_public: bytes, clock: Clock,
                 refresh_time: float = DEFAULT_TUNABLES.cookie_refresh_time) -> None:
        self._mac1_key = self.macs.mac1_key(static_public)
        self._cookie_key = self.macs.cookie_key(static_public)
        self._clock = clock
        self._refresh = refresh_time


# --- receiving side ----------------------------------------------------------------
class CookieChecker(_Keyed):
    """Checks mac1/mac2 of messages sent to us and writes cookie replies.

    ``static_public`` is our own static public key.
    """

    def __init__(self, static_public: bytes, clock: Clock,
                 refresh_time: float = DEFAULT_TUNABLES.cookie_refresh_time) -> None:
        super().__init__(static_public, clock, refresh_time)
        self._secret: bytearray | None = None
        self._secret_set = 0.0

    def _secret_fresh(self, now: float) -> bool:
        return self._secret is not None and now - self._secret_set < self._refresh

    def _rotate_if_stale(self, now: float) -> None:
        if not self._secret_fresh(now):
            if self._secret is not None:
                crypto.memzero(self._secret)
            self._secret = bytearray(crypto.random_bytes(KEY_SIZE))
            self._secret_set = now

    def _cookie(self, src) -> bytes:
        return self.macs.mac(self._secret, address_bytes(src))

    def check_mac1(self, msg) -> bool:
        """True when mac1 of a handshake message to us is valid."""
        try:
            msg = _check_message(msg)
        except ValueError:
            return False
        return crypto.equal(self.macs.mac(self._mac1_key, framing.mac1_region(msg)), framing.mac1_of(msg))

    def check_mac2(self, msg, src) -> bool:
        """True when mac2 is valid for a cookie we gave ``src`` under the current secret."""
        try:
            msg = _check_message(msg)
        except ValueError:
            return False
        if not self._secret_fresh(self._clock()):
            return False
        expected = self.macs.mac(self._cookie(src), framing.mac2_region(msg))
        return crypto.equal(expected, framing.mac2_of(msg))

    def create_reply(self, msg, receiver_index: int, src) -> bytes:
        """A cookie reply to ``msg`` (from ``src``), addressed to ``receiver_index``.

        ``receiver_index`` is the sender index of the message being answered.
        The caller has checked mac1 first.
        """
        msg = _check_message(msg)
        self._rotate_if_stale(self._clock())
        nonce = crypto.random_bytes(framing.COOKIE_NONCE_SIZE)
        sealed = crypto.xaead_encrypt(self._cookie_key, nonce, framing.mac1_of(msg), self._cookie(src))
        return framing.CookieReply(receiver_index, nonce, sealed).pack()


# --- sending side ------------------------------------------------------------------
class CookieGenerator(_Keyed):
    """Adds mac1/mac2 to messages we send to one peer and takes its cookie replies.

    ``remote_static_public`` is the peer's static public key.
    """

    def __init__(self, remote_static_public: bytes, clock: Clock,
                 refresh_time: float = DEFAULT_TUNABLES.cookie_refresh_time) -> None:
        super().__init__(remote_static_public, clock, refresh_time)
        self._cookie: bytearray | None = None
        self._cookie_set = 0.0
        self._last_mac1: bytes | None = None

    @property
    def has_fresh_cookie(self) -> bool:
        return self._cookie is not None and self._clock() - self._cookie_set < self._refresh

    def add_macs(self, msg) -> bytes:
        """Return ``msg`` with mac1, and mac2 when we hold a fresh cookie (else zeros)."""
        msg = _check_message(msg)
        mac = self.macs.mac
        mac1 = mac(self._mac1_key, framing.mac1_region(msg))
        msg = framing.with_macs(msg, mac1, _ZERO_MAC)
        if self.has_fresh_cookie:
            msg = framing.with_macs(msg, mac1, mac(self._cookie, framing.mac2_region(msg)))
        self._last_mac1 = mac1
        return msg

    def consume_reply(self, reply) -> bool:
        """Take a cookie reply to the last message we sent; False if not genuine.

        A reply is accepted at most once per message sent.
        """
        try:
            parsed = framing.CookieReply.unpack(bytes(reply))
        except framing.WireError:
            return False
        if self._last_mac1 is None:
            return False
        try:
            cookie = crypto.xaead_decrypt(self._cookie_key, parsed.nonce, self._last_mac1,
                                          parsed.encrypted_cookie)
        except crypto.CryptoError:
            return False
        if self._cookie is not None:
            crypto.memzero(self._cookie)
        self._cookie = bytearray(cookie)
        self._cookie_set = self._clock()
        self._last_mac1 = None
        return True
