"""The name service as phantomd runs it: the ``[dns]`` config section, the
names feed, and the service object the daemon wires (phantom/daemon.py).

* :func:`parse_section` checks ``[dns]`` at config time (a bad value: exit
  2 naming the key, nothing opened).  :class:`DnsSettings` is the result.
* Names come from a **names feed**: anything that yields ``(name, ipv4s,
  ipv6s)`` entries (:class:`NameFeed`).  Until the network's member stream
  exists, the daemon's feed is :func:`peer_entries`: its own name with its
  tunnel addresses, and every peer it knows (configured, opened through the
  API, admitted from the directory) with the host addresses (/32, /128) of
  its allowed IPs.  :class:`NameSync` turns each snapshot into the O(1)
  :class:`~phantom.dns.names.NameTable` changes that differ from the last
  one (a name whose entry did not change is not touched, a bad name is
  counted and logged once per change, not once per snapshot).  The member
  stream will call the same table's ``set``/``remove`` per delta instead.
* :class:`NameService`: ``bind()`` while root (port 53 on the tunnel
  addresses, before the privilege drop), ``register_split_dns()`` while
  root (systemd-resolved, when it runs), ``await start()`` on the loop,
  ``sync(entries)`` on changes, ``describe()`` for ``GET /dns``,
  ``stats()`` for /status and /metrics, ``await close()``.

Reading ``[dns]`` (:func:`parse_section`, :class:`DnsSettings`: every
config load, and a reload after the privilege drop) imports no dnspython:
the responder's modules (server.py, zone.py: dnspython) are imported by
:class:`NameService` and :func:`warm_up`, which only a daemon that serves
names runs (phantom/node/startup.py's ``preload``).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Protocol

from ..errors import ConfigError
from ..syntax import parse_ip_addresses
from .names import DEFAULT_TTL, DNS_PORT, NameTable, normalize_domain, normalize_label
from .resolved import in_init_netns, resolv_conf, resolved_running, split_dns

__all__ = ["DnsSettings", "parse_section", "NameFeed", "NameSync", "peer_entries", "NameService",
           "DEFAULT_DOMAIN", "warm_up"]

log = logging.getLogger("phantom.dns")

DEFAULT_DOMAIN = "phantom.internal"     # .internal: reserved for private use (ICANN, 2024)
RESOLVED_CHOICES = ("auto", "yes", "no")
CHECK_EVERY = 1.0        # seconds between looks at the peer set's fingerprint
FULL_SYNC_EVERY = 30.0   # seconds between full snapshots even when it did not change
KEYS = ("enabled", "domain", "name", "listen", "port", "ttl", "rate", "burst", "tcp_idle",
        "resolved", "ipv4_prefix", "ipv6_prefix")


@dataclass(frozen=True)
class DnsSettings:
    enabled: bool = False
    domain: str = DEFAULT_DOMAIN
    name: Optional[str] = None                   # our own label; None: [interface] name
    listen: Optional[tuple[str, ...]] = None     # None: the tunnel addresses
    port: int = DNS_PORT
    ttl: int = DEFAULT_TTL
    rate: float = 100.0                          # queries per second and source address
    burst: int = 200
    tcp_idle: float = 10.0
    resolved: str = "auto"                       # split DNS with systemd-resolved: auto|yes|no
    ipv4_prefix: Optional[str] = None            # None: the first IPv4 address's subnet
    ipv6_prefix: Optional[str] = None


def _expect(value, types, key: str, what: str):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(key, "must be %s, not %r" % (what, value))
    if not isinstance(value, types):
        raise ConfigError(key, "must be %s, not %r" % (what, value))
    return value


def parse_section(table: Any) -> DnsSettings:
    """``[dns]`` as :class:`DnsSettings`; ConfigError naming ``dns.KEY``.
    A ``[dns]`` section turns the service on unless it says ``enabled = false``."""
    if not isinstance(table, dict):
        raise ConfigError("dns", "must be a table ([dns])")
    kw: dict = {"enabled": True}
    for k, v in table.items():
        key = "dns.%s" % k
        if k not in KEYS:
            raise ConfigError(key, "unknown setting (known: %s)" % ", ".join(KEYS))
        if k == "enabled":
            kw[k] = _expect(v, bool, key, "true or false")
        elif k == "domain":
            try:
                kw[k] = normalize_domain(_expect(v, str, key, "a domain name"))
            except ValueError as exc:
                raise ConfigError(key, str(exc)) from None
        elif k == "name":
            label = normalize_label(v)
            if label is None:
                raise ConfigError(key, "%r is not a DNS label (letters, digits, hyphens; 1-63 "
                                  "characters; no hyphen first or last)" % (v,))
            kw[k] = label
        elif k == "listen":
            items = [v] if isinstance(v, str) else _expect(v, list, key, "an address or a list of addresses")
            if not items:
                raise ConfigError(key, "give at least one address (or leave it out: the tunnel addresses)")
            kw[k] = parse_ip_addresses(items, key)
        elif k == "port":
            if _expect(v, int, key, "a port number") < 0 or v > 65535:
                raise ConfigError(key, "must be 0..65535")
            kw[k] = v
        elif k == "ttl":
            if not 0 <= _expect(v, int, key, "seconds (an integer)") <= 3600:
                raise ConfigError(key, "must be 0..3600 seconds (short: a removal leaves caches within it)")
            kw[k] = v
        elif k in ("rate", "tcp_idle"):
            if _expect(v, (int, float), key, "a number") <= 0 or v != v or v == float("inf"):
                raise ConfigError(key, "must be a positive number")
            kw[k] = float(v)
        elif k == "burst":
            if _expect(v, int, key, "an integer") < 1:
                raise ConfigError(key, "must be at least 1")
            kw[k] = v
        elif k == "resolved":
            if isinstance(v, bool):
                v = "yes" if v else "no"
            if v not in RESOLVED_CHOICES:
                raise ConfigError(key, "must be one of %s" % ", ".join(RESOLVED_CHOICES))
            kw[k] = v
        elif k in ("ipv4_prefix", "ipv6_prefix"):
            version = 4 if k == "ipv4_prefix" else 6
            try:
                net = ipaddress.ip_network(_expect(v, str, key, "a prefix"), strict=False)
            except ValueError:
                raise ConfigError(key, "%r is not a prefix" % (v,)) from None
            if net.version != version:
                raise ConfigError(key, "%s is not an IPv%d prefix" % (v, version))
            kw[k] = str(net)
    return DnsSettings(**kw)


# --------------------------------------------------------------------- names feed
class NameFeed(Protocol):
    """Where names come from: one snapshot of ``(name, ipv4s, ipv6s)``."""

    def entries(self) -> Iterable[tuple[str, Iterable, Iterable]]: ...


def peer_entries(own_name: Optional[str], own_addresses: Iterable, peers: Iterable[tuple[str, Iterable]]
                 ) -> list[tuple[str, list, list]]:
    """The daemon's feed until the member stream: its own name with its
    tunnel addresses (interfaces or addresses), then each ``(name,
    allowed_ips)`` with the host addresses among the allowed IPs (a /32 or
    /128; a wider prefix is a subnet behind the peer, not the peer).  A
    peer named like us is left out (our own name wins)."""
    out = []
    own = normalize_label(own_name) if own_name else None
    if own is not None:
        v4, v6 = [], []
        for a in own_addresses:
            ip = getattr(a, "ip", None) or ipaddress.ip_address(a)
            (v4 if ip.version == 4 else v6).append(ip)
        out.append((own, v4, v6))
    for name, nets in peers:
        if own is not None and isinstance(name, str) and name.lower() == own:
            continue
        v4, v6 = [], []
        for n in nets:
            n = ipaddress.ip_network(n)
            if n.prefixlen == n.max_prefixlen:
                (v4 if n.version == 4 else v6).append(n.network_address)
        if v4 or v6:
            out.append((name, v4, v6))
    return out


class NameSync:
    """Applies snapshots to a :class:`NameTable` as changes: only entries
    that differ from the previous snapshot are set, and names that left it
    are removed.  Returns what changed; a refused entry is logged once."""

    def __init__(self, table: NameTable) -> None:
        self.table = table
        self._last: dict[str, tuple] = {}

    def sync(self, entries: Iterable[tuple[str, Iterable, Iterable]]) -> tuple[list, list]:
        snap: dict[str, tuple] = {}
        for name, v4, v6 in entries:
            key = name.lower() if isinstance(name, str) else name
            if key not in snap:                       # the first entry of a name wins
                snap[key] = (name, tuple(map(str, v4)), tuple(map(str, v6)))
        changed, removed = [], []
        for key, old in self._last.items():
            if key not in snap:
                if self.table.remove(old[0]):
                    removed.append(old[0])
        for key, entry in snap.items():
            if self._last.get(key) == entry:
                continue
            name, v4, v6 = entry
            if self.table.set(name, v4, v6):
                changed.append(name)
            else:                                     # refused: nothing stale stays either
                if isinstance(name, str):
                    self.table.remove(name)
                log.warning("%r is not served: %s", name,
                            "not a DNS label (letters, digits, hyphens; 1-63 characters)"
                            if normalize_label(name) is None else "bad addresses %s %s" % (v4, v6))
        self._last = snap
        return changed, removed


# --------------------------------------------------------------------- the service
class NameService:
    """The daemon's name service; see the module docstring for the order of calls."""

    def __init__(self, settings: DnsSettings, own_name: Optional[str], addresses: Iterable) -> None:
        from .server import DnsServer, SourceLimiter     # dnspython: only when names are served
        from .zone import Zone
        self.settings = settings
        ifaces = [a if hasattr(a, "network") else ipaddress.ip_interface(a) for a in addresses]
        if settings.listen is not None:
            self.listen = list(settings.listen)
        else:
            self.listen = [str(a.ip) for a in ifaces]
        if not self.listen:
            raise ConfigError("dns.listen", "no address to serve on: this daemon has no tunnel "
                              "address ([interface] addresses); give dns.listen")
        nameserver = settings.name or (normalize_label(own_name) if own_name else None)
        self.own_name = nameserver        # our label in the zone (None: no own name; NS is "ns")
        v4p = settings.ipv4_prefix or next((str(a.network) for a in ifaces if a.version == 4), None)
        v6p = settings.ipv6_prefix or next((str(a.network) for a in ifaces if a.version == 6), None)
        self.table = NameTable()
        self.feed = NameSync(self.table)
        try:
            self.zone = Zone(settings.domain, self.table, ipv4_prefix=v4p, ipv6_prefix=v6p,
                             ttl=settings.ttl, nameserver=nameserver or "ns")
        except ValueError as exc:
            raise ConfigError("dns", str(exc)) from None
        self.server = DnsServer(self.zone, limiter=SourceLimiter(rate=settings.rate, burst=settings.burst),
                                tcp_idle=settings.tcp_idle)
        self._sockets: list = []
        self._checked = float("-inf")     # due(): when the fingerprint was last looked at
        self._synced = float("-inf")      # when the last snapshot was applied
        self._fingerprint = None
        self.split = None                 # SplitDns registered with systemd-resolved
        self.split_error: Optional[str] = None

    # -- root-only steps ---------------------------------------------------------------
    def bind(self) -> None:
        """Port 53 on the listen addresses, UDP and TCP (while root)."""
        from .server import bind_sockets
        try:
            self._sockets = bind_sockets(self.listen, self.settings.port)
        except OSError as exc:
            raise OSError(exc.errno, "dns: cannot serve on %s port %d: %s" % (
                ", ".join(self.listen), self.settings.port, exc.strerror or exc)) from None

    def register_split_dns(self, device: Optional[str], run_dir: str = "/run/systemd/resolve",
                           netns_check=in_init_netns) -> None:
        """Split DNS on ``device`` with systemd-resolved (while root, before
        the drop), as ``resolvectl dns/domain`` do.  The registration is the
        link's: it goes when the device does.  ``resolved = "auto"``: only
        where resolved runs and phantomd shares its network namespace;
        ``"yes"``: anything else stops the start."""
        mode = self.settings.resolved
        if mode == "no" or device is None:
            return
        if not netns_check():
            if mode == "yes":
                raise OSError("dns.resolved = \"yes\": phantomd runs in another network namespace "
                              "than systemd-resolved (PID 1's), or cannot tell (/proc/1/ns/net unreadable)")
            log.info("not registering split DNS: phantomd runs in another network namespace than "
                     "systemd-resolved (PID 1's), or cannot tell; point that namespace's resolv.conf at %s (docs/names.md)",
                     ", ".join(self.listen))
            return
        if not resolved_running(run_dir) or shutil.which("resolvectl") is None:
            if mode == "yes":
                raise OSError("dns.resolved = \"yes\": systemd-resolved does not run here (or "
                              "resolvectl is missing)")
            log.info("systemd-resolved does not run here: point resolv.conf at %s "
                     "(docs/names.md)", ", ".join(self.listen))
            return
        split = split_dns(device, self.listen, self.zone)
        for cmd in split.commands():
            try:
                cp = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired) as exc:
                cp, err = None, str(exc)
            else:
                err = (cp.stderr or cp.stdout).strip() if cp.returncode else None
            if err is not None:
                self.split_error = "%s: %s" % (" ".join(cmd), err)
                if mode == "yes":
                    raise OSError("dns: split DNS with systemd-resolved failed: %s" % self.split_error)
                log.warning("split DNS with systemd-resolved failed (%s); point resolv.conf "
                            "at %s instead (docs/names.md)", self.split_error, ", ".join(self.listen))
                return
        self.split = split
        log.info("systemd-resolved sends %s to %s on %s", ", ".join(split.domains),
                 ", ".join(split.servers), device)

    # -- on the loop ----------------------------------------------------------------------
    async def start(self) -> None:
        socks, self._sockets = self._sockets, []
        if socks:
            await self.server.start(sockets=socks)
        else:
            await self.server.start(self.listen, port=self.settings.port)

    def due(self, fingerprint, now: Optional[float] = None) -> bool:
        """Whether the feed should take a snapshot now (the daemon's timer
        asks every tick): at most every :data:`CHECK_EVERY` seconds, when
        ``fingerprint`` (something cheap that changes when peers come or go:
        the daemon passes the peer count and the highest peer id, ids being
        never reused) changed, and every :data:`FULL_SYNC_EVERY` seconds
        anyway.  A snapshot of 10^4 peers costs ~0.1 s; the check costs
        nothing."""
        now = time.monotonic() if now is None else now
        if now - self._checked < CHECK_EVERY:
            return False
        self._checked = now
        if fingerprint != self._fingerprint or now - self._synced >= FULL_SYNC_EVERY:
            self._fingerprint = fingerprint
            return True
        return False

    def sync(self, entries) -> tuple[list, list]:
        self._synced = time.monotonic()
        changed, removed = self.feed.sync(entries)
        if changed or removed:
            log.info("names %s%s", "set " + ", ".join(changed) if changed else "",
                     ("; " if changed else "") + "removed " + ", ".join(removed) if removed else "")
        return changed, removed

    async def close(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets = []
        await self.server.close()

    # -- reading --------------------------------------------------------------------------
    def names(self) -> list[dict]:
        out = []
        for n in self.table.names():
            a = self.table.lookup(n)
            out.append({"name": n, "fqdn": "%s.%s" % (n, self.zone.domain),
                        "ipv4": [str(x) for x in a.ipv4], "ipv6": [str(x) for x in a.ipv6]})
        return out

    def stats(self) -> dict:
        return self.server.stats()

    def describe(self) -> dict:
        """``GET /dns``: what is served, where, and the counters."""
        return {
            "enabled": True,
            "domain": self.zone.domain,
            "nameserver": self.zone.ns_name.to_text(omit_final_dot=True),
            "listen": [{"transport": k, "address": ep[0], "port": ep[1]} for k, ep in self.server.endpoints()],
            "reverse_zones": [z.origin.to_text(omit_final_dot=True) for z in self.zone.reverse_zones],
            "ttl": self.zone.ttl,
            "split_dns": ({"link": self.split.link, "servers": list(self.split.servers),
                           "domains": list(self.split.domains)} if self.split else None),
            "split_dns_error": self.split_error,
            "resolv_conf": resolv_conf(self.listen, self.zone.domain),
            "names": self.names(),
            "stats": self.stats(),
        }


def warm_up() -> None:
    """Answer one query of each kind (over both transports' limits), so
    that dnspython imports the record-type modules it loads lazily while
    the daemon can still read its installation (before the privilege drop)."""
    import dns.message
    from .zone import Zone
    table = NameTable({"warm": (["192.0.2.1"], ["2001:db8::1"])})
    zone = Zone("warm.invalid", table, ipv4_prefix="192.0.2.0/24", ipv6_prefix="2001:db8::/32")
    for name, rdtype in (("warm.warm.invalid", "A"), ("warm.warm.invalid", "AAAA"),
                         ("warm.invalid", "SOA"), ("warm.invalid", "NS"), ("warm.invalid", "ANY"),
                         ("1.2.0.192.in-addr.arpa", "PTR"), ("nx.warm.invalid", "TXT"),
                         ("example.com", "A")):
        for edns in (None, 0):
            q = dns.message.make_query(name, rdtype, use_edns=edns)
            for tcp in (False, True):
                dns.message.from_wire(zone.respond(q.to_wire(), tcp=tcp))
