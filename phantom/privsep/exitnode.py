"""The exit node's side (issue 22 item 3, plain configured peers): forward
and masquerade the traffic of the peers allowed to use this node as their
exit, refuse everyone else's, through the privileged helper.

With ``exit_node = true`` in ``[interface]`` the helper turns IPv4 and IPv6
forwarding on (back to what they were on stop) and writes the daemon's
nftables table ``inet phantom-<device>``:

* chain ``fwd`` (filter, forward): from the device, the allowed peers'
  prefixes (their ``allowed_ips``) are accepted; to the device, only
  established/related traffic; anything else from or to the device is
  dropped (counted).  Traffic between the host's other interfaces is left to
  the host's own rules (policy accept);
* chain ``nat`` (nat, postrouting): the allowed peers' traffic leaving by
  another interface is masqueraded to that interface's address.

A peer is allowed with ``allow_exit = true`` in its ``[[peer]]``; ``phantom
reload`` applies changes to that list (one nftables transaction).  The
client side is a full tunnel to the exit (docs/routes.md).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Iterable, Optional

from .client import PrivClient, PrivError

log = logging.getLogger("phantom.daemon")


class ExitError(OSError):
    pass


def _by_family(prefixes: Iterable) -> dict:
    nets = sorted({ipaddress.ip_network(n) for n in prefixes}, key=lambda n: (n.version, n))
    return {v: [str(n) for n in nets if n.version == v] for v in (4, 6)}


def exit_table(device: str, prefixes: Iterable, routes: Optional[tuple] = None,
               more_routes: Iterable = ()) -> dict:
    """The exit's table (nftspec form) for the allowed peers' ``prefixes``;
    with ``routes`` = (sources, destinations), a subnet router's too: from
    the device, the sources (the peers with ``allow_routes``) may reach the
    destinations (``advertise_routes``), routed as they are (no masquerade:
    the LAN routes the tunnel's subnet back through this node);
    ``more_routes``: more (sources, destinations) pairs (a network's members
    and the routes approved in this node's certificate)."""
    fams = _by_family(prefixes)
    rules = []
    for v in (4, 6):
        if fams[v]:
            rules.append({"chain": "fwd", "match": [{"field": "iifname", "value": device},
                                                    {"field": "saddr", "value": fams[v]}], "verdict": "accept"})
    for pair in ([routes] if routes is not None else []) + list(more_routes):
        src, dst = _by_family(pair[0]), _by_family(pair[1])
        for v in (4, 6):
            if src[v] and dst[v]:
                rules.append({"chain": "fwd", "match": [{"field": "iifname", "value": device},
                                                        {"field": "saddr", "value": src[v]},
                                                        {"field": "daddr", "value": dst[v]}], "verdict": "accept"})
    rules += [
        {"chain": "fwd", "match": [{"field": "oifname", "value": device},
                                   {"field": "ct_state", "value": ["established", "related"]}], "verdict": "accept"},
        {"chain": "fwd", "match": [{"field": "iifname", "value": device}], "verdict": "drop", "counter": True},
        {"chain": "fwd", "match": [{"field": "oifname", "value": device}], "verdict": "drop", "counter": True},
    ]
    for v in (4, 6):
        if fams[v]:
            rules.append({"chain": "nat", "match": [{"field": "oifname", "op": "!=", "value": device},
                                                    {"field": "saddr", "value": fams[v]}], "verdict": "masquerade"})
    return {"chains": [{"name": "fwd", "type": "filter", "hook": "forward", "priority": 0, "policy": "accept"},
                       {"name": "nat", "type": "nat", "hook": "postrouting", "priority": 100}],
            "rules": rules}


def allowed_prefixes(peers) -> list:
    """The prefixes of the peers (PeerConfig) allowed to use this exit."""
    return [n for p in peers if p.allow_exit for n in p.allowed_ips]


def subnet_routes(settings) -> Optional[tuple]:
    """A subnet router's (sources, destinations): the prefixes of the peers
    with ``allow_routes`` and ``advertise_routes``; None when it advertises none."""
    if not settings.advertise_routes:
        return None
    return ([n for p in settings.peers if p.allow_routes for n in p.allowed_ips],
            list(settings.advertise_routes))


class ExitNode:
    def __init__(self, client: PrivClient, device: str):
        self.client = client
        self.device = device
        self.prefixes: list = []
        self.routes: Optional[tuple] = None     # a subnet router's (sources, destinations)
        self.forwarding = False
        # a network's part (issue 22, node/netroutes.py): the members allowed to
        # use this exit, and (members, approved routes) for a subnet router
        self.network_exit: list = []
        self.network_routes: Optional[tuple] = None

    def start(self, prefixes: Iterable, routes: Optional[tuple] = None) -> None:
        """Forwarding on, the table written; ExitError naming what failed."""
        try:
            for fam in (4, 6):
                self.client.set_forwarding(fam, True)
        except PrivError as exc:
            raise ExitError("exit node: cannot turn forwarding on: %s" % exc.text) from None
        self.forwarding = True
        self.sync(prefixes, routes, force=True)

    def sync(self, prefixes: Iterable, routes: Optional[tuple] = None, force: bool = False) -> bool:
        """Write the table for ``prefixes`` (and ``routes``) if they changed;
        True when written (one nftables transaction)."""
        want = sorted({str(ipaddress.ip_network(n)) for n in prefixes})
        rt = None if routes is None else tuple(sorted({str(ipaddress.ip_network(n)) for n in part})
                                               for part in routes)
        if want == self.prefixes and rt == self.routes and not force:
            return False
        try:
            self.client.nft_replace(exit_table(self.device, want + self.network_exit, rt,
                                               [self.network_routes] if self.network_routes else []))
        except PrivError as exc:
            raise ExitError("forwarding: nftables: %s" % exc.text) from None
        if want != self.prefixes or force:
            log.info("exit node: forwarding and masquerading for %s", ", ".join(want) or "no peer")
        if rt != self.routes:
            if rt is None:
                log.info("subnet router: no routes advertised any more")
            else:
                log.info("subnet router: %s reach %s", ", ".join(rt[0]) or "no peer", ", ".join(rt[1]))
        self.prefixes, self.routes = want, rt
        return True

    def set_network(self, exit_sources: Iterable, routes: Optional[tuple]) -> bool:
        """A network's part of the table: ``exit_sources`` (the network's
        prefixes when this member is an approved exit) are forwarded and
        masqueraded; ``routes`` = (the network's prefixes, the approved
        routes) forwarded as a subnet router's.  True when rewritten."""
        ex = sorted({str(ipaddress.ip_network(n)) for n in exit_sources})
        rt = None if not routes or not routes[1] else tuple(
            sorted({str(ipaddress.ip_network(n)) for n in part}) for part in routes)
        if ex == self.network_exit and rt == self.network_routes:
            return False
        self.network_exit, self.network_routes = ex, rt
        self.sync(self.prefixes, self.routes, force=True)
        log.info("network: forwarding for members: exit %s; routes %s",
                 "on" if ex else "off", ", ".join(rt[1]) if rt else "none")
        return True

    def status(self) -> dict:
        return {"allowed": list(self.prefixes), "forwarding": self.forwarding,
                "network": {"exit": list(self.network_exit),
                            "routes": list(self.network_routes[1]) if self.network_routes else []},
                "routes": None if self.routes is None else {"from": list(self.routes[0]),
                                                            "to": list(self.routes[1])}}
