"""TUN/TAP devices: opening them (python-pytun), their MTU and link state,
and reading the kernel's routes without privileges.

Opening needs CAP_NET_ADMIN, so the daemon does it before it drops
privileges; after that only the open file descriptor is used.  Addresses,
routes and the link going up are the privileged helper's work
(phantom/privsep: netlink in-process, also after the drop).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Iterable, Optional

import pytun

from .types import Mode

log = logging.getLogger("phantom.tun")


class DeviceError(OSError):
    pass


@dataclass
class Device:
    """An open TUN or TAP device.  ``fd`` is non-blocking, no packet-info header."""

    name: str
    fd: int
    mode: Mode
    _dev: object  # keeps the pytun object (and with it the fd) alive

    def close(self) -> None:
        try:
            self._dev.close()
        except Exception:  # already closed
            pass


def open_device(mode: Mode, name: str, mtu: int, extra_flags: int = 0, up: bool = True) -> Device:
    """Create (or attach to a persistent) TUN/TAP device, set the MTU, bring it
    up (``up``; without it the link stays down for the privileged helper,
    which turns off IPv6 link-local addresses first and then brings it up)."""
    flags = (pytun.IFF_TUN if mode is Mode.TUN else pytun.IFF_TAP) | pytun.IFF_NO_PI | extra_flags
    try:
        dev = pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        raise DeviceError("cannot open %s device %r: %s (needs root or CAP_NET_ADMIN and /dev/net/tun)"
                          % (mode.value, name, exc)) from exc
    fd = dev.fileno()
    os.set_blocking(fd, False)
    if mode is Mode.TUN and up:
        _quiet_ipv6(dev.name)
    try:
        dev.mtu = mtu
        if up:
            dev.up()
    except pytun.Error as exc:
        dev.close()
        raise DeviceError("cannot configure %s: %s" % (name, exc)) from exc
    log.info("opened %s device %s (mtu %d)", mode.value, dev.name, mtu)
    return Device(dev.name, fd, mode, dev)


def _quiet_ipv6(name: str) -> None:
    """No IPv6 link-local address on a TUN device (``addrgenmode none``, set
    before the link goes up): a tunnel has no neighbours or routers to
    discover, and with a link-local address the kernel sends router
    solicitations to ff02::2 into the device, at once and then with back-off
    up to once an hour, which no peer's allowed IPs cover: they were the
    ``no_route`` drops of an idle tunnel.  Configured addresses (``fe80::1/64``
    too, for a routing protocol that needs one) are added as before.  Netlink,
    so it works where /proc/sys is read-only (ProtectKernelTunables); a kernel
    without IPv6 refuses it, which changes nothing."""
    try:
        out = subprocess.run(["ip", "link", "set", "dev", name, "addrgenmode", "none"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("%s: cannot turn off IPv6 link-local addresses: %s", name, exc)
        return
    if out.returncode != 0:
        log.info("%s: IPv6 link-local addresses stay on (ip link set addrgenmode none: %s)",
                 name, out.stderr.strip())


_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1


def link_is_up(name: str) -> Optional[bool]:
    """Whether the link ``name`` is administratively up (IFF_UP), asked of the
    kernel (SIOCGIFFLAGS needs no privilege); None when there is no such link."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack("16sH14x", name.encode()[:15], 0))
    except OSError:
        return None
    return bool(struct.unpack_from("16sH", ifr)[1] & _IFF_UP)


# --- the kernel's routes, read without privileges --------------------------------------------
_RTF_REJECT = 0x0200            # unreachable/prohibit/blackhole: routes nothing anywhere


def kernel_routes() -> list:
    """(network, device) of the kernel's IPv4 main-table and IPv6 routes, from
    /proc/net/route and /proc/net/ipv6_route: readable by any user, no
    helper exec'd (after the privilege drop the daemon execs nothing)."""
    import socket
    import struct
    out = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                c = line.split()
                if len(c) < 8 or int(c[3], 16) & _RTF_REJECT:
                    continue
                dest = socket.inet_ntoa(struct.pack("<I", int(c[1], 16)))
                plen = bin(int(c[7], 16)).count("1")
                out.append((ipaddress.ip_network("%s/%d" % (dest, plen), strict=False), c[0]))
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route") as f:
            for line in f:
                c = line.split()
                if len(c) < 10 or int(c[8], 16) & _RTF_REJECT:
                    continue
                dest = ipaddress.IPv6Address(bytes.fromhex(c[0]))
                out.append((ipaddress.ip_network("%s/%d" % (dest, int(c[1], 16)), strict=False), c[9]))
    except OSError:
        pass
    return out


def unrouted(device: str, networks: Iterable, routes=None) -> list:
    """The prefixes of ``networks`` that the kernel does not route into
    ``device``: the longest route holding the whole prefix goes elsewhere
    (or there is none).  A more specific route inside the prefix (the LAN of
    another interface, say) is the host's own business, as at start."""
    routes = kernel_routes() if routes is None else routes
    missing = []
    for net in networks:
        net = ipaddress.ip_network(net)
        holding = [(r.prefixlen, dev) for r, dev in routes if r.version == net.version and net.subnet_of(r)]
        best = max((plen for plen, _ in holding), default=-1)
        if not any(plen == best and dev == device for plen, dev in holding):
            missing.append(net)
    return missing
