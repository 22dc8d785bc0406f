"""The WireGuard-framed Phantom handshake on top of :class:`NoiseIK`, sans-IO.

The exchange, as the peer/device state machine drives it::

    initiator                                          responder
    ---------                                          ---------
    msg, ist = create_initiation(...)   -- type 1 -->  CookieChecker.check_mac1/mac2
                                                       info = consume_initiation(...)
                                                       (upper layer: known peer?
                                                        info.timestamp later than the
                                                        last one from that peer?)
    CookieChecker.check_mac1            <-- type 2 --  msg, keys = create_response(info.state, ...)
    keys = consume_response(ist, msg)

Payloads (plaintext inside the Noise messages):

* initiation: TAI64N timestamp (12 bytes) || client nonce (16 bytes)
  [ || suites u16: the transport suites the initiator offers, bit i = wire.Suite(i) ];
* response:   the initiator's client nonce, echoed [ || suite u8: the one chosen ].
  The initiator checks the echo, which ties the response to the open request
  that caused the handshake.

Suite negotiation.  An initiation either carries an offer (166 bytes) or not
(164, the prototype's form, "offers secretbox only").  The responder answers
an offer with its choice (109 bytes: the best suite of
``wire.SUITE_PREFERENCE`` that both offer) and an initiation without one
with a response without one (108 bytes): secretbox.  Both lists travel
inside the AEAD-encrypted Noise payloads: an initiation's offer is sealed
under keys from ``es`` and ``ss`` (only the initiator can write it) with the
handshake hash as associated data, and its ciphertext is then mixed into the
hash (EncryptAndHash), which is the associated data of the response's
payload.  So the responder's response authenticates the exact offer it
answered, and the choice is in turn sealed under keys from ``ee`` and
``se``: an attacker who strips or edits either cannot produce a message that
decrypts (the sizes differ, so a 164-byte initiation is not a truncated
166-byte one), and the initiator refuses a response that picks a suite it
did not offer or that answers its offer without a choice.

Nothing here looks at peers, indexes tables, clocks or sockets; mac1/mac2 are
checked by the caller with :class:`phantom.protocols.phantom.cookie.CookieChecker`.
Every failure raises :class:`~phantom.protocols.handshake.HandshakeError`;
success gives :class:`~phantom.protocols.handshake.SessionKeys` (both shared
with WireGuard's handshake).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ... import crypto, wire
from .. import tai64n
from ..cookie import CookieGenerator
from ..handshake import HandshakeError, SessionKeys, check_index
from .noise import NoiseIK

__all__ = [
    "HandshakeError", "SessionKeys", "InitiatorState", "ResponderState", "InitiationInfo",
    "create_initiation", "consume_initiation", "create_response", "consume_response", "choose_suite",
]

@dataclass
class InitiatorState:
    """What the initiator keeps between sending the initiation and the response."""

    noise: NoiseIK = field(repr=False)
    sender_index: int
    remote_static: bytes
    timestamp: bytes
    client_nonce: bytes
    offered: int | None = None          # our suites offer (a wire.suites_mask); None: none sent

    def clear(self) -> None:
        """Abandon the handshake and zero its secrets."""
        self.noise.clear()


@dataclass
class ResponderState:
    """What the responder keeps between a valid initiation and its response."""

    noise: NoiseIK = field(repr=False)
    remote_index: int           # the initiator's sender index
    remote_static: bytes
    client_nonce: bytes
    offered: int | None = None  # the initiator's suites offer; None: it sent none (secretbox)

    def clear(self) -> None:
        self.noise.clear()


@dataclass(frozen=True)
class InitiationInfo:
    """An authenticated initiation.  The caller decides whether to answer it."""

    remote_static: bytes
    timestamp: bytes
    client_nonce: bytes
    sender_index: int
    state: ResponderState = field(repr=False)

    @property
    def offered(self) -> int | None:
        """The initiator's suites offer (wire.suites_mask), None when it sent none."""
        return self.state.offered


def choose_suite(ours, offered: int | None) -> wire.Suite | None:
    """The suite a responder that speaks ``ours`` picks for an initiation that
    offered ``offered`` (None: no offer, i.e. secretbox only): the first of
    wire.SUITE_PREFERENCE in both; None when they share none."""
    theirs = {wire.Suite.SECRETBOX} if offered is None else set(wire.suites_of(offered))
    ours = {wire.Suite(s) for s in ours}
    for suite in wire.SUITE_PREFERENCE:
        if suite in ours and suite in theirs:
            return suite
    return None


def _check_type(msg, expected: wire.MessageType) -> bytes:
    msg = bytes(msg)
    try:
        mtype = wire.message_type(msg)
    except wire.WireError as exc:
        raise HandshakeError(str(exc)) from exc
    if mtype is not expected:
        raise HandshakeError("expected a %s, got a %s"
                             % (expected.name.lower(), mtype.name.lower()))
    return msg


# --- initiator ---------------------------------------------------------------------
def create_initiation(local_static_priv, remote_static_pub, sender_index: int,
                      timestamp12: bytes, client_nonce16: bytes,
                      cookie_gen: CookieGenerator | None = None, *,
                      ephemeral_private=None, suites=None) -> tuple[bytes, InitiatorState]:
    """Build a handshake initiation (type 1) and the state to read its response.

    With ``cookie_gen`` mac1 (and mac2 when it holds a fresh cookie) is filled
    in; without it both MACs are zero and the caller must add them.
    ``suites``: the transport suites to offer (wire.Suite values); None sends
    the prototype's initiation, without an offer (the session is then secretbox).
    ``ephemeral_private`` is for test vectors only.
    """
    check_index("sender_index", sender_index)
    if len(timestamp12) != wire.TIMESTAMP_SIZE:
        raise HandshakeError("timestamp must be %d bytes" % wire.TIMESTAMP_SIZE)
    if len(client_nonce16) != wire.CLIENT_NONCE_SIZE:
        raise HandshakeError("client nonce must be %d bytes" % wire.CLIENT_NONCE_SIZE)
    timestamp12, client_nonce16 = bytes(timestamp12), bytes(client_nonce16)
    offered = None
    payload = timestamp12 + client_nonce16
    if suites is not None:
        offered = wire.suites_mask(suites)
        if not offered:
            raise HandshakeError("an offer needs at least one suite")
        payload += wire.SUITES_FIELD.pack(offered)
    noise = NoiseIK.initiator(local_static_priv, remote_static_pub, ephemeral_private)
    body = noise.write_message(payload)
    e_end = wire.KEY_SIZE
    s_end = e_end + wire.KEY_SIZE + wire.AEAD_TAG_SIZE
    msg = wire.Initiation(sender_index, body[:e_end], body[e_end:s_end], body[s_end:]).pack()
    if cookie_gen is not None:
        msg = cookie_gen.add_macs(msg)
    state = InitiatorState(noise, sender_index, bytes(remote_static_pub), timestamp12, client_nonce16,
                           offered)
    return msg, state


def consume_response(state: InitiatorState, msg_bytes) -> SessionKeys:
    """Check a handshake response (type 2) to our initiation; return the session keys.

    Raises HandshakeError when the message is malformed, not addressed to
    ``state.sender_index``, fails authentication (the state is then unchanged
    and a genuine response can still be taken), or echoes another client
    nonce (the handshake is then abandoned).
    """
    msg = _check_type(msg_bytes, wire.MessageType.RESPONSE)
    resp = wire.Response.unpack(msg)
    if resp.receiver_index != state.sender_index:
        raise HandshakeError("response is for index %d, not ours (%d)"
                             % (resp.receiver_index, state.sender_index))
    if resp.chooses_suite != (state.offered is not None):
        # before any cryptography (the state stays usable): a genuine responder
        # answers an offer with a choice and no offer without one
        raise HandshakeError("response %s a suite choice to an initiation %s an offer"
                             % (("carries", "without") if resp.chooses_suite else ("lacks", "with")))
    payload = state.noise.read_message(resp.noise_message)
    echoed = payload[:wire.CLIENT_NONCE_SIZE]
    if not crypto.equal(echoed, state.client_nonce):
        state.clear()
        raise HandshakeError("response echoes a different client nonce")
    suite = wire.Suite.SECRETBOX
    if state.offered is not None:
        (choice,) = wire.SUITE_FIELD.unpack_from(payload, wire.CLIENT_NONCE_SIZE)
        if not 0 <= choice < 16 or not state.offered >> choice & 1 or choice not in set(wire.Suite):
            state.clear()
            raise HandshakeError("response chose suite %d, which we did not offer" % choice)
        suite = wire.Suite(choice)
    hh = state.noise.handshake_hash
    send_key, recv_key = state.noise.split()
    return SessionKeys(send_key, recv_key, local_index=state.sender_index,
                       remote_index=resp.sender_index, initiator=True, handshake_hash=hh, suite=suite)


# --- responder ---------------------------------------------------------------------
def consume_initiation(local_static_priv, msg_bytes, *, ephemeral_private=None,
                       local_static_public=None) -> InitiationInfo:
    """Authenticate a handshake initiation (type 1) sent to us.

    Returns who sent it and what it carries; replay (timestamp not later than
    the peer's last one), unknown peers and load are the caller's decisions.
    ``ephemeral_private`` (our response's ephemeral key) is for test vectors.
    """
    msg = _check_type(msg_bytes, wire.MessageType.INITIATION)
    init = wire.Initiation.unpack(msg)
    noise = NoiseIK.responder(local_static_priv, ephemeral_private, static_public=local_static_public)
    payload = noise.read_message(init.noise_message)
    timestamp = payload[:wire.TIMESTAMP_SIZE]
    client_nonce = payload[wire.TIMESTAMP_SIZE:wire.INITIATION_PAYLOAD_SIZE]
    rest = payload[wire.INITIATION_PAYLOAD_SIZE:]
    offered = None
    if len(client_nonce) != wire.CLIENT_NONCE_SIZE or len(rest) not in (0, wire.SUITES_FIELD.size):
        noise.clear()                                   # cannot happen with the fixed sizes
        raise HandshakeError("initiation payload has the wrong size")
    if rest:
        (offered,) = wire.SUITES_FIELD.unpack(rest)
    try:
        tai64n.decode(timestamp)
    except tai64n.TimestampError as exc:
        noise.clear()
        raise HandshakeError("initiation carries an invalid timestamp") from exc
    remote_static = noise.remote_static
    state = ResponderState(noise, init.sender_index, remote_static, client_nonce, offered)
    return InitiationInfo(remote_static, timestamp, client_nonce, init.sender_index, state)


def create_response(state: ResponderState, sender_index: int,
                    cookie_gen: CookieGenerator | None = None, *,
                    suite=wire.Suite.SECRETBOX) -> tuple[bytes, SessionKeys]:
    """Answer an accepted initiation with a handshake response (type 2).

    ``sender_index`` is our new index for this session.  ``cookie_gen`` is the
    generator for the initiator's static key.  ``suite``: the session's
    transport suite (:func:`choose_suite`); it must be one the initiator
    offered (secretbox when it offered none).  A state answers only once.
    """
    check_index("sender_index", sender_index)
    suite = wire.Suite(suite)
    payload = state.client_nonce
    if state.offered is None:
        if suite is not wire.Suite.SECRETBOX:
            raise HandshakeError("an initiation without an offer gets secretbox")
    else:
        if not state.offered >> int(suite) & 1:
            raise HandshakeError("the initiator did not offer %s" % wire.suite_name(suite))
        payload += wire.SUITE_FIELD.pack(int(suite))
    body = state.noise.write_message(payload)
    e_end = wire.KEY_SIZE
    msg = wire.Response(sender_index, state.remote_index, body[:e_end], body[e_end:]).pack()
    if cookie_gen is not None:
        msg = cookie_gen.add_macs(msg)
    hh = state.noise.handshake_hash
    send_key, recv_key = state.noise.split()
    keys = SessionKeys(send_key, recv_key, local_index=sender_index,
                       remote_index=state.remote_index, initiator=False, handshake_hash=hh, suite=suite)
    return msg, keys
