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
    p[0] = 4
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


cdef inline bint _phantom_cipher(int cipher) noexcept nogil:
    """A Phantom session (either suite), not a WireGuard one."""
    return cipher == CIPHER_SECRETBOX or cipher == CIPHER_AEGIS


def chacha_seal_packet(const unsigned char[::1] key, uint32_t remote_index, uint64_t counter,
                       const unsigned char[::1] plaintext, size_t mtu=0):
    """A whole WireGuard transport datagram, sealed by the worker's own code
    (tests compare it with dataplane/ciphers.py)."""
    _check_key(key)
    cdef Py_ssize_t n = plaintext.shape[0]
    cdef unsigned char *buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM, 1)
    cdef size_t tail = 0
    cdef int rc
    if buf == NULL:
        raise MemoryError()
    if n:
        memcpy(buf + FP_PAYLOAD_OFFSET, &plaintext[0], n)
    with nogil:
        rc = _seal_chacha(buf, n, mtu, remote_index, counter, &key[0], &tail)
        phantom_ossl_wipe()
    out = PyBytes_FromStringAndSize(<char *>buf + FP_HEADER_SIZE, FP_HEADER_SIZE + n + tail)
    free(buf)
    if rc != 0:
        raise _crypto.CryptoError("chacha20poly1305 seal failed")
    return out


def chacha_open_packet(const unsigned char[::1] key, const unsigned char[::1] datagram):
    """(index, counter, padded plaintext) of a WireGuard datagram, or None when forged."""
    _check_key(key)
    cdef Py_ssize_t n = datagram.shape[0]
    cdef unsigned char *buf
    cdef int rc
    if n < FP_PAYLOAD_OFFSET:
        return None
    buf = <unsigned char *>malloc(n)
    if buf == NULL:
        raise MemoryError()
    memcpy(buf, &datagram[0], n)
    with nogil:
        rc = _open_chacha(buf, n, _le64(buf + 8), &key[0])
        phantom_ossl_wipe()
    out = None
    if rc == 0:
        out = (_le32(buf + 4), _le64(buf + 8),
               PyBytes_FromStringAndSize(<char *>buf + FP_HEADER_SIZE, n - FP_PAYLOAD_OFFSET))
    free(buf)
    return out


def aegis_seal_packet(const unsigned char[::1] key, uint32_t remote_index, uint64_t counter,
                      const unsigned char[::1] plaintext):
    """A whole AEGIS-256 transport datagram, sealed by the worker's own code
    (tests compare it with dataplane/ciphers.py).  ``key``: the derived one."""
    _check_key(key)
    cdef Py_ssize_t n = plaintext.shape[0]
    cdef unsigned char *buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM, 1)
    cdef int rc
    if buf == NULL:
        raise MemoryError()
    if n:
        memcpy(buf + FP_PAYLOAD_OFFSET, &plaintext[0], n)
    with nogil:
        rc = _seal_aegis(buf, n, remote_index, counter, &key[0])
    out = PyBytes_FromStringAndSize(<char *>buf + FP_HEADER_SIZE, FP_HEADER_SIZE + n + FP_AEGIS_TAG)
    _wipe(buf, FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM)
    free(buf)
    if rc != 0:
        raise _crypto.CryptoError("aegis256 seal failed")
    return out


def aegis_open_packet(const unsigned char[::1] key, const unsigned char[::1] datagram):
    """(index, counter, plaintext) of an AEGIS-256 datagram, or None when forged."""
    _check_key(key)
    cdef Py_ssize_t n = datagram.shape[0]
    cdef unsigned char *buf
    cdef int rc
    if n < FP_HEADER_SIZE:
        return None
    buf = <unsigned char *>malloc(n)
    if buf == NULL:
        raise MemoryError()
    memcpy(buf, &datagram[0], n)
    with nogil:
        rc = _open_aegis(buf, n, _le64(buf + 8), &key[0])
    out = None
    if rc == 0:
        out = (_le32(buf + 4), _le64(buf + 8),
               PyBytes_FromStringAndSize(<char *>buf + FP_HEADER_SIZE, n - FP_HEADER_SIZE - FP_AEGIS_TAG))
    _wipe(buf, n)
    free(buf)
    return out


BENCH_CIPHERS = ("secretbox", "aegis256", "chacha20poly1305-libsodium", "chacha20poly1305-openssl")


def bench_cipher(str name, Py_ssize_t size, Py_ssize_t iterations):
    """Seconds for ``iterations`` seal+open round trips of ``size`` bytes with
    one transport cipher, in place, timed in C with the GIL released (the
    fast path's own per-packet functions: header, nonce from the counter).
    ``name``: one of BENCH_CIPHERS."""
    cdef int which = BENCH_CIPHERS.index(name)
    cdef unsigned char *buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + size + FP_TAIL_ROOM, 1)
    cdef unsigned char key[32]
    cdef unsigned char n[12]
    cdef Py_ssize_t i
    cdef int rc = 0
    cdef double t0, t1
    if which == 3 and not phantom_ossl_ready():
        free(buf)
        raise ValueError("libcrypto is not available")
    if buf == NULL:
        raise MemoryError()
    memset(key, 7, 32)
    with nogil:
        t0 = _now()
        for i in range(iterations):
            if which == 0:
                rc |= _seal_packet(buf, size, 1, i, key)
                rc |= _open_packet(buf, FP_PAYLOAD_OFFSET + size, i, key)
            elif which == 1:
                rc |= _seal_aegis(buf, size, 1, i, key)
                rc |= _open_aegis(buf + FP_HEADER_SIZE, FP_HEADER_SIZE + size + FP_AEGIS_TAG, i, key)
            else:
                _aead_nonce(n, i)
                rc |= _chacha_seal_raw(buf + FP_PAYLOAD_OFFSET, size, n, key, which == 3)
                rc |= _chacha_open_raw(buf + FP_PAYLOAD_OFFSET, size + FP_MAC_SIZE, n, key, which == 3)
        t1 = _now()
        phantom_ossl_wipe()
    free(buf)
    if rc != 0:
        raise RuntimeError("%s round trip failed" % name)
    return t1 - t0


cdef inline uint64_t _xorshift(uint64_t *s) noexcept nogil:
    s[0] ^= s[0] << 13
    s[0] ^= s[0] >> 7
    s[0] ^= s[0] << 17
    return s[0]


def chacha_crosscheck(Py_ssize_t iterations, uint64_t seed, Py_ssize_t max_len=3000):
    """Seal ``iterations`` pseudo-random messages (keys, nonces, lengths up to
    ``max_len``) with OpenSSL and with libsodium and open them again, all in
    one nogil loop; returns how many disagreed.  Threads calling this at once
    share nothing but the engine's code: tests use it to show each thread has
    its own EVP contexts."""
    cdef unsigned char *a = <unsigned char *>calloc(max_len + 16, 1)
    cdef unsigned char *b = <unsigned char *>calloc(max_len + 16, 1)
    cdef unsigned char *m = <unsigned char *>calloc(max_len + 16, 1)
    cdef unsigned char key[32]
    cdef unsigned char n[12]
    cdef uint64_t st = seed | 1
    cdef Py_ssize_t i, j, size
    cdef long bad = 0
    if not phantom_ossl_ready():
        free(a)
        free(b)
        free(m)
        raise ValueError("libcrypto is not available")
    if a == NULL or b == NULL or m == NULL:
        free(a)
        free(b)
        free(m)
        raise MemoryError()
    with nogil:
        for i in range(iterations):
            for j in range(32):
                key[j] = <unsigned char>_xorshift(&st)
            for j in range(12):
                n[j] = <unsigned char>_xorshift(&st)
            size = <Py_ssize_t>(_xorshift(&st) % <uint64_t>(max_len + 1))
            for j in range(size):
                m[j] = <unsigned char>_xorshift(&st)
            memcpy(a, m, size)
            memcpy(b, m, size)
            if _chacha_seal_raw(a, size, n, key, True) != 0 or _chacha_seal_raw(b, size, n, key, False) != 0:
                bad += 1
                continue
            if memcmp(a, b, size + 16) != 0:
                bad += 1
                continue
            if _chacha_open_raw(a, size + 16, n, key, True) != 0 or memcmp(a, m, size) != 0:
                bad += 1
        phantom_ossl_wipe()
    free(a)
    free(b)
    free(m)
    return bad


def _check_key(const unsigned char[::1] key):
    if key.shape[0] != FP_KEY_SIZE:
        raise ValueError("key must be %d bytes" % FP_KEY_SIZE)


def seal_into(const unsigned char[::1] key, uint64_t counter, unsigned char[::1] buf,
              Py_ssize_t offset, Py_ssize_t length):
    """Same contract as crypto.secretbox_seal_into: plaintext at
    buf[offset:offset+length] becomes MAC at buf[offset-16:offset] and
    ciphertext at buf[offset:offset+length].  Called nogil."""
    cdef unsigned char n[24]
    cdef int rc
    _check_key(key)
    if offset < FP_MAC_SIZE or length < 0 or offset + length > buf.shape[0]:
        raise ValueError("bad buffer geometry")
    _nonce(n, counter)
    with nogil:
        rc = _seal_fn(&buf[offset - FP_MAC_SIZE], &buf[0] + offset, length, n, &key[0])
    if rc != 0:
        raise _crypto.CryptoError("secretbox seal failed")


def open_into(const unsigned char[::1] key, uint64_t counter, unsigned char[::1] buf,
              Py_ssize_t offset, Py_ssize_t length):
    """Same contract as crypto.secretbox_open_into; False when forged."""
    cdef unsigned char n[24]
    cdef int rc
    _check_key(key)
    if offset < 0 or length < 0 or offset + length > buf.shape[0]:
        raise ValueError("bad buffer geometry")
    if length < FP_MAC_SIZE:
        return False
    _nonce(n, counter)
    with nogil:
        rc = _open_fn(&buf[0] + offset + FP_MAC_SIZE, &buf[0] + offset, length, n, &key[0])
    return rc == 0


def seal_packet(const unsigned char[::1] key, uint32_t remote_index, uint64_t counter,
                const unsigned char[::1] plaintext):
    """A whole transport datagram (header | MAC | ciphertext), built the way the
    worker builds it.  For differential tests and benchmarks."""
    cdef Py_ssize_t n = plaintext.shape[0]
    cdef bytearray out = bytearray(FP_PAYLOAD_OFFSET + n)
    cdef unsigned char *p = out
    cdef int rc
    _check_key(key)
    if n:
        memcpy(p + FP_PAYLOAD_OFFSET, &plaintext[0], n)
    with nogil:
        rc = _seal_packet(p, n, remote_index, counter, &key[0])
    if rc != 0:
        raise _crypto.CryptoError("secretbox seal failed")
    return bytes(out)


def seal_open_inplace(const unsigned char[::1] key, uint64_t counter, unsigned char[::1] buf,
                      Py_ssize_t length):
    """Seal then open buf[32:32+length] in place, as one nogil call (benchmarks)."""
    cdef int rc
    _check_key(key)
    if FP_PAYLOAD_OFFSET + length > buf.shape[0]:
        raise ValueError("bad buffer geometry")
    with nogil:
        rc = _seal_packet(&buf[0], length, 0, counter, &key[0])
        if rc == 0:
            rc = _open_packet(&buf[0], FP_PAYLOAD_OFFSET + length, counter, &key[0])
    return rc == 0


def bench_seal_open(Py_ssize_t size, Py_ssize_t iterations, bint raw=False):
    """Seconds for ``iterations`` seal+open round trips of ``size`` bytes, timed
    in C with the GIL released: ``raw`` calls libsodium's secretbox directly
    (fixed nonce, separate buffers); otherwise the fast path's in-place
    per-packet functions (header, nonce from the counter, in place)."""
    cdef unsigned char *buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + size + 16, 1)
    cdef unsigned char *out = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + size + 16, 1)
    cdef unsigned char key[32]
    cdef unsigned char n[24]
    cdef Py_ssize_t i
    cdef int rc = 0
    cdef double t0, t1
    if buf == NULL or out == NULL:
        free(buf)
        free(out)
        raise MemoryError()
    memset(key, 7, 32)
    memset(n, 0, 24)
    with nogil:
        t0 = _now()
        for i in range(iterations):
            if raw:
                rc |= _seal_fn(out, buf, size, n, key)
                rc |= _open_fn(buf, out, size + FP_MAC_SIZE, n, key)
            else:
                rc |= _seal_packet(buf, size, 1, i, key)
                rc |= _open_packet(buf, FP_PAYLOAD_OFFSET + size, i, key)
        t1 = _now()
    free(buf)
    free(out)
    if rc != 0:
        raise RuntimeError("secretbox round trip failed")
    return t1 - t0
