# offload.pxi: TUN offloads: virtio_net_hdr, checksum completion, TCP/UDP
# segmentation (TSO/USO) of reads and TCP coalescing of writes.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# --- TUN offloads: virtio_net_hdr, checksum completion, TCP segmentation ---------------
cdef enum:
    VNET_HDR_LEN = 10              # sizeof(struct virtio_net_hdr)
    TSO_MAX_SEGMENTS = 256         # spare out_pkts slots when the TUN fd has offloads


cdef inline uint64_t _sum16(const unsigned char *p, size_t n, uint64_t acc) noexcept nogil:
    """Add the 16-bit big-endian words of p[0:n] (odd tail padded) to acc,
    modulo 0xFFFF (what the ones' complement sum needs: _fold the result).

    The ones' complement sum does not depend on byte order (RFC 1071 2.B):
    the bulk is summed as native 32-bit words, eight bytes a step, folded to
    16 bits and byte-swapped once; a 16-bit word a step cost ~11 % of the
    sender's cycles at single-stream TCP (issue #15)."""
    cdef size_t i = 0
    cdef uint64_t s = 0, s2 = 0
    cdef uint32_t w0, w1
    cdef uint16_t h
    while i + 8 <= n:
        memcpy(&w0, p + i, 4)
        memcpy(&w1, p + i + 4, 4)
        s += w0
        s2 += w1
        i += 8
    s += s2
    if i + 4 <= n:
        memcpy(&w0, p + i, 4)
        s += w0
        i += 4
    if i + 2 <= n:
        memcpy(&h, p + i, 2)
        s += h
        i += 2
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    # native order -> big-endian word value (x86 is little-endian)
    if (<const unsigned char *>&_ENDIAN_PROBE)[0] == 1:
        s = ((s & 0xFF) << 8) | (s >> 8)
    acc += s
    if i < n:
        acc += <uint64_t>p[i] << 8
    return acc


cdef inline uint16_t _fold(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return <uint16_t>acc


cdef inline void _put16(unsigned char *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline uint16_t _get16(const unsigned char *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _get32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _put32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef int _finish_csum(unsigned char *p, size_t n, size_t start, size_t offset) noexcept nogil:
    """VIRTIO_NET_HDR_F_NEEDS_CSUM: the field at start+offset holds the
    pseudo-header sum; complete the ones' complement sum over p[start:n]."""
    cdef uint16_t c
    if start + offset + 2 > n:
        return -1
    c = ~_fold(_sum16(p + start, n - start, 0)) & 0xFFFF
    if c == 0 and offset == 6:      # UDP: a computed zero is sent as all ones
        c = 0xFFFF
    _put16(p + start + offset, c)
    return 0


cdef void _l4_csum(unsigned char *p, size_t n, size_t l4, int proto, size_t csum_off) noexcept nogil:
    """Full TCP/UDP checksum of the packet p[0:n] (IPv4 or IPv6, transport at l4)."""
    cdef uint64_t acc = 0
    cdef uint16_t c
    cdef size_t l4len = n - l4
    _put16(p + l4 + csum_off, 0)
    if p[0] >> 4 == 4:
        acc = _sum16(p + 12, 8, acc)
    else:
        acc = _sum16(p + 8, 32, acc)
    acc += proto + (l4len & 0xFFFF) + (l4len >> 16)
    acc = _sum16(p + l4, l4len, acc)
    c = ~_fold(acc) & 0xFFFF
    if c == 0 and proto == 17:
        c = 0xFFFF
    _put16(p + l4 + csum_off, c)


cdef void _ipv4_csum(unsigned char *p) noexcept nogil:
    cdef size_t ihl = (p[0] & 0x0F) * 4
    _put16(p + 10, 0)
    _put16(p + 10, ~_fold(_sum16(p, ihl, 0)) & 0xFFFF)


cdef int _tso_split(fp_pkt *slots, int k, int room, size_t max_len=0) noexcept nogil:
    """slots[k] holds a virtio_net_hdr at buf+22 and a packet at buf+32 (len).
    Complete a partial checksum, or cut a TCP (TSO4/TSO6) or UDP (USO)
    super-packet into segments in slots[k], slots[k+1], ... with correct IP
    lengths, IDs, TCP sequence numbers, flags and checksums.  ``max_len``
    (0: none) caps a TCP segment's IP length below the kernel's gso_size
    (a relayed peer: room for the relay frame, so nothing fragments; a UDP
    super-packet's segments are datagrams and keep their size).  Returns the
    number of slots used (>= 1); slots[k].verdict is a drop if the header is
    unusable."""
    cdef unsigned char *h = slots[k].buf + FP_PAYLOAD_OFFSET - VNET_HDR_LEN
    cdef unsigned char *p = slots[k].buf + FP_PAYLOAD_OFFSET
    cdef size_t n = slots[k].len
    cdef uint8_t flags = h[0], gso_type = h[1] & 0x7F
    cdef size_t gso_size = h[4] | (<size_t>h[5] << 8)      # little-endian (virtio 1.0 on x86)
    cdef size_t csum_start = h[6] | (<size_t>h[7] << 8)
    cdef size_t csum_offset = h[8] | (<size_t>h[9] << 8)
    cdef unsigned char hdrs[256]
    cdef size_t l4, hlen, payload, chunk, l4hdr
    cdef int nseg, i, proto
    cdef bint v4
    cdef uint32_t seq
    cdef uint16_t ident
    cdef unsigned char *d
    if gso_type == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            if _finish_csum(p, n, csum_start, csum_offset) < 0:
                slots[k].verdict = D_BAD_INNER
        return 1
    if n < 20 or gso_size == 0:
        slots[k].verdict = D_BAD_INNER
        return 1
    v4 = p[0] >> 4 == 4
    l4 = csum_start
    if gso_type == VIRTIO_NET_HDR_GSO_TCPV4 or gso_type == VIRTIO_NET_HDR_GSO_TCPV6:
        proto = 6
        if l4 + 20 > n:
            slots[k].verdict = D_BAD_INNER
            return 1
        l4hdr = (p[l4 + 12] >> 4) * 4
    elif gso_type == VIRTIO_NET_HDR_GSO_UDP_L4:
        proto = 17
        l4hdr = 8
    else:
        slots[k].verdict = D_BAD_INNER
        return 1
    hlen = l4 + l4hdr
    if (v4 and (gso_type == VIRTIO_NET_HDR_GSO_TCPV6 or l4 < 20)) or \
            (not v4 and (p[0] >> 4 != 6 or gso_type == VIRTIO_NET_HDR_GSO_TCPV4 or l4 < 40)) or \
            l4hdr < 8 or hlen > n or hlen > sizeof(hdrs):
        slots[k].verdict = D_BAD_INNER
        return 1
    payload = n - hlen
    if proto == 6 and max_len > hlen + 64 and hlen + gso_size > max_len:
        gso_size = max_len - hlen
    nseg = <int>((payload + gso_size - 1) // gso_size)
    if nseg < 1:
        nseg = 1
    if nseg > room:
        slots[k].verdict = D_BAD_INNER
        return 1
    memcpy(hdrs, p, hlen)
    seq = _get32(hdrs + l4 + 4) if proto == 6 else 0
    ident = _get16(hdrs + 4) if v4 else 0
    # Segments 1.. are copied out before segment 0 is rewritten in place.
    i = nseg - 1
    while i >= 0:
        chunk = gso_size if payload - i * gso_size > gso_size else payload - i * gso_size
        d = slots[k + i].buf + FP_PAYLOAD_OFFSET
        if i > 0:
            _pkt_reset(&slots[k + i])
            memcpy(d, hdrs, hlen)
            memcpy(d + hlen, p + hlen + i * gso_size, chunk)
            slots[k + i].addrlen = 0
        slots[k + i].len = hlen + chunk
        if v4:
            _put16(d + 2, <uint16_t>(hlen + chunk))
            _put16(d + 4, <uint16_t>(ident + i))
            _ipv4_csum(d)
        else:
            _put16(d + 4, <uint16_t>(hlen + chunk - 40))
        if proto == 6:
            _put32(d + l4 + 4, seq + <uint32_t>(i * gso_size))
            if i < nseg - 1:
                d[l4 + 13] &= ~0x09          # FIN and PSH only on the last segment
            if i > 0:
                d[l4 + 13] &= ~0x80          # CWR only on the first
            _l4_csum(d, hlen + chunk, l4, 6, 16)
        else:
            _put16(d + l4 + 4, <uint16_t>(l4hdr + chunk))
            _l4_csum(d, hlen + chunk, l4, 17, 6)
        i -= 1
    return nseg


cdef inline bint _tcp_segment(const unsigned char *p, size_t n, size_t *l4, size_t *hlen) noexcept nogil:
    """Is p[0:n] a TCP segment that may be coalesced (IPv4 without options or
    fragmentation, or IPv6 without extension headers; flags ACK and PSH only;
    a payload)?  Sets the transport offset and the header length."""
    cdef size_t t
    if n >= 40 and p[0] == 0x45:
        if p[9] != 6 or (_get16(p + 6) & 0x3FFF) or _get16(p + 2) != n:
            return False
        t = 20
    elif n >= 60 and p[0] >> 4 == 6:
        if p[6] != 6 or <size_t>_get16(p + 4) + 40 != n:
            return False
        t = 40
    else:
        return False
    l4[0] = t
    hlen[0] = t + (p[t + 12] >> 4) * 4
    if hlen[0] < t + 20 or hlen[0] >= n:
        return False
    return (p[t + 13] & 0xFF) in (0x10, 0x18)


cdef inline bint _same_flow(const unsigned char *a, const unsigned char *b, size_t l4,
                            size_t hlen) noexcept nogil:
    """b continues a's flow with identical headers apart from lengths, IDs,
    checksums, sequence numbers and PSH."""
    if l4 == 20:
        if a[1] != b[1] or a[8] != b[8] or (a[6] & 0x40) != (b[6] & 0x40) \
                or memcmp(a + 12, b + 12, 8) != 0:
            return False
    else:
        if memcmp(a, b, 4) != 0 or a[7] != b[7] or memcmp(a + 8, b + 8, 32) != 0:
            return False
    return (memcmp(a + l4, b + l4, 4) == 0                    # ports
            and memcmp(a + l4 + 8, b + l4 + 8, 4) == 0        # ack
            and a[l4 + 12] == b[l4 + 12]                      # data offset
            and memcmp(a + l4 + 14, b + l4 + 14, 2) == 0      # window
            and memcmp(a + l4 + 20, b + l4 + 20, hlen - l4 - 20) == 0)   # options


cdef int _write_tun(fp_worker *w, fp_pkt *pkts, int n) noexcept nogil:
    """Write the V_PASS packets to the TUN device.  With a virtio_net_hdr
    device, consecutive segments of one TCP flow are coalesced into one
    super-packet (gso_type TCPV4/TCPV6, the kernel's GRO in reverse) and
    written with one writev, segments in place; others get an empty header.
    Returns the number of packets that failed (marked D_SEND_FAILED)."""
    cdef int i = 0, j, k, count, failed = 0
    cdef fp_pkt *f
    cdef fp_pkt *q
    cdef unsigned char *p
    cdef unsigned char *h
    cdef size_t l4 = 0, hlen = 0, l4b = 0, hlenb = 0, gso, total, plen, tcplen
    cdef uint32_t next_seq
    cdef bint closed
    cdef ssize_t r
    cdef uint64_t acc
    cdef int niov
    while i < n:
        f = &pkts[i]
        if f.verdict != V_PASS:
            i += 1
            continue
        p = f.buf + FP_PAYLOAD_OFFSET
        h = p - VNET_HDR_LEN
        count = 1
        niov = 1
        j = i + 1
        if w.vnet and _tcp_segment(p, f.len, &l4, &hlen):
            gso = f.len - hlen
            total = f.len
            next_seq = _get32(p + l4 + 4) + <uint32_t>gso
            closed = (p[l4 + 13] & 0x08) != 0                 # PSH ends a run
            while not closed and j < n and count < 64:
                q = &pkts[j]
                if q.verdict != V_PASS:
                    j += 1
                    continue
                if not _tcp_segment(q.buf + FP_PAYLOAD_OFFSET, q.len, &l4b, &hlenb) \
                        or l4b != l4 or hlenb != hlen:
                    break
                plen = q.len - hlen
                if (plen > gso or total + plen > 65000
                        or _get32(q.buf + FP_PAYLOAD_OFFSET + l4 + 4) != next_seq
                        or not _same_flow(p, q.buf + FP_PAYLOAD_OFFSET, l4, hlen)):
                    break
                w.iovs[niov].iov_base = q.buf + FP_PAYLOAD_OFFSET + hlen
                w.iovs[niov].iov_len = plen
                niov += 1
                count += 1
                total += plen
                next_seq += <uint32_t>plen
                if q.buf[FP_PAYLOAD_OFFSET + l4 + 13] & 0x08:
                    p[l4 + 13] |= 0x08
                    closed = True
                if plen < gso:
                    closed = True
                j += 1
        if count > 1:
            tcplen = total - l4
            if l4 == 20:
                _put16(p + 2, <uint16_t>total)
                _ipv4_csum(p)
                acc = _sum16(p + 12, 8, 0)
            else:
                _put16(p + 4, <uint16_t>(total - 40))
                acc = _sum16(p + 8, 32, 0)
            acc += 6 + (tcplen & 0xFFFF) + (tcplen >> 16)
            _put16(p + l4 + 16, _fold(acc))                   # pseudo-header sum only
            h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM
            h[1] = VIRTIO_NET_HDR_GSO_TCPV4 if l4 == 20 else VIRTIO_NET_HDR_GSO_TCPV6
            h[2] = hlen & 0xFF
            h[3] = hlen >> 8
            h[4] = gso & 0xFF
            h[5] = gso >> 8
            h[6] = l4 & 0xFF
            h[7] = l4 >> 8
            h[8] = 16
            h[9] = 0
            w.gro_tun_packets += 1
            w.gro_tun_segments += count
        elif w.vnet:
            memset(h, 0, VNET_HDR_LEN)                        # "nothing to do"
            j = i + 1
        else:
            j = i + 1
        w.iovs[0].iov_base = h if w.vnet else p
        w.iovs[0].iov_len = f.len + (VNET_HDR_LEN if w.vnet else 0)
        while True:
            r = writev(w.inner_fd, w.iovs, niov)
            if r < 0 and errno == EINTR:
                continue
            break
        if r < 0:
            for k in range(i, j):
                if pkts[k].verdict == V_PASS:
                    pkts[k].verdict = D_SEND_FAILED
                    failed += 1
        i = j
    return failed
