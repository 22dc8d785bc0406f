"""The Cython fast path (``phantomd --fast``), behind the DataPath contract.

:class:`FastDataPath` has the reference path's constructor and methods
(:class:`phantom.dataplane.reference.ReferenceDataPath`); the packets never
touch Python.  Threads:

* the **worker** (a Python thread that immediately releases the GIL inside
  ``phantom.fastpath._engine.Worker.run``) owns the TUN/TAP (or test-port) and UDP file
  descriptors: edge-triggered epoll, batches of up to ``tunables.burst``
  packets, recvmmsg/sendmmsg, encryption in place;
* the **event loop** (uvloop, the control plane's thread) calls the methods
  below, which lock the C tables briefly, and reads the engine's eventfd: the
  worker queues handshake/cookie datagrams, "handshake needed", "keypair
  confirmed" and "ICMP unreachable" events there and this module dispatches
  them to :class:`~phantom.dataplane.contract.DataPathEvents`.

See docs/fastpath.md for the design.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from typing import Iterable, Optional

from .. import crypto
from ..constants import Tunables
from . import ciphers
from . import packet as pkt
from .contract import DataPathBase
from .routing import AllowedIPs
from .types import RELAY_BYTES_PER_SECOND, RELAY_PACKETS_PER_SECOND, Drop, Keypair, Mode, PeerCounters, RelayVia
from .udp import to_sockaddr

try:
    from ..fastpath import _engine as _fp
except ImportError as exc:  # not built: say how to build it
    _fp = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None

log = logging.getLogger("phantom.fast")

_DROP_NAMES = [d.name.lower() for d in sorted(Drop)]
_FAMILY = struct.Struct("=H")
_IN4 = struct.Struct("!H4s8x")           # sin_port, sin_addr, padding
_IN6 = struct.Struct("!HI16s")           # sin6_port, sin6_flowinfo, sin6_addr
_SCOPE = struct.Struct("=I")             # sin6_scope_id (host order)
_RELAY_FAMILY = 0xFFFE                   # fastpath/_engine.pxd FP_RELAY_FAMILY


# Extra TUN flags for a device the fast path will use: the daemon passes them to
# tun.open_device(extra_flags=...) so that the kernel hands over TCP/UDP
# super-packets (TSO/USO) with a virtio_net_hdr in front of every packet.
DEVICE_FLAGS = _fp.TUN_IFF_VNET_HDR if _fp is not None else 0


def tun_offloads(fd: int) -> tuple[bool, list[str], list[str]]:
    """Turn on TUN offloads for ``fd``: (vnet header present, features on,
    features missing with the reason).  Never raises."""
    missing = []
    try:
        ifr = fcntl.ioctl(fd, _fp.TUN_TUNGETIFF, bytes(40))
        flags = struct.unpack_from("=H", ifr, 16)[0]
    except OSError as exc:
        return False, [], ["vnet header (TUNGETIFF failed: %s)" % exc]
    if not flags & _fp.TUN_IFF_VNET_HDR:
        return False, [], ["TSO/USO (the device was opened without IFF_VNET_HDR)"]
    f = _fp
    base = f.TUN_OFFLOAD_CSUM | f.TUN_OFFLOAD_TSO4 | f.TUN_OFFLOAD_TSO6
    try:
        fcntl.ioctl(fd, f.TUN_TUNSETOFFLOAD, base | f.TUN_OFFLOAD_USO4 | f.TUN_OFFLOAD_USO6)
        return True, ["csum", "tso4", "tso6", "uso"], []
    except OSError as exc:
        missing.append("USO (TUNSETOFFLOAD: %s)" % exc.strerror)
    try:
        fcntl.ioctl(fd, f.TUN_TUNSETOFFLOAD, base)
        return True, ["csum", "tso4", "tso6"], missing
    except OSError as exc:
        missing.append("TSO (TUNSETOFFLOAD: %s)" % exc.strerror)
        return True, [], missing


def _describe(error: BaseException) -> str:
    """An exception for a log line: an OSError with its errno's name."""
    if isinstance(error, OSError) and error.errno:
        import errno as _errno
        return "%s (%s: %s)" % (error.strerror or error, _errno.errorcode.get(error.errno, error.errno),
                                os.strerror(error.errno))
    return "%s: %s" % (type(error).__name__, error)


def available() -> Optional[str]:
    """None when the extension is importable, else why not (for a log line)."""
    if _fp is None:
        return "phantom.fastpath._engine is not built (%s); build it with `pip install -e .` " \
               "or `python setup.py build_ext --inplace`" % _IMPORT_ERROR
    return None


def _network(n):
    """An ipaddress network, parsed only if it is not one already."""
    if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return n
    return ipaddress.ip_network(n)


def sockaddr_bytes(addr: tuple) -> bytes:
    """A Python socket address tuple as a raw ``struct sockaddr_in[6]``."""
    return _sockaddr_bytes(tuple(addr))


@functools.lru_cache(maxsize=16384)     # pure; ipaddress parsing is slow (issue #15)
def _sockaddr_bytes(addr: tuple) -> bytes:
    host = addr[0].split("%")[0]
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return _FAMILY.pack(socket.AF_INET) + _IN4.pack(addr[1], ip.packed)
    flow = addr[2] if len(addr) > 2 else 0
    scope = addr[3] if len(addr) > 3 else 0
    return _FAMILY.pack(socket.AF_INET6) + _IN6.pack(addr[1], flow, ip.packed) + _SCOPE.pack(scope)


def sockaddr_tuple(raw: Optional[bytes]) -> Optional[tuple]:
    """The inverse of :func:`sockaddr_bytes`: the tuple ``recvfrom`` would give."""
    if raw is None:
        return None
    family = _FAMILY.unpack_from(raw)[0]
    if family == _RELAY_FAMILY:           # the C relay unwrap: (relay peer id, relay id)
        return RelayVia(struct.unpack_from("=q", raw, 8)[0], struct.unpack_from("=I", raw, 16)[0])
    if family == socket.AF_INET:
        port, a = _IN4.unpack_from(raw, 2)
        return (socket.inet_ntop(socket.AF_INET, a), port)
    port, flow, a = _IN6.unpack_from(raw, 2)
    (scope,) = _SCOPE.unpack_from(raw, 24)
    return (socket.inet_ntop(socket.AF_INET6, a), port, flow, scope)


class _FirewallHook:
    """What the workers call, with the GIL, once per batch (see
    ``fastpath/firewall.pxi``'s ``_fw_classify``): the same classify/reject_response calls the
    reference path's ``_fw_allow`` makes, for what C does not decide."""

    def __init__(self, dp: "FastDataPath", fw):
        self.dp = dp
        self.fw = fw

    def state(self):
        """(blob, hits, drops, accepts, applies) of the active compiled tables,
        or None when this firewall has none (then classify_batch decides)."""
        active = getattr(self.fw, "active", None)
        if active is None:
            return None
        tables, st = active
        blob = getattr(tables, "blob", None)
        if not isinstance(blob, bytes) or getattr(self.fw, "is_ethernet", False):
            return None
        return blob, st.hits, st.drops, st.accepts, getattr(self.fw, "applies", True)

    def classify_one(self, direction: int, data: bytes, peer_id: int) -> bool:
        fw = self.fw
        now = time.monotonic()
        verdict = fw.classify("out" if direction else "in", data, peer_id, now)
        if verdict.accept:
            return True
        if verdict.reject:
            self.reject(data, direction, peer_id, now)
        return False

    def classify_batch(self, direction: int, items) -> list:
        return [self.classify_one(direction, data, peer_id) for data, peer_id in items]

    def reject(self, data: bytes, direction: int, peer_id: int, now: Optional[float] = None) -> None:
        """Answer a rejected packet as the reference path does: an outbound
        one into the device, an inbound one back to its peer through the tunnel."""
        dp = self.dp
        if dp.mode is Mode.TEST:          # no device (every other mode has one: see __init__)
            return
        reply = self.fw.reject_response(data, time.monotonic() if now is None else now)
        if not reply:
            return
        if direction:
            try:
                dp._write_device(reply)
            except OSError:
                dp._fwd.count_drop(Drop.SEND_FAILED)
        elif peer_id in dp._peers:
            dp._fwd.send_packet(peer_id, reply)


def _peer_counters(c: tuple) -> PeerCounters:
    """PeerCounters from a Forwarder.counters_many tuple."""
    drops = c[9]
    return PeerCounters(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8],
                        {_DROP_NAMES[i]: n for i, n in enumerate(drops) if n} if any(drops) else {})


class FastDataPath(DataPathBase):
    """DataPath on the Cython engine; same constructor as ReferenceDataPath."""

    def __init__(self, mode: Mode, udp_sock: socket.socket, device_fd: Optional[int] = None,
                 test_sock: Optional[socket.socket] = None, *, events, tunables: Tunables,
                 firewall=None, local_addresses: Iterable = (), test_deliver: Optional[tuple] = None,
                 mtu: int = 1420, loop: Optional[asyncio.AbstractEventLoop] = None,
                 edge_triggered: Optional[bool] = None, split_directions: Optional[bool] = None,
                 offloads: Optional[bool] = None):
        why = available()
        if why:
            raise RuntimeError(why)
        # Benchmark switches (bench/README.md), overridden by explicit arguments.
        env = os.environ
        if edge_triggered is None:
            edge_triggered = env.get("PHANTOM_FAST_EPOLL", "et").lower() != "lt"
        if split_directions is None:
            split_directions = env.get("PHANTOM_FAST_SPLIT", "0") not in ("", "0", "no")
        if offloads is None:
            offloads = env.get("PHANTOM_FAST_OFFLOADS", "1") not in ("", "0", "no")
        ciphers.chacha_policy()           # decided (and handed to the extension) before any worker runs
        super().__init__(mode, udp_sock, device_fd, test_sock, events, tunables, mtu, loop)
        if self.mode is Mode.TEST and test_sock is None:
            raise ValueError("test mode needs test_sock")
        if self.mode is not Mode.TEST and device_fd is None:
            raise ValueError("%s mode needs device_fd" % self.mode.value)
        self._edge = edge_triggered
        self._routes = AllowedIPs()
        self._peers: set[int] = set()
        self._keys: dict[int, Keypair] = {}      # local_index -> the control plane's Keypair
        self._peer_keys: dict[int, set] = {}     # peer_id -> its local indexes in _keys
        self._firewall = firewall
        self._local_addresses = list(local_addresses)   # (ICMP errors come from the destination)
        self._fwd = _fp.Forwarder(
            _fp.MODE_IDS[self.mode.value], udp_sock.fileno(),
            staged_max=tunables.staged_packets, burst=tunables.burst,
            max_inner=mtu + (18 if self.mode is Mode.TAP else 0),
            reject_after_time=tunables.reject_after_time,
            reject_after_messages=min(tunables.reject_after_messages, 2 ** 64 - 1),
            rekey_after_messages=min(tunables.rekey_after_messages, 2 ** 64 - 1))
        self._fwd.set_icmp(self.mode is Mode.TUN, self.mode is Mode.TUN)
        self._last_icmp = 0.0
        if self.mode is Mode.TEST:
            port = test_sock.getsockname()[1]
            self._fwd.set_test_target(sockaddr_bytes(("127.0.0.1", port + 1)), default=True)
            if test_deliver is not None:
                self._fwd.set_test_target(sockaddr_bytes(test_deliver))
        inner_fd = test_sock.fileno() if self.mode is Mode.TEST else device_fd
        self._vnet = False
        on, missing = [], []
        if offloads and self.mode is Mode.TUN:
            self._vnet, on, missing = tun_offloads(device_fd)
        # One worker for both directions, or (split_directions) one thread per
        # direction: device -> wire (encrypt) and wire -> device (decrypt).
        directions = [(True, False), (False, True)] if split_directions else [(True, True)]
        self._workers = [_fp.Worker(self._fwd, udp_sock.fileno(), inner_fd,
                                          self.mode is Mode.TEST, burst=tunables.burst,
                                          edge=edge_triggered, outbound=o, inbound=i,
                                          vnet=self._vnet, gso=offloads, gro=offloads and i)
                         for o, i in directions]
        if offloads:
            feats = {}
            for w in self._workers:
                for k, v in w.features().items():
                    feats[k] = feats.get(k, False) or v
            if feats.get("gso"):
                on.append("udp-gso")
            if feats.get("gro"):
                on.append("udp-gro")
            else:
                missing.append("UDP_GRO (setsockopt refused)")
        self.offloads = on
        for m in missing:
            log.info("fast path offload unavailable, falling back: %s", m)
        self._threads: list[threading.Thread] = []
        self._worker_error: Optional[BaseException] = None
        self._failure: Optional[str] = None      # why the data plane stopped (failure())
        self._stopping = False                   # close() asked the workers to return
        self._started = False
        if firewall is not None:
            self.set_firewall(firewall)

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(self._fwd.event_fd, self._on_events)
        for i, w in enumerate(self._workers):
            t = threading.Thread(target=self._run_worker, args=(w,), daemon=True,
                                 name="phantom-fastpath-%d" % i)
            t.start()
            self._threads.append(t)
        self._started = True
        log.info("fast path started (%s mode, burst %d, %s-triggered epoll, %d worker thread%s)",
                 self.mode.value, self._t.burst, "edge" if self._edge else "level",
                 len(self._workers), "" if len(self._workers) == 1 else "s")

    def _run_worker(self, worker) -> None:
        """A worker thread.  A worker that raises, or returns without close()
        asking it to, leaves no one moving packets: the event loop is told
        (:meth:`_worker_died`), which tells whoever wired us."""
        name = threading.current_thread().name
        try:
            worker.run()
        except BaseException as exc:
            error: BaseException = exc
        else:
            if self._stopping:
                return
            error = RuntimeError("it returned without being asked to stop")
        self._worker_error = error
        log.error("fast path worker %s stopped: %s", name, _describe(error))
        try:
            self._loop.call_soon_threadsafe(self._worker_died, name, error)
        except RuntimeError:          # the loop is closed: no one left to tell
            pass

    def _worker_died(self, name: str, error: BaseException) -> None:
        if self._failure is not None or self._stopping:
            return
        self._failure = "fast path worker %s died: %s" % (name, _describe(error))
        failed = getattr(self._events, "data_path_failed", None)
        if failed is not None:
            failed(self._failure)

    def failure(self) -> Optional[str]:
        """None while the data plane runs; once a worker died, why (it stays
        dead: the packets of this data path are no longer moved)."""
        return self._failure

    def close(self) -> None:
        if self._started:
            self._stopping = True
            for w in self._workers:
                w.stop()
            for t in self._threads:
                t.join(timeout=5)
                if t.is_alive():
                    log.error("fast path worker %s did not stop within 5 s", t.name)
            self._threads = []
            self._loop.remove_reader(self._fwd.event_fd)
            self._started = False
            self._on_events()          # deliver what the worker queued last
        for peer_id in list(self._peers):
            self.clear_keys(peer_id)

    @property
    def worker_stats(self) -> dict:
        """Per-stage counters of the workers, summed (batches, packets, capped bursts)."""
        total: dict = {}
        for w in self._workers:
            for k, v in w.stats().items():
                total[k] = total.get(k, 0) + v
        return total

    # ---------------------------------------------------------- peers, routes
    def add_peer(self, peer_id: int, allowed_ips) -> None:
        """A peer with ``allowed_ips``; a prefix another peer holds is refused
        (ValueError) before anything changes."""
        if peer_id in self._peers:
            raise ValueError("peer %d exists" % peer_id)
        nets = [_network(n) for n in allowed_ips]
        for net in nets:
            holder = self._routes.owner(net)
            if holder is not None:
                raise ValueError("%s is peer %d's" % (net, holder))
        self._fwd.add_peer(peer_id)
        self._peers.add(peer_id)
        self.update_routes({peer_id: nets})

    def remove_peer(self, peer_id: int) -> None:
        """Forget a peer: its keys, and exactly the prefixes it holds (in one
        step for the worker); nobody else's route changes."""
        if peer_id not in self._peers:
            return
        self.clear_keys(peer_id)
        self.update_routes({peer_id: []})
        self._peers.discard(peer_id)
        self._fwd.remove_peer(peer_id)

    def set_allowed_ips(self, peer_id: int, allowed_ips) -> None:
        """Replace one peer's prefixes (:meth:`update_routes` for one peer)."""
        self.update_routes({peer_id: allowed_ips})

    def update_routes(self, changes: dict) -> None:
        """Replace the prefixes of every peer in ``changes`` ({peer_id:
        prefixes}) as one step for the worker: it routes each packet by the
        table before or the table after, never by a mix (so a peer that trades
        199 /32s for the /24 holding them never lets a packet fall through to a
        shorter prefix of another peer meanwhile).  A prefix moves only between
        peers ``changes`` names; one that another peer holds is refused
        (ValueError), nothing changed.  The C trie gets only what changed
        (``Forwarder.change_routes``, one lock hold), so the cost follows these
        peers' prefixes, not the size of the table."""
        for peer_id in changes:
            if peer_id not in self._peers:
                raise KeyError(peer_id)
        gone, moved = self._routes.replace({pid: [_network(n) for n in nets]
                                            for pid, nets in changes.items()})
        self._fwd.change_routes(
            [(n.max_prefixlen, n.network_address.packed, n.prefixlen, None) for n in gone]
            + [(n.max_prefixlen, n.network_address.packed, n.prefixlen, pid) for n, pid in moved])

    def lookup(self, addr) -> Optional[int]:
        """The peer the worker routes ``addr`` (an ipaddress address, or 4 or
        16 bytes) to, or None: the C table itself."""
        packed = addr.packed if hasattr(addr, "packed") else bytes(addr)
        return self._fwd.lookup(packed)

    def _push_routes(self) -> None:
        """Rebuild the whole C trie from the Python table (bulk form)."""
        self._fwd.set_routes([(net.max_prefixlen, net.network_address.packed, net.prefixlen, peer)
                                 for net, peer in self._routes.entries()])

    def set_endpoint(self, peer_id: int, addr) -> None:
        if peer_id not in self._peers:
            raise KeyError(peer_id)
        if isinstance(addr, RelayVia):       # sends are wrapped in relay frames, in C
            self._fwd.set_relay_route(peer_id, addr.relay_peer, addr.relay_id, True)
            return
        raw = None if addr is None else sockaddr_bytes(to_sockaddr(self._udp, addr))
        self._fwd.set_endpoint(peer_id, raw)

    def set_relay_route(self, peer_id: int, relay_peer: int, relay_id: int) -> None:
        """Relay frames from ``relay_peer`` tagged ``relay_id`` carry ``peer_id``'s messages."""
        if peer_id in self._peers and relay_peer in self._peers:
            self._fwd.set_relay_route(peer_id, relay_peer, relay_id, False)

    def set_relay_pair(self, src_peer: int, relay_id: int, dest_peer) -> None:
        """On a relay: frames from ``src_peer`` tagged ``relay_id`` go to
        ``dest_peer`` (None: no longer).  Any other (source, id) is a counted
        ``relay_unknown_id`` drop."""
        if dest_peer is None:
            self._fwd.set_relay_pair(src_peer, relay_id, -1)
        elif src_peer in self._peers and dest_peer in self._peers:
            self._fwd.set_relay_pair(src_peer, relay_id, dest_peer)

    def endpoint(self, peer_id: int):
        if peer_id not in self._peers:
            raise KeyError(peer_id)
        return sockaddr_tuple(self._fwd.endpoint(peer_id))

    def set_test_peer(self, peer_id: Optional[int]) -> None:
        self._fwd.set_test_peer(peer_id if peer_id in self._peers else None)

    def set_firewall(self, firewall) -> None:
        """Classify with ``firewall`` (the object the reference path takes:
        ``classify(direction, packet, peer_id, now)`` and
        ``reject_response(packet, now)``), or stop classifying (None).  A
        :class:`phantom.dataplane.firewall.Firewall` is decided in C from its
        compiled tables (``active``), with its own counters."""
        self._firewall = firewall
        self._fwd.set_firewall_callback(None if firewall is None else _FirewallHook(self, firewall))

    # ------------------------------------------------------------------- keys
    def install_keypair(self, kp: Keypair, confirmed: bool) -> None:
        """Synchronous with respect to the worker: the keypair is in the C
        index (under the engine lock) when this returns, so a datagram the
        worker reads afterwards finds it.  The daemon relies on this to send
        a handshake response only after the install (actions.py, "keys
        before sends")."""
        if kp.peer_id not in self._peers:
            raise KeyError(kp.peer_id)
        send, recv = ciphers.transport_keys(kp.cipher, kp.send_key, kp.recv_key)
        derived = send is not kp.send_key
        try:
            self._fwd.install_keypair(kp.peer_id, kp.local_index, kp.remote_index,
                                         kp.send_key, kp.recv_key, kp.created, confirmed, kp.cipher,
                                         send if derived else None, recv if derived else None)
        finally:
            if derived:                      # the engine holds its own copies
                crypto.memzero(send)
                crypto.memzero(recv)
        self._keys[kp.local_index] = kp
        self._peer_keys.setdefault(kp.peer_id, set()).add(kp.local_index)
        self._zero_retired(kp.peer_id)

    def _zero_retired(self, peer_id: int) -> None:
        """Zero the control plane's copies of keys the engine let go of (it
        zeroes its own copies itself)."""
        mine = self._peer_keys.get(peer_id)
        if not mine:
            return
        live = set(self._fwd.key_slots(peer_id)) if peer_id in self._peers else set()
        for idx in [i for i in mine if i not in live]:
            kp = self._keys.pop(idx)
            crypto.memzero(kp.send_key)
            crypto.memzero(kp.recv_key)
            mine.discard(idx)
        if not mine:
            del self._peer_keys[peer_id]

    def retire_keypair(self, local_index: int) -> None:
        self._fwd.retire_keypair(local_index)
        kp = self._keys.pop(local_index, None)
        if kp is not None:
            mine = self._peer_keys.get(kp.peer_id)
            if mine is not None:
                mine.discard(local_index)
                if not mine:
                    del self._peer_keys[kp.peer_id]
            crypto.memzero(kp.send_key)
            crypto.memzero(kp.recv_key)

    def clear_keys(self, peer_id: int) -> None:
        if peer_id not in self._peers:
            return
        self._fwd.clear_keys(peer_id)
        self._zero_retired(peer_id)

    # ------------------------------------------------------------ observability
    def counters(self, peer_id: int) -> PeerCounters:
        c = self._fwd.counters(peer_id)
        drops = {_DROP_NAMES[i]: n for i, n in enumerate(c["drops"]) if n}
        return PeerCounters(c["rx_bytes"], c["tx_bytes"], c["rx_packets"], c["tx_packets"],
                            c["last_rx"], c["last_tx"], c["last_data_rx"], c["last_data_tx"],
                            c["send_counter"], drops)

    def counters_many(self, peer_ids: list) -> dict:
        """{peer id: PeerCounters} for ``peer_ids``, as :meth:`counters` of
        each, under one hold of the table lock (the timer tick's read)."""
        ids = list(peer_ids)
        return {pid: _peer_counters(c) for pid, c in zip(ids, self._fwd.counters_many(ids))}

    def counters_changed(self, peer_ids: list) -> dict:
        """:meth:`counters_many` for those of ``peer_ids`` whose counter
        times changed since this method last reported them (compared in C,
        under one hold of the table lock: see DataPath.counters_changed)."""
        ids = list(peer_ids)
        return {ids[k]: _peer_counters(c) for k, c in self._fwd.counters_changed(ids)}

    def set_relay(self, enabled: bool, bytes_per_second: int = RELAY_BYTES_PER_SECOND,
                  packets_per_second: int = RELAY_PACKETS_PER_SECOND) -> None:
        """Relay role: the worker forwards relay frames (wire types 6 and 7) between
        peers in C, never to the device (see docs/nat.md)."""
        self._fwd.set_relay(bool(enabled), int(bytes_per_second), int(packets_per_second))

    @property
    def relayed(self) -> dict:
        return self._fwd.relay_stats()

    def global_drops(self) -> dict:
        return dict(zip(_DROP_NAMES, self._fwd.global_drops()))

    # ------------------------------------------------ control-plane originated
    def send_control(self, data: bytes, addr) -> None:
        if isinstance(addr, RelayVia):
            if addr.relay_peer not in self._peers or not self._fwd.send_relayed(addr.relay_peer, addr.relay_id,
                                                                                    bytes(data)):
                self._fwd.count_drop(Drop.NO_ENDPOINT)
            return
        try:
            self._udp.sendto(data, to_sockaddr(self._udp, addr) if len(addr) == 2 else addr)
        except OSError as exc:
            log.debug("control send to %s failed: %s", addr, exc)
            self._fwd.count_drop(Drop.SEND_FAILED)

    def send_keepalive(self, peer_id: int) -> None:
        if peer_id in self._peers:
            self._fwd.send_keepalive(peer_id)

    def _write_device(self, data: bytes) -> None:
        """Write a packet the control side built into the TUN device."""
        if self._vnet:
            os.writev(self._fd, [bytes(10), data])   # virtio_net_hdr: no offload
        else:
            os.write(self._fd, data)

    # ------------------------------------------------------------ events
    def _on_events(self) -> None:
        ev = self._events
        # control packets that arrived together go to the control plane as
        # one batch when it takes batches (the node's executor: its handshake
        # responder works on several at once), else one by one
        batched = getattr(ev, "control_packets", None)
        batch: list = []
        for kind, peer_id, local_index, data, raw in self._fwd.drain_events():
            if kind == _fp.EVENT_CONTROL_PACKET and batched is not None:
                batch.append((data, sockaddr_tuple(raw)))
                continue
            if batch:
                self._control_batch(batched, batch)
                batch = []
            try:
                if kind == _fp.EVENT_CONTROL_PACKET:
                    ev.control_packet(data, sockaddr_tuple(raw))
                elif kind == _fp.EVENT_HANDSHAKE_NEEDED:
                    ev.handshake_needed(peer_id)
                elif kind == _fp.EVENT_KEYPAIR_CONFIRMED:
                    self._zero_retired(peer_id)
                    ev.keypair_confirmed(peer_id, local_index)
                elif kind == _fp.EVENT_ICMP_UNREACHABLE:
                    self._icmp_unreachable(data)
            except Exception:  # a control-plane bug must not stop the data plane
                log.exception("data-path event %d for peer %s failed", kind, peer_id)
        if batch:
            self._control_batch(batched, batch)

    @staticmethod
    def _control_batch(batched, batch: list) -> None:
        try:
            batched(batch)
        except Exception:  # a control-plane bug must not stop the data plane
            log.exception("data-path control packets (%d) failed", len(batch))

    def _icmp_unreachable(self, orig: bytes) -> None:
        """As the reference path: host unreachable from the unreachable
        destination itself, at most one answer per 10 ms."""
        now = time.monotonic()
        if self._fd is None or now - self._last_icmp < 0.01:
            return
        reply = pkt.icmp_unreachable(orig)
        if reply:
            self._last_icmp = now
            try:
                self._write_device(reply)
            except OSError:
                self._fwd.count_drop(Drop.SEND_FAILED)
