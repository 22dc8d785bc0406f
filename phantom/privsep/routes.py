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
(The home of this module in the target layout is phantom/node/routes.py.)
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Iterable, Optional

from .client import PrivClient, PrivError, spawn
from .protocol import Allowlist

log = logging.getLogger("phantom.daemon")


class RouteError(OSError):
    """``net`` cannot be routed into the device: ``reason`` says why."""

    def __init__(self, net, device: str, reason: str):
        super().__init__("cannot route %s into %s: %s" % (net, device, reason))
        self.net = net
        self.device = device
        self.reason = reason


def _explain(net, device: str, exc: PrivError) -> str:
    existing = exc.reply.get("existing")
    if existing:
        return ("the kernel already routes %s through %s%s. Remove that route or leave %s out of "
                "allowed_ips (a full tunnel beside an existing default route needs policy routing, "
                "which phantomd does not set up yet)"
                % (net, ", ".join(existing), " (the host's default route)" if net.prefixlen == 0 else "", net))
    return exc.text


class KernelRoutes:
    """Which prefixes the kernel routes into ``device`` for the daemon."""

    def __init__(self, client: PrivClient, device: str, connected: Iterable):
        self.client = client
        self.device = device
        self.connected = [ipaddress.ip_network(c) for c in connected]
        self.installed: set = set()     # added by the helper for us: removed when no peer has them
        self.present: set = set()       # the kernel had them through the device already: never removed

    def needed(self, prefixes: Iterable) -> list:
        """The prefixes that need a route of their own: not inside an
        interface subnet (the connected route holds those)."""
        out = []
        for net in prefixes:
            net = ipaddress.ip_network(net)
            if any(net.version == c.version and net.subnet_of(c) for c in self.connected):
                continue
            if net not in out:
                out.append(net)
        return out

    @property
    def routed(self) -> set:
        return self.installed | self.present

    def install(self, prefixes: Iterable) -> list:
        """Route every needed prefix of ``prefixes`` that is not routed yet.
        All or nothing: on the first failure the routes added by this call are
        removed again and RouteError names the prefix.  Returns those added."""
        added = []
        for net in self.needed(prefixes):
            if net in self.routed:
                continue
            try:
                reply = self.client.add_route(net)
            except PrivError as exc:
                for done in reversed(added):
                    try:
                        self.client.del_route(done)
                    except PrivError as undo:
                        log.error("could not remove route %s again: %s", done, undo)
                    self.installed.discard(done)
                raise RouteError(net, self.device, _explain(net, self.device, exc)) from None
            if reply.get("already"):
                self.present.add(net)
                log.info("route %s via %s (already there)", net, self.device)
            else:
                self.installed.add(net)
                added.append(net)
                log.info("route %s via %s", net, self.device)
        return added

    def prune(self, wanted: Iterable) -> tuple:
        """Remove the routes we installed that no prefix of ``wanted`` needs.
        Returns (removed, [(prefix, error)])."""
        keep = set(self.needed(wanted))
        removed, failed = [], []
        for net in sorted(self.installed - keep, key=lambda n: (n.version, n)):
            try:
                self.client.del_route(net)
            except PrivError as exc:
                failed.append((net, str(exc)))
                log.error("route %s via %s not removed: %s", net, self.device, exc)
                continue
            self.installed.discard(net)
            removed.append(net)
            log.info("route %s via %s removed (no peer has it any more)", net, self.device)
        self.present &= keep
        return removed, failed


def start_for_device(device: str, mode: str, addresses: Iterable, prefixes: Iterable, port: int,
                     state_dir, pw=None, prefix=()) -> tuple:
    """phantomd's start-up step (still root, single-threaded): the helper for
    ``device`` (which the daemon opened, link still down), the link up, the
    addresses, the routes of ``prefixes`` (TUN mode).  Returns (client,
    KernelRoutes or None); raises OSError naming what failed (and then no
    helper is left running)."""
    addresses = [ipaddress.ip_interface(a) for a in addresses]
    allow = Allowlist.for_device(device, socket.if_nametoindex(device), mode, port, addresses, state_dir,
                                 pw.pw_uid if pw is not None else None, pw.pw_gid if pw is not None else None)
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
            routes = KernelRoutes(client, device, [a.network for a in addresses])
            routes.install(prefixes)
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
