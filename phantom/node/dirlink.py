"""The node's link to the key directory (``[interface] directory``): publish
our record and keep it fresh, pin our configured peers' names, watch their
records (a peer that moved is reached at its new endpoint at once; one that
revoked its key and was added at run time is removed), admit peers from
records (``open NAME`` through the controller; an unknown key with a trusted
endorsement, seen through the engine's UnknownKey action), and look records
up for the controller.

Peers come and go through the peer table (peers.py) only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Optional

from ..control import actions as A
from ..control.peer import PeerState
from ..dataplane.types import Mode
from ..dataplane.udp import format_endpoint, plain
from ..errors import Conflict, Invalid, Unavailable
from .executor import Observer
from .peers import b64

log = logging.getLogger("phantom.daemon")

ENDORSEMENT_RECHECK = 2.0         # seconds between two lookups of one unknown key
ENDORSEMENT_KEYS = 4096           # unknown keys remembered for that
MAX_TASKS = 8                     # lookups and loops under way at once


class DirectoryLink(Observer):
    def __init__(self, daemon, private_key: bytearray, urls: Optional[list] = None,
                 name: Optional[str] = None, allowed: Optional[list] = None, auto: bool = False):
        """``urls``, ``name``, ``allowed``, ``auto``: a network member's link
        (membership.py): the network's directory URLs instead of ``[interface]
        directory``, the certificate's name and addresses in our record, and
        endpoints = "auto" when none are configured."""
        self.d = daemon
        self.s = daemon.s
        self._key = private_key          # a copy of ours, wiped at close()
        self.urls = urls if urls is not None else self.s.directory
        self.name = name if name is not None else self.s.name
        self.allowed = allowed
        self.auto = self.s.endpoints_auto or (auto and not self.s.endpoints)
        self.client = None               # DirectoryClient (or its DHT flavour), made at start()
        self._tasks: set = set()
        self._endorsement_checks: dict = {}   # public key -> monotonic time of the last lookup

    # ------------------------------------------------------------ lifetime
    async def start(self) -> None:
        """Publish our record and keep it fresh; pin configured names; watch our peers."""
        s = self.s
        if self.urls == "dht":
            from ..directory.client import DhtDirectoryClient
            self.client = DhtDirectoryClient(
                self._key, listen="0.0.0.0:%d" % s.dht_port,
                bootstrap=s.dht_bootstrap, trusted_signers=s.trusted_signers)
            await self.client.start()
        else:
            from ..directory import DirectoryClient
            self.client = DirectoryClient(self.urls, self._key, trusted_signers=s.trusted_signers)
        for p in self.d.engine.peers.values():
            self.client.pin(p.name, p.public_key)
        if s.trusted_signers:
            self.d.engine.report_unknown_keys = True
        if self.name:
            allowed = self.allowed if self.allowed is not None else \
                ["%s/%d" % (a.ip, a.max_prefixlen) for a in s.addresses]
            self._spawn(self.client.keep_published(self.name, self._advertised, allowed,
                                                   retry=2.0 if self.urls == "dht" else 5.0,
                                                   endorsers=s.published_endorsers))
            log.info("publishing %s to the directory %s", self.name, self._directory_text())
        self._spawn(self._watch_peers())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.client is not None:
            await self.client.close()
            self.client.wipe()

    def counters(self) -> Optional[dict]:
        """The client's counters (None before start())."""
        return self.client.counters() if self.client is not None else None

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _directory_text(self) -> str:
        d = self.urls
        if d == "dht":
            return "dht (bootstrap %s)" % (", ".join("%s:%d" % b for b in self.s.dht_bootstrap) or "none")
        return ", ".join(d) if isinstance(d, list) else str(d)

    # ----------------------------------------------------------- our record
    def _advertised(self) -> list:
        """Our endpoints for the directory: the configured ones, or with
        endpoints = "auto", the address this host reaches the directory (or the
        first DHT bootstrap node) from, asked again on every call."""
        s = self.s
        eps = [ep for ep in s.endpoints if ep[0] != "auto"]
        if self.auto:
            ip = _source_address(self._directory_hosts())
            udp = self.d.udp
            port = udp.getsockname()[1] if udp else s.listen_port
            if ip and (ip, port) not in eps:
                eps.insert(0, (ip, port))
        return ["%s:%d" % ep if ":" not in ep[0] else "[%s]:%d" % ep for ep in eps]

    def _directory_hosts(self) -> list:
        import urllib.parse
        if self.urls == "dht":
            return [h for h, _ in self.s.dht_bootstrap]
        urls = self.urls if isinstance(self.urls, list) else [self.urls]
        return [urllib.parse.urlsplit(u).hostname for u in urls if urllib.parse.urlsplit(u).hostname]

    # --------------------------------------------------------- our peers'
    async def _watch_peers(self) -> None:
        """Follow our peers' records (pushed by a directory front end, polled on the
        DHT): a peer that published a new endpoint is reached there at once."""
        from ..directory import DirectoryError
        stop = self.d.shutdown
        watching, task = frozenset(), None
        try:
            while not stop.is_set():
                keys = frozenset(p.public_key for p in self.d.engine.peers.values())
                if keys != watching or (task is not None and task.done()):
                    if task is not None:
                        task.cancel()
                    watching = keys
                    task = asyncio.ensure_future(self.client.watch(keys, self.peer_record))
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        except DirectoryError as exc:   # pragma: no cover - watch logs and retries itself
            log.warning("watching peers' records stopped: %s", exc)
        finally:
            if task is not None:
                task.cancel()

    def peer_record(self, rec) -> None:
        """A newer verified record of one of our peers."""
        d = self.d
        peer = d.engine.peer_by_key(rec.public_key)
        if peer is None:
            return
        if rec.revoked:
            log.warning("peer=%s revoked its key in the directory", peer.name)
            if peer.dynamic:
                d.peers.remove(peer)
            return
        if not rec.endpoints:
            return
        membership = getattr(d, "membership", None)
        if membership is not None and not membership.record_endpoint_wanted(peer):
            return                       # a network member: membership.py says why not
        eps = [plain(e) for e in rec.endpoints]
        if peer.endpoint is not None and plain(peer.endpoint) in eps:
            return
        log.info("peer=%s moved: the directory says %s (was %s)", peer.name, format_endpoint(eps[0]),
                 format_endpoint(peer.endpoint) if peer.endpoint else "-")
        # a handshake that waits for an endpoint goes out now (engine.set_endpoint)
        d.peers.move(peer, eps[0])
        if peer.state is PeerState.ESTABLISHED:
            d.executor.do([A.SendKeepalive(peer.id)])

    # -------------------------------------------------------- admissions
    def observe(self, act) -> list:
        # (a network member also asks for UnknownKey, for its own reasons: no
        # endorsement lookups then unless trusted signers are configured)
        if isinstance(act, A.UnknownKey) and self.s.trusted_signers:
            self._check_endorsement(act.public_key, act.addr)
        return []

    def _check_endorsement(self, public_key: bytes, addr) -> None:
        """An unknown key knocked: look for a trusted endorsement (rate-limited
        per key).  The initiator's next retry succeeds once it is added."""
        if self.client is None:
            return
        now = time.monotonic()
        checks = self._endorsement_checks
        if len(checks) > ENDORSEMENT_KEYS:
            self._endorsement_checks = checks = {k: t for k, t in checks.items()
                                                 if now - t < ENDORSEMENT_RECHECK}
        if now - checks.get(public_key, float("-inf")) < ENDORSEMENT_RECHECK \
                or len(self._tasks) >= MAX_TASKS or len(checks) > ENDORSEMENT_KEYS:
            return
        checks[public_key] = now
        self._spawn(self._admit_endorsed(public_key, addr))

    async def _admit_endorsed(self, public_key: bytes, addr) -> None:
        from ..directory import DirectoryError
        try:
            rec = await self.client.resolve_key(public_key, fresh=True)
        except DirectoryError as exc:
            log.info("directory lookup of an unknown key failed: %s", exc)
            return
        if rec is None or not rec.endorsed or self.d.engine.peer_by_key(public_key) is not None:
            return
        try:
            self.admit(rec, plain(addr))
        except (Invalid, Conflict) as exc:
            log.info("endorsed key not admitted: %s", exc)
            return
        log.info("peer=%s admitted: its record carries a trusted endorsement", rec.name)

    def admit(self, rec, endpoint, name: Optional[str] = None):
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
        d = self.d
        protocol = getattr(rec, "protocol", "phantom")     # the record says what the key speaks
        if protocol == "wireguard" and self.s.mode is not Mode.TUN:
            raise Invalid("%s is a WireGuard peer (its directory record says so): it needs a "
                          "daemon in tun mode" % rec.name)
        accepted = self._directory_range()
        nets, outside = [], []
        for n in rec.allowed_ips:
            n = ipaddress.ip_network(n)
            if any(n.version == c.version and n.subnet_of(c) for c in accepted):
                nets.append(n)
            else:
                outside.append(n)
        who = "%s (%s)" % (rec.name, b64(rec.public_key))
        if outside:
            log.warning("directory record of %s: %s left out: outside the prefixes this node "
                        "accepts from the directory (%s)", who, ", ".join(map(str, outside)),
                        ", ".join(map(str, accepted)) or "none")
        problem = d.engine.route_problem({None: nets}, new_exclusive=True)
        if problem is not None:
            log.warning("directory record of %s refused: %s", who, problem)
            raise Conflict("the directory record of %s is refused: %s (a record never takes "
                           "another peer's addresses)" % (rec.name, problem))
        return d.peers.add(rec.public_key, d.peers.free_name(name or rec.name), nets, endpoint,
                           dynamic=True, protocol=protocol, exclusive=True)

    def _directory_range(self) -> list:
        """Where a directory record's allowed IPs may lie: [interface]
        directory_allowed_ips, or the interface's own subnets."""
        if self.s.directory_allowed_ips is not None:
            return list(self.s.directory_allowed_ips)
        return [a.network for a in self.s.addresses]

    # ---------------------------------------------------- for the controller
    def pin(self, name: str, key: bytes) -> None:
        if self.client is not None:
            self.client.pin(name, key)

    async def resolve(self, name: Optional[str] = None, key: Optional[bytes] = None):
        """A directory record by name or key; None if absent.  Never by
        endpoint: an endpoint in a record is a claim anyone can make, not an
        identity (see :meth:`phantom.node.controller.Controller.peer_at`)."""
        from ..directory import DirectoryError
        if self.client is None:          # not started yet
            return None
        try:
            if key is not None:
                return await self.client.resolve_key(key, fresh=True)   # the user asked: no negative cache
            if name:
                return await self.client.resolve_name(name)
        except DirectoryError as exc:
            raise Unavailable("%s; nothing cached" % exc)     # "directory unavailable: ..."
        return None


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
