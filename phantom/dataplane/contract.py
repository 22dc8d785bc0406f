"""The contract between the control plane and a data path, complete.

Both data paths -- the pure-Python reference
(:class:`phantom.dataplane.reference.ReferenceDataPath`) and the Cython fast
path (:class:`phantom.dataplane.fast.FastDataPath`) -- implement every member
of :class:`DataPath`; the code that wires the planes (today phantom/daemon.py)
calls nothing else and needs no ``hasattr`` probe.  tests/contract/ is the
conformance suite: its behaviour tests run on both paths, and
tests/contract/test_contract_surface.py checks that both implement this
Protocol and that nothing outside the data plane calls a data path member
that is not declared here.

A data path reports through :class:`DataPathEvents`, which whoever wires it
implements.  The types exchanged (Keypair, PeerCounters, RelayVia, Mode,
Drop) are in :mod:`phantom.dataplane.types`.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

from .types import (RELAY_BYTES_PER_SECOND, RELAY_PACKETS_PER_SECOND, Address, Keypair, Mode, Network,
                    PeerCounters)


class DataPathEvents(Protocol):
    """Callbacks from a data path into whoever wires it (run on the event loop)."""

    def control_packet(self, data: bytes, addr: Address) -> None:
        """A handshake initiation, response or cookie reply (or a peer control
        message) arrived from ``addr``."""

    def control_packets(self, items: list) -> None:
        """Optional: several ``(data, addr)`` control packets that arrived
        together, in order (the fast path drains them in batches); without
        it, :meth:`control_packet` is called for each."""

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
    """What the control plane may ask of a data path: all of it."""

    mode: Mode

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Start moving packets (register readers / start the workers)."""

    def close(self) -> None:
        """Stop, and zero every key the data path holds."""

    def failure(self) -> Optional[str]:
        """None while packets move; why not, once the data path failed."""

    # ---------------------------------------------------- peers and routing
    # Routes (allowed IPs): every change is one step for the code that routes
    # packets (never a mix of the table before and after), and takes a prefix
    # only from a peer it names: add_peer refuses a prefix another peer holds,
    # remove_peer removes exactly the peer's own prefixes.
    def add_peer(self, peer_id: int, allowed_ips: Iterable[Network]) -> None: ...

    def remove_peer(self, peer_id: int) -> None:
        """Forget the peer: its routes, keys (zeroed), staged packets, relay state."""

    def set_allowed_ips(self, peer_id: int, allowed_ips: Iterable[Network]) -> None: ...

    def update_routes(self, changes: dict) -> None:
        """{peer_id: prefixes} for several peers at once; a prefix may move
        between the peers named, never from one that is not (ValueError)."""

    def lookup(self, addr) -> Optional[int]:
        """The peer an address routes to, or None."""

    def set_endpoint(self, peer_id: int, addr: Optional[Address]) -> None:
        """Where the peer's datagrams go: (host, port), a RelayVia, or None."""

    def endpoint(self, peer_id: int) -> Optional[Address]: ...

    def set_test_peer(self, peer_id: Optional[int]) -> None:
        """Mode.TEST: the peer the test port's datagrams go to."""

    # ------------------------------------------- NAT traversal relays (type 6)
    def set_relay(self, enabled: bool, bytes_per_second: int = RELAY_BYTES_PER_SECOND,
                  packets_per_second: int = RELAY_PACKETS_PER_SECOND) -> None:
        """Relay role: forward relay frames between our peers (never to our
        device), each source peer within the per-second budget (over it:
        ``relay_budget`` drops)."""

    def set_relay_route(self, peer_id: int, relay_peer: int, relay_id: int) -> None:
        """Relayed client: relay frames from ``relay_peer`` tagged ``relay_id``
        carry ``peer_id``'s messages."""

    def set_relay_pair(self, src_peer: int, relay_id: int, dest_peer) -> None:
        """On a relay: frames from ``src_peer`` tagged ``relay_id`` go to
        ``dest_peer`` (None: no longer).  Any other (source, id) is a counted
        ``relay_unknown_id`` drop."""

    @property
    def relayed(self) -> dict:
        """The relay role's counters ({"forwarded", "budget", ...})."""

    # ------------------------------------ keys: current / previous / next slots
    def install_keypair(self, kp: Keypair, confirmed: bool) -> None:
        """Install a new keypair.  ``confirmed`` (initiator side) makes it current
        at once (current -> previous); otherwise it waits in "next" until the
        peer's first packet on it arrives.  Staged packets are flushed when a
        current keypair exists."""

    def retire_keypair(self, local_index: int) -> None:
        """Remove a keypair from every slot and zero its keys."""

    def clear_keys(self, peer_id: int) -> None:
        """Retire all of a peer's keypairs and drop its staged packets."""

    # ------------------------------------- traffic the control plane originates
    def send_control(self, data: bytes, addr: Address) -> None:
        """A handshake or peer control message to ``addr`` (a RelayVia wraps it)."""

    def send_keepalive(self, peer_id: int) -> None: ...

    # ------------------------------------------------------------- policy
    def set_firewall(self, firewall) -> None:
        """The firewall (dataplane.firewall.build's result) or None."""

    # ------------------------------------------------------- observability
    def counters(self, peer_id: int) -> PeerCounters: ...

    def counters_many(self, peer_ids: list) -> dict:
        """{peer id: PeerCounters} for ``peer_ids``, equal to
        :meth:`counters` of each, read in one go (the timer tick's read:
        the fast path holds its table lock once, not once a peer)."""

    def counters_changed(self, peer_ids: list) -> dict:
        """:meth:`counters_many` for only those of ``peer_ids`` whose counter
        times (last_rx, last_tx, last_data_rx, last_data_tx) changed since
        this method last reported them, or that it never reported (a peer
        removed and added again counts as never reported).  For one reader,
        the timer tick, which keeps what it was last given for the others:
        a hub whose 10,000 peers handshook and went quiet reads almost
        nothing a tick."""

    def global_drops(self) -> dict:
        """{Drop.name.lower(): count} over every drop, peer known or not."""

    @property
    def worker_stats(self) -> Optional[dict]:
        """The fast path's per-stage worker counters, summed (batches,
        packets, capped bursts); None on a data path without workers."""


class DataPathBase:
    """What both data paths keep of the constructor they share (mode, the UDP
    socket, the device fd or the test socket, the events, the tunables, the
    MTU, the event loop)."""

    def __init__(self, mode: Mode, udp_sock, device_fd: Optional[int], test_sock, events: DataPathEvents,
                 tunables, mtu: int, loop) -> None:
        self.mode = Mode(mode)
        self._udp = udp_sock
        self._fd = device_fd
        self._test = test_sock
        self._events = events
        self._t = tunables
        self._mtu = mtu
        self._loop = loop
