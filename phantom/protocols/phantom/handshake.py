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

Attachments and refusals.  An initiation may carry, after its suites offer,
an attachment (``u16 length | bytes``, 1..wire.MAX_ATTACHMENT_SIZE: a
membership certificate, opaque here) inside the same encrypted payload, so
it is confidential, can only have been written by the holder of the static
key it travels with, and is bound into the handshake hash.  The responder
may answer such an initiation (and only such a one) with a *refusal*
(:func:`create_refusal`): a complete Noise response whose payload's suite
byte is ``wire.REFUSAL_FLAG | reason``; no keys are split on either side.
It is sealed under keys from ``ee`` and ``se`` like any response, so only
the holder of the responder's static key can write it, and it echoes the
client nonce, so it answers that initiation and no other;
:func:`consume_response` raises :class:`HandshakeRefused` for it.  It has the
size of an acceptance (109 bytes), smaller than any initiation with an
attachment (169 bytes or more).

Nothing here looks at peers, indexes tables, clocks or sockets; mac1/mac2 are
checked by the caller with :class:`phantom.protocols.phantom.cookie.CookieChecker`.
Every failure raises :class:`~phantom.protocols.handshake.HandshakeError`;
success gives :class:`~phantom.protocols.handshake.SessionKeys` (both shared
with WireGuard's handshake).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ... import crypto, wire
from .. import tai64n
from ..cookie import CookieGenerator
from ..handshake import HandshakeError, HandshakeRefused, SessionKeys, check_index
from .noise import NoiseIK, responder_initial_state

__all__ = [
    "HandshakeError", "HandshakeRefused", "SessionKeys", "InitiatorState", "ResponderState", "InitiationInfo",
    "create_initiation", "consume_initiation", "create_response", "create_refusal", "consume_response",
    "choose_suite",
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
    attached: bool = False              # our initiation carried an attachment (a refusal may answer it)

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
    attachment: bytes | None = field(default=None, repr=False)   # what it attached, if anything

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

    @property
    def attachment(self) -> bytes | None:
        """The bytes the initiator attached (a membership certificate), None when none."""
        return self.state.attachment


def choose_suite(ours, offered: int | None) -> wire.Suite | None:
    """The suite a responder that speaks ``ours`` picks for an initiation that
    offered ``offered`` (None: no offer, i.e. secretbox only): the first of
    wire.SUITE_PREFERENCE in both; None when they share none."""
    return _choose_suite(tuple(ours), offered)


@functools.lru_cache(maxsize=1024)
def _choose_suite(ours: tuple, offered: int | None) -> wire.Suite | None:
    # remembered: the engine asks twice per initiation, with few distinct arguments
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
                      ephemeral_private=None, suites=None,
                      attachment: bytes | None = None) -> tuple[bytes, InitiatorState]:
    """Build a handshake initiation (type 1) and the state to read its response.

    With ``cookie_gen`` mac1 (and mac2 when it holds a fresh cookie) is filled
    in; without it both MACs are zero and the caller must add them.
    ``suites``: the transport suites to offer (wire.Suite values); None sends
    the prototype's initiation, without an offer (the session is then secretbox).
    ``attachment``: 1..wire.MAX_ATTACHMENT_SIZE bytes carried after the offer
    (so it needs ``suites``), encrypted like the rest of the payload.
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
    if attachment is not None:
        attachment = bytes(attachment)
        if offered is None:
            raise HandshakeError("an attachment follows a suites offer")
        if not 1 <= len(attachment) <= wire.MAX_ATTACHMENT_SIZE:
            raise HandshakeError("an attachment is 1 to %d bytes, not %d"
                                 % (wire.MAX_ATTACHMENT_SIZE, len(attachment)))
        payload += wire.ATTACHMENT_LENGTH.pack(len(attachment)) + attachment
    noise = NoiseIK.initiator(local_static_priv, remote_static_pub, ephemeral_private)
    body = noise.write_message(payload)
    e_end = wire.KEY_SIZE
    s_end = e_end + wire.KEY_SIZE + wire.AEAD_TAG_SIZE
    msg = wire.Initiation(sender_index, body[:e_end], body[e_end:s_end], body[s_end:]).pack()
    if cookie_gen is not None:
        msg = cookie_gen.add_macs(msg)
    state = InitiatorState(noise, sender_index, bytes(remote_static_pub), timestamp12, client_nonce16,
                           offered, attachment is not None)
    return msg, state


def consume_response(state: InitiatorState, msg_bytes) -> SessionKeys:
    """Check a handshake response (type 2) to our initiation; return the session keys.

    Raises HandshakeError when the message is malformed, not addressed to
    ``state.sender_index``, fails authentication (the state is then unchanged
    and a genuine response can still be taken), or echoes another client
    nonce (the handshake is then abandoned); HandshakeRefused (a
    HandshakeError) when it is the responder's authenticated refusal of an
    initiation with an attachment (abandoned too, no keys).
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
        if choice & wire.REFUSAL_FLAG and state.attached:
            state.clear()
            raise HandshakeRefused(choice & ~wire.REFUSAL_FLAG)
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
                       local_static_public=None, responder_key=None) -> InitiationInfo:
    """Authenticate a handshake initiation (type 1) sent to us.

    Returns who sent it and what it carries; replay (timestamp not later than
    the peer's last one), unknown peers and load are the caller's decisions.
    ``ephemeral_private`` (our response's ephemeral key) is for test vectors.
    ``responder_key``: a :class:`phantom.protocols.phantom._responder.ResponderKey`
    for our static key (see :func:`native_responder_key`): the Noise part (this
    message and the response's) then runs in C; None: the reference NoiseIK.
    The results are the same, byte for byte.
    """
    msg = _check_type(msg_bytes, wire.MessageType.INITIATION)
    init = wire.Initiation.unpack(msg)
    if responder_key is not None:
        noise = responder_key.responder(ephemeral_private)
    else:
        noise = NoiseIK.responder(local_static_priv, ephemeral_private, static_public=local_static_public)
    payload = noise.read_message(init.noise_message)
    return _initiation_info(init, noise, payload)


def _initiation_info(init, noise, payload: bytes) -> InitiationInfo:
    """What an authenticated initiation's payload says (or HandshakeError, the handshake cleared)."""
    timestamp = payload[:wire.TIMESTAMP_SIZE]
    client_nonce = payload[wire.TIMESTAMP_SIZE:wire.INITIATION_PAYLOAD_SIZE]
    rest = payload[wire.INITIATION_PAYLOAD_SIZE:]
    offered = attachment = None
    if len(client_nonce) != wire.CLIENT_NONCE_SIZE or len(rest) not in (0, wire.SUITES_FIELD.size) and \
            len(rest) < wire.SUITES_FIELD.size + wire.ATTACHMENT_LENGTH.size + 1:
        noise.clear()                                   # cannot happen with the framing's sizes
        raise HandshakeError("initiation payload has the wrong size")
    if rest:
        (offered,) = wire.SUITES_FIELD.unpack_from(rest, 0)
    if len(rest) > wire.SUITES_FIELD.size:
        (n,) = wire.ATTACHMENT_LENGTH.unpack_from(rest, wire.SUITES_FIELD.size)
        attachment = rest[wire.SUITES_FIELD.size + wire.ATTACHMENT_LENGTH.size:]
        if n != len(attachment) or not 1 <= n <= wire.MAX_ATTACHMENT_SIZE:
            # authenticated, so written by the key's holder: a broken sender, still a drop
            noise.clear()
            raise HandshakeError("initiation's attachment length %d disagrees with its %d bytes"
                                 % (n, len(attachment)))
    try:
        tai64n.decode(timestamp)
    except tai64n.TimestampError as exc:
        noise.clear()
        raise HandshakeError("initiation carries an invalid timestamp") from exc
    remote_static = noise.remote_static
    state = ResponderState(noise, init.sender_index, remote_static, client_nonce, offered, attachment)
    return InitiationInfo(remote_static, timestamp, client_nonce, init.sender_index, state)


def consume_initiations(responder_key, messages: list) -> list:
    """:func:`consume_initiation` with ``responder_key`` for each of
    ``messages`` at once (their Noise work on two threads, _responder.read_many):
    a list of InitiationInfo, or of the HandshakeError each raised, in order."""
    from . import _responder
    out: list = [None] * len(messages)
    todo, inits, noises = [], [], []
    for i, m in enumerate(messages):
        try:
            init = wire.Initiation.unpack(_check_type(m, wire.MessageType.INITIATION))
        except HandshakeError as exc:
            out[i] = exc
            continue
        todo.append(i)
        inits.append(init)
        noises.append(responder_key.responder())
    payloads = _responder.read_many(responder_key, noises, [init.noise_message for init in inits])
    for i, init, noise, payload in zip(todo, inits, noises, payloads):
        if isinstance(payload, HandshakeError):
            out[i] = payload
            continue
        try:
            out[i] = _initiation_info(init, noise, payload)
        except HandshakeError as exc:
            out[i] = exc
    return out


def native_responder_key(local_static_priv, local_static_public):
    """A ResponderKey (the C responder, phantom/protocols/phantom/_responder.pyx)
    for our static key, or None when that extension is not built.  It holds
    the chaining key and hash after the prologue and "<- s", computed here by
    the reference SymmetricState."""
    try:
        from . import _responder
    except ImportError:
        return None
    ck, h = responder_initial_state(local_static_public)
    return _responder.ResponderKey(local_static_priv, local_static_public, ck, h)


def create_response(state: ResponderState, sender_index: int,
                    cookie_gen: CookieGenerator | None = None, *,
                    suite=wire.Suite.SECRETBOX) -> tuple[bytes, SessionKeys]:
    """Answer an accepted initiation with a handshake response (type 2).

    ``sender_index`` is our new index for this session.  ``cookie_gen`` is the
    generator for the initiator's static key.  ``suite``: the session's
    transport suite (:func:`choose_suite`); it must be one the initiator
    offered (secretbox when it offered none).  A state answers only once.
    """
    suite, payload = _response_payload(state, sender_index, suite)
    body = state.noise.write_message(payload)
    return _response(state, sender_index, cookie_gen, suite, body)


def _response_payload(state: ResponderState, sender_index: int, suite) -> tuple:
    """(suite, the response's payload), or HandshakeError."""
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
    return suite, payload


def _response(state: ResponderState, sender_index: int, cookie_gen, suite, body: bytes) -> tuple:
    e_end = wire.KEY_SIZE
    msg = wire.Response(sender_index, state.remote_index, body[:e_end], body[e_end:]).pack()
    if cookie_gen is not None:
        msg = cookie_gen.add_macs(msg)
    hh = state.noise.handshake_hash
    send_key, recv_key = state.noise.split()
    keys = SessionKeys(send_key, recv_key, local_index=sender_index,
                       remote_index=state.remote_index, initiator=False, handshake_hash=hh, suite=suite)
    return msg, keys


def create_responses(answers: list) -> list:
    """:func:`create_response` for each ``(state, sender_index, cookie_gen,
    suite)`` of ``answers`` (states of a C responder: consume_initiations) at
    once, their Noise work on two threads (_responder.write_many): a list of
    (message, SessionKeys), or of the HandshakeError each raised, in order."""
    from . import _responder
    out: list = [None] * len(answers)
    todo, noises, payloads = [], [], []
    for i, (state, index, _gen, suite) in enumerate(answers):
        try:
            payloads.append(_response_payload(state, index, suite)[1])
        except HandshakeError as exc:
            out[i] = exc
            continue
        todo.append(i)
        noises.append(state.noise)
    bodies = _responder.write_many(noises, payloads)
    for i, body in zip(todo, bodies):
        if isinstance(body, HandshakeError):
            out[i] = body
            continue
        state, index, gen, suite = answers[i]
        out[i] = _response(state, index, gen, wire.Suite(suite), body)
    return out


def create_refusal(state: ResponderState, sender_index: int, reason,
                   cookie_gen: CookieGenerator | None = None) -> bytes:
    """Answer an initiation that carried an attachment with an authenticated
    refusal (type 2, 109 bytes): a complete Noise response whose payload is
    the echoed client nonce and ``wire.REFUSAL_FLAG | reason`` (a
    wire.Refusal).  No keys are derived; the state is cleared.  An
    initiation without an attachment never gets one (HandshakeError): a
    peer that attaches nothing sees exactly the protocol it knows.
    ``sender_index`` is any u32 (no session is made for it)."""
    check_index("sender_index", sender_index)
    if state.attachment is None or state.offered is None:
        state.clear()
        raise HandshakeError("only an initiation with an attachment gets a refusal")
    reason = wire.refusal_of(reason)
    payload = state.client_nonce + wire.SUITE_FIELD.pack(wire.REFUSAL_FLAG | int(reason))
    body = state.noise.write_message(payload)
    state.clear()
    msg = wire.Response(sender_index, state.remote_index, body[:wire.KEY_SIZE], body[wire.KEY_SIZE:]).pack()
    if cookie_gen is not None:
        msg = cookie_gen.add_macs(msg)
    return msg
