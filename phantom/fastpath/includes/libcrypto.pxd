# OpenSSL's libcrypto ChaCha20-Poly1305 for WireGuard transport data, called
# through function pointers (addresses from cffi: phantom.libcrypto), so the
# extension neither links against libcrypto nor needs its headers.
#
# EVP_CIPHER_CTX is not thread-safe and allocates, so every thread that seals
# or opens gets its own pair of contexts (encrypt, decrypt) at its first use,
# kept in a pthread key and freed when the thread ends: nothing is allocated
# per packet.  phantom_ossl_wipe() re-initialises the calling thread's
# contexts with an all-zero key and nonce (the workers call it after each
# batch), so a context does not keep a session key after use.
#
# phantom_ossl_seal / phantom_ossl_open return 0 on success, -1 on failure
# (a forged packet when opening: the output is then zeroed, as libsodium
# leaves it) and -2 when this thread has no contexts (libcrypto absent, or
# out of memory): the caller then uses libsodium for that packet.

from libc.stdint cimport uintptr_t

cdef extern from *:
    """
    #include <pthread.h>
    #include <stdlib.h>
    #include <string.h>
    #include <stdint.h>

    typedef void *(*phantom_evp_new_fn)(void);
    typedef void (*phantom_evp_free_fn)(void *);
    typedef const void *(*phantom_evp_cipher_fn)(void);
    typedef int (*phantom_evp_init_fn)(void *, const void *, void *, const unsigned char *,
                                       const unsigned char *);
    typedef int (*phantom_evp_update_fn)(void *, unsigned char *, int *, const unsigned char *, int);
    typedef int (*phantom_evp_final_fn)(void *, unsigned char *, int *);
    typedef int (*phantom_evp_ctrl_fn)(void *, int, int, void *);

    #define PHANTOM_EVP_CTRL_AEAD_GET_TAG 0x10
    #define PHANTOM_EVP_CTRL_AEAD_SET_TAG 0x11

    static struct {
        phantom_evp_new_fn ctx_new;
        phantom_evp_free_fn ctx_free;
        phantom_evp_cipher_fn cipher;
        phantom_evp_init_fn enc_init, dec_init;
        phantom_evp_update_fn enc_update, dec_update;
        phantom_evp_final_fn enc_final, dec_final;
        phantom_evp_ctrl_fn ctrl;
        int ready;
        pthread_key_t key;
    } phantom_ossl;

    typedef struct {
        void *enc;
        void *dec;
        int dirty;           /* a key was loaded since the last wipe */
    } phantom_ossl_ctx;

    static const unsigned char phantom_ossl_zero[32] = {0};

    static void phantom_ossl_free(void *p) {
        phantom_ossl_ctx *c = (phantom_ossl_ctx *)p;
        if (c == NULL)
            return;
        if (c->enc != NULL)
            phantom_ossl.ctx_free(c->enc);      /* EVP_CIPHER_CTX_free cleanses */
        if (c->dec != NULL)
            phantom_ossl.ctx_free(c->dec);
        free(c);
    }

    /* a[]: EVP_CIPHER_CTX_new, EVP_CIPHER_CTX_free, EVP_chacha20_poly1305,
       EVP_EncryptInit_ex, EVP_EncryptUpdate, EVP_EncryptFinal_ex,
       EVP_DecryptInit_ex, EVP_DecryptUpdate, EVP_DecryptFinal_ex,
       EVP_CIPHER_CTX_ctrl.  Called once, before any worker runs. */
    static int phantom_ossl_setup(const uintptr_t *a) {
        if (phantom_ossl.ready)
            return 0;
        phantom_ossl.ctx_new = (phantom_evp_new_fn)a[0];
        phantom_ossl.ctx_free = (phantom_evp_free_fn)a[1];
        phantom_ossl.cipher = (phantom_evp_cipher_fn)a[2];
        phantom_ossl.enc_init = (phantom_evp_init_fn)a[3];
        phantom_ossl.enc_update = (phantom_evp_update_fn)a[4];
        phantom_ossl.enc_final = (phantom_evp_final_fn)a[5];
        phantom_ossl.dec_init = (phantom_evp_init_fn)a[6];
        phantom_ossl.dec_update = (phantom_evp_update_fn)a[7];
        phantom_ossl.dec_final = (phantom_evp_final_fn)a[8];
        phantom_ossl.ctrl = (phantom_evp_ctrl_fn)a[9];
        if (phantom_ossl.cipher() == NULL)
            return -1;
        if (pthread_key_create(&phantom_ossl.key, phantom_ossl_free) != 0)
            return -1;
        phantom_ossl.ready = 1;
        return 0;
    }

    static phantom_ossl_ctx *phantom_ossl_get(void) {
        phantom_ossl_ctx *c;
        const void *cipher;
        if (!phantom_ossl.ready)
            return NULL;
        c = (phantom_ossl_ctx *)pthread_getspecific(phantom_ossl.key);
        if (c != NULL)
            return c;
        c = (phantom_ossl_ctx *)calloc(1, sizeof(*c));
        if (c == NULL)
            return NULL;
        cipher = phantom_ossl.cipher();
        c->enc = phantom_ossl.ctx_new();
        c->dec = phantom_ossl.ctx_new();
        if (c->enc == NULL || c->dec == NULL
                || phantom_ossl.enc_init(c->enc, cipher, NULL, phantom_ossl_zero, phantom_ossl_zero) != 1
                || phantom_ossl.dec_init(c->dec, cipher, NULL, phantom_ossl_zero, phantom_ossl_zero) != 1
                || pthread_setspecific(phantom_ossl.key, c) != 0) {
            phantom_ossl_free(c);
            return NULL;
        }
        return c;
    }

    /* m[0:mlen] is encrypted in place, the 16-byte tag written to tag. */
    static int phantom_ossl_seal(unsigned char *m, size_t mlen, const unsigned char *nonce,
                                 const unsigned char *key, unsigned char *tag) {
        phantom_ossl_ctx *c = phantom_ossl_get();
        int outl = 0;
        if (c == NULL)
            return -2;
        c->dirty = 1;
        if (phantom_ossl.enc_init(c->enc, NULL, NULL, key, nonce) != 1)
            return -1;
        if (mlen && phantom_ossl.enc_update(c->enc, m, &outl, m, (int)mlen) != 1)
            return -1;
        if (phantom_ossl.enc_final(c->enc, m + mlen, &outl) != 1)
            return -1;
        return phantom_ossl.ctrl(c->enc, PHANTOM_EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1 ? 0 : -1;
    }

    /* c[0:clen] (the tag apart) is decrypted in place if tag_in authenticates it;
       on failure c[0:clen] is zeroed. */
    static int phantom_ossl_open(unsigned char *c, size_t clen, const unsigned char *tag_in,
                                 const unsigned char *nonce, const unsigned char *key) {
        phantom_ossl_ctx *x = phantom_ossl_get();
        unsigned char tag[16];
        int outl = 0, ok;
        if (x == NULL)
            return -2;
        x->dirty = 1;
        memcpy(tag, tag_in, 16);
        ok = phantom_ossl.dec_init(x->dec, NULL, NULL, key, nonce) == 1
             && phantom_ossl.ctrl(x->dec, PHANTOM_EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1;
        if (ok && clen)
            ok = phantom_ossl.dec_update(x->dec, c, &outl, c, (int)clen) == 1;
        ok = ok && phantom_ossl.dec_final(x->dec, c + clen, &outl) == 1;
        if (!ok) {
            memset(c, 0, clen);
            return -1;
        }
        return 0;
    }

    /* Load the all-zero key into this thread's contexts (after a batch). */
    static void phantom_ossl_wipe(void) {
        phantom_ossl_ctx *c;
        unsigned char scratch[16];
        int outl = 0;
        if (!phantom_ossl.ready)
            return;
        c = (phantom_ossl_ctx *)pthread_getspecific(phantom_ossl.key);
        if (c == NULL || !c->dirty)
            return;
        phantom_ossl.enc_init(c->enc, NULL, NULL, phantom_ossl_zero, phantom_ossl_zero);
        phantom_ossl.enc_final(c->enc, scratch, &outl);   /* its Poly1305 key, from the zero key */
        phantom_ossl.dec_init(c->dec, NULL, NULL, phantom_ossl_zero, phantom_ossl_zero);
        c->dirty = 0;
    }

    static int phantom_ossl_ready(void) {
        return phantom_ossl.ready;
    }
    """
    int phantom_ossl_setup(const uintptr_t *a) nogil
    int phantom_ossl_seal(unsigned char *m, size_t mlen, const unsigned char *nonce,
                          const unsigned char *key, unsigned char *tag) noexcept nogil
    int phantom_ossl_open(unsigned char *c, size_t clen, const unsigned char *tag_in,
                          const unsigned char *nonce, const unsigned char *key) noexcept nogil
    void phantom_ossl_wipe() noexcept nogil
    int phantom_ossl_ready() noexcept nogil
