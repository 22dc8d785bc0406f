# libsodium entry points the fast path calls, as function-pointer types.
# The addresses come from cffi (phantom.crypto.libsodium_symbol_address) so the
# extension uses PyNaCl's bundled libsodium without linking against it.

cdef extern from *:
    """
    typedef int (*phantom_secretbox_fn)(unsigned char *c, const unsigned char *m,
                                        unsigned long long mlen, const unsigned char *n,
                                        const unsigned char *k);
    typedef void (*phantom_memzero_fn)(void *pnt, size_t len);
    """
    ctypedef int (*secretbox_fn "phantom_secretbox_fn")(
        unsigned char *c, const unsigned char *m, unsigned long long mlen,
        const unsigned char *n, const unsigned char *k) noexcept nogil
    ctypedef void (*memzero_fn "phantom_memzero_fn")(void *pnt, size_t len) noexcept nogil
