"""phantomd's start-up steps, one function each, in the order main.py and
:func:`serve` run them (each can fail with a clear message and exit code):

  1. parse flags and the config file and compile the firewall rules (bad
     config: exit 2, nothing opened) -- main.py, daemon.py;
  2. load the private key (refused when readable by others); resolve
     ``--user`` (default ``nobody`` when root) -- main.py;
  3. :func:`open_privileged`: what needs root: the UDP socket, the TUN/TAP
     device or the test port; with a device, start the privileged helper
     (:mod:`phantom.privsep`: it keeps CAP_NET_ADMIN alone and changes
     routes, rules and nftables for the daemon, then and after the drop),
     which brings the link up and adds its addresses and routes (netlink);
     with [dns], port 53 and resolved's split DNS;
  4. lock down (root only, :func:`phantom.privileges.lock_down`, main.py):
     still single-threaded -- refused, naming the threads, if any thread
     exists -- empty the capability bounding set, clear keepcaps and the
     inheritable and ambient sets, set ``PR_SET_NO_NEW_PRIVS``.  These are
     per-thread attributes that new threads inherit, so every thread started
     after this point (libuv workers for getaddrinfo, the fast path's
     workers, executor threads) has them too.  Nothing may exec a root
     helper after this step;
  5. on the uvloop loop (the first threads may appear from here on),
     :func:`serve`: the API token and listeners, then :func:`build`: the data
     path (reference, or Cython with --fast) and the configured peers
     through the peer table; WireGuard's UAPI socket; :func:`preload`
     imports every module needed later (dnspython only when this daemon
     may serve or forward DNS: :func:`needs_dns`);
  6. switch user (root only, :func:`phantom.privileges.switch_user`): no
     supplementary groups, setresgid/setresuid, which glibc applies to every
     thread and which clears the permitted, effective and ambient sets; then
     every task in /proc/self/task is checked (uid, gid, no groups, all five
     capability sets 0, NoNewPrivs 1) and start-up fails if one differs;
  7. start the data path, the key directory's link, the timer tick; handle
     SIGTERM/SIGINT (stop) and SIGHUP (reload the config file in place:
     reload.py); look up the endpoints given as DNS names (each lookup
     bounded by ``resolve_timeout``; one that fails is retried later,
     endpoints.py); bring up the configured peers that have an endpoint and a
     persistent keepalive; report ready (sd_notify); wait for the stop, then
     close everything in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from .. import __version__, crypto
from ..dataplane.types import Mode
from ..dataplane.udp import open_test_socket, open_udp_socket
from ..errors import ConfigError
from .config import peer_offers
from . import nat

log = logging.getLogger("phantom.daemon")


def open_privileged(d) -> None:
    """Step 3: the UDP socket, and the test port or the TUN/TAP device; with
    a device, the privileged helper (phantom.privsep: it keeps CAP_NET_ADMIN
    alone and changes routes, rules and nftables for the daemon, then and
    after the drop), which brings the link up and adds its addresses and the
    configured peers' routes (netlink)."""
    s = d.s
    d.udp = open_udp_socket(s.listen_port)
    if s.mode is Mode.TEST:
        d.test_sock = open_test_socket(s.test_port)
    else:
        from ..dataplane.tun import open_device
        from ..privsep.exitnode import subnet_routes
        from ..privsep.routes import start_for_device
        name = s.device or ("phantom0" if s.mode is Mode.TUN else "phantap0")
        flags = 0
        if s.fast and s.mode is Mode.TUN:
            from ..dataplane.fast import DEVICE_FLAGS   # virtio-net header: TSO/USO offloads
            flags = DEVICE_FLAGS
        d.device = open_device(s.mode, name, s.mtu, flags, up=False)
        routes = [n for p in s.peers for n in p.allowed_ips] if s.mode is Mode.TUN else []
        d.priv, d.kernel_routes = start_for_device(
            d.device.name, s.mode.value, s.addresses, routes, d.udp,
            s.state_dir, d.drop_to, kill_switch=s.kill_switch,
            exit_prefixes=[n for p in s.peers if p.allow_exit for n in p.allowed_ips] if s.exit_node else None,
            subnet_routes=subnet_routes(s) if s.mode is Mode.TUN else None)
        if s.mode is Mode.TUN:
            d.exits.open_state()         # state_dir/exit.json, written after the drop through this fd
        if s.exit_node:                  # the exit's DNS for its clients: port 53 needs root
            open_exit_dns(d)
    if d.membership is not None:         # its cache directory, the daemon's user's after the drop
        try:
            d.membership.prepare_cache(d.drop_to)
        except OSError as exc:
            raise ConfigError("network.state", "cannot prepare %s: %s"
                              % (d.membership.cache, exc.strerror or exc)) from None
    if d.names is not None:              # port 53 and resolved's split DNS need root
        d.names.bind(d.device.name if d.device else None)


def open_exit_dns(d) -> None:
    """An exit node answers its allowed clients' DNS on its tunnel addresses
    (phantom/dns/forward.py), forwarded to its own resolvers."""
    from ..dns.forward import ExitResolver, upstream_from_resolv_conf
    s = d.s
    listen = [str(a.ip) for a in s.addresses]
    if d.names is not None and (d.names.service.settings.port == 53
                                and set(d.names.service.listen) & set(listen)):
        log.warning("exit node: no DNS forwarder for the exit's clients: [dns] serves port 53 on %s "
                    "(give dns.listen other addresses to have both; docs/routes.md)",
                    ", ".join(sorted(set(d.names.service.listen) & set(listen))))
        return
    upstream = list(s.exit_dns_upstream) or upstream_from_resolv_conf()
    if not upstream:
        log.warning("exit node: no resolver in /etc/resolv.conf and no exit_dns_upstream: the exit's "
                    "clients get SERVFAIL for DNS through it")
    resolver = ExitResolver(listen, upstream, [n for p in s.peers if p.allow_exit for n in p.allowed_ips],
                            device=d.device.name)
    try:
        resolver.bind()
    except OSError as exc:               # port 53 taken (a resolver on the wildcard address): no forwarder
        log.warning("exit node: no DNS forwarder for the exit's clients: %s", exc.strerror or exc)
        return
    d.exit_dns = resolver


def build(d) -> None:
    """The data path over what :func:`open_privileged` opened, the
    configured peers through the peer table, NAT traversal when configured."""
    s = d.s
    from ..dataplane import ciphers
    policy = ciphers.chacha_policy()     # measured now, not at the first WireGuard packet
    log.info("transport ciphers: Phantom sessions %s; WireGuard ChaCha20-Poly1305: %s (%s)",
             " > ".join(d.suite_names()), policy.implementation, policy.decided_by)
    kwargs = dict(events=d.executor, tunables=d.t, firewall=d.firewall.current,
                  local_addresses=s.addresses, test_deliver=s.test_deliver, mtu=s.mtu)
    fd = d.device.fd if d.device else None
    if s.fast:
        from ..dataplane.fast import FastDataPath
        dp = FastDataPath(s.mode, d.udp, fd, d.test_sock, **kwargs)
    else:
        from ..dataplane.reference import ReferenceDataPath
        dp = ReferenceDataPath(s.mode, d.udp, fd, d.test_sock, **kwargs)
    d.dp = dp
    d.executor.attach(dp)
    d.peers.attach(dp)
    d.peers.attach_kernel(d.kernel_routes)   # routes of peers learnt later follow the peer table
    d.firewall.attach(dp)
    psks = d.take_preshared_keys()
    try:
        for pc in s.peers:
            d.peers.add(pc.public_key, pc.name, pc.allowed_ips, pc.endpoint, pc.persistent_keepalive,
                        protocol=pc.protocol, preshared_key=psks.get(pc.name),
                        suites=peer_suites(pc), groups=pc.groups, offers=peer_offers(pc))
    finally:
        for psk in psks.values():            # the engine holds its own copies
            crypto.memzero(psk)
    # the rules were compiled with these peers' groups; from now on a change of
    # who is in which group, or a peer a rule names coming or going (a rule
    # waiting for a member not learnt yet), recompiles them in place
    d.peers.on_groups = lambda: d.firewall.regroup(d.peers.names, d.peers.group_map())
    d.peers.named_by_rules = lambda: d.firewall.peer_refs
    if d.membership is not None:         # the cached members, through the peer door
        d.membership.install()
    if s.mode is Mode.TEST and d.engine.peers:
        dp.set_test_peer(next(iter(d.engine.peers)))
    nat.attach(d)


def network_member(d, private_key):
    """[network]: this node's membership (membership.py), verified now
    (ConfigError: a missing, expired, removed or foreign certificate), and
    watching the executor's actions (endpoints, handshakes waiting); None
    without [network]."""
    if d.s.network is None:
        return None
    from .membership import Membership
    key = bytearray(private_key)         # its own copy (renewal signs with it), wiped at close
    try:
        m = Membership(d, d.s.network, key)
    except BaseException:
        crypto.memzero(key)
        raise
    d.executor.observers.append(m)
    d.s.groups = tuple(sorted(set(d.s.groups) | set(m.cert.groups)))
    return m


def directory_options(d) -> dict:
    """The directory link's: the network's directory when [interface] names none."""
    if d.membership is not None and not d.s.directory:
        return d.membership.directory_options()
    return {}


def peer_suites(pc):
    """A [[peer]]'s own ciphers as suites (None: the interface's)."""
    from ..protocols.registry import peer_suites as suites
    try:
        return suites(pc.ciphers)
    except ValueError as exc:
        raise ConfigError("peer %s: ciphers" % pc.name, str(exc)) from None


def open_configured_peers(d) -> None:
    """Bring up, and keep up, the configured peers that have an endpoint and
    a persistent keepalive (as ``wg`` does)."""
    for peer in list(d.engine.peers.values()):
        if peer.endpoint is not None and peer.persistent_keepalive:
            d.executor.do(d.engine.open(peer.id))


def write_runtime_record(d) -> None:
    """Tell the `phantom` client where this daemon's API and token are
    (phantom/runtime.py): no --token-file needed with a custom state_dir."""
    from .. import runtime
    s = d.s
    path = runtime.write_record({
        "http_listen": s.http_listen if s.http_port else None,
        "http_port": s.http_port,
        "http_socket": os.path.abspath(s.http_socket) if s.http_socket else None,
        "state_dir": os.path.abspath(s.state_dir),
        "token_file": os.path.abspath(s.token_file),
        "config": os.path.abspath(s.config_path) if s.config_path else None,
        "mode": s.mode.value,
        "device": d.device.name if d.device else None,
        "listen_port": d.udp.getsockname()[1],
    })
    if path is not None:
        log.debug("runtime record %s", path)
    elif os.geteuid() == 0:
        log.info("no runtime record written (%s is not writable): `phantom` needs "
                 "--token-file %s for changes", runtime.runtime_dir(), s.token_file)


def needs_dns(d) -> bool:
    """Whether this daemon may run dnspython after the privilege drop: it
    serves names (``d.names``: a ``[dns]`` section turned on, or a
    network member, whose names are on unless its section turns them off:
    phantom/node/dns.py's ``member_dns``), or it is an exit node (its
    clients' DNS forwarder, :func:`open_exit_dns`).  Nothing else in the
    daemon uses dnspython: a reload reads ``[dns]`` with service.py alone
    (and a changed ``[dns]`` needs a restart), and ``phantom exit use``
    registers the exit's DNS through resolved.py, neither of which imports it."""
    return d.names is not None or bool(d.s.exit_node)


def preload(dht: bool = False, dns: bool = False) -> None:
    """Import, while still root, every module the daemon may need later: the
    unprivileged user may not be able to read the Python installation (a
    pyenv under /root, say), and a lazy import after the drop would fail.
    ``dns``: warm dnspython up too (:func:`needs_dns`); a daemon that serves
    no DNS does not pay for it (~0.1 s of CPU per start)."""
    import base64  # noqa: F401
    import concurrent.futures.thread  # noqa: F401  (executors for DNS lookups)
    import encodings.idna  # noqa: F401
    import ipaddress  # noqa: F401
    import aiohttp  # noqa: F401
    from .. import keys  # noqa: F401
    from . import config  # noqa: F401
    from ..dataplane import firewall, packet  # noqa: F401
    from .. import directory as _directory  # noqa: F401  (imports sqlite3 too)
    from . import metrics, reload, app, api, opsapi, events  # noqa: F401  (prometheus-client too)
    import platform  # noqa: F401  (prometheus-client's platform collector)
    from ..directory import client as _client  # noqa: F401
    from ..dns import resolved, service  # noqa: F401  (a reload's [dns], `phantom exit use`: no dnspython)
    from .. import crypto
    crypto.cpu_features()                # libsodium's CPU checks load ctypes on first use (/status)
    if dns:
        try:
            from ..dns.service import warm_up
            warm_up()                    # dnspython imports its record types lazily
        except ImportError:  # pragma: no cover - dnspython is a dependency
            pass
    if dht:
        import libtorrent  # noqa: F401
        from ..directory.store import dht as _dht  # noqa: F401


async def serve(d) -> None:
    """Steps 5 to 7, then the stop (SIGTERM/SIGINT, or the data path failed)."""
    from ..http import server
    from ..http.guard import load_or_create_token
    from ..privileges import switch_user
    from .app import create_app, create_metrics_app
    s = d.s
    token = load_or_create_token(s.state_dir)
    app = create_app(d.controller, token)
    if not s.http_port and not s.http_socket:
        raise ConfigError("interface.http_port", "0 turns the TCP API off; give http_socket then")
    api_runner = await server.start(app, s.http_listen if s.http_port else None, s.http_port,
                                    str(s.http_socket) if s.http_socket else None)
    metrics_runner = None
    if s.metrics_listen:
        host, port = s.metrics_listen
        metrics_runner = await server.start(
            create_metrics_app(d.controller), host, port, what="metrics",
            hint="stop it, or choose another address with metrics_listen or --metrics-listen")
    build(d)
    if d.names is not None:
        await d.names.start()
        d.executor.observers.append(d.names)   # the tick re-feeds it when the peers change
    uapi = None
    if s.uapi:                           # /var/run/wireguard/<device>.sock, made while still root
        from .uapi import PeerTableBackend, UapiServer
        uapi = UapiServer(PeerTableBackend(d.peers, d.udp), d.device.name)
        try:
            await uapi.start()
        except OSError as exc:
            raise ConfigError("interface.uapi", "cannot serve %s: %s"
                              % (uapi.path, exc.strerror or exc)) from None
    preload(dht=s.directory == "dht", dns=needs_dns(d))
    write_runtime_record(d)              # while still root: /run/phantom is root's
    if d.drop_to is not None:            # main() locked down before the loop existed
        switch_user(d.drop_to)           # every thread; verified task by task
    d.uid = os.getuid()
    d.dp.start()
    if d.directory is not None:
        await d.directory.start()
    if d.membership is not None:         # the member stream, renewal
        await d.membership.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, d.shutdown.set)
    loop.add_signal_handler(signal.SIGHUP, d.controller.reload_signal)
    await d.endpoints.start()            # DNS names of endpoints, each lookup bounded
    if d.exit_dns is not None:
        await d.exit_dns.start()
    d.exits.restore()                    # the exit in use before the restart (state_dir/exit.json)
    open_configured_peers(d)
    log.info("phantomd %s up: %s mode, %s data path, udp port %d, api %s:%d",
             __version__, s.mode.value, "fast" if s.fast else "reference",
             d.udp.getsockname()[1], s.http_listen, s.http_port)
    ticker = loop.create_task(d.executor.run_ticker(d.shutdown))
    # Ready: the API answers, the device is up with its addresses and
    # routes, the data path runs (`phantom wait-ready`, sd_notify).
    d.ready = d.failure is None
    if d.ready:
        where = ("%s device %s" % (s.mode.value, d.device.name) if d.device
                 else "test port %d" % s.test_port)
        log.info("ready: %s, udp port %d", where, d.udp.getsockname()[1])
        if d.notifier is not None:
            n = len(d.engine.peers)
            d.notifier.send("READY=1", "STATUS=ready: %s, udp port %d, %d peer%s" % (
                where, d.udp.getsockname()[1], n, "" if n == 1 else "s"))
    await d.shutdown.wait()
    d.ready = False
    if d.notifier is not None:
        d.notifier.send("STOPPING=1")
    log.info("shutting down")
    ticker.cancel()
    if d.membership is not None:
        await d.membership.close()
    await d.endpoints.close()
    if d.directory is not None:
        await d.directory.close()
    await api_runner.cleanup()
    if d.names is not None:
        await d.names.close()
    if d.exit_dns is not None:
        await d.exit_dns.close()
    if uapi is not None:
        await uapi.close()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    d.close()
