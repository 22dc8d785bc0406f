"""The engine's allowed IPs: :class:`AllowedIPs`, the part of
:class:`phantom.control.engine.Engine` that keeps every peer's prefixes.  It
is a mixin, like :mod:`phantom.control.timers`: the engine inherits it, and
its methods work on the engine's own state (``peers``, ``_by_prefix``,
``_exclusive``).

The engine keeps every peer's allowed IPs (the data path routes by its
own copy, changed in step by whoever changes these).  Invariants, held
by add_peer and set_allowed_ips and checked by route_problem:
  * a prefix belongs to one peer at most;
  * an exclusive peer's prefix (a peer added at run time: `open`, a
    directory record's claim) overlaps no other peer's prefix, in either
    direction, IPv4 and IPv6 alike: with longest-prefix routing, a
    prefix inside another peer's would take part of that peer's traffic.
    Overlaps between peers of the config file are the administrator's
    (the longest prefix wins), as in WireGuard.  A default route (``/0``:
    an exit in use, issue 22) overlaps nothing here: with longest-prefix
    routing it takes only what no other prefix holds, nobody's traffic.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from .peer import Peer

__all__ = ["AllowedIPs", "networks", "overlap"]


def networks(nets) -> list:
    """Prefixes as ipaddress networks (strict: no host bits), each once, in order."""
    out, seen = [], set()
    for n in nets:
        if not isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            n = ipaddress.ip_network(n)
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def overlap(a, b) -> bool:
    """Do two prefixes share an address (one holds the other)?"""
    return a.version == b.version and (a.subnet_of(b) or b.subnet_of(a))


def _claims_over(a, b) -> bool:
    """Would ``a`` and ``b`` on two peers take traffic from one another?  A
    default route never does (the longest prefix wins)."""
    return a.prefixlen != 0 and b.prefixlen != 0 and overlap(a, b)


class AllowedIPs:
    """Allowed-IP bookkeeping and its invariants (see the module text)."""

    def route_problem(self, changes: dict, new_exclusive: bool = False) -> Optional[str]:
        """What would break the invariants above if each peer in ``changes``
        ({peer id, or None for a peer about to be added: prefixes}) had just
        those prefixes; None when nothing would.  ``new_exclusive``: the
        peer about to be added is exclusive."""
        found = self.route_conflict(changes, {None: new_exclusive})
        return None if found is None else found[2]

    def route_conflict(self, changes: dict, exclusive: Optional[dict] = None):
        """:meth:`route_problem` for a change of several peers at once, some
        of them new: ``changes`` maps a peer id, or any other label for a
        peer not added yet, to the prefixes it would have; ``exclusive``
        overrides whether a key's peer is (or will be) exclusive (default:
        an existing peer's flag, False for a new one).  Returns the first
        problem as (prefix, key in ``changes`` it was given to, message), or
        None.  Pairwise checks, so every step towards a valid result is valid
        too.  Costs the changed prefixes times the exclusive peers' (times
        every prefix for an exclusive peer's change), never a walk of all
        peers otherwise."""
        exclusive = exclusive or {}

        def is_exclusive(key) -> bool:
            if key in exclusive:
                return bool(exclusive[key])
            peer = self.peers.get(key) if isinstance(key, int) else None
            return peer.exclusive if peer is not None else False

        wanted: dict = {}
        for key, nets in changes.items():
            for n in networks(nets):
                other = wanted.get(n, key)
                if other != key:
                    return n, key, "%s is given to both %s and %s" % (n, self._route_name(other),
                                                                     self._route_name(key))
                wanted[n] = key
        for n, key in wanted.items():
            holder = self._by_prefix.get(n)
            if holder is not None and holder.id != key and holder.id not in changes:
                return n, key, "%s is peer %s's" % (n, holder.name)
        claims = [(m, key) for m, key in wanted.items() if is_exclusive(key)]
        for n, key in wanted.items():
            if is_exclusive(key):
                # a claim: against every other prefix, the changed ones as they will be
                for m, holder in self._holders_overlapping(n):
                    if holder.id not in changes and _claims_over(n, m):
                        return n, key, "%s overlaps peer %s's %s" % (n, holder.name, m)
                for m, other in wanted.items():
                    if other != key and _claims_over(n, m):
                        return n, key, "%s overlaps %s's %s" % (n, self._route_name(other), m)
            else:
                for ep in self._exclusive.values():
                    if ep.id in changes:
                        continue               # with its new prefixes, in ``wanted``
                    for m in ep.allowed_ips:
                        if _claims_over(n, m):
                            return n, key, ("%s overlaps peer %s's %s (a peer added at run time)"
                                            % (n, ep.name, m))
                for m, other in claims:
                    if other != key and _claims_over(n, m):
                        return n, key, ("%s overlaps %s's %s (a peer added at run time)"
                                        % (n, self._route_name(other), m))
        return None

    def _holders_overlapping(self, n):
        """(prefix, holder) of the held prefixes that may overlap ``n``: for a
        host route (a network member's /32 and /128) only its supernets can,
        so they are looked up (33 or 129 lookups, whatever the number of
        peers); any other prefix is compared with every held one."""
        if n.prefixlen != n.max_prefixlen:
            return list(self._by_prefix.items())
        cls, addr, out = type(n), int(n.network_address), []
        for plen in range(n.max_prefixlen + 1):
            host = n.max_prefixlen - plen
            m = cls((addr >> host << host, plen))
            holder = self._by_prefix.get(m)
            if holder is not None:
                out.append((m, holder))
        return out

    def adopt(self, peer_id: int) -> None:
        """The config file owns this peer now (a reload named its key): not
        dynamic, and its prefixes are the file's, not a run-time claim."""
        peer = self.peers[peer_id]
        peer.dynamic = False
        self._unindex_routes(peer)
        peer.exclusive = False
        self._index_routes(peer)

    def prefix_holder(self, network) -> Optional[Peer]:
        """The peer that has exactly this prefix, or None."""
        return self._by_prefix.get(networks([network])[0])

    def overlapping(self, network) -> list:
        """(peer, prefix) of every prefix that shares an address with
        ``network`` (a walk of every prefix: for rare, deliberate changes)."""
        n = networks([network])[0]
        return [(holder, m) for m, holder in self._by_prefix.items() if overlap(n, m)]

    def _route_name(self, key) -> str:
        if isinstance(key, int) and key in self.peers:
            return "peer %s" % self.peers[key].name
        return "the new peer" if key is None else str(key)

    def set_allowed_ips(self, changes: dict) -> None:
        """Give each peer in ``changes`` ({peer id: prefixes}) exactly those
        prefixes, all at once (a prefix may move between the peers named);
        ValueError naming the problem, nothing changed, when the result would
        break the invariants (:meth:`route_problem`)."""
        nets = {pid: networks(v) for pid, v in changes.items()}
        for pid in nets:
            if pid not in self.peers:
                raise KeyError(pid)
        problem = self.route_problem(nets)
        if problem is not None:
            raise ValueError(problem)
        for pid in nets:
            self._unindex_routes(self.peers[pid])
        for pid, ns in nets.items():
            peer = self.peers[pid]
            peer.allowed_ips = ns
            self._index_routes(peer)
            self._wake(peer)

    def _index_routes(self, peer: Peer) -> None:
        for n in peer.allowed_ips:
            self._by_prefix[n] = peer
        if peer.exclusive:
            self._exclusive[peer.id] = peer

    def _unindex_routes(self, peer: Peer) -> None:
        for n in peer.allowed_ips:
            if self._by_prefix.get(n) is peer:
                del self._by_prefix[n]
        self._exclusive.pop(peer.id, None)
