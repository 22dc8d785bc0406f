# worker.pxi: a worker: one data-plane thread, one batch each way, over one
# inner fd and one UDP fd, with the GIL released.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# --- one batch each way (worker thread) -------------------------------------------------
cdef inline void _pkt_reset(fp_pkt *pkt) noexcept nogil:
    pkt.relay = False
    pkt.relay_aegis = False
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


cdef size_t _relayed_seg_max(fp_engine *e, fp_pkt *pkt) noexcept nogil:
    """A TCP super-packet (TSO) read for a relayed peer: the largest inner
    packet that keeps its relay frame as small as a direct datagram of a
    full-MTU packet (MTU less the relay frame's overhead, and AEGIS-256's
    longer tag end to end), so the
    relay frame neither fragments nor stops UDP GSO/GRO on any hop; 0 for
    anything else (no limit)."""
    cdef const unsigned char *h = pkt.buf + FP_PAYLOAD_OFFSET - VNET_HDR_LEN
    cdef const unsigned char *a = NULL
    cdef int bits, slot
    cdef size_t m = 0
    cdef fp_peer *peer
    cdef fp_peer *rp
    if (h[1] & 0x7F) != VIRTIO_NET_HDR_GSO_TCPV4 and (h[1] & 0x7F) != VIRTIO_NET_HDR_GSO_TCPV6:
        return 0
    bits = _inner_addr(pkt.buf + FP_PAYLOAD_OFFSET, pkt.len, True, &a)
    if bits == 0 or e.mode != MODE_TUN:
        return 0
    _lock(e)
    slot = _route(e, a, bits)
    peer = e.peers[slot] if slot >= 0 else NULL
    if peer != NULL and peer.relayed and e.max_inner > FP_WRAP_ROOM + FP_AEGIS_EXTRA + 576:
        rp = e.peers[peer.relay_slot] if 0 <= peer.relay_slot < e.peers_cap else NULL
        m = e.max_inner - (FP_WRAP_SECRETBOX if rp != NULL and rp.current != NULL
                           and rp.current.cipher == CIPHER_SECRETBOX else FP_WRAP_AEGIS)
        if peer.current == NULL or peer.current.cipher == CIPHER_AEGIS:
            m -= FP_AEGIS_EXTRA
    _unlock(e)
    return m


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
                r = _tso_split(w.out_pkts, n, w.out_cap - n, _relayed_seg_max(e, &w.out_pkts[n]))
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
                pkt.relay_aegis = False
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


# --- a worker: one data-plane thread over one inner fd and one UDP fd ---------------------
cdef class Worker:
    """Runs the data-plane loop over (udp_fd, inner_fd) with the GIL released."""

    def __cinit__(self, Forwarder forwarder, int udp_fd, int inner_fd, bint inner_is_socket,
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
        self.forwarder = forwarder
        w = self.w = <fp_worker *>calloc(1, sizeof(fp_worker))
        if w == NULL:
            raise MemoryError()
        w.e = forwarder.e
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
