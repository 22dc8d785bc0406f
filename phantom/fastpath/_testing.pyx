# cython: language_level=3, cdivision=True
"""Test and benchmark hooks of the fast path: a separate extension that
phantomd never loads (tests/ and bench/ import it; tests/unit/test_layout.py
checks that phantomd's import graph never reaches it).

Every hook runs the engine's own code, through the C API that
``phantom.fastpath._engine`` exports (declared in _engine.pxd): the per-packet
ciphers, the replay window, the checksum, the firewall classifier, a fault
switch on a Forwarder.  Nothing here is a second implementation.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize

from phantom.fastpath.includes.sodium cimport secretbox_fn
from phantom.fastpath._engine cimport *

from phantom import crypto as _crypto

# the engine's per-packet functions (its C API, _engine.pxd)
cdef const fp_api *fp = fp_get_api()


def _check_key(const unsigned char[::1] key):
    if key.shape[0] != FP_KEY_SIZE:
        raise ValueError("key must be %d bytes" % FP_KEY_SIZE)


# --- whole datagrams sealed and opened by the per-packet ciphers (ciphers.pxi) -----------
cdef unsigned char *_plaintext_buffer(const unsigned char[::1] plaintext) except NULL:
    """A zeroed worker-shaped buffer (header room | plaintext | tail room) for
    the seal hooks; the caller frees it."""
    cdef Py_ssize_t n = plaintext.shape[0]
    cdef unsigned char *buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM, 1)
    if buf == NULL:
        raise MemoryError()
    if n:
        memcpy(buf + FP_PAYLOAD_OFFSET, &plaintext[0], n)
    return buf


cdef unsigned char *_datagram_copy(const unsigned char[::1] datagram) except NULL:
    """A heap copy of a (non-empty) datagram for the open hooks, which open in
    place; the caller frees it."""
    cdef Py_ssize_t n = datagram.shape[0]
    cdef unsigned char *buf = <unsigned char *>malloc(n)
    if buf == NULL:
        raise MemoryError()
    memcpy(buf, &datagram[0], n)
    return buf


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
    fp.nonce(n, counter)
    with nogil:
        rc = fp.secretbox_seal(&buf[offset - FP_MAC_SIZE], &buf[0] + offset, length, n, &key[0])
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
    fp.nonce(n, counter)
    with nogil:
        rc = fp.secretbox_open(&buf[0] + offset + FP_MAC_SIZE, &buf[0] + offset, length, n, &key[0])
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
        rc = fp.seal_secretbox(p, n, remote_index, counter, &key[0])
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
        rc = fp.seal_secretbox(&buf[0], length, 0, counter, &key[0])
        if rc == 0:
            rc = fp.open_secretbox(&buf[0], FP_PAYLOAD_OFFSET + length, counter, &key[0])
    return rc == 0


cdef object _seal_packet(const unsigned char[::1] key, uint32_t remote_index, uint64_t counter,
                         const unsigned char[::1] plaintext, size_t mtu, bint aegis):
    """One transport datagram sealed by the worker's ChaCha20-Poly1305 (WireGuard)
    or AEGIS-256 code; the AEGIS buffer is wiped before it is freed."""
    _check_key(key)
    cdef Py_ssize_t n = plaintext.shape[0]
    cdef unsigned char *buf = _plaintext_buffer(plaintext)
    cdef size_t tail = FP_AEGIS_TAG if aegis else 0
    cdef int rc
    with nogil:
        if aegis:
            rc = fp.seal_aegis(buf, n, remote_index, counter, &key[0])
        else:
            rc = fp.seal_chacha(buf, n, mtu, remote_index, counter, &key[0], &tail)
            fp.ossl_wipe()
    out = PyBytes_FromStringAndSize(<char *>buf + FP_HEADER_SIZE, FP_HEADER_SIZE + n + tail)
    if aegis:
        fp.wipe(buf, FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM)
    free(buf)
    if rc != 0:
        raise _crypto.CryptoError("aegis256 seal failed" if aegis else "chacha20poly1305 seal failed")
    return out


cdef object _open_packet(const unsigned char[::1] key, const unsigned char[::1] datagram,
                         bint aegis):
    """(index, counter, plaintext) of a datagram opened by the worker's
    ChaCha20-Poly1305 (the plaintext still padded) or AEGIS-256 code, or None
    when forged; the AEGIS copy is wiped before it is freed."""
    _check_key(key)
    cdef Py_ssize_t n = datagram.shape[0]
    cdef Py_ssize_t plain = n - (FP_HEADER_SIZE + FP_AEGIS_TAG if aegis else FP_PAYLOAD_OFFSET)
    cdef unsigned char *buf
    cdef int rc
    if n < (FP_HEADER_SIZE if aegis else FP_PAYLOAD_OFFSET):
        return None
    buf = _datagram_copy(datagram)
    with nogil:
        if aegis:
            rc = fp.open_aegis(buf, n, _le64(buf + 8), &key[0])
        else:
            rc = fp.open_chacha(buf, n, _le64(buf + 8), &key[0])
            fp.ossl_wipe()
    out = None
    if rc == 0:
        out = (_le32(buf + 4), _le64(buf + 8),
               PyBytes_FromStringAndSize(<char *>buf + FP_HEADER_SIZE, plain))
    if aegis:
        fp.wipe(buf, n)
    free(buf)
    return out


def chacha_seal_packet(const unsigned char[::1] key, uint32_t remote_index, uint64_t counter,
                       const unsigned char[::1] plaintext, size_t mtu=0):
    """A whole WireGuard transport datagram, sealed by the worker's own code
    (tests compare it with dataplane/ciphers.py)."""
    return _seal_packet(key, remote_index, counter, plaintext, mtu, False)


def chacha_open_packet(const unsigned char[::1] key, const unsigned char[::1] datagram):
    """(index, counter, padded plaintext) of a WireGuard datagram, or None when forged."""
    return _open_packet(key, datagram, False)


def aegis_seal_packet(const unsigned char[::1] key, uint32_t remote_index, uint64_t counter,
                      const unsigned char[::1] plaintext):
    """A whole AEGIS-256 transport datagram, sealed by the worker's own code
    (tests compare it with dataplane/ciphers.py).  ``key``: the derived one."""
    return _seal_packet(key, remote_index, counter, plaintext, 0, True)


def aegis_open_packet(const unsigned char[::1] key, const unsigned char[::1] datagram):
    """(index, counter, plaintext) of an AEGIS-256 datagram, or None when forged."""
    return _open_packet(key, datagram, True)


# --- cipher benchmarks and the OpenSSL/libsodium cross-check -------------------------------
def bench_seal_open(Py_ssize_t size, Py_ssize_t iterations, bint raw=False):
    """Seconds for ``iterations`` seal+open round trips of ``size`` bytes, timed
    in C with the GIL released: ``raw`` calls libsodium's secretbox directly
    (fixed nonce, separate buffers); otherwise the fast path's in-place
    per-packet functions (header, nonce from the counter, in place)."""
    cdef unsigned char *buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + size + FP_TAIL_ROOM, 1)
    cdef unsigned char *out = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + size + 16, 1)
    cdef secretbox_fn seal = fp.secretbox_seal
    cdef secretbox_fn unseal = fp.secretbox_open
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
        if raw:
            t0 = _now()
            for i in range(iterations):
                rc |= seal(out, buf, size, n, key)
                rc |= unseal(buf, out, size + FP_MAC_SIZE, n, key)
            t1 = _now()
        else:
            t0 = 0.0
            t1 = _cipher_round_trips(0, buf, size, iterations, &rc)
    free(buf)
    free(out)
    if rc != 0:
        raise RuntimeError("secretbox round trip failed")
    return t1 - t0


BENCH_CIPHERS = ("secretbox", "aegis256", "chacha20poly1305-libsodium", "chacha20poly1305-openssl")


def bench_cipher(str name, Py_ssize_t size, Py_ssize_t iterations):
    """Seconds for ``iterations`` seal+open round trips of ``size`` bytes with
    one transport cipher, in place, timed in C with the GIL released (the
    fast path's own per-packet functions: header, nonce from the counter).
    ``name``: one of BENCH_CIPHERS."""
    cdef int which = BENCH_CIPHERS.index(name)
    cdef unsigned char *buf
    cdef int rc = 0
    cdef double seconds
    if which == 3 and not fp.ossl_ready():
        raise ValueError("libcrypto is not available")
    buf = <unsigned char *>calloc(FP_PAYLOAD_OFFSET + size + FP_TAIL_ROOM, 1)
    if buf == NULL:
        raise MemoryError()
    with nogil:
        seconds = _cipher_round_trips(which, buf, size, iterations, &rc)
    free(buf)
    if rc != 0:
        raise RuntimeError("%s round trip failed" % name)
    return seconds


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
    if not fp.ossl_ready():
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
            if fp.chacha_seal_raw(a, size, n, key, True) != 0 or fp.chacha_seal_raw(b, size, n, key, False) != 0:
                bad += 1
                continue
            if memcmp(a, b, size + 16) != 0:
                bad += 1
                continue
            if fp.chacha_open_raw(a, size + 16, n, key, True) != 0 or memcmp(a, m, size) != 0:
                bad += 1
        fp.ossl_wipe()
    free(a)
    free(b)
    free(m)
    return bad


# --- the replay window (replay.pxi) ------------------------------------------------------
cdef class ReplayWindow:
    """The C replay window (replay.pxi) with dataplane/replay.py's Python API."""

    cdef fp_replay w

    def __cinit__(self):
        memset(&self.w, 0, sizeof(fp_replay))

    @property
    def last(self):
        return self.w.last

    def reset(self):
        memset(&self.w, 0, sizeof(fp_replay))

    def check(self, counter):
        if counter < 0 or counter >= 2 ** 64:
            return False
        return fp.replay_check(&self.w, counter)

    def update(self, counter):
        if counter < 0 or counter >= 2 ** 64:
            return False
        return _replay_update(&self.w, counter)


# --- the ones' complement sum of the offloads (offload.pxi) --------------------------------
def inet_sum(const unsigned char[::1] data, Py_ssize_t offset=0):
    """Tests: the folded ones' complement sum of data[offset:] as the fast
    path computes it (any alignment)."""
    cdef Py_ssize_t n = data.shape[0]
    if not 0 <= offset <= n:
        raise ValueError("offset")
    if n == 0 or offset == n:
        return 0
    return fp.fold(fp.sum16(&data[0] + offset, n - offset, 0))


def bench_sum16(Py_ssize_t size, Py_ssize_t iterations):
    """Seconds for ``iterations`` checksums of ``size`` bytes, in C."""
    cdef unsigned char *buf = <unsigned char *>calloc(size + 1, 1)
    cdef Py_ssize_t i
    cdef uint64_t acc = 0
    cdef double t0, t1
    if buf == NULL:
        raise MemoryError()
    for i in range(size):
        buf[i] = <unsigned char>(i * 7)
    with nogil:
        t0 = _now()
        for i in range(iterations):
            buf[0] = <unsigned char>i
            acc += fp.sum16(buf, size, 0)
        t1 = _now()
    free(buf)
    return (t1 - t0), acc


# --- the firewall's C classifier (firewall.pxi) -------------------------------------------
def fw_decide(const unsigned char[::1] blob, int direction, const unsigned char[::1] packet,
              int64_t peer_id):
    """(action, rule, reason) as the C classifier decides, action 3 = deferred
    to Python.  For differential tests; counts nothing."""
    cdef int rule = -1, reason = -1, action
    action = _fw_decide(&blob[0], blob.shape[0], direction,
                        &packet[0] if packet.shape[0] else NULL, packet.shape[0], peer_id,
                        &rule, &reason)
    return action, rule, reason


def fw_bench(const unsigned char[::1] blob, int direction, const unsigned char[::1] packet,
             int64_t peer_id, Py_ssize_t iterations):
    """Seconds for ``iterations`` classifications of one packet, timed in C."""
    cdef int rule, reason, acc = 0
    cdef Py_ssize_t i
    cdef double t0, t1
    with nogil:
        t0 = _now()
        for i in range(iterations):
            acc += _fw_decide(&blob[0], blob.shape[0], direction, &packet[0], packet.shape[0],
                              peer_id + (acc & 0), &rule, &reason)
        t1 = _now()
    return t1 - t0


# --- fault injection ---------------------------------------------------------------------
def set_fault_seal(Forwarder forwarder, bint on):
    """Fault injection: every seal of ``forwarder``'s packets behaves as if
    libsodium failed (the worker must then send nothing)."""
    forwarder.e.fault_seal = on
