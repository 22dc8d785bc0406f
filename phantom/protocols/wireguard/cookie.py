"""WireGuard's mac1, mac2 and cookie replies (whitepaper 5.4.4 and 5.4.7), sans-IO.

    mac1   = MAC(HASH(LABEL_MAC1 || Spub_m'), msg_alpha)
    mac2   = MAC(cookie, msg_beta), or 16 zero bytes without a fresh cookie
    cookie = MAC(R_m, A_m')          R_m: random, replaced every 120 s;
                                     A_m': source IP || source port
    reply  = XAEAD(HASH(LABEL_COOKIE || Spub_m), nonce[24], cookie, mac1 of the message)

MAC and HASH are BLAKE2s (:mod:`.symmetric`); XAEAD is libsodium's
XChaCha20-Poly1305.  The classes have the interface of the Phantom ones
(:mod:`phantom.control.cookie`), so the engine drives both alike; the rate
limiter and load detector are shared as they are protocol-independent.
"""

from __future__ import annotations

from typing import Callable

from ... import crypto
from ...constants import DEFAULT_TUNABLES
from ...wire import wireguard as wgw
from ..cookie import LoadDetector, RateLimiter, address_bytes  # noqa: F401  (re-exported)
from .symmetric import HASH, LABEL_COOKIE, LABEL_MAC1, MAC

Clock = Callable[[], float]
MAC_SIZE = wgw.MAC_SIZE
_ZERO_MAC = bytes(MAC_SIZE)
_MIN_MESSAGE = 4 + 2 * MAC_SIZE


def mac1_key(static_public: bytes) -> bytes:
    return HASH(LABEL_MAC1, static_public)


def cookie_key(static_public: bytes) -> bytes:
    return HASH(LABEL_COOKIE, static_public)


def _check(msg) -> bytes:
    msg = bytes(msg)
    if len(msg) < _MIN_MESSAGE:
        raise ValueError("message too short to carry mac1 and mac2")
    return msg


class WgCookieChecker:
    """Checks mac1/mac2 of WireGuard messages to us and writes cookie replies."""

    def __init__(self, static_public: bytes, clock: Clock,
                 refresh_time: float = DEFAULT_TUNABLES.cookie_refresh_time) -> None:
        self._mac1_key = mac1_key(static_public)
        self._cookie_key = cookie_key(static_public)
        self._clock = clock
        self._refresh = refresh_time
        self._secret: bytearray | None = None
        self._secret_set = 0.0

    def _fresh(self, now: float) -> bool:
        return self._secret is not None and now - self._secret_set < self._refresh

    def _rotate_if_stale(self, now: float) -> None:
        if not self._fresh(now):
            if self._secret is not None:
                crypto.memzero(self._secret)
            self._secret = bytearray(crypto.random_bytes(32))
            self._secret_set = now

    def _cookie(self, src) -> bytes:
        return MAC(self._secret, address_bytes(src))

    def check_mac1(self, msg) -> bool:
        try:
            msg = _check(msg)
        except ValueError:
            return False
        return crypto.equal(MAC(self._mac1_key, wgw.mac1_region(msg)), wgw.mac1_of(msg))

    def check_mac2(self, msg, src) -> bool:
        try:
            msg = _check(msg)
        except ValueError:
            return False
        if not self._fresh(self._clock()):
            return False
        return crypto.equal(MAC(self._cookie(src), wgw.mac2_region(msg)), wgw.mac2_of(msg))

    def create_reply(self, msg, receiver_index: int, src) -> bytes:
        """A 64-byte cookie reply to ``msg`` from ``src`` (mac1 already checked)."""
        msg = _check(msg)
        self._rotate_if_stale(self._clock())
        nonce = crypto.random_bytes(wgw.COOKIE_NONCE_SIZE)
        sealed = crypto.xaead_encrypt(self._cookie_key, nonce, wgw.mac1_of(msg), self._cookie(src))
        return wgw.CookieReply(receiver_index, nonce, sealed).pack()


class WgCookieGenerator:
    """Adds mac1/mac2 to WireGuard messages to one peer and takes its cookie replies."""

    def __init__(self, remote_static_public: bytes, clock: Clock,
                 refresh_time: float = DEFAULT_TUNABLES.cookie_refresh_time) -> None:
        self._mac1_key = mac1_key(remote_static_public)
        self._cookie_key = cookie_key(remote_static_public)
        self._clock = clock
        self._refresh = refresh_time
        self._cookie: bytearray | None = None
        self._cookie_set = 0.0
        self._last_mac1: bytes | None = None

    @property
    def has_fresh_cookie(self) -> bool:
        return self._cookie is not None and self._clock() - self._cookie_set < self._refresh

    def add_macs(self, msg) -> bytes:
        msg = _check(msg)
        mac1 = MAC(self._mac1_key, wgw.mac1_region(msg))
        msg = wgw.with_macs(msg, mac1, _ZERO_MAC)
        if self.has_fresh_cookie:
            msg = wgw.with_macs(msg, mac1, MAC(self._cookie, wgw.mac2_region(msg)))
        self._last_mac1 = mac1
        return msg

    def consume_reply(self, reply) -> bool:
        """Take a cookie reply to the last message we sent; False if not genuine."""
        try:
            parsed = wgw.CookieReply.unpack(bytes(reply))
        except wgw.WireError:
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
