"""WireGuard's handshake, Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, sans-IO.

Written in the whitepaper's own steps (section 5.4.2 and 5.4.3) so that each
line can be checked against it; ``tests/unit/wireguard/test_wg_handshake.py`` also runs it
against the independent ``noiseprotocol`` implementation of IKpsk2.

The exchange, as the engine drives it (same shape as
:mod:`phantom.protocols.phantom.handshake` for Phantom peers)::

    initiator                                            responder
    msg, ist = create_initiation(...)     -- type 1 -->  WgCookieChecker.check_mac1/mac2
                                                         info = consume_initiation(...)
                                                         (known key? timestamp newer?)
    WgCookieChecker.check_mac1            <-- type 2 --  msg, keys = create_response(info.state, ...)
    keys = consume_response(ist, msg)

The initiation's payload is the TAI64N timestamp; the response's is empty.
The preshared key ``Q`` (32 zero bytes when none is set) enters only at the
response ("psk2"), so the responder needs it only once it knows the peer.

DH is X25519 and the AEADs ChaCha20-Poly1305, from libsodium
(:mod:`phantom.crypto`); HASH/HMAC/KDF are BLAKE2s from :mod:`hashlib`
(:mod:`.symmetric`).  A failed consume leaves the state as it was, so a
forged message cannot spoil a handshake in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ... import crypto
from ...wire import wireguard as wgw
from .. import tai64n
from ..handshake import HandshakeError, SessionKeys, check_index, dh, wipe
from .symmetric import HASH, INITIAL_CHAIN_KEY, INITIAL_HASH, KDF1, KDF2, KDF3

__all__ = [
    "HandshakeError", "SessionKeys", "InitiatorState", "ResponderState", "InitiationInfo",
    "create_initiation", "consume_initiation", "create_response", "consume_response",
    "NO_PRESHARED_KEY",
]

KEY_SIZE = 32
NO_PRESHARED_KEY = bytes(KEY_SIZE)


def _aead(key, plaintext: bytes, ad: bytes) -> bytes:
    return crypto.aead_encrypt(bytes(key), 0, ad, plaintext)


def _aead_open(key, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return crypto.aead_decrypt(bytes(key), 0, ad, ciphertext)
    except crypto.CryptoError as exc:
        raise HandshakeError("handshake message failed authentication") from exc


def _psk(preshared_key) -> bytes:
    q = NO_PRESHARED_KEY if preshared_key is None else bytes(preshared_key)
    if len(q) != KEY_SIZE:
        raise HandshakeError("a preshared key is 32 bytes")
    return q


def responder_hash(static_public: bytes) -> bytes:
    """Hi after the pre-message ``<- s``: HASH(HASH(Ci || IDENTIFIER) || Spub_r)."""
    return HASH(INITIAL_HASH, static_public)


@dataclass
class _HalfDone:
    """What either side keeps of a handshake between two messages: the Noise
    chaining key and hash, plus the side's own secrets (``_secrets``); clear()
    zeroes them all and marks the handshake done."""

    chaining_key: bytearray = field(repr=False)
    hash: bytes = field(repr=False)
    done: bool = field(default=False, kw_only=True)

    def _secrets(self) -> tuple:
        return (self.chaining_key,)

    def clear(self) -> None:
        wipe(*self._secrets())
        self.done = True


@dataclass
class InitiatorState(_HalfDone):
    """What the initiator keeps between its initiation and the response."""

    sender_index: int
    remote_static: bytes
    timestamp: bytes
    ephemeral_private: bytearray = field(repr=False)
    local_static_private: bytearray = field(repr=False)
    preshared_key: bytearray = field(repr=False)

    def _secrets(self) -> tuple:
        return (self.chaining_key, self.ephemeral_private, self.local_static_private,
                self.preshared_key)


@dataclass
class ResponderState(_HalfDone):
    """A valid initiation, kept until the engine decides to answer it."""

    remote_index: int
    remote_static: bytes
    remote_ephemeral: bytes


@dataclass(frozen=True)
class InitiationInfo:
    """An authenticated initiation.  The caller decides whether to answer it."""

    remote_static: bytes
    timestamp: bytes
    sender_index: int
    state: ResponderState = field(repr=False)


# --- initiator: 5.4.2 ---------------------------------------------------------------------
def create_initiation(local_static_priv, remote_static_pub, sender_index: int, timestamp12: bytes,
                      preshared_key=None, cookie_gen=None, *,
                      ephemeral_private=None) -> tuple[bytes, InitiatorState]:
    """A 148-byte handshake initiation and the state to read its response with.

    ``cookie_gen`` (a :class:`~phantom.protocols.wireguard.cookie.WgCookieGenerator`
    for the responder's key) fills in mac1 and, with a fresh cookie, mac2;
    without it both are zero.  ``ephemeral_private`` is for test vectors only.
    """
    check_index("sender_index", sender_index)
    if len(timestamp12) != wgw.TIMESTAMP_SIZE:
        raise HandshakeError("timestamp must be %d bytes" % wgw.TIMESTAMP_SIZE)
    s_priv = bytes(local_static_priv)
    s_pub = crypto.x25519_public(s_priv)
    r_pub = bytes(remote_static_pub)
    if len(r_pub) != KEY_SIZE or crypto.is_small_order(r_pub):
        raise HandshakeError("invalid remote static key")
    q = _psk(preshared_key)
    e_priv = bytes(ephemeral_private) if ephemeral_private is not None else crypto.x25519_private()
    e_pub = crypto.x25519_public(e_priv)

    c = INITIAL_CHAIN_KEY                                 # Ci = HASH(CONSTRUCTION)
    h = responder_hash(r_pub)                             # Hi = HASH(HASH(Ci||ID) || Spub_r)
    c = KDF1(c, e_pub)                                    # Ci = KDF1(Ci, Epub_i)
    h = HASH(h, e_pub)                                    # Hi = HASH(Hi || msg.ephemeral)
    c, k = KDF2(c, dh(e_priv, r_pub))                    # (Ci, k) = KDF2(Ci, DH(Epriv_i, Spub_r))
    enc_static = _aead(k, s_pub, h)                       # msg.static = AEAD(k, 0, Spub_i, Hi)
    h = HASH(h, enc_static)
    c, k = KDF2(c, dh(s_priv, r_pub))                    # (Ci, k) = KDF2(Ci, DH(Spriv_i, Spub_r))
    enc_ts = _aead(k, bytes(timestamp12), h)              # msg.timestamp = AEAD(k, 0, TAI64N, Hi)
    h = HASH(h, enc_ts)

    msg = wgw.Initiation(sender_index, e_pub, enc_static, enc_ts).pack()
    if cookie_gen is not None:
        msg = cookie_gen.add_macs(msg)
    state = InitiatorState(bytearray(c), h, sender_index, r_pub, bytes(timestamp12),
                           bytearray(e_priv), bytearray(s_priv), bytearray(q))
    return msg, state


def consume_response(state: InitiatorState, msg_bytes) -> SessionKeys:
    """Check the response (type 2) to our initiation and derive the transport keys.

    mac1/mac2 are the caller's (:class:`WgCookieChecker`).  On failure the
    state is unchanged and a genuine response can still be taken.
    """
    if state.done:
        raise HandshakeError("handshake already finished or abandoned")
    try:
        resp = wgw.Response.unpack(bytes(msg_bytes))
    except wgw.WireError as exc:
        raise HandshakeError(str(exc)) from exc
    if resp.receiver_index != state.sender_index:
        raise HandshakeError("response is for index %d, not ours (%d)"
                             % (resp.receiver_index, state.sender_index))
    e_r = resp.ephemeral
    c = KDF1(state.chaining_key, e_r)                     # Cr = KDF1(Cr, Epub_r)
    h = HASH(state.hash, e_r)                             # Hr = HASH(Hr || msg.ephemeral)
    c = KDF1(c, dh(state.ephemeral_private, e_r))        # Cr = KDF1(Cr, DH(Epriv_i, Epub_r))
    c = KDF1(c, dh(state.local_static_private, e_r))     # Cr = KDF1(Cr, DH(Spriv_i, Epub_r))
    c, tau, k = KDF3(c, state.preshared_key)              # (Cr, tau, k) = KDF3(Cr, Q)
    h = HASH(h, tau)                                      # Hr = HASH(Hr || tau)
    _aead_open(k, resp.encrypted_nothing, h)              # msg.empty = AEAD(k, 0, e, Hr)
    h = HASH(h, resp.encrypted_nothing)
    send, recv = KDF2(c, b"")                             # (Tsend_i, Trecv_i) = KDF2(Ci, e)
    state.clear()
    return SessionKeys(bytearray(send), bytearray(recv), local_index=state.sender_index,
                       remote_index=resp.sender_index, initiator=True, handshake_hash=h)


# --- responder: 5.4.2 (reading) and 5.4.3 -------------------------------------------------
def consume_initiation(local_static_priv, msg_bytes, *,
                       local_static_pub: Optional[bytes] = None) -> InitiationInfo:
    """Authenticate a 148-byte initiation sent to us: who sent it and when.

    Unknown keys, replayed timestamps and load are the caller's decisions.
    """
    try:
        init = wgw.Initiation.unpack(bytes(msg_bytes))
    except wgw.WireError as exc:
        raise HandshakeError(str(exc)) from exc
    s_priv = bytes(local_static_priv)
    s_pub = local_static_pub or crypto.x25519_public(s_priv)
    e_i = init.ephemeral
    c = INITIAL_CHAIN_KEY
    h = responder_hash(s_pub)
    c = KDF1(c, e_i)
    h = HASH(h, e_i)
    c, k = KDF2(c, dh(s_priv, e_i))                      # DH(Spriv_r, Epub_i)
    s_i = _aead_open(k, init.encrypted_static, h)
    h = HASH(h, init.encrypted_static)
    if crypto.is_small_order(s_i):
        raise HandshakeError("invalid static key in initiation")
    c, k = KDF2(c, dh(s_priv, s_i))                      # DH(Spriv_r, Spub_i)
    ts = _aead_open(k, init.encrypted_timestamp, h)
    h = HASH(h, init.encrypted_timestamp)
    try:
        tai64n.decode(ts)
    except tai64n.TimestampError as exc:
        raise HandshakeError("initiation carries an invalid timestamp") from exc
    state = ResponderState(bytearray(c), h, init.sender_index, s_i, e_i)
    return InitiationInfo(s_i, ts, init.sender_index, state)


def create_response(state: ResponderState, sender_index: int, preshared_key=None,
                    cookie_gen=None, *, ephemeral_private=None) -> tuple[bytes, SessionKeys]:
    """Answer an accepted initiation with a 92-byte response; a state answers once.

    ``preshared_key`` is the one configured for the initiator's key (None: zeros);
    ``cookie_gen`` is the generator for the initiator's static key.
    """
    if state.done:
        raise HandshakeError("initiation already answered or abandoned")
    check_index("sender_index", sender_index)
    q = _psk(preshared_key)
    e_priv = bytes(ephemeral_private) if ephemeral_private is not None else crypto.x25519_private()
    e_pub = crypto.x25519_public(e_priv)
    try:
        c = KDF1(state.chaining_key, e_pub)               # Cr = KDF1(Cr, Epub_r)
        h = HASH(state.hash, e_pub)                       # Hr = HASH(Hr || msg.ephemeral)
        c = KDF1(c, dh(e_priv, state.remote_ephemeral))  # Cr = KDF1(Cr, DH(Epriv_r, Epub_i))
        c = KDF1(c, dh(e_priv, state.remote_static))     # Cr = KDF1(Cr, DH(Epriv_r, Spub_i))
        c, tau, k = KDF3(c, q)                            # (Cr, tau, k) = KDF3(Cr, Q)
        h = HASH(h, tau)
        empty = _aead(k, b"", h)                          # msg.empty = AEAD(k, 0, e, Hr)
        h = HASH(h, empty)
        recv, send = KDF2(c, b"")                         # (Trecv_r, Tsend_r) = KDF2(Cr, e)
    finally:
        state.clear()
    msg = wgw.Response(sender_index, state.remote_index, e_pub, empty).pack()
    if cookie_gen is not None:
        msg = cookie_gen.add_macs(msg)
    keys = SessionKeys(bytearray(send), bytearray(recv), local_index=sender_index,
                       remote_index=state.remote_index, initiator=False, handshake_hash=h)
    return msg, keys
