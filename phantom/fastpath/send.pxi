# send.pxi: the outbound phases: route and key (prepare), seal, sendmmsg
# (with UDP GSO), count; and one packet sent by the control plane.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


cdef int SEND_WAIT_MS = 200        # longest wait for POLLOUT before a send counts as failed
cdef int ICMP_PENDING_MAX = 16     # unroutable packets queued for an ICMP answer


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
            pkt.wrap_cipher = rp.current.cipher
            if pkt.wrap_cipher == CIPHER_AEGIS:      # type 7 under the hop's transport key
                memcpy(pkt.wrap_key, rp.current.data_send_key, FP_KEY_SIZE)
            else:                                    # type 6: secretbox under the session key
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
            rc = -1        # fault injection (_testing.set_fault_seal): as if libsodium failed
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
            # relay id (every buffer has FP_WRAP_ROOM spare bytes past its tail room:
            # a type-7 frame's 32-byte tag ends there)
            dlen = FP_PAYLOAD_OFFSET + pkt.len + pkt.wire_tail - pkt.wire_off
            memmove(pkt.buf + FP_PAYLOAD_OFFSET + 4, pkt.buf + pkt.wire_off, dlen)
            memcpy(pkt.buf + FP_PAYLOAD_OFFSET, &pkt.wrap_id, 4)
            pkt.len = 4 + dlen
            if pkt.wrap_cipher == CIPHER_AEGIS:   # type 7: buf[16 : 32 + len + 32]
                pkt.wire_off = FP_HEADER_SIZE
                pkt.wire_tail = FP_AEGIS_TAG
                rc = _seal_aegis_relay(pkt.buf, pkt.len, pkt.wrap_index, pkt.wrap_counter, pkt.wrap_key)
            else:                                 # type 6: buf[0 : 32 + len]
                pkt.wire_off = 0
                pkt.wire_tail = 0
                rc = _seal_packet(pkt.buf, pkt.len, pkt.wrap_index, pkt.wrap_counter, pkt.wrap_key)
                pkt.buf[0] = MSG_RELAY            # the header is not sealed
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


cdef inline void _count_drop(fp_engine *e, fp_pkt *pkt) noexcept nogil:
    """Count pkt's drop globally and for its peer when known (lock held)."""
    cdef fp_peer *peer
    e.drops[pkt.verdict] += 1
    if pkt.peer_slot >= 0 and pkt.peer_slot < e.peers_cap:
        peer = e.peers[pkt.peer_slot]
        if peer != NULL and peer.serial == pkt.peer_serial:
            peer.drops[pkt.verdict] += 1


# --- one packet the control plane sends (Forwarder.send_packet, send_keepalive) ----------
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
