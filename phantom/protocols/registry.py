"""The handshake protocols a peer may speak, behind one interface.

The engine (:mod:`phantom.control.engine`) runs the same state machine --
indexes, timers, retries, replay of timestamps, cookies under load -- for
every peer and asks the peer's protocol object for the protocol-specific
parts: building and checking messages, its mac1/mac2 checker and cookie
generators, and the cipher its transport keys are for.

* :class:`PhantomHandshakes`   -- Phantom's Noise_IK over BLAKE2b with a client
  nonce (:mod:`phantom.control.handshake`, :mod:`phantom.control.cookie`),
  transport with the suite the handshake negotiates (AEGIS-256 or
  crypto_secretbox, :func:`default_suites`);
* :class:`WireGuardHandshakes` -- WireGuard v1, Noise_IKpsk2 over BLAKE2s
  (:mod:`phantom.control.wireguard`), transport with ChaCha20-Poly1305.

One object of each kind exists per engine (they hold our static key and our
own cookie checker); every :class:`~phantom.control.peer.Peer` points at the
one it speaks.  Which one a datagram is for is decided by
:func:`phantom.wire.demux.classify` (handshakes) or by the index it is
addressed to (cookie replies).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional

from .. import crypto
from .. import wire as phw
from ..dataplane.ciphers import SUITE_CIPHER, CipherKind
from ..wire import wireguard as wgw
from ..wire.demux import Protocol
from .phantom import handshake as phs
from .cookie import CookieChecker, CookieGenerator
from .wireguard import handshake as wgh
from .wireguard.cookie import WgCookieChecker, WgCookieGenerator

Clock = Callable[[], float]
log = logging.getLogger("phantom.control")


def default_suites() -> tuple:
    """The suites a Phantom offers when ``[interface] ciphers`` is not set:
    AEGIS-256 when libsodium has it and runs it on AES hardware
    (:func:`phantom.crypto.aes_hardware`: AES-NI + AVX, or ARM's crypto
    extensions, libsodium's runtime checks), and always secretbox."""
    if crypto.aegis256_available() and crypto.aes_hardware():
        return (phw.Suite.AEGIS256, phw.Suite.SECRETBOX)
    return (phw.Suite.SECRETBOX,)


def configured_suites(names: Optional[Iterable[str]]) -> tuple:
    """``[interface] ciphers`` (names, already checked by the config parser) as
    suites, best first; None: :func:`default_suites`.  ValueError when a
    listed suite cannot run here (aegis256 with a libsodium before 1.0.19)."""
    if names is None:
        return default_suites()
    suites = sorted({phw.SUITE_NAMES[n] for n in names}, key=phw.SUITE_PREFERENCE.index)
    if not suites:
        raise ValueError("no cipher suite left")
    if phw.Suite.AEGIS256 in suites:
        if not crypto.aegis256_available():
            raise ValueError("aegis256 needs libsodium 1.0.19 or later (crypto_aead_aegis256)")
        if not crypto.aes_hardware():
            log.warning("ciphers: aegis256 is listed but this CPU has no AES instructions libsodium "
                        "uses (AES-NI + AVX, ARM crypto): it runs in software, slower than secretbox")
    return tuple(suites)


def peer_suites(names: Optional[Iterable[str]]) -> Optional[tuple]:
    """A [[peer]]'s own ``ciphers`` as suites; None (use the interface's) when unset."""
    return None if names is None else configured_suites(names)


class PhantomHandshakes:
    protocol = Protocol.PHANTOM
    cipher = CipherKind.SECRETBOX            # the baseline; a session's own is cipher_of(keys)

    def __init__(self, private_key, public_key: bytes, clock: Clock, cookie_refresh_time: float,
                 suites: Optional[Iterable] = None):
        self._priv = private_key
        self._pub = bytes(public_key)
        self._clock = clock
        self._refresh = cookie_refresh_time
        self.checker = CookieChecker(public_key, clock, cookie_refresh_time)
        self.set_suites(default_suites() if suites is None else suites)

    def set_suites(self, suites: Iterable) -> None:
        """What we offer and accept, best first (wire.Suite values)."""
        suites = tuple(sorted({phw.Suite(s) for s in suites}, key=phw.SUITE_PREFERENCE.index))
        if not suites:
            raise ValueError("at least one cipher suite")
        self.suites = suites

    @property
    def suite_names(self) -> list:
        return [phw.suite_name(s) for s in self.suites]

    def offer_for(self, peer) -> Optional[tuple]:
        """The suites our initiation to ``peer`` offers, or None for the
        prototype's initiation without an offer (which a peer that predates
        suites can read; it drops an initiation with an offer):

        * when we speak secretbox only: nothing to negotiate;
        * every second initiation (retries and later rounds alike) to a peer
          whose last accepted initiation had no offer (``suites_legacy``: it
          runs the prototype, or is pinned to secretbox), starting with one
          that offers, so a peer upgraded since gets its best suite at once.
          A peer that never sent us an initiation without an offer is never
          sent one: dropping our offers makes us retry with offers, not fall
          back, so nobody on the path can talk us down to secretbox (a
          legacy initiation is authenticated by the peer's static key and
          its timestamp must be new).
        """
        if self.suites_for(peer) == (phw.Suite.SECRETBOX,):
            return None
        if peer.suites_legacy:
            legacy = peer.suites_alternate
            peer.suites_alternate = not legacy
            if legacy:
                return None
        return self.suites_for(peer)

    def suites_for(self, peer) -> tuple:
        """The suites sessions with ``peer`` may use: its own ``ciphers``, else ours."""
        own = getattr(peer, "suites", None) if peer is not None else None
        return own if own else self.suites

    def note_initiation(self, peer, info) -> None:
        """An accepted (authenticated, fresh) initiation from ``peer``: remember
        whether it offered suites, for our own initiations to it."""
        legacy = info.offered is None
        if legacy and not peer.suites_legacy:
            peer.suites_alternate = False          # our next one offers
        peer.suites_legacy = legacy

    def note_response(self, peer, state) -> None:
        """Our initiation ``state`` was answered: an answer to an offer shows
        the peer reads offers."""
        if state.offered is not None:
            peer.suites_legacy = False

    def session_suite(self, info, peer=None) -> Optional[phw.Suite]:
        """The suite an answer to ``info`` (from ``peer``) uses; None when we share none."""
        return phs.choose_suite(self.suites_for(peer), info.offered)

    def cipher_of(self, keys) -> CipherKind:
        return SUITE_CIPHER[phw.Suite(keys.suite)]

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
                                     crypto.random_bytes(phw.CLIENT_NONCE_SIZE), peer.cookies,
                                     suites=self.offer_for(peer))

    def consume_initiation(self, data: bytes):
        # our cached public key: one X25519 fewer per initiation (issue #15)
        return phs.consume_initiation(self._priv, data, local_static_public=self._pub)

    def create_response(self, peer, info, index: int):
        suite = self.session_suite(info, peer)
        if suite is None:
            raise phs.HandshakeError("no cipher suite in common")
        return phs.create_response(info.state, index, peer.cookies, suite=suite)

    def consume_response(self, state, data: bytes):
        return phs.consume_response(state, data)       # the choice is checked against our offer


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

    # WireGuard's transport cipher is fixed: nothing to negotiate
    def note_initiation(self, peer, info) -> None:
        pass

    def note_response(self, peer, state) -> None:
        pass

    def session_suite(self, info, peer=None):
        return self.cipher

    def cipher_of(self, keys) -> CipherKind:
        return self.cipher


KINDS = {Protocol.PHANTOM: PhantomHandshakes, Protocol.WIREGUARD: WireGuardHandshakes}


def protocol_of(name) -> Protocol:
    """``"phantom"`` / ``"wireguard"`` (or a Protocol) as a Protocol; ValueError otherwise."""
    try:
        return Protocol(name)
    except ValueError:
        raise ValueError("unknown protocol %r (choose %s)"
                         % (name, " or ".join(p.value for p in Protocol))) from None


def build(private_key, public_key: bytes, clock: Clock, cookie_refresh_time: float,
          kinds=(Protocol.PHANTOM, Protocol.WIREGUARD), suites=None) -> dict:
    """One object per protocol; ``suites``: Phantom's (None: default_suites())."""
    out = {}
    for k in kinds:
        if k is Protocol.PHANTOM:
            out[k] = PhantomHandshakes(private_key, public_key, clock, cookie_refresh_time, suites)
        else:
            out[k] = KINDS[k](private_key, public_key, clock, cookie_refresh_time)
    return out


__all__ = ["PhantomHandshakes", "WireGuardHandshakes", "Protocol", "protocol_of", "build",
           "default_suites", "configured_suites"]
