"""Pointing the host's resolver at the name service.

* With systemd-resolved: split DNS on the tunnel device, as
  ``resolvectl dns DEV ADDR...; resolvectl domain DEV ~DOMAIN...`` does:
  only names under the network's domain (and its reverse zones) go to
  phantomd, everything else stays with the host's other servers.
  :class:`SplitDns` is that registration as data: the commands that make
  it and the one that undoes it.  They change the resolver's state, so
  the daemon runs them before its privilege drop or through its
  privileged helper (issue 22), which checks that the link is its own.
* Without it: :func:`resolv_conf` is the text for /etc/resolv.conf (a
  nameserver line per tunnel address and the domain as search domain),
  as docs/names.md tells users.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Iterable

from .names import normalize_domain

__all__ = ["SplitDns", "split_dns", "resolved_running", "resolv_conf", "in_init_netns"]

_LINK = re.compile(r"[A-Za-z0-9_.:-]{1,15}\Z")          # an interface name (IFNAMSIZ - 1)


@dataclass(frozen=True)
class SplitDns:
    """Split DNS for one link: ``servers`` (addresses; port 53) answer the
    routing-only ``domains`` (written without ``~``).  The link never
    becomes a default route for other names, and LLMNR and mDNS stay off
    on it, so no other query leaves through the tunnel."""

    link: str
    servers: tuple[str, ...]
    domains: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _LINK.match(self.link or ""):
            raise ValueError("bad link name %r" % (self.link,))
        if not self.servers or not self.domains:
            raise ValueError("split DNS needs at least one server and one domain")
        object.__setattr__(self, "servers", tuple(str(ipaddress.ip_address(s)) for s in self.servers))
        doms = []
        for d in self.domains:
            d = d.lower().rstrip(".")
            if d.endswith(".arpa"):             # a reverse zone: digits/nibbles, checked by shape
                if not re.fullmatch(r"([0-9a-f]{1,3}\.)+(in-addr|ip6)\.arpa", d):
                    raise ValueError("bad reverse zone %r" % d)
            else:
                d = normalize_domain(d)
            doms.append(d)
        object.__setattr__(self, "domains", tuple(doms))

    def commands(self) -> list[list[str]]:
        """The resolvectl command lines that register it."""
        return [
            ["resolvectl", "dns", self.link, *self.servers],
            ["resolvectl", "domain", self.link, *("~" + d for d in self.domains)],
            ["resolvectl", "default-route", self.link, "false"],
            ["resolvectl", "llmnr", self.link, "no"],
            ["resolvectl", "mdns", self.link, "no"],
        ]

    def revert_commands(self) -> list[list[str]]:
        """The command that removes it (the link's per-link settings)."""
        return [["resolvectl", "revert", self.link]]


def split_dns(link: str, servers: Iterable[str], zone) -> SplitDns:
    """The registration for a :class:`~phantom.dns.zone.Zone`: its domain
    and its reverse zones, served at ``servers`` on ``link``."""
    domains = [zone.domain] + [z.origin.to_text(omit_final_dot=True) for z in zone.reverse_zones]
    return SplitDns(link, tuple(servers), tuple(domains))


def resolved_running(run_dir: str = "/run/systemd/resolve") -> bool:
    """True when systemd-resolved runs here (its runtime directory exists)."""
    return os.path.isdir(run_dir)


def in_init_netns(pid1_ns: str = "/proc/1/ns/net", own_ns: str = "/proc/self/ns/net") -> bool:
    """True when this process shares PID 1's network namespace, where the
    host's systemd-resolved runs.  resolvectl names links by name in
    resolved's namespace: from another one, ``phtun0`` would be the wrong
    link (or another daemon's), so phantomd registers nothing there."""
    try:
        return os.stat(pid1_ns).st_ino == os.stat(own_ns).st_ino
    except OSError:
        return False


def resolv_conf(servers: Iterable[str], domain: str) -> str:
    """/etc/resolv.conf for a host without systemd-resolved: every query goes
    to phantomd, which answers only the network's domain (REFUSED for the
    rest, so keep another nameserver line after these when the host needs
    other names: glibc tries the next one on REFUSED).  The search line
    makes ``ping n3`` work as well as ``ping n3.corp.phantom``."""
    lines = ["# phantom: the network's name service (docs/names.md)"]
    lines += ["nameserver %s" % ipaddress.ip_address(s) for s in servers]
    lines.append("search %s" % normalize_domain(domain))
    return "\n".join(lines) + "\n"
