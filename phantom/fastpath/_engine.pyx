# cython: language_level=3, cdivision=True
"""Phantom's Cython data path (``phantomd --fast``): module phantom.fastpath._engine.

This file only binds things together: the declarations are in _engine.pxd
(structs, constants, the C API _testing.pyx calls), the C APIs in
includes/*.pxd, the drop reasons and message types in _generated.pxi (made
by generate.py from types.Drop and wire.MessageType at build time), and the
code in one part per job, included below.  The Python side is
phantom/dataplane/fast.py (FastDataPath, the DataPath contract of
dataplane/contract.py); the test and benchmark hooks are the separate
extension phantom.fastpath._testing, which phantomd never loads.

The pipeline, as a worker thread runs it (worker.pxi; GIL released the whole
time except in step 3 with a firewall).  "lock" is the engine mutex
(tables.pxi), taken once per phase and batch, never across a system call or
a cipher call.

  device -> wire (_inner_batch), one batch of up to ``burst`` packets
    1. read packets from the TUN device (or recvmmsg from the test port) into
       buffers at FP_PAYLOAD_OFFSET, leaving room for the header; with
       IFF_VNET_HDR a TSO/USO super-packet is cut into MTU-sized segments,
       each with its own headers and checksums (offload.pxi _tso_split; TCP
       to a relayed peer: smaller, so its relay frame does not fragment,
       worker.pxi _relayed_seg_max);
    2. lock: oversize check and route: allowed-IPs LPM (trie.pxi), the MAC
       table in TAP mode (unknown/group: flooded, worker.pxi _out_flood), or
       the test peer (send.pxi _out_prepare); unlock;
    3. firewall (firewall.pxi _fw_classify, only with one): take the GIL once
       for the batch, decide each packet in C from the compiled tables
       (_fw_decide) or, for fragments and stateful tables, with the Python
       classifier; a refused packet is a ``firewall`` drop (a REJECT answers
       into the device); without a firewall (and not in TAP mode) steps 2 and
       4 are one hold of the lock;
    4. lock: take the peer's current keypair, assign its counter, copy the
       send key and the endpoint into the packet record; no usable keypair:
       stage the packet and queue "handshake needed" (staging.pxi,
       events.pxi); a peer reached through a relay (RelayVia endpoint) also
       gets the relay's key and id; unlock;
    5. seal in place with the keypair's cipher (ciphers.pxi: secretbox,
       AEGIS-256, or ChaCha20-Poly1305 from libsodium or OpenSSL) and wipe the
       key copy; a relayed peer's sealed datagram is then wrapped in a relay
       frame (type 7, AEGIS-256 on an aegis256 hop; type 6, secretbox under
       the relay's session key, on a secretbox hop); a failed seal drops and
       wipes the packet (send.pxi _out_seal);
    6. sendmmsg every sealed packet, never anything else; runs of equal size
       to one endpoint leave as one UDP GSO message (send.pxi _send_batch);
    7. lock: counters and drops (send.pxi _account); unlock; poke the eventfd
       if events were queued (events.pxi _notify).

  wire -> device (_udp_batch)
    1. recvmmsg datagrams; with UDP GRO a coalesced datagram becomes one
       record per original datagram (worker.pxi _recv_udp);
    2. lock: framing by message type: handshake and cookie messages (and peer
       control, type 5) are queued for the control plane; transport (type 4)
       and relay frames (type 6): receiver-index lookup, key age, replay
       *check*, copy the receive key (receive.pxi _in_prepare); unlock;
    3. open in place (no lock; receive.pxi _in_open);
    4. lock: re-find the keypair by index and serial (it may have been
       retired meanwhile), replay *update*, promote a "next" keypair, roam the
       endpoint (never for relayed packets), counters, inner-source check
       (receive.pxi _in_commit); a relay frame never reaches the device: on a
       relay it is routed to its pair's destination and re-keyed for it
       (relay.pxi _relay_route; unknown pair: ``relay_unknown_id``, over
       budget: ``relay_budget``), on a relayed peer its inner datagram is
       unwrapped (_relay_unwrap) and goes through steps 2-4 once more, as
       from the peer the relay id names; unlock;
    5. firewall (as step 3 outbound, direction in), then, in TAP mode, learn
       the source MACs of the frames that passed;
    6. write payloads to the TUN device, consecutive segments of one TCP flow
       coalesced into one TSO super-packet (offload.pxi _write_tun), or
       sendmmsg them to the test target;
    7. on a relay: seal and send the frames routed in step 4 (relay.pxi
       _relay_send); count late drops; poke the eventfd; flush the staged
       packets of peers whose keypair was just confirmed (staging.pxi).

The control plane (the event loop's thread, holding the GIL) calls the
Forwarder's methods (tables.pxi); they take the same lock with the GIL released.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcmp, memcpy, memmove, memset

from phantom.fastpath.includes.system cimport *
from phantom.fastpath.includes.sodium cimport secretbox_fn, memzero_fn, aead_encrypt_fn, aead_decrypt_fn
from phantom.fastpath.includes.libcrypto cimport (
    phantom_ossl_setup, phantom_ossl_seal, phantom_ossl_open, phantom_ossl_wipe, phantom_ossl_ready)
from phantom.fastpath.includes.linux cimport *

from phantom import crypto as _crypto
from phantom import libcrypto as _libcrypto
from phantom import constants as _constants
from phantom import wire as _wire
from phantom.wire import wireguard as _wgwire
from phantom.dataplane import ciphers as _ciphers


# The C constants must agree with the Python modules they mirror.
assert FP_HEADER_SIZE == _wire.TRANSPORT_HEADER_SIZE
assert FP_PAYLOAD_OFFSET == _wire.TRANSPORT_PAYLOAD_OFFSET
assert FP_MAX_INNER == _wire.MAX_INNER_SIZE
assert FP_REPLAY_WINDOW == _constants.REPLAY_WINDOW_SIZE
assert FP_REPLAY_BLOCKS * 64 == FP_REPLAY_WINDOW + 64
assert CIPHER_SECRETBOX == _ciphers.CipherKind.SECRETBOX
assert CIPHER_CHACHA == _ciphers.CipherKind.CHACHA20POLY1305
assert CIPHER_AEGIS == _ciphers.CipherKind.AEGIS256
assert FP_AEGIS_TAG == _crypto.AEGIS256_TAG == _wire.AEGIS256_TAG_SIZE
assert FP_WRAP_SECRETBOX == _wire.RELAY_OVERHEAD and FP_WRAP_AEGIS == _wire.RELAY_AEGIS_OVERHEAD
assert FP_WRAP_ROOM >= FP_WRAP_AEGIS and FP_WRAP_ROOM >= FP_WRAP_SECRETBOX
assert FP_AEGIS_EXTRA == _wire.AEGIS256_EXTRA and FP_AEGIS_NONCE_SIZE == _wire.AEGIS256_NONCE_SIZE
assert FP_TAIL_ROOM >= FP_AEGIS_TAG
assert FP_HEADER_SIZE == _wgwire.TRANSPORT_HEADER_SIZE
assert FP_TAIL_ROOM >= _wgwire.PADDING_MULTIPLE - 1 + _wgwire.AEAD_TAG_SIZE
# D_*, FP_N_DROPS and MSG_* are generated from these enums at build time
# (generate.py): a build older than the enums stops here instead of counting
# drops under the wrong names.
from phantom.dataplane.types import Drop as _Drop
from phantom.fastpath.generate import signature as _signature
assert FP_N_DROPS == len(_Drop) and FP_SIG_DROP == _signature(_Drop.__members__.items()) \
    and FP_SIG_MESSAGETYPE == _signature(_wire.MessageType.__members__.items()), \
    "stale build: rebuild phantom.fastpath (setup.py build_ext --inplace) after changing Drop or MessageType"

cdef uint64_t REPLAY_LIMIT = _constants.REJECT_AFTER_MESSAGES
cdef uint16_t _ENDIAN_PROBE = 1
cdef size_t MAX_DATAGRAM = _wire.MAX_DATAGRAM_SIZE
cdef size_t INITIATION_SIZE = _wire.INITIATION_SIZE
cdef size_t PEER_CONTROL_MIN_SIZE = _wire.PEER_CONTROL_MIN_SIZE
cdef size_t PEER_CONTROL_MAX_SIZE = _wire.PEER_CONTROL_MAX_SIZE
cdef size_t RESPONSE_SIZE = _wire.RESPONSE_SIZE
cdef size_t COOKIE_REPLY_SIZE = _wire.COOKIE_REPLY_SIZE
cdef size_t INITIATION_OFFER_SIZE = _wire.INITIATION_OFFER_SIZE     # with a cipher suites offer
# with an attachment (a membership certificate) after the offer: a range
cdef size_t INITIATION_ATTACHED_MIN_SIZE = _wire.INITIATION_ATTACHED_MIN_SIZE
cdef size_t INITIATION_MAX_SIZE = _wire.INITIATION_MAX_SIZE
cdef size_t RESPONSE_CHOICE_SIZE = _wire.RESPONSE_CHOICE_SIZE       # with the chosen suite
cdef size_t WG_INITIATION_SIZE = _wgwire.INITIATION_SIZE
cdef size_t WG_RESPONSE_SIZE = _wgwire.RESPONSE_SIZE
assert _wgwire.COOKIE_REPLY_SIZE == COOKIE_REPLY_SIZE

DROP_COUNT = FP_N_DROPS
# TUN ioctls and flags, for the Python side (kernel ABI values)
TUN_IFF_VNET_HDR = IFF_VNET_HDR
TUN_IFF_MULTI_QUEUE = IFF_MULTI_QUEUE
TUN_TUNGETIFF = TUNGETIFF
TUN_TUNSETOFFLOAD = TUNSETOFFLOAD
TUN_OFFLOAD_CSUM = TUN_F_CSUM
TUN_OFFLOAD_TSO4 = TUN_F_TSO4
TUN_OFFLOAD_TSO6 = TUN_F_TSO6
TUN_OFFLOAD_USO4 = TUN_F_USO4
TUN_OFFLOAD_USO6 = TUN_F_USO6
MODE_IDS = {"tun": MODE_TUN, "tap": MODE_TAP, "test": MODE_TEST}
EVENT_CONTROL_PACKET = EV_CONTROL_PACKET
EVENT_HANDSHAKE_NEEDED = EV_HANDSHAKE_NEEDED
EVENT_KEYPAIR_CONFIRMED = EV_KEYPAIR_CONFIRMED
EVENT_ICMP_UNREACHABLE = EV_ICMP_UNREACHABLE


# --- the parts, one job each ------------------------------------------------------------
include "sodium.pxi"
include "ciphers.pxi"
include "replay.pxi"
include "trie.pxi"
include "keypairs.pxi"
include "events.pxi"
include "staging.pxi"
include "send.pxi"
include "receive.pxi"
include "relay.pxi"
include "offload.pxi"
include "firewall.pxi"
include "worker.pxi"
include "tables.pxi"


# --- the C API (declared in _engine.pxd) ----------------------------------------------------
# The per-packet functions of the parts are inline in the workers' loops; this
# table points phantom.fastpath._testing at the very same code (its
# differential tests and benchmarks).  Nothing in the engine calls through it.
cdef fp_api _api
_api.secretbox_seal, _api.secretbox_open = _seal_fn, _open_fn
_api.nonce, _api.wipe = _nonce, _wipe
_api.seal_secretbox, _api.open_secretbox = _seal_packet, _open_packet
_api.seal_chacha, _api.open_chacha = _seal_chacha, _open_chacha
_api.chacha_seal_raw, _api.chacha_open_raw = _chacha_seal_raw, _chacha_open_raw
_api.seal_aegis, _api.open_aegis = _seal_aegis, _open_aegis
_api.ossl_ready, _api.ossl_wipe = phantom_ossl_ready, phantom_ossl_wipe
_api.replay_check, _api.sum16, _api.fold = _replay_check, _sum16, _fold


cdef const fp_api *fp_get_api() noexcept nogil:
    return &_api
