# firewall.pxi: the firewall's compiled tables (dataplane/firewall/tables.py),
# decided in C, and the per-batch hook into the Python classifier.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# --- firewall: the compiled tables of dataplane/firewall/, decided in C ---------------
cdef enum:
    FW_ACCEPT = 0
    FW_DROP = 1
    FW_REJECT = 2
    FW_DEFER = 3                   # decided by the Python classifier (fragments, stateful)
    FW_R_RULE = 0                  # firewall.Reason
    FW_R_DEFAULT = 1
    FW_R_MALFORMED = 4
    FW_R_PROTOCOL = 5
    FW_HDR_SIZE = 16               # firewall.TABLE_HEADER.size
    FW_PROTOCOLS_OFF = 16
    FW_RULES_OFF = 8464            # firewall.RULES_OFF
    FW_RULE_SIZE = 88              # firewall.RULE.size
    FW_F_PROTO = 0x01
    FW_F_PORTS = 0x02
    FW_F_PEER = 0x04
    FW_F_REMOTE4 = 0x08
    FW_F_REMOTE6 = 0x10
    FW_F_LOCAL4 = 0x20
    FW_F_LOCAL6 = 0x40
    FW_F_PEERSET = 0x80            # the peer must be in the peer set at the u32 at 16


cdef inline uint16_t _le16(const unsigned char *p) noexcept nogil:
    return p[0] | (<uint16_t>p[1] << 8)


cdef inline bint _masked_eq(const unsigned char *a, const unsigned char *net,
                            const unsigned char *mask, int width) noexcept nogil:
    cdef int i
    for i in range(width):
        if (a[i] & mask[i]) != net[i]:
            return False
    return True


cdef inline bint _in_peer_set(const unsigned char *blob, size_t bloblen, size_t sets_off,
                             uint32_t off, int64_t peer_id) noexcept nogil:
    """Whether ``peer_id`` is in the peer set at ``off`` of the peer-set area
    (u32 count, then the ids ascending): a binary search.  A set that does
    not fit in the blob holds nobody (Tables refuses such a blob anyway)."""
    cdef size_t at = sets_off + off
    cdef uint32_t count, lo, hi, mid, v
    if peer_id < 0 or peer_id > <int64_t>0xFFFFFFFFLL or off & 3 or at + 4 > bloblen or at < sets_off:
        return False
    count = _le32(blob + at)
    if count > (bloblen - at - 4) // 4:
        return False
    lo, hi = 0, count
    while lo < hi:
        mid = lo + (hi - lo) // 2
        v = _le32(blob + at + 4 + 4 * <size_t>mid)
        if v == <uint32_t>peer_id:
            return True
        if v < <uint32_t>peer_id:
            lo = mid + 1
        else:
            hi = mid
    return False


cdef int _fw_decide(const unsigned char *blob, size_t bloblen, int direction,
                    const unsigned char *p, size_t n, int64_t peer_id,
                    int *rule, int *reason) noexcept nogil:
    """One packet (TUN mode) against the compiled tables, exactly as
    firewall.classify decides it for a stateless table and a packet that is
    not a fragment; FW_DEFER for the rest (the caller asks Python)."""
    cdef uint32_t nrules, i
    cdef size_t sets_off
    cdef int fam, width, it
    cdef size_t ihl, tlen, l4, end, hl
    cdef unsigned int proto, nh, frag, fo
    cdef bint fragment = False, done
    cdef long sport = -1, dport = -1
    cdef const unsigned char *src
    cdef const unsigned char *dst
    cdef const unsigned char *remote
    cdef const unsigned char *local
    cdef const unsigned char *r
    cdef uint16_t f
    rule[0] = -1
    if bloblen < FW_RULES_OFF:
        return FW_DEFER
    nrules = _le32(blob + 8)
    if blob[12] & 1 or bloblen < FW_RULES_OFF + nrules * FW_RULE_SIZE:
        return FW_DEFER                     # stateful: conntrack lives in Python
    sets_off = FW_RULES_OFF + <size_t>nrules * FW_RULE_SIZE
    # 1. parse (firewall "Parsing" rules)
    if n >= 20 and p[0] >> 4 == 4:
        ihl = (p[0] & 15) << 2
        tlen = _get16(p + 2)
        if ihl < 20 or tlen < ihl or tlen > n:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        fam, width, proto, l4, end = 0, 4, p[9], ihl, tlen
        frag = _get16(p + 6)
        fragment = (frag & 0x1FFF) != 0 or (frag & 0x2000) != 0
        src, dst = p + 12, p + 16
    elif n >= 40 and p[0] >> 4 == 6:
        end = 40 + _get16(p + 4)
        if end > n:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        fam, width, l4, nh = 1, 16, 40, p[6]
        src, dst = p + 8, p + 24
        done = False
        for it in range(8):
            if nh == 0 or nh == 43 or nh == 60:
                if l4 + 8 > end:
                    reason[0] = FW_R_MALFORMED
                    return FW_DROP
                hl = (<size_t>p[l4 + 1] + 1) << 3
                nh = p[l4]
                l4 += hl
                if l4 > end:
                    reason[0] = FW_R_MALFORMED
                    return FW_DROP
            elif nh == 44:
                if l4 + 8 > end:
                    reason[0] = FW_R_MALFORMED
                    return FW_DROP
                fo = _get16(p + l4 + 2)
                nh = p[l4]
                l4 += 8
                fragment = fragment or (fo >> 3) != 0 or (fo & 1) != 0
                if fo >> 3:
                    done = True
                    break
            else:
                done = True
                break
        if not done:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        proto = nh
    else:
        reason[0] = FW_R_MALFORMED
        return FW_DROP
    if fragment:
        return FW_DEFER                     # fragment cache lives in Python
    # 3. protocol policy
    if not blob[FW_PROTOCOLS_OFF + proto]:
        reason[0] = FW_R_PROTOCOL
        return FW_DROP
    # 1b. transport header of a first/only fragment
    if proto == 6:
        if end - l4 < 20:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        sport, dport = _get16(p + l4), _get16(p + l4 + 2)
    elif proto == 17:
        if end - l4 < 8:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
        sport, dport = _get16(p + l4), _get16(p + l4 + 2)
    elif proto == 1 or proto == 58:
        if end - l4 < 8:
            reason[0] = FW_R_MALFORMED
            return FW_DROP
    if direction:
        remote, local = dst, src
    else:
        remote, local = src, dst
    # 6. rules of this direction, first match wins
    for i in range(nrules):
        r = blob + FW_RULES_OFF + i * FW_RULE_SIZE
        if r[0] != direction:
            continue
        f = _le16(r + 4)
        if fam == 0 and f & (FW_F_REMOTE6 | FW_F_LOCAL6):
            continue
        if fam == 1 and f & (FW_F_REMOTE4 | FW_F_LOCAL4):
            continue
        if f & FW_F_PROTO and r[2] != proto:
            continue
        if f & FW_F_PORTS:
            if proto != 6 and proto != 17:
                continue
            if not (_le16(r + 8) <= sport <= _le16(r + 10) and _le16(r + 12) <= dport <= _le16(r + 14)):
                continue
        if f & FW_F_PEER and <int64_t>_le32(r + 16) != peer_id:
            continue
        if f & FW_F_PEERSET and not _in_peer_set(blob, bloblen, sets_off, _le32(r + 16), peer_id):
            continue
        if f & (FW_F_REMOTE4 | FW_F_REMOTE6) and not _masked_eq(remote, r + 24, r + 40, width):
            continue
        if f & (FW_F_LOCAL4 | FW_F_LOCAL6) and not _masked_eq(local, r + 56, r + 72, width):
            continue
        rule[0] = <int>_le32(r + 20)
        reason[0] = FW_R_RULE
        return r[1]
    # 7. the direction's default
    reason[0] = FW_R_DEFAULT
    return blob[13 + direction]


cdef int _fw_classify(fp_engine *e, fp_pkt *pkts, int n, int direction, size_t offset) noexcept with gil:
    """Classify every V_PASS packet; a refused packet gets D_FIREWALL.  Called
    by a worker without the engine lock; holds the GIL for the batch (the
    firewall's counters and its Python parts are shared with the loop thread).

    ``e.fw`` is FastDataPath's hook: ``hook.state()`` gives the active compiled
    tables and counter arrays (the C classifier decides and counts; fragments
    and stateful tables go to ``hook.classify_one``), or None for a firewall
    object without compiled tables (``hook.classify_batch`` decides).
    Anything raising refuses the batch (fails closed).  Returns the number
    refused."""
    cdef int i, refused = 0, action, rule, reason
    cdef list items
    cdef list idx
    cdef object verdicts, hook, state, data
    cdef fp_pkt *pkt
    cdef const unsigned char[::1] blob
    cdef unsigned long long[::1] hits
    cdef unsigned long long[::1] drops
    cdef unsigned long long[::1] accepts
    if e.fw == NULL:                 # removed meanwhile (set under the GIL)
        return 0
    hook = <object>e.fw
    try:
        state = hook.state()
        if state is None:
            items = []
            idx = []
            for i in range(n):
                pkt = &pkts[i]
                if pkt.verdict != V_PASS:
                    continue
                items.append((PyBytes_FromStringAndSize(<char *>pkt.buf + FP_PAYLOAD_OFFSET,
                                                        pkt.len - offset), pkt.peer_id))
                idx.append(i)
            if items:
                verdicts = hook.classify_batch(direction, items)
                if len(verdicts) != len(items):
                    raise ValueError("firewall returned %d verdicts for %d packets"
                                     % (len(verdicts), len(items)))
                for i in range(len(items)):
                    if not verdicts[i]:
                        pkts[<int>idx[i]].verdict = D_FIREWALL
                        refused += 1
            return refused
        blob, hits, drops, accepts, applies = state
        for i in range(n):
            pkt = &pkts[i]
            if pkt.verdict != V_PASS:
                continue
            if not applies:              # test mode: the firewall does not apply
                accepts[FW_R_DEFAULT] += 1
                continue
            rule = -1
            action = _fw_decide(&blob[0], blob.shape[0], direction,
                                pkt.buf + FP_PAYLOAD_OFFSET, pkt.len - offset,
                                pkt.peer_id, &rule, &reason)
            if action == FW_DEFER:
                data = PyBytes_FromStringAndSize(<char *>pkt.buf + FP_PAYLOAD_OFFSET, pkt.len - offset)
                if not hook.classify_one(direction, data, pkt.peer_id):
                    pkt.verdict = D_FIREWALL
                    refused += 1
                continue
            if rule >= 0:
                hits[rule] += 1
            if action == FW_ACCEPT:
                accepts[reason] += 1
                continue
            drops[reason] += 1
            pkt.verdict = D_FIREWALL
            refused += 1
            if action == FW_REJECT:
                hook.reject(PyBytes_FromStringAndSize(<char *>pkt.buf + FP_PAYLOAD_OFFSET,
                                                      pkt.len - offset), direction, pkt.peer_id)
    except BaseException as exc:
        import logging
        logging.getLogger("phantom.fast").error("firewall classification failed: %r", exc)
        for i in range(n):
            if pkts[i].verdict == V_PASS:
                pkts[i].verdict = D_FIREWALL
                refused += 1
    return refused
