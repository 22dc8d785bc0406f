"""Picking an exit node at run time (issue 22 item 3, the client's side):
``phantom exit use NAME``, ``phantom exit off``, ``phantom exit``.

A peer offers itself as exit when the peer table says so
(:meth:`PeerTable.offers_exit`: a ``[[peer]]`` with ``exit_node = true``
today, a certificate's ``exit`` field later).  :class:`ExitChoice` keeps
which one, if any, carries our traffic:

* ``use(name)`` routes ``0.0.0.0/0`` and ``::/0`` to that peer on top of its
  own prefixes (:meth:`PeerTable.set_extra`: the engine, the data path and
  the kernel in one step; the kernel side is the full tunnel's policy
  routing -- fwmark, own table, ``suppress_prefixlength 0`` -- and the kill
  switch when configured, privsep/routes.py).  Switching from one exit to
  another is the same single step: the default routes move between the two
  peers, the policy rules and the kill switch stay;
* ``off()`` takes them back: traffic goes direct again;
* the choice is kept in ``state_dir/exit.json`` and taken up again at start
  and after a reload (a reload that leaves the peer without ``exit_node``,
  or without the peer, turns the exit off, logged, and forgets it);
* DNS: while an exit is in use the host's DNS goes to the exit's tunnel
  address (the exit forwards it, phantom/dns/forward.py): with
  systemd-resolved the privileged helper registers it on our device as the
  default DNS route (``resolvectl dns DEV ADDR; resolvectl domain DEV ~.``);
  without it, ``status()`` gives the resolv.conf lines to use.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import Optional

from ..errors import Conflict, Invalid, NotFound

log = logging.getLogger("phantom.daemon")

DEFAULTS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
STATE_FILE = "exit.json"
RECORD = 256                    # bytes: the state file's fixed size (a peer name is at most 64)


class ExitChoice:
    """The exit in use for one daemon (``d``: its peers, kernel routes,
    helper, settings)."""

    def __init__(self, d):
        self.d = d
        self.peer_id: Optional[int] = None      # the exit in use (its id in the peer table)
        self.dns: list = []                     # its tunnel addresses we send DNS to
        self.dns_registered = False             # with systemd-resolved, through the helper
        self.dns_error: Optional[str] = None
        self._fd: Optional[int] = None          # state_dir/exit.json, opened at start (root)
        self._saved: Optional[str] = None

    # ------------------------------------------------------------ state file
    # The daemon drops root right after start and may not write its state
    # directory afterwards: the file is opened (and read) at start, while
    # still root, and rewritten in place through that descriptor: one pwrite
    # of a fixed-size record (JSON padded with spaces), so a crash leaves the
    # old choice or the new one, never half of one.
    @property
    def path(self) -> Path:
        return Path(self.d.s.state_dir) / STATE_FILE

    def open_state(self) -> None:
        """At start (root): open ``state_dir/exit.json`` for the choice; read it."""
        try:
            os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            raw = os.pread(self._fd, RECORD, 0)
        except OSError as exc:
            log.warning("exit: %s: %s: the choice of exit is not kept across restarts", self.path,
                        exc.strerror or exc)
            return
        if not raw.strip():
            return
        try:
            data = json.loads(raw)
        except ValueError as exc:
            log.warning("exit: %s unreadable (%s): no exit in use", self.path, exc)
            return
        name = data.get("use") if isinstance(data, dict) else None
        self._saved = name if isinstance(name, str) else None

    def _save(self, name: Optional[str]) -> None:
        self._saved = name
        if self._fd is None:
            return
        text = json.dumps({"use": name}).encode()
        try:
            os.pwrite(self._fd, text.ljust(RECORD - 1) + b"\n", 0)
            os.fsync(self._fd)
        except OSError as exc:
            log.warning("exit: the choice is not kept across restarts (%s: %s)", self.path,
                        exc.strerror or exc)

    def saved(self) -> Optional[str]:
        """The exit named in the state file at start (None: none, or no file)."""
        return self._saved

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------ the choice
    def _peer(self):
        peers = self.d.peers
        return peers.engine.peers.get(self.peer_id) if self.peer_id is not None else None

    def _check(self):
        d = self.d
        if d.s.mode.value != "tun" or d.peers.kernel is None:
            raise Conflict("an exit needs a TUN device and phantomd's privileged helper (start it as "
                           "root or with CAP_NET_ADMIN)")

    def use(self, name: str, save: bool = True) -> dict:
        """Send everything through the peer ``name`` (it must offer exit)."""
        self._check()
        peers = self.d.peers
        peer = peers.find(name)
        if peer is None:
            raise NotFound("no peer %r" % name)
        if not peers.offers_exit(peer):
            raise Invalid("peer %s does not offer itself as exit (exit_node = true in its [[peer]]; "
                          "in a network: the admin's `phantom network routes approve %s --exit`)"
                          % (peer.name, peer.name))
        old = self._peer()
        if old is not peer:
            changes = {peer.id: DEFAULTS}
            if old is not None:
                changes[old.id] = ()                 # the same step: no moment without an exit
            try:
                peers.set_extra(changes)
            except ValueError as exc:
                raise Conflict("cannot use %s as exit: %s" % (peer.name, exc)) from None
            self.peer_id = peer.id
            log.info("exit: all traffic through %s%s", peer.name,
                     " (was %s)" % old.name if old is not None else "")
        if save:
            self._save(peer.name)
        self._dns_on(peer)
        return self.status()

    def off(self, save: bool = True, why: str = "") -> dict:
        """Traffic goes direct again."""
        old = self._peer()
        if old is not None:
            try:
                self.d.peers.set_extra({old.id: ()})
            except ValueError as exc:                # the kernel refused a removal: say so
                raise Conflict("cannot stop using %s: %s" % (old.name, exc)) from None
            log.info("exit: %s no longer used%s", old.name, why)
        self.peer_id = None
        self._dns_off()
        if save:
            self._save(None)
        return self.status()

    def restore(self) -> None:
        """At start: take up the exit the state file names (logged if it cannot be)."""
        name = self.saved()
        if name is None:
            return
        try:
            self.use(name, save=False)
        except (Conflict, Invalid, NotFound) as exc:
            log.warning("exit: %s from %s not used: %s", name, self.path, exc)

    def after_reload(self, report: dict) -> None:
        """After a reload: the exit in use still offers exit, or it is turned off."""
        peer = self._peer()
        if self.peer_id is None:
            return
        if peer is None or not self.d.peers.offers_exit(peer):
            why = " (a reload removed the peer or its exit_node)"
            if peer is not None:
                self.off(why=why)
            else:
                log.info("exit: no longer used%s", why)
                self.peer_id = None
                self._dns_off()
                self._save(None)
            report.setdefault("notes", []).append("exit off: the exit in use no longer offers exit")
        elif not set(DEFAULTS) <= set(peer.allowed_ips):
            self.peer_id = None                      # put back below
            self.use(peer.name, save=False)

    # ------------------------------------------------------------ DNS
    def _tunnel_addresses(self, peer) -> list:
        """The exit's own tunnel addresses: its host prefixes inside our subnets."""
        subnets = [a.network for a in self.d.s.addresses]
        return [str(n.network_address) for n in self.d.peers.own_routes(peer)
                if n.prefixlen == n.max_prefixlen and any(n.version == s.version and n.subnet_of(s)
                                                          for s in subnets)]

    def _dns_on(self, peer) -> None:
        from ..dns.resolved import in_init_netns, resolved_running
        self._dns_off()
        self.dns = self._tunnel_addresses(peer)
        if not self.dns:
            self.dns_error = "the exit has no host address inside our subnets in its allowed_ips"
            return
        if not (in_init_netns() and resolved_running()):
            self.dns_error = "systemd-resolved does not run here: put the resolv_conf lines in /etc/resolv.conf"
            return
        from ..privsep.client import PrivError
        try:
            self.d.priv.resolved_register(self.dns, ["~."], default_route=True)
        except PrivError as exc:
            self.dns_error = "systemd-resolved: %s" % exc.text
            log.warning("exit: DNS not registered with systemd-resolved: %s", exc.text)
            return
        self.dns_registered = True
        log.info("exit: DNS through the tunnel to %s (systemd-resolved, default route)", ", ".join(self.dns))

    def _dns_off(self) -> None:
        self.dns, self.dns_error = [], None
        if self.dns_registered:
            from ..privsep.client import PrivError
            try:
                self.d.priv.resolved_revert()
            except PrivError as exc:
                log.warning("exit: systemd-resolved registration not reverted: %s", exc.text)
            self.dns_registered = False

    # ------------------------------------------------------------ reading
    def status(self) -> dict:
        peers = self.d.peers
        peer = self._peer()
        offered = [p.name for p in peers.engine.peers.values() if peers.offers_exit(p)]
        out = {"use": peer.name if peer is not None else None, "offered": sorted(offered),
               "dns": list(self.dns), "dns_registered": self.dns_registered, "dns_error": self.dns_error}
        if self.dns and not self.dns_registered:
            out["resolv_conf"] = "".join("nameserver %s\n" % a for a in self.dns)
        kr = peers.kernel
        if kr is not None:
            st = kr.status()
            out["full_tunnel"], out["kill_switch"] = st["full_tunnel"], st["kill_switch"]
        return out
