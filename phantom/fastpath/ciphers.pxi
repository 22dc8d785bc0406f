# ciphers.pxi: the transport ciphers, per packet and in place: secretbox and
# AEGIS-256 (Phantom sessions), ChaCha20-Poly1305 from libsodium or OpenSSL
# (WireGuard sessions), and the policy that picks ChaCha20-Poly1305's implementation.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# WireGuard packets with a (padded) plaintext of at least this many bytes use
# OpenSSL's ChaCha20-Poly1305, smaller ones libsodium's; -1: libsodium only.
# Set by dataplane/ciphers.set_chacha_policy (a plain int: a worker reading it
# while it changes uses one implementation or the other, both correct).
cdef Py_ssize_t _chacha_openssl_from = -1


def set_chacha_openssl_from(Py_ssize_t nbytes):
    """OpenSSL for WireGuard packets of at least ``nbytes``; -1: libsodium only."""
    global _chacha_openssl_from
    if nbytes >= 0 and not phantom_ossl_ready():
        raise ValueError("libcrypto is not available")
    _chacha_openssl_from = nbytes


def chacha_openssl_from():
    return _chacha_openssl_from


def chacha_openssl_ready():
    """True when libcrypto's ChaCha20-Poly1305 is bound."""
    return bool(phantom_ossl_ready())


cdef inline void _nonce(unsigned char *n, uint64_t counter) noexcept nogil:
    cdef int i
    memset(n, 0, FP_NONCE_SIZE)
    for i in range(8):
        n[i] = (counter >> (8 * i)) & 0xff


cdef inline void _put_header(unsigned char *p, uint32_t idx, uint64_t counter) noexcept nogil:
    """wire.TRANSPORT_HEADER: type 4 | 3 zero bytes | receiver_index u32le | counter u64le."""
    cdef int i
    p[0] = MSG_TRANSPORT
    p[1] = 0
    p[2] = 0
    p[3] = 0
    for i in range(4):
        p[4 + i] = (idx >> (8 * i)) & 0xff
    for i in range(8):
        p[8 + i] = (counter >> (8 * i)) & 0xff


# --- secretbox, in place -----------------------------------------------------------
cdef inline int _seal_packet(unsigned char *buf, size_t length, uint32_t remote_index,
                             uint64_t counter, const unsigned char *key) noexcept nogil:
    """Header at buf[0:16], MAC at buf[16:32], plaintext at buf[32:32+length] is
    encrypted in place.  Returns libsodium's result (0 = sealed)."""
    cdef unsigned char n[24]
    _put_header(buf, remote_index, counter)
    _nonce(n, counter)
    return _seal_fn(buf + FP_HEADER_SIZE, buf + FP_PAYLOAD_OFFSET, length, n, key)


cdef inline int _open_packet(unsigned char *buf, size_t wire_len, uint64_t counter,
                             const unsigned char *key) noexcept nogil:
    """MAC||ciphertext at buf[16:wire_len] becomes plaintext at buf[32:wire_len]."""
    cdef unsigned char n[24]
    _nonce(n, counter)
    return _open_fn(buf + FP_PAYLOAD_OFFSET, buf + FP_HEADER_SIZE, wire_len - FP_HEADER_SIZE, n, key)


# --- ChaCha20-Poly1305 (WireGuard), in place ---------------------------------------------
cdef inline size_t _wg_padded(size_t n, size_t mtu) noexcept nogil:
    """wire.wireguard.padded_length: up to a multiple of 16, never past the MTU."""
    cdef size_t last = n, padded
    if mtu and last > mtu:
        last = last % mtu
    padded = (last + 15) & ~(<size_t>15)
    if mtu and padded > mtu:
        padded = mtu
    return n + padded - last


cdef inline void _aead_nonce(unsigned char *n, uint64_t counter) noexcept nogil:
    """4 zero bytes, then the counter u64 little-endian."""
    cdef int i
    n[0] = 0
    n[1] = 0
    n[2] = 0
    n[3] = 0
    for i in range(8):
        n[4 + i] = (counter >> (8 * i)) & 0xff


cdef inline int _chacha_seal_raw(unsigned char *m, size_t mlen, const unsigned char *n,
                                 const unsigned char *key, bint openssl) noexcept nogil:
    """IETF ChaCha20-Poly1305 (no AD) of m[0:mlen] in place, the tag at m + mlen:
    OpenSSL's when ``openssl`` (and this thread has its contexts), else libsodium's."""
    cdef unsigned long long clen = 0
    cdef int rc
    if openssl:
        rc = phantom_ossl_seal(m, mlen, n, key, m + mlen)
        if rc != -2:
            return rc
    return _chacha_seal_fn(m, &clen, m, mlen, NULL, 0, NULL, n, key)


cdef inline int _chacha_open_raw(unsigned char *c, size_t clen, const unsigned char *n,
                                 const unsigned char *key, bint openssl) noexcept nogil:
    """Open c[0:clen] (ciphertext, then the 16-byte tag) in place."""
    cdef unsigned long long mlen = 0
    cdef int rc
    if clen < FP_MAC_SIZE:
        return -1
    if openssl:
        rc = phantom_ossl_open(c, clen - FP_MAC_SIZE, c + clen - FP_MAC_SIZE, n, key)
        if rc != -2:
            return rc
    return _chacha_open_fn(c, &mlen, NULL, c, clen, NULL, 0, n, key)


cdef inline bint _use_openssl(size_t plaintext_len) noexcept nogil:
    return _chacha_openssl_from >= 0 and plaintext_len >= <size_t>_chacha_openssl_from


cdef inline int _seal_chacha(unsigned char *buf, size_t length, size_t mtu, uint32_t remote_index,
                             uint64_t counter, const unsigned char *key, size_t *tail) noexcept nogil:
    """Plaintext at buf[32:32+length] is zero-padded and encrypted in place; the
    header goes to buf[16:32] and the tag after the padded ciphertext, so the
    datagram is buf[16 : 32 + padded + 16].  ``tail`` gets padded - length + 16."""
    cdef unsigned char n[12]
    cdef size_t padded = _wg_padded(length, mtu)
    if padded > length:
        memset(buf + FP_PAYLOAD_OFFSET + length, 0, padded - length)
    _put_header(buf + FP_HEADER_SIZE, remote_index, counter)
    _aead_nonce(n, counter)
    tail[0] = padded - length + FP_MAC_SIZE
    return _chacha_seal_raw(buf + FP_PAYLOAD_OFFSET, padded, n, key, _use_openssl(padded))


cdef inline int _open_chacha(unsigned char *buf, size_t wire_len, uint64_t counter,
                             const unsigned char *key) noexcept nogil:
    """Ciphertext||tag at buf[16:wire_len] becomes the (padded) plaintext at
    buf[16 : wire_len - 16]."""
    cdef unsigned char n[12]
    if wire_len < FP_PAYLOAD_OFFSET:
        return -1
    _aead_nonce(n, counter)
    return _chacha_open_raw(buf + FP_HEADER_SIZE, wire_len - FP_HEADER_SIZE, n, key,
                            _use_openssl(wire_len - FP_PAYLOAD_OFFSET))


# --- AEGIS-256 (Phantom, suite aegis256), in place ------------------------------------------
cdef inline void _aegis_nonce(unsigned char *n, uint64_t counter) noexcept nogil:
    """wire.aegis256_nonce: the counter u64 little-endian, then 24 zero bytes."""
    cdef int i
    memset(n, 0, FP_AEGIS_NONCE_SIZE)
    for i in range(8):
        n[i] = (counter >> (8 * i)) & 0xff


cdef inline int _seal_aegis(unsigned char *buf, size_t length, uint32_t remote_index,
                            uint64_t counter, const unsigned char *key) noexcept nogil:
    """Plaintext at buf[32:32+length] is encrypted in place, the 32-byte tag
    right after it, the header at buf[16:32]: the datagram is
    buf[16 : 32 + length + 32]."""
    cdef unsigned char n[32]
    cdef unsigned long long clen = 0
    _put_header(buf + FP_HEADER_SIZE, remote_index, counter)
    _aegis_nonce(n, counter)
    return _aegis_seal_fn(buf + FP_PAYLOAD_OFFSET, &clen, buf + FP_PAYLOAD_OFFSET, length,
                          NULL, 0, NULL, n, key)


cdef inline int _open_aegis(unsigned char *buf, size_t wire_len, uint64_t counter,
                            const unsigned char *key) noexcept nogil:
    """Ciphertext||tag at buf[16:wire_len] becomes the plaintext at
    buf[16 : wire_len - 32]."""
    cdef unsigned char n[32]
    cdef unsigned long long mlen = 0
    if wire_len < FP_HEADER_SIZE + FP_AEGIS_TAG:
        return -1
    _aegis_nonce(n, counter)
    return _aegis_open_fn(buf + FP_HEADER_SIZE, &mlen, NULL, buf + FP_HEADER_SIZE,
                          wire_len - FP_HEADER_SIZE, NULL, 0, n, key)


cdef inline int _seal_aegis_relay(unsigned char *buf, size_t length, uint32_t remote_index,
                                  uint64_t counter, const unsigned char *key) noexcept nogil:
    """A type-7 relay frame: as _seal_aegis, type byte 7 and the 16-byte header
    (buf[16:32]) as associated data: the datagram is buf[16 : 32 + length + 32]."""
    cdef unsigned char n[32]
    cdef unsigned long long clen = 0
    _put_header(buf + FP_HEADER_SIZE, remote_index, counter)
    buf[FP_HEADER_SIZE] = MSG_RELAY_AEGIS
    _aegis_nonce(n, counter)
    return _aegis_seal_fn(buf + FP_PAYLOAD_OFFSET, &clen, buf + FP_PAYLOAD_OFFSET, length,
                          buf + FP_HEADER_SIZE, FP_HEADER_SIZE, NULL, n, key)


cdef inline int _open_aegis_relay(unsigned char *buf, size_t wire_len, uint64_t counter,
                                  const unsigned char *key) noexcept nogil:
    """A type-7 relay frame buf[0:wire_len] (header = associated data): the
    plaintext lands at buf[16 : wire_len - 32]."""
    cdef unsigned char n[32]
    cdef unsigned long long mlen = 0
    if wire_len < FP_HEADER_SIZE + FP_AEGIS_TAG:
        return -1
    _aegis_nonce(n, counter)
    return _aegis_open_fn(buf + FP_HEADER_SIZE, &mlen, NULL, buf + FP_HEADER_SIZE,
                          wire_len - FP_HEADER_SIZE, buf, FP_HEADER_SIZE, n, key)


cdef inline bint _phantom_cipher(int cipher) noexcept nogil:
    """A Phantom session (either suite), not a WireGuard one."""
    return cipher == CIPHER_SECRETBOX or cipher == CIPHER_AEGIS


def _check_key(const unsigned char[::1] key):
    if key.shape[0] != FP_KEY_SIZE:
        raise ValueError("key must be %d bytes" % FP_KEY_SIZE)


# --- round trips timed in C: how dataplane/ciphers.py picks ChaCha20-Poly1305's implementation
cdef double _cipher_round_trips(int which, unsigned char *buf, size_t size, Py_ssize_t iterations,
                                int *rc) noexcept nogil:
    """Seconds for ``iterations`` seal+open round trips of ``size`` bytes in
    ``buf`` (FP_PAYLOAD_OFFSET + size + FP_TAIL_ROOM bytes), in place, with the
    per-packet functions above (header, nonce from the counter): ``which`` 0
    secretbox, 1 AEGIS-256, 2 ChaCha20-Poly1305 from libsodium, 3 from
    OpenSSL (the caller checks that it is bound).  ``rc`` gets the OR of every
    result: 0 when every packet sealed and opened."""
    cdef unsigned char key[32]
    cdef unsigned char n[12]
    cdef Py_ssize_t i
    cdef int r = 0
    cdef double t0, t1
    memset(key, 7, 32)
    t0 = _now()
    for i in range(iterations):
        if which == 0:
            r |= _seal_packet(buf, size, 1, i, key)
            r |= _open_packet(buf, FP_PAYLOAD_OFFSET + size, i, key)
        elif which == 1:
            r |= _seal_aegis(buf, size, 1, i, key)
            r |= _open_aegis(buf + FP_HEADER_SIZE, FP_HEADER_SIZE + size + FP_AEGIS_TAG, i, key)
        else:
            _aead_nonce(n, i)
            r |= _chacha_seal_raw(buf + FP_PAYLOAD_OFFSET, size, n, key, which == 3)
            r |= _chacha_open_raw(buf + FP_PAYLOAD_OFFSET, size + FP_MAC_SIZE, n, key, which == 3)
    t1 = _now()
    phantom_ossl_wipe()
    rc[0] = r
    return t1 - t0


def time_chacha(str impl, Py_ssize_t size, Py_ssize_t iterations):
    """Seconds for ``iterations`` seal+open round trips of a ``size``-byte
    WireGuard payload with ChaCha20-Poly1305 from ``impl`` ("libsodium" or
    "openssl"), timed in C without the GIL: dataplane/ciphers.py measures
    both at start-up to decide its policy."""
    cdef int which, rc = 0
    cdef unsigned char *buf
    cdef double seconds
    if impl == "libsodium":
        which = 2
    elif impl == "openssl":
        which = 3
    else:
        raise ValueError("impl must be 'libsodium' or 'openssl'")
    if which == 3 and not phantom_ossl_ready():
        raise ValueError("libcrypto is not available")
    buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + size + FP_TAIL_ROOM, 1)
    if buf == NULL:
        raise MemoryError()
    with nogil:
        seconds = _cipher_round_trips(which, buf, size, iterations, &rc)
    free(buf)
    if rc != 0:
        raise RuntimeError("chacha20poly1305-%s round trip failed" % impl)
    return seconds
