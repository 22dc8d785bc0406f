"""UDP sockets for the tunnel and the test port, and endpoint normalisation.

The tunnel socket is dual-stack (AF_INET6 with IPV6_V6ONLY off) when the host
has IPv6, so one socket serves IPv4 and IPv6 peers.  Endpoints are kept in the
socket's own address form (IPv4 peers as ``::ffff:a.b.c.d``) inside the data
path, and shown to people in plain form.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
from typing import Optional
from .types import RelayVia

SOCKET_BUFFER = 4 << 20


def in_use(what: str, hint: str) -> OSError:
    """The error for a port another process holds, naming which port
    (``what``: "udp port 9000", "API port 4567 on 127.0.0.1") instead of
    "[Errno 98] Address already in use".  Its errno is EADDRINUSE."""
    err = OSError("%s is in use (another phantomd, or another program, has it): %s" % (what, hint))
    err.errno = errno.EADDRINUSE
    return err


def open_udp_socket(port: int, host: Optional[str] = None) -> socket.socket:
    """Bind the tunnel socket on ``host`` (default: all addresses, both families)."""
    family = socket.AF_INET6
    if host is not None and ipaddress.ip_address(host).version == 4:
        family = socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        family = socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
        bind_host = host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise in_use("udp port %d" % port if host is None else "udp port %d on %s" % (port, host),
                         "stop it, or choose another port with listen_port or --udp-port") from None
        sock.setblocking(False)
    except Exception:
        sock.close()
        raise
    return sock


def open_test_socket(port: int) -> socket.socket:
    """The prototype's test port: loopback only, never reachable from outside."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise in_use("test port %d on 127.0.0.1" % port,
                         "stop it, or choose another port with test_port or --test-port") from None
        sock.setblocking(False)
    except Exception:
        sock.close()
        raise
    return sock


def to_sockaddr(sock: socket.socket, endpoint: tuple) -> tuple:
    """Turn a (host, port) endpoint into the address form ``sock`` sends to."""
    return _to_sockaddr(sock.family, endpoint[0], endpoint[1])


# Parsing an address with ipaddress costs ~25 us, on every handshake answer
# (twice) and every control packet; the few thousand addresses a hub talks
# to are remembered instead (pure functions, bounded caches; issue #15).
@functools.lru_cache(maxsize=16384)
def _to_sockaddr(family: int, host: str, port: int) -> tuple:
    ip = ipaddress.ip_address(host)
    if family == socket.AF_INET6:
        if ip.version == 4:
            return ("::ffff:%s" % ip, port, 0, 0)
        return (str(ip), port, 0, 0)
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is None:
            raise ValueError("IPv6 endpoint %s on an IPv4-only socket" % ip)
        return (str(mapped), port)
    return (str(ip), port)


def plain(addr: Optional[tuple]) -> Optional[tuple]:
    """A socket address as (host, port) with IPv4-mapped addresses unmapped."""
    if addr is None:
        return None
    if isinstance(addr, RelayVia):
        return addr
    return _plain(addr[0], addr[1])


@functools.lru_cache(maxsize=16384)
def _plain(host: str, port: int) -> tuple:
    ip = ipaddress.ip_address(host.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return (str(ip.ipv4_mapped), port)
    return (str(ip), port)


def format_endpoint(addr: Optional[tuple]) -> Optional[str]:
    p = plain(addr)
    if p is None:
        return None
    if isinstance(p, RelayVia):
        return "relay:%d/%d" % p
    host, port = p
    return ("[%s]:%d" % (host, port)) if ":" in host else ("%s:%d" % (host, port))
