# keypairs.pxi: keypairs and the receiver-index hash (lock held).
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


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
