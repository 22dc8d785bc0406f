"""The handshake protocols a peer may speak, behind one interface.

The engine (:mod:`phantom.control.engine`) runs the same state machine --
indexes, timers, retries, replay of timestamps, cookies under load -- for
every peer and asks the peer's protocol object (a
:class:`~phantom.protocols.handshake.Handshakes`) for the protocol-specific
parts: building and checking messages, its mac1/mac2 checker and cookie
generators, and the cipher its transport keys are for.

* :class:`PhantomHandshakes`   -- Phantom's Noise_IK over BLAKE2b with a client
  nonce (:mod:`phantom.protocols.phantom`), transport with the suite the
  handshake negotiates (AEGIS-256 or crypto_secretbox, :func:`default_suites`);
* :class:`WireGuardHandshakes` -- WireGuard v1, Noise_IKpsk2 over BLAKE2s
  (:mod:`phantom.protocols.wireguard`), transport with ChaCha20-Poly1305.

One object of each kind exists per engine (they hold our static key and our
own cookie checker); every :class:`~phantom.control.peer.Peer` points at the
one it speaks.  Which one a datagram is for is decided by
:func:`phantom.wire.demux.classify` (handshakes) or by the index it is
addressed to (cookie replies).
"""

from __future__ import annotations

from typing import Callable

from ..wire.demux import Protocol
from .phantom.protocol import PhantomHandshakes
from .phantom.suites import configured_suites, default_suites, peer_suites
from .wireguard.protocol import WireGuardHandshakes

Clock = Callable[[], float]

KINDS = {Protocol.PHANTOM: PhantomHandshakes, Protocol.WIREGUARD: WireGuardHandshakes}


def protocol_of(name) -> Protocol:
    """``"phantom"`` / ``"wireguard"`` (or a Protocol) as a Protocol; ValueError otherwise."""
    try:
        return Protocol(name)
    except ValueError:
        raise ValueError("unknown protocol %r (choose %s)"
                         % (name, " or ".join(p.value for p in Protocol))) from None


def build(private_key, public_key: bytes, clock: Clock, cookie_refresh_time: float,
          kinds=(Protocol.PHANTOM, Protocol.WIREGUARD), suites=None, native: bool = False) -> dict:
    """One object per protocol; ``suites``: Phantom's (None: default_suites());
    ``native``: Phantom's responder in C when built (PhantomHandshakes)."""
    out = {}
    for k in kinds:
        if k is Protocol.PHANTOM:
            out[k] = PhantomHandshakes(private_key, public_key, clock, cookie_refresh_time, suites,
                                       native=native)
        else:
            out[k] = KINDS[k](private_key, public_key, clock, cookie_refresh_time)
    return out


__all__ = ["PhantomHandshakes", "WireGuardHandshakes", "Protocol", "protocol_of", "build",
           "default_suites", "configured_suites", "peer_suites", "KINDS"]
