"""Subnet routes and exits in a network, on a member (issue 22; the
directory's side is phantom/network/routes.py).

* **Advertising**: ``[interface] advertise_routes`` and ``[interface]
  exit_node = true`` on a member are its advertisement: the daemon signs it
  with its node key and sends it to the directory (``POST
  /network/advertise``) at start and whenever a reload changes it.  It
  grants nothing until the admin approves (``phantom network routes
  approve``).
* **Every member** routes an approved prefix to the member whose
  certificate carries it -- primary only: overlapping approvals are
  settled by :func:`phantom.network.routes.assign` -- through the peer door
  (:meth:`PeerTable.set_routes`: the engine, the data path and the kernel
  routes in one step), and offers an approved exit to ``phantom exit use``
  (:meth:`PeerTable.set_offers`).  A revoked or withdrawn route leaves with
  the next member event (the stream is polled every second).
* **On the router itself**: its own reissued certificate arrives on the
  stream too; the forwarding table (privsep/exitnode.py) then lets the
  network's members reach the approved routes (only those that are still
  in ``advertise_routes``), and, as an approved exit, forwards and
  masquerades the members' traffic.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Optional

from ..network.canonical import b64
from ..network.routes import assign

log = logging.getLogger("phantom.daemon")


class NetworkRoutes:
    """The routes part of one :class:`~phantom.node.membership.Membership` ``m``."""

    def __init__(self, m):
        self.m = m
        self.shares: dict = {}           # key -> (primary prefixes, standby [(prefix, key)])
        self._routed: set = set()        # member keys whose peer has routes beyond its addresses
        self.sent: Optional[tuple] = None    # the advertisement the directory acknowledged
        self.last_error: Optional[str] = None

    # ------------------------------------------------------------ advertising
    def wanted(self) -> tuple:
        """(routes, exit) this node advertises: its [interface] keys
        (``advertise_routes`` as the last reload left it; ``exit_node``
        needs a restart, as for any exit node)."""
        d = self.m.d
        reloader = getattr(d, "reloader", None)
        now = getattr(reloader, "baseline", None) or d.s
        routes = tuple(sorted({ipaddress.ip_network(n)
                               for n in getattr(now, "advertise_routes", ())},
                              key=lambda n: (n.version, n)))
        return routes, bool(getattr(d.s, "exit_node", False))

    def should_send(self) -> bool:
        want = self.wanted()
        if want == self.sent:
            return False
        if self.sent is None and not want[0] and not want[1]:
            # nothing to advertise: send only to withdraw what is still approved
            return bool(self.m.cert.routes or self.m.cert.exit)
        return True

    # ------------------------------------------------------------ every member
    def allowed(self, cert) -> list:
        """The prefixes the member's peer holds: its addresses and its primary routes."""
        return list(cert.addresses) + list(self.shares.get(cert.key, ((), []))[0])

    def refresh(self) -> None:
        """Recompute who routes what (routers only) and bring the member peers in line."""
        m = self.m
        peers = m.d.peers
        routers = {r.key: r.cert for r in m.members.routers()}
        self.shares = assign(routers.values())
        exits = getattr(m.d, "exits", None)
        if exits is not None and exits.peer_id is not None:
            peer = peers.engine.peers.get(exits.peer_id)
            if peer is not None and m.is_member_peer(peer):
                cert = routers.get(peer.public_key)
                if cert is None or not cert.exit:
                    exits.off(why=" (the network no longer approves it as exit)")
        changes, offers = {}, {}
        for key in set(routers) | self._routed:
            peer = m.member_peer(key)
            if peer is None:
                continue
            cert = routers.get(key) or m.members.cert(key)
            if cert is None:
                continue
            want = self.allowed(cert) + list(peers.extra_routes(peer))
            if set(want) != set(peer.allowed_ips):
                changes[peer.id] = want
            offers[peer.id] = {"exit": cert.exit, "routes": self.shares.get(key, ((), []))[0]}
        if changes:
            try:
                peers.set_routes(changes)
            except ValueError:
                for pid, want in changes.items():       # one by one: the others still get theirs
                    try:
                        peers.set_routes({pid: want})
                    except ValueError as exc:
                        log.warning("network: the routes of member %s not installed: %s",
                                    peers.engine.peers[pid].name, exc)
        if offers:
            peers.set_offers(offers)
        self._routed = {key for key in routers if key in m.members}
        for pid, want in changes.items():
            peer = peers.engine.peers.get(pid)
            if peer is not None:
                log.info("network: member %s routes %s", peer.name,
                         ", ".join(str(n) for n in peers.own_routes(peer)))
        self.own()

    # ------------------------------------------------------------ the router itself
    def own(self) -> None:
        """This member's approved routes and exit: forwarding for the members."""
        m = self.m
        kr = getattr(m.d, "kernel_routes", None)
        node = getattr(kr, "exit", None) if kr is not None else None
        if node is None:
            return
        d = m.definition
        net = [d.ipv4, d.ipv6]
        advertised, exit_on = self.wanted()
        routes = [r for r in m.cert.routes
                  if any(r.version == a.version and r.subnet_of(a) for a in advertised)]
        try:
            node.set_network(net if (m.cert.exit and exit_on) else [], (net, routes))
        except OSError as exc:
            log.warning("network: forwarding for the approved routes not changed: %s", exc)
        resolver = getattr(m.d, "exit_dns", None)
        if resolver is not None and m.cert.exit and exit_on:
            resolver.set_allowed([n for p in m.d.s.peers if p.allow_exit for n in p.allowed_ips]
                                 + net)

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        m = self.m
        names = {}
        for r in m.members.routers():
            names[r.key] = r.cert.name
        rows = []
        for r in sorted(m.members.routers(), key=lambda r: r.cert.name):
            primary, standby = self.shares.get(r.key, ((), []))
            rows.append({"name": r.cert.name, "exit": r.cert.exit,
                         "approved": [str(n) for n in r.cert.routes],
                         "primary": [str(n) for n in primary],
                         "standby": [{"prefix": str(n), "behind": names.get(k, b64(k))}
                                     for n, k in standby]})
        want = self.wanted()
        return {"advertised": [str(n) for n in want[0]], "advertised_exit": want[1],
                "advertisement_sent": self.sent is not None and self.sent == want,
                "advertisement_error": self.last_error,
                "approved": [str(n) for n in m.cert.routes], "exit": m.cert.exit,
                "members": rows}
