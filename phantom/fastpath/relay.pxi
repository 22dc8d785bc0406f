# relay.pxi: NAT traversal relay frames (wire type 6): the relay-id and pair
# hashes, forwarding on a relay, unwrapping on a relayed peer.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# --- the relay-id and pair hashes (lock held) -------------------------------------------
# e.by_relay: chains of relay_known peer slots by (relay_slot, relay_id), as
# tables.pxi's e.by_id; e.by_pair (on a relay): (source peer id, relay id) -> pair.
cdef inline uint32_t _relay_bucket(int relay_slot, uint32_t relay_id) noexcept nogil:
    return _hash64((<uint64_t><uint32_t>relay_slot << 32) | relay_id)


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
    if not _phantom_cipher(pkt.cipher):
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
    # type 7 only for a frame that came as type 7, to an aegis256 session; else type 6
    pkt.relay_aegis = pkt.relay_aegis and kp.cipher == CIPHER_AEGIS
    if pkt.relay_aegis:
        memcpy(pkt.key, kp.data_send_key, FP_KEY_SIZE)
    else:
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
    if plen < 8 or not _phantom_cipher(pkt.cipher):
        pkt.verdict = D_MALFORMED
        return
    rid = _le32(pkt.buf + FP_PAYLOAD_OFFSET)
    i = _slot_by_relay(e, relay_slot, rid)
    if i < 0:
        pkt.verdict = D_RELAY_UNKNOWN_ID           # no peer of ours goes by that id at this relay
        return
    if pkt.cipher == CIPHER_AEGIS:
        # a type-7 frame was opened 16 bytes back (_in_open): return to where the
        # datagram was received, so the inner one moves within its own bytes
        pkt.buf += FP_PAYLOAD_OFFSET - FP_HEADER_SIZE
        memmove(pkt.buf, pkt.buf + FP_HEADER_SIZE + 4, plen - 4)
    else:
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
    delivered to the device are done), runs of equal-size frames to one
    destination as one UDP GSO send (a GRO-received burst from one source
    leaves as it came).  Returns the number that failed."""
    cdef int i, relays = 0, failed = 0, rc
    cdef fp_pkt *pkt
    cdef size_t size, largest = 0
    cdef uint64_t fallbacks
    cdef bint gso
    for i in range(n):
        pkt = &pkts[i]
        if pkt.verdict == V_PASS:
            pkt.verdict = V_CONSUMED              # delivered already
        elif pkt.verdict == V_RELAY:
            if pkt.relay_aegis:
                # type 7 in, type 7 out: the frame fills the bytes it came in
                pkt.wire_off = FP_HEADER_SIZE
                pkt.wire_tail = FP_AEGIS_TAG
                rc = _seal_aegis_relay(pkt.buf, pkt.len - FP_PAYLOAD_OFFSET, pkt.local_index, pkt.counter,
                                       pkt.key)
            else:
                if pkt.cipher == CIPHER_AEGIS:
                    # type 7 in (opened 16 bytes back), type 6 out: the payload moves
                    # forward into the datagram's own bytes (16 fewer on the way out)
                    pkt.buf += FP_PAYLOAD_OFFSET - FP_HEADER_SIZE
                    memmove(pkt.buf + FP_PAYLOAD_OFFSET, pkt.buf + FP_HEADER_SIZE, pkt.len - FP_PAYLOAD_OFFSET)
                pkt.wire_off = 0
                pkt.wire_tail = 0
                rc = _seal_packet(pkt.buf, pkt.len - FP_PAYLOAD_OFFSET, pkt.local_index, pkt.counter, pkt.key)
                pkt.buf[0] = MSG_RELAY            # the header is not sealed
            if rc != 0:
                pkt.verdict = D_SEND_FAILED
                _wipe(pkt.buf, pkt.len)
                failed += 1
            else:
                pkt.verdict = V_PASS
                pkt.len -= FP_PAYLOAD_OFFSET      # _send_batch sends buf[off : 32 + len + tail]
                relays += 1
                size = FP_PAYLOAD_OFFSET + pkt.len + pkt.wire_tail - pkt.wire_off
                if size > largest:
                    largest = size
            _wipe(pkt.key, FP_KEY_SIZE)
    if relays:
        # Frames bigger than the path MTU (peers without TSO send full-MTU
        # packets, whose frames fragment) make the kernel refuse a GSO send:
        # after one refusal, frames that large go without GSO for a while
        # rather than fail a system call every batch.
        w.relay_gso_batches += 1
        if w.relay_gso_batches >= 4096:
            w.relay_gso_refused = 0
            w.relay_gso_batches = 0
        gso = w.gso and (w.relay_gso_refused == 0 or largest < w.relay_gso_refused)
        fallbacks = w.gso_fallbacks
        _send_batch(w.udp_fd, pkts, n, w.msgs, w.iovs, w.map, 0, &w.send_waits,
                    gso, w.groups, w.cmsgs, &w.gso_sends, &w.gso_fallbacks)
        if w.gso_fallbacks != fallbacks and (w.relay_gso_refused == 0 or largest < w.relay_gso_refused):
            w.relay_gso_refused = largest
            w.relay_gso_batches = 0
        for i in range(n):
            if pkts[i].verdict == D_SEND_FAILED:
                failed += 1
    return failed
