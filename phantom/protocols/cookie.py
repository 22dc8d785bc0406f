"""Handshake flood defence: mac1, mac2, cookie replies and a rate limiter.

WireGuard's design (whitepaper section 5.4.4 and 5.4.7), with BLAKE2b in
place of BLAKE2s; sans-IO, every clock injected as a callable returning
monotonic seconds.

Every handshake message (initiation or response) ends with two 16-byte MACs:

* ``mac1 = BLAKE2b-128(key = BLAKE2b-256(LABEL_MAC1 || Spub_receiver),
  wire.mac1_region(msg))`` -- anyone who knows the receiver's public key can
  compute it, so a receiver can drop junk before any Diffie-Hellman.
* ``mac2 = BLAKE2b-128(key = cookie, wire.mac2_region(msg))`` or 16 zero
  bytes when the sender holds no fresh cookie.

A receiver under load answers a message whose mac2 is not valid with a
cookie reply instead of doing the handshake:

* ``cookie = BLAKE2b-128(key = R, source ip || source port)`` where ``R`` is
  a random secret replaced every ``cookie_refresh_time`` seconds;
* ``encrypted_cookie = XChaCha20-Poly1305(key = BLAKE2b-256(LABEL_COOKIE ||
  Spub_receiver), nonce = 24 random bytes, ad = mac1 of the message
  answered, plaintext = cookie)``.

Only the host that sent that very mac1 can use the reply, and only from the
address the cookie was made for; it then retries with a valid mac2, and the
receiver applies a per-source-IP :class:`RateLimiter` to those.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Callable

from .. import crypto, wire
from ..constants import DEFAULT_TUNABLES, LABEL_COOKIE, LABEL_MAC1

Clock = Callable[[], float]

MAC_SIZE = wire.MAC_SIZE
KEY_SIZE = 32
_ZERO_MAC = bytes(MAC_SIZE)
_MIN_MESSAGE = wire.HEADER.size + 2 * MAC_SIZE


# --- key derivation and the MAC ---------------------------------------------------
def mac1_key(static_public: bytes) -> bytes:
    """BLAKE2b-256(LABEL_MAC1 || static_public): the key for mac1 of messages to its owner."""
    return crypto.blake2b(LABEL_MAC1 + bytes(static_public), digest_size=KEY_SIZE)


def cookie_key(static_public: bytes) -> bytes:
    """BLAKE2b-256(LABEL_COOKIE || static_public): the key sealing cookie replies from its owner."""
    return crypto.blake2b(LABEL_COOKIE + bytes(static_public), digest_size=KEY_SIZE)


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2b with a 16-byte output."""
    return crypto.blake2b(data, digest_size=MAC_SIZE, key=key)


def address_bytes(src) -> bytes:
    """Source address as bytes: packed IP followed by the port as u16 big-endian.

    ``src`` is a socket address tuple ``(host, port[, flowinfo, scope_id])``
    or already bytes (returned unchanged).
    """
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    host, port = src[0], src[1]
    return ipaddress.ip_address(host).packed + int(port).to_bytes(2, "big")


def _ip_key(src) -> bytes:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    if isinstance(src, str):
        return ipaddress.ip_address(src).packed
    return ipaddress.ip_address(src[0]).packed


def _check_message(msg) -> bytes:
    msg = bytes(msg)
    if len(msg) < _MIN_MESSAGE:
        raise ValueError("message too short to carry mac1 and mac2")
    return msg


def _mac1_of(msg: bytes) -> bytes:
    return msg[len(msg) - 2 * MAC_SIZE: len(msg) - MAC_SIZE]


def _mac2_of(msg: bytes) -> bytes:
    return msg[len(msg) - MAC_SIZE:]


# --- receiving side ----------------------------------------------------------------
class CookieChecker:
    """Checks mac1/mac2 of messages sent to us and writes cookie replies.

    ``static_public`` is our own static public key.
    """

    def __init__(self, static_public: bytes, clock: Clock,
                 refresh_time: float = DEFAULT_TUNABLES.cookie_refresh_time) -> None:
        self._mac1_key = mac1_key(static_public)
        self._cookie_key = cookie_key(static_public)
        self._clock = clock
        self._refresh = refresh_time
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
        return mac(self._secret, address_bytes(src))

    def check_mac1(self, msg) -> bool:
        """True when mac1 of a handshake message to us is valid."""
        try:
            msg = _check_message(msg)
        except ValueError:
            return False
        return crypto.equal(mac(self._mac1_key, wire.mac1_region(msg)), _mac1_of(msg))

    def check_mac2(self, msg, src) -> bool:
        """True when mac2 is valid for a cookie we gave ``src`` under the current secret."""
        try:
            msg = _check_message(msg)
        except ValueError:
            return False
        if not self._secret_fresh(self._clock()):
            return False
        expected = mac(self._cookie(src), wire.mac2_region(msg))
        return crypto.equal(expected, _mac2_of(msg))

    def create_reply(self, msg, receiver_index: int, src) -> bytes:
        """A cookie reply to ``msg`` (from ``src``), addressed to ``receiver_index``.

        ``receiver_index`` is the sender index of the message being answered.
        The caller has checked mac1 first.
        """
        msg = _check_message(msg)
        self._rotate_if_stale(self._clock())
        nonce = crypto.random_bytes(wire.COOKIE_NONCE_SIZE)
        sealed = crypto.xaead_encrypt(self._cookie_key, nonce, _mac1_of(msg), self._cookie(src))
        return wire.CookieReply(receiver_index, nonce, sealed).pack()


# --- sending side ------------------------------------------------------------------
class CookieGenerator:
    """Adds mac1/mac2 to messages we send to one peer and takes its cookie replies.

    ``remote_static_public`` is the peer's static public key.
    """

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
        """Return ``msg`` with mac1, and mac2 when we hold a fresh cookie (else zeros)."""
        msg = _check_message(msg)
        mac1 = mac(self._mac1_key, wire.mac1_region(msg))
        msg = wire.with_macs(msg, mac1, _ZERO_MAC)
        if self.has_fresh_cookie:
            msg = wire.with_macs(msg, mac1, mac(self._cookie, wire.mac2_region(msg)))
        self._last_mac1 = mac1
        return msg

    def consume_reply(self, reply) -> bool:
        """Take a cookie reply to the last message we sent; False if not genuine.

        A reply is accepted at most once per message sent.
        """
        try:
            parsed = wire.CookieReply.unpack(bytes(reply))
        except wire.WireError:
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


# --- rate limiting and load ------------------------------------------------------------
class RateLimiter:
    """Token bucket per source IP with bounded memory.

    Each source IP may do ``burst`` handshakes at once, refilled at ``rate``
    per second.  An entry that has been idle long enough to be full again is
    forgotten (dropping it changes nothing), so memory follows the number of
    recently active sources, never more than ``max_entries``.  When the table
    is full of active sources, new sources are refused (fail closed).

    Keys are the IP only: ports cost an attacker nothing.
    """

    def __init__(self, rate: float = DEFAULT_TUNABLES.handshakes_per_second_per_source,
                 burst: int = DEFAULT_TUNABLES.handshake_burst_per_source,
                 clock: Clock | None = None, max_entries: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_entries < 1:
            raise ValueError("rate, burst and max_entries must be positive")
        if clock is None:
            raise ValueError("clock is required")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_entries = max_entries
        self._clock = clock
        self._idle_forget = self.burst / self.rate     # time for an empty bucket to fill
        # ip -> [tokens, last_seen]; ordered by last_seen (oldest first).
        self._entries: "OrderedDict[bytes, list]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _collect(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry[1] < self._idle_forget:
                break
            del entries[key]

    def allow(self, src) -> bool:
        """Take one token for ``src`` (IP string, socket address tuple or bytes)."""
        now = self._clock()
        self._collect(now)
        key = _ip_key(src)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_entries:
                return False
            self._entries[key] = [self.burst - 1.0, now]
            return True
        elapsed = max(0.0, now - entry[1])
        entry[0] = min(self.burst, entry[0] + elapsed * self.rate)
        entry[1] = now
        self._entries.move_to_end(key)
        if entry[0] >= 1.0:
            entry[0] -= 1.0
            return True
        return False

    def clear(self) -> None:
        self._entries.clear()


class LoadDetector:
    """Decides when we are 'under load': demand cookies above a handshake rate.

    Call :meth:`record` for each handshake message received; :attr:`under_load`
    is true while more than ``threshold`` arrived within the current
    one-second window, and for ``hold`` seconds after.
    """

    def __init__(self, threshold: int = DEFAULT_TUNABLES.under_load_initiations,
                 clock: Clock | None = None, hold: float = 1.0) -> None:
        if clock is None:
            raise ValueError("clock is required")
        self.threshold = threshold
        self.hold = hold
        self._clock = clock
        self._window_start = clock()
        self._count = 0
        self._until = float("-inf")

    def record(self) -> bool:
        """Count one handshake message; return whether we are now under load."""
        now = self._clock()
        if now - self._window_start >= 1.0 or now < self._window_start:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self.threshold:
            self._until = now + self.hold
        return now < self._until

    @property
    def under_load(self) -> bool:
        return self._clock() < self._until
