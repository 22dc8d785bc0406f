"""phantomd: the one module that wires the control plane to a data path.

Start-up order (each step can fail with a clear message and exit code):

  1. parse flags and the config file (bad config: exit 2, nothing started);
  2. load the private key (refused when readable by others);
  3. open what needs root: the UDP socket, the TUN/TAP device (with its
     addresses and routes) or the test port, the API token;
  4. drop privileges (root only);
  5. build the data path (reference, or Cython with --fast) and the sans-IO
     control engine, add the configured peers;
  6. serve the HTTP API, run the timer tick, handle SIGTERM/SIGINT/SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Optional

from . import __version__
from .constants import Tunables
from .control import actions as A
from .control.config import ConfigError, Settings, parse_daemon_args
from .control.engine import Engine
from .control.errors import ApiError, BadRequest, Conflict, HandshakeTimeout, NotFound
from .control.peer import PeerState
from .dataplane.types import Mode
from .dataplane.udp import format_endpoint, open_test_socket, open_udp_socket, plain

log = logging.getLogger("phantom.daemon")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


class Daemon:
    """Owns the engine, the data path and the API; carries out the engine's actions."""

    def __init__(self, settings: Settings, private_key: bytearray):
        self.s = settings
        self.t: Tunables = settings.tunables
        self.engine = Engine(private_key, self.t)
        self.dp = None
        self.device = None
        self.udp = None
        self.test_sock = None
        self.fw = self._compile_firewall(settings.firewall)   # bad rules: ConfigError before anything opens
        self._api_runner = None
        self._stop = asyncio.Event()
        self._state_changed = asyncio.Condition()
        self.started = time.time()
        self.uid = os.getuid()

    # ------------------------------------------------------------- setup
    def open_privileged(self) -> None:
        s = self.s
        self.udp = open_udp_socket(s.listen_port)
        if s.mode is Mode.TEST:
            self.test_sock = open_test_socket(s.test_port)
        else:
            from .dataplane.tun import configure_addresses, open_device
            name = s.device or ("phantom0" if s.mode is Mode.TUN else "phantap0")
            self.device = open_device(s.mode, name, s.mtu)
            routes = [n for p in s.peers for n in p.allowed_ips] if s.mode is Mode.TUN else []
            configure_addresses(self.device.name, s.addresses, routes)

    def build(self) -> None:
        s = self.s
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
                                        pc.persistent_keepalive)
            self.dp.add_peer(peer.id, pc.allowed_ips)
            if pc.endpoint:
                self.dp.set_endpoint(peer.id, pc.endpoint)
        if s.mode is Mode.TEST and self.engine.peers:
            self.dp.set_test_peer(next(iter(self.engine.peers)))

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
        self._do(self.engine.handle_datagram(data, plain(addr)))

    def handshake_needed(self, peer_id: int) -> None:
        self._do(self.engine.handshake_needed(peer_id))

    def keypair_confirmed(self, peer_id: int, local_index: int) -> None:
        self._do(self.engine.keypair_confirmed(peer_id, local_index))

    # ----------------------------------------------------- carry out actions
    def _do(self, actions: list) -> None:
        dp = self.dp
        for act in actions:
            if isinstance(act, A.SendDatagram):
                dp.send_control(act.data, act.addr)
            elif isinstance(act, A.InstallKeypair):
                dp.install_keypair(act.keypair, act.confirmed)
            elif isinstance(act, A.RetireKeypair):
                dp.retire_keypair(act.local_index)
            elif isinstance(act, A.ClearKeys):
                dp.clear_keys(act.peer_id)
            elif isinstance(act, A.SetEndpoint):
                dp.set_endpoint(act.peer_id, act.addr)
            elif isinstance(act, A.SendKeepalive):
                dp.send_keepalive(act.peer_id)
            elif isinstance(act, A.StateChanged):
                asyncio.get_running_loop().create_task(self._notify())
            else:  # pragma: no cover - a new action type without a handler is a bug
                raise TypeError("unhandled action %r" % (act,))

    async def _notify(self) -> None:
        async with self._state_changed:
            self._state_changed.notify_all()

    async def _ticker(self) -> None:
        while not self._stop.is_set():
            try:
                counters = {pid: self.dp.counters(pid) for pid in self.engine.peers}
                self._do(self.engine.tick(counters))
            except Exception:  # a bug in one tick must not stop the timers
                log.exception("timer tick failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.t.timer_tick)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------ the API's view
    def _find_peer(self, ref: str):
        for p in self.engine.peers.values():
            if p.name == ref or _b64(p.public_key) == ref:
                return p
        raise NotFound("no peer %r (give its name or public key)" % ref)

    async def open(self, endpoint: tuple, public_key: Optional[str] = None, name: Optional[str] = None,
                   allowed_ips=None) -> dict:
        from .control.keys import decode_public_key
        peer = None
        if endpoint is None:
            if not name:
                raise BadRequest("give an endpoint IP:PORT or a peer name")
            peer = self._find_peer(name)
            if peer.endpoint is None:
                raise BadRequest("peer %s has no known endpoint: open it as IP:PORT" % peer.name)
            endpoint = plain(peer.endpoint)
        elif public_key:
            try:
                key = decode_public_key(public_key)
            except ValueError as exc:
                raise BadRequest("public_key: %s" % exc) from None
            peer = self.engine.peer_by_key(key)
        elif name:
            peer = self._find_peer(name)
        else:
            for p in self.engine.peers.values():
                if p.endpoint and plain(p.endpoint) == plain(endpoint):
                    peer = p
                    break
            if peer is None:
                raise BadRequest("no public key known for %s: give \"public_key\" in the request body "
                                 "or configure the peer" % format_endpoint(endpoint))
        created = False
        if peer is None:
            nets = []
            try:
                import ipaddress
                nets = [ipaddress.ip_network(n) for n in (allowed_ips or [])]
            except ValueError as exc:
                raise BadRequest("allowed_ips: %s" % exc) from None
            try:
                peer = self.engine.add_peer(key, name or "", nets, endpoint, dynamic=True)
            except ValueError as exc:
                raise Conflict(str(exc)) from None
            self.dp.add_peer(peer.id, nets)
            created = True
        if self.s.mode is Mode.TEST:
            self.dp.set_test_peer(peer.id)
        if peer.state is PeerState.ESTABLISHED:
            return self.peer_info(peer, already=True)
        self._do(self.engine.open(peer.id, endpoint))
        deadline = (self.t.open_attempts + 1) * (self.t.rekey_timeout + self.t.handshake_jitter) + 0.5
        try:
            async with self._state_changed:
                await asyncio.wait_for(self._state_changed.wait_for(
                    lambda: peer.state in (PeerState.ESTABLISHED, PeerState.DEAD)), deadline)
        except asyncio.TimeoutError:
            pass
        if peer.state is PeerState.ESTABLISHED:
            return self.peer_info(peer)
        msg = "no answer from %s after %d handshake attempts" % (format_endpoint(endpoint), peer.attempts or
                                                                 self.t.open_attempts)
        if created:
            self._do(self.engine.remove_peer(peer.id))
            self.dp.remove_peer(peer.id)
        else:
            self._do(self.engine.close(peer.id))
        raise HandshakeTimeout(msg)

    async def close(self, ref: str) -> dict:
        peer = self._find_peer(ref)
        if peer.dynamic:
            self._do(self.engine.remove_peer(peer.id))
            self.dp.remove_peer(peer.id)
            return {"closed": peer.name, "removed": True}
        self._do(self.engine.close(peer.id))
        return {"closed": peer.name, "removed": False}

    def peer_info(self, peer, already: bool = False) -> dict:
        c = self.dp.counters(peer.id)
        now = time.monotonic()
        info = {
            "name": peer.name,
            "public_key": _b64(peer.public_key),
            "endpoint": format_endpoint(self.dp.endpoint(peer.id) or peer.endpoint),
            "allowed_ips": [str(n) for n in peer.allowed_ips],
            "state": peer.state.value,
            "last_handshake": peer.last_handshake_wall or None,
            "last_handshake_age": round(now - peer.last_handshake, 3) if peer.last_handshake_wall else None,
            "rx_bytes": c.rx_bytes, "tx_bytes": c.tx_bytes,
            "rx_packets": c.rx_packets, "tx_packets": c.tx_packets,
            "drops": c.drops,
            "persistent_keepalive": peer.persistent_keepalive,
            "sessions": len(peer.sessions),
        }
        if already:
            info["already_established"] = True
        return info

    def peers(self) -> list:
        return [self.peer_info(p) for p in self.engine.peers.values()]

    def status(self) -> dict:
        return {
            "version": __version__,
            "public_key": _b64(self.engine.public_key),
            "mode": self.s.mode.value,
            "data_path": "fast" if self.s.fast else "reference",
            "device": self.device.name if self.device else None,
            "listen_port": self.udp.getsockname()[1],
            "test_port": self.s.test_port if self.s.mode is Mode.TEST else None,
            "uid": os.getuid(),
            "uptime": round(time.time() - self.started, 3),
            "peers": self.peers(),
            "drops": self.dp.global_drops(),
            "handshake_drops": dict(self.engine.drops),
        }

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

    def reload_firewall(self) -> None:
        from .control.config import read_config_file, settings_from_mapping
        if self.s.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return
        try:
            doc = read_config_file(self.s.config_path)
            fresh = settings_from_mapping(doc, base=self.s.config_path.resolve().parent)
            from .dataplane import firewall
            new = firewall.build(fresh.firewall, self._peer_names(), self.s.mode, previous=self.fw)
        except Exception as exc:
            log.error("SIGHUP: firewall not reloaded: %s", exc)
            return
        self.fw = new
        self.dp.set_firewall(new)
        log.info("SIGHUP: firewall reloaded from %s", self.s.config_path)

    # ------------------------------------------------------------------ run
    async def serve(self) -> None:
        from .control.api import create_app, load_or_create_token, start_api
        from .privileges import drop_privileges
        token = load_or_create_token(self.s.state_dir)
        app = create_app(self, token)
        self._api_runner = await start_api(app, self.s.http_listen, self.s.http_port,
                                           str(self.s.http_socket) if self.s.http_socket else None)
        drop_privileges(self.s.user)
        self.uid = os.getuid()
        self.build()
        self.dp.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_firewall)
        for peer in list(self.engine.peers.values()):
            if peer.endpoint is not None and peer.persistent_keepalive:
                self._do(self.engine.open(peer.id))
        log.info("phantomd %s up: %s mode, %s data path, udp port %d, api %s:%d",
                 __version__, self.s.mode.value, "fast" if self.s.fast else "reference",
                 self.udp.getsockname()[1], self.s.http_listen, self.s.http_port)
        ticker = loop.create_task(self._ticker())
        await self._stop.wait()
        log.info("shutting down")
        ticker.cancel()
        await self._api_runner.cleanup()
        self.dp.close()
        if self.device:
            self.device.close()
        self.udp.close()
        if self.test_sock:
            self.test_sock.close()


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
    try:
        daemon = Daemon(settings, key)
    except ConfigError as exc:
        print("phantomd: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        daemon.open_privileged()
    except OSError as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
