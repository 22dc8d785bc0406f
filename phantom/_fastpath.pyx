# cython: language_level=3
"""Phantom's Cython data path (``phantomd --fast``).  Grows in issue 5."""

from libc.stdint cimport uintptr_t

ctypedef int (*secretbox_fn)(unsigned char *c, const unsigned char *m,
                             unsigned long long mlen, const unsigned char *n,
                             const unsigned char *k) noexcept nogil

cdef secretbox_fn _seal = NULL


def bind(uintptr_t seal_addr):
    """Bind libsodium's crypto_secretbox_easy (address from cffi)."""
    global _seal
    _seal = <secretbox_fn>seal_addr


def seal_into(const unsigned char[::1] key, unsigned long long counter,
              unsigned char[::1] buf, Py_ssize_t offset, Py_ssize_t length):
    """Encrypt buf[offset:offset+length] in place; MAC lands at offset-16."""
    cdef unsigned char nonce[24]
    cdef int i, rc
    if _seal == NULL:
        raise RuntimeError("libsodium not bound")
    if offset < 16 or offset + length > buf.shape[0] or key.shape[0] != 32:
        raise ValueError("bad buffer geometry")
    for i in range(24):
        nonce[i] = 0
    for i in range(8):
        nonce[i] = (counter >> (8 * i)) & 0xff
    with nogil:
        rc = _seal(&buf[offset - 16], &buf[offset], length, nonce, &key[0])
    if rc != 0:
        raise RuntimeError("secretbox failed")
