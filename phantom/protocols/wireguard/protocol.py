"""WireGuard v1 as the engine sees it (:class:`WireGuardHandshakes`):
Noise_IKpsk2 over BLAKE2s (:mod:`.handshake`, :mod:`.cookie`), transport
with ChaCha20-Poly1305, nothing to negotiate."""

from __future__ import annotations

from ...wire import wireguard as wgw
from ...wire.ciphers import CipherKind
from ...wire.demux import Protocol
from ..handshake import Handshakes
from . import handshake
from .cookie import WgCookieChecker, WgCookieGenerator


class WireGuardHandshakes(Handshakes):
    protocol = Protocol.WIREGUARD
    cipher = CipherKind.CHACHA20POLY1305
    wire = wgw
    handshake = handshake
    Checker = WgCookieChecker
    Generator = WgCookieGenerator

    def create_initiation(self, peer, index: int, timestamp: bytes):
        return handshake.create_initiation(self._priv, peer.public_key, index, timestamp,
                                           peer.preshared_key, peer.cookies)

    def consume_initiation(self, data: bytes):
        return handshake.consume_initiation(self._priv, data, local_static_pub=self._pub)

    def create_response(self, peer, info, index: int):
        return handshake.create_response(info.state, index, peer.preshared_key, peer.cookies)
