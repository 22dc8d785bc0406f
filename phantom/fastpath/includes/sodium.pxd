# libsodium entry points the fast path calls, as function-pointer types.
# The addresses come from cffi (phantom.crypto.libsodium_symbol_address) so the
# extension uses PyNaCl's bundled libsodium without linking against it.

cdef extern from *:
    """
    typedef int (*phantom_secretbox_fn)(unsigned char *c, const unsigned char *m,
                                        unsigned long long mlen, const unsigned char *n,
                                        const unsigned char *k);
    typedef void (*phantom_memzero_fn)(void *pnt, size_t len);
    typedef int (*phantom_aead_encrypt_fn)(unsigned char *c, unsigned long long *clen_p,
                                           const unsigned char *m, unsigned long long mlen,
                                           const unsigned char *ad, unsigned long long adlen,
                                           const unsigned char *nsec, const unsigned char *npub,
                                           const unsigned char *k);
    typedef int (*phantom_aead_decrypt_fn)(unsigned char *m, unsigned long long *mlen_p,
                                           unsigned char *nsec, const unsigned char *c,
                                           unsigned long long clen,
                                           const unsigned char *ad, unsigned long long adlen,
                                           const unsigned char *npub, const unsigned char *k);
    """
    ctypedef int (*secretbox_fn "phantom_secretbox_fn")(
        unsigned char *c, const unsigned char *m, unsigned long long mlen,
        const unsigned char *n, const unsigned char *k) noexcept nogil
    ctypedef void (*memzero_fn "phantom_memzero_fn")(void *pnt, size_t len) noexcept nogil
    # crypto_aead_chacha20poly1305_ietf_encrypt / _decrypt (WireGuard transport data)
    ctypedef int (*aead_encrypt_fn "phantom_aead_encrypt_fn")(
        unsigned char *c, unsigned long long *clen_p, const unsigned char *m,
        unsigned long long mlen, const unsigned char *ad, unsigned long long adlen,
        const unsigned char *nsec, const unsigned char *npub, const unsigned char *k) noexcept nogil
    ctypedef int (*aead_decrypt_fn "phantom_aead_decrypt_fn")(
        unsigned char *m, unsigned long long *mlen_p, unsigned char *nsec,
        const unsigned char *c, unsigned long long clen, const unsigned char *ad,
        unsigned long long adlen, const unsigned char *npub, const unsigned char *k) noexcept nogil
