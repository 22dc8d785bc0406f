"""What phantomd's API asks of it (api.py and opsapi.py call these): open and
close tunnels, status, peers, the firewall, reload, metrics.

``open`` goes in three steps: :meth:`Controller.resolve` finds who is meant
(a configured or known peer, a key, a name or key in the key directory, an
endpoint a session proved), :meth:`Controller.admit` adds a new peer through
the peer table when there is none, :meth:`Controller.handshake` starts the
handshake and waits for it within the bounded retries.  Failures are domain
errors (phantom/errors.py) that the HTTP layer words as statuses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

from .. import __version__
from ..control.peer import PeerState
from ..dataplane.types import Mode, RelayVia
from ..dataplane.udp import format_endpoint, plain
from ..errors import (ConfigError, Conflict, HandshakeRefused, HandshakeTimeout, Invalid, NotFound,
                      Unavailable)
from ..wire import refusal_sentence
from ..syntax import is_ip_literal
from .peers import b64

log = logging.getLogger("phantom.daemon")


@dataclass
class Target:
    """Who an ``open`` means, as :meth:`Controller.resolve` found it."""
    endpoint: Optional[tuple]
    peer: object = None              # the engine's Peer, when there is one already
    record: object = None            # a directory record to admit the peer from
    key: Optional[bytes] = None      # a public key given with the request


class Controller:
    def __init__(self, daemon):
        self.d = daemon
        self._metrics = None             # prometheus-client registry, made at the first scrape

    # ================================================================ open
    async def open(self, endpoint: Optional[tuple], public_key: Optional[str] = None,
                   name: Optional[str] = None, allowed_ips=None,
                   protocol: Optional[str] = None, groups=None) -> dict:
        """``groups``: the firewall groups of a peer this open adds (an
        existing peer's groups are not changed here: Conflict if they differ)."""
        named = None
        if endpoint is not None and not is_ip_literal(endpoint[0]):
            # `open vpn.example.com:51820`: looked up now (503 when it does not
            # resolve), then followed like a configured name (endpoints.py)
            named = endpoint
            addresses = await self.d.endpoints.resolve_now(*endpoint)
            endpoint = addresses[0]
        target = await self.resolve(endpoint, public_key, name)
        peer, created = self.admit(target, name, public_key, allowed_ips, protocol)
        if groups is not None:
            groups = tuple(sorted(set(groups)))
            if created:
                self.d.peers.set_groups({peer.id: groups})      # the rules recompile in place
            elif groups != self.d.peers.groups_of(peer):
                raise Conflict("peer %s is in groups [%s], not [%s]: its groups come from where "
                               "it was added (the config file: edit it and reload)"
                               % (peer.name, ", ".join(self.d.peers.groups_of(peer)),
                                  ", ".join(groups)))
        if named is not None:
            self.d.endpoints.track(peer, named[0], named[1], addresses)
        if protocol is not None and peer.protocol != protocol:
            raise Conflict("peer %s speaks %s, not %s" % (peer.name, peer.protocol, protocol))
        if peer.protocol == "wireguard" and self.d.s.mode is not Mode.TUN:
            raise Invalid("a WireGuard peer carries IP packets: it needs a daemon in tun mode")
        return await self.handshake(peer, target.endpoint, created)

    def _decode_key(self, public_key: str) -> bytes:
        from ..keys import decode_public_key
        try:
            key = decode_public_key(public_key)
        except ValueError as exc:
            raise Invalid("public_key: %s" % exc) from None
        if key == self.d.engine.public_key:
            raise Invalid("public_key: this daemon's own public key cannot be a peer")
        return key

    async def resolve(self, endpoint: Optional[tuple], public_key: Optional[str],
                      name: Optional[str]) -> Target:
        """Who ``open`` means: a peer by name, key or proved endpoint, or a key
        or name the key directory knows (with the endpoint to use)."""
        d = self.d
        engine, directory = d.engine, d.directory
        if endpoint is not None:
            if public_key:
                key = self._decode_key(public_key)
                return Target(endpoint, peer=engine.peer_by_key(key), key=key)
            if name:
                return Target(endpoint, peer=self.find_peer(name))
            peer = self.peer_at(endpoint)
            if peer is None:
                raise Invalid("no public key known for %s: give \"public_key\" in the request body, "
                              "configure the peer with this endpoint, or open it by name (an "
                              "endpoint in the key directory is a claim, not an identity)"
                              % format_endpoint(endpoint))
            return Target(endpoint, peer=peer)
        if not name:
            raise Invalid("give an endpoint IP:PORT or a peer name")
        peer = d.peers.find(name)
        if peer is None and public_key:
            # a name of our choosing for a key looked up in the directory (the DHT
            # answers by key only): names never come from the directory's data
            key = self._decode_key(public_key)
            peer = engine.peer_by_key(key)
            if peer is None:
                rec = await self._lookup(key=key)
                if rec is None:
                    raise NotFound("no record for key %s in the key directory" % public_key
                                   if directory else "no peer %r in the config (and no "
                                   "--directory)" % name)
                if not rec.endpoints:
                    raise Invalid("the directory record of %s has no endpoint" % public_key)
                directory.pin(name, key)
                return Target(plain(rec.endpoints[0]), record=rec, key=key)
        if peer is None:
            rec = await self._lookup(name=name)
            if rec is None:
                raise NotFound("no peer %r in the config%s" % (
                    name, " or the key directory" if directory else " (and no --directory)"))
            if not rec.endpoints:
                raise Invalid("the directory record of %s has no endpoint" % name)
            return Target(plain(rec.endpoints[0]), record=rec)
        if peer.endpoint is None:
            named = await d.endpoints.resolve_peer(peer)     # its endpoint is a DNS name
            if named is not None:
                return Target(named, peer=peer)
            return await self._endpoint_of(peer)
        return Target(plain(peer.endpoint), peer=peer)

    async def _endpoint_of(self, peer) -> Target:
        """A configured key without an endpoint: where it is now is the directory's."""
        found = await self._lookup(key=peer.public_key)
        if found is None or not found.endpoints:
            raise Invalid("peer %s has no known endpoint: open it as IP:PORT%s" % (
                peer.name, "" if self.d.directory is None else
                " (the key directory has no endpoint for it either)"))
        return Target(plain(found.endpoints[0]), peer=peer)

    async def _lookup(self, name: Optional[str] = None, key: Optional[bytes] = None):
        if self.d.directory is None:
            return None
        return await self.d.directory.resolve(name=name, key=key)

    def admit(self, target: Target, name: Optional[str], public_key: Optional[str],
              allowed_ips, protocol: Optional[str]) -> tuple:
        """(peer, created): the peer ``target`` names, added through the peer
        table when it is new: from its directory record, or (``open IP:PORT``
        with a key) with the request's allowed IPs."""
        d = self.d
        if target.peer is not None:
            return target.peer, False
        if target.record is not None:
            peer = d.engine.peer_by_key(target.record.public_key)
            if peer is not None:
                return peer, False
            return d.directory.admit(target.record, target.endpoint, name if public_key else None), True
        try:
            nets = [ipaddress.ip_network(n) for n in (allowed_ips or [])]
        except ValueError as exc:
            raise Invalid("allowed_ips: %s" % exc) from None
        try:
            # exclusive: a peer added at run time never changes where an
            # existing peer's traffic goes (no overlap either way)
            peer = d.peers.add(target.key, name or "", nets, target.endpoint, dynamic=True,
                               protocol=protocol or "phantom", exclusive=True)
        except ValueError as exc:
            raise Conflict(str(exc)) from None
        return peer, True

    async def handshake(self, peer, endpoint: tuple, created: bool) -> dict:
        """Bring ``peer`` up at ``endpoint`` and wait, within the bounded
        retries, for it to answer; a peer this open added is forgotten again
        when it does not (HandshakeTimeout)."""
        d = self.d
        t = d.t
        if d.s.mode is Mode.TEST:
            d.dp.set_test_peer(peer.id)
        if peer.state is PeerState.ESTABLISHED:
            return self.peer_info(peer, already=True)
        refusals = peer.refusals
        d.executor.do(d.engine.open(peer.id, endpoint))
        epoch = peer.epoch
        deadline = (t.open_attempts + 1) * (t.rekey_timeout + t.handshake_jitter) + 0.5
        changed = d.executor.state_changed
        try:
            async with changed:
                await asyncio.wait_for(changed.wait_for(
                    lambda: peer.state in (PeerState.ESTABLISHED, PeerState.DEAD) or peer.epoch != epoch),
                    deadline)
        except asyncio.TimeoutError:
            pass
        if peer.state is PeerState.ESTABLISHED:
            return self.peer_info(peer)
        if peer.epoch != epoch or d.engine.peers.get(peer.id) is not peer:
            # Closed (or removed) while we waited: a later open owns it now.
            raise Conflict("peer %s was closed while the handshake was under way" % peer.name)
        refused = peer.refusals > refusals and peer.refused is not None
        if refused:
            msg = "peer %s refused us: %s" % (peer.name, refusal_sentence(peer.refused))
        else:
            msg = "no answer from %s after %d handshake attempts" % (format_endpoint(endpoint),
                                                                     peer.attempts or t.open_attempts)
        if created:
            d.peers.remove(peer)           # forgotten again: engine, indexes, data-path tables
        else:
            # Not close(): a live session the peer still uses keeps its keys.
            d.executor.do(d.engine.open_failed(peer.id))
        raise (HandshakeRefused if refused else HandshakeTimeout)(msg)

    # ================================================================ close
    async def close(self, ref: str) -> dict:
        d = self.d
        peer = self.find_peer(ref)
        if peer.dynamic:
            d.peers.remove(peer)
            return {"closed": peer.name, "removed": True}
        d.executor.do(d.engine.close(peer.id))
        return {"closed": peer.name, "removed": False}

    # ============================================================ lookups
    def find_peer(self, ref: str):
        peer = self.d.peers.find(ref)
        if peer is None:
            raise NotFound("no peer %r (give its name or public key)" % ref)
        return peer

    def peer_at(self, endpoint):
        """The peer that ``open IP:PORT`` without a key means: one with a
        live session whose authenticated endpoint is there (the handshake
        proved the key), else the configured peer whose config file entry
        names that endpoint.  Never a key that only *claims* the endpoint (a
        directory record, or an endpoint a record moved a peer to): anyone
        can claim any endpoint.  Two candidates: Conflict, open by name."""
        d = self.d
        ep = plain(endpoint)
        proved = []
        for p in d.engine.peers.values():
            if p.sessions:
                at = d.dp.endpoint(p.id)
                if at is not None and not isinstance(at, RelayVia) and plain(at) == ep:
                    proved.append(p)
        if not proved:
            keys = [bytes(pc.public_key) for pc in d.s.peers
                    if pc.endpoint is not None and plain(pc.endpoint) == ep]
            proved = [p for p in map(d.engine.peer_by_key, keys) if p is not None]
        if len(proved) > 1:
            raise Conflict("%s is the endpoint of peers %s: open one by name"
                           % (format_endpoint(endpoint), ", ".join(p.name for p in proved)))
        return proved[0] if proved else None

    # ============================================================= status
    def peer_info(self, peer, already: bool = False) -> dict:
        from ..dataplane.ciphers import CIPHER_NAMES
        d = self.d
        c = d.dp.counters(peer.id)
        now = time.monotonic()
        cipher = peer.cipher
        info = {
            "name": peer.name,
            "public_key": b64(peer.public_key),
            "protocol": peer.protocol,
            "cipher": CIPHER_NAMES.get(cipher) if cipher is not None else None,
            "endpoint": format_endpoint(self._endpoint_in_use(peer)),
            "allowed_ips": [str(n) for n in peer.allowed_ips],
            "groups": list(d.peers.groups_of(peer)),
            "offers": {k: (list(map(str, v)) if k == "routes" else v) for k, v in d.peers.offers_of(peer).items()},
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
        named = d.endpoints.describe(peer.id)
        if named is not None:              # the endpoint as a DNS name, and what it resolved to
            info["endpoint_name"] = named["name"]
            info["resolved"] = named
        if d.nat is not None:
            info.update(d.nat.describe(peer.id))
        membership = getattr(d, "membership", None)
        if membership is not None and membership.is_member_peer(peer):
            info["member"] = True          # a member of the network (its certificate's addresses)
            cert = membership.members.cert(peer.public_key)
            if cert is not None:
                info["certificate_expires"] = cert.not_after
        if already:
            info["already_established"] = True
        return info

    def _endpoint_in_use(self, peer):
        dp = self.d.dp
        ep = dp.endpoint(peer.id) or peer.endpoint
        if isinstance(ep, RelayVia):          # relayed: the relay's own endpoint
            ep = dp.endpoint(ep.relay_peer)
        return ep

    def peers(self) -> list:
        return [self.peer_info(p) for p in self.d.engine.peers.values()]

    def status(self) -> dict:
        d = self.d
        s = d.s
        return {
            "version": __version__,
            "public_key": b64(d.engine.public_key),
            "mode": s.mode.value,
            "data_path": "fast" if s.fast else "reference",
            "device": d.device.name if d.device else None,
            "device_up": self._device_up(),
            "listen_port": d.udp.getsockname()[1],
            "test_port": s.test_port if s.mode is Mode.TEST else None,
            "uid": os.getuid(),
            "uptime": round(time.time() - d.started, 3),
            "ready": d.ready and d.failure is None,
            "healthy": d.failure is None,
            "failure": d.failure,
            "peers": self.peers(),
            "drops": d.dp.global_drops(),
            "handshake_drops": dict(d.engine.drops),
            "directory": s.directory,
            "directory_counters": d.directory.counters() if d.directory is not None else None,
            "nat": self._nat_status(),
            "crypto": d.crypto_status(),
            "workers": getattr(d.dp, "worker_stats", None),   # fast path: per-stage counters, summed
            "privsep": self._privsep_status(),
            "exit": d.exits.status() if d.kernel_routes is not None else None,
            "exit_dns": d.exit_dns.stats() if d.exit_dns is not None else None,
            "dns": d.names.stats() if d.names is not None else None,
            "endpoint_names": d.endpoints.stats(),
            "network": d.membership.status() if getattr(d, "membership", None) is not None else None,
        }

    def _privsep_status(self) -> Optional[dict]:
        """The privileged helper: its pid and the routes it holds for us."""
        d = self.d
        if d.priv is None:
            return None
        kr = d.kernel_routes
        return dict(kr.status() if kr is not None else {}, pid=d.priv.pid)

    def _device_up(self) -> Optional[bool]:
        """Whether our TUN/TAP link is up (None without a device, or when it is gone)."""
        if self.d.device is None:
            return None
        from ..dataplane.tun import link_is_up
        return link_is_up(self.d.device.name)

    def _nat_status(self):
        d = self.d
        if d.nat is None:
            return None
        out = d.nat.status()
        if d.s.relay:
            out["relayed"] = dict(d.dp.relayed)
        return out

    # ================================================================= dns
    def dns(self) -> dict:
        """GET /dns: the names served, where, and the counters."""
        if self.d.names is None:
            return {"enabled": False, "names": []}
        return self.d.names.describe()

    # ============================================================ firewall
    def firewall(self) -> dict:
        return self.d.firewall.describe()

    async def renew_certificate(self) -> dict:
        """Renew the network certificate now (the daemon does it by itself at
        2/3 of its lifetime): POST /network/renew to the network's directory."""
        m = getattr(self.d, "membership", None)
        if m is None:
            raise NotFound("this node is not a member of a network (no [network] section)")
        try:
            cert = await m.renew_once()
        except (OSError, ValueError) as exc:
            raise Unavailable("renewal failed: %s" % exc) from None
        return {"serial": cert.serial, "not_before": cert.not_before,
                "not_after": cert.not_after, "renews_at": m.status()["renews_at"]}

    async def set_firewall(self, rules: dict) -> dict:
        from ..dataplane.firewall import FirewallError
        try:
            new = self.d.firewall.replace(rules, self.d.peers.names, self.d.peers.group_map())
        except FirewallError as exc:
            raise Invalid(str(exc)) from None
        shown = self.d.firewall.describe()      # the local table (and a network policy beside it)
        log.info("firewall replaced (%d rules)", len(shown.get("rules", [])))
        return shown

    # ================================================================ exit
    async def exit_status(self) -> dict:
        """GET /exit: the exit in use, the peers offering one, DNS."""
        return self.d.exits.status()

    async def exit_use(self, name: str) -> dict:
        """PUT /exit: send all traffic (and DNS) through the peer ``name``."""
        return self.d.exits.use(name)

    async def exit_off(self) -> dict:
        """DELETE /exit: traffic goes direct again."""
        return self.d.exits.off()

    # ============================================================== reload
    async def reload(self) -> dict:
        """Re-read the config file and apply it in place (POST /reload, `phantom
        reload`); a bad file changes nothing and is refused naming the key."""
        try:
            return self.d.reload()
        except ConfigError as exc:
            log.error("reload refused, nothing changed: %s", exc)
            raise Invalid("config not reloaded, nothing changed: %s" % exc) from None

    def reload_signal(self) -> None:
        """SIGHUP: the same reload; the outcome goes to the log."""
        try:
            self.d.reload()
        except ConfigError as exc:
            log.error("SIGHUP: reload refused, nothing changed: %s", exc)
        except Exception:  # a bug must not take the daemon down from a signal handler
            log.exception("SIGHUP: reload failed")

    # ============================================================= metrics
    def metrics(self) -> bytes:
        """GET /metrics: the Prometheus text format, read at scrape time."""
        from . import metrics
        if self._metrics is None:
            self._metrics = metrics.make_registry(self.d)
        return metrics.render(self._metrics)
