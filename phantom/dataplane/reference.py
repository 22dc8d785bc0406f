"""The pure-Python reference data path, on the asyncio (uvloop) event loop.

It is the semantic reference for the Cython fast path: both implement
:class:`phantom.dataplane.contract.DataPath` and are tested against each other.

Outbound, device -> wire:
  1. read a packet from the TUN/TAP device (or a datagram from the test port)
     into a buffer at offset TRANSPORT_PAYLOAD_OFFSET, leaving room for the
     header and the MAC so that encryption happens in place;
  2. route it: destination address -> peer by allowed IPs (TUN), destination
     MAC -> peer by learning, flooding otherwise (TAP), the test peer (test);
     no peer: drop NO_ROUTE and answer with ICMP unreachable (TUN);
  3. firewall, direction "out";
  4. take the peer's current keypair; none usable: stage the packet and ask
     the control plane for a handshake;
  5. assign the next counter, write the header, seal in place;
  6. send to the peer's endpoint.

Inbound, wire -> device:
  1. receive a datagram and check its framing; handshake and cookie messages
     go to the control plane;
  2. receiver index -> keypair; replay-window check;
  3. open in place; replay-window update; a keypair waiting in "next" becomes
     current; the endpoint roams to the packet's source;
  4. an empty plaintext is a keepalive: done;
  5. check the inner source against the peer's allowed IPs;
  6. firewall, direction "in"; write to the device (or out of the test port).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import time
from collections import deque
from typing import Iterable, Optional

from .. import crypto, wire
from ..constants import Tunables
from ..wire import demux
from . import ciphers
from . import packet as pkt
from .contract import DataPathBase
from .replay import ReplayWindow
from .routing import AllowedIPs
from .types import RELAY_BYTES_PER_SECOND, RELAY_PACKETS_PER_SECOND, Drop, Keypair, Mode, PeerCounters, RelayVia
from .udp import to_sockaddr

log = logging.getLogger("phantom.data")

OFFSET = wire.TRANSPORT_PAYLOAD_OFFSET
HEADER = wire.TRANSPORT_HEADER
MAC = wire.AEAD_TAG_SIZE
BUFSIZE = wire.MAX_DATAGRAM_SIZE + 64
_DROP_NAMES = {d: d.name.lower() for d in Drop}
_LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")
_ETH_IPV4, _ETH_ARP, _ETH_IPV6 = 0x0800, 0x0806, 0x86DD
_CHACHA = ciphers.CipherKind.CHACHA20POLY1305
_AEGIS = ciphers.CipherKind.AEGIS256
_AEGIS_EXTRA = ciphers.AEGIS_EXTRA


class _Session:
    """A keypair as the data path holds it."""

    __slots__ = ("kp", "peer", "send_counter", "replay", "rekey_requested", "seal", "open", "padded",
                 "phantom", "aegis", "send_key", "recv_key")

    def __init__(self, kp: Keypair, peer: "_Peer"):
        self.kp = kp
        self.peer = peer
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.rekey_requested = False
        # the keypair's cipher (dataplane/ciphers.py): Phantom's secretbox or
        # AEGIS-256, or WireGuard's ChaCha20-Poly1305, whose payloads are padded
        kind = ciphers.CipherKind(kp.cipher)
        self.seal = ciphers.SEAL[kind]
        self.open = ciphers.OPEN[kind]
        self.padded = kind is _CHACHA
        self.aegis = kind is _AEGIS
        self.phantom = kind in ciphers.PHANTOM_CIPHERS
        # transport data's keys (derived for aegis256; relay frames use kp's)
        self.send_key, self.recv_key = ciphers.transport_keys(kind, kp.send_key, kp.recv_key)


class _Peer:
    __slots__ = ("id", "allowed", "endpoint", "current", "previous", "next", "staged",
                 "counters", "handshake_asked", "seen")

    def __init__(self, peer_id: int, allowed):
        self.id = peer_id
        self.allowed = list(allowed)
        self.endpoint = None
        self.current: Optional[_Session] = None
        self.previous: Optional[_Session] = None
        self.next: Optional[_Session] = None
        self.staged: deque = deque()
        self.counters = PeerCounters()
        self.handshake_asked = False
        self.seen = None            # the counter times counters_changed last reported


class ReferenceDataPath(DataPathBase):
    """Pure-Python data path.  Runs entirely on the event loop thread."""

    def __init__(self, mode: Mode, udp_sock: socket.socket, device_fd: Optional[int] = None,
                 test_sock: Optional[socket.socket] = None, *, events, tunables: Tunables,
                 firewall=None, local_addresses: Iterable = (), test_deliver: Optional[tuple] = None,
                 mtu: int = 1420, loop: Optional[asyncio.AbstractEventLoop] = None):
        ciphers.chacha_policy()           # which ChaCha20-Poly1305 (decided once per process)
        super().__init__(mode, udp_sock, device_fd, test_sock, events, tunables, mtu, loop)
        # Largest inner packet accepted either way: the MTU (plus the Ethernet
        # header and one VLAN tag in TAP mode).
        self._max_inner = mtu + (18 if self.mode is Mode.TAP else 0)
        self._peers: dict[int, _Peer] = {}
        self._sessions: dict[int, _Session] = {}
        self._routes = AllowedIPs()
        self._macs: dict[bytes, int] = {}
        self._test_peer: Optional[int] = None
        self._test_deliver = test_deliver
        self._test_last_sender: Optional[tuple] = None
        self._firewall = firewall
        self._drops = {name: 0 for name in _DROP_NAMES.values()}
        self._last_icmp = 0.0
        self._rx = bytearray(BUFSIZE)
        self._rxv = memoryview(self._rx)
        self._tx = bytearray(BUFSIZE)
        self._txv = memoryview(self._tx)
        self._started = False
        # NAT traversal relays (wire type 6)
        self._relay = False                           # we relay for our peers
        self._relay_budget = (0, 0)                   # per source peer and second: bytes, packets
        self._relay_use: dict = {}                    # peer id -> [second, bytes, packets]
        self._relay_in: dict = {}                     # (relay peer id, relay id) -> peer id
        self._relay_pairs: dict = {}                  # relay: (source peer id, relay id) -> destination
        self.relayed = {"forwarded": 0, "budget": 0, "no_dest": 0, "unknown_id": 0, "pairs": 0}

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(self._udp.fileno(), self._on_udp)
        if self.mode is Mode.TEST:
            loop.add_reader(self._test.fileno(), self._on_test)
        else:
            loop.add_reader(self._fd, self._on_device)
        self._started = True

    def close(self) -> None:
        if self._started:
            self._loop.remove_reader(self._udp.fileno())
            if self.mode is Mode.TEST:
                self._loop.remove_reader(self._test.fileno())
            else:
                self._loop.remove_reader(self._fd)
            self._started = False
        for peer_id in list(self._peers):
            self.clear_keys(peer_id)

    # ---------------------------------------------------------- peers, routes
    # Every route change below runs to its end on the event loop's thread,
    # the thread that routes packets, with no await inside: a packet is
    # routed by the table before a change or the table after it, never by a
    # mix (the fast path gets the same from one lock hold, fast.py).
    def add_peer(self, peer_id: int, allowed_ips) -> None:
        """A peer with ``allowed_ips``; a prefix another peer holds is refused
        (ValueError) before anything changes."""
        if peer_id in self._peers:
            raise ValueError("peer %d exists" % peer_id)
        nets = [ipaddress.ip_network(n) for n in allowed_ips]
        for net in nets:
            holder = self._routes.owner(net)
            if holder is not None:
                raise ValueError("%s is peer %d's" % (net, holder))
        self._peers[peer_id] = _Peer(peer_id, ())
        self.update_routes({peer_id: nets})

    def remove_peer(self, peer_id: int) -> None:
        """Forget a peer: its keys, and exactly the prefixes it holds."""
        self.clear_keys(peer_id)
        for k in [k for k, d in self._relay_pairs.items() if d == peer_id or k[0] == peer_id]:
            del self._relay_pairs[k]
        self.relayed["pairs"] = len(self._relay_pairs)
        if peer_id in self._peers:
            self.update_routes({peer_id: []})
        self._peers.pop(peer_id, None)
        for mac in [m for m, p in self._macs.items() if p == peer_id]:
            del self._macs[mac]
        if self._test_peer == peer_id:
            self._test_peer = None

    def set_allowed_ips(self, peer_id: int, allowed_ips) -> None:
        """Replace one peer's prefixes (:meth:`update_routes` for one peer)."""
        self.update_routes({peer_id: allowed_ips})

    def update_routes(self, changes: dict) -> None:
        """Replace the prefixes of every peer in ``changes`` ({peer_id:
        prefixes}) in one step.  A prefix moves only between peers
        ``changes`` names; one that another peer holds is refused
        (ValueError), nothing changed."""
        peers = [self._peers[pid] for pid in changes]          # KeyError: unknown peer
        nets = {pid: [ipaddress.ip_network(n) for n in allowed] for pid, allowed in changes.items()}
        self._routes.replace(nets)
        for peer in peers:
            peer.allowed = self._routes.peer_networks(peer.id)

    def lookup(self, addr) -> Optional[int]:
        """The peer ``addr`` (an ipaddress address, or 4 or 16 bytes) routes to, or None."""
        return self._routes.lookup(addr)

    def set_endpoint(self, peer_id: int, addr) -> None:
        if isinstance(addr, RelayVia):
            self._peers[peer_id].endpoint = addr
            return
        self._peers[peer_id].endpoint = None if addr is None else to_sockaddr(self._udp, addr)

    # ------------------------------------------------------------ relays
    def set_relay(self, enabled: bool, bytes_per_second: int = RELAY_BYTES_PER_SECOND,
                  packets_per_second: int = RELAY_PACKETS_PER_SECOND) -> None:
        """Relay role: forward relay frames between our peers (never to our device)."""
        self._relay = bool(enabled)
        self._relay_budget = (int(bytes_per_second), int(packets_per_second))

    def set_relay_route(self, peer_id: int, relay_peer: int, relay_id: int) -> None:
        """Relay frames from ``relay_peer`` tagged ``relay_id`` carry ``peer_id``'s messages."""
        for k in [k for k, v in self._relay_in.items() if v == peer_id and k[0] == relay_peer]:
            del self._relay_in[k]
        self._relay_in[(relay_peer, relay_id)] = peer_id

    def set_relay_pair(self, src_peer: int, relay_id: int, dest_peer) -> None:
        """On a relay: frames from ``src_peer`` tagged ``relay_id`` go to
        ``dest_peer`` (None: no longer).  Any other (source, id) is a counted
        ``relay_unknown_id`` drop."""
        if dest_peer is None:
            self._relay_pairs.pop((src_peer, relay_id), None)
        elif src_peer in self._peers and dest_peer in self._peers:
            self._relay_pairs[(src_peer, relay_id)] = dest_peer
        self.relayed["pairs"] = len(self._relay_pairs)

    def _relay_send(self, via: RelayVia, inner, aegis: bool = True) -> bool:
        """Wrap ``inner`` (a whole A<->B datagram) in a relay frame to the relay
        peer: type 7 (AEGIS-256, the header as associated data) when that hop's
        session is aegis256 and ``aegis`` (a relay forwards a type 6 as type 6),
        else type 6 (secretbox under the session key)."""
        relay = self._peers.get(via.relay_peer)
        now = time.monotonic()
        s = self._usable(relay, now) if relay is not None else None
        if s is None or relay.endpoint is None or isinstance(relay.endpoint, RelayVia):
            self._drop(Drop.NO_ENDPOINT, relay)
            return False
        counter = s.send_counter
        s.send_counter = counter + 1
        plain = wire.RELAY_ID.pack(via.relay_id) + bytes(inner)
        if s.aegis and aegis:
            head = wire.TRANSPORT_HEADER.pack(wire.MessageType.RELAY_AEGIS, s.kp.remote_index, counter)
            buf = bytearray(head + plain + bytes(crypto.AEGIS256_TAG))
            crypto.aegis256_seal_into(s.send_key, counter, buf, len(head), len(plain), ad=head)
            frame = bytes(buf)
        else:
            box = crypto.secretbox_seal(s.kp.send_key, counter, plain)
            frame = wire.TRANSPORT_HEADER.pack(wire.MessageType.RELAY, s.kp.remote_index, counter) + box
        try:
            self._udp.sendto(frame, relay.endpoint)
        except OSError:
            self._drop(Drop.SEND_FAILED, relay)
            return False
        c = relay.counters
        c.tx_bytes += len(frame)
        c.tx_packets += 1
        c.last_tx = now
        c.last_data_tx = now
        return True

    def _on_relay_frame(self, src: "_Peer", start: int, end: int, now: float, aegis_in: bool = False) -> None:
        """A relay frame from ``src``, opened in place: relay_id | inner at
        rx[start:end] (``aegis_in``: it came as type 7)."""
        rx = self._rx
        if end - start < wire.RELAY_ID.size + wire.HEADER.size:
            self._drop(Drop.MALFORMED, src)
            return
        (rid,) = wire.RELAY_ID.unpack_from(rx, start)
        inner = bytes(rx[start + wire.RELAY_ID.size:end])
        if self._relay:
            # only a pair the control plane installed (its destination accepts
            # the source): the relay id names the pair, the same at both ends
            dest_id = self._relay_pairs.get((src.id, rid))
            if dest_id is None:
                log.debug("relay frame from peer %d with relay id %d: no such pair", src.id, rid)
                self.relayed["unknown_id"] += 1
                self._drop(Drop.RELAY_UNKNOWN_ID, src)
                return
            dest = self._peers.get(dest_id)
            if dest is None or dest is src or self._usable(dest, now) is None:
                log.debug("relay frame from peer %d to %d: no session", src.id, dest_id)
                self.relayed["no_dest"] += 1
                self._drop(Drop.NO_ROUTE, src)
                return
            use = self._relay_use.get(src.id)
            sec = int(now)
            if use is None or use[0] != sec:
                use = self._relay_use[src.id] = [sec, 0, 0]
            if use[1] + len(inner) > self._relay_budget[0] or use[2] + 1 > self._relay_budget[1]:
                self.relayed["budget"] += 1
                self._drop(Drop.RELAY_BUDGET, src)
                return
            use[1] += len(inner)
            use[2] += 1
            if self._relay_send(RelayVia(dest.id, rid), inner, aegis=aegis_in):
                self.relayed["forwarded"] += 1
            return
        peer_id = self._relay_in.get((src.id, rid))
        if peer_id is None or peer_id not in self._peers:
            self._drop(Drop.RELAY_UNKNOWN_ID, src)   # no peer of ours goes by that id at this relay
            return
        via = RelayVia(src.id, rid)
        t = inner[0]
        if t == wire.MessageType.TRANSPORT:
            m = len(inner)
            rx[:m] = inner
            self._inbound(m, via, relayed_for=peer_id)
            return
        try:
            mtype = wire.message_type(inner)
        except wire.WireError:
            self._drop(Drop.MALFORMED, src)
            return
        if mtype in (wire.MessageType.RELAY, wire.MessageType.RELAY_AEGIS, wire.MessageType.PEER_CONTROL):
            self._drop(Drop.MALFORMED, src)      # no nesting; peer control only on a direct session
            return
        self._events.control_packet(inner, via)

    def endpoint(self, peer_id: int):
        return self._peers[peer_id].endpoint

    def set_test_peer(self, peer_id: Optional[int]) -> None:
        self._test_peer = peer_id

    def set_firewall(self, firewall) -> None:
        self._firewall = firewall

    # ------------------------------------------------------------------- keys
    def install_keypair(self, kp: Keypair, confirmed: bool) -> None:
        peer = self._peers[kp.peer_id]
        s = _Session(kp, peer)
        self._sessions[kp.local_index] = s
        if confirmed:
            if peer.next is not None:
                self._retire(peer.next)
                peer.next = None
            if peer.previous is not None:
                self._retire(peer.previous)
            peer.previous, peer.current = peer.current, s
        else:
            if peer.next is not None:
                self._retire(peer.next)
            peer.next = s
        if confirmed:
            peer.handshake_asked = False
            self._flush_staged(peer)

    def retire_keypair(self, local_index: int) -> None:
        s = self._sessions.get(local_index)
        if s is None:
            return
        peer = s.peer
        for slot in ("current", "previous", "next"):
            if getattr(peer, slot) is s:
                setattr(peer, slot, None)
        self._retire(s)

    def _retire(self, s: _Session) -> None:
        self._sessions.pop(s.kp.local_index, None)
        crypto.memzero(s.kp.send_key)
        crypto.memzero(s.kp.recv_key)
        crypto.memzero(s.send_key)            # the derived ones (the same objects otherwise)
        crypto.memzero(s.recv_key)

    def clear_keys(self, peer_id: int) -> None:
        peer = self._peers.get(peer_id)
        if peer is None:
            return
        for slot in ("current", "previous", "next"):
            s = getattr(peer, slot)
            if s is not None:
                self._retire(s)
                setattr(peer, slot, None)
        peer.staged.clear()
        peer.handshake_asked = False

    # ------------------------------------------------------------ observability
    def counters(self, peer_id: int) -> PeerCounters:
        peer = self._peers[peer_id]
        c = peer.counters
        c.send_counter = peer.current.send_counter if peer.current else 0
        return PeerCounters(c.rx_bytes, c.tx_bytes, c.rx_packets, c.tx_packets, c.last_rx, c.last_tx,
                            c.last_data_rx, c.last_data_tx, c.send_counter, dict(c.drops))

    def counters_many(self, peer_ids: list) -> dict:
        """{peer id: PeerCounters} for ``peer_ids`` (:meth:`counters` of each)."""
        return {pid: self.counters(pid) for pid in peer_ids}

    def counters_changed(self, peer_ids: list) -> dict:
        """:meth:`counters_many` for those of ``peer_ids`` whose counter
        times changed since this method last reported them (see
        DataPath.counters_changed)."""
        out = {}
        for pid in peer_ids:
            c = self.counters(pid)
            times = (c.last_rx, c.last_tx, c.last_data_rx, c.last_data_tx)
            peer = self._peers[pid]
            if peer.seen != times:
                peer.seen = times
                out[pid] = c
        return out

    def failure(self) -> Optional[str]:
        """None: this data path runs on the event loop itself, with no worker
        that could die while the daemon goes on (see FastDataPath.failure)."""
        return None

    @property
    def worker_stats(self) -> Optional[dict]:
        """No workers here: the reference path runs on the event loop."""
        return None

    def global_drops(self) -> dict:
        return dict(self._drops)

    def _drop(self, reason: Drop, peer: Optional[_Peer] = None) -> None:
        name = _DROP_NAMES[reason]
        self._drops[name] += 1
        if peer is not None:
            d = peer.counters.drops
            d[name] = d.get(name, 0) + 1

    # ------------------------------------------------ control-plane originated
    def send_control(self, data: bytes, addr) -> None:
        if isinstance(addr, RelayVia):
            self._relay_send(addr, data, aegis=False)     # type 6, as the fast path (docs/protocol.md)
            return
        try:
            self._udp.sendto(data, to_sockaddr(self._udp, addr) if len(addr) == 2 else addr)
        except OSError as exc:
            log.debug("control send to %s failed: %s", addr, exc)
            self._drop(Drop.SEND_FAILED)

    def send_keepalive(self, peer_id: int) -> None:
        peer = self._peers.get(peer_id)
        if peer is None:
            return
        s = self._usable(peer, time.monotonic())
        if s is not None:
            self._seal_and_send(peer, s, 0, time.monotonic())

    # ============================================================ outbound path
    def _on_device(self) -> None:
        rxv = self._txv[OFFSET:]
        fd = self._fd
        for _ in range(self._t.burst):
            try:
                n = os.readv(fd, [rxv])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return
                log.error("device read failed: %s", exc)
                return
            if n:
                self._outbound(n)

    def _on_test(self) -> None:
        view = self._txv[OFFSET:OFFSET + wire.MAX_INNER_SIZE]
        for _ in range(self._t.burst):
            try:
                n, addr = self._test.recvfrom_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._test_last_sender = addr
            self._outbound(n)

    def _outbound(self, n: int) -> None:
        """A plaintext packet of n bytes sits at self._tx[OFFSET:]."""
        tx = self._tx
        now = time.monotonic()
        if n > self._max_inner:
            self._drop(Drop.OVERSIZED)
            return
        mode = self.mode
        if mode is Mode.TUN:
            dst = pkt.ip_dst(self._txv[OFFSET:OFFSET + n])
            if dst is None:
                self._drop(Drop.BAD_INNER)
                return
            peer_id = self._routes.lookup(dst)
            if peer_id is None:
                self._drop(Drop.NO_ROUTE)
                self._icmp_unreachable(n, now)
                return
            targets = (self._peers[peer_id],)
        elif mode is Mode.TAP:
            if n < 14:
                self._drop(Drop.BAD_INNER)
                return
            dst_mac = bytes(tx[OFFSET:OFFSET + 6])
            peer_id = None if dst_mac[0] & 1 else self._macs.get(dst_mac)
            targets = (self._peers[peer_id],) if peer_id is not None else tuple(self._peers.values())
            if not targets:
                self._drop(Drop.NO_ROUTE)
                return
        else:
            peer = self._peers.get(self._test_peer) if self._test_peer is not None else None
            if peer is None:
                self._drop(Drop.NO_ROUTE)
                return
            targets = (peer,)
        fw = self._firewall
        if fw is not None:
            if not self._fw_allow(fw, "out", n, targets[0].id if len(targets) == 1 else -1, now):
                return
        if len(targets) == 1:
            self._send_one(targets[0], n, now)
        else:
            frame = bytes(tx[OFFSET:OFFSET + n])
            for peer in targets:
                tx[OFFSET:OFFSET + n] = frame
                self._send_one(peer, n, now)

    def _fw_allow(self, fw, direction: str, n: int, peer_id: int, now: float, buf=None,
                  offset: int = OFFSET) -> bool:
        view = (buf if buf is not None else self._txv)[offset:offset + n]
        verdict = fw.classify(direction, view, peer_id, now)
        if verdict.accept:
            return True
        peer = self._peers.get(peer_id)
        self._drop(Drop.FIREWALL, peer)
        if verdict.reject and self._fd is not None:
            reply = fw.reject_response(view, now)
            if reply:
                if direction == "out":
                    self._write_device(reply)          # answer the local sender
                elif peer is not None:                 # answer the remote sender, through the tunnel
                    m = len(reply)
                    self._tx[OFFSET:OFFSET + m] = reply
                    self._send_one(peer, m, now)
        return False

    def _usable(self, peer: _Peer, now: float) -> Optional[_Session]:
        s = peer.current
        if s is None:
            return None
        if now - s.kp.created >= self._t.reject_after_time or s.send_counter >= self._t.reject_after_messages:
            return None
        return s

    def _send_one(self, peer: _Peer, n: int, now: float) -> None:
        s = self._usable(peer, now)
        if s is None:
            self._stage(peer, n)
            return
        if peer.endpoint is None:
            self._drop(Drop.NO_ENDPOINT, peer)
            return
        self._seal_and_send(peer, s, n, now)

    def _seal_and_send(self, peer: _Peer, s: _Session, n: int, now: float) -> None:
        """Seal self._tx[OFFSET:OFFSET+n] in place with the keypair's cipher and send it."""
        counter = s.send_counter
        s.send_counter = counter + 1
        start, end = s.seal(s.send_key, counter, s.kp.remote_index, self._tx, n, self._mtu)
        size = end - start
        if peer.endpoint is None:
            self._drop(Drop.NO_ENDPOINT, peer)
            return
        if isinstance(peer.endpoint, RelayVia):
            if not self._relay_send(peer.endpoint, self._txv[start:end]):
                return
        else:
            try:
                self._udp.sendto(self._txv[start:end], peer.endpoint)
            except OSError:
                self._drop(Drop.SEND_FAILED, peer)
                return
        c = peer.counters
        c.tx_bytes += size
        c.tx_packets += 1
        c.last_tx = now
        if n:
            c.last_data_tx = now
        if counter + 1 >= self._t.rekey_after_messages and not s.rekey_requested:
            s.rekey_requested = True
            self._events.handshake_needed(peer.id)

    def _stage(self, peer: _Peer, n: int) -> None:
        if len(peer.staged) >= self._t.staged_packets:
            peer.staged.popleft()
            self._drop(Drop.STAGED_OVERFLOW, peer)
        peer.staged.append(bytes(self._tx[OFFSET:OFFSET + n]))
        if not peer.handshake_asked:
            peer.handshake_asked = True
            self._events.handshake_needed(peer.id)

    def _flush_staged(self, peer: _Peer) -> None:
        now = time.monotonic()
        while peer.staged:
            s = self._usable(peer, now)
            if s is None or peer.endpoint is None:
                return
            data = peer.staged.popleft()
            n = len(data)
            self._tx[OFFSET:OFFSET + n] = data
            self._seal_and_send(peer, s, n, now)

    def _icmp_unreachable(self, n: int, now: float) -> None:
        """Answer a packet that matches no peer with ICMP host unreachable.

        The error's source is the unreachable destination itself: a source
        that is one of our own addresses would be dropped by the kernel as a
        martian when it comes back in through the TUN device."""
        if self._fd is None or now - self._last_icmp < 0.01:
            return
        reply = pkt.icmp_unreachable(self._txv[OFFSET:OFFSET + n])
        if reply:
            self._last_icmp = now
            self._write_device(reply)

    def _write_device(self, data) -> bool:
        try:
            os.write(self._fd, data)
            return True
        except OSError:
            self._drop(Drop.SEND_FAILED)
            return False

    # ============================================================= inbound path
    def _on_udp(self) -> None:
        sock = self._udp
        rx = self._rx
        for _ in range(self._t.burst):
            try:
                n, addr = sock.recvfrom_into(rx)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._inbound(n, addr)

    def _inbound(self, n: int, addr, relayed_for: Optional[int] = None) -> None:
        rx = self._rx
        if n < 4:
            self._drop(Drop.TRUNCATED)
            return
        mtype = rx[0]
        relay_aegis = mtype == wire.MessageType.RELAY_AEGIS and relayed_for is None
        is_relay = (mtype == wire.MessageType.RELAY and relayed_for is None) or relay_aegis
        if (mtype != wire.MessageType.TRANSPORT and not is_relay) or rx[1] or rx[2] or rx[3]:
            try:
                demux.classify(self._rxv[:n])       # Phantom's or WireGuard's framing
            except wire.WireError:
                self._drop(Drop.MALFORMED)
                return
            self._events.control_packet(bytes(rx[:n]), addr)
            return
        if n < wire.TRANSPORT_MIN_SIZE:
            self._drop(Drop.TRUNCATED)
            return
        # a relay frame carries a whole inner datagram (its overhead and tag on
        # top); an AEGIS-256 datagram is 16 bytes longer than a secretbox one:
        # the exact limit is checked once the session (its cipher) is known
        if n - OFFSET > self._max_inner + _AEGIS_EXTRA + \
                (wire.TRANSPORT_OVERHEAD + wire.RELAY_ID.size + _AEGIS_EXTRA if is_relay else 0) + \
                (_AEGIS_EXTRA if relay_aegis else 0):
            self._drop(Drop.OVERSIZED)
            return
        _, index, counter = HEADER.unpack_from(rx, 0)
        s = self._sessions.get(index)
        if s is None:
            self._drop(Drop.UNKNOWN_INDEX)
            return
        peer = s.peer
        if relay_aegis and not s.aegis:
            self._drop(Drop.MALFORMED, peer)      # type 7 only on an aegis256 hop session
            return
        if not is_relay and not s.aegis and n - OFFSET > self._max_inner:
            self._drop(Drop.OVERSIZED, peer)
            return
        if relayed_for is not None and peer.id != relayed_for:
            self._drop(Drop.SRC_NOT_ALLOWED, peer)   # a relay passing on another peer's session
            return
        now = time.monotonic()
        if now - s.kp.created >= self._t.reject_after_time:
            self._drop(Drop.KEY_EXPIRED, peer)
            return
        if not s.replay.check(counter):
            self._drop(Drop.REPLAY, peer)
            return
        if relay_aegis:
            # type 7: AEGIS-256 under the transport key, the header as associated data
            opened = None
            if n >= wire.AEGIS256_OVERHEAD and crypto.aegis256_open_into(
                    s.recv_key, counter, rx, wire.TRANSPORT_HEADER_SIZE, n - wire.TRANSPORT_HEADER_SIZE,
                    ad=bytes(rx[:wire.TRANSPORT_HEADER_SIZE])):
                opened = wire.TRANSPORT_HEADER_SIZE, n - wire.AEGIS256_OVERHEAD
        elif is_relay and s.phantom:
            # type 6: secretbox under the session key, whatever the suite
            opened = ciphers.open_secretbox(s.kp.recv_key, counter, rx, n)
        else:
            opened = s.open(s.recv_key, counter, rx, n)
        if opened is None:
            self._drop(Drop.AUTH_FAILED, peer)
            return
        start, plen = opened
        if not s.replay.update(counter):
            self._drop(Drop.REPLAY, peer)
            return
        if peer.next is s:
            self._confirm(peer, s)
        if peer.endpoint != addr and relayed_for is None:
            peer.endpoint = addr          # roaming; relayed packets never move the endpoint
        c = peer.counters
        c.rx_bytes += n
        c.rx_packets += 1
        c.last_rx = now
        if is_relay:
            c.last_data_rx = now
            if not s.phantom:
                self._drop(Drop.MALFORMED, peer)      # relay frames travel on Phantom sessions only
                return
            self._on_relay_frame(peer, start, start + plen, now, aegis_in=relay_aegis)
            return
        if plen == 0:
            return  # keepalive
        c.last_data_rx = now
        if s.padded:
            # WireGuard pads to 16: the inner packet's own length says where it ends
            inner = ciphers.inner_length(self._rxv[start:start + plen])
            if inner == 0 or inner > plen:
                self._drop(Drop.BAD_INNER, peer)
                return
            plen = inner
        payload = self._rxv[start:start + plen]
        mode = self.mode
        if mode is Mode.TUN:
            src = pkt.ip_src(payload)
            if src is None:
                self._drop(Drop.BAD_INNER, peer)
                return
            if not self._routes.peer_allows(peer.id, src):
                self._drop(Drop.SRC_NOT_ALLOWED, peer)
                return
        elif mode is Mode.TAP:
            if plen < 14:
                self._drop(Drop.BAD_INNER, peer)
                return
            if not self._tap_source_allowed(peer, payload):
                self._drop(Drop.SRC_NOT_ALLOWED, peer)
                return
        fw = self._firewall
        if fw is not None and not self._fw_allow(fw, "in", plen, peer.id, now, self._rxv, start):
            return
        if mode is Mode.TEST:
            dest = self._test_deliver or self._test_last_sender or ("127.0.0.1", self._test.getsockname()[1] + 1)
            try:
                self._test.sendto(payload, dest)
            except OSError:
                self._drop(Drop.SEND_FAILED, peer)
            return
        if mode is Mode.TAP:
            src_mac = bytes(payload[6:12])
            if not src_mac[0] & 1:
                self._macs[src_mac] = peer.id
        self._write_device(payload)

    def _confirm(self, peer: _Peer, s: _Session) -> None:
        if peer.previous is not None:
            self._retire(peer.previous)
        peer.previous, peer.current, peer.next = peer.current, s, None
        peer.handshake_asked = False
        self._events.keypair_confirmed(peer.id, s.kp.local_index)
        self._flush_staged(peer)

    def _tap_source_allowed(self, peer: _Peer, frame) -> bool:
        eth = pkt.parse_ether(frame)
        if eth is None:
            return False
        ethertype, off = eth.ethertype, eth.payload_offset
        if ethertype == _ETH_IPV4 or ethertype == _ETH_IPV6:
            src = pkt.ip_src(frame[off:])
            if src is None:
                return False
            if len(src) == 16 and (src[0] == 0xFE and src[1] & 0xC0 == 0x80 or not any(src)):
                return True  # link-local / unspecified: neighbour discovery
            return self._routes.peer_allows(peer.id, src)
        if ethertype == _ETH_ARP:
            spa = pkt.arp_sender_ip(frame[off:])
            if spa is None:
                return False
            return not any(spa) or self._routes.peer_allows(peer.id, spa)
        return True  # other EtherTypes: the firewall's EtherType policy decides
