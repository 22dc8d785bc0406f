"""Noise_IK_25519_ChaChaPoly_BLAKE2b, sans-IO, on libsodium primitives only.

This is the handshake of the Noise Protocol Framework (revision 34) for the
one pattern Phantom uses::

    IK:
      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se

with DH = X25519, cipher = ChaCha20-Poly1305 (IETF, Noise nonce encoding:
four zero bytes then the 64-bit counter little-endian), hash = BLAKE2b
(HASHLEN 64, BLOCKLEN 128).  Every primitive comes from :mod:`phantom.crypto`.

The classes mirror the spec's objects so that each line can be checked
against it:

* :class:`CipherState`    -- k, n; EncryptWithAd / DecryptWithAd (spec 5.1)
* :class:`SymmetricState` -- ck, h; MixKey, MixHash, EncryptAndHash,
  DecryptAndHash, Split (spec 5.2)
* :class:`NoiseIK`        -- the HandshakeState for IK (spec 5.3), with an
  explicit state enum: each role may only do the next step of the pattern.

A failed :meth:`NoiseIK.read_message` (bad tag, wrong length, low-order
key) raises :class:`~phantom.protocols.handshake.HandshakeError` and leaves
the handshake exactly as it was, so a forged message cannot spoil a
handshake in flight.  HKDF is the one both protocols use
(:mod:`phantom.protocols.kdf`), over HMAC-BLAKE2b.
"""

from __future__ import annotations

import enum

from ... import crypto
from ...constants import NOISE_PROTOCOL_NAME, PROLOGUE
from ..handshake import HandshakeError, dh, wipe
from ..kdf import hkdf

DHLEN = 32          # X25519 public key / shared secret
HASHLEN = crypto.HASH_SIZE   # 64 for BLAKE2b
TAGLEN = 16         # Poly1305
CIPHER_KEYLEN = 32  # ChaCha20-Poly1305 key; HKDF outputs are truncated to it
MAX_NONCE = 2 ** 64 - 1   # reserved by the spec, never used for encryption

# Sizes of the two IK messages around their payloads.
MESSAGE1_OVERHEAD = DHLEN + (DHLEN + TAGLEN) + TAGLEN    # e, enc(s), payload tag
MESSAGE2_OVERHEAD = DHLEN + TAGLEN                       # e, payload tag


class CipherState:
    """k and n of spec section 5.1.  ``k is None`` means empty."""

    __slots__ = ("k", "n")

    def __init__(self) -> None:
        self.k: bytearray | None = None
        self.n = 0

    def initialize_key(self, key) -> None:
        self.clear()
        self.k = bytearray(key) if key is not None else None
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return bytes(plaintext)
        if self.n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted")
        out = crypto.aead_encrypt(self.k, self.n, ad, plaintext)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return bytes(ciphertext)
        if self.n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted")
        try:
            out = crypto.aead_decrypt(self.k, self.n, ad, ciphertext)
        except crypto.CryptoError as exc:
            raise HandshakeError("handshake message failed authentication") from exc
        self.n += 1
        return out

    def copy(self) -> "CipherState":
        c = CipherState()
        c.k = bytearray(self.k) if self.k is not None else None
        c.n = self.n
        return c

    def clear(self) -> None:
        if self.k is not None:
            wipe(self.k)
        self.k = None
        self.n = 0


class SymmetricState:
    """ck, h and a CipherState, spec section 5.2."""

    __slots__ = ("ck", "h", "cipher")

    def __init__(self, protocol_name: bytes = NOISE_PROTOCOL_NAME) -> None:
        # InitializeSymmetric: h = name padded with zeros to HASHLEN, or HASH(name).
        if len(protocol_name) <= HASHLEN:
            h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            h = crypto.blake2b(protocol_name)
        self.h = bytearray(h)
        self.ck = bytearray(h)
        self.cipher = CipherState()

    def mix_key(self, input_key_material) -> None:
        ck, temp_k = hkdf(crypto.hmac_blake2b, self.ck, input_key_material, 2)
        wipe(self.ck)
        self.ck = bytearray(ck)
        self.cipher.initialize_key(temp_k[:CIPHER_KEYLEN])

    def mix_hash(self, data) -> None:
        h = crypto.blake2b(bytes(self.h) + bytes(data))
        self.h = bytearray(h)

    def encrypt_and_hash(self, plaintext) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(bytes(self.h), plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(bytes(self.h), ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytearray, bytearray]:
        """Return (k1, k2): k1 for initiator->responder, k2 for the reverse."""
        temp_k1, temp_k2 = hkdf(crypto.hmac_blake2b, self.ck, b"", 2)
        return bytearray(temp_k1[:CIPHER_KEYLEN]), bytearray(temp_k2[:CIPHER_KEYLEN])

    def copy(self) -> "SymmetricState":
        s = SymmetricState.__new__(SymmetricState)
        s.ck = bytearray(self.ck)
        s.h = bytearray(self.h)
        s.cipher = self.cipher.copy()
        return s

    def clear(self) -> None:
        """Zero the chaining key and the handshake cipher key (h is public)."""
        wipe(self.ck)
        self.cipher.clear()


class State(enum.Enum):
    """Where a :class:`NoiseIK` is in the pattern; each names the next step."""

    INITIATOR_WRITE_1 = "initiator must write message 1"
    INITIATOR_READ_2 = "initiator must read message 2"
    RESPONDER_READ_1 = "responder must read message 1"
    RESPONDER_WRITE_2 = "responder must write message 2"
    SPLIT = "handshake complete; split() gives the transport keys"
    DONE = "transport keys taken; state cleared"


def _check_key(name: str, key) -> bytes:
    if key is None or len(key) != DHLEN:
        raise HandshakeError("%s must be %d bytes" % (name, DHLEN))
    return bytes(key)


def responder_initial_state(static_public, prologue: bytes = PROLOGUE,
                            protocol_name: bytes = NOISE_PROTOCOL_NAME) -> tuple[bytes, bytes]:
    """(ck, h) of a responder with ``static_public`` before message 1: after
    InitializeSymmetric, the prologue and the pre-message "<- s" (public
    values, the same for every initiation; the C responder starts from them)."""
    ss = SymmetricState(protocol_name)
    ss.mix_hash(prologue)
    ss.mix_hash(_check_key("static public key", static_public))
    return bytes(ss.ck), bytes(ss.h)


class NoiseIK:
    """The IK HandshakeState.  Build with :meth:`initiator` or :meth:`responder`.

    ``ephemeral_private`` fixes the ephemeral key; use it only for test vectors.
    """

    def __init__(self, initiator: bool, static_private, remote_static_public=None,
                 ephemeral_private=None, prologue: bytes = PROLOGUE,
                 protocol_name: bytes = NOISE_PROTOCOL_NAME, static_public=None) -> None:
        self.is_initiator = initiator
        self._s = bytearray(_check_key("static private key", static_private))
        # ``static_public``: the caller's cached public key of static_private
        # (a responder answers every initiation with the same key: one X25519
        # saved per handshake)
        self._s_pub = _check_key("static public key", static_public) if static_public is not None \
            else crypto.x25519_public(bytes(self._s))
        # The ephemeral key pair is made when first written (a responder that
        # rejects message 1 never pays for it).
        self._e: bytearray | None = None
        self._e_pub: bytes | None = None
        if ephemeral_private is not None:
            self._e = bytearray(_check_key("ephemeral private key", ephemeral_private))
        self._rs: bytes | None = None
        self._re: bytes | None = None
        self._handshake_hash: bytes | None = None

        ss = SymmetricState(protocol_name)
        ss.mix_hash(prologue)
        # Pre-message "<- s": both sides hash the responder's static public key.
        if initiator:
            self._rs = _check_key("remote static public key", remote_static_public)
            ss.mix_hash(self._rs)
            self.state = State.INITIATOR_WRITE_1
        else:
            ss.mix_hash(self._s_pub)
            self.state = State.RESPONDER_READ_1
        self._ss = ss

    @classmethod
    def initiator(cls, static_private, remote_static_public, ephemeral_private=None) -> "NoiseIK":
        return cls(True, static_private, remote_static_public, ephemeral_private)

    @classmethod
    def responder(cls, static_private, ephemeral_private=None, static_public=None) -> "NoiseIK":
        return cls(False, static_private, None, ephemeral_private, static_public=static_public)

    # --- public state -------------------------------------------------------
    @property
    def local_static_public(self) -> bytes:
        return self._s_pub

    @property
    def local_ephemeral_public(self) -> bytes | None:
        """Our ephemeral public key once it has been written, else None."""
        return self._e_pub

    def _make_ephemeral(self) -> bytes:
        if self._e is None:
            self._e = bytearray(crypto.x25519_private())
        self._e_pub = crypto.x25519_public(bytes(self._e))
        return self._e_pub

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key (the responder learns it from message 1)."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """h after the last message; only defined once the handshake is complete."""
        if self._handshake_hash is None:
            raise HandshakeError("handshake not complete")
        return self._handshake_hash

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise HandshakeError("out of order: %s" % self.state.value)

    # --- messages -----------------------------------------------------------
    def write_message(self, payload: bytes = b"") -> bytes:
        """Write the next message (1 for the initiator, 2 for the responder).

        A failure after the order check (e.g. a low-order remote static key)
        clears the handshake for good.
        """
        self._expect(State.INITIATOR_WRITE_1 if self.is_initiator else State.RESPONDER_WRITE_2)
        ss = self._ss
        try:
            e_pub = self._make_ephemeral()
            out = [e_pub]
            ss.mix_hash(e_pub)                       # token e
            if self.is_initiator:
                # -> e, es, s, ss
                ss.mix_key(dh(self._e, self._rs))   # es
                out.append(ss.encrypt_and_hash(self._s_pub))   # s
                ss.mix_key(dh(self._s, self._rs))   # ss
            else:
                # <- e, ee, se
                ss.mix_key(dh(self._e, self._re))   # ee
                ss.mix_key(dh(self._e, self._rs))   # se (responder side)
            out.append(ss.encrypt_and_hash(payload))
        except BaseException:
            self.clear()
            raise
        if self.is_initiator:
            self.state = State.INITIATOR_READ_2
        else:
            self._finish()
        return b"".join(out)

    def read_message(self, message) -> bytes:
        """Read the next message and return its payload, or raise HandshakeError.

        On failure the handshake is left unchanged.
        """
        message = bytes(message)
        work = self._ss.copy()
        try:
            if self.is_initiator:
                self._expect(State.INITIATOR_READ_2)
                if len(message) < MESSAGE2_OVERHEAD:
                    raise HandshakeError("handshake message 2 too short")
                # <- e, ee, se
                re = message[:DHLEN]
                work.mix_hash(re)                     # e
                work.mix_key(dh(self._e, re))        # ee
                work.mix_key(dh(self._s, re))        # se (initiator side)
                payload = work.decrypt_and_hash(message[DHLEN:])
                rs = self._rs
            else:
                self._expect(State.RESPONDER_READ_1)
                if len(message) < MESSAGE1_OVERHEAD:
                    raise HandshakeError("handshake message 1 too short")
                # -> e, es, s, ss
                re = message[:DHLEN]
                work.mix_hash(re)                     # e
                work.mix_key(dh(self._s, re))        # es (responder side)
                enc_s = message[DHLEN:DHLEN + DHLEN + TAGLEN]
                rs = work.decrypt_and_hash(enc_s)     # s
                work.mix_key(dh(self._s, rs))        # ss
                payload = work.decrypt_and_hash(message[DHLEN + DHLEN + TAGLEN:])
        except BaseException:
            work.clear()
            raise
        self._ss.clear()
        self._ss = work
        self._re = re
        self._rs = rs
        if self.is_initiator:
            self._finish()
        else:
            self.state = State.RESPONDER_WRITE_2
        return payload

    def _finish(self) -> None:
        self._handshake_hash = bytes(self._ss.h)
        wipe(self._e)
        self.state = State.SPLIT

    def split(self) -> tuple[bytearray, bytearray]:
        """Return (send_key, recv_key) for this side, then clear the secrets.

        The initiator sends with Split()'s first key and receives with the
        second; the responder the other way round.  Callable once.
        """
        self._expect(State.SPLIT)
        k1, k2 = self._ss.split()
        self.clear()
        self.state = State.DONE
        return (k1, k2) if self.is_initiator else (k2, k1)

    def clear(self) -> None:
        """Zero every secret this object holds (also on abandon)."""
        self._ss.clear()
        wipe(self._e)
        wipe(self._s)
        self.state = State.DONE
