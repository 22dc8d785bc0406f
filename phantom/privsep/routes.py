"""The daemon's kernel routes through its privileged helper.

:func:`start_for_device` is phantomd's start-up step for a TUN/TAP device:
it starts the helper, brings the link up, adds the interface addresses and
routes every configured peer's allowed IPs that the addresses do not
already cover (netlink, in the helper: no ``ip`` is run).
:class:`KernelRoutes` remembers which prefixes the kernel routes into the
device for us, so that ``phantom reload`` can add the routes a new file
needs (all or nothing) and remove those no peer has any more.

A route that cannot be installed is an error naming it, never a log line
claiming it (issue 18, item 16): the start fails, the reload is refused.
Full tunnels (policy routing) and the kill switch: :class:`KernelRoutes`.
(The home of this module in the target layout is phantom/node/routes.py.)
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Iterable, Optional

from .client import PrivClient, PrivError, spawn
from .protocol import DEFAULT_TABLE, KILLSWITCH_TABLE, PRIORITY_BASE, Allowlist

log = logging.getLogger("phantom.daemon")


class RouteError(OSError):
    """``net`` cannot be routed into the device: ``reason`` says why."""

    def __init__(self, net, device: str, reason: str):
        super().__init__("cannot route %s into %s: %s" % (net, device, reason))
        self.net = net
        self.device = device
        self.reason = reason


class KillSwitchError(RouteError):
    """The kill switch's table cannot be written or removed."""

    def __init__(self, device: str, reason: str):
        OSError.__init__(self, "kill switch (nftables table inet %s) for %s: %s" % (KILLSWITCH_TABLE, device, reason))
        self.net = "kill switch"
        self.device = device
        self.reason = reason


def _explain(net, device: str, exc: PrivError) -> str:
    existing = exc.reply.get("existing")
    if existing:
        return ("the kernel already routes %s through %s. Remove that route or leave %s out of "
                "allowed_ips" % (net, ", ".join(existing), net))
    return exc.text


SUPPRESS_PRIORITY = PRIORITY_BASE        # table main suppress_prefixlength 0
TUNNEL_PRIORITY = PRIORITY_BASE + 1      # not fwmark T table T


def killswitch_table(device: str, fwmark: int, families) -> dict:
    """The kill switch (nftspec form): on output, only loopback, the tunnel's
    device, the daemon's own marked UDP datagrams and link-local IPv6
    (neighbour discovery) leave; everything else of a fully tunnelled
    family is rejected."""
    rules = [{"chain": "out", "match": [{"field": "oifname", "value": ["lo", device]}], "verdict": "accept"},
             {"chain": "out", "match": [{"field": "mark", "value": fwmark}], "verdict": "accept"}]
    if 6 in families:
        rules.append({"chain": "out", "match": [{"field": "daddr", "value": ["fe80::/10", "ff02::/16"]}],
                      "verdict": "accept"})
    for fam in sorted(families):
        rules.append({"chain": "out", "match": [{"field": "nfproto", "value": "ipv%d" % fam}],
                      "verdict": "reject", "counter": True})
    return {"chains": [{"name": "out", "type": "filter", "hook": "output", "priority": 0, "policy": "accept"}],
            "rules": rules}


class KernelRoutes:
    """Which prefixes the kernel routes into ``device`` for the daemon.

    A prefix of length 0 (``0.0.0.0/0``, ``::/0``) is a full tunnel and is
    done like wg-quick: the default route goes into the daemon's own table
    T (its fwmark, see :func:`~phantom.privsep.protocol.table_for_port`),
    rule ``not fwmark T table T`` sends everything not marked there, rule
    ``table main suppress_prefixlength 0`` before it lets the main table's
    more specific routes (the LAN, the tunnel's own subnet) win; the
    daemon's UDP socket carries mark T, so its datagrams to the peers'
    endpoints keep using the main table (no loop).  With ``kill_switch``
    the nftables table ``phantom-killswitch`` rejects the rest of the
    host's egress of that family while the full tunnel is configured."""

    def __init__(self, client: PrivClient, device: str, connected: Iterable, table: int = DEFAULT_TABLE,
                 fwmark: int = DEFAULT_TABLE, marked: bool = True, kill_switch: bool = False):
        self.client = client
        self.device = device
        self.connected = [ipaddress.ip_network(c) for c in connected]
        self.table = table
        self.fwmark = fwmark
        self.marked = marked            # the UDP socket carries fwmark (SO_MARK, set while root)
        self.kill_switch = kill_switch
        self.installed: set = set()     # added by the helper for us: removed when no peer has them
        self.present: set = set()       # the kernel had them through the device already: never removed
        self.full: set = set()          # families (4, 6) with a full tunnel: rules installed
        self.killswitch_on: tuple = ()  # the families the kill switch table blocks
        self.exit = None                # exitnode.ExitNode when exit_node = true

    def needed(self, prefixes: Iterable) -> list:
        """The prefixes that need a route of their own: not inside an
        interface subnet (the connected route holds those)."""
        out = []
        for net in prefixes:
            net = ipaddress.ip_network(net)
            if net.prefixlen and any(net.version == c.version and net.subnet_of(c) for c in self.connected):
                continue
            if net not in out:
                out.append(net)
        return out

    @property
    def routed(self) -> set:
        return self.installed | self.present

    def _rules(self, family: int) -> list:
        return [dict(family=family, priority=SUPPRESS_PRIORITY, table="main", suppress_prefixlength=0),
                dict(family=family, priority=TUNNEL_PRIORITY, table=self.table, fwmark=self.fwmark, invert=True)]

    def _full_on(self, family: int) -> None:
        net = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
        if not self.marked:
            raise RouteError(net, self.device, "a full tunnel needs the daemon's UDP socket marked "
                                               "(SO_MARK), which needs root or CAP_NET_ADMIN at start")
        try:
            self.client.add_route(net, table=self.table)
        except PrivError as exc:
            raise RouteError(net, self.device, _explain(net, self.device, exc)) from None
        done = []
        try:
            for rule in reversed(self._rules(family)):       # not-fwmark first, then suppress
                self.client.add_rule(**rule)
                done.append(rule)
        except PrivError as exc:
            for rule in done:
                self._quiet(self.client.del_rule, **rule)
            self._quiet(self.client.del_route, net, table=self.table)
            raise RouteError(net, self.device, "policy rule: %s" % exc.text) from None
        self.full.add(family)
        log.info("route %s via %s table %d (full tunnel: rule not fwmark 0x%x table %d, rule table main "
                 "suppress_prefixlength 0)", net, self.device, self.table, self.fwmark, self.table)

    def _full_off(self, family: int) -> None:
        net = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
        for rule in self._rules(family):
            self.client.del_rule(**rule)
        self.client.del_route(net, table=self.table)
        self.full.discard(family)
        log.info("route %s via %s table %d removed (full tunnel off)", net, self.device, self.table)

    @staticmethod
    def _quiet(call, *args, **kw) -> None:
        try:
            call(*args, **kw)
        except PrivError as exc:
            log.error("could not undo %s: %s", call.__name__, exc)

    def _add(self, net) -> bool:
        """Route one prefix; True when the helper added it (False: it was there)."""
        if net.prefixlen == 0:
            self._full_on(net.version)
            return True
        try:
            reply = self.client.add_route(net)
        except PrivError as exc:
            raise RouteError(net, self.device, _explain(net, self.device, exc)) from None
        return not reply.get("already")

    def _remove(self, net) -> None:
        if net.prefixlen == 0:
            self._full_off(net.version)
        else:
            self.client.del_route(net)

    def install(self, prefixes: Iterable) -> list:
        """Route every needed prefix of ``prefixes`` that is not routed yet.
        All or nothing: on the first failure the routes added by this call are
        removed again and RouteError names the prefix.  Returns those added."""
        added = []

        def undo() -> None:
            for done in reversed(added):
                self._quiet(self._remove, done)
                self.installed.discard(done)

        for net in self.needed(prefixes):
            if net in self.routed:
                continue
            try:
                fresh = self._add(net)
            except RouteError:
                undo()
                self.sync_killswitch()
                raise
            if fresh:
                self.installed.add(net)
                added.append(net)
                if net.prefixlen:
                    log.info("route %s via %s", net, self.device)
            else:
                self.present.add(net)
                log.info("route %s via %s (already there)", net, self.device)
        try:
            self.sync_killswitch()
        except RouteError:
            undo()
            raise
        return added

    def prune(self, wanted: Iterable) -> tuple:
        """Remove the routes we installed that no prefix of ``wanted`` needs.
        Returns (removed, [(prefix, error)])."""
        keep = set(self.needed(wanted))
        removed, failed = [], []
        for net in sorted(self.installed - keep, key=lambda n: (n.version, n)):
            try:
                self._remove(net)
            except PrivError as exc:
                failed.append((net, str(exc)))
                log.error("route %s via %s not removed: %s", net, self.device, exc)
                continue
            self.installed.discard(net)
            removed.append(net)
            log.info("route %s via %s removed (no peer has it any more)", net, self.device)
        self.present &= keep
        try:
            self.sync_killswitch()
        except RouteError as exc:
            failed.append(("kill switch", exc.reason))
        return removed, failed

    def sync_killswitch(self) -> None:
        """The kill switch table for the families with a full tunnel (none: no table)."""
        want = tuple(sorted(self.full)) if self.kill_switch else ()
        if want == self.killswitch_on:
            return
        try:
            if want:
                self.client.nft_replace(killswitch_table(self.device, self.fwmark, want), name=KILLSWITCH_TABLE)
                log.info("kill switch on (nftables table inet %s): IPv%s egress outside %s rejected",
                         KILLSWITCH_TABLE, " and IPv".join(map(str, want)), self.device)
            else:
                self.client.nft_delete(name=KILLSWITCH_TABLE)
                log.info("kill switch off (no full tunnel configured)")
        except PrivError as exc:
            raise KillSwitchError(self.device, exc.text) from None
        self.killswitch_on = want

    def status(self) -> dict:
        return {"routes": sorted(map(str, self.installed)), "table": self.table, "fwmark": self.fwmark,
                "full_tunnel": ["ipv%d" % f for f in sorted(self.full)],
                "kill_switch": ["ipv%d" % f for f in self.killswitch_on] if self.kill_switch else None,
                "exit_node": self.exit.status() if self.exit is not None else None}


def mark_socket(sock: socket.socket, fwmark: int) -> bool:
    """SO_MARK on the daemon's UDP socket (needs CAP_NET_ADMIN: while root)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
    except OSError as exc:
        log.info("UDP socket not marked (%s): no full tunnel possible", exc.strerror or exc)
        return False
    return True


def start_for_device(device: str, mode: str, addresses: Iterable, prefixes: Iterable, udp: socket.socket,
                     state_dir, pw=None, prefix=(), kill_switch: bool = False,
                     exit_prefixes: Optional[list] = None, subnet_routes: Optional[tuple] = None) -> tuple:
    """phantomd's start-up step (still root, single-threaded): the helper for
    ``device`` (which the daemon opened, link still down), the link up, the
    addresses, the daemon's UDP socket marked (TUN mode), the routes of
    ``prefixes`` (a full tunnel with its rules, the kill switch), and with
    ``exit_prefixes`` (not None) the exit node's forwarding, with
    ``subnet_routes`` (sources, destinations) a subnet router's.  Returns
    (client, KernelRoutes or None); raises OSError naming what failed (and
    then no helper is left running)."""
    addresses = [ipaddress.ip_interface(a) for a in addresses]
    allow = Allowlist.for_device(device, socket.if_nametoindex(device), mode, udp.getsockname()[1], addresses,
                                 state_dir, pw.pw_uid if pw is not None else None,
                                 pw.pw_gid if pw is not None else None)
    client = spawn(allow, prefix=prefix)
    try:
        client.link_up(addrgenmode_none=mode == "tun")
        for a in addresses:
            try:
                client.add_address(a)
            except PrivError as exc:
                raise PrivError("cannot add address %s to %s: %s" % (a, device, exc.text)) from None
        routes: Optional[KernelRoutes] = None
        if mode == "tun":
            marked = mark_socket(udp, allow.fwmark)
            routes = KernelRoutes(client, device, [a.network for a in addresses], allow.table, allow.fwmark,
                                  marked, kill_switch)
            routes.install(prefixes)
            if exit_prefixes is not None or subnet_routes is not None:
                from .exitnode import ExitNode
                routes.exit = ExitNode(client, device)
                routes.exit.start(exit_prefixes or [], subnet_routes)
    except BaseException:
        client.close()
        raise
    return client, routes


def stop_helper(client: PrivClient) -> None:
    """phantomd's clean stop: tell the helper (so that the kill switch goes
    too), then close the channel; the helper removes everything and exits."""
    try:
        client.shutdown()
    except PrivError as exc:
        log.warning("privileged helper: %s", exc)
    client.close()
