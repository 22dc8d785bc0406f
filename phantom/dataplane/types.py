"""The contract between the control plane and a data path.

Both data paths -- the pure-Python reference (:mod:`phantom.dataplane.reference`)
and the Cython fast path (:mod:`phantom.dataplane.fast`) -- implement
:class:`DataPath`.  The control plane never touches packets; the data path never
runs a handshake.  They meet here:

* the control plane *installs* and *retires* session keys (:class:`Keypair`),
  sets endpoints and allowed IPs, and reads counters;
* the data path *reports* through :class:`DataPathEvents`: a handshake or
  cookie message arrived, a peer needs a handshake (it has traffic and no
  usable key), a freshly installed "next" keypair was confirmed by the peer.

Timers in the control plane are driven by the per-peer timestamps in
:class:`PeerCounters` (read on each tick), not by per-packet callbacks, so a
data path in another thread never has to call into Python per packet.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Optional, Protocol

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)
Network = "ipaddress.IPv4Network | ipaddress.IPv6Network"


class Mode(str, enum.Enum):
    TUN = "tun"        # layer 3: IP packets
    TAP = "tap"        # layer 2: Ethernet frames
    TEST = "test"      # the prototype's UDP test port: datagram payloads


class RelayVia(tuple):
    """A peer's endpoint when traffic goes through a relay: (the relay's peer
    id here, the peer's id at the relay).  Used wherever a (host, port)
    endpoint goes (set_endpoint, send_control, the engine's endpoint); the
    data path wraps what it sends there in a relay frame (wire type 6)."""

    __slots__ = ()

    def __new__(cls, relay_peer: int, relay_id: int):
        return tuple.__new__(cls, (int(relay_peer), int(relay_id)))

    @property
    def relay_peer(self) -> int:
        return self[0]

    @property
    def relay_id(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return "RelayVia(%d, %d)" % self


class Drop(enum.IntEnum):
    """Why a packet was dropped.  Counted per peer (where known) and globally."""

    MALFORMED = 0          # bad framing, unknown type, bad reserved bytes
    TRUNCATED = 1          # shorter than its type needs
    OVERSIZED = 2          # larger than MAX_DATAGRAM_SIZE / the MTU
    UNKNOWN_INDEX = 3      # receiver index with no installed keypair
    REPLAY = 4             # counter already seen or behind the window
    AUTH_FAILED = 5        # the MAC or tag did not verify (forged/corrupted)
    KEY_EXPIRED = 6        # keypair past reject-after-time/messages
    NO_ROUTE = 7           # outgoing packet matches no peer's allowed IPs
    SRC_NOT_ALLOWED = 8    # incoming inner source outside the peer's allowed IPs
    FIREWALL = 9           # the firewall said drop or reject
    NO_ENDPOINT = 10       # peer has no known endpoint
    STAGED_OVERFLOW = 11   # too many packets queued while handshaking
    BAD_INNER = 12         # decrypted payload is not a valid packet for the mode
    SEND_FAILED = 13       # the kernel refused a send
    CONTROL_OVERFLOW = 14  # a handshake message found the control plane's queue full
    RELAY_UNKNOWN_ID = 15  # a relay frame whose relay id names no pair for its sender (relay) or no peer (relayed)
    RELAY_BUDGET = 16      # a relay frame over its source's per-second budget


@dataclass
class Keypair:
    """Session keys for one direction pair, as installed by the control plane.

    ``local_index`` is the receiver index the peer puts in packets to us;
    ``remote_index`` is the one we put in packets to the peer.
    """

    peer_id: int
    local_index: int
    remote_index: int
    send_key: bytearray
    recv_key: bytearray
    created: float          # time.monotonic() at install
    initiator: bool
    cipher: int = 0         # ciphers.CipherKind: SECRETBOX or AEGIS256 (Phantom), CHACHA20POLY1305 (WireGuard)


@dataclass
class PeerCounters:
    """Per-peer counters.  Times are time.monotonic() seconds, 0.0 = never."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    last_rx: float = 0.0        # any authenticated packet (keepalives too)
    last_tx: float = 0.0        # any transport packet sent (keepalives too)
    last_data_rx: float = 0.0   # authenticated non-keepalive packet
    last_data_tx: float = 0.0   # non-keepalive packet sent
    send_counter: int = 0       # next counter on the current keypair
    drops: dict = field(default_factory=dict)   # Drop.name.lower() -> count


class DataPathEvents(Protocol):
    """Callbacks from a data path into whoever wires it (run on the event loop)."""

    def control_packet(self, data: bytes, addr: Address) -> None:
        """A handshake initiation, response or cookie reply arrived from ``addr``."""

    def handshake_needed(self, peer_id: int) -> None:
        """``peer_id`` has packets to send and no usable current keypair,
        or its current keypair passed rekey-after-messages."""

    def keypair_confirmed(self, peer_id: int, local_index: int) -> None:
        """The first authenticated packet arrived on a keypair installed as
        "next": it is now current."""

    def data_path_failed(self, reason: str) -> None:
        """The data path stopped moving packets for good (a fast-path worker
        died); ``reason`` says why.  Optional: called only when defined."""


class DataPath(Protocol):
    """What the control plane may ask of a data path."""

    mode: Mode

    def start(self) -> None: ...
    def close(self) -> None: ...

    # peers and routing
    # Routes (allowed IPs): every change is one step for the code that routes
    # packets (never a mix of the table before and after), and takes a prefix
    # only from a peer it names: add_peer refuses a prefix another peer holds,
    # remove_peer removes exactly the peer's own prefixes.
    def add_peer(self, peer_id: int, allowed_ips: Iterable[Network]) -> None: ...
    def remove_peer(self, peer_id: int) -> None: ...
    def set_allowed_ips(self, peer_id: int, allowed_ips: Iterable[Network]) -> None: ...
    def update_routes(self, changes: dict) -> None:
        """{peer_id: prefixes} for several peers at once; a prefix may move
        between the peers named, never from one that is not (ValueError)."""
    def lookup(self, addr) -> Optional[int]:
        """The peer an address routes to, or None."""
    def set_endpoint(self, peer_id: int, addr: Optional[Address]) -> None: ...
    def endpoint(self, peer_id: int) -> Optional[Address]: ...
    def set_test_peer(self, peer_id: Optional[int]) -> None: ...

    # keys: current / previous / next slots per peer
    def install_keypair(self, kp: Keypair, confirmed: bool) -> None:
        """Install a new keypair.  ``confirmed`` (initiator side) makes it current
        at once (current -> previous); otherwise it waits in "next" until the
        peer's first packet on it arrives.  Staged packets are flushed when a
        current keypair exists."""

    def retire_keypair(self, local_index: int) -> None:
        """Remove a keypair from every slot and zero its keys."""

    def clear_keys(self, peer_id: int) -> None:
        """Retire all of a peer's keypairs and drop its staged packets."""

    # traffic the control plane originates
    def send_control(self, data: bytes, addr: Address) -> None: ...
    def send_keepalive(self, peer_id: int) -> None: ...

    # observability
    def counters(self, peer_id: int) -> PeerCounters: ...
    def global_drops(self) -> dict: ...
    def failure(self) -> Optional[str]:
        """None while packets move; why not, once the data path failed."""
    def set_firewall(self, tables) -> None: ...
