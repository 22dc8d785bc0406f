"""phantomd: the one module that wires the control plane to a data path.

Start-up order (each step can fail with a clear message and exit code):

  1. parse flags and the config file and compile the firewall rules (bad
     config: exit 2, nothing opened);
  2. load the private key (refused when readable by others); resolve
     ``--user`` (default ``nobody`` when root);
  3. open what needs root: the UDP socket, the TUN/TAP device or the test
     port; with a device, start the privileged helper
     (:mod:`phantom.privsep`: it keeps CAP_NET_ADMIN alone and changes
     routes, rules and nftables for the daemon, then and after the drop),
     which brings the link up and adds its addresses and routes (netlink);
  4. lock down (root only, :func:`phantom.privileges.lock_down`): still
     single-threaded -- refused, naming the threads, if any thread exists --
     empty the capability bounding set, clear keepcaps and the inheritable
     and ambient sets, set ``PR_SET_NO_NEW_PRIVS``.  These are per-thread
     attributes that new threads inherit, so every thread started after this
     point (libuv workers for getaddrinfo, the fast path's workers, executor
     threads) has them too.  Nothing may exec a root helper after this step;
  5. on the uvloop loop (the first threads may appear from here on): the
     API token and listeners, the data path (reference, or Cython with
     --fast) and the sans-IO control engine with the configured peers;
     every module needed later is imported now;
  6. switch user (root only, :func:`phantom.privileges.switch_user`): no
     supplementary groups, setresgid/setresuid, which glibc applies to every
     thread and which clears the permitted, effective and ambient sets; then
     every task in /proc/self/task is checked (uid, gid, no groups, all five
     capability sets 0, NoNewPrivs 1) and start-up fails if one differs;
  7. start the data path, publish to the key directory, run the timer tick,
     handle SIGTERM/SIGINT (stop) and SIGHUP (reload the config file in
     place: :mod:`phantom.control.reload`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Optional

from . import __version__, crypto
from .constants import Tunables
from .control import actions as A
from .control.config import ConfigError, Settings, parse_daemon_args
from .control.engine import Engine
from .control.errors import ApiError, BadRequest, Conflict, HandshakeTimeout, NotFound, ServiceUnavailable
from .control.peer import PeerState
from .dataplane.types import Mode, RelayVia
from .dataplane.udp import format_endpoint, open_test_socket, open_udp_socket, plain

log = logging.getLogger("phantom.daemon")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


class Daemon:
    """Owns the engine, the data path and the API; carries out the engine's actions."""

    nat = None    # nat.traversal.Traversal when NAT traversal is configured (build())
    # Health, for /status, /metrics and the exit status (serve(), main()):
    ready = False                  # set up and serving: the API answers, the device is up
    failure: Optional[str] = None  # why the data plane stopped (a fast-path worker died)
    exit_code = 0                  # main()'s status once serve() returns
    notifier = None                # phantom.sdnotify.Notifier under systemd (main())
    priv = None                    # privsep.PrivClient: the privileged helper (TUN/TAP mode)
    kernel_routes = None           # privsep.routes.KernelRoutes (TUN mode): reload adds/removes routes

    def __init__(self, settings: Settings, private_key: bytearray):
        self.s = settings
        self.t: Tunables = settings.tunables
        from .protocols.registry import configured_suites
        try:
            suites = configured_suites(settings.ciphers)
        except ValueError as exc:
            raise ConfigError("interface.ciphers", str(exc)) from None
        self.engine = Engine(private_key, self.t, suites=suites)
        self.dp = None
        self.device = None
        self.udp = None
        self.test_sock = None
        self.fw = self._compile_firewall(settings.firewall)   # bad rules: ConfigError before anything opens
        # WireGuard peers' preshared keys, read now (as root, before any user
        # switch) and checked like the private key: a bad file exits 2.
        self._psks = self._load_preshared_keys(settings)
        self._api_runner = None
        self._stop = asyncio.Event()
        self._state_changed = asyncio.Condition()
        self.started = time.time()
        self.uid = os.getuid()
        self.directory = None            # DirectoryClient when --directory is set
        self._dir_key = bytearray(private_key) if settings.directory else None
        self._dir_tasks: set = set()
        self._endorsement_checks: dict = {}   # public key -> monotonic time of the last lookup
        self.drop_to = None              # passwd entry to switch to in serve() (root only), set by main()
        self.nat = None                  # nat.traversal.Traversal: rendezvous roles, paths
        self._uapi = None                # WireGuard's UAPI socket ([interface] uapi = true)
        from .control import reload as _reload
        self._file_settings = _reload.baseline(settings)   # the file as read at start (reload diffs)
        self._metrics = None             # prometheus-client registry, made at the first scrape
        self._metrics_runner = None      # the metrics_listen server, when configured
        self.names = None                # phantom.dns.service.NameService with [dns] (bad: exit 2)
        if settings.dns is not None and settings.dns.enabled:
            from .dns.service import NameService
            self.names = NameService(settings.dns, settings.name, settings.addresses)

    # ------------------------------------------------------------- setup
    def open_privileged(self) -> None:
        s = self.s
        self.udp = open_udp_socket(s.listen_port)
        if s.mode is Mode.TEST:
            self.test_sock = open_test_socket(s.test_port)
        else:
            from .dataplane.tun import open_device
            from .privsep.routes import start_for_device
            name = s.device or ("phantom0" if s.mode is Mode.TUN else "phantap0")
            flags = 0
            if s.fast and s.mode is Mode.TUN:
                from .dataplane.fast import DEVICE_FLAGS   # virtio-net header: TSO/USO offloads
                flags = DEVICE_FLAGS
            self.device = open_device(s.mode, name, s.mtu, flags, up=False)
            routes = [n for p in s.peers for n in p.allowed_ips] if s.mode is Mode.TUN else []
            self.priv, self.kernel_routes = start_for_device(
                self.device.name, s.mode.value, s.addresses, routes, self.udp,
                s.state_dir, self.drop_to, kill_switch=s.kill_switch,
                exit_prefixes=[n for p in s.peers if p.allow_exit for n in p.allowed_ips] if s.exit_node else None)
        if self.names is not None:       # port 53 and resolved's split DNS need root
            self.names.bind()
            self.names.register_split_dns(self.device.name if self.device else None)

    def build(self) -> None:
        s = self.s
        from .dataplane import ciphers
        policy = ciphers.chacha_policy()     # measured now, not at the first WireGuard packet
        log.info("transport ciphers: Phantom sessions %s; WireGuard ChaCha20-Poly1305: %s (%s)",
                 " > ".join(self._suite_names()), policy.implementation, policy.decided_by)
        kwargs = dict(events=self, tunables=self.t, firewall=self.fw, local_addresses=s.addresses,
                      test_deliver=s.test_deliver, mtu=s.mtu)
        fd = self.device.fd if self.device else None
        if s.fast:
            from .dataplane.fast import FastDataPath
            self.dp = FastDataPath(s.mode, self.udp, fd, self.test_sock, **kwargs)
        else:
            from .dataplane.reference import ReferenceDataPath
            self.dp = ReferenceDataPath(s.mode, self.udp, fd, self.test_sock, **kwargs)
        for pc in s.peers:
            peer = self.engine.add_peer(pc.public_key, pc.name, pc.allowed_ips, pc.endpoint,
                                        pc.persistent_keepalive, protocol=pc.protocol,
                                        preshared_key=self._psks.get(pc.name),
                                        suites=self.peer_suites(pc))
            self.dp.add_peer(peer.id, pc.allowed_ips)
            if pc.endpoint:
                self.dp.set_endpoint(peer.id, pc.endpoint)
        for psk in self._psks.values():          # the engine holds its own copies
            crypto.memzero(psk)
        self._psks.clear()
        if s.mode is Mode.TEST and self.engine.peers:
            self.dp.set_test_peer(next(iter(self.engine.peers)))
        servers = [pc.public_key for pc in s.peers if pc.rendezvous]
        if s.rendezvous or servers:
            from .nat.traversal import Traversal
            relay_capable = hasattr(self.dp, "set_relay_route")    # can be relayed
            can_relay = hasattr(self.dp, "set_relay")               # can relay for others
            self.nat = Traversal(self.engine, serve=s.rendezvous, servers=servers,
                                 relay=s.relay and can_relay, relay_capable=relay_capable,
                                 local_endpoints=self._local_endpoints)
            if s.relay and can_relay:
                self.dp.set_relay(True)
            if servers and not relay_capable:
                log.info("NAT traversal: this data path punches holes but cannot be relayed (the reference path can)")

    def _local_endpoints(self, toward) -> list:
        """Our own (LAN) endpoints, for peers behind the same NAT: the address
        the kernel picks toward the rendezvous ``toward``, and [interface] endpoints."""
        import socket
        out = []
        try:
            fam = socket.AF_INET6 if ":" in toward[0] else socket.AF_INET
            with socket.socket(fam, socket.SOCK_DGRAM) as probe:
                probe.connect(tuple(toward[:2]))
                out.append((probe.getsockname()[0], self.udp.getsockname()[1]))
        except OSError:
            pass
        return out + [tuple(ep) for ep in self.s.endpoints]

    @staticmethod
    def _load_preshared_keys(settings: Settings) -> dict:
        from .protocols.wireguard.keys import load_preshared_key
        psks = {}
        for i, pc in enumerate(settings.peers):
            if pc.preshared_key_file is not None:
                psks[pc.name] = load_preshared_key(pc.preshared_key_file,
                                                   "peer[%d].preshared_key_file" % i)
        return psks

    def _compile_firewall(self, section: dict):
        from .dataplane import firewall
        try:
            return firewall.build(section, self._peer_names(), self.s.mode)
        except firewall.FirewallError as exc:
            raise ConfigError("firewall", str(exc)) from None

    def _peer_names(self) -> dict:
        names = {}
        for p in self.engine.peers.values():
            names[p.name] = p.id
            names[_b64(p.public_key)] = p.id
        for i, pc in enumerate(self.s.peers):   # before build(), ids follow config order
            names.setdefault(pc.name, i + 1)
            names.setdefault(_b64(pc.public_key), i + 1)
        return names

    # ------------------------------------------------- data-path events
    def control_packet(self, data: bytes, addr) -> None:
        if self.nat is not None and data[:1] == b"\x05":     # wire.MessageType.PEER_CONTROL
            self._do(self.nat.handle_datagram(data, plain(addr)))
            return
        self._do(self.engine.handle_datagram(data, plain(addr)))

    def handshake_needed(self, peer_id: int) -> None:
        self._do(self.engine.handshake_needed(peer_id))
        if self.nat is not None:
            self._do(self.nat.handshake_needed(peer_id))

    def keypair_confirmed(self, peer_id: int, local_index: int) -> None:
        if self.nat is not None:
            self.nat.keypair_confirmed(peer_id, local_index)
        self._do(self.engine.keypair_confirmed(peer_id, local_index))

    # ----------------------------------------------------- carry out actions
    def _do(self, actions: list) -> None:
        dp = self.dp
        if not A.keys_before_sends(actions):   # the engine's order invariant (actions.py)
            log.error("bug: the engine asked to send before installing keys; installing first: %r",
                      [type(a).__name__ for a in actions])
            actions = A.installs_first(actions)
        for act in actions:
            if isinstance(act, A.SendDatagram):
                dp.send_control(act.data, act.addr)
            elif isinstance(act, A.InstallKeypair):
                dp.install_keypair(act.keypair, act.confirmed)
                if self.nat is not None:
                    self.nat.keypair_installed(act.keypair, act.confirmed)
            elif isinstance(act, A.RetireKeypair):
                dp.retire_keypair(act.local_index)
                if self.nat is not None:
                    self._do(self.nat.keypair_retired(act.local_index))
            elif isinstance(act, A.ClearKeys):
                dp.clear_keys(act.peer_id)
                if self.nat is not None:
                    self._do(self.nat.keys_cleared(act.peer_id))
            elif isinstance(act, A.SetEndpoint):
                dp.set_endpoint(act.peer_id, act.addr)
                if self.nat is not None:
                    self.nat.endpoint_set(act.peer_id, act.addr)
            elif isinstance(act, A.SendKeepalive):
                dp.send_keepalive(act.peer_id)
            elif isinstance(act, A.SetRelayRoute):
                dp.set_relay_route(act.peer_id, act.relay_peer, act.relay_id)
            elif isinstance(act, A.SetRelayPair):
                dp.set_relay_pair(act.src_peer, act.relay_id, act.dest_peer)
            elif isinstance(act, A.StateChanged):
                asyncio.get_running_loop().create_task(self._notify())
            elif isinstance(act, A.UnknownKey):
                self._check_endorsement(act.public_key, act.addr)
            else:  # pragma: no cover - a new action type without a handler is a bug
                raise TypeError("unhandled action %r" % (act,))

    async def _notify(self) -> None:
        async with self._state_changed:
            self._state_changed.notify_all()

    async def _ticker(self) -> None:
        while not self._stop.is_set():
            try:
                # only the peers a timer rule can concern (the engine's
                # active set): an idle peer costs the tick nothing
                counters = {pid: self.dp.counters(pid) for pid in self.engine.active_ids()}
                self._do(self.engine.tick(counters))
                if self.nat is not None:
                    self._do(self.nat.tick())
                if self.names is not None and self.names.due(
                        (len(self.engine.peers), max(self.engine.peers, default=0))):
                    self.sync_names()        # peers opened, closed or admitted: within 1 s
            except Exception:  # a bug in one tick must not stop the timers
                log.exception("timer tick failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.t.timer_tick)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------- key directory
    async def _start_directory(self) -> None:
        """Publish our record and keep it fresh; pin configured names; watch our peers."""
        if self.s.directory == "dht":
            from .directory.client import DhtDirectoryClient
            self.directory = DhtDirectoryClient(
                self._dir_key, listen="0.0.0.0:%d" % self.s.dht_port,
                bootstrap=self.s.dht_bootstrap, trusted_signers=self.s.trusted_signers)
            await self.directory.start()
        else:
            from .directory import DirectoryClient
            self.directory = DirectoryClient(self.s.directory, self._dir_key,
                                             trusted_signers=self.s.trusted_signers)
        for p in self.engine.peers.values():
            self.directory.pin(p.name, p.public_key)
        if self.s.trusted_signers:
            self.engine.report_unknown_keys = True
        if self.s.name:
            allowed = ["%s/%d" % (a.ip, a.max_prefixlen) for a in self.s.addresses]
            self._spawn(self.directory.keep_published(self.s.name, self._advertised, allowed,
                                                      retry=2.0 if self.s.directory == "dht" else 5.0,
                                                      endorsers=self.s.published_endorsers))
            log.info("publishing %s to the directory %s", self.s.name, self._directory_text())
        self._spawn(self._watch_peers())

    def _directory_text(self) -> str:
        d = self.s.directory
        if d == "dht":
            return "dht (bootstrap %s)" % (", ".join("%s:%d" % b for b in self.s.dht_bootstrap) or "none")
        return ", ".join(d) if isinstance(d, list) else str(d)

    def _advertised(self) -> list:
        """Our endpoints for the directory: the configured ones, or with
        endpoints = "auto", the address this host reaches the directory (or the
        first DHT bootstrap node) from, asked again on every call."""
        eps = [ep for ep in self.s.endpoints if ep[0] != "auto"]
        if self.s.endpoints_auto:
            ip = _source_address(self._directory_hosts())
            port = self.udp.getsockname()[1] if self.udp else self.s.listen_port
            if ip and (ip, port) not in eps:
                eps.insert(0, (ip, port))
        return ["%s:%d" % ep if ":" not in ep[0] else "[%s]:%d" % ep for ep in eps]

    def _directory_hosts(self) -> list:
        import urllib.parse
        if self.s.directory == "dht":
            return [h for h, _ in self.s.dht_bootstrap]
        urls = self.s.directory if isinstance(self.s.directory, list) else [self.s.directory]
        return [urllib.parse.urlsplit(u).hostname for u in urls if urllib.parse.urlsplit(u).hostname]

    async def _watch_peers(self) -> None:
        """Follow our peers' records (pushed by a directory front end, polled on the
        DHT): a peer that published a new endpoint is reached there at once."""
        from .directory import DirectoryError
        watching, task = frozenset(), None
        try:
            while not self._stop.is_set():
                keys = frozenset(p.public_key for p in self.engine.peers.values())
                if keys != watching or (task is not None and task.done()):
                    if task is not None:
                        task.cancel()
                    watching = keys
                    task = asyncio.ensure_future(self.directory.watch(keys, self._peer_record))
                try:
                    await asyncio.wait_for(self._stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        except DirectoryError as exc:   # pragma: no cover - watch logs and retries itself
            log.warning("watching peers' records stopped: %s", exc)
        finally:
            if task is not None:
                task.cancel()

    def _peer_record(self, rec) -> None:
        """A newer verified record of one of our peers."""
        peer = self.engine.peer_by_key(rec.public_key)
        if peer is None:
            return
        if rec.revoked:
            log.warning("peer=%s revoked its key in the directory", peer.name)
            if peer.dynamic:
                self._do(self.engine.remove_peer(peer.id))
                self.dp.remove_peer(peer.id)
            return
        if not rec.endpoints:
            return
        eps = [plain(e) for e in rec.endpoints]
        if peer.endpoint is not None and plain(peer.endpoint) in eps:
            return
        log.info("peer=%s moved: the directory says %s (was %s)", peer.name, format_endpoint(eps[0]),
                 format_endpoint(peer.endpoint) if peer.endpoint else "-")
        # a handshake that waits for an endpoint goes out now (engine.set_endpoint)
        self._do(self.engine.set_endpoint(peer.id, eps[0]))
        if peer.state is PeerState.ESTABLISHED:
            self._do([A.SendKeepalive(peer.id)])

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._dir_tasks.add(task)
        task.add_done_callback(self._dir_tasks.discard)

    def _check_endorsement(self, public_key: bytes, addr) -> None:
        """An unknown key knocked: look for a trusted endorsement (rate-limited
        per key).  The initiator's next retry succeeds once it is added."""
        if self.directory is None:
            return
        now = time.monotonic()
        if len(self._endorsement_checks) > 4096:
            self._endorsement_checks = {k: t for k, t in self._endorsement_checks.items() if now - t < 2.0}
        if now - self._endorsement_checks.get(public_key, float("-inf")) < 2.0 \
                or len(self._dir_tasks) >= 8 or len(self._endorsement_checks) > 4096:
            return
        self._endorsement_checks[public_key] = now
        self._spawn(self._admit_endorsed(public_key, addr))

    async def _admit_endorsed(self, public_key: bytes, addr) -> None:
        from .directory import DirectoryError
        try:
            rec = await self.directory.resolve_key(public_key, fresh=True)
        except DirectoryError as exc:
            log.info("directory lookup of an unknown key failed: %s", exc)
            return
        if rec is None or not rec.endorsed or self.engine.peer_by_key(public_key) is not None:
            return
        try:
            self._add_from_record(rec, plain(addr))
        except (BadRequest, Conflict) as exc:
            log.info("endorsed key not admitted: %s", exc)
            return
        log.info("peer=%s admitted: its record carries a trusted endorsement", rec.name)

    def _add_from_record(self, rec, endpoint, name: Optional[str] = None):
        """A peer learnt from the directory.  Its allowed IPs are its owner's
        claim, and this node decides what of it to take (docs/usage.md,
        "Peers from the directory"):

        * only prefixes inside ``directory_allowed_ips`` (default: the
          interface's own subnets) are taken; the rest are left out, logged.
          An endorsement vouches for a key and a name, not for addresses: it
          does not widen the range;
        * a prefix that overlaps any configured or admitted peer's prefix, in
          either direction (IPv4 and IPv6), refuses the whole record (Conflict,
          logged): an LPM route inside another peer's prefix would take part
          of that peer's traffic.  The peer is added *exclusive*: later peers
          may not overlap its prefixes either (Engine.route_problem)."""
        import ipaddress
        protocol = getattr(rec, "protocol", "phantom")     # the record says what the key speaks
        if protocol == "wireguard" and self.s.mode is not Mode.TUN:
            raise BadRequest("%s is a WireGuard peer (its directory record says so): it needs a "
                             "daemon in tun mode" % rec.name)
        accepted = self._directory_range()
        nets, outside = [], []
        for n in rec.allowed_ips:
            n = ipaddress.ip_network(n)
            if any(n.version == c.version and n.subnet_of(c) for c in accepted):
                nets.append(n)
            else:
                outside.append(n)
        who = "%s (%s)" % (rec.name, _b64(rec.public_key))
        if outside:
            log.warning("directory record of %s: %s left out: outside the prefixes this node "
                        "accepts from the directory (%s)", who, ", ".join(map(str, outside)),
                        ", ".join(map(str, accepted)) or "none")
        problem = self.engine.route_problem({None: nets}, new_exclusive=True)
        if problem is not None:
            log.warning("directory record of %s refused: %s", who, problem)
            raise Conflict("the directory record of %s is refused: %s (a record never takes "
                           "another peer's addresses)" % (rec.name, problem))
        peer = self.engine.add_peer(rec.public_key, self._free_name(name or rec.name), nets, endpoint,
                                    dynamic=True, protocol=protocol, exclusive=True)
        self.dp.add_peer(peer.id, nets)
        if endpoint:
            self.dp.set_endpoint(peer.id, endpoint)
        return peer

    def _directory_range(self) -> list:
        """Where a directory record's allowed IPs may lie: [interface]
        directory_allowed_ips, or the interface's own subnets."""
        if self.s.directory_allowed_ips is not None:
            return list(self.s.directory_allowed_ips)
        return [a.network for a in self.s.addresses]

    def _free_name(self, name: str) -> str:
        taken = self.engine.peer_by_name
        if taken(name) is None:
            return name
        i = 2
        while taken("%s-%d" % (name, i)) is not None:
            i += 1
        return "%s-%d" % (name, i)

    async def _resolve(self, name: Optional[str] = None, key: Optional[bytes] = None):
        """A directory record by name or key; None if absent.  Never by
        endpoint: an endpoint in a record is a claim anyone can make, not an
        identity (see :meth:`_peer_at`)."""
        if self.directory is None:
            return None
        from .directory import DirectoryError
        try:
            if key is not None:
                return await self.directory.resolve_key(key, fresh=True)   # the user asked: no negative cache
            if name:
                return await self.directory.resolve_name(name)
        except DirectoryError as exc:
            raise ServiceUnavailable("%s; nothing cached" % exc)     # "directory unavailable: ..."
        return None

    # ------------------------------------------------------ the API's view
    def _peer_named(self, ref: str):
        """The peer called ``ref``, or whose public key (base64) is ``ref``;
        the first configured if both match different peers.  Two dict
        lookups, not a walk over every peer."""
        import base64
        import binascii
        found = [p for p in (self.engine.peer_by_name(ref),) if p is not None]
        try:
            raw = base64.b64decode(ref, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 32 and _b64(raw) == ref:
            p = self.engine.peer_by_key(raw)
            if p is not None:
                found.append(p)
        return min(found, key=lambda p: p.id) if found else None

    def _find_peer(self, ref: str):
        peer = self._peer_named(ref)
        if peer is None:
            raise NotFound("no peer %r (give its name or public key)" % ref)
        return peer

    def _peer_at(self, endpoint):
        """The peer that ``open IP:PORT`` without a key means: one with a
        live session whose authenticated endpoint is there (the handshake
        proved the key), else the configured peer whose config file entry
        names that endpoint.  Never a key that only *claims* the endpoint (a
        directory record, or an endpoint a record moved a peer to): anyone
        can claim any endpoint.  Two candidates: Conflict, open by name."""
        ep = plain(endpoint)
        proved = []
        for p in self.engine.peers.values():
            if p.sessions:
                at = self.dp.endpoint(p.id)
                if at is not None and not isinstance(at, RelayVia) and plain(at) == ep:
                    proved.append(p)
        if not proved:
            keys = [bytes(pc.public_key) for pc in self.s.peers
                    if pc.endpoint is not None and plain(pc.endpoint) == ep]
            proved = [p for p in map(self.engine.peer_by_key, keys) if p is not None]
        if len(proved) > 1:
            raise Conflict("%s is the endpoint of peers %s: open one by name"
                           % (format_endpoint(endpoint), ", ".join(p.name for p in proved)))
        return proved[0] if proved else None

    async def open(self, endpoint: tuple, public_key: Optional[str] = None, name: Optional[str] = None,
                   allowed_ips=None, protocol: Optional[str] = None) -> dict:
        from .control.keys import decode_public_key
        peer = None
        rec = None
        key = None
        if endpoint is None:
            if not name:
                raise BadRequest("give an endpoint IP:PORT or a peer name")
            peer = self._peer_named(name)
            if peer is None and public_key:
                # a name of our choosing for a key looked up in the directory (the DHT
                # answers by key only): names never come from the directory's data
                try:
                    key = decode_public_key(public_key)
                except ValueError as exc:
                    raise BadRequest("public_key: %s" % exc) from None
                if key == self.engine.public_key:
                    raise BadRequest("public_key: this daemon's own public key cannot be a peer")
                peer = self.engine.peer_by_key(key)
                if peer is None:
                    rec = await self._resolve(key=key)
                    if rec is None:
                        raise NotFound("no record for key %s in the key directory" % public_key
                                       if self.directory else "no peer %r in the config (and no "
                                       "--directory)" % name)
                    if not rec.endpoints:
                        raise BadRequest("the directory record of %s has no endpoint" % public_key)
                    endpoint = plain(rec.endpoints[0])
                    self.directory.pin(name, key)
            if endpoint is not None:
                pass
            elif peer is None:
                rec = await self._resolve(name=name)
                if rec is None:
                    raise NotFound("no peer %r in the config%s" % (
                        name, " or the key directory" if self.directory else " (and no --directory)"))
                if not rec.endpoints:
                    raise BadRequest("the directory record of %s has no endpoint" % name)
                endpoint = plain(rec.endpoints[0])
            elif peer.endpoint is None:
                # a configured key without an endpoint: where it is now is the directory's
                found = await self._resolve(key=peer.public_key)
                if found is None or not found.endpoints:
                    raise BadRequest("peer %s has no known endpoint: open it as IP:PORT%s" % (
                        peer.name, "" if self.directory is None else
                        " (the key directory has no endpoint for it either)"))
                endpoint = plain(found.endpoints[0])
            else:
                endpoint = plain(peer.endpoint)
        elif public_key:
            try:
                key = decode_public_key(public_key)
            except ValueError as exc:
                raise BadRequest("public_key: %s" % exc) from None
            if key == self.engine.public_key:
                raise BadRequest("public_key: this daemon's own public key cannot be a peer")
            peer = self.engine.peer_by_key(key)
        elif name:
            peer = self._find_peer(name)
        else:
            peer = self._peer_at(endpoint)
            if peer is None:
                raise BadRequest("no public key known for %s: give \"public_key\" in the request body, "
                                 "configure the peer with this endpoint, or open it by name (an "
                                 "endpoint in the key directory is a claim, not an identity)"
                                 % format_endpoint(endpoint))
        created = False
        if peer is None and rec is not None:
            peer = self.engine.peer_by_key(rec.public_key)
            if peer is None:
                peer = self._add_from_record(rec, endpoint, name if public_key else None)
                created = True
        if peer is None:
            nets = []
            try:
                import ipaddress
                nets = [ipaddress.ip_network(n) for n in (allowed_ips or [])]
            except ValueError as exc:
                raise BadRequest("allowed_ips: %s" % exc) from None
            try:
                # exclusive: a peer added at run time never changes where an
                # existing peer's traffic goes (no overlap either way)
                peer = self.engine.add_peer(key, name or "", nets, endpoint, dynamic=True,
                                            protocol=protocol or "phantom", exclusive=True)
            except ValueError as exc:
                raise Conflict(str(exc)) from None
            self.dp.add_peer(peer.id, nets)
            created = True
        if protocol is not None and peer.protocol != protocol:
            raise Conflict("peer %s speaks %s, not %s" % (peer.name, peer.protocol, protocol))
        if peer.protocol == "wireguard" and self.s.mode is not Mode.TUN:
            raise BadRequest("a WireGuard peer carries IP packets: it needs a daemon in tun mode")
        if self.s.mode is Mode.TEST:
            self.dp.set_test_peer(peer.id)
        if peer.state is PeerState.ESTABLISHED:
            return self.peer_info(peer, already=True)
        self._do(self.engine.open(peer.id, endpoint))
        epoch = peer.epoch
        deadline = (self.t.open_attempts + 1) * (self.t.rekey_timeout + self.t.handshake_jitter) + 0.5
        try:
            async with self._state_changed:
                await asyncio.wait_for(self._state_changed.wait_for(
                    lambda: peer.state in (PeerState.ESTABLISHED, PeerState.DEAD) or peer.epoch != epoch),
                    deadline)
        except asyncio.TimeoutError:
            pass
        if peer.state is PeerState.ESTABLISHED:
            return self.peer_info(peer)
        if peer.epoch != epoch or self.engine.peers.get(peer.id) is not peer:
            # Closed (or removed) while we waited: a later open owns it now.
            raise Conflict("peer %s was closed while the handshake was under way" % peer.name)
        msg = "no answer from %s after %d handshake attempts" % (format_endpoint(endpoint), peer.attempts or
                                                                 self.t.open_attempts)
        if created:
            # A peer this open added is forgotten again: engine (and its
            # indexes) and data-path tables.
            self._do(self.engine.remove_peer(peer.id))
            self.dp.remove_peer(peer.id)
        else:
            # Not close(): a live session the peer still uses keeps its keys.
            self._do(self.engine.open_failed(peer.id))
        raise HandshakeTimeout(msg)

    async def close(self, ref: str) -> dict:
        peer = self._find_peer(ref)
        if peer.dynamic:
            self._do(self.engine.remove_peer(peer.id))
            self.dp.remove_peer(peer.id)
            return {"closed": peer.name, "removed": True}
        self._do(self.engine.close(peer.id))
        return {"closed": peer.name, "removed": False}

    def peer_suites(self, pc) -> Optional[tuple]:
        """A [[peer]]'s own ciphers as suites (None: the interface's)."""
        from .protocols.registry import peer_suites
        try:
            return peer_suites(pc.ciphers)
        except ValueError as exc:
            raise ConfigError("peer %s: ciphers" % pc.name, str(exc)) from None

    def _suite_names(self) -> list:
        from .wire import suite_name
        return [suite_name(x) for x in self.engine.suites]

    def crypto_status(self) -> dict:
        """What /status says about the transport ciphers."""
        from .dataplane import ciphers
        return {
            "phantom_suites": self._suite_names(),
            "suites_configured": self.s.ciphers is not None,
            "aes_hardware": crypto.aes_hardware(),
            "cpu": crypto.cpu_features(),
            "chacha20poly1305": ciphers.chacha_policy().describe(),
        }

    def peer_info(self, peer, already: bool = False) -> dict:
        from .dataplane.ciphers import CIPHER_NAMES
        c = self.dp.counters(peer.id)
        now = time.monotonic()
        cipher = peer.cipher
        info = {
            "name": peer.name,
            "public_key": _b64(peer.public_key),
            "protocol": peer.protocol,
            "cipher": CIPHER_NAMES.get(cipher) if cipher is not None else None,
            "endpoint": format_endpoint(self._endpoint_in_use(peer)),
            "allowed_ips": [str(n) for n in peer.allowed_ips],
            "state": peer.state.value,
            "last_handshake": peer.last_handshake_wall or None,
            "latest_handshake": round(now - peer.last_handshake, 3) if peer.last_handshake_wall else None,
            "rx_bytes": c.rx_bytes, "tx_bytes": c.tx_bytes,
            "rx_packets": c.rx_packets, "tx_packets": c.tx_packets,
            "drops": c.drops,
            "persistent_keepalive": peer.persistent_keepalive,
            "sessions": len(peer.sessions),
            "path": peer.path,
        }
        if self.nat is not None:
            info.update(self.nat.describe(peer.id))
        if already:
            info["already_established"] = True
        return info

    def _endpoint_in_use(self, peer):
        ep = self.dp.endpoint(peer.id) or peer.endpoint
        if isinstance(ep, RelayVia):          # relayed: the relay's own endpoint
            ep = self.dp.endpoint(ep.relay_peer)
        return ep

    def peers(self) -> list:
        return [self.peer_info(p) for p in self.engine.peers.values()]

    def status(self) -> dict:
        return {
            "version": __version__,
            "public_key": _b64(self.engine.public_key),
            "mode": self.s.mode.value,
            "data_path": "fast" if self.s.fast else "reference",
            "device": self.device.name if self.device else None,
            "device_up": self._device_up(),
            "listen_port": self.udp.getsockname()[1],
            "test_port": self.s.test_port if self.s.mode is Mode.TEST else None,
            "uid": os.getuid(),
            "uptime": round(time.time() - self.started, 3),
            "ready": self.ready and self.failure is None,
            "healthy": self.failure is None,
            "failure": self.failure,
            "peers": self.peers(),
            "drops": self.dp.global_drops(),
            "handshake_drops": dict(self.engine.drops),
            "directory": self.s.directory,
            "directory_counters": self.directory.counters() if self.directory is not None else None,
            "nat": self._nat_status(),
            "crypto": self.crypto_status(),
            "privsep": self._privsep_status(),
            "dns": self.names.stats() if self.names is not None else None,
        }

    def _privsep_status(self) -> Optional[dict]:
        """The privileged helper: its pid and the routes it holds for us."""
        if self.priv is None:
            return None
        kr = self.kernel_routes
        return dict(kr.status() if kr is not None else {}, pid=self.priv.pid)

    def _device_up(self) -> Optional[bool]:
        """Whether our TUN/TAP link is up (None without a device, or when it is gone)."""
        if self.device is None:
            return None
        from .dataplane.tun import link_is_up
        return link_is_up(self.device.name)

    def _nat_status(self):
        if self.nat is None:
            return None
        out = self.nat.status()
        if self.s.relay and hasattr(self.dp, "relayed"):
            out["relayed"] = dict(self.dp.relayed)
        return out

    def firewall(self) -> dict:
        if self.fw is None:
            return {"rules": [], "drops": {}}
        return self.fw.describe()

    async def set_firewall(self, rules: dict) -> dict:
        from .dataplane import firewall
        try:
            new = firewall.build(rules, self._peer_names(), self.s.mode, previous=self.fw)
        except firewall.FirewallError as exc:
            raise BadRequest(str(exc)) from None
        self.fw = new
        self.dp.set_firewall(new)
        log.info("firewall replaced (%d rules)", len(new.describe().get("rules", [])))
        return new.describe()

    async def reload(self) -> dict:
        """Re-read the config file and apply it in place (POST /reload, `phantom
        reload`); a bad file changes nothing and is refused naming the key."""
        from .control import reload as _reload
        try:
            report = _reload.reload(self)
            if self.names is not None:
                self.sync_names()
            return report
        except ConfigError as exc:
            log.error("reload refused, nothing changed: %s", exc)
            raise BadRequest("config not reloaded, nothing changed: %s" % exc) from None

    def reload_signal(self) -> None:
        """SIGHUP: the same reload; the outcome goes to the log."""
        from .control import reload as _reload
        try:
            _reload.reload(self)
            if self.names is not None:
                self.sync_names()
        except ConfigError as exc:
            log.error("SIGHUP: reload refused, nothing changed: %s", exc)
        except Exception:  # a bug must not take the daemon down from a signal handler
            log.exception("SIGHUP: reload failed")

    reload_firewall = reload_signal      # the old name (SIGHUP used to reload the firewall only)

    def sync_names(self) -> None:
        """The name service's feed until the network's member stream: our
        own name and addresses, and every peer's name with its host addresses."""
        from .dns.service import peer_entries
        self.names.sync(peer_entries(self.names.own_name, self.s.addresses,
                                     [(p.name, p.allowed_ips) for p in self.engine.peers.values()]))

    def dns(self) -> dict:
        """GET /dns: the names served, where, and the counters."""
        if self.names is None:
            return {"enabled": False, "names": []}
        return self.names.describe()

    def metrics(self) -> bytes:
        """GET /metrics: the Prometheus text format, read at scrape time."""
        from .control import metrics as _metrics
        if self._metrics is None:
            self._metrics = _metrics.make_registry(self)
        return _metrics.render(self._metrics)

    # ------------------------------------------------------------------ run
    def _write_runtime_record(self) -> None:
        """Tell the `phantom` client where this daemon's API and token are
        (phantom/runtime.py): no --token-file needed with a custom state_dir."""
        from . import runtime
        s = self.s
        path = runtime.write_record({
            "http_listen": s.http_listen if s.http_port else None,
            "http_port": s.http_port,
            "http_socket": os.path.abspath(s.http_socket) if s.http_socket else None,
            "state_dir": os.path.abspath(s.state_dir),
            "token_file": os.path.abspath(s.token_file),
            "config": os.path.abspath(s.config_path) if s.config_path else None,
            "mode": s.mode.value,
            "device": self.device.name if self.device else None,
            "listen_port": self.udp.getsockname()[1],
        })
        if path is not None:
            log.debug("runtime record %s", path)
        elif os.geteuid() == 0:
            log.info("no runtime record written (%s is not writable): `phantom` needs "
                     "--token-file %s for changes", runtime.runtime_dir(), s.token_file)

    def data_path_failed(self, reason: str) -> None:
        """The data path stopped moving packets for good (DataPathEvents):
        report unhealthy and stop, exiting with status 1 so that a supervisor
        (systemd's Restart=on-failure) starts a fresh daemon."""
        if self.failure is not None:
            return
        self.failure = reason
        self.exit_code = EXIT_RUNTIME
        log.critical("the data plane stopped: %s; phantomd exits with status %d so that it can be "
                     "restarted", reason, EXIT_RUNTIME)
        if self.notifier is not None:
            self.notifier.send("STATUS=data plane stopped: %s" % reason)
        self._stop.set()

    async def serve(self) -> None:
        from .control.api import create_app, load_or_create_token, start_api
        from .privileges import switch_user
        token = load_or_create_token(self.s.state_dir)
        app = create_app(self, token)
        if not self.s.http_port and not self.s.http_socket:
            raise ConfigError("interface.http_port", "0 turns the TCP API off; give http_socket then")
        self._api_runner = await start_api(app, self.s.http_listen if self.s.http_port else None,
                                           self.s.http_port,
                                           str(self.s.http_socket) if self.s.http_socket else None)
        if self.s.metrics_listen:
            from .control.opsapi import create_metrics_app
            host, port = self.s.metrics_listen
            self._metrics_runner = await start_api(
                create_metrics_app(self), host, port, what="metrics",
                hint="stop it, or choose another address with metrics_listen or --metrics-listen")
        self.build()
        if self.names is not None:
            await self.names.start()
            self.sync_names()
        if self.s.uapi:                  # /var/run/wireguard/<device>.sock, made while still root
            from .control.wireguard.uapi import DaemonBackend, UapiServer
            self._uapi = UapiServer(DaemonBackend(self), self.device.name)
            try:
                await self._uapi.start()
            except OSError as exc:
                raise ConfigError("interface.uapi", "cannot serve %s: %s"
                                  % (self._uapi.path, exc.strerror or exc)) from None
        _preload(dht=self.s.directory == "dht")
        self._write_runtime_record()     # while still root: /run/phantom is root's
        if self.drop_to is not None:     # main() locked down before the loop existed
            switch_user(self.drop_to)    # every thread; verified task by task
        self.uid = os.getuid()
        self.dp.start()
        if self.s.directory:
            await self._start_directory()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_signal)
        for peer in list(self.engine.peers.values()):
            if peer.endpoint is not None and peer.persistent_keepalive:
                self._do(self.engine.open(peer.id))
        log.info("phantomd %s up: %s mode, %s data path, udp port %d, api %s:%d",
                 __version__, self.s.mode.value, "fast" if self.s.fast else "reference",
                 self.udp.getsockname()[1], self.s.http_listen, self.s.http_port)
        ticker = loop.create_task(self._ticker())
        # Ready: the API answers, the device is up with its addresses and
        # routes, the data path runs (`phantom wait-ready`, sd_notify).
        self.ready = self.failure is None
        if self.ready:
            where = ("%s device %s" % (self.s.mode.value, self.device.name) if self.device
                     else "test port %d" % self.s.test_port)
            log.info("ready: %s, udp port %d", where, self.udp.getsockname()[1])
            if self.notifier is not None:
                self.notifier.send("READY=1", "STATUS=ready: %s, udp port %d, %d peer%s" % (
                    where, self.udp.getsockname()[1], len(self.engine.peers),
                    "" if len(self.engine.peers) == 1 else "s"))
        await self._stop.wait()
        self.ready = False
        if self.notifier is not None:
            self.notifier.send("STOPPING=1")
        log.info("shutting down")
        ticker.cancel()
        for task in list(self._dir_tasks):
            task.cancel()
        if self.directory is not None:
            await self.directory.close()
            self.directory.wipe()
        await self._api_runner.cleanup()
        if self.names is not None:
            await self.names.close()
        if self._uapi is not None:
            await self._uapi.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self.dp.close()
        if self.priv is not None:
            from .privsep.routes import stop_helper
            stop_helper(self.priv)       # a clean stop: the helper removes everything, kill switch too
        if self.device:
            self.device.close()
        self.udp.close()
        if self.test_sock:
            self.test_sock.close()


def _preload(dht: bool = False) -> None:
    """Import, while still root, every module the daemon may need later: the
    unprivileged user may not be able to read the Python installation (a
    pyenv under /root, say), and a lazy import after the drop would fail."""
    import base64  # noqa: F401
    import concurrent.futures.thread  # noqa: F401  (executors for DNS lookups)
    import encodings.idna  # noqa: F401
    import ipaddress  # noqa: F401
    import aiohttp  # noqa: F401
    from .control import keys, config  # noqa: F401
    from .dataplane import firewall, packet  # noqa: F401
    from . import directory as _directory  # noqa: F401  (imports sqlite3 too)
    from .control import metrics, reload, opsapi, events  # noqa: F401  (prometheus-client too)
    import platform  # noqa: F401  (prometheus-client's platform collector)
    from .directory import client as _client  # noqa: F401
    try:
        from .dns.service import warm_up
        warm_up()                        # dnspython imports its record types lazily
    except ImportError:  # pragma: no cover - dnspython is a dependency
        pass
    if dht:
        import libtorrent  # noqa: F401
        from .directory.store import dht as _dht  # noqa: F401


def _source_address(hosts) -> Optional[str]:
    """The local address this host sends from towards the first of ``hosts`` that
    routes (a connected UDP socket sends nothing)."""
    import socket
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
        except OSError:
            continue
        for family, _, _, _, addr in infos:
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.connect(addr)
                    ip = s.getsockname()[0]
            except OSError:
                continue
            if ip and not ip.startswith("127.") and ip != "::1":
                return ip
    return None


def _b64(key: bytes) -> str:
    import base64
    return base64.b64encode(bytes(key)).decode()


def main(argv=None) -> int:
    from .control.keys import load_or_create_private_key, load_private_key
    from .logsetup import setup_logging, register_secret
    try:
        settings = parse_daemon_args(argv)
    except ConfigError as exc:
        print("phantomd: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    from .control.config import config_warnings
    for warning in config_warnings(settings):
        log.warning("config: %s", warning)
    try:
        if settings.private_key_explicit:
            key = load_private_key(settings.private_key_file)
        else:
            key = load_or_create_private_key(settings.private_key_file)
    except (ConfigError, ValueError, OSError) as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    register_secret(key)
    import uvloop
    from .privileges import PrivilegeError, lock_down, resolve_user
    try:
        from .control.config import check_own_key
        from .control.keys import public_key
        check_own_key(settings, public_key(key))
        daemon = Daemon(settings, key)
    except ConfigError as exc:
        print("phantomd: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        daemon.drop_to = resolve_user(settings.user)
    except PrivilegeError as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    from . import sdnotify
    daemon.notifier = sdnotify.from_environment()   # $NOTIFY_SOCKET, connected while still root
    try:
        daemon.open_privileged()
        if daemon.drop_to is not None:
            lock_down()                  # single-threaded: before the loop and any thread
    except OSError as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        if daemon.priv is not None:
            daemon.priv.close()
        return EXIT_RUNTIME
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(daemon.serve())
    except ConfigError as exc:
        print("phantomd: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if daemon.priv is not None:
            daemon.priv.close()          # also when serve() failed: the helper cleans up first
    if daemon.failure is not None:
        print("phantomd: the data plane stopped: %s" % daemon.failure, file=sys.stderr)
    return daemon.exit_code


if __name__ == "__main__":
    sys.exit(main())
