"""What the helper does in the kernel: netlink through pyroute2, ``nft -j -f -``,
the forwarding sysctls and ``resolvectl``.  Each call either did what it
says or raises :class:`KernelError` with the kernel's own words (errno and
its text); nothing here decides *whether* to do it (that is the allowlist's
job, :mod:`phantom.privsep.protocol`).
"""

from __future__ import annotations

import errno as E
import json
import logging
import os
import shutil
import socket
import subprocess

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .protocol import RTPROT_PHANTOM

log = logging.getLogger("phantom.privsep")

SCOPE_LINK = 253
IFA_F_NODAD = 0x02
FIB_RULE_INVERT = 0x02
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_TIMEOUT = 10.0
FORWARDING = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}


class KernelError(OSError):
    """The kernel (or nft, resolvectl) refused: ``errno`` and a text."""


def _fail(exc: NetlinkError, what: str) -> KernelError:
    code = exc.code if isinstance(exc.code, int) else 0
    return KernelError(code, "%s: %s" % (what, os.strerror(code) if code else exc))


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


class Kernel:
    def __init__(self, ifindex: int):
        self.ifindex = ifindex
        self.ipr = IPRoute()
        self.nft = shutil.which("nft", path=SAFE_PATH)
        self.resolvectl = shutil.which("resolvectl", path=SAFE_PATH)

    def close(self) -> None:
        try:
            self.ipr.close()
        except Exception:   # noqa: BLE001  (closing a socket that may be gone)
            pass

    # --- links and addresses --------------------------------------------------------------------
    def link_name(self, index: int):
        try:
            links = self.ipr.get_links(index)
        except NetlinkError:
            return None
        return links[0].get("IFLA_IFNAME") if links else None

    def link_is_up(self, index: int) -> bool:
        try:
            return bool(self.ipr.get_links(index)[0]["flags"] & 1)
        except NetlinkError as exc:
            raise _fail(exc, "link %d" % index) from None

    def addrgenmode_none(self, index: int) -> None:
        try:
            self.ipr.link("set", index=index, IFLA_AF_SPEC={
                "attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})
        except NetlinkError as exc:
            raise _fail(exc, "addrgenmode none") from None

    def set_up(self, index: int, up: bool) -> None:
        try:
            self.ipr.link("set", index=index, state="up" if up else "down")
        except NetlinkError as exc:
            raise _fail(exc, "link %s" % ("up" if up else "down")) from None

    def addr(self, cmd: str, index: int, iface) -> None:
        kw = {"flags": IFA_F_NODAD} if iface.version == 6 and cmd == "add" else {}
        try:
            self.ipr.addr(cmd, index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **kw)
        except NetlinkError as exc:
            raise _fail(exc, "address %s %s" % (cmd, iface)) from None

    # --- routes ----------------------------------------------------------------------------------
    def _route_kw(self, net, table: int, oif: int) -> dict:
        kw = dict(dst=str(net), oif=oif, table=table, proto=RTPROT_PHANTOM, family=_family(net.version))
        if net.version == 4:
            kw["scope"] = SCOPE_LINK          # as `ip route add PREFIX dev DEV` makes it
        return kw

    def route(self, cmd: str, net, table: int, oif=None) -> None:
        try:
            self.ipr.route(cmd, **self._route_kw(net, table, self.ifindex if oif is None else oif))
        except NetlinkError as exc:
            raise _fail(exc, "route %s %s" % (cmd, net)) from None

    def routes_for(self, net, table: int) -> list:
        """(oif, proto, multipath) of the routes for exactly ``net`` in ``table``."""
        out = []
        try:
            dump = self.ipr.route("dump", family=_family(net.version), table=table)
        except NetlinkError as exc:
            raise _fail(exc, "route dump") from None
        for r in dump:
            dst = r.get("dst") or ("0.0.0.0" if net.version == 4 else "::")
            if r["dst_len"] != net.prefixlen or dst != str(net.network_address):
                continue
            if r.get("table") != table or r["type"] not in (1,):          # unicast only
                continue
            out.append((r.get("oif"), r["proto"], r.get("multipath") is not None))
        return out

    # --- rules ------------------------------------------------------------------------------------
    def rule(self, cmd: str, a: dict) -> None:
        kw = dict(family=_family(a["family"]), priority=a["priority"], table=a["table"],
                  protocol=RTPROT_PHANTOM)
        if a["fwmark"] is not None:
            kw.update(fwmark=a["fwmark"], fwmask=0xFFFFFFFF)
        if a["invert"]:
            kw["flags"] = FIB_RULE_INVERT
        if a["suppress_prefixlength"] is not None:
            kw["suppress_prefixlen"] = a["suppress_prefixlength"]
        try:
            self.ipr.rule(cmd, **kw)
        except NetlinkError as exc:
            raise _fail(exc, "rule %s priority %d" % (cmd, a["priority"])) from None

    # --- nftables ---------------------------------------------------------------------------------
    def _tool(self, argv: list, stdin: str = "") -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                                  env={"PATH": SAFE_PATH, "LC_ALL": "C"}, close_fds=True, cwd="/")
        except subprocess.TimeoutExpired:
            raise KernelError(E.ETIMEDOUT, "%s did not finish within %.0f s" % (argv[0], TOOL_TIMEOUT)) from None
        except OSError as exc:
            raise KernelError(exc.errno or E.EIO, "cannot run %s: %s" % (argv[0], exc.strerror or exc)) from None

    def nft_apply(self, batch: dict) -> None:
        if self.nft is None:
            raise KernelError(E.ENOENT, "nft not found (install Debian's nftables package)")
        out = self._tool([self.nft, "-j", "-f", "-"], json.dumps(batch))
        if out.returncode != 0:
            text = " ".join(out.stderr.split())[:500] or "exit status %d" % out.returncode
            raise KernelError(E.EINVAL if "Error" in text else E.EIO, "nft: %s" % text)

    def nft_has_table(self, name: str) -> bool:
        if self.nft is None:
            return False
        out = self._tool([self.nft, "-j", "list", "table", "inet", name])
        return out.returncode == 0

    # --- sysctls ----------------------------------------------------------------------------------
    def sysctl_read(self, path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as exc:
            raise KernelError(exc.errno or E.EIO, "%s: %s" % (path, exc.strerror)) from None

    def sysctl_write(self, path: str, value: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(value + "\n")
        except OSError as exc:
            raise KernelError(exc.errno or E.EIO, "%s: %s" % (path, exc.strerror)) from None

    # --- systemd-resolved -------------------------------------------------------------------------
    def resolved(self, *args: str) -> None:
        if self.resolvectl is None:
            raise KernelError(E.ENOENT, "resolvectl not found: registering DNS with systemd-resolved "
                                        "needs systemd-resolved")
        out = self._tool([self.resolvectl, *args])
        if out.returncode != 0:
            text = " ".join((out.stderr or out.stdout).split())[:500] or "exit status %d" % out.returncode
            raise KernelError(E.EIO, "resolvectl %s: %s" % (args[0], text))
