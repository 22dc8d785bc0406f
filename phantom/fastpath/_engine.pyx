# cython: language_level=3, cdivision=True
"""Phantom's Cython data path (``phantomd --fast``).

The pipeline, as the worker thread runs it (GIL released the whole time):

  inner -> tunnel (one batch of up to ``burst`` packets)
    1. read packets from the TUN device (or recvmmsg from the test port) into
       buffers at offset TRANSPORT_PAYLOAD_OFFSET, leaving room for the header;
    2. lock: route each packet to a peer (allowed-IPs LPM, or the test peer),
       take the current keypair, assign its counter, copy the send key and the
       endpoint into the packet record; packets with no usable keypair are
       staged and "handshake needed" is queued; unlock;
    3. write the transport header and seal in place with the keypair's cipher
       (libsodium's secretbox or AEGIS-256, or ChaCha20-Poly1305 from
       libsodium or OpenSSL, via function pointers), wipe the key copy; a
       failed seal drops the packet;
    4. sendmmsg every sealed packet (never anything else);
    5. lock: counters and drops; unlock; poke the eventfd if events were queued.

  tunnel -> inner
    1. recvmmsg datagrams;
    2. lock: framing checks; handshake/cookie messages are queued for the
       control plane; transport: receiver-index lookup, replay *check*, copy
       the receive key; unlock;
    3. open in place (no lock);
    4. lock: re-find the keypair (it may have been retired meanwhile), replay
       *update*, promote a "next" keypair, roam the endpoint, counters,
       inner-source check; unlock;
    5. write payloads to the TUN device (or sendmmsg to the test target).

The control plane (another thread, holding the GIL) calls the Engine methods;
they take the same lock with the GIL released.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcmp, memcpy, memmove, memset

from phantom.fastpath.includes.system cimport *
from phantom.fastpath.includes.sodium cimport secretbox_fn, memzero_fn, aead_encrypt_fn, aead_decrypt_fn
from phantom.fastpath.includes.libcrypto cimport (phantom_ossl_setup, phantom_ossl_seal, phantom_ossl_open,
                                         phantom_ossl_wipe, phantom_ossl_ready)
from phantom.fastpath.includes.linux cimport *

from phantom import crypto as _crypto
from phantom import libcrypto as _libcrypto
from phantom import constants as _constants
from phantom import wire as _wire
from phantom.wire import wireguard as _wgwire
from phantom.dataplane import ciphers as _ciphers


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

# The C constants must agree with the Python modules they mirror.
assert FP_HEADER_SIZE == _wire.TRANSPORT_HEADER_SIZE
assert FP_PAYLOAD_OFFSET == _wire.TRANSPORT_PAYLOAD_OFFSET
assert FP_MAX_INNER == _wire.MAX_INNER_SIZE
assert FP_REPLAY_WINDOW == _constants.REPLAY_WINDOW_SIZE
assert FP_REPLAY_BLOCKS * 64 == FP_REPLAY_WINDOW + 64
assert CIPHER_SECRETBOX == _ciphers.CipherKind.SECRETBOX
assert CIPHER_CHACHA == _ciphers.CipherKind.CHACHA20POLY1305
assert CIPHER_AEGIS == _ciphers.CipherKind.AEGIS256
assert FP_AEGIS_TAG == _crypto.AEGIS256_TAG == _wire.AEGIS256_TAG_SIZE
assert FP_AEGIS_EXTRA == _wire.AEGIS256_EXTRA and FP_AEGIS_NONCE_SIZE == _wire.AEGIS256_NONCE_SIZE
assert FP_TAIL_ROOM >= FP_AEGIS_TAG
assert FP_HEADER_SIZE == _wgwire.TRANSPORT_HEADER_SIZE
assert FP_TAIL_ROOM >= _wgwire.PADDING_MULTIPLE - 1 + _wgwire.AEAD_TAG_SIZE
from phantom.dataplane.types import Drop as _Drop
assert FP_N_DROPS == len(_Drop) and D_CONTROL_OVERFLOW == _Drop.CONTROL_OVERFLOW
assert D_RELAY_UNKNOWN_ID == _Drop.RELAY_UNKNOWN_ID and D_RELAY_BUDGET == _Drop.RELAY_BUDGET

cdef uint64_t REPLAY_LIMIT = _constants.REJECT_AFTER_MESSAGES
cdef uint16_t _ENDIAN_PROBE = 1
cdef size_t MAX_DATAGRAM = _wire.MAX_DATAGRAM_SIZE
cdef size_t INITIATION_SIZE = _wire.INITIATION_SIZE
cdef size_t PEER_CONTROL_MIN_SIZE = _wire.PEER_CONTROL_MIN_SIZE
cdef size_t PEER_CONTROL_MAX_SIZE = _wire.PEER_CONTROL_MAX_SIZE
cdef size_t RESPONSE_SIZE = _wire.RESPONSE_SIZE
cdef size_t COOKIE_REPLY_SIZE = _wire.COOKIE_REPLY_SIZE
cdef size_t INITIATION_OFFER_SIZE = _wire.INITIATION_OFFER_SIZE     # with a cipher suites offer
cdef size_t RESPONSE_CHOICE_SIZE = _wire.RESPONSE_CHOICE_SIZE       # with the chosen suite
cdef size_t WG_INITIATION_SIZE = _wgwire.INITIATION_SIZE
cdef size_t WG_RESPONSE_SIZE = _wgwire.RESPONSE_SIZE
assert _wgwire.COOKIE_REPLY_SIZE == COOKIE_REPLY_SIZE

DROP_COUNT = FP_N_DROPS
# TUN ioctls and flags, for the Python side (kernel ABI values)
TUN_IFF_VNET_HDR = IFF_VNET_HDR
TUN_IFF_MULTI_QUEUE = IFF_MULTI_QUEUE
TUN_TUNGETIFF = TUNGETIFF
TUN_TUNSETOFFLOAD = TUNSETOFFLOAD
TUN_OFFLOAD_CSUM = TUN_F_CSUM
TUN_OFFLOAD_TSO4 = TUN_F_TSO4
TUN_OFFLOAD_TSO6 = TUN_F_TSO6
TUN_OFFLOAD_USO4 = TUN_F_USO4
TUN_OFFLOAD_USO6 = TUN_F_USO6
MODE_IDS = {"tun": MODE_TUN, "tap": MODE_TAP, "test": MODE_TEST}
EVENT_CONTROL_PACKET = EV_CONTROL_PACKET
EVENT_HANDSHAKE_NEEDED = EV_HANDSHAKE_NEEDED
EVENT_KEYPAIR_CONFIRMED = EV_KEYPAIR_CONFIRMED
EVENT_ICMP_UNREACHABLE = EV_ICMP_UNREACHABLE

cdef int SEND_WAIT_MS = 200        # longest wait for POLLOUT before a send counts as failed
cdef int ICMP_PENDING_MAX = 16     # unroutable packets queued for an ICMP answer


# --- small helpers -----------------------------------------------------------------
cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline void _nonce(unsigned char *n, uint64_t counter) noexcept nogil:
    cdef int i
    memset(n, 0, FP_NONCE_SIZE)
    for i in range(8):
        n[i] = (counter >> (8 * i)) & 0xff


cdef inline uint32_t _le32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _le64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>_le32(p)) | ((<uint64_t>_le32(p + 4)) << 32)


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


cdef inline void _wipe(void *p, size_t n) noexcept nogil:
    _memzero_fn(p, n)


cdef inline void _lock(fp_engine *e) noexcept nogil:
    pthread_mutex_lock(&e.lock)


cdef inline void _unlock(fp_engine *e) noexcept nogil:
    pthread_mutex_unlock(&e.lock)


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


cdef inline size_t _ip_length(const unsigned char *p, size_t n) noexcept nogil:
    """The length an IPv4/IPv6 header gives its packet (0: neither, or truncated)."""
    if n >= 20 and p[0] >> 4 == 4:
        return (<size_t>p[2] << 8) | p[3]
    if n >= 40 and p[0] >> 4 == 6:
        return 40 + ((<size_t>p[4] << 8) | p[5])
    return 0


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


# --- replay window (RFC 6479 style; the contract is dataplane/replay.py) -------------
cdef inline bint _replay_check(const fp_replay *w, uint64_t c) noexcept nogil:
    if c >= REPLAY_LIMIT:
        return False
    if c > w.last:
        return True
    if w.last - c >= FP_REPLAY_WINDOW:
        return False
    return not ((w.ring[(c >> 6) & (FP_REPLAY_BLOCKS - 1)] >> (c & 63)) & 1)


cdef bint _replay_update(fp_replay *w, uint64_t c) noexcept nogil:
    cdef uint64_t block, cur, bit, word
    cdef uint32_t index
    if c >= REPLAY_LIMIT:
        return False
    block = c >> 6
    if c > w.last:
        cur = w.last >> 6
        if block - cur >= FP_REPLAY_BLOCKS:
            memset(w.ring, 0, sizeof(w.ring))
        else:
            while cur < block:
                cur += 1
                w.ring[cur & (FP_REPLAY_BLOCKS - 1)] = 0
        w.last = c
    elif w.last - c >= FP_REPLAY_WINDOW:
        return False
    index = block & (FP_REPLAY_BLOCKS - 1)
    bit = (<uint64_t>1) << (c & 63)
    word = w.ring[index]
    if word & bit:
        return False
    w.ring[index] = word | bit
    return True


cdef class ReplayWindow:
    """The C replay window with dataplane/replay.py's Python API (for tests)."""

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
        return _replay_check(&self.w, counter)

    def update(self, counter):
        if counter < 0 or counter >= 2 ** 64:
            return False
        return _replay_update(&self.w, counter)


# --- allowed-IPs longest-prefix match: a binary trie per family ---------------------
cdef fp_trie *_trie_new() noexcept nogil:
    cdef fp_trie *t = <fp_trie *>calloc(1, sizeof(fp_trie))
    if t != NULL:
        t.slot = -1
    return t


cdef void _trie_free(fp_trie *t) noexcept nogil:
    if t == NULL:
        return
    _trie_free(t.child[0])
    _trie_free(t.child[1])
    free(t)


cdef fp_trie *_trie_node(fp_trie *root, const unsigned char *a, int plen) noexcept nogil:
    """The node of the prefix ``a/plen``, made (with slot -1, so that no lookup
    changes) where missing; NULL when out of memory."""
    cdef fp_trie *node = root
    cdef int i, bit
    for i in range(plen):
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        if node.child[bit] == NULL:
            node.child[bit] = _trie_new()
            if node.child[bit] == NULL:
                return NULL
        node = node.child[bit]
    return node


cdef void _trie_prune(fp_trie *root, const unsigned char *a, int plen) noexcept nogil:
    """Free, bottom up, the nodes on ``a/plen``'s path that lead to no prefix."""
    cdef fp_trie *path[129]
    cdef fp_trie *node = root
    cdef int i, bit, depth = 0
    path[0] = root
    for i in range(plen):
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        node = node.child[bit]
        if node == NULL:
            break
        depth = i + 1
        path[depth] = node
    i = depth
    while i > 0:
        node = path[i]
        if node.slot >= 0 or node.child[0] != NULL or node.child[1] != NULL:
            break
        bit = (a[(i - 1) >> 3] >> (7 - ((i - 1) & 7))) & 1
        path[i - 1].child[bit] = NULL
        free(node)
        i -= 1


cdef int _trie_insert(fp_trie *root, const unsigned char *a, int plen, int slot) noexcept nogil:
    cdef fp_trie *node = _trie_node(root, a, plen)
    if node == NULL:
        return -1
    node.slot = slot
    return 0


cdef int _trie_remove(fp_trie *root, const unsigned char *a, int plen) noexcept nogil:
    """Clear the exact prefix ``a/plen`` and free the nodes that no longer lead
    to any prefix.  Returns 1 if it was there, 0 if not."""
    cdef fp_trie *node = root
    cdef int i, bit
    for i in range(plen):
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        node = node.child[bit]
        if node == NULL:
            return 0
    if node.slot < 0:
        return 0
    node.slot = -1
    _trie_prune(root, a, plen)
    return 1


cdef inline int _trie_lookup(const fp_trie *root, const unsigned char *a, int bits) noexcept nogil:
    cdef const fp_trie *node = root
    cdef int best = -1, i = 0, bit
    while node != NULL:
        if node.slot >= 0:
            best = node.slot
        if i == bits:
            break
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        node = node.child[bit]
        i += 1
    return best


cdef inline int _inner_addr(const unsigned char *p, size_t n, bint dst, const unsigned char **addr) noexcept nogil:
    """Family bits (32 or 128) of an IP packet and a pointer to its source or
    destination address; 0 when it is not a well-formed IPv4/IPv6 header."""
    if n < 1:
        return 0
    if p[0] >> 4 == 4 and n >= 20:
        addr[0] = p + (16 if dst else 12)
        return 32
    if p[0] >> 4 == 6 and n >= 40:
        addr[0] = p + (24 if dst else 8)
        return 128
    return 0


cdef inline int _route(fp_engine *e, const unsigned char *a, int bits) noexcept nogil:
    cdef int slot = _trie_lookup(e.trie4 if bits == 32 else e.trie6, a, bits)
    if slot >= 0 and e.peers[slot] == NULL:
        return -1
    return slot


# --- TAP: MAC learning --------------------------------------------------------------------
cdef inline uint32_t _mac_hash(const unsigned char *m) noexcept nogil:
    cdef uint32_t h = 2166136261u
    cdef int i
    for i in range(6):
        h = (h ^ m[i]) * 16777619u
    return h & (FP_MACS - 1)


cdef int _mac_lookup(fp_engine *e, const unsigned char *m) noexcept nogil:
    """The live peer slot that learned MAC ``m``, or -1."""
    cdef uint32_t h = _mac_hash(m)
    cdef int i
    cdef fp_mac *x
    if e.macs == NULL:
        return -1
    for i in range(FP_MACS):
        x = &e.macs[(h + i) & (FP_MACS - 1)]
        if x.slot < 0:
            return -1
        if memcmp(x.mac, m, 6) == 0:
            return x.slot if e.peers[x.slot] != NULL else -1
    return -1


cdef void _mac_learn(fp_engine *e, const unsigned char *m, int slot) noexcept nogil:
    """Remember that MAC ``m`` is behind peer ``slot`` (lock held).  When the
    table is 3/4 full new addresses are not learned (their frames flood)."""
    cdef uint32_t h = _mac_hash(m)
    cdef int i
    cdef fp_mac *x
    if e.macs == NULL:
        return
    for i in range(FP_MACS):
        x = &e.macs[(h + i) & (FP_MACS - 1)]
        if x.slot < 0:
            if e.nmacs >= FP_MACS * 3 // 4:
                return
            memcpy(x.mac, m, 6)
            x.slot = slot
            e.nmacs += 1
            return
        if memcmp(x.mac, m, 6) == 0:
            x.slot = slot
            return


cdef void _mac_forget(fp_engine *e, int slot) noexcept nogil:
    """Drop every MAC of a peer: rebuild the table without them (lock held)."""
    cdef fp_mac *old = e.macs
    cdef int i
    if old == NULL:
        return
    e.macs = <fp_mac *>malloc(FP_MACS * sizeof(fp_mac))
    if e.macs == NULL:
        e.macs = old
        return
    for i in range(FP_MACS):
        e.macs[i].slot = -1
    e.nmacs = 0
    for i in range(FP_MACS):
        if old[i].slot >= 0 and old[i].slot != slot:
            _mac_learn(e, old[i].mac, old[i].slot)
    free(old)


cdef bint _tap_source_ok(fp_engine *e, const unsigned char *f, size_t n, int slot) noexcept nogil:
    """The reference path's TAP source check: IPv4/IPv6 sources (and ARP
    sender addresses) must route to the peer; IPv6 link-local and unspecified
    sources and other EtherTypes pass (the firewall decides those)."""
    cdef size_t pos = 14
    cdef int tags = 0, bits
    cdef unsigned int et
    cdef const unsigned char *a = NULL
    cdef const unsigned char *arp
    cdef int i
    cdef bint zero
    if n < 14:
        return False
    et = _get16(f + 12)
    while et == 0x8100 or et == 0x88A8:
        tags += 1
        if tags > 2 or pos + 4 > n:
            return False
        et = _get16(f + pos + 2)
        pos += 4
    if et == 0x0800 or et == 0x86DD:
        bits = _inner_addr(f + pos, n - pos, False, &a)
        if bits == 0:
            return False
        if bits == 128:
            if a[0] == 0xFE and (a[1] & 0xC0) == 0x80:
                return True
            zero = True
            for i in range(16):
                if a[i]:
                    zero = False
            if zero:
                return True
        return _route(e, a, bits) == slot
    if et == 0x0806:
        arp = f + pos
        if not (n - pos >= 28 and arp[0] == 0 and arp[1] == 1 and arp[2] == 0x08 and arp[3] == 0
                and arp[4] == 6 and arp[5] == 4):
            return False
        a = arp + 14
        if not (a[0] or a[1] or a[2] or a[3]):
            return True
        return _route(e, a, 32) == slot
    return True


# --- keypairs and the receiver-index hash --------------------------------------------
cdef inline fp_keypair *_kp_find(fp_engine *e, uint32_t idx) noexcept nogil:
    cdef fp_keypair *kp = e.index[idx & (FP_INDEX_BUCKETS - 1)]
    while kp != NULL and kp.local_index != idx:
        kp = kp.hnext
    return kp


cdef void _kp_unlink(fp_engine *e, fp_keypair *kp) noexcept nogil:
    cdef fp_keypair **pp = &e.index[kp.local_index & (FP_INDEX_BUCKETS - 1)]
    while pp[0] != NULL:
        if pp[0] == kp:
            pp[0] = kp.hnext
            return
        pp = &pp[0].hnext


cdef void _kp_destroy(fp_engine *e, fp_keypair *kp) noexcept nogil:
    """Unlink, zero (sodium_memzero) and free a keypair.  Lock held."""
    if kp == NULL:
        return
    _kp_unlink(e, kp)
    _wipe(kp, sizeof(fp_keypair))
    free(kp)


cdef void _kp_detach(fp_engine *e, fp_keypair *kp) noexcept nogil:
    """Take a keypair out of its peer's slots (lock held)."""
    cdef fp_peer *p = e.peers[kp.peer_slot]
    if p == NULL:
        return
    if p.current == kp:
        p.current = NULL
    if p.previous == kp:
        p.previous = NULL
    if p.next == kp:
        p.next = NULL


cdef inline bint _kp_usable(fp_engine *e, fp_keypair *kp, double now) noexcept nogil:
    return (kp != NULL and now - kp.created < e.reject_after_time
            and kp.send_counter < e.reject_after_messages)


# --- the peer-id and relay-id hashes (lock held) ---------------------------------------
# Chains of peer slots, linked through the peers (slot + 1; 0 ends a chain):
# e.by_id by peer_id (every live peer), e.by_relay by (relay_slot, relay_id)
# (every relay_known peer).  The relay's forwarding and a relayed client's
# unwrapping look peers up here, never by a scan of the peer table.
cdef inline uint32_t _hash64(uint64_t k) noexcept nogil:
    k *= 0x9E3779B97F4A7C15ULL
    return <uint32_t>(k >> 40) & (FP_PEER_BUCKETS - 1)


cdef inline uint32_t _id_bucket(int64_t peer_id) noexcept nogil:
    return _hash64(<uint64_t>peer_id)


cdef inline uint32_t _relay_bucket(int relay_slot, uint32_t relay_id) noexcept nogil:
    return _hash64((<uint64_t><uint32_t>relay_slot << 32) | relay_id)


cdef void _id_link(fp_engine *e, int slot) noexcept nogil:
    cdef fp_peer *p = e.peers[slot]
    cdef uint32_t b = _id_bucket(p.peer_id)
    p.id_next = e.by_id[b]
    e.by_id[b] = slot + 1


cdef void _id_unlink(fp_engine *e, int slot) noexcept nogil:
    cdef fp_peer *p = e.peers[slot]
    cdef int *pp = &e.by_id[_id_bucket(p.peer_id)]
    while pp[0] != 0:
        if pp[0] == slot + 1:
            pp[0] = p.id_next
            p.id_next = 0
            return
        pp = &e.peers[pp[0] - 1].id_next


cdef fp_peer *_peer_by_id(fp_engine *e, int64_t peer_id) noexcept nogil:
    """The live peer ``peer_id`` (ids are unique among live peers), or NULL."""
    cdef int s = e.by_id[_id_bucket(peer_id)]
    cdef fp_peer *p
    while s != 0:
        p = e.peers[s - 1]
        if p.peer_id == peer_id:
            return p
        s = p.id_next
    return NULL


cdef void _relay_link(fp_engine *e, int slot) noexcept nogil:
    cdef fp_peer *p = e.peers[slot]
    cdef uint32_t b = _relay_bucket(p.relay_slot, p.relay_id)
    p.relay_next = e.by_relay[b]
    e.by_relay[b] = slot + 1


cdef void _relay_unlink(fp_engine *e, int slot) noexcept nogil:
    cdef fp_peer *p = e.peers[slot]
    cdef int *pp = &e.by_relay[_relay_bucket(p.relay_slot, p.relay_id)]
    while pp[0] != 0:
        if pp[0] == slot + 1:
            pp[0] = p.relay_next
            p.relay_next = 0
            return
        pp = &e.peers[pp[0] - 1].relay_next


cdef inline uint32_t _pair_bucket(int64_t src_id, uint32_t relay_id) noexcept nogil:
    return _hash64((<uint64_t>src_id * 0x100000001B3ULL) ^ relay_id)


cdef fp_relay_pair *_pair_find(fp_engine *e, int64_t src_id, uint32_t relay_id) noexcept nogil:
    """On a relay: the pair for frames from ``src_id`` tagged ``relay_id``, or NULL."""
    cdef fp_relay_pair *q = e.by_pair[_pair_bucket(src_id, relay_id)]
    while q != NULL:
        if q.src_id == src_id and q.relay_id == relay_id:
            return q
        q = q.next
    return NULL


cdef void _pairs_forget(fp_engine *e, int64_t peer_id) noexcept nogil:
    """Drop every pair from or to ``peer_id``."""
    cdef int b
    cdef fp_relay_pair **pp
    cdef fp_relay_pair *q
    if e.relay_pairs == 0:
        return
    for b in range(FP_PEER_BUCKETS):
        pp = &e.by_pair[b]
        while pp[0] != NULL:
            q = pp[0]
            if q.src_id == peer_id or q.dest_id == peer_id:
                pp[0] = q.next
                free(q)
                e.relay_pairs -= 1
            else:
                pp = &q.next


cdef void _pairs_forget_all(fp_engine *e) noexcept nogil:
    cdef int b
    cdef fp_relay_pair *q
    for b in range(FP_PEER_BUCKETS):
        while e.by_pair[b] != NULL:
            q = e.by_pair[b]
            e.by_pair[b] = q.next
            free(q)
    e.relay_pairs = 0


cdef int _slot_by_relay(fp_engine *e, int relay_slot, uint32_t relay_id) noexcept nogil:
    """The lowest slot of a live peer whose frames come from ``relay_slot``
    tagged ``relay_id`` (as the former scan of the peer table found), or -1."""
    cdef int s = e.by_relay[_relay_bucket(relay_slot, relay_id)]
    cdef int best = -1
    cdef fp_peer *p
    while s != 0:
        p = e.peers[s - 1]
        if p.relay_known and p.relay_slot == relay_slot and p.relay_id == relay_id \
                and (best < 0 or s - 1 < best):
            best = s - 1
        s = p.relay_next
    return best


# --- events for the control plane (lock held) ----------------------------------------
cdef bint _ev_push(fp_engine *e, int kind, int64_t peer_id, uint32_t local_index,
                   const unsigned char *data, size_t length,
                   const sockaddr_storage *addr, socklen_t addrlen) noexcept nogil:
    cdef fp_event *ev
    if e.ev_count >= FP_EVENT_QUEUE:
        e.ev_overflow += 1
        return False
    ev = &e.events[(e.ev_head + e.ev_count) & (FP_EVENT_QUEUE - 1)]
    ev.kind = kind
    ev.peer_id = peer_id
    ev.local_index = local_index
    ev.data = NULL
    ev.len = 0
    ev.addrlen = 0
    if length:
        ev.data = <unsigned char *>malloc(length)
        if ev.data == NULL:
            e.ev_overflow += 1
            return False
        memcpy(ev.data, data, length)
        ev.len = length
    if addrlen:
        memcpy(&ev.addr, addr, addrlen)
        ev.addrlen = addrlen
    e.ev_count += 1
    return True


cdef inline int _need_handshake(fp_engine *e, fp_peer *peer) noexcept nogil:
    """Queue handshake_needed once per wait for a new key (the flag is cleared
    when a keypair becomes current, or by clear_keys).  1 if queued."""
    if peer.handshake_asked:
        return 0
    if _ev_push(e, EV_HANDSHAKE_NEEDED, peer.peer_id, 0, NULL, 0, NULL, 0):
        peer.handshake_asked = True
        return 1
    return 0


cdef inline void _notify(fp_engine *e) noexcept nogil:
    cdef uint64_t one = 1
    write(e.event_fd, &one, 8)


# --- staging while a handshake runs (lock held) ---------------------------------------
cdef int _stage(fp_engine *e, fp_peer *peer, fp_pkt *pkt) noexcept nogil:
    """Keep a copy of the packet; when the queue is full the oldest staged
    packet is dropped (STAGED_OVERFLOW, counted here).  Returns the verdict."""
    cdef fp_staged *s
    cdef unsigned char *copy
    if e.staged_max <= 0:
        return D_STAGED_OVERFLOW
    if peer.staged == NULL:        # allocated on first use (add_peer)
        peer.staged = <fp_staged *>calloc(e.staged_max, sizeof(fp_staged))
        if peer.staged == NULL:
            return D_STAGED_OVERFLOW   # a drop verdict: the caller counts it
    if peer.staged_count >= e.staged_max:
        s = &peer.staged[peer.staged_head]
        _wipe(s.buf, FP_PAYLOAD_OFFSET + s.len)
        free(s.buf)
        s.buf = NULL
        peer.staged_head = (peer.staged_head + 1) % e.staged_max
        peer.staged_count -= 1
        e.drops[D_STAGED_OVERFLOW] += 1
        peer.drops[D_STAGED_OVERFLOW] += 1
    copy = <unsigned char *>malloc(FP_PAYLOAD_OFFSET + pkt.len + FP_TAIL_ROOM + FP_WRAP_ROOM)
    if copy == NULL:
        return D_STAGED_OVERFLOW
    memcpy(copy + FP_PAYLOAD_OFFSET, pkt.buf + FP_PAYLOAD_OFFSET, pkt.len)
    s = &peer.staged[(peer.staged_head + peer.staged_count) % e.staged_max]
    s.buf = copy
    s.len = pkt.len
    peer.staged_count += 1
    return V_STAGED


cdef void _staged_clear(fp_engine *e, fp_peer *peer) noexcept nogil:
    cdef fp_staged *s
    while peer.staged_count > 0:
        s = &peer.staged[peer.staged_head]
        _wipe(s.buf, FP_PAYLOAD_OFFSET + s.len)
        free(s.buf)
        s.buf = NULL
        peer.staged_head = (peer.staged_head + 1) % e.staged_max
        peer.staged_count -= 1
    peer.staged_head = 0


# --- outbound phases --------------------------------------------------------------------
cdef inline bint _any_peer(fp_engine *e) noexcept nogil:
    cdef int i
    for i in range(e.peers_cap):
        if e.peers[i] != NULL:
            return True
    return False


cdef int _out_prepare(fp_engine *e, fp_pkt *pkts, int n, double now, bint route,
                      bint may_stage, bint keys=True) noexcept nogil:
    """Phase 2 (lock held): route (``route``), then pick the keypair and assign
    counters (``keys``); with a firewall the worker runs the two halves as
    separate calls with the classification in between.  Returns the number
    of events queued."""
    cdef int i, slot, bits, events = 0
    cdef fp_pkt *pkt
    cdef fp_peer *peer
    cdef fp_peer *rp = NULL
    cdef fp_keypair *kp
    cdef const unsigned char *a = NULL
    for i in range(n):
        pkt = &pkts[i]
        if pkt.verdict != V_PASS or pkt.peer_slot == -2:
            continue
        if route:
            if e.mode == MODE_TEST and pkt.addrlen:
                memcpy(&e.test_last, &pkt.addr, pkt.addrlen)
                e.test_last_len = pkt.addrlen
            if pkt.len > e.max_inner:
                pkt.verdict = D_OVERSIZED
                continue
            if e.mode == MODE_TEST:
                slot = e.test_peer
                if slot >= 0 and e.peers[slot] == NULL:
                    slot = -1
                if slot < 0:
                    pkt.verdict = D_NO_ROUTE
                    continue
            elif e.mode == MODE_TAP:
                if pkt.len < 14:
                    pkt.verdict = D_BAD_INNER
                    continue
                a = pkt.buf + FP_PAYLOAD_OFFSET
                slot = -1 if a[0] & 1 else _mac_lookup(e, a)
                if slot < 0:               # group or unknown address: flood every peer
                    if not _any_peer(e):
                        pkt.verdict = D_NO_ROUTE
                        continue
                    pkt.peer_slot = -2
                    pkt.peer_id = -1
                    continue
            else:
                bits = _inner_addr(pkt.buf + FP_PAYLOAD_OFFSET, pkt.len, True, &a)
                if bits == 0:
                    pkt.verdict = D_BAD_INNER
                    continue
                slot = _route(e, a, bits)
                if slot < 0:
                    pkt.verdict = D_NO_ROUTE
                    # ICMP unreachable back into the TUN: the control thread builds
                    # and rate-limits it; at most ICMP_PENDING_MAX wait in the queue
                    if ((e.icmp4 if bits == 32 else e.icmp6) and e.mode == MODE_TUN
                            and e.icmp_pending < ICMP_PENDING_MAX):
                        if _ev_push(e, EV_ICMP_UNREACHABLE, -1, 0, pkt.buf + FP_PAYLOAD_OFFSET,
                                    pkt.len, NULL, 0):
                            e.icmp_pending += 1
                            events += 1
                    continue
            pkt.peer_slot = slot
        peer = e.peers[pkt.peer_slot]
        if peer == NULL:
            pkt.verdict = D_NO_ROUTE
            pkt.peer_slot = -1
            continue
        pkt.peer_serial = peer.serial
        pkt.peer_id = peer.peer_id
        if not keys:
            continue
        kp = peer.current
        if not _kp_usable(e, kp, now):
            if may_stage:
                pkt.verdict = _stage(e, peer, pkt)
                events += _need_handshake(e, peer)
            else:
                pkt.verdict = V_CONSUMED        # a keepalive without a key: nothing to do
            continue
        pkt.wrap = False
        if peer.relayed:                        # through a relay: wrapped after the seal
            rp = e.peers[peer.relay_slot] if 0 <= peer.relay_slot < e.peers_cap else NULL
            if rp == NULL or rp == peer or rp.endpoint_len == 0 or not _kp_usable(e, rp.current, now) \
                    or not _phantom_cipher(kp.cipher) or not _phantom_cipher(rp.current.cipher):
                pkt.verdict = D_NO_ENDPOINT     # relays carry Phantom peers, over Phantom sessions
                continue
            pkt.wrap = True
            pkt.wrap_id = peer.relay_id
            pkt.wrap_index = rp.current.remote_index
            pkt.wrap_counter = rp.current.send_counter
            rp.current.send_counter += 1
            memcpy(pkt.wrap_key, rp.current.send_key, FP_KEY_SIZE)
            rp.tx_packets += 1
            rp.last_tx = now
        elif peer.endpoint_len == 0:
            if not may_stage:
                kp.send_counter += 1            # as the reference: keepalive counter used
            pkt.verdict = D_NO_ENDPOINT
            continue
        pkt.counter = kp.send_counter
        kp.send_counter += 1
        pkt.local_index = kp.remote_index     # what goes on the wire
        pkt.kp_serial = kp.serial
        pkt.cipher = kp.cipher
        memcpy(pkt.key, kp.data_send_key, FP_KEY_SIZE)
        if pkt.wrap:
            memcpy(&pkt.addr, &rp.endpoint, rp.endpoint_len)
            pkt.addrlen = rp.endpoint_len
        else:
            memcpy(&pkt.addr, &peer.endpoint, peer.endpoint_len)
            pkt.addrlen = peer.endpoint_len
        if kp.send_counter >= e.rekey_after_messages and not kp.rekey_requested:
            kp.rekey_requested = True           # once per keypair, never coalesced away
            if _ev_push(e, EV_HANDSHAKE_NEEDED, peer.peer_id, 0, NULL, 0, NULL, 0):
                events += 1
    return events


cdef void _out_seal(fp_engine *e, fp_pkt *pkts, int n) noexcept nogil:
    """Phase 3 (no lock): header + the keypair's cipher in place (secretbox or
    AEGIS-256 for Phantom peers, ChaCha20-Poly1305 for WireGuard peers).  A
    packet whose seal fails is dropped and its buffer wiped: it can never
    reach the wire."""
    cdef int i, rc
    cdef fp_pkt *pkt
    cdef size_t dlen
    for i in range(n):
        pkt = &pkts[i]
        if pkt.verdict != V_PASS:
            continue
        if e.fault_seal:
            rc = -1        # fault injection (tests): behave as if libsodium failed
        elif pkt.cipher == CIPHER_CHACHA:
            pkt.wire_off = FP_HEADER_SIZE
            rc = _seal_chacha(pkt.buf, pkt.len, e.max_inner, pkt.local_index, pkt.counter,
                              pkt.key, &pkt.wire_tail)
        elif pkt.cipher == CIPHER_AEGIS:
            pkt.wire_off = FP_HEADER_SIZE
            pkt.wire_tail = FP_AEGIS_TAG
            rc = _seal_aegis(pkt.buf, pkt.len, pkt.local_index, pkt.counter, pkt.key)
        else:
            rc = _seal_packet(pkt.buf, pkt.len, pkt.local_index, pkt.counter, pkt.key)
        _wipe(pkt.key, FP_KEY_SIZE)
        if rc == 0 and pkt.wrap:
            # the sealed A<->B datagram (buf[wire_off : 32 + len + wire_tail])
            # becomes the plaintext of a relay frame to the relay, after the
            # relay id (every buffer has FP_WRAP_ROOM spare bytes past its tail room)
            dlen = FP_PAYLOAD_OFFSET + pkt.len + pkt.wire_tail - pkt.wire_off
            memmove(pkt.buf + FP_WRAP_ROOM, pkt.buf + pkt.wire_off, dlen)
            memcpy(pkt.buf + FP_PAYLOAD_OFFSET, &pkt.wrap_id, 4)
            pkt.len = 4 + dlen
            pkt.wire_off = 0
            pkt.wire_tail = 0
            rc = _seal_packet(pkt.buf, pkt.len, pkt.wrap_index, pkt.wrap_counter, pkt.wrap_key)
            pkt.buf[0] = 6                        # wire.MessageType.RELAY
            _wipe(pkt.wrap_key, FP_KEY_SIZE)
        if rc != 0:
            pkt.verdict = D_SEND_FAILED
            _wipe(pkt.buf, FP_PAYLOAD_OFFSET + pkt.len + pkt.wire_tail)
    phantom_ossl_wipe()


cdef int _wait_writable(int fd) noexcept nogil:
    cdef pollfd p
    p.fd = fd
    p.events = POLLOUT
    p.revents = 0
    return poll(&p, 1, SEND_WAIT_MS)


cdef int GSO_MAX_SEGMENTS = 64
cdef size_t GSO_MAX_BYTES = 65000


cdef inline bint _same_addr(const fp_pkt *a, const fp_pkt *b) noexcept nogil:
    return a.addrlen == b.addrlen and memcmp(&a.addr, &b.addr, a.addrlen) == 0


cdef int _send_batch(int fd, fp_pkt *pkts, int n, mmsghdr *msgs, iovec *iovs, int *map,
                     int payload_offset, uint64_t *waits, bint gso=False, int *groups=NULL,
                     uint64_t *cmsgs=NULL, uint64_t *gso_sends=NULL,
                     uint64_t *gso_fallbacks=NULL) noexcept nogil:
    """sendmmsg every packet whose verdict is V_PASS, to pkt.addr.  The datagram
    is buf[payload_offset : FP_PAYLOAD_OFFSET + len].  With ``gso``, runs of
    packets to the same address with the same size (the last of a run may be
    shorter) go out as one UDP_SEGMENT message.  A packet the kernel refuses
    gets D_SEND_FAILED.  Returns the number of packets sent."""
    cdef int i, j, m = 0, done = 0, r, sent = 0, k, seg
    cdef size_t size, total
    cdef cmsghdr *c
    cdef bint more
    i = 0
    while i < n:
        if pkts[i].verdict != V_PASS:
            i += 1
            continue
        size = FP_PAYLOAD_OFFSET + pkts[i].len + pkts[i].wire_tail - payload_offset - pkts[i].wire_off
        memset(&msgs[m].msg_hdr, 0, sizeof(msghdr))
        msgs[m].msg_hdr.msg_name = &pkts[i].addr
        msgs[m].msg_hdr.msg_namelen = pkts[i].addrlen
        msgs[m].msg_hdr.msg_iov = &iovs[i]
        iovs[i].iov_base = pkts[i].buf + payload_offset + pkts[i].wire_off
        iovs[i].iov_len = size
        map[m] = i
        seg = 1
        total = size
        j = i + 1
        if gso:
            # extend the run: same address, same size; a shorter one ends it
            more = size < 65535
            while more and j < n and seg < GSO_MAX_SEGMENTS:
                if pkts[j].verdict != V_PASS or not _same_addr(&pkts[i], &pkts[j]):
                    break
                k = FP_PAYLOAD_OFFSET + pkts[j].len + pkts[j].wire_tail - payload_offset - pkts[j].wire_off
                if <size_t>k > size or total + k > GSO_MAX_BYTES:
                    break
                iovs[i + seg].iov_base = pkts[j].buf + payload_offset + pkts[j].wire_off
                iovs[i + seg].iov_len = k
                total += k
                seg += 1
                j += 1
                if <size_t>k < size:
                    more = False
        if seg > 1:
            # iovs[i .. i+seg) are contiguous only if no dropped packet sits
            # between them: the run above never skips one, so they are.
            msgs[m].msg_hdr.msg_control = &cmsgs[8 * m]
            msgs[m].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            c = CMSG_FIRSTHDR(&msgs[m].msg_hdr)
            c.cmsg_level = SOL_UDP
            c.cmsg_type = UDP_SEGMENT
            c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            (<uint16_t *>CMSG_DATA(c))[0] = <uint16_t>size
        msgs[m].msg_hdr.msg_iovlen = seg
        if groups != NULL:
            groups[m] = seg
        m += 1
        i = j
    while done < m:
        r = sendmmsg(fd, msgs + done, m - done, 0)
        if r > 0:
            for k in range(done, done + r):
                seg = groups[k] if groups != NULL else 1
                sent += seg
                if seg > 1 and gso_sends != NULL:
                    gso_sends[0] += 1
            done += r
            continue
        if r < 0 and errno == EINTR:
            continue
        if r < 0 and (errno == EAGAIN or errno == ENOBUFS):
            waits[0] += 1
            if _wait_writable(fd) > 0:
                continue
        seg = groups[done] if groups != NULL else 1
        if seg > 1:
            # GSO refused (e.g. a segment larger than the path MTU needs IP
            # fragmentation, which UDP GSO does not do): send them one by one.
            if gso_fallbacks != NULL:
                gso_fallbacks[0] += 1
            sent += _send_batch(fd, pkts + map[done], seg, msgs + m, iovs + n, map + m,
                                payload_offset, waits)
            done += 1
            continue
        # the first remaining message failed (or no room came): drop it, go on
        pkts[map[done]].verdict = D_SEND_FAILED
        done += 1
    return sent


cdef int _account(fp_engine *e, fp_pkt *pkts, int n, double now, bint outbound) noexcept nogil:
    """Count sent packets and drops (lock held)."""
    cdef int i, v
    cdef fp_pkt *pkt
    cdef fp_peer *peer
    for i in range(n):
        pkt = &pkts[i]
        v = pkt.verdict
        peer = NULL
        if pkt.peer_slot >= 0 and pkt.peer_slot < e.peers_cap:
            peer = e.peers[pkt.peer_slot]
            if peer != NULL and peer.serial != pkt.peer_serial:
                peer = NULL
        if v >= 0:
            e.drops[v] += 1
            if peer != NULL:
                peer.drops[v] += 1
        elif v == V_PASS and outbound and peer != NULL:
            peer.tx_bytes += FP_PAYLOAD_OFFSET + pkt.len + pkt.wire_tail - pkt.wire_off
            peer.tx_packets += 1
            peer.last_tx = now
            if pkt.len:
                peer.last_data_tx = now
    return 0


# --- inbound phases -------------------------------------------------------------------
cdef int _in_prepare(fp_engine *e, fp_pkt *pkts, int n, double now) noexcept nogil:
    """Phase 2 (lock held): framing, control messages, index, replay check."""
    cdef int i, events = 0
    cdef fp_pkt *pkt
    cdef fp_keypair *kp
    cdef unsigned char t
    cdef size_t expect
    for i in range(n):
        pkt = &pkts[i]
        if pkt.verdict != V_PASS:
            continue
        if pkt.len < 4:
            pkt.verdict = D_TRUNCATED
            continue
        if pkt.buf[1] or pkt.buf[2] or pkt.buf[3]:
            pkt.verdict = D_MALFORMED
            continue
        t = pkt.buf[0]
        if pkt.relayed_inner and (t == 5 or t == 6):
            pkt.verdict = D_MALFORMED               # no nesting; peer control only on a direct session
            continue
        if t == 1 or t == 2 or t == 3:
            # exact sizes, Phantom's (with or without suites) or WireGuard's (as wire.demux.classify)
            expect = INITIATION_SIZE if t == 1 else (RESPONSE_SIZE if t == 2 else COOKIE_REPLY_SIZE)
            if pkt.len != expect and not ((t == 1 and (pkt.len == WG_INITIATION_SIZE
                                                       or pkt.len == INITIATION_OFFER_SIZE))
                                          or (t == 2 and (pkt.len == WG_RESPONSE_SIZE
                                                          or pkt.len == RESPONSE_CHOICE_SIZE))):
                pkt.verdict = D_MALFORMED
            else:
                if _ev_push(e, EV_CONTROL_PACKET, -1, 0, pkt.buf, pkt.len, &pkt.addr, pkt.addrlen):
                    pkt.verdict = V_CONSUMED
                    events += 1
                else:
                    pkt.verdict = D_CONTROL_OVERFLOW   # the control plane's queue is full
            continue
        if t == 5:                              # peer control: the control plane opens it
            if pkt.len < PEER_CONTROL_MIN_SIZE or pkt.len > PEER_CONTROL_MAX_SIZE:
                pkt.verdict = D_MALFORMED
            else:
                pkt.verdict = V_CONSUMED
                if _ev_push(e, EV_CONTROL_PACKET, -1, 0, pkt.buf, pkt.len, &pkt.addr, pkt.addrlen):
                    events += 1
            continue
        # type 6: a relay frame, forwarded when we relay (a relayed client is
        # not supported by this data path yet: dropped as malformed)
        pkt.relay = t == 6 and not pkt.relayed_inner
        if t != 4 and not pkt.relay:
            pkt.verdict = D_MALFORMED
            continue
        if pkt.len < FP_PAYLOAD_OFFSET:
            pkt.verdict = D_TRUNCATED
            continue
        # an AEGIS-256 datagram is 16 bytes longer than a secretbox one (and a
        # relay frame may carry one): the exact limit is checked below, by cipher
        if pkt.len - FP_PAYLOAD_OFFSET > e.max_inner + FP_AEGIS_EXTRA \
                + (FP_PAYLOAD_OFFSET + 4 + FP_AEGIS_EXTRA if pkt.relay else 0):
            pkt.verdict = D_OVERSIZED
            continue
        pkt.local_index = _le32(pkt.buf + 4)
        pkt.counter = _le64(pkt.buf + 8)
        kp = _kp_find(e, pkt.local_index)
        if kp == NULL:
            pkt.verdict = D_UNKNOWN_INDEX
            continue
        pkt.peer_slot = kp.peer_slot
        pkt.peer_serial = e.peers[kp.peer_slot].serial
        pkt.peer_id = e.peers[kp.peer_slot].peer_id
        if not pkt.relay and kp.cipher != CIPHER_AEGIS and pkt.len - FP_PAYLOAD_OFFSET > e.max_inner:
            pkt.verdict = D_OVERSIZED
            continue
        if now - kp.created >= e.reject_after_time:
            pkt.verdict = D_KEY_EXPIRED
            continue
        if not _replay_check(&kp.replay, pkt.counter):
            pkt.verdict = D_REPLAY
            continue
        pkt.kp_serial = kp.serial
        if pkt.relay and kp.cipher == CIPHER_AEGIS:
            # relay frames are secretbox under the session key, whatever the suite
            pkt.cipher = CIPHER_SECRETBOX
            memcpy(pkt.key, kp.recv_key, FP_KEY_SIZE)
        else:
            pkt.cipher = kp.cipher
            memcpy(pkt.key, kp.data_recv_key, FP_KEY_SIZE)
    return events


cdef void _in_open(fp_pkt *pkts, int n) noexcept nogil:
    """Phase 3 (no lock): authenticate and decrypt in place with the keypair's
    cipher.  A WireGuard or AEGIS-256 payload lands at buf + 16; buf is then
    moved back 16 bytes (into the receive buffer's headroom, or the tail of
    the datagram before it in a GRO batch, never written) so that for every
    later phase the payload is at buf + FP_PAYLOAD_OFFSET; it is
    len - FP_PAYLOAD_OFFSET long (AEGIS-256: 16 bytes less, which the commit
    phase takes off len once it has counted the datagram's bytes)."""
    cdef int i, rc
    cdef fp_pkt *pkt
    for i in range(n):
        pkt = &pkts[i]
        if pkt.verdict != V_PASS:
            continue
        if pkt.cipher == CIPHER_CHACHA:
            rc = _open_chacha(pkt.buf, pkt.len, pkt.counter, pkt.key)
            if rc == 0:
                pkt.buf -= FP_PAYLOAD_OFFSET - FP_HEADER_SIZE
        elif pkt.cipher == CIPHER_AEGIS:
            rc = _open_aegis(pkt.buf, pkt.len, pkt.counter, pkt.key)
            if rc == 0:
                pkt.buf -= FP_PAYLOAD_OFFSET - FP_HEADER_SIZE
        else:
            rc = _open_packet(pkt.buf, pkt.len, pkt.counter, pkt.key)
        _wipe(pkt.key, FP_KEY_SIZE)
        if rc != 0:
            pkt.verdict = D_AUTH_FAILED
    phantom_ossl_wipe()


cdef int _in_commit(fp_engine *e, fp_pkt *pkts, int n, double now) noexcept nogil:
    """Phase 4 (lock held): replay update, key promotion, roaming, counters,
    inner checks, drop accounting.  Returns the number of events queued."""
    cdef int i, bits, events = 0
    cdef fp_pkt *pkt
    cdef fp_keypair *kp
    cdef fp_peer *peer
    cdef size_t plen
    cdef const unsigned char *a = NULL
    for i in range(n):
        pkt = &pkts[i]
        if pkt.verdict == D_AUTH_FAILED:
            # In packet order, as the reference decides: a forgery of a counter
            # that an earlier packet of this batch just used is a replay.
            kp = _kp_find(e, pkt.local_index)
            if kp != NULL and kp.serial == pkt.kp_serial and not _replay_check(&kp.replay, pkt.counter):
                pkt.verdict = D_REPLAY
        elif pkt.verdict == V_PASS:
            kp = _kp_find(e, pkt.local_index)
            if kp == NULL or kp.serial != pkt.kp_serial:
                pkt.verdict = D_UNKNOWN_INDEX     # retired while we decrypted
            elif not _replay_update(&kp.replay, pkt.counter):
                pkt.verdict = D_REPLAY            # a duplicate inside this batch
            elif pkt.relayed_inner and kp.peer_slot != pkt.relay_peer_slot:
                pkt.verdict = D_SRC_NOT_ALLOWED   # a relay passing on another peer's session
            else:
                peer = e.peers[kp.peer_slot]
                if peer.next == kp:
                    _kp_destroy(e, peer.previous)
                    peer.previous = peer.current
                    peer.current = kp
                    peer.next = NULL
                    peer.handshake_asked = False
                    pkt.was_next = True             # the worker flushes staged packets
                    if _ev_push(e, EV_KEYPAIR_CONFIRMED, peer.peer_id, kp.local_index, NULL, 0, NULL, 0):
                        events += 1
                if not pkt.relayed_inner:         # roaming; relayed packets never move it
                    memcpy(&peer.endpoint, &pkt.addr, pkt.addrlen)
                    peer.endpoint_len = pkt.addrlen
                    peer.relayed = False
                peer.rx_bytes += pkt.len
                peer.rx_packets += 1
                peer.last_rx = now
                if pkt.cipher == CIPHER_AEGIS:
                    pkt.len -= FP_AEGIS_EXTRA     # its tag is 32 bytes: payload at 32, len - 32 long
                plen = pkt.len - FP_PAYLOAD_OFFSET
                if pkt.relay:                     # NAT traversal relay frame: never to the device
                    if e.relay_enabled:
                        _relay_route(e, pkt, peer, plen, now)
                    else:
                        _relay_unwrap(e, pkt, kp.peer_slot, plen)
                    if pkt.verdict >= 0:
                        _count_drop(e, pkt)
                    continue
                if plen and pkt.cipher == CIPHER_CHACHA:
                    # WireGuard pads to 16: the inner packet says where it ends
                    bits = <int>_ip_length(pkt.buf + FP_PAYLOAD_OFFSET, plen)
                    if bits == 0 or <size_t>bits > plen:
                        pkt.verdict = D_BAD_INNER
                        _count_drop(e, pkt)
                        peer.last_data_rx = now
                        continue
                    plen = <size_t>bits
                    pkt.len = FP_PAYLOAD_OFFSET + plen
                if plen == 0:
                    pkt.verdict = V_CONSUMED      # keepalive
                else:
                    peer.last_data_rx = now
                    if e.mode == MODE_TUN:
                        bits = _inner_addr(pkt.buf + FP_PAYLOAD_OFFSET, plen, False, &a)
                        if bits == 0:
                            pkt.verdict = D_BAD_INNER
                        elif _route(e, a, bits) != kp.peer_slot:
                            pkt.verdict = D_SRC_NOT_ALLOWED
                    elif e.mode == MODE_TAP:
                        if plen < 14:
                            pkt.verdict = D_BAD_INNER
                        elif not _tap_source_ok(e, pkt.buf + FP_PAYLOAD_OFFSET, plen, kp.peer_slot):
                            pkt.verdict = D_SRC_NOT_ALLOWED
        if pkt.verdict >= 0:
            _count_drop(e, pkt)
    return events


cdef void _relay_route(fp_engine *e, fp_pkt *pkt, fp_peer *src, size_t plen, double now) noexcept nogil:
    """An opened relay frame from ``src`` (lock held): relay_id u32le | inner.
    Pick the destination: the pair (src, relay_id) that the control plane
    installed because the destination accepts src (any other id is a
    counted RELAY_UNKNOWN_ID drop), a live peer with a usable session and
    an endpoint; check src's budget, take the destination's next counter
    and key: the worker seals and sends it (V_RELAY), under the same relay
    id, which names the pair at both ends.  Never to the device."""
    cdef uint32_t rid
    cdef fp_peer *dest = NULL
    cdef fp_relay_pair *pair
    cdef fp_keypair *kp
    cdef int64_t sec
    if plen < 8:
        pkt.verdict = D_MALFORMED
        return
    src.last_data_rx = now
    if pkt.cipher != CIPHER_SECRETBOX:
        pkt.verdict = D_MALFORMED                 # relay frames travel on Phantom sessions only
        return
    rid = _le32(pkt.buf + FP_PAYLOAD_OFFSET)
    pair = _pair_find(e, src.peer_id, rid)
    if pair == NULL:
        e.relay_unknown_id += 1
        pkt.verdict = D_RELAY_UNKNOWN_ID
        return
    dest = _peer_by_id(e, pair.dest_id)
    if dest == NULL or dest == src or dest.endpoint_len == 0 or not _kp_usable(e, dest.current, now) \
            or not _phantom_cipher(dest.current.cipher):
        e.relay_no_dest += 1
        pkt.verdict = D_NO_ROUTE
        return
    sec = <int64_t>now
    if src.relay_sec != sec:
        src.relay_sec = sec
        src.relay_bytes = 0
        src.relay_pkts = 0
    if src.relay_bytes + plen > e.relay_bytes_budget or src.relay_pkts + 1 > e.relay_pkts_budget:
        e.relay_budget_drops += 1
        pkt.verdict = D_RELAY_BUDGET
        return
    src.relay_bytes += plen
    src.relay_pkts += 1
    kp = dest.current
    pkt.counter = kp.send_counter
    kp.send_counter += 1
    pkt.local_index = kp.remote_index         # as outbound: the receiver's index
    memcpy(pkt.key, kp.send_key, FP_KEY_SIZE)
    memcpy(&pkt.addr, &dest.endpoint, dest.endpoint_len)
    pkt.addrlen = dest.endpoint_len
    dest.tx_bytes += pkt.len
    dest.tx_packets += 1
    dest.last_tx = now
    dest.last_data_tx = now
    e.relay_forwarded += 1
    pkt.verdict = V_RELAY


cdef void _relay_unwrap(fp_engine *e, fp_pkt *pkt, int relay_slot, size_t plen) noexcept nogil:
    """A relay frame from our relay (lock held): relay_id u32le | inner.  The
    inner datagram moves to the front of the buffer and goes round again as
    if received from the peer the relay id names (V_REPROCESS)."""
    cdef uint32_t rid
    cdef int i
    cdef int64_t rpid
    if plen < 8 or pkt.cipher != CIPHER_SECRETBOX:
        pkt.verdict = D_MALFORMED
        return
    rid = _le32(pkt.buf + FP_PAYLOAD_OFFSET)
    i = _slot_by_relay(e, relay_slot, rid)
    if i < 0:
        pkt.verdict = D_RELAY_UNKNOWN_ID           # no peer of ours goes by that id at this relay
        return
    memmove(pkt.buf, pkt.buf + FP_PAYLOAD_OFFSET + 4, plen - 4)
    pkt.len = plen - 4
    pkt.relay_peer_slot = i
    rpid = e.peers[relay_slot].peer_id
    memset(&pkt.addr, 0, sizeof(sockaddr_storage))
    (<uint16_t *>&pkt.addr)[0] = FP_RELAY_FAMILY
    memcpy((<unsigned char *>&pkt.addr) + 8, &rpid, 8)
    memcpy((<unsigned char *>&pkt.addr) + 16, &rid, 4)
    pkt.addrlen = 20
    pkt.verdict = V_REPROCESS


cdef int _relay_send(fp_worker *w, fp_pkt *pkts, int n) noexcept nogil:
    """Seal and send the batch's V_RELAY frames (after delivery: the packets
    delivered to the device are done).  Returns the number that failed."""
    cdef int i, relays = 0, failed = 0
    cdef fp_pkt *pkt
    for i in range(n):
        pkt = &pkts[i]
        if pkt.verdict == V_PASS:
            pkt.verdict = V_CONSUMED              # delivered already
        elif pkt.verdict == V_RELAY:
            if _seal_packet(pkt.buf, pkt.len - FP_PAYLOAD_OFFSET, pkt.local_index, pkt.counter, pkt.key) != 0:
                pkt.verdict = D_SEND_FAILED
                _wipe(pkt.buf, pkt.len)
                failed += 1
            else:
                pkt.buf[0] = 6                    # wire.MessageType.RELAY (the header is not sealed)
                pkt.verdict = V_PASS
                pkt.len -= FP_PAYLOAD_OFFSET      # _send_batch sends buf[0 : 32 + len]
                relays += 1
            _wipe(pkt.key, FP_KEY_SIZE)
    if relays:
        _send_batch(w.udp_fd, pkts, n, w.msgs, w.iovs, w.map, 0, &w.send_waits)
        for i in range(n):
            if pkts[i].verdict == D_SEND_FAILED:
                failed += 1
    return failed


cdef inline void _count_drop(fp_engine *e, fp_pkt *pkt) noexcept nogil:
    """Count pkt's drop globally and for its peer when known (lock held)."""
    cdef fp_peer *peer
    e.drops[pkt.verdict] += 1
    if pkt.peer_slot >= 0 and pkt.peer_slot < e.peers_cap:
        peer = e.peers[pkt.peer_slot]
        if peer != NULL and peer.serial == pkt.peer_serial:
            peer.drops[pkt.verdict] += 1


cdef int _flush_staged(fp_engine *e, int slot) noexcept nogil:
    """Seal and send a peer's staged packets if it has a usable current keypair
    and an endpoint (else they stay staged).  Any thread; takes the lock."""
    cdef fp_peer *p
    cdef fp_pkt *pkts = NULL
    cdef int n = 0, i, events = 0
    cdef double now = _now()
    cdef uint64_t waits = 0
    cdef mmsghdr *msgs = NULL
    cdef iovec *iovs = NULL
    cdef int *map = NULL
    _lock(e)
    p = e.peers[slot]
    if p != NULL and p.staged_count and p.endpoint_len and _kp_usable(e, p.current, now):
        n = p.staged_count
        pkts = <fp_pkt *>calloc(n, sizeof(fp_pkt))
        msgs = <mmsghdr *>calloc(n, sizeof(mmsghdr))
        iovs = <iovec *>calloc(n, sizeof(iovec))
        map = <int *>calloc(n, sizeof(int))
        if pkts == NULL or msgs == NULL or iovs == NULL or map == NULL:
            n = 0
        for i in range(n):
            pkts[i].buf = p.staged[p.staged_head].buf
            pkts[i].len = p.staged[p.staged_head].len
            pkts[i].verdict = V_PASS
            pkts[i].peer_slot = slot
            p.staged[p.staged_head].buf = NULL
            p.staged_head = (p.staged_head + 1) % e.staged_max
            p.staged_count -= 1
        if n:
            p.staged_head = 0
            events = _out_prepare(e, pkts, n, now, False, True)
    _unlock(e)
    if n:
        _out_seal(e, pkts, n)
        _send_batch(e.udp_fd, pkts, n, msgs, iovs, map, 0, &waits)
        _lock(e)
        _account(e, pkts, n, now, True)
        _unlock(e)
        for i in range(n):
            _wipe(pkts[i].buf, FP_PAYLOAD_OFFSET + pkts[i].len + pkts[i].wire_tail)
            free(pkts[i].buf)
    if events:
        _notify(e)
    free(pkts)
    free(msgs)
    free(iovs)
    free(map)
    return n


# --- TUN offloads: virtio_net_hdr, checksum completion, TCP segmentation ---------------
cdef enum:
    VNET_HDR_LEN = 10              # sizeof(struct virtio_net_hdr)
    TSO_MAX_SEGMENTS = 256         # spare out_pkts slots when the TUN fd has offloads


cdef inline uint64_t _sum16(const unsigned char *p, size_t n, uint64_t acc) noexcept nogil:
    """Add the 16-bit big-endian words of p[0:n] (odd tail padded) to acc,
    modulo 0xFFFF (what the ones' complement sum needs: _fold the result).

    The ones' complement sum does not depend on byte order (RFC 1071 2.B):
    the bulk is summed as native 32-bit words, eight bytes a step, folded to
    16 bits and byte-swapped once; a 16-bit word a step cost ~11 % of the
    sender's cycles at single-stream TCP (issue #15)."""
    cdef size_t i = 0
    cdef uint64_t s = 0, s2 = 0
    cdef uint32_t w0, w1
    cdef uint16_t h
    while i + 8 <= n:
        memcpy(&w0, p + i, 4)
        memcpy(&w1, p + i + 4, 4)
        s += w0
        s2 += w1
        i += 8
    s += s2
    if i + 4 <= n:
        memcpy(&w0, p + i, 4)
        s += w0
        i += 4
    if i + 2 <= n:
        memcpy(&h, p + i, 2)
        s += h
        i += 2
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    # native order -> big-endian word value (x86 is little-endian)
    if (<const unsigned char *>&_ENDIAN_PROBE)[0] == 1:
        s = ((s & 0xFF) << 8) | (s >> 8)
    acc += s
    if i < n:
        acc += <uint64_t>p[i] << 8
    return acc


def inet_sum(const unsigned char[::1] data, Py_ssize_t offset=0):
    """Tests: the folded ones' complement sum of data[offset:] as the fast
    path computes it (any alignment)."""
    cdef Py_ssize_t n = data.shape[0]
    if not 0 <= offset <= n:
        raise ValueError("offset")
    if n == 0 or offset == n:
        return 0
    return _fold(_sum16(&data[0] + offset, n - offset, 0))


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
            acc += _sum16(buf, size, 0)
        t1 = _now()
    free(buf)
    return (t1 - t0), acc


cdef inline uint16_t _fold(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return <uint16_t>acc


cdef inline void _put16(unsigned char *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline uint16_t _get16(const unsigned char *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _get32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _put32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef int _finish_csum(unsigned char *p, size_t n, size_t start, size_t offset) noexcept nogil:
    """VIRTIO_NET_HDR_F_NEEDS_CSUM: the field at start+offset holds the
    pseudo-header sum; complete the ones' complement sum over p[start:n]."""
    cdef uint16_t c
    if start + offset + 2 > n:
        return -1
    c = ~_fold(_sum16(p + start, n - start, 0)) & 0xFFFF
    if c == 0 and offset == 6:      # UDP: a computed zero is sent as all ones
        c = 0xFFFF
    _put16(p + start + offset, c)
    return 0


cdef void _l4_csum(unsigned char *p, size_t n, size_t l4, int proto, size_t csum_off) noexcept nogil:
    """Full TCP/UDP checksum of the packet p[0:n] (IPv4 or IPv6, transport at l4)."""
    cdef uint64_t acc = 0
    cdef uint16_t c
    cdef size_t l4len = n - l4
    _put16(p + l4 + csum_off, 0)
    if p[0] >> 4 == 4:
        acc = _sum16(p + 12, 8, acc)
    else:
        acc = _sum16(p + 8, 32, acc)
    acc += proto + (l4len & 0xFFFF) + (l4len >> 16)
    acc = _sum16(p + l4, l4len, acc)
    c = ~_fold(acc) & 0xFFFF
    if c == 0 and proto == 17:
        c = 0xFFFF
    _put16(p + l4 + csum_off, c)


cdef void _ipv4_csum(unsigned char *p) noexcept nogil:
    cdef size_t ihl = (p[0] & 0x0F) * 4
    _put16(p + 10, 0)
    _put16(p + 10, ~_fold(_sum16(p, ihl, 0)) & 0xFFFF)


cdef int _tso_split(fp_pkt *slots, int k, int room) noexcept nogil:
    """slots[k] holds a virtio_net_hdr at buf+22 and a packet at buf+32 (len).
    Complete a partial checksum, or cut a TCP (TSO4/TSO6) or UDP (USO)
    super-packet into segments in slots[k], slots[k+1], ... with correct IP
    lengths, IDs, TCP sequence numbers, flags and checksums.  Returns the
    number of slots used (>= 1); slots[k].verdict is a drop if the header is
    unusable."""
    cdef unsigned char *h = slots[k].buf + FP_PAYLOAD_OFFSET - VNET_HDR_LEN
    cdef unsigned char *p = slots[k].buf + FP_PAYLOAD_OFFSET
    cdef size_t n = slots[k].len
    cdef uint8_t flags = h[0], gso_type = h[1] & 0x7F
    cdef size_t gso_size = h[4] | (<size_t>h[5] << 8)      # little-endian (virtio 1.0 on x86)
    cdef size_t csum_start = h[6] | (<size_t>h[7] << 8)
    cdef size_t csum_offset = h[8] | (<size_t>h[9] << 8)
    cdef unsigned char hdrs[256]
    cdef size_t l4, hlen, payload, chunk, l4hdr
    cdef int nseg, i, proto
    cdef bint v4
    cdef uint32_t seq
    cdef uint16_t ident
    cdef unsigned char *d
    if gso_type == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            if _finish_csum(p, n, csum_start, csum_offset) < 0:
                slots[k].verdict = D_BAD_INNER
        return 1
    if n < 20 or gso_size == 0:
        slots[k].verdict = D_BAD_INNER
        return 1
    v4 = p[0] >> 4 == 4
    l4 = csum_start
    if gso_type == VIRTIO_NET_HDR_GSO_TCPV4 or gso_type == VIRTIO_NET_HDR_GSO_TCPV6:
        proto = 6
        if l4 + 20 > n:
            slots[k].verdict = D_BAD_INNER
            return 1
        l4hdr = (p[l4 + 12] >> 4) * 4
    elif gso_type == VIRTIO_NET_HDR_GSO_UDP_L4:
        proto = 17
        l4hdr = 8
    else:
        slots[k].verdict = D_BAD_INNER
        return 1
    hlen = l4 + l4hdr
    if (v4 and (gso_type == VIRTIO_NET_HDR_GSO_TCPV6 or l4 < 20)) or \
            (not v4 and (p[0] >> 4 != 6 or gso_type == VIRTIO_NET_HDR_GSO_TCPV4 or l4 < 40)) or \
            l4hdr < 8 or hlen > n or hlen > sizeof(hdrs):
        slots[k].verdict = D_BAD_INNER
        return 1
    payload = n - hlen
    nseg = <int>((payload + gso_size - 1) // gso_size)
    if nseg < 1:
        nseg = 1
    if nseg > room:
        slots[k].verdict = D_BAD_INNER
        return 1
    memcpy(hdrs, p, hlen)
    seq = _get32(hdrs + l4 + 4) if proto == 6 else 0
    ident = _get16(hdrs + 4) if v4 else 0
    # Segments 1.. are copied out before segment 0 is rewritten in place.
    i = nseg - 1
    while i >= 0:
        chunk = gso_size if payload - i * gso_size > gso_size else payload - i * gso_size
        d = slots[k + i].buf + FP_PAYLOAD_OFFSET
        if i > 0:
            _pkt_reset(&slots[k + i])
            memcpy(d, hdrs, hlen)
            memcpy(d + hlen, p + hlen + i * gso_size, chunk)
            slots[k + i].addrlen = 0
        slots[k + i].len = hlen + chunk
        if v4:
            _put16(d + 2, <uint16_t>(hlen + chunk))
            _put16(d + 4, <uint16_t>(ident + i))
            _ipv4_csum(d)
        else:
            _put16(d + 4, <uint16_t>(hlen + chunk - 40))
        if proto == 6:
            _put32(d + l4 + 4, seq + <uint32_t>(i * gso_size))
            if i < nseg - 1:
                d[l4 + 13] &= ~0x09          # FIN and PSH only on the last segment
            if i > 0:
                d[l4 + 13] &= ~0x80          # CWR only on the first
            _l4_csum(d, hlen + chunk, l4, 6, 16)
        else:
            _put16(d + l4 + 4, <uint16_t>(l4hdr + chunk))
            _l4_csum(d, hlen + chunk, l4, 17, 6)
        i -= 1
    return nseg


cdef inline bint _tcp_segment(const unsigned char *p, size_t n, size_t *l4, size_t *hlen) noexcept nogil:
    """Is p[0:n] a TCP segment that may be coalesced (IPv4 without options or
    fragmentation, or IPv6 without extension headers; flags ACK and PSH only;
    a payload)?  Sets the transport offset and the header length."""
    cdef size_t t
    if n >= 40 and p[0] == 0x45:
        if p[9] != 6 or (_get16(p + 6) & 0x3FFF) or _get16(p + 2) != n:
            return False
        t = 20
    elif n >= 60 and p[0] >> 4 == 6:
        if p[6] != 6 or <size_t>_get16(p + 4) + 40 != n:
            return False
        t = 40
    else:
        return False
    l4[0] = t
    hlen[0] = t + (p[t + 12] >> 4) * 4
    if hlen[0] < t + 20 or hlen[0] >= n:
        return False
    return (p[t + 13] & 0xFF) in (0x10, 0x18)


cdef inline bint _same_flow(const unsigned char *a, const unsigned char *b, size_t l4,
                            size_t hlen) noexcept nogil:
    """b continues a's flow with identical headers apart from lengths, IDs,
    checksums, sequence numbers and PSH."""
    if l4 == 20:
        if a[1] != b[1] or a[8] != b[8] or (a[6] & 0x40) != (b[6] & 0x40) \
                or memcmp(a + 12, b + 12, 8) != 0:
            return False
    else:
        if memcmp(a, b, 4) != 0 or a[7] != b[7] or memcmp(a + 8, b + 8, 32) != 0:
            return False
    return (memcmp(a + l4, b + l4, 4) == 0                    # ports
            and memcmp(a + l4 + 8, b + l4 + 8, 4) == 0        # ack
            and a[l4 + 12] == b[l4 + 12]                      # data offset
            and memcmp(a + l4 + 14, b + l4 + 14, 2) == 0      # window
            and memcmp(a + l4 + 20, b + l4 + 20, hlen - l4 - 20) == 0)   # options


cdef int _write_tun(fp_worker *w, fp_pkt *pkts, int n) noexcept nogil:
    """Write the V_PASS packets to the TUN device.  With a virtio_net_hdr
    device, consecutive segments of one TCP flow are coalesced into one
    super-packet (gso_type TCPV4/TCPV6, the kernel's GRO in reverse) and
    written with one writev, segments in place; others get an empty header.
    Returns the number of packets that failed (marked D_SEND_FAILED)."""
    cdef int i = 0, j, k, count, failed = 0
    cdef fp_pkt *f
    cdef fp_pkt *q
    cdef unsigned char *p
    cdef unsigned char *h
    cdef size_t l4 = 0, hlen = 0, l4b = 0, hlenb = 0, gso, total, plen, tcplen
    cdef uint32_t next_seq
    cdef bint closed
    cdef ssize_t r
    cdef uint64_t acc
    cdef int niov
    while i < n:
        f = &pkts[i]
        if f.verdict != V_PASS:
            i += 1
            continue
        p = f.buf + FP_PAYLOAD_OFFSET
        h = p - VNET_HDR_LEN
        count = 1
        niov = 1
        j = i + 1
        if w.vnet and _tcp_segment(p, f.len, &l4, &hlen):
            gso = f.len - hlen
            total = f.len
            next_seq = _get32(p + l4 + 4) + <uint32_t>gso
            closed = (p[l4 + 13] & 0x08) != 0                 # PSH ends a run
            while not closed and j < n and count < 64:
                q = &pkts[j]
                if q.verdict != V_PASS:
                    j += 1
                    continue
                if not _tcp_segment(q.buf + FP_PAYLOAD_OFFSET, q.len, &l4b, &hlenb) \
                        or l4b != l4 or hlenb != hlen:
                    break
                plen = q.len - hlen
                if (plen > gso or total + plen > 65000
                        or _get32(q.buf + FP_PAYLOAD_OFFSET + l4 + 4) != next_seq
                        or not _same_flow(p, q.buf + FP_PAYLOAD_OFFSET, l4, hlen)):
                    break
                w.iovs[niov].iov_base = q.buf + FP_PAYLOAD_OFFSET + hlen
                w.iovs[niov].iov_len = plen
                niov += 1
                count += 1
                total += plen
                next_seq += <uint32_t>plen
                if q.buf[FP_PAYLOAD_OFFSET + l4 + 13] & 0x08:
                    p[l4 + 13] |= 0x08
                    closed = True
                if plen < gso:
                    closed = True
                j += 1
        if count > 1:
            tcplen = total - l4
            if l4 == 20:
                _put16(p + 2, <uint16_t>total)
                _ipv4_csum(p)
                acc = _sum16(p + 12, 8, 0)
            else:
                _put16(p + 4, <uint16_t>(total - 40))
                acc = _sum16(p + 8, 32, 0)
            acc += 6 + (tcplen & 0xFFFF) + (tcplen >> 16)
            _put16(p + l4 + 16, _fold(acc))                   # pseudo-header sum only
            h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM
            h[1] = VIRTIO_NET_HDR_GSO_TCPV4 if l4 == 20 else VIRTIO_NET_HDR_GSO_TCPV6
            h[2] = hlen & 0xFF
            h[3] = hlen >> 8
            h[4] = gso & 0xFF
            h[5] = gso >> 8
            h[6] = l4 & 0xFF
            h[7] = l4 >> 8
            h[8] = 16
            h[9] = 0
            w.gro_tun_packets += 1
            w.gro_tun_segments += count
        elif w.vnet:
            memset(h, 0, VNET_HDR_LEN)                        # "nothing to do"
            j = i + 1
        else:
            j = i + 1
        w.iovs[0].iov_base = h if w.vnet else p
        w.iovs[0].iov_len = f.len + (VNET_HDR_LEN if w.vnet else 0)
        while True:
            r = writev(w.inner_fd, w.iovs, niov)
            if r < 0 and errno == EINTR:
                continue
            break
        if r < 0:
            for k in range(i, j):
                if pkts[k].verdict == V_PASS:
                    pkts[k].verdict = D_SEND_FAILED
                    failed += 1
        i = j
    return failed


# --- firewall: the compiled tables of dataplane/firewall.py, decided in C ---------------
cdef enum:
    FW_ACCEPT = 0
    FW_DROP = 1
    FW_REJECT = 2
    FW_DEFER = 3                   # decided by the Python classifier (fragments, stateful)
    FW_R_RULE = 0                  # firewall.Reason
    FW_R_DEFAULT = 1
    FW_R_MALFORMED = 4
    FW_R_PROTOCOL = 5
    FW_HDR_SIZE = 16               # firewall.TABLE_HEADER.size
    FW_PROTOCOLS_OFF = 16
    FW_RULES_OFF = 8464            # firewall.RULES_OFF
    FW_RULE_SIZE = 88              # firewall.RULE.size
    FW_F_PROTO = 0x01
    FW_F_PORTS = 0x02
    FW_F_PEER = 0x04
    FW_F_REMOTE4 = 0x08
    FW_F_REMOTE6 = 0x10
    FW_F_LOCAL4 = 0x20
    FW_F_LOCAL6 = 0x40


cdef inline uint16_t _le16(const unsigned char *p) noexcept nogil:
    return p[0] | (<uint16_t>p[1] << 8)


cdef inline bint _masked_eq(const unsigned char *a, const unsigned char *net,
                            const unsigned char *mask, int width) noexcept nogil:
    cdef int i
    for i in range(width):
        if (a[i] & mask[i]) != net[i]:
            return False
    return True


cdef int _fw_decide(const unsigned char *blob, size_t bloblen, int direction,
                    const unsigned char *p, size_t n, int64_t peer_id,
                    int *rule, int *reason) noexcept nogil:
    """One packet (TUN mode) against the compiled tables, exactly as
    firewall.classify decides it for a stateless table and a packet that is
    not a fragment; FW_DEFER for the rest (the caller asks Python)."""
    cdef uint32_t nrules, i
    cdef int fam, width, it
    cdef size_t ihl, tlen, l4, end, hl
    cdef unsigned int proto, nh, frag, fo
    cdef bint fragment = False, done
    cdef long sport = -1, dport = -1
    cdef const unsigned char *src
    cdef const unsigned char *dst
    cdef const unsigned char *remote
    cdef const unsigned char *local
    cdef const unsigned char *r
    cdef uint16_t f
    rule[0] = -1
    if bloblen < FW_RULES_OFF:
        return FW_DEFER
    nrules = _le32(blob + 8)
    if blob[12] & 1 or bloblen < FW_RULES_OFF + nrules * FW_RULE_SIZE:
        return FW_DEFER                     # stateful: conntrack lives in Python
    # 1. parse (firewall "Parsing" rules)
    if n >= 20 and p[0] >> 4 == 4:
        ihl = (p[0] & 15) << 2
        tlen = _get16(p + 2)
        if ihl < 20 or tlen < ihl or tlen > n:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        fam, width, proto, l4, end = 0, 4, p[9], ihl, tlen
        frag = _get16(p + 6)
        fragment = (frag & 0x1FFF) != 0 or (frag & 0x2000) != 0
        src, dst = p + 12, p + 16
    elif n >= 40 and p[0] >> 4 == 6:
        end = 40 + _get16(p + 4)
        if end > n:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        fam, width, l4, nh = 1, 16, 40, p[6]
        src, dst = p + 8, p + 24
        done = False
        for it in range(8):
            if nh == 0 or nh == 43 or nh == 60:
                if l4 + 8 > end:
                    reason[0] = FW_R_MALFORMED
                    return FW_DROP
                hl = (<size_t>p[l4 + 1] + 1) << 3
                nh = p[l4]
                l4 += hl
                if l4 > end:
                    reason[0] = FW_R_MALFORMED
                    return FW_DROP
            elif nh == 44:
                if l4 + 8 > end:
                    reason[0] = FW_R_MALFORMED
                    return FW_DROP
                fo = _get16(p + l4 + 2)
                nh = p[l4]
                l4 += 8
                fragment = fragment or (fo >> 3) != 0 or (fo & 1) != 0
                if fo >> 3:
                    done = True
                    break
            else:
                done = True
                break
        if not done:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        proto = nh
    else:
        reason[0] = FW_R_MALFORMED
        return FW_DROP
    if fragment:
        return FW_DEFER                     # fragment cache lives in Python
    # 3. protocol policy
    if not blob[FW_PROTOCOLS_OFF + proto]:
        reason[0] = FW_R_PROTOCOL
        return FW_DROP
    # 1b. transport header of a first/only fragment
    if proto == 6:
        if end - l4 < 20:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        sport, dport = _get16(p + l4), _get16(p + l4 + 2)
    elif proto == 17:
        if end - l4 < 8:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        sport, dport = _get16(p + l4), _get16(p + l4 + 2)
    elif proto == 1 or proto == 58:
        if end - l4 < 8:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
    if direction:
        remote, local = dst, src
    else:
        remote, local = src, dst
    # 6. rules of this direction, first match wins
    for i in range(nrules):
        r = blob + FW_RULES_OFF + i * FW_RULE_SIZE
        if r[0] != direction:
            continue
        f = _le16(r + 4)
        if fam == 0 and f & (FW_F_REMOTE6 | FW_F_LOCAL6):
            continue
        if fam == 1 and f & (FW_F_REMOTE4 | FW_F_LOCAL4):
            continue
        if f & FW_F_PROTO and r[2] != proto:
            continue
        if f & FW_F_PORTS:
            if proto != 6 and proto != 17:
                continue
            if not (_le16(r + 8) <= sport <= _le16(r + 10) and _le16(r + 12) <= dport <= _le16(r + 14)):
                continue
        if f & FW_F_PEER and <int64_t>_le32(r + 16) != peer_id:
            continue
        if f & (FW_F_REMOTE4 | FW_F_REMOTE6) and not _masked_eq(remote, r + 24, r + 40, width):
            continue
        if f & (FW_F_LOCAL4 | FW_F_LOCAL6) and not _masked_eq(local, r + 56, r + 72, width):
            continue
        rule[0] = <int>_le32(r + 20)
        reason[0] = FW_R_RULE
        return r[1]
    # 7. the direction's default
    reason[0] = FW_R_DEFAULT
    return blob[13 + direction]


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


cdef int _fw_classify(fp_engine *e, fp_pkt *pkts, int n, int direction, size_t offset) noexcept with gil:
    """Classify every V_PASS packet; a refused packet gets D_FIREWALL.  Called
    by a worker without the engine lock; holds the GIL for the batch (the
    firewall's counters and its Python parts are shared with the loop thread).

    ``e.fw`` is FastDataPath's hook: ``hook.state()`` gives the active compiled
    tables and counter arrays (the C classifier decides and counts; fragments
    and stateful tables go to ``hook.classify_one``), or None for a firewall
    object without compiled tables (``hook.classify_batch`` decides).
    Anything raising refuses the batch (fails closed).  Returns the number
    refused."""
    cdef int i, refused = 0, action, rule, reason
    cdef list items
    cdef list idx
    cdef object verdicts, hook, state, data
    cdef fp_pkt *pkt
    cdef const unsigned char[::1] blob
    cdef unsigned long long[::1] hits
    cdef unsigned long long[::1] drops
    cdef unsigned long long[::1] accepts
    if e.fw == NULL:                 # removed meanwhile (set under the GIL)
        return 0
    hook = <object>e.fw
    try:
        state = hook.state()
        if state is None:
            items = []
            idx = []
            for i in range(n):
                pkt = &pkts[i]
                if pkt.verdict != V_PASS:
                    continue
                items.append((PyBytes_FromStringAndSize(<char *>pkt.buf + FP_PAYLOAD_OFFSET,
                                                        pkt.len - offset), pkt.peer_id))
                idx.append(i)
            if items:
                verdicts = hook.classify_batch(direction, items)
                if len(verdicts) != len(items):
                    raise ValueError("firewall returned %d verdicts for %d packets"
                                     % (len(verdicts), len(items)))
                for i in range(len(items)):
                    if not verdicts[i]:
                        pkts[<int>idx[i]].verdict = D_FIREWALL
                        refused += 1
            return refused
        blob, hits, drops, accepts, applies = state
        for i in range(n):
            pkt = &pkts[i]
            if pkt.verdict != V_PASS:
                continue
            if not applies:              # test mode: the firewall does not apply
                accepts[FW_R_DEFAULT] += 1
                continue
            rule = -1
            action = _fw_decide(&blob[0], blob.shape[0], direction,
                                pkt.buf + FP_PAYLOAD_OFFSET, pkt.len - offset,
                                pkt.peer_id, &rule, &reason)
            if action == FW_DEFER:
                data = PyBytes_FromStringAndSize(<char *>pkt.buf + FP_PAYLOAD_OFFSET, pkt.len - offset)
                if not hook.classify_one(direction, data, pkt.peer_id):
                    pkt.verdict = D_FIREWALL
                    refused += 1
                continue
            if rule >= 0:
                hits[rule] += 1
            if action == FW_ACCEPT:
                accepts[reason] += 1
                continue
            drops[reason] += 1
            pkt.verdict = D_FIREWALL
            refused += 1
            if action == FW_REJECT:
                hook.reject(PyBytes_FromStringAndSize(<char *>pkt.buf + FP_PAYLOAD_OFFSET,
                                                      pkt.len - offset), direction, pkt.peer_id)
    except BaseException as exc:
        import logging
        logging.getLogger("phantom.fast").error("firewall classification failed: %r", exc)
        for i in range(n):
            if pkts[i].verdict == V_PASS:
                pkts[i].verdict = D_FIREWALL
                refused += 1
    return refused


# --- one batch each way (worker thread) -------------------------------------------------
cdef inline void _pkt_reset(fp_pkt *pkt) noexcept nogil:
    pkt.relay = False
    pkt.relayed_inner = False
    pkt.wrap = False
    pkt.cipher = CIPHER_SECRETBOX
    pkt.wire_off = 0
    pkt.wire_tail = 0
    pkt.verdict = V_PASS
    pkt.peer_slot = -1
    pkt.peer_serial = 0
    pkt.kp_serial = 0
    pkt.addrlen = 0
    pkt.was_next = False


cdef int _recv_batch(int fd, fp_pkt *pkts, int n, mmsghdr *msgs, iovec *iovs, int offset) noexcept nogil:
    """recvmmsg up to n datagrams into pkts[i].buf + offset; -1 on EAGAIN."""
    cdef int i, r
    for i in range(n):
        iovs[i].iov_base = pkts[i].buf + offset
        iovs[i].iov_len = FP_BUF_SIZE - offset
        memset(&msgs[i].msg_hdr, 0, sizeof(msghdr))
        msgs[i].msg_hdr.msg_name = &pkts[i].addr
        msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
        msgs[i].msg_hdr.msg_iov = &iovs[i]
        msgs[i].msg_hdr.msg_iovlen = 1
    while True:
        r = recvmmsg(fd, msgs, n, MSG_DONTWAIT, NULL)
        if r < 0 and errno == EINTR:
            continue
        break
    if r <= 0:
        return -1
    for i in range(r):
        _pkt_reset(&pkts[i])
        pkts[i].len = msgs[i].msg_len
        pkts[i].addrlen = msgs[i].msg_hdr.msg_namelen
        if msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
            pkts[i].verdict = D_OVERSIZED
    return r


cdef int _recv_udp(fp_worker *w, int *messages) noexcept nogil:
    """recvmmsg up to rx_msgs datagrams into rx_bufs and describe them in
    in_pkts; a UDP_GRO-coalesced datagram becomes one record per original
    datagram (each gso_size bytes, the last may be shorter), in wire order.
    Returns the number of records (0 on EAGAIN)."""
    cdef int i, r, n = 0, nmsg = w.rx_msgs
    cdef size_t length, g, off
    cdef cmsghdr *c
    cdef mmsghdr *msgs = w.msgs
    for i in range(nmsg):
        w.iovs[i].iov_base = w.rx_bufs[i]
        w.iovs[i].iov_len = FP_BUF_SIZE
        memset(&msgs[i].msg_hdr, 0, sizeof(msghdr))
        msgs[i].msg_hdr.msg_name = &w.in_pkts[i].addr       # scratch: copied below
        msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
        msgs[i].msg_hdr.msg_iov = &w.iovs[i]
        msgs[i].msg_hdr.msg_iovlen = 1
        if w.gro:
            msgs[i].msg_hdr.msg_control = &w.cmsgs[8 * i]
            msgs[i].msg_hdr.msg_controllen = 8 * sizeof(uint64_t)
    while True:
        r = recvmmsg(w.udp_fd, msgs, nmsg, MSG_DONTWAIT, NULL)
        if r < 0 and errno == EINTR:
            continue
        break
    messages[0] = r if r > 0 else 0
    if r <= 0:
        return 0
    # Addresses were received into in_pkts[0..r); move them to a side table
    # first (expansion below would overwrite them).
    for i in range(r):
        memcpy(&w.rx_addrs[i], &w.in_pkts[i].addr, msgs[i].msg_hdr.msg_namelen)
        w.rx_addrlens[i] = msgs[i].msg_hdr.msg_namelen
    for i in range(r):
        length = msgs[i].msg_len
        g = 0
        if w.gro and msgs[i].msg_hdr.msg_controllen:
            c = CMSG_FIRSTHDR(&msgs[i].msg_hdr)
            while c != NULL:
                if c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO:
                    g = (<int *>CMSG_DATA(c))[0]
                c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)
        if g == 0 or g >= length:
            g = length
        else:
            w.gro_datagrams += 1
        off = 0
        while True:
            if n >= w.in_cap:
                break                      # cannot happen: in_cap = rx_msgs * 64
            _pkt_reset(&w.in_pkts[n])
            w.in_pkts[n].buf = w.rx_bufs[i] + off
            w.in_pkts[n].len = g if length - off > g else length - off
            memcpy(&w.in_pkts[n].addr, &w.rx_addrs[i], w.rx_addrlens[i])
            w.in_pkts[n].addrlen = w.rx_addrlens[i]
            if msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                w.in_pkts[n].verdict = D_OVERSIZED
            n += 1
            off += g
            if off >= length:
                break
    return n


cdef int _inner_batch(fp_worker *w) noexcept nogil:
    """Read up to burst inner packets, encrypt and send them.  Returns 1 when
    the burst was full (more may be waiting), 0 when the fd reached EAGAIN."""
    cdef fp_engine *e = w.e
    cdef int n = 0, r, events, reads = 0
    cdef double now
    cdef ssize_t got
    cdef size_t off = FP_PAYLOAD_OFFSET - VNET_HDR_LEN if w.vnet else FP_PAYLOAD_OFFSET
    if w.inner_is_socket:
        r = _recv_batch(w.inner_fd, w.out_pkts, w.burst, w.msgs, w.iovs, FP_PAYLOAD_OFFSET)
        if r < 0:
            return 0
        n = reads = r
    else:
        while n < w.burst:
            got = read(w.inner_fd, w.out_pkts[n].buf + off, FP_BUF_SIZE - off)
            if got < 0:
                if errno == EINTR:
                    continue
                break
            if got == 0:
                break
            reads += 1
            _pkt_reset(&w.out_pkts[n])
            if w.vnet:
                if got < VNET_HDR_LEN:
                    continue
                w.out_pkts[n].len = got - VNET_HDR_LEN
                r = _tso_split(w.out_pkts, n, w.out_cap - n)
                if r > 1:
                    w.tso_packets += 1
                    w.tso_segments += r
                n += r
            else:
                w.out_pkts[n].len = got
                n += 1
    if n == 0:
        return 0
    w.inner_batches += 1
    w.inner_packets += n
    now = _now()
    _lock(e)
    if e.fw == NULL and e.mode != MODE_TAP:
        events = _out_prepare(e, w.out_pkts, n, now, True, True)
        _unlock(e)
        _out_finish(w, w.out_pkts, n, now, events, True)
        return n >= w.burst
    events = _out_prepare(e, w.out_pkts, n, now, True, True, False)
    _unlock(e)
    if e.mode != MODE_TAP:
        _out_finish(w, w.out_pkts, n, now, events, False)
        return n >= w.burst
    # TAP: a frame to flood goes to every peer in turn, in batch order
    r = 0
    for got in range(n):
        if w.out_pkts[got].verdict == V_PASS and w.out_pkts[got].peer_slot == -2:
            _out_finish(w, w.out_pkts + r, <int>got - r, now, events, False)
            events = 0
            _out_flood(w, &w.out_pkts[got], now)
            r = got + 1
    _out_finish(w, w.out_pkts + r, n - r, now, events, False)
    return n >= w.burst


cdef void _out_finish(fp_worker *w, fp_pkt *pkts, int n, double now, int events,
                      bint keyed) noexcept nogil:
    """Phases 2b-5 for routed packets: firewall and keys (unless ``keyed``),
    seal, send, count."""
    cdef fp_engine *e = w.e
    if n > 0:
        if not keyed:
            if e.fw != NULL:
                _fw_classify(e, pkts, n, 1, 0)
            _lock(e)
            events += _out_prepare(e, pkts, n, now, False, True)
            _unlock(e)
        _out_seal(e, pkts, n)
        _send_batch(w.udp_fd, pkts, n, w.msgs, w.iovs, w.map, 0, &w.send_waits,
                    w.gso, w.groups, w.cmsgs, &w.gso_sends, &w.gso_fallbacks)
        _lock(e)
        _account(e, pkts, n, now, True)
        _unlock(e)
    if events:
        _notify(e)


cdef void _out_flood(fp_worker *w, fp_pkt *orig, double now) noexcept nogil:
    """TAP: one frame for every peer (the reference's flooding): the firewall
    once (peer -1), then a copy per peer through keys, seal, send."""
    cdef fp_engine *e = w.e
    cdef fp_pkt pkt
    cdef int *slots
    cdef int i, k = 0, cap, events = 0
    w.floods += 1
    if e.fw != NULL:
        _fw_classify(e, orig, 1, 1, 0)
        if orig.verdict != V_PASS:
            _lock(e)
            _count_drop(e, orig)
            _unlock(e)
            return
    _lock(e)
    cap = e.peers_cap
    slots = <int *>malloc((cap + 1) * sizeof(int))
    if slots != NULL:
        for i in range(cap):
            if e.peers[i] != NULL:
                slots[k] = i
                k += 1
    _unlock(e)
    if slots == NULL:
        return
    for i in range(k):
        memset(&pkt, 0, sizeof(fp_pkt))
        pkt.buf = w.flood_buf
        pkt.len = orig.len
        memcpy(pkt.buf + FP_PAYLOAD_OFFSET, orig.buf + FP_PAYLOAD_OFFSET, orig.len)
        pkt.verdict = V_PASS
        pkt.peer_slot = slots[i]
        _lock(e)
        events += _out_prepare(e, &pkt, 1, now, False, True)
        _unlock(e)
        _out_seal(e, &pkt, 1)
        _send_batch(w.udp_fd, &pkt, 1, w.msgs, w.iovs, w.map, 0, &w.send_waits)
        _lock(e)
        _account(e, &pkt, 1, now, True)
        _unlock(e)
    free(slots)
    if events:
        _notify(e)


cdef int _udp_batch(fp_worker *w) noexcept nogil:
    """Receive up to burst datagrams, authenticate, decrypt, deliver."""
    cdef fp_engine *e = w.e
    cdef int n, i, events, failed = 0, reprocess
    cdef double now
    cdef ssize_t r
    cdef fp_pkt *pkt
    cdef int messages = 0
    n = _recv_udp(w, &messages)
    if n <= 0:
        return 0
    w.udp_batches += 1
    w.udp_packets += n
    now = _now()
    _lock(e)
    events = _in_prepare(e, w.in_pkts, n, now)
    _unlock(e)
    _in_open(w.in_pkts, n)
    _lock(e)
    events += _in_commit(e, w.in_pkts, n, now)
    _unlock(e)
    reprocess = 0
    for i in range(n):
        if w.in_pkts[i].verdict == V_REPROCESS:
            reprocess += 1
    if reprocess:                       # relay frames unwrapped: their inner datagrams, once more
        for i in range(n):
            pkt = &w.in_pkts[i]
            if pkt.verdict == V_REPROCESS:
                pkt.verdict = V_PASS
                pkt.relayed_inner = True
                pkt.relay = False
                pkt.was_next = False
            else:
                pkt.saved_verdict = pkt.verdict
                pkt.verdict = V_HOLD
        _lock(e)
        events += _in_prepare(e, w.in_pkts, n, now)
        _unlock(e)
        _in_open(w.in_pkts, n)
        _lock(e)
        events += _in_commit(e, w.in_pkts, n, now)
        _unlock(e)
        for i in range(n):
            pkt = &w.in_pkts[i]
            if pkt.verdict == V_HOLD:
                pkt.verdict = pkt.saved_verdict
    for i in range(n):                  # from here on, len is the payload length
        if w.in_pkts[i].verdict == V_PASS:
            w.in_pkts[i].len -= FP_PAYLOAD_OFFSET
    if e.fw != NULL:
        failed += _fw_classify(e, w.in_pkts, n, 0, 0)
    if e.mode == MODE_TAP:              # learn source MACs of frames that passed
        _lock(e)
        for i in range(n):
            pkt = &w.in_pkts[i]
            if pkt.verdict == V_PASS and not (pkt.buf[FP_PAYLOAD_OFFSET + 6] & 1) \
                    and e.peers[pkt.peer_slot] != NULL:
                _mac_learn(e, pkt.buf + FP_PAYLOAD_OFFSET + 6, pkt.peer_slot)
        _unlock(e)
    # deliver
    if w.inner_is_socket:
        _lock(e)
        for i in range(n):
            pkt = &w.in_pkts[i]
            if pkt.verdict != V_PASS:
                continue
            if e.test_target_len:
                memcpy(&pkt.addr, &e.test_target, e.test_target_len)
                pkt.addrlen = e.test_target_len
            elif e.test_last_len:
                memcpy(&pkt.addr, &e.test_last, e.test_last_len)
                pkt.addrlen = e.test_last_len
            else:
                memcpy(&pkt.addr, &e.test_default, e.test_default_len)
                pkt.addrlen = e.test_default_len
        _unlock(e)
        _send_batch(w.inner_fd, w.in_pkts, n, w.msgs, w.iovs, w.map,
                    FP_PAYLOAD_OFFSET, &w.send_waits)
        for i in range(n):
            if w.in_pkts[i].verdict == D_SEND_FAILED:
                failed += 1
                w.deliver_failed += 1
    else:
        r = _write_tun(w, w.in_pkts, n)
        failed += r
        w.deliver_failed += r
    if e.relay_enabled:
        failed += _relay_send(w, w.in_pkts, n)
    if failed:                          # drops decided after the commit phase
        _lock(e)
        for i in range(n):
            pkt = &w.in_pkts[i]
            if pkt.verdict == D_SEND_FAILED or pkt.verdict == D_FIREWALL:
                _count_drop(e, pkt)
        _unlock(e)
    if events:
        _notify(e)
    for i in range(n):
        if w.in_pkts[i].was_next:
            _flush_staged(e, w.in_pkts[i].peer_slot)
    return messages >= w.rx_msgs


cdef int _worker_loop(fp_worker *w) noexcept nogil:
    """The data-plane loop.  Returns 0 when stopped, -errno on a fatal error."""
    cdef epoll_event evs[8]
    cdef int n, i, fd, got, timeout
    cdef bint inner_ready = False, udp_ready = False
    cdef uint64_t junk
    while True:
        timeout = 0 if (inner_ready or udp_ready) else -1
        n = epoll_wait(w.epfd, evs, 8, timeout)
        if n < 0:
            if errno == EINTR:
                continue
            return -errno
        if n > 0:
            w.wakeups += 1
        for i in range(n):
            fd = evs[i].data.fd
            if fd == w.stop_fd:
                read(w.stop_fd, &junk, 8)
                return 0
            if fd == w.inner_fd:
                inner_ready = True
            elif fd == w.udp_fd:
                udp_ready = True
        # One burst per ready fd per round, alternating, so neither side starves.
        if inner_ready:
            got = _inner_batch(w)             # 1: the burst was full
            if not got or not w.edge:
                inner_ready = False
            else:
                w.capped += 1
        if udp_ready:
            got = _udp_batch(w)
            if not got or not w.edge:
                udp_ready = False
            else:
                w.capped += 1


# --- the Engine: tables shared by the workers, driven by the control plane ---------------
cdef int _send_single(fp_engine *e, int slot, unsigned char *buf, Py_ssize_t n,
                      bint stage) noexcept nogil:
    """Prepare, seal, send and account one packet of ``n`` bytes sitting at
    ``buf + FP_PAYLOAD_OFFSET`` for peer ``slot`` (``stage``: keep it for the
    handshake when there is no usable keypair).  Returns the packet's verdict."""
    cdef fp_pkt pkt
    cdef mmsghdr msg
    cdef iovec iov
    cdef int map0, events
    cdef uint64_t waits = 0
    cdef double now = _now()
    memset(&pkt, 0, sizeof(fp_pkt))
    pkt.buf = buf
    pkt.len = n
    pkt.verdict = V_PASS
    pkt.peer_slot = slot
    _lock(e)
    events = _out_prepare(e, &pkt, 1, now, False, stage)
    _unlock(e)
    _out_seal(e, &pkt, 1)
    _send_batch(e.udp_fd, &pkt, 1, &msg, &iov, &map0, 0, &waits)
    _lock(e)
    _account(e, &pkt, 1, now, True)
    _unlock(e)
    if events:
        _notify(e)
    return pkt.verdict


cdef class Engine:
    """Peers, key slots, routes, counters and the event queue, in C.

    Every method is called from the control-plane thread; the tables are
    shared with the worker threads under one mutex.
    """

    def __cinit__(self, int mode, int udp_fd, int staged_max=128, int burst=64,
                  size_t max_inner=FP_MAX_INNER,
                  double reject_after_time=180.0,
                  uint64_t reject_after_messages=_constants.REJECT_AFTER_MESSAGES,
                  uint64_t rekey_after_messages=_constants.REKEY_AFTER_MESSAGES):
        cdef int i
        self.e = <fp_engine *>calloc(1, sizeof(fp_engine))
        if self.e == NULL:
            raise MemoryError()
        self.slots = {}
        pthread_mutex_init(&self.e.lock, NULL)
        self.e.mode = mode
        self.e.udp_fd = udp_fd
        self.e.staged_max = staged_max
        self.e.burst = burst
        self.e.max_inner = max_inner
        self.e.reject_after_time = reject_after_time
        self.e.reject_after_messages = reject_after_messages
        self.e.rekey_after_messages = rekey_after_messages
        self.e.test_peer = -1
        self.e.next_serial = 1
        self.e.trie4 = _trie_new()
        self.e.trie6 = _trie_new()
        self.e.macs = <fp_mac *>malloc(FP_MACS * sizeof(fp_mac))
        if self.e.macs == NULL:
            raise MemoryError()
        for i in range(FP_MACS):
            self.e.macs[i].slot = -1
        self.e.event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.e.event_fd < 0 or self.e.trie4 == NULL or self.e.trie6 == NULL:
            raise OSError("cannot create the event fd")

    def __dealloc__(self):
        cdef int i
        cdef fp_engine *e = self.e
        if e == NULL:
            return
        for i in range(e.peers_cap):
            if e.peers[i] != NULL:
                self._free_peer(i)
        free(e.peers)
        _pairs_forget_all(e)
        _trie_free(e.trie4)
        _trie_free(e.trie6)
        free(e.macs)
        while e.ev_count:
            free(e.events[e.ev_head].data)
            e.ev_head = (e.ev_head + 1) & (FP_EVENT_QUEUE - 1)
            e.ev_count -= 1
        if e.event_fd >= 0:
            close(e.event_fd)
        pthread_mutex_destroy(&e.lock)
        _wipe(e, sizeof(fp_engine))
        free(e)
        self.e = NULL

    cdef int _slot(self, int64_t peer_id) except -1:
        try:
            return self.slots[peer_id]
        except KeyError:
            raise KeyError("unknown peer %r" % peer_id) from None

    cdef void _free_peer(self, int slot) noexcept:
        cdef fp_engine *e = self.e
        cdef fp_peer *p = e.peers[slot]
        _id_unlink(e, slot)
        if p.relay_known:
            _relay_unlink(e, slot)
        _kp_destroy(e, p.current)
        _kp_destroy(e, p.previous)
        _kp_destroy(e, p.next)
        _staged_clear(e, p)
        free(p.staged)
        free(p)
        e.peers[slot] = NULL
        if e.test_peer == slot:
            e.test_peer = -1

    @property
    def event_fd(self):
        return self.e.event_fd

    @property
    def mode(self):
        return self.e.mode

    # peers ------------------------------------------------------------------------------
    def add_peer(self, int64_t peer_id):
        cdef fp_peer *p
        cdef fp_peer **grown
        cdef int slot
        cdef fp_engine *e = self.e
        if peer_id in self.slots:
            raise ValueError("peer %r already added" % peer_id)
        p = <fp_peer *>calloc(1, sizeof(fp_peer))
        if p == NULL:
            raise MemoryError()
        # p.staged stays NULL until the peer first stages a packet (_stage):
        # most peers of a hub never wait for a handshake with traffic queued,
        # and the ring is staged_max * 16 bytes (2 KB by default) per peer
        p.peer_id = peer_id
        with nogil:
            _lock(e)
            # Slots are never reused, so a stale route or packet record can
            # never point at a different peer.
            slot = e.peers_cap
            grown = e.peers
            if slot >= e.peers_alloc:
                # geometric growth: adding N peers copies O(N) pointers in all
                grown = <fp_peer **>realloc(e.peers, (2 * slot + 16) * sizeof(fp_peer *))
                if grown != NULL:
                    e.peers = grown
                    e.peers_alloc = 2 * slot + 16
            if grown != NULL:
                e.peers_cap = slot + 1
                p.serial = e.next_serial
                e.next_serial += 1
                e.peers[slot] = p
                _id_link(e, slot)
            _unlock(e)
        if grown == NULL:
            free(p.staged)
            free(p)
            raise MemoryError()
        self.slots[peer_id] = slot

    def remove_peer(self, int64_t peer_id):
        cdef int slot = self._slot(peer_id)
        del self.slots[peer_id]
        with nogil:
            _lock(self.e)
            _pairs_forget(self.e, peer_id)
        self._free_peer(slot)
        _mac_forget(self.e, slot)
        with nogil:
            _unlock(self.e)

    def set_routes(self, routes):
        """Replace every allowed-IPs route at once.  ``routes`` is a sequence of
        (bits, address bytes, prefix length, peer_id), bits 32 or 128, applied
        in order (a later duplicate prefix wins)."""
        cdef fp_trie *t4 = _trie_new()
        cdef fp_trie *t6 = _trie_new()
        cdef fp_trie *old4
        cdef fp_trie *old6
        cdef const unsigned char[::1] a
        cdef int bits, plen, slot
        cdef fp_engine *e = self.e
        try:
            if t4 == NULL or t6 == NULL:
                raise MemoryError()
            for bits, addr, plen, peer_id in routes:
                a = addr
                slot = self._slot(peer_id)
                if bits not in (32, 128) or a.shape[0] * 8 != bits or not 0 <= plen <= bits:
                    raise ValueError("bad route %r" % ((bits, addr, plen, peer_id),))
                if _trie_insert(t4 if bits == 32 else t6, &a[0], plen, slot) < 0:
                    raise MemoryError()
        except BaseException:
            _trie_free(t4)
            _trie_free(t6)
            raise
        with nogil:
            _lock(e)
            old4, old6 = e.trie4, e.trie6
            e.trie4, e.trie6 = t4, t6
            _unlock(e)
            _trie_free(old4)
            _trie_free(old6)

    def set_route(self, int bits, addr, int plen, peer_id):
        """Route one prefix to ``peer_id``, or remove it (``peer_id`` None):
        :meth:`change_routes` with one change, O(prefix length) whatever the
        number of routes.  Returns False when removing an absent prefix."""
        removed = self.change_routes([(bits, addr, plen, peer_id)])
        return peer_id is not None or removed == 1

    def change_routes(self, routes):
        """Apply route changes as one step for the workers.  Each of
        ``routes`` is (bits, address bytes, prefix length, peer_id): the prefix
        is routed to that peer, or removed when peer_id is None; a later change
        of the same prefix wins.  A worker routes every packet by the table
        before the change or by the table after it, never by a mix: the nodes
        the new prefixes need are made first (with no owner, so no lookup
        changes), then every owner is set and every removal done, all in one
        hold of the engine lock.  Out of memory: nothing changes (MemoryError).
        Costs the changed prefixes' lengths, not the size of the table.
        Returns how many of the removed prefixes were there."""
        cdef Py_ssize_t n, i, made = 0
        cdef unsigned char *addrs = NULL
        cdef int *meta = NULL            # per change: bits, prefix length, slot (-1: remove)
        cdef fp_trie **nodes = NULL
        cdef fp_trie *root
        cdef int removed = 0
        cdef bint ok = True
        cdef const unsigned char[::1] a
        cdef fp_engine *e = self.e
        last = {}
        for bits, addr, plen, peer_id in routes:
            a = addr
            if bits not in (32, 128) or a.shape[0] * 8 != bits or not 0 <= plen <= bits:
                raise ValueError("bad route %r" % ((bits, addr, plen, peer_id),))
            last[(bits, bytes(addr), plen)] = -1 if peer_id is None else self._slot(peer_id)
        n = len(last)
        if n == 0:
            return 0
        addrs = <unsigned char *>malloc(n * 16)
        meta = <int *>malloc(n * 3 * sizeof(int))
        nodes = <fp_trie **>calloc(n, sizeof(fp_trie *))
        if addrs == NULL or meta == NULL or nodes == NULL:
            free(addrs)
            free(meta)
            free(nodes)
            raise MemoryError()
        i = 0
        for (bits, addr, plen), slot in last.items():
            memcpy(addrs + 16 * i, <const char *>addr, bits // 8)
            meta[3 * i] = bits
            meta[3 * i + 1] = plen
            meta[3 * i + 2] = slot
            i += 1
        with nogil:
            _lock(e)
            for i in range(n):
                if meta[3 * i + 2] >= 0:
                    root = e.trie4 if meta[3 * i] == 32 else e.trie6
                    nodes[i] = _trie_node(root, addrs + 16 * i, meta[3 * i + 1])
                made = i + 1                   # (a failed one may have made part of its path)
                if meta[3 * i + 2] >= 0 and nodes[i] == NULL:
                    ok = False
                    break
            if ok:
                for i in range(n):
                    if meta[3 * i + 2] >= 0:
                        nodes[i].slot = meta[3 * i + 2]
                for i in range(n):
                    if meta[3 * i + 2] < 0:
                        root = e.trie4 if meta[3 * i] == 32 else e.trie6
                        removed += _trie_remove(root, addrs + 16 * i, meta[3 * i + 1])
            else:
                for i in range(made):          # undo: the empty nodes made above
                    if meta[3 * i + 2] >= 0:
                        root = e.trie4 if meta[3 * i] == 32 else e.trie6
                        _trie_prune(root, addrs + 16 * i, meta[3 * i + 1])
            _unlock(e)
        free(addrs)
        free(meta)
        free(nodes)
        if not ok:
            raise MemoryError()
        return removed

    def lookup(self, const unsigned char[::1] addr):
        """The peer_id owning ``addr`` (4 or 16 bytes) by longest prefix, or None."""
        cdef int slot, bits = addr.shape[0] * 8
        if bits not in (32, 128):
            raise ValueError("address must be 4 or 16 bytes")
        with nogil:
            _lock(self.e)
            slot = _route(self.e, &addr[0], bits)
            _unlock(self.e)
        if slot < 0:
            return None
        return self.e.peers[slot].peer_id

    def set_endpoint(self, int64_t peer_id, sockaddr_bytes):
        """Set (raw ``struct sockaddr`` bytes) or clear (None) a peer's endpoint."""
        cdef int slot = self._slot(peer_id)
        cdef const unsigned char[::1] a
        cdef fp_peer *p
        cdef Py_ssize_t n = 0
        if sockaddr_bytes is not None:
            a = sockaddr_bytes
            n = a.shape[0]
            if n < 2 or n > <Py_ssize_t>sizeof(sockaddr_storage):
                raise ValueError("bad sockaddr")
        with nogil:
            _lock(self.e)
            p = self.e.peers[slot]
            if n:
                memcpy(&p.endpoint, &a[0], n)
            p.endpoint_len = n
            _unlock(self.e)

    def endpoint(self, int64_t peer_id):
        cdef int slot = self._slot(peer_id)
        cdef sockaddr_storage ss
        cdef socklen_t n
        with nogil:
            _lock(self.e)
            n = self.e.peers[slot].endpoint_len
            memcpy(&ss, &self.e.peers[slot].endpoint, n)
            _unlock(self.e)
        if n == 0:
            return None
        return PyBytes_FromStringAndSize(<char *>&ss, n)

    def set_test_peer(self, peer_id):
        cdef int slot = -1
        if peer_id is not None:
            slot = self._slot(peer_id)
        with nogil:
            _lock(self.e)
            self.e.test_peer = slot
            _unlock(self.e)

    def set_test_target(self, sockaddr_bytes, bint default=False):
        """Test mode: where decrypted datagrams are sent from the test port:
        the target if set, else the last local sender, else the default."""
        cdef const unsigned char[::1] a
        cdef Py_ssize_t n = 0
        if sockaddr_bytes is not None:
            a = sockaddr_bytes
            n = a.shape[0]
            if n < 2 or n > <Py_ssize_t>sizeof(sockaddr_storage):
                raise ValueError("bad sockaddr")
        with nogil:
            _lock(self.e)
            if default:
                if n:
                    memcpy(&self.e.test_default, &a[0], n)
                self.e.test_default_len = n
            else:
                if n:
                    memcpy(&self.e.test_target, &a[0], n)
                self.e.test_target_len = n
            _unlock(self.e)

    def set_icmp(self, bint v4, bint v6):
        """Whether unroutable IPv4 / IPv6 packets produce ICMP_UNREACHABLE events
        (TUN mode; the control thread answers them)."""
        self.e.icmp4 = v4
        self.e.icmp6 = v6

    def count_drop(self, int reason, peer_id=None):
        """Count a drop decided outside the worker (e.g. a failed control send)."""
        cdef fp_pkt pkt
        if not 0 <= reason < FP_N_DROPS:
            raise ValueError("bad drop reason")
        memset(&pkt, 0, sizeof(fp_pkt))
        pkt.verdict = reason
        pkt.peer_slot = -1
        if peer_id is not None and peer_id in self.slots:
            pkt.peer_slot = self.slots[peer_id]
            pkt.peer_serial = self.e.peers[pkt.peer_slot].serial
        with nogil:
            _lock(self.e)
            _count_drop(self.e, &pkt)
            _unlock(self.e)

    # keys ----------------------------------------------------------------------------------
    def install_keypair(self, int64_t peer_id, uint32_t local_index, uint32_t remote_index,
                        const unsigned char[::1] send_key, const unsigned char[::1] recv_key,
                        double created, bint confirmed, int cipher=CIPHER_SECRETBOX,
                        data_send_key=None, data_recv_key=None):
        """Install a keypair as current (confirmed) or next, then flush the
        peer's staged packets if it has a usable current keypair.  ``cipher``
        (dataplane/ciphers.CipherKind) is what its packets are sealed with;
        ``data_send_key``/``data_recv_key`` the keys its transport data uses
        when they are not the session keys (ciphers.transport_keys: aegis256)."""
        if cipher != CIPHER_SECRETBOX and cipher != CIPHER_CHACHA and cipher != CIPHER_AEGIS:
            raise ValueError("unknown cipher %d" % cipher)
        if cipher == CIPHER_AEGIS and (data_send_key is None or data_recv_key is None):
            raise ValueError("an aegis256 keypair needs its derived transport keys")
        cdef const unsigned char[::1] dsend = send_key if data_send_key is None else data_send_key
        cdef const unsigned char[::1] drecv = recv_key if data_recv_key is None else data_recv_key
        cdef int slot = self._slot(peer_id)
        cdef fp_engine *e = self.e
        cdef fp_keypair *kp
        cdef fp_peer *p
        cdef fp_keypair *old
        _check_key(send_key)
        _check_key(recv_key)
        _check_key(dsend)
        _check_key(drecv)
        kp = <fp_keypair *>calloc(1, sizeof(fp_keypair))
        if kp == NULL:
            raise MemoryError()
        kp.local_index = local_index
        kp.remote_index = remote_index
        kp.peer_slot = slot
        kp.created = created
        kp.cipher = cipher
        memcpy(kp.send_key, &send_key[0], FP_KEY_SIZE)
        memcpy(kp.recv_key, &recv_key[0], FP_KEY_SIZE)
        memcpy(kp.data_send_key, &dsend[0], FP_KEY_SIZE)
        memcpy(kp.data_recv_key, &drecv[0], FP_KEY_SIZE)
        with nogil:
            _lock(e)
            old = _kp_find(e, local_index)
            if old != NULL:                   # the same index again: replace it
                _kp_detach(e, old)
                _kp_destroy(e, old)
            kp.serial = e.next_serial
            e.next_serial += 1
            kp.hnext = e.index[local_index & (FP_INDEX_BUCKETS - 1)]
            e.index[local_index & (FP_INDEX_BUCKETS - 1)] = kp
            p = e.peers[slot]
            if confirmed:
                _kp_destroy(e, p.next)
                p.next = NULL
                _kp_destroy(e, p.previous)
                p.previous = p.current
                p.current = kp
                p.handshake_asked = False
            else:
                _kp_destroy(e, p.next)
                p.next = kp
            _unlock(e)
        if confirmed:
            with nogil:
                _flush_staged(e, slot)

    def flush_staged(self, int64_t peer_id):
        """Send a peer's staged packets now if it has a usable current keypair."""
        cdef int slot = self._slot(peer_id)
        cdef int n
        with nogil:
            n = _flush_staged(self.e, slot)
        return n

    def retire_keypair(self, uint32_t local_index):
        """Remove a keypair from whichever slot holds it and zero its keys."""
        cdef fp_engine *e = self.e
        cdef fp_keypair *kp
        cdef fp_peer *p
        cdef bint found
        with nogil:
            _lock(e)
            kp = _kp_find(e, local_index)
            found = kp != NULL
            if found:
                _kp_detach(e, kp)
                _kp_destroy(e, kp)
            _unlock(e)
        return found

    def clear_keys(self, int64_t peer_id):
        """Retire every keypair of a peer and drop its staged packets."""
        cdef int slot = self._slot(peer_id)
        cdef fp_engine *e = self.e
        cdef fp_peer *p
        with nogil:
            _lock(e)
            p = e.peers[slot]
            _kp_destroy(e, p.current)
            _kp_destroy(e, p.previous)
            _kp_destroy(e, p.next)
            p.current = p.previous = p.next = NULL
            p.handshake_asked = False
            _staged_clear(e, p)
            _unlock(e)

    def key_slots(self, int64_t peer_id):
        """(current, previous, next) local indices, None for an empty slot."""
        cdef int slot = self._slot(peer_id)
        cdef fp_peer *p
        cdef list out = []
        with nogil:
            _lock(self.e)
        p = self.e.peers[slot]
        for kp in (<uintptr_t>p.current, <uintptr_t>p.previous, <uintptr_t>p.next):
            out.append(None if kp == 0 else (<fp_keypair *><uintptr_t>kp).local_index)
        with nogil:
            _unlock(self.e)
        return tuple(out)

    def send_packet(self, int64_t peer_id, const unsigned char[::1] data):
        """Send one inner packet to a peer through the tunnel, as if read from
        the device after routing and the firewall (stages it without a key).
        The verdict: -1 sent, -2 staged, else a Drop."""
        cdef int slot = self._slot(peer_id)
        cdef Py_ssize_t n = data.shape[0]
        cdef unsigned char *buf
        cdef int verdict
        if n > FP_MAX_INNER:
            raise ValueError("packet too large")
        buf = <unsigned char *>malloc(FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM + FP_WRAP_ROOM)
        if buf == NULL:
            raise MemoryError()
        if n:
            memcpy(buf + FP_PAYLOAD_OFFSET, &data[0], n)
        with nogil:
            verdict = _send_single(self.e, slot, buf, n, True)
            _wipe(buf, FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM)
            free(buf)
        return verdict

    def send_keepalive(self, int64_t peer_id):
        """Send an empty transport packet on the current keypair.  Returns False
        (and queues handshake_needed) when there is no usable keypair."""
        cdef int slot = self._slot(peer_id)
        cdef unsigned char buf[100]          # FP_PAYLOAD_OFFSET + FP_TAIL_ROOM (a WireGuard tag) + FP_WRAP_ROOM
        cdef int verdict
        with nogil:
            verdict = _send_single(self.e, slot, buf, 0, False)
        return verdict == V_PASS

    # observability -----------------------------------------------------------------------
    def counters(self, int64_t peer_id):
        """A snapshot of a peer's counters as a dict (see types.PeerCounters)."""
        cdef int slot = self._slot(peer_id)
        cdef fp_peer snap
        cdef uint64_t send_counter = 0
        with nogil:
            _lock(self.e)
            memcpy(&snap, self.e.peers[slot], sizeof(fp_peer))
            if snap.current != NULL:
                send_counter = snap.current.send_counter
            _unlock(self.e)
        return {
            "rx_bytes": snap.rx_bytes, "tx_bytes": snap.tx_bytes,
            "rx_packets": snap.rx_packets, "tx_packets": snap.tx_packets,
            "last_rx": snap.last_rx, "last_tx": snap.last_tx,
            "last_data_rx": snap.last_data_rx, "last_data_tx": snap.last_data_tx,
            "send_counter": send_counter,
            "drops": [snap.drops[i] for i in range(FP_N_DROPS)],
            "staged": snap.staged_count,
        }

    def set_relay(self, bint enabled, uint64_t bytes_per_second, uint64_t packets_per_second):
        """Relay role: forward relay frames between peers (in the worker, in C)."""
        with nogil:
            _lock(self.e)
            self.e.relay_enabled = enabled
            self.e.relay_bytes_budget = bytes_per_second
            self.e.relay_pkts_budget = packets_per_second
            _unlock(self.e)

    def set_relay_route(self, int64_t peer_id, int64_t relay_peer_id, uint32_t relay_id, bint use):
        """Frames from ``relay_peer_id`` tagged ``relay_id`` carry ``peer_id``'s
        messages; with ``use``, the peer's endpoint is that relay (sends wrap)."""
        cdef int slot = self._slot(peer_id)
        cdef int rslot = self._slot(relay_peer_id)
        with nogil:
            _lock(self.e)
            p = self.e.peers[slot]
            if p.relay_known:
                _relay_unlink(self.e, slot)
            p.relay_known = True
            p.relay_slot = rslot
            p.relay_id = relay_id
            _relay_link(self.e, slot)
            if use:
                p.relayed = True
                p.endpoint_len = 0
            _unlock(self.e)

    def set_relay_pair(self, int64_t src_id, uint32_t relay_id, int64_t dest_id):
        """On a relay: frames from peer ``src_id`` tagged ``relay_id`` go to
        peer ``dest_id``; ``dest_id`` < 0 removes the pair."""
        cdef fp_relay_pair *q
        cdef fp_relay_pair **pp
        cdef fp_relay_pair *fresh = NULL
        cdef fp_engine *e = self.e
        if dest_id >= 0:
            fresh = <fp_relay_pair *>calloc(1, sizeof(fp_relay_pair))
            if fresh == NULL:
                raise MemoryError()
        with nogil:
            _lock(e)
            pp = &e.by_pair[_pair_bucket(src_id, relay_id)]
            while pp[0] != NULL:
                q = pp[0]
                if q.src_id == src_id and q.relay_id == relay_id:
                    pp[0] = q.next
                    free(q)
                    e.relay_pairs -= 1
                    break
                pp = &q.next
            if fresh != NULL:
                fresh.src_id = src_id
                fresh.relay_id = relay_id
                fresh.dest_id = dest_id
                pp = &e.by_pair[_pair_bucket(src_id, relay_id)]
                fresh.next = pp[0]
                pp[0] = fresh
                e.relay_pairs += 1
            _unlock(e)

    def send_relayed(self, int64_t relay_peer_id, uint32_t relay_id, const unsigned char[::1] data):
        """Send ``data`` (a whole A<->B datagram) in a relay frame to the relay.
        False when the relay has no usable session or endpoint."""
        cdef int rslot = self._slot(relay_peer_id)
        cdef Py_ssize_t n = data.shape[0]
        cdef unsigned char *buf
        cdef fp_peer *rp
        cdef fp_keypair *kp
        cdef unsigned char key[32]
        cdef uint64_t counter
        cdef uint32_t index
        cdef sockaddr_storage addr
        cdef socklen_t alen = 0
        cdef int rc = -1
        cdef double now = _now()
        if n > FP_MAX_INNER:
            raise ValueError("datagram too large")
        buf = <unsigned char *>malloc(FP_PAYLOAD_OFFSET + 4 + n + 1)
        if buf == NULL:
            raise MemoryError()
        memcpy(buf + FP_PAYLOAD_OFFSET, &relay_id, 4)
        if n:
            memcpy(buf + FP_PAYLOAD_OFFSET + 4, &data[0], n)
        with nogil:
            _lock(self.e)
            rp = self.e.peers[rslot]
            kp = rp.current
            if rp.endpoint_len and _kp_usable(self.e, kp, now):
                counter = kp.send_counter
                kp.send_counter += 1
                index = kp.remote_index
                memcpy(key, kp.send_key, FP_KEY_SIZE)
                memcpy(&addr, &rp.endpoint, rp.endpoint_len)
                alen = rp.endpoint_len
                rp.tx_packets += 1
                rp.last_tx = now
            _unlock(self.e)
            if alen:
                rc = _seal_packet(buf, 4 + n, index, counter, key)
                _wipe(key, FP_KEY_SIZE)
                if rc == 0:
                    buf[0] = 6
                    rc = sendto(self.e.udp_fd, buf, FP_PAYLOAD_OFFSET + 4 + n, 0, <sockaddr *>&addr, alen)
            _wipe(buf, FP_PAYLOAD_OFFSET + 4 + n)
            free(buf)
        return rc >= 0

    def relay_stats(self):
        return {"forwarded": self.e.relay_forwarded, "budget": self.e.relay_budget_drops,
                "no_dest": self.e.relay_no_dest, "unknown_id": self.e.relay_unknown_id,
                "pairs": self.e.relay_pairs}

    def global_drops(self):
        cdef uint64_t d[FP_N_DROPS]
        with nogil:
            _lock(self.e)
            memcpy(d, self.e.drops, sizeof(d))
            _unlock(self.e)
        return [d[i] for i in range(FP_N_DROPS)]

    def stats(self):
        return {"event_overflow": self.e.ev_overflow}

    def drain_events(self):
        """Take every queued event: a list of (kind, peer_id, local_index, data,
        sockaddr bytes).  Clears the eventfd."""
        cdef fp_engine *e = self.e
        cdef fp_event *ev
        cdef list out = []
        cdef uint64_t junk
        cdef int slot
        read(e.event_fd, &junk, 8)
        with nogil:
            _lock(e)
        try:
            while e.ev_count:
                ev = &e.events[e.ev_head]
                out.append((ev.kind, ev.peer_id, ev.local_index,
                            PyBytes_FromStringAndSize(<char *>ev.data, ev.len) if ev.len else b"",
                            PyBytes_FromStringAndSize(<char *>&ev.addr, ev.addrlen) if ev.addrlen else None))
                if ev.kind == EV_ICMP_UNREACHABLE:
                    e.icmp_pending -= 1
                free(ev.data)
                ev.data = NULL
                e.ev_head = (e.ev_head + 1) & (FP_EVENT_QUEUE - 1)
                e.ev_count -= 1
        finally:
            _unlock(e)
        return out

    def set_firewall_callback(self, callback):
        """``callback(direction, [(packet bytes, peer_id), ...]) -> [bool, ...]``
        (direction 1 = out, 0 = in; True = accept), called by the workers with
        the GIL for each batch; None removes it."""
        self.fw_callback = callback
        self.e.fw = NULL if callback is None else <void *>callback

    def set_fault_seal(self, bint on):
        """Fault injection for tests: every seal behaves as if libsodium failed."""
        self.e.fault_seal = on

    def close(self):
        pass


# --- a worker: one data-plane thread over one inner fd and one UDP fd ---------------------
cdef class Worker:
    """Runs the data-plane loop over (udp_fd, inner_fd) with the GIL released."""

    def __cinit__(self, Engine engine, int udp_fd, int inner_fd, bint inner_is_socket,
                  int burst=64, bint edge=True, bint outbound=True, bint inbound=True,
                  bint vnet=False, bint gso=False, bint gro=False):
        """``vnet``: the TUN fd was opened with IFF_VNET_HDR (offloads set with
        TUNSETOFFLOAD by the caller); ``gso``: send runs of equal-size packets
        with UDP_SEGMENT; ``gro``: enable UDP_GRO on the socket (falls back to
        plain receives when the kernel refuses; see features())."""
        cdef fp_worker *w
        cdef int i, cap, one = 1
        cdef epoll_event ev
        if burst < 1 or burst > 1024:
            raise ValueError("burst must be 1..1024")
        self.engine = engine
        w = self.w = <fp_worker *>calloc(1, sizeof(fp_worker))
        if w == NULL:
            raise MemoryError()
        w.e = engine.e
        w.udp_fd = udp_fd
        w.inner_fd = inner_fd
        w.inner_is_socket = inner_is_socket
        w.burst = burst
        w.edge = edge
        w.epfd = -1
        w.stop_fd = -1
        w.vnet = vnet and not inner_is_socket
        w.gso = gso
        if gro and inbound:
            w.gro = setsockopt(udp_fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0
        w.out_cap = burst + (TSO_MAX_SEGMENTS if w.vnet else 0)
        w.rx_msgs = max(1, burst // 8) if w.gro else burst
        w.in_cap = w.rx_msgs * 64 if w.gro else burst
        cap = 2 * max(w.out_cap, w.in_cap)
        w.out_pkts = <fp_pkt *>calloc(w.out_cap, sizeof(fp_pkt))
        w.in_pkts = <fp_pkt *>calloc(w.in_cap, sizeof(fp_pkt))
        w.rx_bufs = <unsigned char **>calloc(w.rx_msgs, sizeof(unsigned char *))
        w.rx_addrs = <sockaddr_storage *>calloc(w.rx_msgs, sizeof(sockaddr_storage))
        w.rx_addrlens = <socklen_t *>calloc(w.rx_msgs, sizeof(socklen_t))
        w.msgs = <mmsghdr *>calloc(cap, sizeof(mmsghdr))
        w.iovs = <iovec *>calloc(cap, sizeof(iovec))
        w.map = <int *>calloc(cap, sizeof(int))
        w.groups = <int *>calloc(cap, sizeof(int))
        w.cmsgs = <uint64_t *>calloc(8 * cap, sizeof(uint64_t))
        if (w.out_pkts == NULL or w.in_pkts == NULL or w.rx_bufs == NULL or w.rx_addrs == NULL
                or w.rx_addrlens == NULL or w.msgs == NULL or w.iovs == NULL or w.map == NULL
                or w.groups == NULL or w.cmsgs == NULL):
            raise MemoryError()
        for i in range(w.out_cap):
            w.out_pkts[i].buf = <unsigned char *>malloc(FP_BUF_SIZE)
            if w.out_pkts[i].buf == NULL:
                raise MemoryError()
        w.flood_buf = <unsigned char *>malloc(FP_BUF_SIZE)
        if w.flood_buf == NULL:
            raise MemoryError()
        for i in range(w.rx_msgs):
            # FP_RX_HEADROOM in front: _in_open moves a WireGuard packet's buf there
            w.rx_bufs[i] = <unsigned char *>malloc(FP_RX_HEADROOM + FP_BUF_SIZE)
            if w.rx_bufs[i] == NULL:
                raise MemoryError()
            w.rx_bufs[i] += FP_RX_HEADROOM
            w.in_pkts[i].buf = w.rx_bufs[i]
        w.epfd = epoll_create1(EPOLL_CLOEXEC)
        w.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if w.epfd < 0 or w.stop_fd < 0:
            raise OSError("cannot create epoll/eventfd")
        if not (outbound or inbound):
            raise ValueError("a worker needs a direction")
        # A worker reads the fds of its directions only (inner: outbound, UDP:
        # inbound); it may still write to both.
        for fd, et, on in ((w.stop_fd, False, True), (udp_fd, edge, inbound),
                           (inner_fd, edge, outbound)):
            if not on:
                continue
            ev.events = EPOLLIN | (EPOLLET if et else 0)
            ev.data.u64 = 0
            ev.data.fd = fd
            if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
                raise OSError("epoll_ctl failed for fd %d" % fd)

    def __dealloc__(self):
        cdef fp_worker *w = self.w
        cdef int i
        if w == NULL:
            return
        if w.out_pkts != NULL:
            for i in range(w.out_cap):
                if w.out_pkts[i].buf != NULL:
                    _wipe(w.out_pkts[i].buf, FP_BUF_SIZE)
                    free(w.out_pkts[i].buf)
        if w.rx_bufs != NULL:
            for i in range(w.rx_msgs):
                if w.rx_bufs[i] != NULL:
                    _wipe(w.rx_bufs[i] - FP_RX_HEADROOM, FP_RX_HEADROOM + FP_BUF_SIZE)
                    free(w.rx_bufs[i] - FP_RX_HEADROOM)
        if w.flood_buf != NULL:
            _wipe(w.flood_buf, FP_BUF_SIZE)
            free(w.flood_buf)
        free(w.out_pkts)
        free(w.in_pkts)
        free(w.rx_bufs)
        free(w.rx_addrs)
        free(w.rx_addrlens)
        free(w.msgs)
        free(w.iovs)
        free(w.map)
        free(w.groups)
        free(w.cmsgs)
        if w.epfd >= 0:
            close(w.epfd)
        if w.stop_fd >= 0:
            close(w.stop_fd)
        free(w)
        self.w = NULL

    def run(self):
        """Run the loop in the calling thread, GIL released, until stop()."""
        cdef int rc
        with nogil:
            rc = _worker_loop(self.w)
        if rc < 0:
            raise OSError(-rc, "fast path worker failed")

    def stop(self):
        """Ask run() to return (callable from any thread)."""
        cdef uint64_t one = 1
        write(self.w.stop_fd, &one, 8)

    def stats(self):
        cdef fp_worker *w = self.w
        return {"wakeups": w.wakeups, "inner_batches": w.inner_batches,
                "udp_batches": w.udp_batches, "inner_packets": w.inner_packets,
                "udp_packets": w.udp_packets, "capped": w.capped,
                "send_waits": w.send_waits, "deliver_failed": w.deliver_failed,
                "gso_sends": w.gso_sends, "gso_fallbacks": w.gso_fallbacks,
                "gro_datagrams": w.gro_datagrams, "tso_packets": w.tso_packets,
                "tso_segments": w.tso_segments, "floods": w.floods,
                "gro_tun_packets": w.gro_tun_packets,
                "gro_tun_segments": w.gro_tun_segments}

    def features(self):
        """Which offloads this worker uses."""
        return {"vnet": bool(self.w.vnet), "gso": bool(self.w.gso), "gro": bool(self.w.gro)}
