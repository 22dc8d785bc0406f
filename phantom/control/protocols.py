"""The handshake protocols a peer may speak, behind one interface.

The engine (:mod:`phantom.control.engine`) runs the same state machine --
indexes, timers, retries, replay of timestamps, cookies under load -- for
every peer and asks the peer's protocol object for the protocol-specific
parts: building and checking messages, its mac1/mac2 checker and cookie
generators, and the cipher its transport keys are for.

* :class:`PhantomHandshakes`   -- Phantom's Noise_IK over BLAKE2b with a client
  nonce (:mod:`phantom.control.handshake`, :mod:`phantom.control.cookie`),
  transport with crypto_secretbox;
* :class:`WireGuardHandshakes` -- WireGuard v1, Noise_IKpsk2 over BLAKE2s
  (:mod:`phantom.control.wireguard`), transport with ChaCha20-Poly1305.

One object of each kind exists per engine (they hold our static key and our
own cookie checker); every :class:`~phantom.control.peer.Peer` points at the
one it speaks.  Which one a datagram is for is decided by
:func:`phantom.wire.demux.classify` (handshakes) or by the index it is
addressed to (cookie replies).
"""

from __future__ import annotations

from typing import Callable

from .. import crypto
from .. import wire as phw
from ..dataplane.ciphers import CipherKind
from ..wire import wireguard as wgw
from ..wire.demux import Protocol
from . import handshake as phs
from .cookie import CookieChecker, CookieGenerator
from .wireguard import handshake as wgh
from .wireguard.cookie import WgCookieChecker, WgCookieGenerator

Clock = Callable[[], float]


class PhantomHandshakes:
    protocol = Protocol.PHANTOM
    cipher = CipherKind.SECRETBOX

    def __init__(self, private_key, public_key: bytes, clock: Clock, cookie_refresh_time: float):
        self._priv = private_key
        self._pub = bytes(public_key)
        self._clock = clock
        self._refresh = cookie_refresh_time
        self.checker = CookieChecker(public_key, clock, cookie_refresh_time)

    def cookie_generator(self, remote_public: bytes):
        return CookieGenerator(remote_public, self._clock, self._refresh)

    # message fields the engine needs before any cryptography
    def initiation_sender(self, data: bytes) -> int:
        return phw.Initiation.unpack(data).sender_index

    def response_indexes(self, data: bytes) -> tuple[int, int]:
        r = phw.Response.unpack(data)
        return r.sender_index, r.receiver_index

    def create_initiation(self, peer, index: int, timestamp: bytes):
        return phs.create_initiation(self._priv, peer.public_key, index, timestamp,
                                     crypto.random_bytes(phw.CLIENT_NONCE_SIZE), peer.cookies)

    def consume_initiation(self, data: bytes):
        # our cached public key: one X25519 fewer per initiation (issue #15)
        return phs.consume_initiation(self._priv, data, local_static_public=self._pub)

    def create_response(self, peer, info, index: int):
        return phs.create_response(info.state, index, peer.cookies)

    def consume_response(self, state, data: bytes):
        return phs.consume_response(state, data)


class WireGuardHandshakes:
    protocol = Protocol.WIREGUARD
    cipher = CipherKind.CHACHA20POLY1305

    def __init__(self, private_key, public_key: bytes, clock: Clock, cookie_refresh_time: float):
        self._priv = private_key
        self._pub = bytes(public_key)
        self._clock = clock
        self._refresh = cookie_refresh_time
        self.checker = WgCookieChecker(public_key, clock, cookie_refresh_time)

    def cookie_generator(self, remote_public: bytes):
        return WgCookieGenerator(remote_public, self._clock, self._refresh)

    def initiation_sender(self, data: bytes) -> int:
        return wgw.Initiation.unpack(data).sender_index

    def response_indexes(self, data: bytes) -> tuple[int, int]:
        r = wgw.Response.unpack(data)
        return r.sender_index, r.receiver_index

    def create_initiation(self, peer, index: int, timestamp: bytes):
        return wgh.create_initiation(self._priv, peer.public_key, index, timestamp,
                                     peer.preshared_key, peer.cookies)

    def consume_initiation(self, data: bytes):
        return wgh.consume_initiation(self._priv, data, local_static_pub=self._pub)

    def create_response(self, peer, info, index: int):
        return wgh.create_response(info.state, index, peer.preshared_key, peer.cookies)

    def consume_response(self, state, data: bytes):
        return wgh.consume_response(state, data)


KINDS = {Protocol.PHANTOM: PhantomHandshakes, Protocol.WIREGUARD: WireGuardHandshakes}


def protocol_of(name) -> Protocol:
    """``"phantom"`` / ``"wireguard"`` (or a Protocol) as a Protocol; ValueError otherwise."""
    try:
        return Protocol(name)
    except ValueError:
        raise ValueError("unknown protocol %r (choose %s)"
                         % (name, " or ".join(p.value for p in Protocol))) from None


def build(private_key, public_key: bytes, clock: Clock, cookie_refresh_time: float,
          kinds=(Protocol.PHANTOM, Protocol.WIREGUARD)) -> dict:
    return {k: KINDS[k](private_key, public_key, clock, cookie_refresh_time) for k in kinds}


__all__ = ["PhantomHandshakes", "WireGuardHandshakes", "Protocol", "protocol_of", "build"]
