# trie.pxi: who is behind an address: the allowed-IPs tries (longest prefix
# match, one binary trie per family) and, in TAP mode, the learned MAC table.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


# --- allowed-IPs longest-prefix match: a binary trie per family ---------------------
cdef fp_trie *_trie_new() noexcept nogil:
    cdef fp_trie *t = <fp_trie *>calloc(1, sizeof(fp_trie))
    if t != NULL:
        t.slot = -1
    return t


cdef void _trie_free(fp_trie *t) noexcept nogil:
    if t == NULL:
        return
    _trie_free(t.child[0])
    _trie_free(t.child[1])
    free(t)


cdef fp_trie *_trie_node(fp_trie *root, const unsigned char *a, int plen) noexcept nogil:
    """The node of the prefix ``a/plen``, made (with slot -1, so that no lookup
    changes) where missing; NULL when out of memory."""
    cdef fp_trie *node = root
    cdef int i, bit
    for i in range(plen):
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        if node.child[bit] == NULL:
            node.child[bit] = _trie_new()
            if node.child[bit] == NULL:
                return NULL
        node = node.child[bit]
    return node


cdef void _trie_prune(fp_trie *root, const unsigned char *a, int plen) noexcept nogil:
    """Free, bottom up, the nodes on ``a/plen``'s path that lead to no prefix."""
    cdef fp_trie *path[129]
    cdef fp_trie *node = root
    cdef int i, bit, depth = 0
    path[0] = root
    for i in range(plen):
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        node = node.child[bit]
        if node == NULL:
            break
        depth = i + 1
        path[depth] = node
    i = depth
    while i > 0:
        node = path[i]
        if node.slot >= 0 or node.child[0] != NULL or node.child[1] != NULL:
            break
        bit = (a[(i - 1) >> 3] >> (7 - ((i - 1) & 7))) & 1
        path[i - 1].child[bit] = NULL
        free(node)
        i -= 1


cdef int _trie_insert(fp_trie *root, const unsigned char *a, int plen, int slot) noexcept nogil:
    cdef fp_trie *node = _trie_node(root, a, plen)
    if node == NULL:
        return -1
    node.slot = slot
    return 0


cdef int _trie_remove(fp_trie *root, const unsigned char *a, int plen) noexcept nogil:
    """Clear the exact prefix ``a/plen`` and free the nodes that no longer lead
    to any prefix.  Returns 1 if it was there, 0 if not."""
    cdef fp_trie *node = root
    cdef int i, bit
    for i in range(plen):
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        node = node.child[bit]
        if node == NULL:
            return 0
    if node.slot < 0:
        return 0
    node.slot = -1
    _trie_prune(root, a, plen)
    return 1


cdef inline int _trie_lookup(const fp_trie *root, const unsigned char *a, int bits) noexcept nogil:
    cdef const fp_trie *node = root
    cdef int best = -1, i = 0, bit
    while node != NULL:
        if node.slot >= 0:
            best = node.slot
        if i == bits:
            break
        bit = (a[i >> 3] >> (7 - (i & 7))) & 1
        node = node.child[bit]
        i += 1
    return best


cdef inline int _inner_addr(const unsigned char *p, size_t n, bint dst, const unsigned char **addr) noexcept nogil:
    """Family bits (32 or 128) of an IP packet and a pointer to its source or
    destination address; 0 when it is not a well-formed IPv4/IPv6 header."""
    if n < 1:
        return 0
    if p[0] >> 4 == 4 and n >= 20:
        addr[0] = p + (16 if dst else 12)
        return 32
    if p[0] >> 4 == 6 and n >= 40:
        addr[0] = p + (24 if dst else 8)
        return 128
    return 0


cdef inline int _route(fp_engine *e, const unsigned char *a, int bits) noexcept nogil:
    cdef int slot = _trie_lookup(e.trie4 if bits == 32 else e.trie6, a, bits)
    if slot >= 0 and e.peers[slot] == NULL:
        return -1
    return slot


# --- TAP: MAC learning --------------------------------------------------------------------
cdef inline uint32_t _mac_hash(const unsigned char *m) noexcept nogil:
    cdef uint32_t h = 2166136261u
    cdef int i
    for i in range(6):
        h = (h ^ m[i]) * 16777619u
    return h & (FP_MACS - 1)


cdef int _mac_lookup(fp_engine *e, const unsigned char *m) noexcept nogil:
    """The live peer slot that learned MAC ``m``, or -1."""
    cdef uint32_t h = _mac_hash(m)
    cdef int i
    cdef fp_mac *x
    if e.macs == NULL:
        return -1
    for i in range(FP_MACS):
        x = &e.macs[(h + i) & (FP_MACS - 1)]
        if x.slot < 0:
            return -1
        if memcmp(x.mac, m, 6) == 0:
            return x.slot if e.peers[x.slot] != NULL else -1
    return -1


cdef void _mac_learn(fp_engine *e, const unsigned char *m, int slot) noexcept nogil:
    """Remember that MAC ``m`` is behind peer ``slot`` (lock held).  When the
    table is 3/4 full new addresses are not learned (their frames flood)."""
    cdef uint32_t h = _mac_hash(m)
    cdef int i
    cdef fp_mac *x
    if e.macs == NULL:
        return
    for i in range(FP_MACS):
        x = &e.macs[(h + i) & (FP_MACS - 1)]
        if x.slot < 0:
            if e.nmacs >= FP_MACS * 3 // 4:
                return
            memcpy(x.mac, m, 6)
            x.slot = slot
            e.nmacs += 1
            return
        if memcmp(x.mac, m, 6) == 0:
            x.slot = slot
            return


cdef void _mac_forget(fp_engine *e, int slot) noexcept nogil:
    """Drop every MAC of a peer: rebuild the table without them (lock held)."""
    cdef fp_mac *old = e.macs
    cdef int i
    if old == NULL:
        return
    e.macs = <fp_mac *>malloc(FP_MACS * sizeof(fp_mac))
    if e.macs == NULL:
        e.macs = old
        return
    for i in range(FP_MACS):
        e.macs[i].slot = -1
    e.nmacs = 0
    for i in range(FP_MACS):
        if old[i].slot >= 0 and old[i].slot != slot:
            _mac_learn(e, old[i].mac, old[i].slot)
    free(old)


cdef bint _tap_source_ok(fp_engine *e, const unsigned char *f, size_t n, int slot) noexcept nogil:
    """The reference path's TAP source check: IPv4/IPv6 sources (and ARP
    sender addresses) must route to the peer; IPv6 link-local and unspecified
    sources and other EtherTypes pass (the firewall decides those)."""
    cdef size_t pos = 14
    cdef int tags = 0, bits
    cdef unsigned int et
    cdef const unsigned char *a = NULL
    cdef const unsigned char *arp
    cdef int i
    cdef bint zero
    if n < 14:
        return False
    et = _get16(f + 12)
    while et == 0x8100 or et == 0x88A8:
        tags += 1
        if tags > 2 or pos + 4 > n:
            return False
        et = _get16(f + pos + 2)
        pos += 4
    if et == 0x0800 or et == 0x86DD:
        bits = _inner_addr(f + pos, n - pos, False, &a)
        if bits == 0:
            return False
        if bits == 128:
            if a[0] == 0xFE and (a[1] & 0xC0) == 0x80:
                return True
            zero = True
            for i in range(16):
                if a[i]:
                    zero = False
            if zero:
                return True
        return _route(e, a, bits) == slot
    if et == 0x0806:
        arp = f + pos
        if not (n - pos >= 28 and arp[0] == 0 and arp[1] == 1 and arp[2] == 0x08 and arp[3] == 0
                and arp[4] == 6 and arp[5] == 4):
            return False
        a = arp + 14
        if not (a[0] or a[1] or a[2] or a[3]):
            return True
        return _route(e, a, 32) == slot
    return True
