# cython: language_level=3, cdivision=True, boundscheck=False, wraparound=False
"""The responder's side of Phantom's Noise_IK_25519_ChaChaPoly_BLAKE2b in C:
read message 1 ("-> e, es, s, ss"), write message 2 ("<- e, ee, se"),
Split.  Issue 23 item 3: a hub answers initiations at wire speed.

The same steps as the reference (:class:`phantom.protocols.phantom.noise.NoiseIK`,
responder role), on the same libsodium (PyNaCl's copy, called through the
function addresses cffi gives, as the fast data path does:
phantom/fastpath/includes/sodium.pxd): X25519 ``crypto_scalarmult`` /
``crypto_scalarmult_base``, BLAKE2b ``crypto_generichash_blake2b_salt_personal``
(HMAC-BLAKE2b and HKDF written out as in phantom/crypto.py and
phantom/protocols/kdf.py), ChaCha20-Poly1305 IETF.  No primitive of its own.
The cryptography runs without the GIL.

:class:`ResponderKey` holds what is constant for our static key (the key pair,
the chaining key and hash after the prologue and the "<- s" pre-message, and
the static-static DH ``ss`` of the configured peers' keys, computed when they
are added (:meth:`ResponderKey.prime`), and of the other initiator keys seen,
remembered once their initiation authenticated; at most :data:`SS_CACHE_SIZE`).
:class:`Responder` is one handshake, with the interface of the reference
NoiseIK in the responder role (``read_message``, ``write_message``,
``handshake_hash``, ``split``, ``clear``, ``remote_static``, ``state``), so
handshake.py's consume_initiation / create_response / create_refusal run
either unchanged.  tests/unit/protocols/test_responder_native.py checks both
byte for byte.
"""

from libc.stdint cimport uintptr_t, uint8_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize

from phantom.fastpath.includes.sodium cimport memzero_fn, aead_encrypt_fn, aead_decrypt_fn

from phantom import crypto as _crypto
from phantom.protocols.handshake import HandshakeError
from phantom.protocols.phantom.noise import State as _State


cdef extern from *:
    """
    typedef int (*phantom_scalarmult_fn)(unsigned char *q, const unsigned char *n,
                                         const unsigned char *p);
    typedef int (*phantom_scalarmult_base_fn)(unsigned char *q, const unsigned char *n);
    typedef int (*phantom_blake2b_fn)(unsigned char *out, size_t outlen,
                                      const unsigned char *in, unsigned long long inlen,
                                      const unsigned char *key, size_t keylen,
                                      const unsigned char *salt, const unsigned char *personal);
    typedef void (*phantom_randombytes_fn)(unsigned char *buf, unsigned long long size);
    """
    ctypedef int (*scalarmult_fn "phantom_scalarmult_fn")(
        unsigned char *q, const unsigned char *n, const unsigned char *p) noexcept nogil
    ctypedef int (*scalarmult_base_fn "phantom_scalarmult_base_fn")(
        unsigned char *q, const unsigned char *n) noexcept nogil
    ctypedef int (*blake2b_fn "phantom_blake2b_fn")(
        unsigned char *out, size_t outlen, const unsigned char *inp, unsigned long long inlen,
        const unsigned char *key, size_t keylen, const unsigned char *salt,
        const unsigned char *personal) noexcept nogil
    ctypedef void (*randombytes_fn "phantom_randombytes_fn")(
        unsigned char *buf, unsigned long long size) noexcept nogil


# --- ephemeral key pairs made ahead, on a thread of their own ------------------------------
# A responder's ephemeral key pair (random scalar, X25519 base-point product:
# ~17 us) does not depend on the initiation, so a C thread (no Python, no GIL)
# keeps up to PH_EPOOL fresh pairs ready; write_message takes one (each is
# used once, then zeroed) or, when none is ready, makes its own as before.
# The thread starts at the first take (after phantomd's start-up forks) and
# is stopped, its pairs zeroed, at exit (ephemeral_pool_stop).
cdef extern from *:
    """
    #include <pthread.h>
    #include <string.h>
    #define PH_EPOOL 64
    typedef struct { unsigned char e[32]; unsigned char pub[32]; } ph_ekey;
    static ph_ekey ph_pool[PH_EPOOL];
    static int ph_pool_n = 0, ph_pool_state = 0;   /* 0 not started, 1 running, 2 stopped */
    static unsigned long ph_pool_made = 0, ph_pool_taken = 0, ph_pool_empty = 0;
    static pthread_mutex_t ph_mu = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t ph_cv = PTHREAD_COND_INITIALIZER;
    static pthread_t ph_thread;
    static phantom_randombytes_fn ph_rand;
    static phantom_scalarmult_base_fn ph_base;
    static phantom_memzero_fn ph_zero;

    static void *ph_pool_main(void *arg) {
        ph_ekey k;
        int rc;
        (void)arg;
        pthread_mutex_lock(&ph_mu);
        while (ph_pool_state == 1) {
            if (ph_pool_n >= PH_EPOOL) { pthread_cond_wait(&ph_cv, &ph_mu); continue; }
            pthread_mutex_unlock(&ph_mu);
            ph_rand(k.e, 32);
            rc = ph_base(k.pub, k.e);
            pthread_mutex_lock(&ph_mu);
            if (rc == 0 && ph_pool_state == 1 && ph_pool_n < PH_EPOOL) {
                memcpy(&ph_pool[ph_pool_n++], &k, sizeof k);
                ph_pool_made++;
            }
        }
        pthread_mutex_unlock(&ph_mu);
        ph_zero(&k, sizeof k);
        return NULL;
    }

    /* a forked child has no refill thread, and must never use a pair its
       parent may use too: it starts empty, and starts its own thread */
    static void ph_pool_atfork_child(void) {
        pthread_mutex_init(&ph_mu, NULL);
        pthread_cond_init(&ph_cv, NULL);
        ph_zero(ph_pool, sizeof ph_pool);
        ph_pool_n = 0;
        ph_pool_state = 0;
    }

    static int ph_pool_init(void) {
        return pthread_atfork(NULL, NULL, ph_pool_atfork_child);
    }

    /* 1: a fresh pair in e / pub; 0: none ready (the caller makes its own) */
    static int ph_pool_take(unsigned char *e, unsigned char *pub) {
        int got = 0;
        pthread_mutex_lock(&ph_mu);
        if (ph_pool_state == 0) {
            if (pthread_create(&ph_thread, NULL, ph_pool_main, NULL) == 0) ph_pool_state = 1;
            else ph_pool_state = 2;
        }
        if (ph_pool_n > 0) {
            ph_pool_n--;
            memcpy(e, ph_pool[ph_pool_n].e, 32);
            memcpy(pub, ph_pool[ph_pool_n].pub, 32);
            ph_zero(&ph_pool[ph_pool_n], sizeof(ph_ekey));
            ph_pool_taken++;
            got = 1;
        } else {
            ph_pool_empty++;
        }
        if (ph_pool_state == 1 && ph_pool_n <= PH_EPOOL / 2) pthread_cond_signal(&ph_cv);
        pthread_mutex_unlock(&ph_mu);
        return got;
    }

    static void ph_pool_stop(void) {
        int join;
        pthread_mutex_lock(&ph_mu);
        join = ph_pool_state == 1;
        ph_pool_state = 2;
        pthread_cond_signal(&ph_cv);
        pthread_mutex_unlock(&ph_mu);
        if (join) pthread_join(ph_thread, NULL);
        pthread_mutex_lock(&ph_mu);
        ph_zero(ph_pool, sizeof ph_pool);
        ph_pool_n = 0;
        pthread_mutex_unlock(&ph_mu);
    }
    """
    int ph_pool_take(unsigned char *e, unsigned char *pub) noexcept nogil
    void ph_pool_stop() noexcept nogil
    int ph_pool_init() noexcept nogil
    int ph_pool_n, ph_pool_state
    unsigned long ph_pool_made, ph_pool_taken, ph_pool_empty
    randombytes_fn ph_rand
    scalarmult_base_fn ph_base
    memzero_fn ph_zero


cdef scalarmult_fn _dh_fn = <scalarmult_fn><uintptr_t>_crypto.libsodium_symbol_address("crypto_scalarmult")
cdef scalarmult_base_fn _dh_base_fn = <scalarmult_base_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_scalarmult_base")
cdef blake2b_fn _b2b_fn = <blake2b_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_generichash_blake2b_salt_personal")
cdef randombytes_fn _rand_fn = <randombytes_fn><uintptr_t>_crypto.libsodium_symbol_address("randombytes")
cdef aead_encrypt_fn _aead_seal_fn = <aead_encrypt_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_aead_chacha20poly1305_ietf_encrypt")
cdef aead_decrypt_fn _aead_open_fn = <aead_decrypt_fn><uintptr_t>_crypto.libsodium_symbol_address(
    "crypto_aead_chacha20poly1305_ietf_decrypt")
cdef memzero_fn _memzero_fn = <memzero_fn><uintptr_t>_crypto.libsodium_symbol_address("sodium_memzero")

ph_rand = _rand_fn
ph_base = _dh_base_fn
ph_zero = _memzero_fn
if ph_pool_init() != 0:
    raise ImportError("pthread_atfork failed")


def ephemeral_pool_stop() -> None:
    """Stop the ephemeral-key thread and zero the pairs it made (atexit;
    a later take restarts nothing: the responder then makes its own)."""
    with nogil:
        ph_pool_stop()


def ephemeral_pool_stats() -> dict:
    """made / taken / ready, and how often a take found none (``empty``)."""
    return {"made": ph_pool_made, "taken": ph_pool_taken, "empty": ph_pool_empty, "ready": ph_pool_n,
            "running": ph_pool_state == 1}


import atexit as _atexit
_atexit.register(ephemeral_pool_stop)

DEF DHLEN = 32
DEF HASHLEN = 64
DEF BLOCKLEN = 128
DEF TAGLEN = 16
DEF KEYLEN = 32
DEF MSG1_OVERHEAD = DHLEN + DHLEN + TAGLEN + TAGLEN   # e, enc(s), payload tag
DEF ENC_S = DHLEN + TAGLEN

# what went wrong, as the reference says it (noise.py, handshake.py)
DEF OK = 0
DEF E_SHORT = 1
DEF E_DH = 2
DEF E_AUTH = 3
DEF E_NOMEM = 4
DEF E_HASH = 5

_MESSAGES = {
    E_SHORT: "handshake message 1 too short",
    E_DH: "invalid public key in handshake",
    E_AUTH: "handshake message failed authentication",
    E_HASH: "BLAKE2b failed",
}

SS_CACHE_SIZE = 65536

cdef unsigned char _ZERO_NONCE[12]      # every handshake key seals or opens once: n = 0
memset(_ZERO_NONCE, 0, 12)


# --- the primitives' compositions, as phantom/crypto.py and kdf.py write them ----------
cdef inline void _wipe(void *p, size_t n) noexcept nogil:
    _memzero_fn(p, n)


cdef int _hash2(unsigned char *out, const unsigned char *a, size_t alen,
                const unsigned char *b, size_t blen) noexcept nogil:
    """out (64) = BLAKE2b-512(a || b)."""
    cdef unsigned char stackbuf[256]
    cdef unsigned char *buf = stackbuf
    cdef size_t n = alen + blen
    cdef int rc
    if n > sizeof(stackbuf):
        buf = <unsigned char *>malloc(n)
        if buf == NULL:
            return E_NOMEM
    memcpy(buf, a, alen)
    if blen:
        memcpy(buf + alen, b, blen)
    rc = _b2b_fn(out, HASHLEN, buf, n, NULL, 0, NULL, NULL)
    _wipe(buf, n)
    if buf != stackbuf:
        free(buf)
    return OK if rc == 0 else E_HASH


cdef int _hmac(unsigned char *out, const unsigned char *key, size_t keylen,
               const unsigned char *data, size_t datalen) noexcept nogil:
    """HMAC-BLAKE2b (RFC 2104, block 128) with a key of at most 128 bytes and
    at most 128 bytes of data (all the HKDF here needs)."""
    cdef unsigned char pad[BLOCKLEN]
    cdef unsigned char inner[HASHLEN]
    cdef size_t i
    cdef int rc
    memset(pad, 0, BLOCKLEN)
    memcpy(pad, key, keylen)
    for i in range(BLOCKLEN):
        pad[i] ^= 0x36
    rc = _hash2(inner, pad, BLOCKLEN, data, datalen)
    if rc == OK:
        for i in range(BLOCKLEN):
            pad[i] ^= 0x36 ^ 0x5C
        rc = _hash2(out, pad, BLOCKLEN, inner, HASHLEN)
    _wipe(pad, BLOCKLEN)
    _wipe(inner, HASHLEN)
    return rc


cdef int _hkdf2(unsigned char *out1, unsigned char *out2, const unsigned char *ck,
                const unsigned char *ikm, size_t ikmlen) noexcept nogil:
    """Noise's HKDF with two outputs (64 bytes each)."""
    cdef unsigned char temp[HASHLEN]
    cdef unsigned char buf[HASHLEN + 1]
    cdef int rc = _hmac(temp, ck, HASHLEN, ikm, ikmlen)
    if rc == OK:
        buf[0] = 1
        rc = _hmac(out1, temp, HASHLEN, buf, 1)
    if rc == OK:
        memcpy(buf, out1, HASHLEN)
        buf[HASHLEN] = 2
        rc = _hmac(out2, temp, HASHLEN, buf, HASHLEN + 1)
    _wipe(temp, HASHLEN)
    _wipe(buf, HASHLEN + 1)
    return rc


cdef int _mix_key(unsigned char *ck, unsigned char *k, const unsigned char *ikm) noexcept nogil:
    """MixKey(ikm) with a 32-byte ikm: ck, k = HKDF(ck, ikm)[0], [1][:32]; n = 0."""
    cdef unsigned char o1[HASHLEN]
    cdef unsigned char o2[HASHLEN]
    cdef int rc = _hkdf2(o1, o2, ck, ikm, DHLEN)
    if rc == OK:
        memcpy(ck, o1, HASHLEN)
        memcpy(k, o2, KEYLEN)
    _wipe(o1, HASHLEN)
    _wipe(o2, HASHLEN)
    return rc


cdef int _dh(unsigned char *out, const unsigned char *priv, const unsigned char *pub) noexcept nogil:
    """X25519; a low-order public key (libsodium refuses it, or all-zero output) is E_DH."""
    cdef int i
    cdef unsigned char acc = 0
    if _dh_fn(out, priv, pub) != 0:
        _wipe(out, DHLEN)
        return E_DH
    for i in range(DHLEN):
        acc |= out[i]
    return OK if acc else E_DH


# --- one handshake's state (the reference's ck, h, k of SymmetricState) -------------------
cdef struct hs_t:
    unsigned char ck[HASHLEN]
    unsigned char h[HASHLEN]
    unsigned char k[KEYLEN]
    unsigned char re[DHLEN]
    unsigned char rs[DHLEN]
    unsigned char ss[DHLEN]       # in: the cached ss (have_ss), out: the computed one


cdef int _write2(hs_t *w, unsigned char *e, bint fixed_e, const unsigned char *payload, size_t plen,
                 unsigned char *out) noexcept nogil:
    """<- e, ee, se with ``payload``: out gets e (32) || ChaCha20-Poly1305(payload) (plen + 16)."""
    cdef unsigned char dh[DHLEN]
    cdef unsigned long long clen = 0
    cdef int rc
    if fixed_e or not ph_pool_take(e, out):
        if not fixed_e:
            _rand_fn(e, DHLEN)
        if _dh_base_fn(out, e) != 0:
            return E_DH
    rc = _hash2(w.h, w.h, HASHLEN, out, DHLEN)                         # e
    if rc != OK:
        return rc
    rc = _dh(dh, e, w.re)                                              # ee
    if rc == OK:
        rc = _mix_key(w.ck, w.k, dh)
    if rc == OK:
        rc = _dh(dh, e, w.rs)                                          # se
    if rc == OK:
        rc = _mix_key(w.ck, w.k, dh)
    _wipe(dh, DHLEN)
    if rc != OK:
        return rc
    _aead_seal_fn(out + DHLEN, &clen, payload, plen, w.h, HASHLEN, NULL, _ZERO_NONCE, w.k)
    return _hash2(w.h, w.h, HASHLEN, out + DHLEN, plen + TAGLEN)


cdef class Responder


cdef class ResponderKey:
    """Our static key as a Phantom responder, and what is constant for it."""

    cdef unsigned char s[DHLEN]
    cdef unsigned char s_pub[DHLEN]
    cdef unsigned char ck0[HASHLEN]
    cdef unsigned char h0[HASHLEN]
    cdef dict _ss                     # initiator static key (bytes) -> ss (bytearray)
    cdef readonly int ss_hits, ss_misses

    def __init__(self, static_private, static_public, ck0, h0):
        """``ck0``/``h0``: the chaining key and hash after InitializeSymmetric,
        the prologue and "<- s" (the reference's SymmetricState)."""
        if len(static_private) != DHLEN or len(static_public) != DHLEN or \
                len(ck0) != HASHLEN or len(h0) != HASHLEN:
            raise HandshakeError("responder key: 32-byte keys, 64-byte ck and h")
        cdef const unsigned char[::1] v
        v = bytes(static_private)
        memcpy(self.s, &v[0], DHLEN)
        v = bytes(static_public)
        memcpy(self.s_pub, &v[0], DHLEN)
        v = bytes(ck0)
        memcpy(self.ck0, &v[0], HASHLEN)
        v = bytes(h0)
        memcpy(self.h0, &v[0], HASHLEN)
        self._ss = {}

    @property
    def static_public(self) -> bytes:
        return PyBytes_FromStringAndSize(<char *>self.s_pub, DHLEN)

    @property
    def cached(self) -> int:
        """How many initiator keys' ss are remembered."""
        return len(self._ss)

    def forget(self, public_key=None) -> None:
        """Drop the remembered ss of ``public_key`` (all when None), zeroed."""
        if public_key is None:
            for v in self._ss.values():
                _crypto.memzero(v)
            self._ss.clear()
            return
        v = self._ss.pop(bytes(public_key), None)
        if v is not None:
            _crypto.memzero(v)

    def prime(self, public_key) -> bool:
        """Compute and remember the ss of ``public_key`` now (a configured
        peer's key, as wireguard-go precomputes each peer's static-static
        DH): its initiations, the first included, then cost one X25519
        fewer.  False, nothing remembered, for a key whose DH is refused (a
        small-order key; its initiations fail the same way)."""
        cdef const unsigned char[::1] v
        cdef unsigned char ss[DHLEN]
        cdef int rc
        rs = bytes(public_key)
        if len(rs) != DHLEN:
            raise ValueError("a public key is %d bytes" % DHLEN)
        if rs in self._ss:
            return True
        v = rs
        with nogil:
            rc = _dh(ss, self.s, &v[0])
        if rc == OK:
            self._remember(rs, ss)
        _wipe(ss, DHLEN)
        return rc == OK

    cdef void _remember(self, bytes rs, const unsigned char *ss):
        if len(self._ss) >= SS_CACHE_SIZE:
            self.forget()
        self._ss[rs] = bytearray(PyBytes_FromStringAndSize(<char *>ss, DHLEN))

    def responder(self, ephemeral_private=None):
        """A new handshake in state RESPONDER_READ_1."""
        cdef Responder r = Responder.__new__(Responder)
        r._init(self, ephemeral_private)
        return r

    def __dealloc__(self):
        _wipe(self.s, DHLEN)

    def clear(self) -> None:
        self.forget()
        _wipe(self.s, DHLEN)


cdef class Responder:
    """One responder handshake (the reference NoiseIK's interface, responder role)."""

    cdef ResponderKey key
    cdef hs_t w
    cdef unsigned char e[DHLEN]
    cdef bint fixed_e
    cdef object _state
    cdef bytes _rs
    cdef bytes _hh

    cdef _init(self, ResponderKey key, ephemeral_private):
        cdef const unsigned char[::1] v
        self.key = key
        memcpy(self.w.ck, key.ck0, HASHLEN)
        memcpy(self.w.h, key.h0, HASHLEN)
        self.fixed_e = ephemeral_private is not None
        if self.fixed_e:
            if len(ephemeral_private) != DHLEN:
                raise HandshakeError("ephemeral private key must be %d bytes" % DHLEN)
            v = bytes(ephemeral_private)
            memcpy(self.e, &v[0], DHLEN)
        self._state = _State.RESPONDER_READ_1
        self._rs = None
        self._hh = None

    is_initiator = False

    @property
    def state(self):
        return self._state

    @property
    def remote_static(self):
        return self._rs

    @property
    def local_static_public(self) -> bytes:
        return self.key.static_public

    @property
    def handshake_hash(self) -> bytes:
        if self._hh is None:
            raise HandshakeError("handshake not complete")
        return self._hh

    cdef _expect(self, state):
        if self._state is not state:
            raise HandshakeError("out of order: %s" % self._state.value)

    def read_message(self, message) -> bytes:
        """Read message 1, return its payload, or raise HandshakeError (state unchanged)."""
        cdef hs_t work
        cdef const unsigned char[::1] m
        cdef size_t mlen
        cdef unsigned char *payload = NULL
        cdef const unsigned char[::1] c
        cdef bint have_ss = False
        cdef int rc
        cdef ResponderKey key = self.key
        self._expect(_State.RESPONDER_READ_1)
        message = bytes(message)
        m = message
        mlen = m.shape[0]
        if mlen < MSG1_OVERHEAD:
            raise HandshakeError(_MESSAGES[E_SHORT])
        memcpy(work.ck, self.w.ck, HASHLEN)
        memcpy(work.h, self.w.h, HASHLEN)
        payload = <unsigned char *>malloc(mlen - MSG1_OVERHEAD + 1)
        if payload == NULL:
            raise MemoryError()
        try:
            # in two halves: the initiator's static key, known after the first,
            # picks the remembered ss (a dict look-up, with the GIL)
            with nogil:
                rc = _read_s(&work, key.s, &m[0], mlen)
            if rc == OK:
                rs = PyBytes_FromStringAndSize(<char *>work.rs, DHLEN)
                cached = key._ss.get(rs)
                if cached is not None:
                    have_ss = True
                    c = cached
                    memcpy(work.ss, &c[0], DHLEN)
                    key.ss_hits += 1
                else:
                    key.ss_misses += 1
                with nogil:
                    rc = _read_rest(&work, key.s, &m[0], mlen, have_ss, payload)
            if rc != OK:
                raise HandshakeError(_MESSAGES.get(rc, "handshake failed"))
            if not have_ss:
                key._remember(rs, work.ss)
            out = PyBytes_FromStringAndSize(<char *>payload, mlen - MSG1_OVERHEAD)
        except BaseException:
            _wipe(&work, sizeof(hs_t))
            raise
        finally:
            _wipe(payload, mlen - MSG1_OVERHEAD + 1)
            free(payload)
            _wipe(work.ss, DHLEN)
        memcpy(&self.w, &work, sizeof(hs_t))
        _wipe(&work, sizeof(hs_t))
        self._rs = rs
        self._state = _State.RESPONDER_WRITE_2
        return out

    def write_message(self, payload=b"") -> bytes:
        """Write message 2 with ``payload``; a failure clears the handshake."""
        cdef const unsigned char[::1] p
        cdef size_t plen
        cdef unsigned char *out
        cdef unsigned char empty[1]
        cdef const unsigned char *pp = empty
        cdef int rc
        self._expect(_State.RESPONDER_WRITE_2)
        payload = bytes(payload)
        p = payload
        plen = p.shape[0]
        if plen:
            pp = &p[0]
        out = <unsigned char *>malloc(DHLEN + plen + TAGLEN)
        if out == NULL:
            self.clear()
            raise MemoryError()
        try:
            with nogil:
                rc = _write2(&self.w, self.e, self.fixed_e, pp, plen, out)
            if rc != OK:
                self.clear()
                raise HandshakeError(_MESSAGES.get(rc, "handshake failed"))
            msg = PyBytes_FromStringAndSize(<char *>out, DHLEN + plen + TAGLEN)
        finally:
            free(out)
        self._hh = PyBytes_FromStringAndSize(<char *>self.w.h, HASHLEN)
        _wipe(self.e, DHLEN)
        self._state = _State.SPLIT
        return msg

    def split(self):
        """(send_key, recv_key) for the responder (Split()'s second, first), then clear."""
        cdef unsigned char o1[HASHLEN]
        cdef unsigned char o2[HASHLEN]
        cdef unsigned char empty[1]
        cdef int rc
        self._expect(_State.SPLIT)
        with nogil:
            rc = _hkdf2(o1, o2, self.w.ck, empty, 0)
        if rc != OK:
            self.clear()
            raise HandshakeError(_MESSAGES.get(rc, "handshake failed"))
        k1 = bytearray(PyBytes_FromStringAndSize(<char *>o1, KEYLEN))
        k2 = bytearray(PyBytes_FromStringAndSize(<char *>o2, KEYLEN))
        _wipe(o1, HASHLEN)
        _wipe(o2, HASHLEN)
        self.clear()
        self._state = _State.DONE
        return k2, k1

    def clear(self) -> None:
        """Zero every secret of this handshake (also on abandon)."""
        _wipe(&self.w, sizeof(hs_t))
        _wipe(self.e, DHLEN)
        self._state = _State.DONE

    def __dealloc__(self):
        _wipe(&self.w, sizeof(hs_t))
        _wipe(self.e, DHLEN)


cdef int _read_s(hs_t *w, const unsigned char *s, const unsigned char *msg, size_t mlen) noexcept nogil:
    """The first half of message 1: e, es, s (w.rs gets the initiator's static key)."""
    cdef unsigned char dh[DHLEN]
    cdef unsigned long long plen = 0
    cdef int rc
    memcpy(w.re, msg, DHLEN)
    rc = _hash2(w.h, w.h, HASHLEN, w.re, DHLEN)                       # e
    if rc != OK:
        return rc
    rc = _dh(dh, s, w.re)                                              # es
    if rc == OK:
        rc = _mix_key(w.ck, w.k, dh)
    _wipe(dh, DHLEN)
    if rc != OK:
        return rc
    if _aead_open_fn(w.rs, &plen, NULL, msg + DHLEN, ENC_S, w.h, HASHLEN, _ZERO_NONCE, w.k) != 0:
        return E_AUTH                                                  # s
    return _hash2(w.h, w.h, HASHLEN, msg + DHLEN, ENC_S)


cdef int _read_rest(hs_t *w, const unsigned char *s, const unsigned char *msg, size_t mlen,
                    bint have_ss, unsigned char *payload) noexcept nogil:
    """The second half: ss (computed unless have_ss) and the payload."""
    cdef unsigned long long plen = 0
    cdef int rc
    if not have_ss:
        rc = _dh(w.ss, s, w.rs)                                        # ss
        if rc != OK:
            return rc
    rc = _mix_key(w.ck, w.k, w.ss)
    if rc != OK:
        return rc
    if _aead_open_fn(payload, &plen, NULL, msg + DHLEN + ENC_S, mlen - DHLEN - ENC_S,
                     w.h, HASHLEN, _ZERO_NONCE, w.k) != 0:
        return E_AUTH
    return _hash2(w.h, w.h, HASHLEN, msg + DHLEN + ENC_S, mlen - DHLEN - ENC_S)



include "_responder_batch.pxi"
