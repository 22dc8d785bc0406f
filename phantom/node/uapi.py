"""WireGuard's cross-platform userspace API (UAPI), so that stock ``wg show``
and ``wg set`` work against phantomd.

The protocol (wireguard.com/xplatform): a Unix stream socket at
``/var/run/wireguard/<device>.sock``; a request is ``get=1`` or ``set=1``
followed by ``key=value`` lines and an empty line; the answer to ``get`` is
``key=value`` lines, and every answer ends with ``errno=N`` and an empty line
(0: done; a negative errno, as wireguard-go sends, on failure).

Only the WireGuard peers of the daemon (``protocol = "wireguard"``) are shown
and changed: Phantom peers speak another protocol and ``wg`` has no words
for them.  What ``set`` can change: peers added and removed
(``replace_peers``, ``remove``, ``update_only``), their preshared key,
endpoint, persistent keepalive and allowed IPs (``replace_allowed_ips``; a
prefix moves from another WireGuard peer as in wg; one that overlaps a
Phantom peer's prefix is refused, EADDRINUSE, nothing changed); the
private key and listen port only to the values they have (phantomd does not
change its identity or port while running).

Sans-IO parts (:func:`parse_set`, :func:`format_get`) are unit-tested;
:class:`UapiServer` is the asyncio socket; :class:`PeerTableBackend` applies a
request to a running daemon's peers, through its peer table (peers.py).
"""

from __future__ import annotations

import asyncio
import errno as _errno
import ipaddress
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger("phantom.uapi")

SOCKET_DIR = Path("/var/run/wireguard")
MAX_REQUEST = 1 << 20            # bytes per request (a few thousand peers' worth)
READ_TIMEOUT = 10.0


class UapiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code              # a positive errno; sent negated


def _invalid(msg: str) -> UapiError:
    return UapiError(_errno.EINVAL, msg)


# --- requests ---------------------------------------------------------------------------------
@dataclass
class PeerChange:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: Optional[bytes] = None          # b"" : set to none (all zeros)
    endpoint: Optional[tuple] = None
    persistent_keepalive: Optional[int] = None
    replace_allowed_ips: bool = False
    allowed_ips: list = field(default_factory=list)


@dataclass
class SetRequest:
    private_key: Optional[bytes] = None
    listen_port: Optional[int] = None
    fwmark: Optional[int] = None
    replace_peers: bool = False
    peers: list = field(default_factory=list)


def _hex_key(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _invalid("%s is not hex" % what) from None
    if len(raw) != 32:
        raise _invalid("%s is not 32 bytes" % what)
    return raw


def _bool(value: str, what: str) -> bool:
    if value != "true":
        raise _invalid("%s must be \"true\"" % what)
    return True


def _uint(value: str, what: str, top: int) -> int:
    if not value.isdigit() or int(value) > top:
        raise _invalid("%s must be a number 0..%d" % (what, top))
    return int(value)


def _endpoint(value: str) -> tuple:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise _invalid("endpoint needs a port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        raise _invalid("endpoint %r is not an IP address" % value) from None
    return str(ip), _uint(port, "endpoint port", 65535)


def parse_set(lines: list[str]) -> SetRequest:
    """The ``key=value`` lines after ``set=1`` as a request; UapiError when bad."""
    req = SetRequest()
    peer: Optional[PeerChange] = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise _invalid("line %r is not key=value" % line)
        if key == "public_key":
            peer = PeerChange(_hex_key(value, "public_key"))
            req.peers.append(peer)
            continue
        if peer is None:
            if key == "private_key":
                req.private_key = _hex_key(value, "private_key")
            elif key == "listen_port":
                req.listen_port = _uint(value, "listen_port", 65535)
            elif key == "fwmark":
                req.fwmark = _uint(value, "fwmark", 2 ** 32 - 1)
            elif key == "replace_peers":
                req.replace_peers = _bool(value, key)
            else:
                raise _invalid("unknown interface key %r" % key)
            continue
        if key == "remove":
            peer.remove = _bool(value, key)
        elif key == "update_only":
            peer.update_only = _bool(value, key)
        elif key == "preshared_key":
            psk = _hex_key(value, key)
            peer.preshared_key = b"" if not any(psk) else psk
        elif key == "endpoint":
            peer.endpoint = _endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive = _uint(value, key, 65535)
        elif key == "replace_allowed_ips":
            peer.replace_allowed_ips = _bool(value, key)
        elif key == "allowed_ip":
            try:
                peer.allowed_ips.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise _invalid("allowed_ip %r is not a prefix" % value) from None
        elif key == "protocol_version":
            if value != "1":
                raise _invalid("protocol_version %s is not supported" % value)
        else:
            raise _invalid("unknown peer key %r" % key)
    return req


@dataclass
class PeerView:
    public_key: bytes
    preshared_key: Optional[bytes]
    endpoint: Optional[tuple]
    last_handshake: float                      # wall seconds, 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int
    allowed_ips: list


def _format_endpoint(ep: tuple) -> str:
    host, port = ep[0], ep[1]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def format_get(private_key: bytes, listen_port: int, peers: list[PeerView]) -> str:
    out = ["private_key=%s" % bytes(private_key).hex(), "listen_port=%d" % listen_port]
    for p in peers:
        out.append("public_key=%s" % p.public_key.hex())
        out.append("preshared_key=%s" % (p.preshared_key or bytes(32)).hex())
        out.append("protocol_version=1")
        if p.endpoint:
            out.append("endpoint=%s" % _format_endpoint(p.endpoint))
        secs = int(p.last_handshake)
        out.append("last_handshake_time_sec=%d" % secs)
        out.append("last_handshake_time_nsec=%d" % int((p.last_handshake - secs) * 1e9) if secs else
                   "last_handshake_time_nsec=0")
        out.append("tx_bytes=%d" % p.tx_bytes)
        out.append("rx_bytes=%d" % p.rx_bytes)
        out.append("persistent_keepalive_interval=%d" % p.persistent_keepalive)
        out.extend("allowed_ip=%s" % n for n in p.allowed_ips)
    return "\n".join(out) + "\n"


# --- the socket -------------------------------------------------------------------------------
class UapiServer:
    """The Unix socket; ``backend`` has ``get() -> str`` and ``set(SetRequest)``."""

    def __init__(self, backend, device: str, directory: Path = SOCKET_DIR):
        self.backend = backend
        self.path = Path(directory) / ("%s.sock" % device)
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(_errno.EEXIST, "%s exists and is not a socket" % self.path)
            if await self._alive():
                raise OSError(_errno.EADDRINUSE, "%s is served by a running process" % self.path)
            self.path.unlink()                     # left by a process that died
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)                 # root only, like wireguard-go's
        log.info("serving WireGuard's UAPI on %s", self.path)

    async def _alive(self) -> bool:
        try:
            _, w = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        w.close()
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except OSError:
            pass                                   # e.g. no longer root: removed at the next start

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    first = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                except asyncio.TimeoutError:
                    return
                if not first:
                    return
                op = first.decode("utf-8", "replace").rstrip("\n")
                lines, size = [], len(first)
                while True:
                    raw = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                    size += len(raw)
                    if not raw or size > MAX_REQUEST:
                        return
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if line == "":
                        break
                    lines.append(line)
                writer.write(self.handle(op, lines).encode())
                await writer.drain()
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def handle(self, op: str, lines: list[str]) -> str:
        """One request: the answer text, errno line included."""
        try:
            if op == "get=1":
                if lines:
                    raise _invalid("get takes no arguments")
                return self.backend.get() + "errno=0\n\n"
            if op == "set=1":
                self.backend.set(parse_set(lines))
                return "errno=0\n\n"
            raise _invalid("unknown operation %r" % op)
        except UapiError as exc:
            log.info("%s refused: %s", op, exc)
            return "errno=%d\n\n" % -exc.code
        except Exception:                          # a bug: answer, keep serving
            log.exception("%s failed", op)
            return "errno=%d\n\n" % -_errno.EIO


# --- applying it to the daemon's peers -------------------------------------------------------
class PeerTableBackend:
    """UAPI get/set on a running daemon's peers (event loop thread): every
    change goes through its peer table (:class:`phantom.node.peers.PeerTable`),
    which keeps the engine, the data path and NAT traversal in step.
    ``udp``: the daemon's UDP socket (``listen_port``)."""

    def __init__(self, peers, udp):
        self.peers = peers
        self.udp = udp

    def _wg_peers(self):
        return [p for p in self.peers.engine.peers.values() if p.protocol == "wireguard"]

    def _port(self) -> int:
        return self.udp.getsockname()[1]

    def get(self) -> str:
        from ..dataplane.udp import plain
        dp = self.peers.dp
        views = []
        for p in self._wg_peers():
            c = dp.counters(p.id)
            ep = dp.endpoint(p.id) or p.endpoint
            ep = plain(ep) if ep else None                 # no v4-mapped IPv6 in wg's output
            views.append(PeerView(p.public_key, bytes(p.preshared_key) if p.preshared_key else None,
                                  (ep[0], ep[1]) if ep else None, p.last_handshake_wall or 0.0,
                                  c.rx_bytes, c.tx_bytes, int(p.persistent_keepalive),
                                  [str(n) for n in p.allowed_ips]))
        return format_get(self.peers.engine.private_key(), self._port(), views)

    def set(self, req: SetRequest) -> None:
        from .. import crypto
        peers = self.peers
        engine = peers.engine
        if req.private_key is not None and req.private_key != engine.private_key():
            raise UapiError(_errno.EPERM, "phantomd does not change its private key while running")
        if req.listen_port is not None and req.listen_port not in (0, self._port()):
            raise UapiError(_errno.EADDRINUSE, "phantomd does not change its port while running")
        if req.fwmark:
            raise _invalid("fwmark is not supported")
        for ch in req.peers:
            if ch.public_key == engine.public_key:
                raise _invalid("a peer cannot have this daemon's own key")
            other = engine.peer_by_key(ch.public_key)
            if other is not None and other.protocol != "wireguard":
                raise _invalid("that key is a Phantom peer's")
            if not ch.remove:
                held = other.allowed_ips if other is not None else []
                for n in ch.allowed_ips:               # before anything changes
                    if n not in held:
                        self._check_phantom(n)
        if req.replace_peers:
            keep = {ch.public_key for ch in req.peers if not ch.remove}
            for p in self._wg_peers():
                if p.public_key not in keep:
                    self._remove(p)
        for ch in req.peers:
            peer = engine.peer_by_key(ch.public_key)
            if ch.remove:
                if peer is not None:
                    self._remove(peer)
                continue
            if peer is None:
                if ch.update_only:
                    continue
                if crypto.is_small_order(ch.public_key):
                    raise _invalid("a small-order public key cannot be a peer's")
                peer = peers.add(ch.public_key, peers.free_name("peer-" + ch.public_key[:4].hex()),
                                 [], None, dynamic=True, protocol="wireguard")
                log.info("peer=%s added", peer.name)
            self._apply(peer, ch)

    def _check_phantom(self, net) -> None:
        """UapiError when a prefix new to its WireGuard peer shares an address
        with a Phantom peer's prefix: ``wg`` neither shows nor changes
        Phantom peers, so it may not take (all or, by a longer prefix, part
        of) their traffic either."""
        for holder, m in self.peers.engine.overlapping(net):
            if holder.protocol != "wireguard":
                raise UapiError(_errno.EADDRINUSE, "%s overlaps the Phantom peer %s's %s: wg "
                                "changes only WireGuard peers" % (net, holder.name, m))

    def _remove(self, peer) -> None:
        self.peers.remove(peer)
        log.info("peer=%s removed", peer.name)

    def _apply(self, peer, ch: PeerChange) -> None:
        peers = self.peers
        fields = {}
        if ch.preshared_key is not None:               # b"": none (all zeros)
            fields["preshared_key"] = ch.preshared_key or None
        if ch.endpoint is not None:
            fields["endpoint"] = ch.endpoint
        if fields:
            peers.update(peer, **fields)
        if ch.replace_allowed_ips or ch.allowed_ips:
            nets = [] if ch.replace_allowed_ips else list(peer.allowed_ips)
            for n in ch.allowed_ips:
                if n not in nets:
                    nets.append(n)
            # A prefix another WireGuard peer has moves to this one, as in wg;
            # the engine and the data path change in one step each.
            changes = {peer.id: nets}
            for n in nets:
                holder = peers.engine.prefix_holder(n)
                if holder is not None and holder is not peer:
                    kept = changes.get(holder.id, list(holder.allowed_ips))
                    changes[holder.id] = [m for m in kept if m != n]
            try:
                peers.set_routes(changes)
            except ValueError as exc:                  # e.g. over a directory record's claim
                raise UapiError(_errno.EADDRINUSE, str(exc)) from None
        if ch.persistent_keepalive is not None:
            peers.update(peer, persistent_keepalive=float(ch.persistent_keepalive))
            if ch.persistent_keepalive and peer.endpoint is not None:
                peers.do(peers.engine.open(peer.id))   # up now, kept up (as wg does)
