"""Config sync without dropping tunnels: ``phantom reload``, ``POST /reload``, SIGHUP.

Like ``wg syncconf``: the whole config file is read again and compared with
what the daemon runs; peers are matched by public key.

* a peer in the file and not in the daemon is **added** (and opened when it
  has an endpoint and a persistent keepalive, as at start);
* a configured peer no longer in the file is **removed**: its sessions end
  and the data path zeroes its keys (``remove_peer`` -> ``clear_keys``);
* a peer in both is **changed in place** where the file changed: its name,
  allowed IPs (the data path's routing table), endpoint, persistent
  keepalive; its sessions and keys stay, no handshake is started for it;
* a peer whose entry did not change is not touched at all;
* a peer whose ``protocol`` changed is removed and added again (a Phantom
  and a WireGuard peer are different peers); a WireGuard peer's
  ``preshared_key_file``, when new or another file, is read and used from the
  next handshake on;
* the ``[firewall]`` table is compiled against the new peer names and
  groups and installed in place (connection tracking and drop counters
  carry over; per-rule hit counters restart) when it, a peer's name or
  groups, or this node's own ``groups`` changed.

Peers opened through the API or admitted from the key directory (not from
the file) are left alone; a file entry with such a peer's key adopts it.

Everything is validated before anything changes: an unreadable or invalid
file, a bad peer entry, duplicate names/keys/prefixes, our own key, a name
taken by an API peer, or firewall rules that do not compile refuse the
reload whole with a :class:`ConfigError` naming the key, and the daemon
goes on exactly as before.

What a running daemon cannot change (the UDP or API port, mode, device,
addresses, MTU, private key, state dir, user, directory, ciphers, tunables, [dns]) is not
applied: the report lists it under ``notes`` ("needs a restart").

Kernel routes (TUN mode) go through the privileged helper
(:mod:`phantom.privsep`): the routes the new file needs (allowed IPs outside
the interface's subnets) are installed before anything else changes, all
or nothing (one the kernel refuses refuses the reload, naming the key, and
the ones added are removed again); after the reload, the routes that no
peer has any more are removed.  The report lists both under ``routes``.

A :class:`Reloader` keeps what the file said at start (or the last reload),
to tell the file's own edits from what the daemon learnt since (a roamed
endpoint).  Its changes go through the peer table (peers.py) as one batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from .. import crypto
from ..protocols import registry as protocols
from .config import (ConfigError, Settings, check_own_key, check_peers, peer_offers, read_config_file,
                     settings_from_mapping)
from .peers import Batch, b64, planned_groups, planned_names

log = logging.getLogger("phantom.daemon")

# [interface] settings a running daemon does not change (restart needed).
RESTART_KEYS = ("listen_port", "http_port", "http_listen", "http_socket", "test_port",
                "test_deliver", "mode", "device", "addresses", "mtu", "private_key_file",
                "state_dir", "user", "directory", "name", "endpoints", "trusted_signers",
                "endorsers", "directory_allowed_ips", "log_level", "tunables", "metrics_listen",
                "dht_bootstrap", "dht_port", "endpoints_auto", "uapi", "ciphers", "kill_switch",
                "exit_node", "exit_dns_upstream")


def read(path) -> Settings:
    """The config file as Settings (the same parse as at start, flags aside)."""
    from pathlib import Path
    path = Path(path)
    return settings_from_mapping(read_config_file(path), base=path.resolve().parent)


def baseline(settings: Settings) -> Optional[Settings]:
    """What the file said at start (flags aside), for telling later file edits
    from what the daemon learnt since (a roamed endpoint); None without a file."""
    if settings.config_path is None:
        return None
    try:
        return read(settings.config_path)
    except ConfigError:
        return None


@dataclass
class Plan:
    add: list = field(default_factory=list)           # PeerConfig
    remove: list = field(default_factory=list)        # engine Peer
    change: list = field(default_factory=list)        # (Peer, PeerConfig, [fields])
    unchanged: list = field(default_factory=list)     # engine Peer
    adopt: list = field(default_factory=list)         # API peers the file now names
    firewall_changed: bool = False
    notes: list = field(default_factory=list)
    fresh: Optional[Settings] = None
    psks: dict = field(default_factory=dict)          # peer name -> WireGuard preshared key read now
    routes: dict = field(default_factory=dict)        # peer id or "new peer NAME" -> its prefixes after


class Reloader:
    """Reloads of one daemon's config file.  ``settings``: the daemon's (its
    peers and firewall follow each reload); ``base``: what the file said at
    start (default: read it now, :func:`baseline`)."""

    _UNREAD = object()

    def __init__(self, settings: Settings, base=_UNREAD):
        self.s = settings
        self.baseline = baseline(settings) if base is Reloader._UNREAD else base
        #: this node's groups that do not come from the file (a network
        #: member's certificate groups): every reload keeps them
        self.extra_groups: tuple = ()

    def reload(self, peers, firewall, device: Optional[str] = None, kernel_routes=None) -> dict:
        """Read the config file and apply it; ConfigError changes nothing.
        ``kernel_routes``: the privileged helper's routes (privsep.routes.KernelRoutes,
        TUN mode), which the reload installs and prunes."""
        if self.s.config_path is None:
            raise ConfigError("--config", "phantomd was started without a config file: nothing "
                              "to reload")
        report = self.run(read(self.s.config_path), peers, firewall, device, kernel_routes)
        log.info("reload: %s: %d added, %d removed, %d changed, %d unchanged%s",
                 self.s.config_path, len(report["added"]), len(report["removed"]),
                 len(report["changed"]), len(report["unchanged"]),
                 ", firewall replaced" if report["firewall"] else "")
        return report

    def run(self, fresh: Settings, peers, firewall, device: Optional[str] = None,
            kernel_routes=None) -> dict:
        """Plan ``fresh`` against the running peers and apply it; it is the baseline then."""
        if self.extra_groups:
            fresh.groups = tuple(sorted(set(fresh.groups) | set(self.extra_groups)))
        p = self.plan(fresh, peers, device, kernel_routes)
        added = _install_routes(kernel_routes, p)
        report = self.apply(p, peers, firewall)
        _prune_routes(kernel_routes, peers, report, added, fresh)
        self.baseline = fresh
        return report

    # ------------------------------------------------------------ planning
    def plan(self, fresh: Settings, peers, device: Optional[str] = None, kernel_routes=None) -> Plan:
        """Compare ``fresh`` (the file now) with the running peers (a
        PeerTable); raise ConfigError for anything that would not apply.
        ``device``: our TUN device's name.  Changes nothing."""
        from ..dataplane import firewall
        engine, base = peers.engine, self.baseline
        check_peers(fresh.peers)
        check_own_key(fresh, engine.public_key)
        old_cfg = {bytes(p.public_key): p for p in (base.peers if base else [])}
        p = Plan(fresh=fresh)
        in_file = set()
        for i, pc in enumerate(fresh.peers):
            key = bytes(pc.public_key)
            in_file.add(key)
            if pc.protocol == "wireguard" and self.s.mode.value != "tun":
                raise ConfigError("peer[%d].protocol" % i, "a WireGuard peer carries IP packets: it "
                                  "needs mode = \"tun\"")
            peer = engine.peer_by_key(key)
            before = old_cfg.get(key)
            try:
                protocols.peer_suites(pc.ciphers)          # one this libsodium cannot run: refused here
            except ValueError as exc:
                raise ConfigError("peer[%d].ciphers" % i, str(exc)) from None
            # A WireGuard peer's preshared key is read again when its file is new or
            # another one (a file the daemon can no longer read after a user switch
            # refuses the reload; the same path with new contents needs a restart).
            if pc.preshared_key_file is not None and (
                    peer is None or before is None or before.preshared_key_file != pc.preshared_key_file):
                from ..protocols.wireguard.keys import load_preshared_key
                p.psks[pc.name] = load_preshared_key(pc.preshared_key_file,
                                                     "peer[%d].preshared_key_file" % i)
            if peer is not None and peer.protocol != pc.protocol:
                p.remove.append(peer)                      # another protocol: another peer
                peer = None
            if peer is None:
                p.add.append(pc)
                continue
            fields = []
            if peer.name != pc.name:
                fields.append("name")
            extra = peers.extra_routes(peer) if pc.exit_node else ()   # an exit in use keeps /0
            if set(map(str, peers.own_routes(peer))) != set(map(str, pc.allowed_ips)) \
                    or set(extra) != set(peers.extra_routes(peer)):
                fields.append("allowed_ips")
            # The endpoint in force may have roamed: only a change in the file moves it.
            if pc.endpoint is not None and (before is None or before.endpoint != pc.endpoint):
                if pc.endpoint != peer.endpoint:
                    fields.append("endpoint")
            # A name new in the file is looked up now (endpoints.py: Daemon.reload syncs it).
            if pc.endpoint_name is not None and (before is None or before.endpoint_name != pc.endpoint_name):
                fields.append("endpoint")
            if float(pc.persistent_keepalive or 0) != float(peer.persistent_keepalive or 0):
                fields.append("persistent_keepalive")
            if pc.name in p.psks or (pc.preshared_key_file is None and peer.preshared_key is not None):
                fields.append("preshared_key")
            if (before.ciphers if before is not None else None) != pc.ciphers:
                fields.append("ciphers")
            if tuple(pc.groups) != peers.groups_of(peer):
                fields.append("groups")
            if peer_offers(pc) != peers.offers_of(peer):
                fields.append("offers")
            if peer.dynamic:
                p.adopt.append(peer)
            if fields:
                p.change.append((peer, pc, fields))
            elif not peer.dynamic:
                p.unchanged.append(peer)
        for peer in engine.peers.values():
            if bytes(peer.public_key) not in in_file and not peer.dynamic:
                p.remove.append(peer)

        # Names: the new ones must not collide with peers the file does not own.
        staying = [pe for pe in engine.peers.values()
                   if pe.dynamic and bytes(pe.public_key) not in in_file]
        taken = {pe.name: pe for pe in staying}
        for i, pc in enumerate(fresh.peers):
            if pc.name in taken:
                raise ConfigError("peer[%d].name" % i, "%r is the name of a peer opened through the "
                                  "API or the key directory (%s); choose another"
                                  % (pc.name, b64(taken[pc.name].public_key)))

        # The rules against the names (and ids) the peers will have.
        try:
            firewall.compile_rules(firewall.parse_rules(
                fresh.firewall, planned_names(engine, fresh.peers, staying),
                planned_groups(engine, fresh.peers, staying, peers), fresh.groups))
        except firewall.FirewallError as exc:
            raise ConfigError("firewall", str(exc)) from None
        old_fw = base.firewall if base is not None else self.s.firewall
        renamed = any("name" in f or "groups" in f for _, _, f in p.change)
        p.firewall_changed = (fresh.firewall != old_fw or bool(p.add or p.remove or renamed)
                              or tuple(fresh.groups) != tuple(self.s.groups))

        if base is not None:
            for k in RESTART_KEYS:
                if getattr(fresh, k) != getattr(base, k):
                    p.notes.append("interface.%s changed: needs a restart (not applied)" % k
                                   if k != "tunables" else "[tunables] changed: needs a restart "
                                   "(not applied)")
            if fresh.dns != base.dns:
                p.notes.append("[dns] changed: needs a restart (not applied; the names follow the "
                               "peers without one)")
        self._plan_routes(engine, p, device, kernel_routes, peers)
        return p

    def _plan_routes(self, engine, p: Plan, device: Optional[str], kernel_routes=None, peers=None) -> None:
        """The routing table after the reload, checked whole before anything
        changes (ConfigError naming the file's key):

        * the engine's invariants (Engine.route_conflict): no prefix of the file
          may be a prefix that a peer the file does not own (opened through the
          API, admitted from the directory) holds, nor overlap a directory
          record's claim;
        * TUN mode: the kernel must route every prefix into our device.  After
          the privilege drop the daemon cannot add a kernel route, so a prefix
          outside the interface's subnets with no route through the device (one
          the start did not install, or another device's route) refuses the
          reload: a route the data path has and the kernel does not would send
          that traffic elsewhere, outside the tunnel.
        """
        fresh = p.fresh
        where: dict = {}                                   # key in ``changes`` -> file index
        changes: dict = {}
        for peer in p.remove:
            changes[peer.id] = []
        for i, pc in enumerate(fresh.peers):
            peer = engine.peer_by_key(bytes(pc.public_key))
            key = peer.id if peer is not None and peer not in p.remove else "new peer %s" % pc.name
            changes[key] = list(pc.allowed_ips)
            if isinstance(key, int) and pc.exit_node and peers is not None:
                changes[key] += [n for n in peers.extra_routes(peer) if n not in changes[key]]
            where[key] = i
        adopted = {peer.id: False for peer in p.adopt}     # the file owns them now: its prefixes, not claims
        found = engine.route_conflict(changes, adopted)
        if found is not None:
            net, key, problem = found
            i = where[key]
            j = list(fresh.peers[i].allowed_ips).index(net)
            raise ConfigError("peer[%d].allowed_ips[%d]" % (i, j), problem)
        p.routes = dict(changes)
        if self.s.mode.value != "tun" or device is None:
            return
        if kernel_routes is not None:
            return                          # the helper installs them: _install_routes()
        from ..dataplane.tun import unrouted
        connected = [a.network for a in self.s.addresses]
        for i, pc in enumerate(fresh.peers):
            outside = [n for n in pc.allowed_ips
                       if not any(n.version == c.version and n.subnet_of(c) for c in connected)]
            for n in unrouted(device, outside):
                j = list(pc.allowed_ips).index(n)
                raise ConfigError("peer[%d].allowed_ips[%d]" % (i, j),
                                  "the kernel does not route %s into %s, and the daemon has no "
                                  "privileges left to add the route: run `ip route add %s dev %s` "
                                  "first, or restart phantomd" % (n, device, n, device))

    # ------------------------------------------------------------- applying
    def apply(self, p: Plan, peers, firewall) -> dict:
        """Carry out a Plan (after :meth:`plan` validated it) through the peer
        table ``peers``, as one batch, and replace the rules in ``firewall``
        (a FirewallSlot) when they or the peers' names changed.  Returns the report."""
        from ..dataplane.types import Mode
        engine, s = peers.engine, self.s
        batch = Batch(remove=list(p.remove), adopt=list(p.adopt))
        batch.routes = {pe.id: p.routes[pe.id] for pe, _, f in p.change if "allowed_ips" in f}
        changed, opens = {}, []
        for peer, pc, fields in p.change:
            update = {}
            if "name" in fields:
                update["name"] = pc.name
            if "endpoint" in fields and pc.endpoint is not None:
                update["endpoint"] = pc.endpoint
            if "persistent_keepalive" in fields:
                update["persistent_keepalive"] = float(pc.persistent_keepalive or 0)
            if "ciphers" in fields:                        # the next handshake uses them
                update["suites"] = protocols.peer_suites(pc.ciphers)
            if "preshared_key" in fields:                  # the next handshake uses it
                update["preshared_key"] = p.psks.get(pc.name)
            if "groups" in fields:                         # the rules are recompiled below
                update["groups"] = pc.groups
            if "offers" in fields:                         # exits.py turns an exit in use off if needed
                update["offers"] = {"exit": pc.exit_node, "routes": tuple(pc.routes)}
            keepalive = update.get("persistent_keepalive", peer.persistent_keepalive)
            endpoint = update.get("endpoint", peer.endpoint)
            if keepalive and endpoint is not None:
                update["wanted"] = True                    # kept up from now on, as at start
                if not peer.sessions and peer.pending is None:
                    opens.append(peer)
            batch.update.append((peer, update))
            changed[pc.name] = fields
        for pc in p.add:
            batch.add.append(dict(public_key=pc.public_key, name=pc.name, allowed_ips=pc.allowed_ips,
                                  endpoint=pc.endpoint, persistent_keepalive=pc.persistent_keepalive,
                                  protocol=pc.protocol, preshared_key=p.psks.get(pc.name),
                                  suites=protocols.peer_suites(pc.ciphers), groups=pc.groups,
                                  offers=peer_offers(pc)))
        old_names = {pe.id: pe.name for pe, _ in batch.update}
        added = peers.apply(batch, regroup=False)         # the rules are installed below
        opens += [pe for pe in added if pe.endpoint and pe.persistent_keepalive]
        removed = [pe.name for pe in p.remove]
        for peer, pc, fields in p.change:
            old = old_names[peer.id]
            log.info("reload: peer=%s changed in place: %s%s", pc.name, ", ".join(fields),
                     " (was %s)" % old if old != pc.name else "")
        for name in removed:
            log.info("reload: peer=%s removed (keys wiped)", name)
        for pe in added:
            log.info("reload: peer=%s added", pe.name)
        fresh = p.fresh
        s.peers = fresh.peers
        s.firewall = fresh.firewall
        s.groups = fresh.groups
        if p.firewall_changed:
            new = firewall.replace(fresh.firewall, peers.names, peers.group_map(), fresh.groups)
            log.info("reload: firewall installed (%d rules)", len(new.describe().get("rules", [])))
        if s.mode is Mode.TEST and engine.peers and p.remove:
            peers.dp.set_test_peer(next(iter(engine.peers)))
        for peer in opens:
            peers.do(engine.open(peer.id))
        for note in p.notes:
            log.warning("reload: %s", note)
        for psk in p.psks.values():                        # the engine holds its own copies
            crypto.memzero(psk)
        return {"added": [pe.name for pe in added], "removed": removed, "changed": changed,
                "unchanged": [pe.name for pe in p.unchanged], "firewall": p.firewall_changed,
                "notes": p.notes}


def _install_routes(routes, p: Plan) -> list:
    """The kernel routes the new file needs, through the privileged helper
    (``routes``: privsep.routes.KernelRoutes, or None), before anything else
    changes; ConfigError naming the key (and nothing left added) when the
    kernel refuses one."""
    if routes is None:
        return []
    from ..privsep.routes import RouteError
    try:
        return routes.install([n for pc in p.fresh.peers for n in pc.allowed_ips])
    except RouteError as exc:
        for i, pc in enumerate(p.fresh.peers):
            if exc.net in pc.allowed_ips:
                raise ConfigError("peer[%d].allowed_ips[%d]" % (i, list(pc.allowed_ips).index(exc.net)),
                                  "the kernel does not route %s into %s, and the route cannot be added: %s"
                                  % (exc.net, exc.device, exc.reason)) from None
        raise ConfigError("routes", str(exc)) from None


def _prune_routes(routes, peers, report: dict, added: list, fresh: Settings) -> None:
    """After the reload: the kernel routes no peer has any more were removed
    by the peer table (peers.py, in the same step as the data path's); the
    exit node's allowed peers (allow_exit) and a subnet router's routes
    (advertise_routes, allow_routes) follow the file."""
    if routes is None:
        return
    from ..privsep.exitnode import ExitError, ExitNode, allowed_prefixes, subnet_routes
    subnets = subnet_routes(fresh)           # advertise_routes: forwarded for the peers with allow_routes
    try:
        if routes.exit is None and subnets is not None:      # a new subnet router: forwarding on
            routes.exit = ExitNode(routes.client, routes.device)
            routes.exit.start([], subnets)
            report["subnet_routes"] = routes.exit.status()["routes"]
        elif routes.exit is not None:
            exit_before = list(routes.exit.prefixes)
            if routes.exit.sync(allowed_prefixes(fresh.peers), subnets):
                if routes.exit.prefixes != exit_before:
                    report["exit"] = routes.exit.status()["allowed"]
                report["subnet_routes"] = routes.exit.status()["routes"]
    except ExitError as exc:
        report["notes"].append(str(exc))
    removed, failed = peers.pruned
    report["routes"] = {"added": [str(n) for n in added], "removed": [str(n) for n in removed]}
    for net, why in failed:
        report["notes"].append("route %s not removed from the kernel: %s" % (net, why))
