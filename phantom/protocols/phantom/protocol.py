"""Phantom as the engine sees it (:class:`PhantomHandshakes`): Noise_IK over
BLAKE2b with a client nonce (:mod:`.handshake`, :mod:`.cookie`), transport
with the suite the handshake negotiates (AEGIS-256 or crypto_secretbox,
:mod:`.suites`)."""

from __future__ import annotations

from typing import Iterable, Optional

from ... import crypto, wire
from ...wire.ciphers import SUITE_CIPHER, CipherKind
from ...wire.demux import Protocol
from ..handshake import HandshakeError, Handshakes
from . import handshake
from .cookie import CookieChecker, CookieGenerator
from .suites import default_suites


class PhantomHandshakes(Handshakes):
    protocol = Protocol.PHANTOM
    cipher = CipherKind.SECRETBOX            # the baseline; a session's own is cipher_of(keys)
    wire = wire
    handshake = handshake
    Checker = CookieChecker
    Generator = CookieGenerator

    def __init__(self, private_key, public_key: bytes, clock, cookie_refresh_time: float,
                 suites: Optional[Iterable] = None, native: bool = False):
        super().__init__(private_key, public_key, clock, cookie_refresh_time)
        self.set_suites(default_suites() if suites is None else suites)
        # ``native``: answer initiations with the C responder (_responder.pyx;
        # phantomd --fast), byte-identical to the reference NoiseIK; None here
        # when not asked for or not built (the reference then answers)
        self.responder_key = handshake.native_responder_key(private_key, public_key) if native else None
        # bytes every initiation of ours carries after its offer (the engine's
        # ``membership``: a membership certificate); None: none
        self.attachment: Optional[bytes] = None

    def set_suites(self, suites: Iterable) -> None:
        """What we offer and accept, best first (wire.Suite values)."""
        suites = tuple(sorted({wire.Suite(s) for s in suites}, key=wire.SUITE_PREFERENCE.index))
        if not suites:
            raise ValueError("at least one cipher suite")
        self.suites = suites

    @property
    def suite_names(self) -> list:
        return [wire.suite_name(s) for s in self.suites]

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
        if self.suites_for(peer) == (wire.Suite.SECRETBOX,):
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

    def session_suite(self, info, peer=None) -> Optional[wire.Suite]:
        """The suite an answer to ``info`` (from ``peer``) uses; None when we share none."""
        return handshake.choose_suite(self.suites_for(peer), info.offered)

    def cipher_of(self, keys) -> CipherKind:
        return SUITE_CIPHER[wire.Suite(keys.suite)]

    def create_initiation(self, peer, index: int, timestamp: bytes):
        """Our initiation to ``peer``: with :meth:`offer_for`'s offer, and
        our :attr:`attachment` when we have one.  An attachment needs an
        offer: when we speak secretbox only, the offer is secretbox alone;
        the turn :meth:`offer_for` keeps for a peer that sent no offer (a
        prototype, which reads neither) goes without both."""
        attachment = self.attachment
        legacy_turn = False
        if attachment is not None and self.suites_for(peer) != (wire.Suite.SECRETBOX,):
            legacy_turn = peer.suites_legacy and peer.suites_alternate
        offer = self.offer_for(peer)
        if attachment is not None:
            if legacy_turn:
                attachment = None
            elif offer is None:
                offer = (wire.Suite.SECRETBOX,)
        return handshake.create_initiation(self._priv, peer.public_key, index, timestamp,
                                           crypto.random_bytes(wire.CLIENT_NONCE_SIZE), peer.cookies,
                                           suites=offer, attachment=attachment)

    def consume_initiation(self, data: bytes):
        # our cached public key: one X25519 fewer per initiation (issue #15)
        return handshake.consume_initiation(self._priv, data, local_static_public=self._pub,
                                            responder_key=self.responder_key)

    def peer_added(self, remote_public: bytes) -> None:
        """The C responder computes the peer's static-static DH now, as
        wireguard-go does for its peers: every initiation from it, the
        first included, then costs one X25519 fewer (flat in the number of
        peers: a hub of 10,000 whose keys each initiate once pays the same
        per initiation as one whose keys repeat)."""
        if self.responder_key is not None:
            self.responder_key.prime(remote_public)

    def peer_removed(self, remote_public: bytes) -> None:
        if self.responder_key is not None:
            self.responder_key.forget(remote_public)

    @property
    def native(self) -> bool:
        """True when initiations are answered by the C responder."""
        return self.responder_key is not None

    def create_response(self, peer, info, index: int):
        suite = self.session_suite(info, peer)
        if suite is None:
            raise HandshakeError("no cipher suite in common")
        return handshake.create_response(info.state, index, peer.cookies, suite=suite)

    def consume_initiations(self, datas: list) -> list:
        """consume_initiation for each of ``datas`` at once (the C responder
        only: :attr:`native`): InitiationInfo or HandshakeError each, in order."""
        return handshake.consume_initiations(self.responder_key, datas)

    def create_responses(self, answers: list) -> list:
        """create_response for each ``(peer, info, index)`` at once (the C
        responder only): (message, keys) or HandshakeError each, in order."""
        out: list = [None] * len(answers)
        todo, items = [], []
        for i, (peer, info, index) in enumerate(answers):
            suite = self.session_suite(info, peer)
            if suite is None:
                out[i] = HandshakeError("no cipher suite in common")
                continue
            todo.append(i)
            items.append((info.state, index, peer.cookies, suite))
        for i, got in zip(todo, handshake.create_responses(items)):
            out[i] = got
        return out

    def create_refusal(self, info, reason, index: int) -> bytes:
        """An authenticated refusal of ``info`` (an initiation that carried an
        attachment, from a key that need not be a peer), with mac1 for its key."""
        return handshake.create_refusal(info.state, index, reason,
                                        self.cookie_generator(info.remote_static))

    # consume_response: Handshakes' (the choice is checked against our offer)
