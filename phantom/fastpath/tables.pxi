# tables.pxi: the tables the workers share, driven by the control plane: the
# engine lock, the peer-id hash and the C engine class.
#
# Part of phantom/fastpath/_engine.pyx (included there; see docs/fastpath.md).


cdef inline void _lock(fp_engine *e) noexcept nogil:
    pthread_mutex_lock(&e.lock)


cdef inline void _unlock(fp_engine *e) noexcept nogil:
    pthread_mutex_unlock(&e.lock)


# --- the peer-id hash (lock held) ------------------------------------------------------
# Chains of peer slots, linked through the peers (slot + 1; 0 ends a chain):
# e.by_id by peer_id (every live peer); relay.pxi keeps e.by_relay the same
# way.  The relay's forwarding and a relayed client's unwrapping look peers
# up there, never by a scan of the peer table.
cdef inline uint32_t _hash64(uint64_t k) noexcept nogil:
    k *= 0x9E3779B97F4A7C15ULL
    return <uint32_t>(k >> 40) & (FP_PEER_BUCKETS - 1)


cdef inline uint32_t _id_bucket(int64_t peer_id) noexcept nogil:
    return _hash64(<uint64_t>peer_id)


cdef void _id_link(fp_engine *e, int slot) noexcept nogil:
    cdef fp_peer *p = e.peers[slot]
    cdef uint32_t b = _id_bucket(p.peer_id)
    p.id_next = e.by_id[b]
    e.by_id[b] = slot + 1


cdef void _id_unlink(fp_engine *e, int slot) noexcept nogil:
    cdef fp_peer *p = e.peers[slot]
    cdef int *pp = &e.by_id[_id_bucket(p.peer_id)]
    while pp[0] != 0:
        if pp[0] == slot + 1:
            pp[0] = p.id_next
            p.id_next = 0
            return
        pp = &e.peers[pp[0] - 1].id_next


cdef fp_peer *_peer_by_id(fp_engine *e, int64_t peer_id) noexcept nogil:
    """The live peer ``peer_id`` (ids are unique among live peers), or NULL."""
    cdef int s = e.by_id[_id_bucket(peer_id)]
    cdef fp_peer *p
    while s != 0:
        p = e.peers[s - 1]
        if p.peer_id == peer_id:
            return p
        s = p.id_next
    return NULL


cdef class Forwarder:
    """The tables the workers forward packets by: peers, key slots, routes,
    counters and the event queue, in C (not the control plane's Engine).

    Every method is called from the control-plane thread; the tables are
    shared with the worker threads under one mutex.
    """

    def __cinit__(self, int mode, int udp_fd, int staged_max=128, int burst=64,
                  size_t max_inner=FP_MAX_INNER,
                  double reject_after_time=180.0,
                  uint64_t reject_after_messages=_constants.REJECT_AFTER_MESSAGES,
                  uint64_t rekey_after_messages=_constants.REKEY_AFTER_MESSAGES):
        cdef int i
        self.e = <fp_engine *>calloc(1, sizeof(fp_engine))
        if self.e == NULL:
            raise MemoryError()
        self.slots = {}
        pthread_mutex_init(&self.e.lock, NULL)
        self.e.mode = mode
        self.e.udp_fd = udp_fd
        self.e.staged_max = staged_max
        self.e.burst = burst
        self.e.max_inner = max_inner
        self.e.reject_after_time = reject_after_time
        self.e.reject_after_messages = reject_after_messages
        self.e.rekey_after_messages = rekey_after_messages
        self.e.test_peer = -1
        self.e.next_serial = 1
        self.e.trie4 = _trie_new()
        self.e.trie6 = _trie_new()
        self.e.macs = <fp_mac *>malloc(FP_MACS * sizeof(fp_mac))
        if self.e.macs == NULL:
            raise MemoryError()
        for i in range(FP_MACS):
            self.e.macs[i].slot = -1
        self.e.event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.e.event_fd < 0 or self.e.trie4 == NULL or self.e.trie6 == NULL:
            raise OSError("cannot create the event fd")

    def __dealloc__(self):
        cdef int i
        cdef fp_engine *e = self.e
        if e == NULL:
            return
        for i in range(e.peers_cap):
            if e.peers[i] != NULL:
                self._free_peer(i)
        free(e.peers)
        _pairs_forget_all(e)
        _trie_free(e.trie4)
        _trie_free(e.trie6)
        free(e.macs)
        while e.ev_count:
            free(e.events[e.ev_head].data)
            e.ev_head = (e.ev_head + 1) & (FP_EVENT_QUEUE - 1)
            e.ev_count -= 1
        if e.event_fd >= 0:
            close(e.event_fd)
        pthread_mutex_destroy(&e.lock)
        _wipe(e, sizeof(fp_engine))
        free(e)
        self.e = NULL

    cdef int _slot(self, int64_t peer_id) except -1:
        try:
            return self.slots[peer_id]
        except KeyError:
            raise KeyError("unknown peer %r" % peer_id) from None

    cdef void _free_peer(self, int slot) noexcept:
        cdef fp_engine *e = self.e
        cdef fp_peer *p = e.peers[slot]
        _id_unlink(e, slot)
        if p.relay_known:
            _relay_unlink(e, slot)
        _kp_destroy(e, p.current)
        _kp_destroy(e, p.previous)
        _kp_destroy(e, p.next)
        _staged_clear(e, p)
        free(p.staged)
        free(p)
        e.peers[slot] = NULL
        if e.test_peer == slot:
            e.test_peer = -1

    @property
    def event_fd(self):
        return self.e.event_fd

    @property
    def mode(self):
        return self.e.mode

    # peers ------------------------------------------------------------------------------
    def add_peer(self, int64_t peer_id):
        cdef fp_peer *p
        cdef fp_peer **grown
        cdef int slot
        cdef fp_engine *e = self.e
        if peer_id in self.slots:
            raise ValueError("peer %r already added" % peer_id)
        p = <fp_peer *>calloc(1, sizeof(fp_peer))
        if p == NULL:
            raise MemoryError()
        # p.staged stays NULL until the peer first stages a packet (_stage):
        # most peers of a hub never wait for a handshake with traffic queued,
        # and the ring is staged_max * 16 bytes (2 KB by default) per peer
        p.peer_id = peer_id
        with nogil:
            _lock(e)
            # Slots are never reused, so a stale route or packet record can
            # never point at a different peer.
            slot = e.peers_cap
            grown = e.peers
            if slot >= e.peers_alloc:
                # geometric growth: adding N peers copies O(N) pointers in all
                grown = <fp_peer **>realloc(e.peers, (2 * slot + 16) * sizeof(fp_peer *))
                if grown != NULL:
                    e.peers = grown
                    e.peers_alloc = 2 * slot + 16
            if grown != NULL:
                e.peers_cap = slot + 1
                p.serial = e.next_serial
                e.next_serial += 1
                e.peers[slot] = p
                _id_link(e, slot)
            _unlock(e)
        if grown == NULL:
            free(p.staged)
            free(p)
            raise MemoryError()
        self.slots[peer_id] = slot

    def remove_peer(self, int64_t peer_id):
        cdef int slot = self._slot(peer_id)
        del self.slots[peer_id]
        with nogil:
            _lock(self.e)
            _pairs_forget(self.e, peer_id)
        self._free_peer(slot)
        _mac_forget(self.e, slot)
        with nogil:
            _unlock(self.e)

    def set_routes(self, routes):
        """Replace every allowed-IPs route at once.  ``routes`` is a sequence of
        (bits, address bytes, prefix length, peer_id), bits 32 or 128, applied
        in order (a later duplicate prefix wins)."""
        cdef fp_trie *t4 = _trie_new()
        cdef fp_trie *t6 = _trie_new()
        cdef fp_trie *old4
        cdef fp_trie *old6
        cdef const unsigned char[::1] a
        cdef int bits, plen, slot
        cdef fp_engine *e = self.e
        try:
            if t4 == NULL or t6 == NULL:
                raise MemoryError()
            for bits, addr, plen, peer_id in routes:
                a = addr
                slot = self._slot(peer_id)
                if bits not in (32, 128) or a.shape[0] * 8 != bits or not 0 <= plen <= bits:
                    raise ValueError("bad route %r" % ((bits, addr, plen, peer_id),))
                if _trie_insert(t4 if bits == 32 else t6, &a[0], plen, slot) < 0:
                    raise MemoryError()
        except BaseException:
            _trie_free(t4)
            _trie_free(t6)
            raise
        with nogil:
            _lock(e)
            old4, old6 = e.trie4, e.trie6
            e.trie4, e.trie6 = t4, t6
            _unlock(e)
            _trie_free(old4)
            _trie_free(old6)

    def set_route(self, int bits, addr, int plen, peer_id):
        """Route one prefix to ``peer_id``, or remove it (``peer_id`` None):
        :meth:`change_routes` with one change, O(prefix length) whatever the
        number of routes.  Returns False when removing an absent prefix."""
        removed = self.change_routes([(bits, addr, plen, peer_id)])
        return peer_id is not None or removed == 1

    def change_routes(self, routes):
        """Apply route changes as one step for the workers.  Each of
        ``routes`` is (bits, address bytes, prefix length, peer_id): the prefix
        is routed to that peer, or removed when peer_id is None; a later change
        of the same prefix wins.  A worker routes every packet by the table
        before the change or by the table after it, never by a mix: the nodes
        the new prefixes need are made first (with no owner, so no lookup
        changes), then every owner is set and every removal done, all in one
        hold of the engine lock.  Out of memory: nothing changes (MemoryError).
        Costs the changed prefixes' lengths, not the size of the table.
        Returns how many of the removed prefixes were there."""
        cdef Py_ssize_t n, i, made = 0
        cdef unsigned char *addrs = NULL
        cdef int *meta = NULL            # per change: bits, prefix length, slot (-1: remove)
        cdef fp_trie **nodes = NULL
        cdef fp_trie *root
        cdef int removed = 0
        cdef bint ok = True
        cdef const unsigned char[::1] a
        cdef fp_engine *e = self.e
        last = {}
        for bits, addr, plen, peer_id in routes:
            a = addr
            if bits not in (32, 128) or a.shape[0] * 8 != bits or not 0 <= plen <= bits:
                raise ValueError("bad route %r" % ((bits, addr, plen, peer_id),))
            last[(bits, bytes(addr), plen)] = -1 if peer_id is None else self._slot(peer_id)
        n = len(last)
        if n == 0:
            return 0
        addrs = <unsigned char *>malloc(n * 16)
        meta = <int *>malloc(n * 3 * sizeof(int))
        nodes = <fp_trie **>calloc(n, sizeof(fp_trie *))
        if addrs == NULL or meta == NULL or nodes == NULL:
            free(addrs)
            free(meta)
            free(nodes)
            raise MemoryError()
        i = 0
        for (bits, addr, plen), slot in last.items():
            memcpy(addrs + 16 * i, <const char *>addr, bits // 8)
            meta[3 * i] = bits
            meta[3 * i + 1] = plen
            meta[3 * i + 2] = slot
            i += 1
        with nogil:
            _lock(e)
            for i in range(n):
                if meta[3 * i + 2] >= 0:
                    root = e.trie4 if meta[3 * i] == 32 else e.trie6
                    nodes[i] = _trie_node(root, addrs + 16 * i, meta[3 * i + 1])
                made = i + 1                   # (a failed one may have made part of its path)
                if meta[3 * i + 2] >= 0 and nodes[i] == NULL:
                    ok = False
                    break
            if ok:
                for i in range(n):
                    if meta[3 * i + 2] >= 0:
                        nodes[i].slot = meta[3 * i + 2]
                for i in range(n):
                    if meta[3 * i + 2] < 0:
                        root = e.trie4 if meta[3 * i] == 32 else e.trie6
                        removed += _trie_remove(root, addrs + 16 * i, meta[3 * i + 1])
            else:
                for i in range(made):          # undo: the empty nodes made above
                    if meta[3 * i + 2] >= 0:
                        root = e.trie4 if meta[3 * i] == 32 else e.trie6
                        _trie_prune(root, addrs + 16 * i, meta[3 * i + 1])
            _unlock(e)
        free(addrs)
        free(meta)
        free(nodes)
        if not ok:
            raise MemoryError()
        return removed

    def lookup(self, const unsigned char[::1] addr):
        """The peer_id owning ``addr`` (4 or 16 bytes) by longest prefix, or None."""
        cdef int slot, bits = addr.shape[0] * 8
        if bits not in (32, 128):
            raise ValueError("address must be 4 or 16 bytes")
        with nogil:
            _lock(self.e)
            slot = _route(self.e, &addr[0], bits)
            _unlock(self.e)
        if slot < 0:
            return None
        return self.e.peers[slot].peer_id

    def set_endpoint(self, int64_t peer_id, sockaddr_bytes):
        """Set (raw ``struct sockaddr`` bytes) or clear (None) a peer's endpoint."""
        cdef int slot = self._slot(peer_id)
        cdef const unsigned char[::1] a
        cdef fp_peer *p
        cdef Py_ssize_t n = 0
        if sockaddr_bytes is not None:
            a = sockaddr_bytes
            n = a.shape[0]
            if n < 2 or n > <Py_ssize_t>sizeof(sockaddr_storage):
                raise ValueError("bad sockaddr")
        with nogil:
            _lock(self.e)
            p = self.e.peers[slot]
            if n:
                memcpy(&p.endpoint, &a[0], n)
            p.endpoint_len = n
            _unlock(self.e)

    def endpoint(self, int64_t peer_id):
        cdef int slot = self._slot(peer_id)
        cdef sockaddr_storage ss
        cdef socklen_t n
        with nogil:
            _lock(self.e)
            n = self.e.peers[slot].endpoint_len
            memcpy(&ss, &self.e.peers[slot].endpoint, n)
            _unlock(self.e)
        if n == 0:
            return None
        return PyBytes_FromStringAndSize(<char *>&ss, n)

    def set_test_peer(self, peer_id):
        cdef int slot = -1
        if peer_id is not None:
            slot = self._slot(peer_id)
        with nogil:
            _lock(self.e)
            self.e.test_peer = slot
            _unlock(self.e)

    def set_test_target(self, sockaddr_bytes, bint default=False):
        """Test mode: where decrypted datagrams are sent from the test port:
        the target if set, else the last local sender, else the default."""
        cdef const unsigned char[::1] a
        cdef Py_ssize_t n = 0
        if sockaddr_bytes is not None:
            a = sockaddr_bytes
            n = a.shape[0]
            if n < 2 or n > <Py_ssize_t>sizeof(sockaddr_storage):
                raise ValueError("bad sockaddr")
        with nogil:
            _lock(self.e)
            if default:
                if n:
                    memcpy(&self.e.test_default, &a[0], n)
                self.e.test_default_len = n
            else:
                if n:
                    memcpy(&self.e.test_target, &a[0], n)
                self.e.test_target_len = n
            _unlock(self.e)

    def set_icmp(self, bint v4, bint v6):
        """Whether unroutable IPv4 / IPv6 packets produce ICMP_UNREACHABLE events
        (TUN mode; the control thread answers them)."""
        self.e.icmp4 = v4
        self.e.icmp6 = v6

    def count_drop(self, int reason, peer_id=None):
        """Count a drop decided outside the worker (e.g. a failed control send)."""
        cdef fp_pkt pkt
        if not 0 <= reason < FP_N_DROPS:
            raise ValueError("bad drop reason")
        memset(&pkt, 0, sizeof(fp_pkt))
        pkt.verdict = reason
        pkt.peer_slot = -1
        if peer_id is not None and peer_id in self.slots:
            pkt.peer_slot = self.slots[peer_id]
            pkt.peer_serial = self.e.peers[pkt.peer_slot].serial
        with nogil:
            _lock(self.e)
            _count_drop(self.e, &pkt)
            _unlock(self.e)

    # keys ----------------------------------------------------------------------------------
    def install_keypair(self, int64_t peer_id, uint32_t local_index, uint32_t remote_index,
                        const unsigned char[::1] send_key, const unsigned char[::1] recv_key,
                        double created, bint confirmed, int cipher=CIPHER_SECRETBOX,
                        data_send_key=None, data_recv_key=None):
        """Install a keypair as current (confirmed) or next, then flush the
        peer's staged packets if it has a usable current keypair.  ``cipher``
        (dataplane/ciphers.CipherKind) is what its packets are sealed with;
        ``data_send_key``/``data_recv_key`` the keys its transport data uses
        when they are not the session keys (ciphers.transport_keys: aegis256)."""
        if cipher != CIPHER_SECRETBOX and cipher != CIPHER_CHACHA and cipher != CIPHER_AEGIS:
            raise ValueError("unknown cipher %d" % cipher)
        if cipher == CIPHER_AEGIS and (data_send_key is None or data_recv_key is None):
            raise ValueError("an aegis256 keypair needs its derived transport keys")
        cdef const unsigned char[::1] dsend = send_key if data_send_key is None else data_send_key
        cdef const unsigned char[::1] drecv = recv_key if data_recv_key is None else data_recv_key
        cdef int slot = self._slot(peer_id)
        cdef fp_engine *e = self.e
        cdef fp_keypair *kp
        cdef fp_peer *p
        cdef fp_keypair *old
        _check_key(send_key)
        _check_key(recv_key)
        _check_key(dsend)
        _check_key(drecv)
        kp = <fp_keypair *>calloc(1, sizeof(fp_keypair))
        if kp == NULL:
            raise MemoryError()
        kp.local_index = local_index
        kp.remote_index = remote_index
        kp.peer_slot = slot
        kp.created = created
        kp.cipher = cipher
        memcpy(kp.send_key, &send_key[0], FP_KEY_SIZE)
        memcpy(kp.recv_key, &recv_key[0], FP_KEY_SIZE)
        memcpy(kp.data_send_key, &dsend[0], FP_KEY_SIZE)
        memcpy(kp.data_recv_key, &drecv[0], FP_KEY_SIZE)
        with nogil:
            _lock(e)
            old = _kp_find(e, local_index)
            if old != NULL:                   # the same index again: replace it
                _kp_detach(e, old)
                _kp_destroy(e, old)
            kp.serial = e.next_serial
            e.next_serial += 1
            kp.hnext = e.index[local_index & (FP_INDEX_BUCKETS - 1)]
            e.index[local_index & (FP_INDEX_BUCKETS - 1)] = kp
            p = e.peers[slot]
            if confirmed:
                _kp_destroy(e, p.next)
                p.next = NULL
                _kp_destroy(e, p.previous)
                p.previous = p.current
                p.current = kp
                p.handshake_asked = False
            else:
                _kp_destroy(e, p.next)
                p.next = kp
            _unlock(e)
        if confirmed:
            with nogil:
                _flush_staged(e, slot)

    def flush_staged(self, int64_t peer_id):
        """Send a peer's staged packets now if it has a usable current keypair."""
        cdef int slot = self._slot(peer_id)
        cdef int n
        with nogil:
            n = _flush_staged(self.e, slot)
        return n

    def retire_keypair(self, uint32_t local_index):
        """Remove a keypair from whichever slot holds it and zero its keys."""
        cdef fp_engine *e = self.e
        cdef fp_keypair *kp
        cdef fp_peer *p
        cdef bint found
        with nogil:
            _lock(e)
            kp = _kp_find(e, local_index)
            found = kp != NULL
            if found:
                _kp_detach(e, kp)
                _kp_destroy(e, kp)
            _unlock(e)
        return found

    def clear_keys(self, int64_t peer_id):
        """Retire every keypair of a peer and drop its staged packets."""
        cdef int slot = self._slot(peer_id)
        cdef fp_engine *e = self.e
        cdef fp_peer *p
        with nogil:
            _lock(e)
            p = e.peers[slot]
            _kp_destroy(e, p.current)
            _kp_destroy(e, p.previous)
            _kp_destroy(e, p.next)
            p.current = p.previous = p.next = NULL
            p.handshake_asked = False
            _staged_clear(e, p)
            _unlock(e)

    def key_slots(self, int64_t peer_id):
        """(current, previous, next) local indices, None for an empty slot."""
        cdef int slot = self._slot(peer_id)
        cdef fp_peer *p
        cdef list out = []
        with nogil:
            _lock(self.e)
        p = self.e.peers[slot]
        for kp in (<uintptr_t>p.current, <uintptr_t>p.previous, <uintptr_t>p.next):
            out.append(None if kp == 0 else (<fp_keypair *><uintptr_t>kp).local_index)
        with nogil:
            _unlock(self.e)
        return tuple(out)

    def send_packet(self, int64_t peer_id, const unsigned char[::1] data):
        """Send one inner packet to a peer through the tunnel, as if read from
        the device after routing and the firewall (stages it without a key).
        The verdict: -1 sent, -2 staged, else a Drop."""
        cdef int slot = self._slot(peer_id)
        cdef Py_ssize_t n = data.shape[0]
        cdef unsigned char *buf
        cdef int verdict
        if n > FP_MAX_INNER:
            raise ValueError("packet too large")
        buf = <unsigned char *>malloc(FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM + FP_WRAP_ROOM)
        if buf == NULL:
            raise MemoryError()
        if n:
            memcpy(buf + FP_PAYLOAD_OFFSET, &data[0], n)
        with nogil:
            verdict = _send_single(self.e, slot, buf, n, True)
            _wipe(buf, FP_PAYLOAD_OFFSET + n + FP_TAIL_ROOM)
            free(buf)
        return verdict

    def send_keepalive(self, int64_t peer_id):
        """Send an empty transport packet on the current keypair.  Returns False
        (and queues handshake_needed) when there is no usable keypair."""
        cdef int slot = self._slot(peer_id)
        cdef unsigned char buf[116]          # FP_PAYLOAD_OFFSET + FP_TAIL_ROOM (a WireGuard tag) + FP_WRAP_ROOM
        cdef int verdict
        with nogil:
            verdict = _send_single(self.e, slot, buf, 0, False)
        return verdict == V_PASS

    # observability -----------------------------------------------------------------------
    def counters(self, int64_t peer_id):
        """A snapshot of a peer's counters as a dict (see types.PeerCounters)."""
        cdef int slot = self._slot(peer_id)
        cdef fp_peer snap
        cdef uint64_t send_counter = 0
        with nogil:
            _lock(self.e)
            memcpy(&snap, self.e.peers[slot], sizeof(fp_peer))
            if snap.current != NULL:
                send_counter = snap.current.send_counter
            _unlock(self.e)
        return {
            "rx_bytes": snap.rx_bytes, "tx_bytes": snap.tx_bytes,
            "rx_packets": snap.rx_packets, "tx_packets": snap.tx_packets,
            "last_rx": snap.last_rx, "last_tx": snap.last_tx,
            "last_data_rx": snap.last_data_rx, "last_data_tx": snap.last_data_tx,
            "send_counter": send_counter,
            "drops": [snap.drops[i] for i in range(FP_N_DROPS)],
            "staged": snap.staged_count,
        }

    def counters_many(self, peer_ids):
        """Snapshots of several peers' counters under *one* hold of the
        table lock (one GIL release), as a list of tuples in the order of
        ``peer_ids``: (rx_bytes, tx_bytes, rx_packets, tx_packets, last_rx,
        last_tx, last_data_rx, last_data_tx, send_counter, drops list).  The
        timer tick reads every active peer's counters each ``timer_tick``:
        one :meth:`counters` call a peer released and retook the GIL and the
        lock per peer, tens of ms per tick with 10,000 peers that handshook,
        and the event loop waited for the GIL between them."""
        cdef Py_ssize_t n = len(peer_ids)
        cdef Py_ssize_t i
        cdef int j
        if n == 0:
            return []
        cdef int *slots = <int *>malloc(n * sizeof(int))
        cdef fp_peer *snaps = <fp_peer *>malloc(n * sizeof(fp_peer))
        cdef uint64_t *sends = <uint64_t *>malloc(n * sizeof(uint64_t))
        if slots == NULL or snaps == NULL or sends == NULL:
            free(slots)
            free(snaps)
            free(sends)
            raise MemoryError()
        try:
            for i in range(n):
                slots[i] = self._slot(peer_ids[i])
            with nogil:
                _lock(self.e)
                for i in range(n):
                    memcpy(&snaps[i], self.e.peers[slots[i]], sizeof(fp_peer))
                    sends[i] = snaps[i].current.send_counter if snaps[i].current != NULL else 0
                _unlock(self.e)
            out = []
            for i in range(n):
                out.append((snaps[i].rx_bytes, snaps[i].tx_bytes, snaps[i].rx_packets, snaps[i].tx_packets,
                            snaps[i].last_rx, snaps[i].last_tx, snaps[i].last_data_rx, snaps[i].last_data_tx,
                            sends[i], [snaps[i].drops[j] for j in range(FP_N_DROPS)]))
            return out
        finally:
            free(slots)
            free(snaps)
            free(sends)

    def counters_changed(self, peer_ids):
        """:meth:`counters_many`, but only for the peers of ``peer_ids``
        whose counter times (last_rx, last_tx, last_data_rx, last_data_tx:
        what the timer rules read) changed since this method last reported
        them, or that it never reported: a list of (position in
        ``peer_ids``, tuple as counters_many's).  The comparison is in C
        under one hold of the lock; a tuple is made only for a changed
        peer, so a tick over 10,000 peers that handshook and went quiet
        costs a walk of the slots, not 10,000 snapshots.  Meant for one
        reader (the timer tick): a report is what that reader last saw."""
        cdef Py_ssize_t n = len(peer_ids)
        cdef Py_ssize_t i, m = 0
        cdef int j
        cdef fp_peer *p
        if n == 0:
            return []
        cdef int *slots = <int *>malloc(n * sizeof(int))
        cdef Py_ssize_t *pos = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
        cdef fp_peer *snaps = <fp_peer *>malloc(n * sizeof(fp_peer))
        cdef uint64_t *sends = <uint64_t *>malloc(n * sizeof(uint64_t))
        if slots == NULL or pos == NULL or snaps == NULL or sends == NULL:
            free(slots)
            free(pos)
            free(snaps)
            free(sends)
            raise MemoryError()
        try:
            for i in range(n):
                slots[i] = self._slot(peer_ids[i])
            with nogil:
                _lock(self.e)
                for i in range(n):
                    p = self.e.peers[slots[i]]
                    if p.seen_valid and p.seen[0] == p.last_rx and p.seen[1] == p.last_tx \
                            and p.seen[2] == p.last_data_rx and p.seen[3] == p.last_data_tx:
                        continue
                    p.seen[0] = p.last_rx
                    p.seen[1] = p.last_tx
                    p.seen[2] = p.last_data_rx
                    p.seen[3] = p.last_data_tx
                    p.seen_valid = True
                    memcpy(&snaps[m], p, sizeof(fp_peer))
                    sends[m] = p.current.send_counter if p.current != NULL else 0
                    pos[m] = i
                    m += 1
                _unlock(self.e)
            out = []
            for i in range(m):
                out.append((pos[i], (snaps[i].rx_bytes, snaps[i].tx_bytes, snaps[i].rx_packets,
                                     snaps[i].tx_packets, snaps[i].last_rx, snaps[i].last_tx,
                                     snaps[i].last_data_rx, snaps[i].last_data_tx, sends[i],
                                     [snaps[i].drops[j] for j in range(FP_N_DROPS)])))
            return out
        finally:
            free(slots)
            free(pos)
            free(snaps)
            free(sends)

    def set_relay(self, bint enabled, uint64_t bytes_per_second, uint64_t packets_per_second):
        """Relay role: forward relay frames between peers (in the worker, in C)."""
        with nogil:
            _lock(self.e)
            self.e.relay_enabled = enabled
            self.e.relay_bytes_budget = bytes_per_second
            self.e.relay_pkts_budget = packets_per_second
            _unlock(self.e)

    def set_relay_route(self, int64_t peer_id, int64_t relay_peer_id, uint32_t relay_id, bint use):
        """Frames from ``relay_peer_id`` tagged ``relay_id`` carry ``peer_id``'s
        messages; with ``use``, the peer's endpoint is that relay (sends wrap)."""
        cdef int slot = self._slot(peer_id)
        cdef int rslot = self._slot(relay_peer_id)
        with nogil:
            _lock(self.e)
            p = self.e.peers[slot]
            if p.relay_known:
                _relay_unlink(self.e, slot)
            p.relay_known = True
            p.relay_slot = rslot
            p.relay_id = relay_id
            _relay_link(self.e, slot)
            if use:
                p.relayed = True
                p.endpoint_len = 0
            _unlock(self.e)

    def set_relay_pair(self, int64_t src_id, uint32_t relay_id, int64_t dest_id):
        """On a relay: frames from peer ``src_id`` tagged ``relay_id`` go to
        peer ``dest_id``; ``dest_id`` < 0 removes the pair."""
        cdef fp_relay_pair *q
        cdef fp_relay_pair **pp
        cdef fp_relay_pair *fresh = NULL
        cdef fp_engine *e = self.e
        if dest_id >= 0:
            fresh = <fp_relay_pair *>calloc(1, sizeof(fp_relay_pair))
            if fresh == NULL:
                raise MemoryError()
        with nogil:
            _lock(e)
            pp = &e.by_pair[_pair_bucket(src_id, relay_id)]
            while pp[0] != NULL:
                q = pp[0]
                if q.src_id == src_id and q.relay_id == relay_id:
                    pp[0] = q.next
                    free(q)
                    e.relay_pairs -= 1
                    break
                pp = &q.next
            if fresh != NULL:
                fresh.src_id = src_id
                fresh.relay_id = relay_id
                fresh.dest_id = dest_id
                pp = &e.by_pair[_pair_bucket(src_id, relay_id)]
                fresh.next = pp[0]
                pp[0] = fresh
                e.relay_pairs += 1
            _unlock(e)

    def send_relayed(self, int64_t relay_peer_id, uint32_t relay_id, const unsigned char[::1] data):
        """Send ``data`` (a whole A<->B datagram: a handshake message, from
        the control plane) in a type-6 relay frame to the relay, whatever the
        hop's suite (the largest initiation stays within IPv6's minimum MTU).
        False when the relay has no usable session or endpoint."""
        cdef int rslot = self._slot(relay_peer_id)
        cdef Py_ssize_t n = data.shape[0]
        cdef unsigned char *buf
        cdef fp_peer *rp
        cdef fp_keypair *kp
        cdef unsigned char key[32]
        cdef uint64_t counter
        cdef uint32_t index
        cdef sockaddr_storage addr
        cdef socklen_t alen = 0
        cdef int rc = -1
        cdef double now = _now()
        if n > FP_MAX_INNER:
            raise ValueError("datagram too large")
        buf = <unsigned char *>malloc(FP_PAYLOAD_OFFSET + 4 + n + 1)
        if buf == NULL:
            raise MemoryError()
        memcpy(buf + FP_PAYLOAD_OFFSET, &relay_id, 4)
        if n:
            memcpy(buf + FP_PAYLOAD_OFFSET + 4, &data[0], n)
        with nogil:
            _lock(self.e)
            rp = self.e.peers[rslot]
            kp = rp.current
            if rp.endpoint_len and _kp_usable(self.e, kp, now):
                counter = kp.send_counter
                kp.send_counter += 1
                index = kp.remote_index
                memcpy(key, kp.send_key, FP_KEY_SIZE)
                memcpy(&addr, &rp.endpoint, rp.endpoint_len)
                alen = rp.endpoint_len
                rp.tx_packets += 1
                rp.last_tx = now
            _unlock(self.e)
            if alen:
                rc = _seal_packet(buf, 4 + n, index, counter, key)
                _wipe(key, FP_KEY_SIZE)
                if rc == 0:
                    buf[0] = MSG_RELAY          # the header is not sealed
                    rc = sendto(self.e.udp_fd, buf, FP_PAYLOAD_OFFSET + 4 + n, 0, <sockaddr *>&addr, alen)
            _wipe(buf, FP_PAYLOAD_OFFSET + 4 + n)
            free(buf)
        return rc >= 0

    def relay_stats(self):
        return {"forwarded": self.e.relay_forwarded, "budget": self.e.relay_budget_drops,
                "no_dest": self.e.relay_no_dest, "unknown_id": self.e.relay_unknown_id,
                "pairs": self.e.relay_pairs}

    def global_drops(self):
        cdef uint64_t d[FP_N_DROPS]
        with nogil:
            _lock(self.e)
            memcpy(d, self.e.drops, sizeof(d))
            _unlock(self.e)
        return [d[i] for i in range(FP_N_DROPS)]

    def stats(self):
        return {"event_overflow": self.e.ev_overflow}

    def drain_events(self):
        """Take every queued event: a list of (kind, peer_id, local_index, data,
        sockaddr bytes).  Clears the eventfd."""
        cdef fp_engine *e = self.e
        cdef fp_event *ev
        cdef list out = []
        cdef uint64_t junk
        cdef int slot
        read(e.event_fd, &junk, 8)
        with nogil:
            _lock(e)
        try:
            while e.ev_count:
                ev = &e.events[e.ev_head]
                out.append((ev.kind, ev.peer_id, ev.local_index,
                            PyBytes_FromStringAndSize(<char *>ev.data, ev.len) if ev.len else b"",
                            PyBytes_FromStringAndSize(<char *>&ev.addr, ev.addrlen) if ev.addrlen else None))
                if ev.kind == EV_ICMP_UNREACHABLE:
                    e.icmp_pending -= 1
                free(ev.data)
                ev.data = NULL
                e.ev_head = (e.ev_head + 1) & (FP_EVENT_QUEUE - 1)
                e.ev_count -= 1
        finally:
            _unlock(e)
        return out

    def set_firewall_callback(self, callback):
        """``callback(direction, [(packet bytes, peer_id), ...]) -> [bool, ...]``
        (direction 1 = out, 0 = in; True = accept), called by the workers with
        the GIL for each batch; None removes it."""
        self.fw_callback = callback
        self.e.fw = NULL if callback is None else <void *>callback

    def close(self):
        pass
