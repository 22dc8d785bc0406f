"""phantomd's parts, wired: the one place that joins the control plane (the
sans-IO engine) to a data path.  Each job is a module of its own:

* startup.py -- the start-up steps, one function each (open what needs
  root, build the data path and the configured peers, serve, stop);
* peers.py -- the peer table: the one door for every add, remove and change
  of a peer (start-up, reload, WireGuard's UAPI, POST /open, the directory);
* executor.py -- carries out the engine's actions on the data path and runs
  the timer tick; NAT traversal (nat.py) and the directory link (dirlink.py)
  observe the actions;
* controller.py -- what the HTTP API asks (open in three steps: resolve,
  admit, handshake; close, status, peers, firewall, reload, metrics);
* firewall.py -- the rules in force; reload.py -- the config file again;
  metrics.py -- Prometheus; uapi.py -- ``wg show``/``wg set``; dns.py -- the
  name service ([dns]); endpoints.py -- endpoints given as DNS names;
  exits.py -- the exit in use (``phantom exit use NAME``);
* main.py -- the ``phantomd`` command (flags, keys, privileges, exit codes).

A :class:`Daemon` holds these parts and the daemon's health.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Optional

from .. import crypto
from ..constants import Tunables
from ..control.engine import Engine
from . import startup
from .config import ConfigError, Settings
from .controller import Controller
from .dirlink import DirectoryLink
from .dns import NameLink, member_dns
from .endpoints import EndpointResolver
from .executor import Executor
from .exits import ExitChoice
from .firewall import FirewallSlot
from .peers import PeerTable, planned_groups, planned_names
from .reload import Reloader

log = logging.getLogger("phantom.daemon")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


class Daemon:
    """phantomd's parts for one config (startup.py brings them up)."""

    # Health, for /status, /metrics and the exit status (startup.serve(), main()):
    ready = False                  # set up and serving: the API answers, the device is up
    failure: Optional[str] = None  # why the data plane stopped (a fast-path worker died)
    exit_code = 0                  # main()'s status once serve() returns
    notifier = None                # phantom.node.sdnotify.Notifier under systemd (main())
    priv = None                    # privsep.PrivClient: the privileged helper (TUN/TAP mode)
    kernel_routes = None           # privsep.routes.KernelRoutes (TUN mode): reload adds/removes routes
    exit_dns = None                # dns.forward.ExitResolver (exit_node = true): the clients' DNS

    def __init__(self, settings: Settings, private_key: bytearray):
        self.s = settings
        self.t: Tunables = settings.tunables
        from ..protocols.registry import configured_suites
        try:
            suites = configured_suites(settings.ciphers)
        except ValueError as exc:
            raise ConfigError("interface.ciphers", str(exc)) from None
        # --fast: Phantom initiations answered by the C responder too (issue 23 item 3)
        self.engine = Engine(private_key, self.t, suites=suites, native_handshake=bool(settings.fast))
        # opened by startup.open_privileged(), or given by a test
        self.udp = None
        self.device = None
        self.test_sock = None
        self.dp = None                   # the data path, made by startup.build()
        self.shutdown = asyncio.Event()  # set: serve() stops
        self.executor = Executor(self.engine, self.t.timer_tick, self.data_path_failed)
        self.peers = PeerTable(self.engine, self.executor.do)
        # [network]: this node is a member (membership.py); ConfigError when it cannot be;
        # its certificate's groups join [interface] groups (the firewall's own groups)
        self.membership = startup.network_member(self, private_key)
        # bad rules: ConfigError before anything opens; the ids the peers will have
        self.firewall = FirewallSlot(settings.mode, settings.firewall,
                                     planned_names(self.engine, settings.peers),
                                     planned_groups(self.engine, settings.peers), settings.groups,
                                     config_path=settings.config_path)
        # WireGuard peers' preshared keys, read now (as root, before any user
        # switch) and checked like the private key: a bad file exits 2.
        self._psks = _load_preshared_keys(settings)
        self.nat = None                  # nat.traversal.Traversal, when configured (nat.attach)
        self.directory: Optional[DirectoryLink] = None
        if settings.directory or self.membership is not None:
            self.directory = DirectoryLink(self, bytearray(private_key),
                                           **startup.directory_options(self))
            self.executor.observers.append(self.directory)
        # peers' endpoints given as DNS names: looked up at start, when stale, when they die
        self.endpoints = EndpointResolver(self)
        self.executor.observers.append(self.endpoints)
        # [dns], or [network]'s domain (a member): the name service (a bad section: exit 2)
        self.names: Optional[NameLink] = None
        dns = member_dns(settings, self.membership)
        if dns is not None:
            self.names = NameLink(settings, self.engine, dns)
        self.exits = ExitChoice(self)    # `phantom exit use NAME`: the exit in use (exits.py)
        self.controller = Controller(self)
        self.reloader = Reloader(settings)   # the file as read at start (reload diffs)
        if self.membership is not None:      # a reload keeps the certificate's groups
            self.reloader.extra_groups = self.membership.cert.groups
        self.started = time.time()
        self.uid = os.getuid()
        self.drop_to = None              # passwd entry to switch to in serve() (root only), set by main()

    @property
    def fw(self):
        """The firewall in force (None: no rules), for the metrics."""
        return self.firewall.current

    def suite_names(self) -> list:
        """The Phantom suites we offer, best first."""
        from ..wire import suite_name
        return [suite_name(x) for x in self.engine.suites]

    def crypto_status(self) -> dict:
        """The transport ciphers (/status, the phantom_crypto_info metric)."""
        from ..dataplane import ciphers
        return {
            "phantom_suites": self.suite_names(),
            "suites_configured": self.s.ciphers is not None,
            "aes_hardware": crypto.aes_hardware(),
            "cpu": crypto.cpu_features(),
            "chacha20poly1305": ciphers.chacha_policy().describe(),
        }

    def take_preshared_keys(self) -> dict:
        """The preshared keys read at start, once (startup.build() wipes them)."""
        psks, self._psks = self._psks, {}
        return psks

    # ------------------------------------------------------------ the steps
    def open_privileged(self) -> None:
        startup.open_privileged(self)

    def build(self) -> None:
        startup.build(self)

    async def serve(self) -> None:
        await startup.serve(self)

    def close(self) -> None:
        """Close the data path, the device and the sockets (after serve's stop)."""
        if self.dp is not None:
            self.dp.close()
        if self.priv is not None:
            from ..privsep.routes import stop_helper
            stop_helper(self.priv)       # a clean stop: the helper removes everything, kill switch too
        self.exits.close()
        if self.device:
            self.device.close()
        if self.udp is not None:
            self.udp.close()
        if self.test_sock:
            self.test_sock.close()

    # ---------------------------------------------------------- what changes
    def reload(self) -> dict:
        """Re-read the config file and apply it through the peer table
        (ConfigError: nothing changed)."""
        report = self.reloader.reload(self.peers, self.firewall,
                                      self.device.name if self.device is not None else None,
                                      kernel_routes=self.kernel_routes)
        self.endpoints.sync()            # names new or changed in the file are looked up now
        self.exits.after_reload(report)  # the exit in use: still offered, its routes kept
        if self.exit_dns is not None:
            self.exit_dns.set_allowed(n for p in self.s.peers if p.allow_exit for n in p.allowed_ips)
        if self.membership is not None:  # a network's approved routes and exit: forwarding, DNS
            self.membership.routes.own()
        if self.names is not None:
            self.names.sync()
        return report

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
        self.shutdown.set()


def _load_preshared_keys(settings: Settings) -> dict:
    from ..protocols.wireguard.keys import load_preshared_key
    psks = {}
    for i, pc in enumerate(settings.peers):
        if pc.preshared_key_file is not None:
            psks[pc.name] = load_preshared_key(pc.preshared_key_file,
                                               "peer[%d].preshared_key_file" % i)
    return psks
