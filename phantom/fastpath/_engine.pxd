# Declarations of the Cython data path (bodies in _engine.pyx and its parts).
#
# Everything a worker thread touches is a plain C struct, so the loop runs with
# the GIL released.  One mutex (fp_engine.lock) guards the tables (peers, key
# slots, index hash, allowed-IPs tries, counters, event queue); a worker takes
# it once per batch phase, never per packet, and never holds it across a
# system call or a libsodium call.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from phantom.fastpath.includes.system cimport (
    pthread_mutex_t, sockaddr_storage, socklen_t, mmsghdr, iovec, epoll_event,
    timespec, clock_gettime, CLOCK_MONOTONIC)
from phantom.fastpath.includes.sodium cimport secretbox_fn

cdef enum:
    FP_KEY_SIZE = 32
    FP_MAC_SIZE = 16
    FP_HEADER_SIZE = 16            # wire.TRANSPORT_HEADER_SIZE
    FP_PAYLOAD_OFFSET = 32         # wire.TRANSPORT_PAYLOAD_OFFSET
    FP_NONCE_SIZE = 24
    FP_AEAD_NONCE_SIZE = 12        # ChaCha20-Poly1305 IETF (WireGuard)
    FP_AEGIS_NONCE_SIZE = 32       # AEGIS-256 (wire.aegis256_nonce)
    FP_AEGIS_TAG = 32              # crypto_aead_aegis256_ABYTES
    FP_AEGIS_EXTRA = 16            # an AEGIS-256 datagram's overhead beyond secretbox's (48 - 32)
    FP_TAIL_ROOM = 32              # after a payload: WireGuard's padding (<16) and tag (16), or AEGIS-256's tag (32)
    FP_RX_HEADROOM = 16            # before a receive buffer: a WireGuard or AEGIS-256 payload lands at +16
    FP_MAX_INNER = 65535           # wire.MAX_INNER_SIZE
    FP_BUF_SIZE = 65631            # 65535 payload + 32 overhead + 64 slack (detects oversize)
    FP_INDEX_BUCKETS = 4096        # receiver-index hash (power of two)
    FP_PEER_BUCKETS = 4096         # peer-id, relay-id and relay-pair hashes (power of two)
    FP_EVENT_QUEUE = 4096          # pending events for the control plane
    FP_MACS = 4096                 # TAP MAC table size (power of two; learns up to 3/4)
    # replay window, RFC 6479 style (same constants as dataplane/replay.py)
    FP_REPLAY_BLOCKS = 128
    FP_REPLAY_WINDOW = 8128        # constants.REPLAY_WINDOW_SIZE
    # verdicts in fp_pkt.verdict besides a Drop reason (>= 0)
    V_PASS = -1                    # send (outbound) / deliver (inbound)
    V_STAGED = -2                  # kept for after the handshake
    V_CONSUMED = -3                # handled (control message, keepalive)
    V_RELAY = -4                   # inbound relay frame to forward (never to the device)
    V_REPROCESS = -5               # inbound relay frame unwrapped: its inner datagram goes round again
    V_HOLD = -6                    # parked while the batch's unwrapped frames go round again
    FP_WRAP_ROOM = 52              # a relay frame's extra bytes: relay_id u32 + header and tag (type 7's 32-byte tag)
    FP_WRAP_SECRETBOX = 36         # wire.RELAY_OVERHEAD (type 6)
    FP_WRAP_AEGIS = 52             # wire.RELAY_AEGIS_OVERHEAD (type 7)
    FP_RELAY_FAMILY = 0xFFFE       # a sockaddr that names a RelayVia (relay peer id, relay id)
    # event kinds
    EV_CONTROL_PACKET = 1
    EV_HANDSHAKE_NEEDED = 2
    EV_KEYPAIR_CONFIRMED = 3
    EV_ICMP_UNREACHABLE = 4        # data: the unroutable packet
    EV_SEND_FAILED = 5             # no data: count a SEND_FAILED for peer_id
    # transport ciphers of a keypair (dataplane/ciphers.CipherKind)
    CIPHER_SECRETBOX = 0           # Phantom: MAC at 16, payload at 32
    CIPHER_CHACHA = 1              # WireGuard: payload padded to 16 at 16, tag after it
    CIPHER_AEGIS = 2               # Phantom, suite aegis256: payload at 16, 32-byte tag after it
    # data path modes (types.Mode)
    MODE_TUN = 0
    MODE_TAP = 1
    MODE_TEST = 2

# Drop reasons (D_*, FP_N_DROPS) and message types (MSG_*): generated at build time from
# the Python enums (types.Drop, wire.MessageType) by generate.py; never written here.
include "_generated.pxi"


cdef struct fp_replay:
    uint64_t last
    uint64_t ring[128]             # FP_REPLAY_BLOCKS


cdef struct fp_keypair:
    uint64_t serial                # unique for the life of the engine
    uint32_t local_index
    uint32_t remote_index
    int peer_slot
    double created
    uint64_t send_counter
    bint rekey_requested           # handshake_needed raised at rekey_after_messages
    int cipher                     # CIPHER_SECRETBOX, CIPHER_CHACHA or CIPHER_AEGIS
    unsigned char send_key[32]     # the session keys: relay frames (secretbox) use these
    unsigned char recv_key[32]
    unsigned char data_send_key[32]   # transport data's keys (ciphers.transport_keys: derived
    unsigned char data_recv_key[32]   # for aegis256, else the session keys)
    fp_replay replay
    fp_keypair *hnext              # receiver-index hash chain


cdef struct fp_staged:
    unsigned char *buf             # FP_PAYLOAD_OFFSET headroom + payload
    size_t len                     # payload length


cdef struct fp_peer:
    uint64_t serial
    int64_t peer_id
    fp_keypair *current
    fp_keypair *previous
    fp_keypair *next
    sockaddr_storage endpoint
    socklen_t endpoint_len         # 0: no endpoint
    uint64_t rx_bytes
    uint64_t tx_bytes
    uint64_t rx_packets
    uint64_t tx_packets
    double last_rx
    double last_tx
    double last_data_rx
    double last_data_tx
    uint64_t drops[FP_N_DROPS]     # types.Drop
    double seen[4]                 # last_rx, last_tx, last_data_rx, last_data_tx as counters_changed last reported them
    bint seen_valid                # counters_changed has reported this peer (calloc: not yet)
    fp_staged *staged              # ring of staged_max entries
    int staged_head
    int staged_count
    bint handshake_asked           # handshake_needed raised since the last new key
    bint flush_pending             # staged packets wait for a flush (worker sets)
    bint relay_known               # frames from peer slot relay_slot tagged relay_id are this peer's
    bint relayed                   # and its endpoint is that relay (sends are wrapped)
    int relay_slot
    uint32_t relay_id
    int id_next                    # next in e.by_id's chain: slot + 1, 0 ends it
    int relay_next                 # next in e.by_relay's chain (while relay_known): slot + 1, 0 ends it
    int64_t relay_sec              # relay budget: the second it counts, bytes and packets in it
    uint64_t relay_bytes
    uint64_t relay_pkts


cdef struct fp_relay_pair:
    # on a relay: frames from peer src_id tagged relay_id go to peer dest_id
    int64_t src_id
    int64_t dest_id
    uint32_t relay_id
    fp_relay_pair *next            # chain in e.by_pair


cdef struct fp_trie:
    fp_trie *child[2]
    int slot                       # peer slot owning this prefix, -1 none


cdef struct fp_mac:
    unsigned char mac[6]
    int slot                       # -1: empty


cdef struct fp_event:
    int kind
    int64_t peer_id
    uint32_t local_index
    unsigned char *data
    size_t len
    sockaddr_storage addr
    socklen_t addrlen


cdef struct fp_engine:
    pthread_mutex_t lock
    int mode
    int udp_fd                     # the tunnel socket (sends from any thread)
    int event_fd                   # eventfd the control plane reads
    # settings
    int staged_max
    int burst
    size_t max_inner               # largest inner packet either way (MTU, +18 in TAP)
    double reject_after_time
    uint64_t reject_after_messages
    uint64_t rekey_after_messages
    # tables
    fp_peer **peers
    int peers_cap                  # slots in use (slots are never reused)
    int peers_alloc                # slots allocated (grows geometrically)
    uint64_t next_serial
    fp_keypair *index[4096]        # FP_INDEX_BUCKETS
    int by_id[4096]                # FP_PEER_BUCKETS: peer_id -> chain of live slots (slot + 1, 0 empty)
    int by_relay[4096]             # FP_PEER_BUCKETS: (relay_slot, relay_id) -> chain of relay_known slots
    fp_trie *trie4
    fp_trie *trie6
    int test_peer                  # slot, -1 none
    fp_mac *macs                   # TAP: learned MAC -> peer slot (open addressing)
    int nmacs
    # test mode: inbound payloads go to test_target if set, else to the last
    # local sender (test_last), else to test_default (test port + 1)
    sockaddr_storage test_target
    socklen_t test_target_len
    sockaddr_storage test_last
    socklen_t test_last_len
    sockaddr_storage test_default
    socklen_t test_default_len
    # ICMP unreachable for unroutable packets (built by the control thread)
    bint icmp4
    bint icmp6
    int icmp_pending               # ICMP_UNREACHABLE events not yet drained
    uint64_t drops[FP_N_DROPS]     # global drops (every drop, peer known or not)
    # events
    fp_event events[4096]          # FP_EVENT_QUEUE
    int ev_head
    int ev_count
    uint64_t ev_overflow
    void *fw                       # firewall callback (a Python object) or NULL
    # fault injection: only _testing.set_fault_seal sets it
    bint fault_seal
    # relay role (NAT traversal, wire type 6)
    bint relay_enabled
    uint64_t relay_bytes_budget    # per source peer and second
    uint64_t relay_pkts_budget
    uint64_t relay_forwarded
    uint64_t relay_budget_drops
    uint64_t relay_no_dest
    uint64_t relay_unknown_id
    fp_relay_pair *by_pair[4096]   # FP_PEER_BUCKETS: (source peer id, relay id) -> pair
    int relay_pairs
    uint64_t batches
    uint64_t udp_eagain_waits


cdef struct fp_pkt:
    unsigned char *buf             # FP_PAYLOAD_OFFSET headroom + payload
    size_t len                     # inner length (outbound) / datagram length (inbound)
    sockaddr_storage addr          # peer endpoint (outbound) / source (inbound)
    socklen_t addrlen
    int verdict
    int peer_slot
    uint64_t peer_serial
    int64_t peer_id
    uint64_t kp_serial
    uint32_t local_index
    uint64_t counter
    bint was_next
    int cipher                     # the keypair's, copied with the key
    size_t wire_off                # outbound: the datagram starts at buf + wire_off (0, WireGuard 16)
    size_t wire_tail               # outbound: bytes after the payload (WireGuard padding + tag)
    bint relay                     # inbound: a relay frame (type 6 or 7)
    bint relay_aegis               # inbound: type 7; on a relay, after routing: forward as type 7
    bint relayed_inner             # inbound: the inner datagram of a relay frame
    int relay_peer_slot            # ... and the peer it must belong to
    int saved_verdict
    bint wrap                      # outbound: wrap in a relay frame (the fields below)
    uint32_t wrap_index
    uint64_t wrap_counter
    uint32_t wrap_id
    int wrap_cipher                # the relay hop's: CIPHER_AEGIS -> type 7, else type 6
    unsigned char wrap_key[32]
    unsigned char key[32]


cdef class Forwarder:
    cdef fp_engine *e
    cdef dict slots                # peer_id -> slot
    cdef object fw_callback        # keeps e.fw alive
    cdef object __weakref__

    cdef int _slot(self, int64_t peer_id) except -1
    cdef void _free_peer(self, int slot) noexcept


cdef struct fp_worker:
    fp_engine *e
    int udp_fd
    int inner_fd
    bint inner_is_socket           # test mode: the test-port UDP socket
    int epfd
    int stop_fd
    int burst
    bint edge                      # EPOLLET (default) or level-triggered
    fp_pkt *out_pkts               # inner -> tunnel
    fp_pkt *in_pkts                # tunnel -> inner
    int out_cap                    # out_pkts slots (burst, + room for TSO segments)
    int in_cap                     # in_pkts descriptors (burst, x64 with UDP GRO)
    int rx_msgs                    # datagrams per recvmmsg on the UDP socket
    unsigned char **rx_bufs        # UDP receive buffers; in_pkts point into them
    sockaddr_storage *rx_addrs     # source of each received datagram
    socklen_t *rx_addrlens
    mmsghdr *msgs                  # scratch for recvmmsg / sendmmsg
    iovec *iovs
    int *map                       # msgs[i] -> pkts[map[i]] (first of a GSO group)
    int *groups                    # msgs[i] carries groups[i] packets
    uint64_t *cmsgs                # 8 words of control buffer per message
    # offloads (see docs/fastpath.md); each falls back on its own
    bint gso                       # UDP_SEGMENT sends
    bint gro                       # UDP_GRO receives
    bint vnet                      # the TUN fd carries virtio_net_hdr (IFF_VNET_HDR)
    uint64_t gso_sends
    uint64_t gso_fallbacks
    size_t relay_gso_refused       # on a relay: the smallest frame size a GSO send was refused at (0: none)
    uint32_t relay_gso_batches     # relay batches since then (the refusal is forgotten after 4096)
    uint64_t gro_datagrams
    uint64_t tso_packets
    uint64_t tso_segments
    unsigned char *flood_buf       # TAP: one copy of a flooded frame at a time
    uint64_t floods
    uint64_t gro_tun_packets       # coalesced super-packets written to the TUN
    uint64_t gro_tun_segments
    # statistics (written by the worker only; read racily for diagnostics)
    uint64_t wakeups
    uint64_t inner_batches
    uint64_t udp_batches
    uint64_t inner_packets
    uint64_t udp_packets
    uint64_t capped                # bursts that hit the per-wakeup cap
    uint64_t send_waits            # sendmmsg hit EAGAIN and waited for POLLOUT
    uint64_t deliver_failed


cdef class Worker:
    cdef Forwarder forwarder       # keeps the tables alive while the worker runs
    cdef fp_worker *w


# --- small helpers (inline: compiled into every module that cimports this file) ------------
cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline uint32_t _le32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _le64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>_le32(p)) | ((<uint64_t>_le32(p + 4)) << 32)


# --- the engine's C API, for phantom.fastpath._testing (phantomd never calls it) -----------
# Exported through the module (Cython's cimport): the per-packet code the
# workers run, so that tests and benchmarks run exactly that code.
# The per-packet functions are inline in the workers' loops; Cython cannot
# export an inline function, so the module exports one table of pointers to
# them (filled once at import), not a wrapper per function.
cdef struct fp_api:
    secretbox_fn secretbox_seal      # libsodium's secretbox
    secretbox_fn secretbox_open
    void (*nonce)(unsigned char *n, uint64_t counter) noexcept nogil    # secretbox's nonce of a counter
    void (*wipe)(void *p, size_t n) noexcept nogil                      # sodium_memzero
    int (*seal_secretbox)(unsigned char *buf, size_t length, uint32_t remote_index,
                          uint64_t counter, const unsigned char *key) noexcept nogil
    int (*open_secretbox)(unsigned char *buf, size_t wire_len, uint64_t counter,
                          const unsigned char *key) noexcept nogil
    int (*seal_chacha)(unsigned char *buf, size_t length, size_t mtu, uint32_t remote_index,
                       uint64_t counter, const unsigned char *key, size_t *tail) noexcept nogil
    int (*open_chacha)(unsigned char *buf, size_t wire_len, uint64_t counter,
                       const unsigned char *key) noexcept nogil
    int (*chacha_seal_raw)(unsigned char *m, size_t mlen, const unsigned char *n,
                           const unsigned char *key, bint openssl) noexcept nogil
    int (*chacha_open_raw)(unsigned char *c, size_t clen, const unsigned char *n,
                           const unsigned char *key, bint openssl) noexcept nogil
    int (*seal_aegis)(unsigned char *buf, size_t length, uint32_t remote_index,
                      uint64_t counter, const unsigned char *key) noexcept nogil
    int (*open_aegis)(unsigned char *buf, size_t wire_len, uint64_t counter,
                      const unsigned char *key) noexcept nogil
    int (*ossl_ready)() noexcept nogil                                  # OpenSSL's ChaCha20-Poly1305 bound
    void (*ossl_wipe)() noexcept nogil                                  # this thread's EVP contexts
    bint (*replay_check)(const fp_replay *w, uint64_t c) noexcept nogil
    uint64_t (*sum16)(const unsigned char *p, size_t n, uint64_t acc) noexcept nogil
    uint16_t (*fold)(uint64_t acc) noexcept nogil
cdef const fp_api *fp_get_api() noexcept nogil
cdef double _cipher_round_trips(int which, unsigned char *buf, size_t size, Py_ssize_t iterations,
                                int *rc) noexcept nogil              # ciphers.pxi
cdef bint _replay_update(fp_replay *w, uint64_t c) noexcept nogil    # replay.pxi
cdef int _fw_decide(const unsigned char *blob, size_t bloblen, int direction,
                    const unsigned char *p, size_t n, int64_t peer_id,
                    int *rule, int *reason) noexcept nogil            # firewall.pxi
