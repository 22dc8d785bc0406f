"""libsodium primitives, reached through PyNaCl's bundled library.

Shared by both planes.  Nothing here is a home-made primitive: X25519,
BLAKE2b, ChaCha20-Poly1305, XChaCha20-Poly1305, XSalsa20-Poly1305
(secretbox) and AEGIS-256 are libsodium calls; HMAC is the standard
construction over libsodium's BLAKE2b, as the Noise spec defines it (the
handshakes' HKDF over it is :mod:`phantom.protocols.kdf`), and
:func:`kdf_derive` is libsodium's crypto_kdf construction (keyed BLAKE2b with
the subkey id as salt and the context as personalisation).

The data-path calls (:func:`secretbox_seal_into`, :func:`secretbox_open_into`)
go straight to libsodium through cffi so that the reference path can
encrypt in place without extra copies.
"""

from __future__ import annotations

import functools
import hmac as _hmac
from typing import Callable

import nacl.bindings as _nb
from nacl import _sodium

from .wire import aegis256_nonce, transport_nonce

ffi = _sodium.ffi
lib = _sodium.lib

KEY_SIZE = 32
HASH_SIZE = 64          # BLAKE2b-512, Noise HASHLEN
BLAKE2B_BLOCK = 128     # Noise BLOCKLEN for BLAKE2b
MAC_SIZE = 16
SECRETBOX_MAC = 16


class CryptoError(Exception):
    """Authentication failed or an input was rejected by libsodium."""


def random_bytes(n: int) -> bytes:
    return bytes(ffi.buffer(_rand(n)))


def _rand(n: int):
    buf = ffi.new("unsigned char[]", n)
    lib.randombytes(buf, n)
    return buf


def random_u32() -> int:
    return int.from_bytes(random_bytes(4), "little")


# --- X25519 -------------------------------------------------------------------
def x25519_private() -> bytes:
    """A fresh X25519 private key (clamped by libsodium on use)."""
    return bytes(ffi.buffer(_rand(KEY_SIZE)))


def x25519_public(private: bytes) -> bytes:
    return _nb.crypto_scalarmult_base(bytes(private))


def x25519(private: bytes, public: bytes) -> bytes:
    """Diffie-Hellman; raises CryptoError for low-order public keys (all-zero output)."""
    try:
        out = _nb.crypto_scalarmult(bytes(private), bytes(public))
    except Exception as exc:  # libsodium refuses small-order points
        raise CryptoError("invalid public key") from exc
    if not any(out):
        raise CryptoError("invalid public key")
    return out


# Curve25519 points of small order (1, 2, 4 or 8), as libsodium lists them for
# its own check: 0, 1, two points of order 8, p - 1, p and p + 1.  X25519
# ignores the top bit of the last byte, so each has a second encoding.
_SMALL_ORDER = tuple(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
))
_PROBE_SCALAR = bytes(range(1, 33))   # any scalar: X25519 clamps it to a multiple of 8


def is_small_order(public: bytes) -> bool:
    """True for an X25519 public key that no shared secret with is secret.

    Remembered for the last 16,384 keys (a pure function of public data): a
    hub loading 10,000 peers checks each key twice (config, engine), and the
    trial Diffie-Hellman is ~50 us.

    Two checks: the known small-order encodings (top bit ignored, as X25519
    does), and a trial Diffie-Hellman with a fixed scalar -- libsodium's
    crypto_scalarmult refuses small-order points, and every clamped scalar
    is a multiple of 8, so any point of order 1, 2, 4 or 8 gives all zeros.
    """
    return _is_small_order(bytes(public))


@functools.lru_cache(maxsize=16384)
def _is_small_order(public: bytes) -> bool:
    if len(public) != KEY_SIZE:
        return True
    masked = public[:31] + bytes([public[31] & 0x7F])
    if masked in _SMALL_ORDER:
        return True
    try:
        out = _nb.crypto_scalarmult(_PROBE_SCALAR, public)
    except Exception:
        return True
    return not any(out)


# --- hashing ------------------------------------------------------------------
def blake2b(data: bytes, digest_size: int = HASH_SIZE, key: bytes = b"") -> bytes:
    """libsodium's BLAKE2b, called through cffi directly: PyNaCl's wrapper
    checks its arguments in Python and cost ~30 us a call, most of a
    handshake's hashing (issue #15, bench/bench_handshake.py)."""
    data = bytes(data)
    key = bytes(key)
    if not 1 <= digest_size <= 64 or len(key) > 64:      # PyNaCl raises the right error
        return _nb.crypto_generichash_blake2b_salt_personal(data, digest_size=digest_size, key=key)
    out = ffi.new("unsigned char[]", digest_size)
    rc = lib.crypto_generichash_blake2b_salt_personal(out, digest_size, data, len(data),
                                                      key if key else ffi.NULL, len(key),
                                                      ffi.NULL, ffi.NULL)
    if rc != 0:
        raise CryptoError("BLAKE2b failed")
    return bytes(ffi.buffer(out, digest_size))


# RFC 2104 pads: the key XORed with 0x36 / 0x5c byte by byte, as a translation
# table (C speed; a Python loop over 128 bytes cost ~50 us an HMAC).
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def hmac_blake2b(key: bytes, data: bytes) -> bytes:
    """HMAC (RFC 2104) over libsodium's BLAKE2b-512, block size 128."""
    key = bytes(key)
    if len(key) > BLAKE2B_BLOCK:
        key = blake2b(key)
    key = key.ljust(BLAKE2B_BLOCK, b"\x00")
    inner = blake2b(key.translate(_IPAD) + bytes(data))
    return blake2b(key.translate(_OPAD) + inner)


# --- AEADs for the handshake and cookies ----------------------------------------
def _ietf_nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, ad: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF) with Noise's nonce encoding."""
    return _nb.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(ad), _ietf_nonce(counter), bytes(key))


def _aead_open(decrypt: Callable, key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes,
               what: str) -> bytes:
    """``decrypt`` (a libsodium AEAD's) or CryptoError saying ``what`` failed."""
    try:
        return decrypt(bytes(ciphertext), bytes(ad), nonce, bytes(key))
    except Exception as exc:
        raise CryptoError(what) from exc


def aead_decrypt(key: bytes, counter: int, ad: bytes, ciphertext: bytes) -> bytes:
    return _aead_open(_nb.crypto_aead_chacha20poly1305_ietf_decrypt, key, _ietf_nonce(counter),
                      ad, ciphertext, "handshake decryption failed")


def xaead_encrypt(key: bytes, nonce: bytes, ad: bytes, plaintext: bytes) -> bytes:
    """XChaCha20-Poly1305, used for cookie replies."""
    return _nb.crypto_aead_xchacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(ad), bytes(nonce), bytes(key))


def xaead_decrypt(key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
    return _aead_open(_nb.crypto_aead_xchacha20poly1305_ietf_decrypt, key, bytes(nonce), ad,
                      ciphertext, "cookie decryption failed")


# --- secretbox for transport data -------------------------------------------------
def secretbox_seal(key: bytes, counter: int, plaintext: bytes) -> bytes:
    """Return mac || ciphertext for ``plaintext`` under the transport nonce."""
    n = len(plaintext)
    out = ffi.new("unsigned char[]", n + SECRETBOX_MAC)
    rc = lib.crypto_secretbox_easy(out, ffi.from_buffer(plaintext), n,
                                   transport_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        raise CryptoError("secretbox seal failed")
    return bytes(ffi.buffer(out, n + SECRETBOX_MAC))


def secretbox_seal_into(key, counter: int, buf: bytearray, offset: int, length: int) -> None:
    """Encrypt in place: plaintext at buf[offset:offset+length] becomes
    mac at buf[offset-16:offset] and ciphertext at buf[offset:offset+length]."""
    p = ffi.from_buffer(buf)
    rc = lib.crypto_secretbox_easy(p + (offset - SECRETBOX_MAC), p + offset, length,
                                   transport_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        raise CryptoError("secretbox seal failed")


def secretbox_open(key: bytes, counter: int, box) -> bytes:
    """Open mac || ciphertext; raise CryptoError when forged or corrupted."""
    n = len(box) - SECRETBOX_MAC
    if n < 0:
        raise CryptoError("truncated secretbox")
    out = ffi.new("unsigned char[]", max(n, 1))
    rc = lib.crypto_secretbox_open_easy(out, ffi.from_buffer(box), len(box),
                                        transport_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        raise CryptoError("secretbox authentication failed")
    return bytes(ffi.buffer(out, n))


def secretbox_open_into(key, counter: int, buf: bytearray, offset: int, length: int) -> bool:
    """Decrypt in place: mac||ciphertext at buf[offset:offset+length] becomes
    plaintext at buf[offset+16:offset+length].  Returns False when forged."""
    if length < SECRETBOX_MAC:
        return False
    p = ffi.from_buffer(buf)
    rc = lib.crypto_secretbox_open_easy(p + offset + SECRETBOX_MAC, p + offset, length,
                                        transport_nonce(counter), ffi.from_buffer(key))
    return rc == 0


def secretbox_seal_nonce(key, nonce: bytes, plaintext: bytes) -> bytes:
    """mac || ciphertext under an explicit 24-byte nonce (peer-control messages,
    whose nonces are kept apart from the transport nonces by wire.control_nonce)."""
    n = len(plaintext)
    out = ffi.new("unsigned char[]", n + SECRETBOX_MAC)
    rc = lib.crypto_secretbox_easy(out, ffi.from_buffer(plaintext), n, bytes(nonce), ffi.from_buffer(key))
    if rc != 0:
        raise CryptoError("secretbox seal failed")
    return bytes(ffi.buffer(out, n + SECRETBOX_MAC))


def secretbox_open_nonce(key, nonce: bytes, box) -> bytes:
    """Open mac || ciphertext under an explicit nonce; CryptoError when forged."""
    n = len(box) - SECRETBOX_MAC
    if n < 0:
        raise CryptoError("truncated secretbox")
    out = ffi.new("unsigned char[]", max(n, 1))
    rc = lib.crypto_secretbox_open_easy(out, ffi.from_buffer(box), len(box), bytes(nonce),
                                        ffi.from_buffer(key))
    if rc != 0:
        raise CryptoError("secretbox authentication failed")
    return bytes(ffi.buffer(out, n))


# --- AEGIS-256 for transport data (Phantom sessions that negotiate it) ---------------
AEGIS256_TAG = 32          # crypto_aead_aegis256_ABYTES
AEGIS256_KEY = 32


@functools.lru_cache(maxsize=None)
def _runtime_lib():
    """libsodium's runtime CPU feature checks, which PyNaCl's cffi module does
    not declare, from the same library (PyNaCl's _sodium extension exports
    libsodium's symbols; dlopen of a loaded object returns that object, so
    this is the same, initialised libsodium); None if it cannot be opened.
    A check missing from this build reads as False (then: no AES hardware
    assumed).

    Through ctypes, made on first use: a cffi ``cdef`` here would import
    pycparser and parse C in every process that imports this module (about
    25 ms of CPU per ``phantom`` command)."""
    import ctypes
    try:
        return ctypes.CDLL(_sodium.__file__)
    except OSError:
        return None


def _runtime(name: str) -> bool:
    import ctypes
    rt = _runtime_lib()
    if rt is None:
        return False
    try:
        fn = getattr(rt, name)          # int sodium_runtime_has_*(void)
    except AttributeError:
        return False
    fn.restype, fn.argtypes = ctypes.c_int, ()
    return bool(fn())


def cpu_features() -> dict:
    """What libsodium's runtime CPU checks report (sodium_init ran when
    nacl.bindings was imported)."""
    return {"aesni": _runtime("sodium_runtime_has_aesni"), "avx": _runtime("sodium_runtime_has_avx"),
            "pclmul": _runtime("sodium_runtime_has_pclmul"),
            "armcrypto": _runtime("sodium_runtime_has_armcrypto")}


def aes_hardware() -> bool:
    """True when libsodium runs AEGIS-256 on AES instructions: the rule of
    libsodium's own implementation choice (crypto_aead_aegis256's
    pick_best_implementation): AES-NI and AVX on x86, the ARM crypto
    extensions on ARM.  Without them libsodium's AEGIS-256 is its portable
    software version, correct but slower than secretbox."""
    f = cpu_features()
    return (f["aesni"] and f["avx"]) or f["armcrypto"]


def aegis256_available() -> bool:
    """libsodium has crypto_aead_aegis256 (1.0.19 and later)."""
    return hasattr(lib, "crypto_aead_aegis256_encrypt") and lib.crypto_aead_aegis256_abytes() == AEGIS256_TAG


def aegis256_seal_into(key, counter: int, buf: bytearray, offset: int, length: int,
                       ad: bytes = b"") -> None:
    """Encrypt in place: plaintext at buf[offset:offset+length] becomes
    ciphertext there and the 32-byte tag right after it; ``ad``: associated
    data (authenticated, not sent)."""
    p = ffi.from_buffer(buf)
    clen = ffi.new("unsigned long long *")
    rc = lib.crypto_aead_aegis256_encrypt(p + offset, clen, p + offset, length, ad, len(ad), ffi.NULL,
                                          aegis256_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        raise CryptoError("aegis256 seal failed")


def aegis256_open_into(key, counter: int, buf: bytearray, offset: int, length: int,
                       ad: bytes = b"") -> bool:
    """Decrypt in place: ciphertext||tag at buf[offset:offset+length] becomes
    plaintext at buf[offset:offset+length-32].  False when forged (libsodium
    then zeroes the output); ``ad`` as sealed."""
    if length < AEGIS256_TAG:
        return False
    p = ffi.from_buffer(buf)
    mlen = ffi.new("unsigned long long *")
    rc = lib.crypto_aead_aegis256_decrypt(p + offset, mlen, ffi.NULL, p + offset, length, ad, len(ad),
                                          aegis256_nonce(counter), ffi.from_buffer(key))
    return rc == 0


# --- key derivation ---------------------------------------------------------------
KDF_CONTEXT_SIZE = 8


def kdf_derive(key, subkey_id: int, context: bytes, size: int = KEY_SIZE) -> bytearray:
    """libsodium's crypto_kdf_derive_from_key(subkey, size, subkey_id, context, key):
    BLAKE2b keyed with the 32-byte ``key``, salt = subkey_id u64 little-endian
    and 8 zero bytes, personal = the 8-byte context and 8 zero bytes, over no
    message.  (PyNaCl does not declare crypto_kdf; the construction is
    libsodium's own, tests/test_suites.py checks it against the system
    libsodium's crypto_kdf_derive_from_key.)"""
    if len(key) != KEY_SIZE or len(context) != KDF_CONTEXT_SIZE or not 16 <= size <= 64:
        raise ValueError("crypto_kdf: 32-byte key, 8-byte context, 16..64-byte subkey")
    salt = int(subkey_id).to_bytes(8, "little") + bytes(8)
    personal = bytes(context) + bytes(8)
    out = bytearray(size)
    rc = lib.crypto_generichash_blake2b_salt_personal(ffi.from_buffer(out), size, ffi.NULL, 0,
                                                      ffi.from_buffer(bytes(key)), KEY_SIZE,
                                                      salt, personal)
    if rc != 0:
        raise CryptoError("crypto_kdf failed")
    return out


# --- hygiene --------------------------------------------------------------------
def memzero(buf: bytearray) -> None:
    """Zero a key buffer with sodium_memzero (not optimised away)."""
    if isinstance(buf, bytearray) and len(buf):
        lib.sodium_memzero(ffi.from_buffer(buf), len(buf))


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return _hmac.compare_digest(bytes(a), bytes(b))


def libsodium_symbol_address(name: str) -> int:
    """Address of a libsodium function, for the Cython fast path to call nogil."""
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
