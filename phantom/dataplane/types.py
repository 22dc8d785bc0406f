"""The types the control plane and a data path exchange.

The contract itself (:class:`~phantom.dataplane.contract.DataPath`,
:class:`~phantom.dataplane.contract.DataPathEvents`) is in
:mod:`phantom.dataplane.contract`.  The control plane never touches packets;
the data path never runs a handshake.  They meet here:

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

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)
Network = "ipaddress.IPv4Network | ipaddress.IPv6Network"


class Mode(str, enum.Enum):
    TUN = "tun"        # layer 3: IP packets
    TAP = "tap"        # layer 2: Ethernet frames
    TEST = "test"      # the prototype's UDP test port: datagram payloads


# A relay's default budget per source peer and second (DataPath.set_relay):
# above what one relayed TCP stream reaches on a 2-core machine (bench/nat.py,
# docs/nat.md "Measured"), so the budget stops a flood, not a transfer.
RELAY_BYTES_PER_SECOND = 625_000_000        # 5 Gbit/s
RELAY_PACKETS_PER_SECOND = 500_000


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
