"""Allowed IPs: the cryptokey routing table (longest-prefix match to a peer id).

Outgoing packets go to ``lookup(dst)``; an incoming packet from peer P is kept
only if ``peer_allows(P, src)``.

Layout, chosen for a fast pure-Python lookup: per address family, one dict per
prefix length in use, keyed by the address shifted right by the host bits
(``addr >> (bits - prefixlen)``), so a lookup is one ``int.from_bytes`` and at
most one dict probe per distinct prefix length present, longest first.  A
table with /32, /24 and /0 entries costs three probes at most, whatever the
number of entries.  The probe order is an immutable tuple that is replaced, never
mutated, when the set of lengths changes.

Semantics follow WireGuard's allowed IPs:

* a prefix belongs to at most one peer; inserting it for another peer moves it
  (:meth:`AllowedIPs.insert`, the low-level operation); the data paths change
  routes only through :meth:`AllowedIPs.replace`, which moves a prefix only
  between the peers a change names, so that no change can hand one peer's
  prefix to another behind its back;
* host bits of an inserted network are masked off (``10.1.2.3/8`` is ``10.0.0.0/8``);
* IPv4 and IPv6 are separate tables (an IPv4-mapped IPv6 address is IPv6).
"""

from __future__ import annotations

import ipaddress
from typing import Iterator, Optional, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_V4_BITS = 32
_V6_BITS = 128
_EMPTY: tuple = ()


def _as_network(network) -> IPNetwork:
    if isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return network
    return ipaddress.ip_network(network, strict=False)


def _addr_bytes(addr) -> bytes:
    """Slow path of lookup(): an ipaddress object to packed bytes."""
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return addr.packed
    raise TypeError("address must be 4 or 16 bytes or an ipaddress object, not %r" % (addr,))


class AllowedIPs:
    """Longest-prefix-match table from IPv4/IPv6 prefixes to integer peer ids."""

    __slots__ = ("_v4", "_v6", "_v4_tables", "_v6_tables", "_by_peer")

    def __init__(self) -> None:
        # prefixlen -> {addr >> host_bits: peer_id}
        self._v4_tables: dict[int, dict[int, int]] = {}
        self._v6_tables: dict[int, dict[int, int]] = {}
        # probe order, longest prefix first: ((host_bits, table), ...)
        self._v4: tuple = _EMPTY
        self._v6: tuple = _EMPTY
        # peer_id -> {(version, prefixlen, key)}
        self._by_peer: dict[int, set] = {}

    # --- lookups (hot path) ---------------------------------------------------
    def lookup(self, addr) -> Optional[int]:
        """The peer whose longest matching prefix holds ``addr``, or None.

        ``addr`` is the raw 4- or 16-byte address as sliced from a packet header
        (bytes, bytearray or memoryview) or an ipaddress address object.  Any
        other length raises ValueError.
        """
        try:
            n = len(addr)
        except TypeError:          # an ipaddress object
            addr = _addr_bytes(addr)
            n = len(addr)
        if n == 4:
            probes = self._v4
        elif n == 16:
            probes = self._v6
        else:
            raise ValueError("address must be 4 or 16 bytes, got %d" % n)
        a = int.from_bytes(addr, "big")
        for shift, table in probes:
            peer = table.get(a >> shift)
            if peer is not None:
                return peer
        return None

    def peer_allows(self, peer_id: int, addr) -> bool:
        """May ``peer_id`` send packets whose inner source is ``addr``?

        True iff ``addr`` routes to ``peer_id`` (its longest match is one of this
        peer's prefixes), the cryptokey-routing rule: a peer cannot use a source
        address that a more specific prefix gives to another peer.
        """
        return self.lookup(addr) == peer_id

    # --- changes (control plane, rare) -----------------------------------------
    def _locate(self, network) -> tuple:
        """(version, prefix length, key, the family's tables) of a prefix: its
        entry is ``tables[prefix length][key]``."""
        net = _as_network(network)
        version, plen = net.version, net.prefixlen
        bits = _V4_BITS if version == 4 else _V6_BITS
        key = int(net.network_address) >> (bits - plen)
        return version, plen, key, (self._v4_tables if version == 4 else self._v6_tables)

    def insert(self, network, peer_id: int) -> None:
        """Route ``network`` (an ipaddress network or a string like "10.0.0.0/24")
        to ``peer_id``, taking it from any peer that had it."""
        if not isinstance(peer_id, int):
            raise TypeError("peer_id must be an int")
        version, plen, key, tables = self._locate(network)
        table = tables.get(plen)
        if table is None:
            table = tables[plen] = {}
        old = table.get(key)
        if old is not None:
            self._by_peer[old].discard((version, plen, key))
            if not self._by_peer[old]:
                del self._by_peer[old]
        table[key] = peer_id
        self._by_peer.setdefault(peer_id, set()).add((version, plen, key))
        self._rebuild_probes(version)

    def remove(self, network) -> Optional[int]:
        """Remove one prefix; return the peer that had it (None if absent)."""
        version, plen, key, tables = self._locate(network)
        table = tables.get(plen)
        if table is None or key not in table:
            return None
        peer = table.pop(key)
        if not table:
            del tables[plen]
        entries = self._by_peer[peer]
        entries.discard((version, plen, key))
        if not entries:
            del self._by_peer[peer]
        self._rebuild_probes(version)
        return peer

    def remove_peer(self, peer_id: int) -> None:
        """Remove every prefix of ``peer_id``."""
        entries = self._by_peer.pop(peer_id, None)
        if not entries:
            return
        for version, plen, key in entries:
            tables = self._v4_tables if version == 4 else self._v6_tables
            table = tables[plen]
            del table[key]
            if not table:
                del tables[plen]
        self._rebuild_probes(4)
        self._rebuild_probes(6)

    def set_peer(self, peer_id: int, networks) -> None:
        """Replace all of ``peer_id``'s prefixes with ``networks``."""
        nets = [_as_network(n) for n in networks]    # validate before changing anything
        self.remove_peer(peer_id)
        for net in nets:
            self.insert(net, peer_id)

    def replace(self, changes) -> tuple[list, list]:
        """Replace the prefixes of every peer in ``changes`` ({peer_id:
        networks}) in one step.  A prefix may move between peers that
        ``changes`` names; a prefix that a peer *not* named holds, or one given
        to two named peers, is refused (ValueError) and nothing changes, so a
        change never takes a prefix from a peer it does not mention.

        Returns (prefixes no peer holds any more, [(prefix, peer_id) whose
        owner is new]): what a second table kept in step must change."""
        wanted: dict = {}
        for peer_id, networks in changes.items():
            if not isinstance(peer_id, int):
                raise TypeError("peer_id must be an int")
            for n in networks:
                net = _as_network(n)
                other = wanted.get(net)
                if other is not None and other != peer_id:
                    raise ValueError("%s given to peers %d and %d in one change" % (net, other, peer_id))
                wanted[net] = peer_id
        for net, peer_id in wanted.items():
            holder = self.owner(net)
            if holder is not None and holder != peer_id and holder not in changes:
                raise ValueError("%s is peer %d's; a change moves a prefix only between the peers "
                                 "it names" % (net, holder))
        old = [net for peer_id in changes for net in self.peer_networks(peer_id)]
        gone = [net for net in old if net not in wanted]
        moved = [(net, peer_id) for net, peer_id in wanted.items() if self.owner(net) != peer_id]
        for peer_id in changes:
            self.remove_peer(peer_id)
        for net, peer_id in wanted.items():
            self.insert(net, peer_id)
        return gone, moved

    def clear(self) -> None:
        self._v4_tables.clear()
        self._v6_tables.clear()
        self._by_peer.clear()
        self._v4 = self._v6 = _EMPTY

    def _rebuild_probes(self, version: int) -> None:
        if version == 4:
            self._v4 = tuple((_V4_BITS - plen, self._v4_tables[plen])
                             for plen in sorted(self._v4_tables, reverse=True))
        else:
            self._v6 = tuple((_V6_BITS - plen, self._v6_tables[plen])
                             for plen in sorted(self._v6_tables, reverse=True))

    # --- introspection --------------------------------------------------------
    def entries(self) -> list[tuple[IPNetwork, int]]:
        """All (network, peer_id) pairs, IPv4 first, then by address and length."""
        out = []
        for plen, table in self._v4_tables.items():
            for key, peer in table.items():
                out.append((ipaddress.IPv4Network((key << (_V4_BITS - plen), plen)), peer))
        for plen, table in self._v6_tables.items():
            for key, peer in table.items():
                out.append((ipaddress.IPv6Network((key << (_V6_BITS - plen), plen)), peer))
        out.sort(key=lambda e: (e[0].version, e[0].network_address, e[0].prefixlen))
        return out

    def peer_networks(self, peer_id: int) -> list[IPNetwork]:
        """The prefixes of one peer, sorted like :meth:`entries`.  Costs the
        peer's own prefixes, not the whole table."""
        out = []
        for version, plen, key in self._by_peer.get(peer_id, ()):
            if version == 4:
                out.append(ipaddress.IPv4Network((key << (_V4_BITS - plen), plen)))
            else:
                out.append(ipaddress.IPv6Network((key << (_V6_BITS - plen), plen)))
        out.sort(key=lambda n: (n.version, n.network_address, n.prefixlen))
        return out

    def owner(self, network) -> Optional[int]:
        """The peer that has exactly this prefix, or None."""
        net = _as_network(network)
        bits = _V4_BITS if net.version == 4 else _V6_BITS
        tables = self._v4_tables if net.version == 4 else self._v6_tables
        table = tables.get(net.prefixlen)
        if table is None:
            return None
        return table.get(int(net.network_address) >> (bits - net.prefixlen))

    def peers(self) -> set[int]:
        return set(self._by_peer)

    def __len__(self) -> int:
        return sum(len(t) for t in self._v4_tables.values()) + \
            sum(len(t) for t in self._v6_tables.values())

    def __iter__(self) -> Iterator[tuple[IPNetwork, int]]:
        return iter(self.entries())

    def __repr__(self) -> str:
        return "<AllowedIPs %d prefixes, %d peers>" % (len(self), len(self._by_peer))
