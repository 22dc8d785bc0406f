# events.pxi: the event queue the control plane drains (lock held), and its eventfd.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


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
