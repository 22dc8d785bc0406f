# The Phantom responder's batch work (included by _responder.pyx, uvloop style:
# textually, at its end; it uses the module's primitives and Responder).

# --- many handshakes at once, on two threads ------------------------------------------------
# A hub's data path hands it the initiations that arrived together; their
# Noise work (the X25519 products: es and ss when reading, ee and se when
# writing) runs on the calling thread and one more C thread at once, without
# the GIL, while the decisions between the read and the write stay with the
# engine, in order.  Each handshake's steps are exactly those above.
cdef extern from *:
    """
    #include <pthread.h>
    static int ph_next(int *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    typedef void (*ph_job_fn)(void *);

    /* One helper thread, started at the first batch, that joins the batch in
       hand when it gets the CPU in time; the caller runs the batch's jobs
       itself and then waits only for a helper that took part (never for one
       that was not scheduled yet: on a busy machine that could take ms). */
    static pthread_mutex_t pw_mu = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t pw_cv = PTHREAD_COND_INITIALIZER;
    static pthread_cond_t pw_done = PTHREAD_COND_INITIALIZER;
    static pthread_t pw_thread;
    static int pw_state = 0;            /* 0 not started, 1 running, 2 stopped or failed */
    static void *pw_batch = NULL;
    static ph_job_fn pw_fn = NULL;
    static int pw_active = 0;
    static unsigned long pw_gen = 0, pw_joined = 0, pw_batches = 0;

    static void *pw_main(void *arg) {
        unsigned long seen = 0;
        void *b;
        ph_job_fn fn;
        (void)arg;
        pthread_mutex_lock(&pw_mu);
        for (;;) {
            while (pw_state == 1 && (pw_batch == NULL || pw_gen == seen))
                pthread_cond_wait(&pw_cv, &pw_mu);
            if (pw_state != 1) break;
            seen = pw_gen;
            b = pw_batch;
            fn = pw_fn;
            pw_active++;
            pw_joined++;
            pthread_mutex_unlock(&pw_mu);
            fn(b);
            pthread_mutex_lock(&pw_mu);
            if (--pw_active == 0) pthread_cond_broadcast(&pw_done);
        }
        pthread_mutex_unlock(&pw_mu);
        return NULL;
    }

    static void ph_parallel(ph_job_fn fn, void *b) {
        int use;
        pthread_mutex_lock(&pw_mu);
        if (pw_state == 0)
            pw_state = pthread_create(&pw_thread, NULL, pw_main, NULL) == 0 ? 1 : 2;
        use = pw_state == 1;
        if (use) {
            pw_batch = b;
            pw_fn = fn;
            pw_gen++;
            pw_batches++;
            pthread_cond_signal(&pw_cv);
        }
        pthread_mutex_unlock(&pw_mu);
        fn(b);
        if (use) {
            pthread_mutex_lock(&pw_mu);
            pw_batch = NULL;                    /* a helper waking from now on stays out */
            while (pw_active > 0) pthread_cond_wait(&pw_done, &pw_mu);
            pthread_mutex_unlock(&pw_mu);
        }
    }

    static void pw_stop(void) {
        int join;
        pthread_mutex_lock(&pw_mu);
        join = pw_state == 1;
        pw_state = 2;
        pthread_cond_broadcast(&pw_cv);
        pthread_mutex_unlock(&pw_mu);
        if (join) pthread_join(pw_thread, NULL);
    }

    static void pw_atfork_child(void) {
        pthread_mutex_init(&pw_mu, NULL);
        pthread_cond_init(&pw_cv, NULL);
        pthread_cond_init(&pw_done, NULL);
        pw_state = 0;
        pw_batch = NULL;
        pw_active = 0;
    }

    static int pw_init(void) { return pthread_atfork(NULL, NULL, pw_atfork_child); }
    """
    ctypedef void (*ph_job_fn)(void *) noexcept nogil
    int ph_next(int *p) noexcept nogil
    void ph_parallel(ph_job_fn fn, void *b) noexcept nogil
    void pw_stop() noexcept nogil
    int pw_init() noexcept nogil
    unsigned long pw_joined, pw_batches


if pw_init() != 0:
    raise ImportError("pthread_atfork failed")


def helper_stats() -> dict:
    """Batches run, and how many of them the helper thread took part in."""
    return {"batches": pw_batches, "joined": pw_joined}


def _helper_stop() -> None:
    with nogil:
        pw_stop()


_atexit.register(_helper_stop)


DEF K_READ_S = 0
DEF K_READ_REST = 1
DEF K_WRITE = 2

cdef struct job_t:
    hs_t w                      # reads: the work copy; writes: unused (wp)
    hs_t *wp                    # writes: the responder's own state
    const unsigned char *s
    const unsigned char *msg
    size_t mlen
    unsigned char *buf          # reads: the payload; writes: the message
    unsigned char *e
    bint fixed_e
    bint have_ss
    int rc

cdef struct batch_t:
    job_t *jobs
    int n
    int next
    int kind


cdef void _run(batch_t *b) noexcept nogil:
    cdef int i
    cdef job_t *j
    while True:
        i = ph_next(&b.next)
        if i >= b.n:
            return
        j = &b.jobs[i]
        if j.rc != OK:
            continue
        if b.kind == K_READ_S:
            j.rc = _read_s(&j.w, j.s, j.msg, j.mlen)
        elif b.kind == K_READ_REST:
            j.rc = _read_rest(&j.w, j.s, j.msg, j.mlen, j.have_ss, j.buf)
        else:
            j.rc = _write2(j.wp, j.e, j.fixed_e, j.msg, j.mlen, j.buf)


cdef void _run_any(void *b) noexcept nogil:
    _run(<batch_t *>b)


cdef void _parallel(job_t *jobs, int n, int kind) noexcept nogil:
    """Run the jobs on this thread and, for two or more, the helper thread."""
    cdef batch_t b
    b.jobs = jobs
    b.n = n
    b.next = 0
    b.kind = kind
    if n >= 2:
        ph_parallel(_run_any, &b)
    else:
        _run(&b)


def read_many(ResponderKey key, list responders, list messages) -> list:
    """``responders[i].read_message(messages[i])`` for every i, at once: a
    list of the payloads (bytes) or the HandshakeError each raised, in order.
    A responder whose read fails is left as it was, as with read_message."""
    cdef int n = len(responders)
    cdef int i
    cdef job_t *jobs
    cdef job_t *j
    cdef Responder r
    cdef const unsigned char[::1] c
    if len(messages) != n:
        raise ValueError("one message per responder")
    msgs = [bytes(m) for m in messages]
    out = [None] * n
    jobs = <job_t *>calloc(<size_t>n + 1, sizeof(job_t))
    if jobs == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            r = responders[i]
            j = &jobs[i]
            if r.key is not key:
                raise ValueError("a responder of another key")
            if r._state is not _State.RESPONDER_READ_1:
                j.rc = -1
                out[i] = HandshakeError("out of order: %s" % r._state.value)
                continue
            c = msgs[i]
            j.mlen = c.shape[0]
            if j.mlen < MSG1_OVERHEAD:
                j.rc = E_SHORT
                continue
            j.msg = &c[0]
            j.s = key.s
            memcpy(j.w.ck, r.w.ck, HASHLEN)
            memcpy(j.w.h, r.w.h, HASHLEN)
            j.buf = <unsigned char *>malloc(j.mlen - MSG1_OVERHEAD + 1)
            if j.buf == NULL:
                raise MemoryError()
        with nogil:
            _parallel(jobs, n, K_READ_S)
        for i in range(n):
            j = &jobs[i]
            if j.rc != OK:
                continue
            cached = key._ss.get(PyBytes_FromStringAndSize(<char *>j.w.rs, DHLEN))
            if cached is not None:
                c = cached
                memcpy(j.w.ss, &c[0], DHLEN)
                j.have_ss = True
                key.ss_hits += 1
            else:
                key.ss_misses += 1
        with nogil:
            _parallel(jobs, n, K_READ_REST)
        for i in range(n):
            j = &jobs[i]
            if j.rc == -1:
                continue
            if j.rc != OK:
                out[i] = HandshakeError(_MESSAGES.get(j.rc, "handshake failed"))
                continue
            r = responders[i]
            rs = PyBytes_FromStringAndSize(<char *>j.w.rs, DHLEN)
            if not j.have_ss:
                key._remember(rs, j.w.ss)
            out[i] = PyBytes_FromStringAndSize(<char *>j.buf, j.mlen - MSG1_OVERHEAD)
            memcpy(&r.w, &j.w, sizeof(hs_t))
            _wipe(r.w.ss, DHLEN)
            r._rs = rs
            r._state = _State.RESPONDER_WRITE_2
        return out
    finally:
        for i in range(n):
            j = &jobs[i]
            if j.buf != NULL:
                _wipe(j.buf, j.mlen - MSG1_OVERHEAD + 1)
                free(j.buf)
        _wipe(jobs, (<size_t>n + 1) * sizeof(job_t))
        free(jobs)


def write_many(list responders, list payloads) -> list:
    """``responders[i].write_message(payloads[i])`` for every i, at once: a
    list of the messages (bytes) or the HandshakeError each raised, in order
    (a responder whose write fails is cleared, as with write_message)."""
    cdef int n = len(responders)
    cdef int i
    cdef job_t *jobs
    cdef job_t *j
    cdef Responder r
    cdef const unsigned char[::1] c
    cdef unsigned char empty[1]
    if len(payloads) != n:
        raise ValueError("one payload per responder")
    pls = [bytes(p) for p in payloads]
    out = [None] * n
    jobs = <job_t *>calloc(<size_t>n + 1, sizeof(job_t))
    if jobs == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            r = responders[i]
            j = &jobs[i]
            if r._state is not _State.RESPONDER_WRITE_2:
                j.rc = -1
                out[i] = HandshakeError("out of order: %s" % r._state.value)
                continue
            c = pls[i]
            j.mlen = c.shape[0]
            j.msg = empty
            if j.mlen:
                j.msg = &c[0]
            j.wp = &r.w
            j.e = r.e
            j.fixed_e = r.fixed_e
            j.buf = <unsigned char *>malloc(DHLEN + j.mlen + TAGLEN)
            if j.buf == NULL:
                raise MemoryError()
        with nogil:
            _parallel(jobs, n, K_WRITE)
        for i in range(n):
            j = &jobs[i]
            if j.rc == -1:
                continue
            r = responders[i]
            if j.rc != OK:
                r.clear()
                out[i] = HandshakeError(_MESSAGES.get(j.rc, "handshake failed"))
                continue
            out[i] = PyBytes_FromStringAndSize(<char *>j.buf, DHLEN + j.mlen + TAGLEN)
            r._hh = PyBytes_FromStringAndSize(<char *>r.w.h, HASHLEN)
            _wipe(r.e, DHLEN)
            r._state = _State.SPLIT
        return out
    finally:
        for i in range(n):
            if jobs[i].buf != NULL:
                free(jobs[i].buf)
        free(jobs)
