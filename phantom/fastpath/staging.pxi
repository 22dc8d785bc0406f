# staging.pxi: packets kept while a handshake runs, and their flush.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


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
