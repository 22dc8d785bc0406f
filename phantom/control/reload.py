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
  installed in place (connection tracking and drop counters carry over;
  per-rule hit counters restart) when it, or a peer's name, changed.

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from ..protocols import registry as protocols
from .config import (ConfigError, Settings, _check_peers, check_own_key,
                     read_config_file, settings_from_mapping)

log = logging.getLogger("phantom.daemon")

# [interface] settings a running daemon does not change (restart needed).
RESTART_KEYS = ("listen_port", "http_port", "http_listen", "http_socket", "test_port",
                "test_deliver", "mode", "device", "addresses", "mtu", "private_key_file",
                "state_dir", "user", "directory", "name", "endpoints", "trusted_signers",
                "endorsers", "directory_allowed_ips", "log_level", "tunables", "metrics_listen", "dht_bootstrap", "dht_port",
                "endpoints_auto", "uapi", "ciphers", "kill_switch", "exit_node")


def read(path) -> Settings:
    """The config file as Settings (the same parse as at start, flags aside)."""
    from pathlib import Path
    path = Path(path)
    return settings_from_mapping(read_config_file(path), base=path.resolve().parent)


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


def _b64(key: bytes) -> str:
    import base64
    return base64.b64encode(bytes(key)).decode()


def plan(daemon, fresh: Settings, baseline: Optional[Settings]) -> Plan:
    """Compare ``fresh`` (the file now) with the running daemon; raise
    ConfigError for anything that would not apply.  Changes nothing."""
    from ..dataplane import firewall
    engine = daemon.engine
    _check_peers(fresh.peers)
    check_own_key(fresh, engine.public_key)
    old_cfg = {bytes(p.public_key): p for p in (baseline.peers if baseline else [])}
    p = Plan(fresh=fresh)
    in_file = set()
    for i, pc in enumerate(fresh.peers):
        key = bytes(pc.public_key)
        in_file.add(key)
        if pc.protocol == "wireguard" and daemon.s.mode.value != "tun":
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
        if set(map(str, peer.allowed_ips)) != set(map(str, pc.allowed_ips)):
            fields.append("allowed_ips")
        # The endpoint in force may have roamed: only a change in the file moves it.
        if pc.endpoint is not None and (before is None or before.endpoint != pc.endpoint):
            if pc.endpoint != peer.endpoint:
                fields.append("endpoint")
        if float(pc.persistent_keepalive or 0) != float(peer.persistent_keepalive or 0):
            fields.append("persistent_keepalive")
        if pc.name in p.psks or (pc.preshared_key_file is None and peer.preshared_key is not None):
            fields.append("preshared_key")
        if (before.ciphers if before is not None else None) != pc.ciphers:
            fields.append("ciphers")
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
                              % (pc.name, _b64(taken[pc.name].public_key)))

    # Ids the added peers will get (Engine.add_peer numbers in order).
    names: dict = {}
    for pe in staying:
        names[pe.name] = pe.id
        names[_b64(pe.public_key)] = pe.id
    next_id = engine._next_peer_id
    for pc in fresh.peers:
        peer = engine.peer_by_key(bytes(pc.public_key))
        if peer is None:
            pid, next_id = next_id, next_id + 1
        else:
            pid = peer.id
        names[pc.name] = pid
        names[_b64(pc.public_key)] = pid
    try:
        firewall.compile_rules(firewall.parse_rules(fresh.firewall, names))
    except firewall.FirewallError as exc:
        raise ConfigError("firewall", str(exc)) from None
    old_fw = baseline.firewall if baseline is not None else daemon.s.firewall
    renamed = any("name" in f for _, _, f in p.change)
    p.firewall_changed = fresh.firewall != old_fw or bool(p.add or p.remove or renamed)

    if baseline is not None:
        for k in RESTART_KEYS:
            if getattr(fresh, k) != getattr(baseline, k):
                p.notes.append("interface.%s changed: needs a restart (not applied)" % k
                               if k != "tunables" else "[tunables] changed: needs a restart "
                               "(not applied)")
        if fresh.dns != baseline.dns:
            p.notes.append("[dns] changed: needs a restart (not applied; the names follow the "
                           "peers without one)")
    _plan_routes(daemon, p)
    return p


def _plan_routes(daemon, p: Plan) -> None:
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
    engine = daemon.engine
    fresh = p.fresh
    where: dict = {}                                   # key in ``changes`` -> file index
    changes: dict = {}
    for peer in p.remove:
        changes[peer.id] = []
    for i, pc in enumerate(fresh.peers):
        peer = engine.peer_by_key(bytes(pc.public_key))
        key = peer.id if peer is not None and peer not in p.remove else "new peer %s" % pc.name
        changes[key] = list(pc.allowed_ips)
        where[key] = i
    adopted = {peer.id: False for peer in p.adopt}     # the file owns them now: its prefixes, not claims
    found = engine.route_conflict(changes, adopted)
    if found is not None:
        net, key, problem = found
        i = where[key]
        j = list(fresh.peers[i].allowed_ips).index(net)
        raise ConfigError("peer[%d].allowed_ips[%d]" % (i, j), problem)
    p.routes = {k: v for k, v in changes.items()}
    if daemon.s.mode.value != "tun" or daemon.device is None:
        return
    if getattr(daemon, "kernel_routes", None) is not None:
        return                          # the helper installs them: _install_routes()
    from ..dataplane.tun import unrouted
    connected = [a.network for a in daemon.s.addresses]
    device = daemon.device.name
    for i, pc in enumerate(fresh.peers):
        outside = [n for n in pc.allowed_ips
                   if not any(n.version == c.version and n.subnet_of(c) for c in connected)]
        for n in unrouted(device, outside):
            j = list(pc.allowed_ips).index(n)
            raise ConfigError("peer[%d].allowed_ips[%d]" % (i, j),
                              "the kernel does not route %s into %s, and the daemon has no "
                              "privileges left to add the route: run `ip route add %s dev %s` "
                              "first, or restart phantomd" % (n, device, n, device))


def apply(daemon, p: Plan) -> dict:
    """Carry out a Plan (after :func:`plan` validated it).  Returns the report."""
    from ..dataplane import firewall
    from ..dataplane.types import Mode
    engine, dp = daemon.engine, daemon.dp
    # Routes change in one step for the data path (update_routes), after the
    # engine's peers are in place: a removed peer's prefixes, a changed one's
    # and an added one's all move at once, so no packet is routed by a mix of
    # the old and the new table (a prefix never falls through to another
    # peer's shorter one meanwhile).  The plan checked the result whole.
    removed = []
    for peer in p.remove:
        daemon._do(engine.remove_peer(peer.id))        # ClearKeys: the data path zeroes its keys
        removed.append(peer.name)
    for peer in p.adopt:
        engine.adopt(peer.id)                          # the file's prefixes now, not a run-time claim
    changed = {}
    opens = []
    moves = {pe.id: p.routes[pe.id] for pe, _, f in p.change if "allowed_ips" in f}
    if moves:
        engine.set_allowed_ips(moves)
    for peer, pc, fields in p.change:
        old_name = peer.name
        if "name" in fields:
            peer.name = pc.name
        if "endpoint" in fields:
            peer.endpoint = pc.endpoint
            dp.set_endpoint(peer.id, pc.endpoint)
        if "persistent_keepalive" in fields:
            peer.persistent_keepalive = float(pc.persistent_keepalive or 0)
        if "ciphers" in fields:                        # the next handshake uses them
            peer.suites = protocols.peer_suites(pc.ciphers)
        if "preshared_key" in fields:                  # the next handshake uses it
            from .. import crypto
            if peer.preshared_key is not None:
                crypto.memzero(peer.preshared_key)
            psk = p.psks.get(pc.name)
            peer.preshared_key = bytearray(psk) if psk is not None else None
        if peer.persistent_keepalive and peer.endpoint is not None:
            peer.wanted = True
            if not peer.sessions and peer.pending is None:
                opens.append(peer)
        engine.peer_changed(peer, old_name)            # re-index the name, wake its timers
        changed[pc.name] = fields
        log.info("reload: peer=%s changed in place: %s%s", pc.name, ", ".join(fields),
                 " (was %s)" % old_name if old_name != pc.name else "")
    added = []
    new_routes = {}
    for pc in p.add:
        peer = engine.add_peer(pc.public_key, pc.name, pc.allowed_ips, pc.endpoint,
                               pc.persistent_keepalive, protocol=pc.protocol,
                               preshared_key=p.psks.get(pc.name), suites=protocols.peer_suites(pc.ciphers))
        dp.add_peer(peer.id, [])                       # its routes come with everyone's below
        new_routes[peer.id] = list(pc.allowed_ips)
        if pc.endpoint:
            dp.set_endpoint(peer.id, pc.endpoint)
            if pc.persistent_keepalive:
                opens.append(peer)
        added.append(pc.name)
    route_changes = dict(moves)
    route_changes.update({peer.id: [] for peer in p.remove})
    route_changes.update(new_routes)
    if route_changes:
        dp.update_routes(route_changes)
    for peer in p.remove:
        dp.remove_peer(peer.id)                        # no routes left: keys and tables only
        log.info("reload: peer=%s removed (keys wiped)", peer.name)
    for name in added:
        log.info("reload: peer=%s added", name)
    fresh = p.fresh
    daemon.s.peers = fresh.peers
    daemon.s.firewall = fresh.firewall
    if p.firewall_changed:
        new = firewall.build(fresh.firewall, daemon._peer_names(), daemon.s.mode, previous=daemon.fw)
        daemon.fw = new
        dp.set_firewall(new)
        log.info("reload: firewall installed (%d rules)", len(new.describe().get("rules", [])))
    if daemon.s.mode is Mode.TEST and engine.peers and p.remove:
        dp.set_test_peer(next(iter(engine.peers)))
    for peer in opens:
        daemon._do(engine.open(peer.id))
    for note in p.notes:
        log.warning("reload: %s", note)
    from .. import crypto
    for psk in p.psks.values():                        # the engine holds its own copies
        crypto.memzero(psk)
    return {"added": added, "removed": removed, "changed": changed,
            "unchanged": [pe.name for pe in p.unchanged], "firewall": p.firewall_changed,
            "notes": p.notes}


def _install_routes(daemon, p: Plan) -> list:
    """The kernel routes the new file needs, through the privileged helper,
    before anything else changes; ConfigError naming the key (and nothing
    left added) when the kernel refuses one."""
    from ..privsep.routes import RouteError
    routes = getattr(daemon, "kernel_routes", None)
    if routes is None:
        return []
    try:
        return routes.install([n for pc in p.fresh.peers for n in pc.allowed_ips])
    except RouteError as exc:
        for i, pc in enumerate(p.fresh.peers):
            if exc.net in pc.allowed_ips:
                raise ConfigError("peer[%d].allowed_ips[%d]" % (i, list(pc.allowed_ips).index(exc.net)),
                                  "the kernel does not route %s into %s, and the route cannot be added: %s"
                                  % (exc.net, exc.device, exc.reason)) from None
        raise ConfigError("routes", str(exc)) from None


def _prune_routes(daemon, report: dict, added: list, fresh: Settings) -> None:
    """After the reload: remove the kernel routes no peer has any more; the
    exit node's allowed peers (allow_exit) follow the file."""
    routes = getattr(daemon, "kernel_routes", None)
    if routes is None:
        return
    if routes.exit is not None:
        from ..privsep.exitnode import ExitError, allowed_prefixes
        try:
            if routes.exit.sync(allowed_prefixes(fresh.peers)):
                report["exit"] = routes.exit.status()["allowed"]
        except ExitError as exc:
            report["notes"].append(str(exc))
    removed, failed = routes.prune([n for pe in daemon.engine.peers.values() for n in pe.allowed_ips])
    report["routes"] = {"added": [str(n) for n in added], "removed": [str(n) for n in removed]}
    for net, why in failed:
        report["notes"].append("route %s not removed from the kernel: %s" % (net, why))


def reload(daemon) -> dict:
    """Read ``daemon.s.config_path`` and apply it; ConfigError changes nothing."""
    if daemon.s.config_path is None:
        raise ConfigError("--config", "phantomd was started without a config file: nothing "
                          "to reload")
    fresh = read(daemon.s.config_path)
    baseline = getattr(daemon, "_file_settings", None)
    p = plan(daemon, fresh, baseline)
    added = _install_routes(daemon, p)
    report = apply(daemon, p)
    _prune_routes(daemon, report, added, fresh)
    daemon._file_settings = fresh
    log.info("reload: %s: %d added, %d removed, %d changed, %d unchanged%s",
             daemon.s.config_path, len(report["added"]), len(report["removed"]),
             len(report["changed"]), len(report["unchanged"]),
             ", firewall replaced" if report["firewall"] else "")
    return report


def baseline(settings: Settings) -> Optional[Settings]:
    """What the file said at start (flags aside), for telling later file edits
    from what the daemon learnt since (a roamed endpoint); None without a file."""
    if settings.config_path is None:
        return None
    try:
        return read(settings.config_path)
    except ConfigError:
        return None
