# replay.pxi: the replay window, RFC 6479 style (the contract is dataplane/replay.py).
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# --- replay window (RFC 6479 style; the contract is dataplane/replay.py) -------------
cdef inline bint _replay_check(const fp_replay *w, uint64_t c) noexcept nogil:
    if c >= REPLAY_LIMIT:
        return False
    if c > w.last:
        return True
    if w.last - c >= FP_REPLAY_WINDOW:
        return False
    return not ((w.ring[(c >> 6) & (FP_REPLAY_BLOCKS - 1)] >> (c & 63)) & 1)


cdef bint _replay_update(fp_replay *w, uint64_t c) noexcept nogil:
    cdef uint64_t block, cur, bit, word
    cdef uint32_t index
    if c >= REPLAY_LIMIT:
        return False
    block = c >> 6
    if c > w.last:
        cur = w.last >> 6
        if block - cur >= FP_REPLAY_BLOCKS:
            memset(w.ring, 0, sizeof(w.ring))
        else:
            while cur < block:
                cur += 1
                w.ring[cur & (FP_REPLAY_BLOCKS - 1)] = 0
        w.last = c
    elif w.last - c >= FP_REPLAY_WINDOW:
        return False
    index = block & (FP_REPLAY_BLOCKS - 1)
    bit = (<uint64_t>1) << (c & 63)
    word = w.ring[index]
    if word & bit:
        return False
    w.ring[index] = word | bit
    return True
