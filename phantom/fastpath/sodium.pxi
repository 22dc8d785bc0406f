# sodium.pxi: the crypto libraries, bound once at import through cffi:
# libsodium's functions (PyNaCl's copy) and OpenSSL's libcrypto (phantom.libcrypto).
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# --- libsodium, bound once through cffi ---------------------------------------------
cdef secretbox_fn _seal_fn = <secretbox_fn><uintptr_t>_crypto.libsodium_symbol_address("crypto_secretbox_easy")
cdef secretbox_fn _open_fn = <secretbox_fn><uintptr_t>_crypto.libsodium_symbol_address("crypto_secretbox_open_easy")
cdef memzero_fn _memzero_fn = <memzero_fn><uintptr_t>_crypto.libsodium_symbol_address("sodium_memzero")
# WireGuard peers' keypairs (cipher CIPHER_CHACHA): ChaCha20-Poly1305, IETF nonce
cdef aead_encrypt_fn _chacha_seal_fn = <aead_encrypt_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_aead_chacha20poly1305_ietf_encrypt")
cdef aead_decrypt_fn _chacha_open_fn = <aead_decrypt_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_aead_chacha20poly1305_ietf_decrypt")
# Phantom keypairs of suite aegis256 (cipher CIPHER_AEGIS): same signatures as the IETF AEADs
cdef aead_encrypt_fn _aegis_seal_fn = <aead_encrypt_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_aead_aegis256_encrypt")
cdef aead_decrypt_fn _aegis_open_fn = <aead_decrypt_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_aead_aegis256_decrypt")


# --- OpenSSL's libcrypto, bound once through cffi (phantom.libcrypto) --------------------
cdef uintptr_t _ossl_addr[10]


def _ossl_bind():
    """Hand libcrypto's EVP entry points to the C side (includes/libcrypto.pxd)."""
    cdef int i
    addrs = _libcrypto.symbol_addresses()
    if not addrs:
        return False
    for i, name in enumerate(_libcrypto.SYMBOLS):
        _ossl_addr[i] = addrs[name]
    return phantom_ossl_setup(_ossl_addr) == 0


_ossl_bind()


cdef inline void _wipe(void *p, size_t n) noexcept nogil:
    _memzero_fn(p, n)
