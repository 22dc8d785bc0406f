# receive.pxi: the inbound phases: framing and index (prepare), open, commit.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


cdef inline size_t _ip_length(const unsigned char *p, size_t n) noexcept nogil:
    """The length an IPv4/IPv6 header gives its packet (0: neither, or truncated)."""
    if n >= 20 and p[0] >> 4 == 4:
        return (<size_t>p[2] << 8) | p[3]
    if n >= 40 and p[0] >> 4 == 6:
        return 40 + ((<size_t>p[4] << 8) | p[5])
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
        if pkt.relayed_inner and (t == MSG_PEER_CONTROL or t == MSG_RELAY or t == MSG_RELAY_AEGIS):
            pkt.verdict = D_MALFORMED               # no nesting; peer control only on a direct session
            continue
        if t == MSG_INITIATION or t == MSG_RESPONSE or t == MSG_COOKIE_REPLY:
            # exact sizes, Phantom's (with or without suites) or WireGuard's, and
            # the range of Phantom's initiations with an attachment (as wire.demux.classify)
            expect = INITIATION_SIZE if t == MSG_INITIATION else (RESPONSE_SIZE if t == MSG_RESPONSE else COOKIE_REPLY_SIZE)
            if pkt.len != expect and not ((t == MSG_INITIATION and (pkt.len == WG_INITIATION_SIZE
                                                       or pkt.len == INITIATION_OFFER_SIZE
                                                       or (pkt.len >= INITIATION_ATTACHED_MIN_SIZE
                                                           and pkt.len <= INITIATION_MAX_SIZE)))
                                          or (t == MSG_RESPONSE and (pkt.len == WG_RESPONSE_SIZE
                                                          or pkt.len == RESPONSE_CHOICE_SIZE))):
                pkt.verdict = D_MALFORMED
            else:
                if _ev_push(e, EV_CONTROL_PACKET, -1, 0, pkt.buf, pkt.len, &pkt.addr, pkt.addrlen):
                    pkt.verdict = V_CONSUMED
                    events += 1
                else:
                    pkt.verdict = D_CONTROL_OVERFLOW   # the control plane's queue is full
            continue
        if t == MSG_PEER_CONTROL:               # peer control: the control plane opens it
            if pkt.len < PEER_CONTROL_MIN_SIZE or pkt.len > PEER_CONTROL_MAX_SIZE:
                pkt.verdict = D_MALFORMED
            else:
                pkt.verdict = V_CONSUMED
                if _ev_push(e, EV_CONTROL_PACKET, -1, 0, pkt.buf, pkt.len, &pkt.addr, pkt.addrlen):
                    events += 1
            continue
        # a relay frame: forwarded when we relay, unwrapped when we are relayed
        # (relay.pxi); one inside a relay frame is malformed (no nesting)
        pkt.relay = (t == MSG_RELAY or t == MSG_RELAY_AEGIS) and not pkt.relayed_inner
        pkt.relay_aegis = t == MSG_RELAY_AEGIS and not pkt.relayed_inner
        if t != MSG_TRANSPORT and not pkt.relay:
            pkt.verdict = D_MALFORMED
            continue
        if pkt.len < FP_PAYLOAD_OFFSET:
            pkt.verdict = D_TRUNCATED
            continue
        # an AEGIS-256 datagram is 16 bytes longer than a secretbox one (and a
        # relay frame may carry one): the exact limit is checked below, by cipher
        if pkt.len - FP_PAYLOAD_OFFSET > e.max_inner + FP_AEGIS_EXTRA \
                + (FP_PAYLOAD_OFFSET + 4 + FP_AEGIS_EXTRA if pkt.relay else 0) \
                + (FP_AEGIS_EXTRA if pkt.relay_aegis else 0):
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
        if pkt.relay_aegis and kp.cipher != CIPHER_AEGIS:
            pkt.verdict = D_MALFORMED             # type 7 only on an aegis256 hop session
            continue
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
        if pkt.relay and kp.cipher == CIPHER_AEGIS and not pkt.relay_aegis:
            # type 6 is secretbox under the session key, whatever the suite
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
            if pkt.relay_aegis:
                rc = _open_aegis_relay(pkt.buf, pkt.len, pkt.counter, pkt.key)
            else:
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
