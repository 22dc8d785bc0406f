"""TUN/TAP devices: opening them (python-pytun) and configuring addresses,
MTU and routes (netlink, through iproute2's ``ip``).

Opening and configuring need CAP_NET_ADMIN, so the daemon does both before it
drops privileges; after that only the open file descriptor is used.
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


def open_device(mode: Mode, name: str, mtu: int, extra_flags: int = 0) -> Device:
    """Create (or attach to a persistent) TUN/TAP device, set the MTU, bring it up."""
    flags = (pytun.IFF_TUN if mode is Mode.TUN else pytun.IFF_TAP) | pytun.IFF_NO_PI | extra_flags
    try:
        dev = pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        raise DeviceError("cannot open %s device %r: %s (needs root or CAP_NET_ADMIN and /dev/net/tun)"
                          % (mode.value, name, exc)) from exc
    fd = dev.fileno()
    os.set_blocking(fd, False)
    if mode is Mode.TUN:
        _quiet_ipv6(dev.name)
    try:
        dev.mtu = mtu
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


def _ip(*args: str) -> None:
    try:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError("cannot run ip %s: %s" % (" ".join(args), exc)) from exc
    if out.returncode != 0 and "File exists" not in out.stderr:
        raise DeviceError("ip %s: %s" % (" ".join(args), out.stderr.strip()))


def configure_addresses(name: str, addresses: Iterable, routes: Iterable = ()) -> None:
    """Add interface addresses (``ipaddress`` interfaces) and routes for
    allowed IPs that the addresses do not already cover, with iproute2
    (netlink).  IPv6 addresses skip duplicate address detection."""
    addresses = [ipaddress.ip_interface(a) for a in addresses]
    for iface in addresses:
        extra = ["nodad"] if iface.version == 6 else []
        _ip("addr", "add", str(iface), "dev", name, *extra)
    connected = [a.network for a in addresses]
    for net in routes:
        net = ipaddress.ip_network(net)
        if any(net.version == c.version and net.subnet_of(c) for c in connected):
            continue  # already reachable through the connected route
        _ip("-%d" % net.version, "route", "add", str(net), "dev", name)
        log.info("route %s via %s", net, name)
