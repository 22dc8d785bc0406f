"""OpenSSL's libcrypto ChaCha20-Poly1305 (EVP), through cffi in ABI mode.

WireGuard fixes its transport cipher to IETF ChaCha20-Poly1305; libsodium's
is portable C, OpenSSL 3's has AVX2/AVX-512 assembly and is several times
faster on large packets (bench/bench_crypto.py).  Both produce the same bytes
(RFC 8439; tests/test_ciphers.py compares them over random keys, counters and
lengths), so a data path may use either for any packet.  Which one it uses
is :func:`phantom.dataplane.ciphers.chacha_policy`'s decision.

This module only binds the library: it is found as ``libcrypto.so.3``
(Debian 12's libssl3, installed with every Debian system); when it is absent
:func:`available` is False and everything uses libsodium.  Shared by both
data paths: the reference path calls :func:`seal_into` / :func:`open_into`,
the fast path takes the functions' addresses (:func:`symbol_addresses`) and
calls them itself without the GIL, with one EVP context pair per thread.

An EVP_CIPHER_CTX is not thread-safe and costs an allocation to make, so
each thread gets its own pair (encrypt, decrypt), made at its first use and
kept (``threading.local`` here, a pthread key in the fast path); no packet
allocates anything.  A context keeps the last key it was given, so after
each use it is re-initialised with an all-zero key and nonce (:func:`wipe`).
"""

from __future__ import annotations

import threading
from typing import Optional

import cffi

LIBRARY_NAMES = ("libcrypto.so.3",)
TAG_SIZE = 16
NONCE_SIZE = 12
KEY_SIZE = 32
# include/openssl/evp.h (stable ABI values)
EVP_CTRL_AEAD_GET_TAG = 0x10
EVP_CTRL_AEAD_SET_TAG = 0x11

ffi = cffi.FFI()
ffi.cdef("""
    typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
    typedef struct evp_cipher_st EVP_CIPHER;
    typedef struct engine_st ENGINE;
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void);
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx);
    const EVP_CIPHER *EVP_chacha20_poly1305(void);
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv);
    int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *in, int inl);
    int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl);
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv);
    int EVP_DecryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *in, int inl);
    int EVP_DecryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl);
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr);
    const char *OpenSSL_version(int type);
""")


def _load():
    for name in LIBRARY_NAMES:
        try:
            lib = ffi.dlopen(name)
            lib.EVP_chacha20_poly1305       # the symbols must be there
            lib.EVP_CIPHER_CTX_ctrl
        except (OSError, AttributeError):
            continue
        if lib.EVP_chacha20_poly1305() == ffi.NULL:
            continue
        return lib
    return None


lib = _load()
_ZERO_KEY = bytes(KEY_SIZE)
_ZERO_NONCE = bytes(NONCE_SIZE)
_local = threading.local()
SYMBOLS = ("EVP_CIPHER_CTX_new", "EVP_CIPHER_CTX_free", "EVP_chacha20_poly1305",
            "EVP_EncryptInit_ex", "EVP_EncryptUpdate", "EVP_EncryptFinal_ex",
            "EVP_DecryptInit_ex", "EVP_DecryptUpdate", "EVP_DecryptFinal_ex", "EVP_CIPHER_CTX_ctrl")


class LibcryptoError(Exception):
    """libcrypto refused a call (never a forged packet: that is a False open)."""


def available() -> bool:
    return lib is not None


def version() -> Optional[str]:
    """OpenSSL's version string ("OpenSSL 3.0.19 ..."), None when absent."""
    if lib is None:
        return None
    return ffi.string(lib.OpenSSL_version(0)).decode("ascii", "replace")


def symbol_addresses() -> dict:
    """name -> address of the EVP functions the fast path calls (empty when absent)."""
    if lib is None:
        return {}
    return {name: int(ffi.cast("uintptr_t", getattr(lib, name))) for name in SYMBOLS}


def _contexts():
    """This thread's (encrypt, decrypt) contexts, made at its first call."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        cipher = lib.EVP_chacha20_poly1305()
        enc = ffi.gc(lib.EVP_CIPHER_CTX_new(), lib.EVP_CIPHER_CTX_free)
        dec = ffi.gc(lib.EVP_CIPHER_CTX_new(), lib.EVP_CIPHER_CTX_free)
        if enc == ffi.NULL or dec == ffi.NULL:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        if lib.EVP_EncryptInit_ex(enc, cipher, ffi.NULL, _ZERO_KEY, _ZERO_NONCE) != 1 or \
                lib.EVP_DecryptInit_ex(dec, cipher, ffi.NULL, _ZERO_KEY, _ZERO_NONCE) != 1:
            raise LibcryptoError("EVP chacha20-poly1305 init failed")
        ctx = _local.ctx = (enc, dec)
    return ctx


def wipe() -> None:
    """Overwrite the key this thread's contexts hold with zeros."""
    ctx = getattr(_local, "ctx", None)
    if ctx is not None:
        lib.EVP_EncryptInit_ex(ctx[0], ffi.NULL, ffi.NULL, _ZERO_KEY, _ZERO_NONCE)
        lib.EVP_DecryptInit_ex(ctx[1], ffi.NULL, ffi.NULL, _ZERO_KEY, _ZERO_NONCE)


def seal_into(key, nonce: bytes, buf: bytearray, offset: int, length: int) -> None:
    """ChaCha20-Poly1305 (no AD) in place: plaintext at buf[offset:offset+length]
    becomes ciphertext there, the 16-byte tag right after it -- what
    libsodium's crypto_aead_chacha20poly1305_ietf_encrypt writes."""
    enc, _ = _contexts()
    p = ffi.from_buffer(buf)
    outl = ffi.new("int *")
    try:
        ok = lib.EVP_EncryptInit_ex(enc, ffi.NULL, ffi.NULL, ffi.from_buffer(key), nonce) == 1
        if ok and length:
            ok = lib.EVP_EncryptUpdate(enc, p + offset, outl, p + offset, length) == 1
        ok = ok and lib.EVP_EncryptFinal_ex(enc, p + offset + length, outl) == 1
        ok = ok and lib.EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, p + offset + length) == 1
    finally:
        wipe()
    if not ok:
        raise LibcryptoError("chacha20-poly1305 seal failed")


def open_into(key, nonce: bytes, buf: bytearray, offset: int, length: int) -> bool:
    """Open ciphertext||tag at buf[offset:offset+length] in place; the plaintext
    is buf[offset:offset+length-16].  False when forged, and then the output
    is zeroed (as libsodium leaves it), so no unauthenticated byte remains."""
    if length < TAG_SIZE:
        return False
    _, dec = _contexts()
    p = ffi.from_buffer(buf)
    outl = ffi.new("int *")
    n = length - TAG_SIZE
    tag = bytes(buf[offset + n:offset + length])
    try:
        ok = lib.EVP_DecryptInit_ex(dec, ffi.NULL, ffi.NULL, ffi.from_buffer(key), nonce) == 1
        ok = ok and lib.EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_AEAD_SET_TAG, TAG_SIZE, tag) == 1
        if ok and n:
            ok = lib.EVP_DecryptUpdate(dec, p + offset, outl, p + offset, n) == 1
        ok = ok and lib.EVP_DecryptFinal_ex(dec, p + offset + n, outl) == 1
    finally:
        wipe()
    if not ok:
        buf[offset:offset + n] = bytes(n)
    return ok
