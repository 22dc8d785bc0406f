"""Topologies of the rig: hosts on veth pairs and bridges, NAT routers
(iptables MASQUERADE, conntrack) and a small internet of home networks.

Every builder is a context manager; leaving it deletes its namespaces.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Iterator

from .namespaces import IFNAMSIZ, HttpReply, Namespace, RigError, run_cmd, unique_prefix

__all__ = ["Host", "Router", "TwoHosts", "Lan", "Nat", "Internet", "HomeRouter", "LinkEnd",
           "Topology", "two_hosts", "lan", "nat", "internet"]

# (aliases: Host defines a method named "socket")
_AF_INET, _SOCK_DGRAM = socket.AF_INET, socket.SOCK_DGRAM


# ---------------------------------------------------------------------------
# Topologies
# ---------------------------------------------------------------------------

@dataclass
class LinkEnd:
    ns: Namespace
    ifname: str


class Host:
    """A namespace with one interface on a topology.

    ``ip``/``ip6`` are the current primary addresses (updated by
    :meth:`change_address`); ``peer`` is the far end of this host's veth,
    which :meth:`cut` takes down.
    """

    def __init__(self, role: str, ns: Namespace, ifname: str, ip: str, ip6: str | None,
                 prefixlen: int = 24, prefixlen6: int = 64, gateway: str | None = None,
                 peer: LinkEnd | None = None) -> None:
        self.role, self.ns, self.ifname = role, ns, ifname
        self.ip, self.ip6 = ip, ip6
        self.prefixlen, self.prefixlen6 = prefixlen, prefixlen6
        self.gateway = gateway
        self.peer = peer

    def __repr__(self) -> str:
        return f"Host({self.role!r}, ns={self.ns.name!r}, {self.ifname}, {self.ip}, {self.ip6})"

    @property
    def name(self) -> str:
        return self.ns.name

    # forwarding to the namespace, so tests can write host.run(...)
    def run(self, cmd, check=True, timeout=30.0, input=None):
        return self.ns.run(cmd, check=check, timeout=timeout, input=input)

    def popen(self, cmd, **kw):
        return self.ns.popen(cmd, **kw)

    def http(self, method, path, **kw) -> HttpReply:
        return self.ns.http(method, path, **kw)

    def udp_socket(self, family=_AF_INET, bind=None):
        return self.ns.udp_socket(family, bind)

    def socket(self, family=_AF_INET, type=_SOCK_DGRAM, proto=0):
        return self.ns.socket(family, type, proto)

    def ping(self, addr: str, timeout: float = 2.0) -> bool:
        return self.ns.ping(addr, timeout)

    # roaming and link failure
    def addresses(self) -> list[str]:
        return self.ns.addresses(self.ifname)

    def add_address(self, cidr: str) -> None:
        """Add an extra address (``10.201.0.12/24`` or ``fd01:201::12/64``)."""
        self.ns.add_address(self.ifname, cidr)

    def remove_address(self, cidr: str) -> None:
        self.ns.del_address(self.ifname, cidr)

    def change_address(self, new_ip: str, keep_old: bool = False) -> str:
        """Move this host to ``new_ip`` (same prefix length): the new address
        is added, then the old one removed (unless ``keep_old``), so the host's
        traffic leaves from ``new_ip`` from now on.  Returns the old address."""
        v6 = ":" in new_ip
        old = self.ip6 if v6 else self.ip
        plen = self.prefixlen6 if v6 else self.prefixlen
        self.add_address(f"{new_ip}/{plen}")
        self.ns.wait_addresses_ready()
        if not keep_old and old:
            self.remove_address(f"{old}/{plen}")
        if v6:
            self.ip6 = new_ip
        else:
            self.ip = new_ip
            if self.gateway:
                self.ns.ip("route", "replace", "default", "via", self.gateway, "dev", self.ifname)
        return old or ""

    def cut(self) -> None:
        """Cut this host's link: the far end goes down, so nothing passes
        either way (sends succeed and vanish, like a pulled cable).  The
        host's own addresses and routes are untouched."""
        if self.peer is None:
            raise RigError(f"{self!r} has no link to cut")
        self.peer.ns.set_link(self.peer.ifname, False)

    def restore(self, timeout: float = 5.0) -> None:
        """Undo :meth:`cut` and wait until both ends report carrier."""
        if self.peer is None:
            raise RigError(f"{self!r} has no link to restore")
        self.peer.ns.set_link(self.peer.ifname, True)
        for ns, ifname in ((self.ns, self.ifname), (self.peer.ns, self.peer.ifname)):
            ns.wait_link_up(ifname, timeout)
            ns.wait_addresses_ready(timeout)


class Topology:
    """Namespaces built together and deleted together."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or unique_prefix()
        self.namespaces: list[Namespace] = []
        self.hosts: dict[str, Host] = {}

    def _ns(self, role: str) -> Namespace:
        ns = Namespace(f"{self.prefix}-{role}")
        self.namespaces.append(ns)
        return ns

    @staticmethod
    def _veth(a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
        assert len(a_if) <= IFNAMSIZ and len(b_if) <= IFNAMSIZ
        run_cmd(["ip", "link", "add", a_if, "netns", a.name, "type", "veth",
              "peer", "name", b_if, "netns", b.name])

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Every host link up and no tentative address anywhere."""
        for host in self.hosts.values():
            host.ns.wait_link_up(host.ifname, timeout)
        for ns in self.namespaces:
            ns.wait_addresses_ready(timeout)

    def close(self) -> None:
        errors = []
        for ns in reversed(self.namespaces):
            try:
                ns.delete()
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            raise RigError("; ".join(errors))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TwoHosts(Topology):
    """a <-veth-> b.  a: 10.201.0.1/24, fd01:201::1/64; b: .2 / ::2.
    Interface ``eth0`` in both."""

    SUBNET, SUBNET6 = "10.201.0", "fd01:201:"

    def build(self) -> "TwoHosts":
        na, nb = self._ns("a"), self._ns("b")
        self._veth(na, "eth0", nb, "eth0")
        for i, (role, ns, other) in enumerate((("a", na, nb), ("b", nb, na)), start=1):
            ip, ip6 = f"{self.SUBNET}.{i}", f"{self.SUBNET6}:{i}"
            ns.ip_batch([f"addr add {ip}/24 dev eth0",
                         f"addr add {ip6}/64 dev eth0 nodad",
                         "link set eth0 up"])
            self.hosts[role] = Host(role, ns, "eth0", ip, ip6, peer=LinkEnd(other, "eth0"))
        self.a, self.b = self.hosts["a"], self.hosts["b"]
        return self


class Lan(Topology):
    """n hosts on one L2 segment: bridge ``br0`` in namespace ``sw``, one
    veth per host (``eth0`` in the host, ``p<i>`` on the bridge).
    Host i (1-based): 10.204.0.i/24 and fd01:204::i/64; roles a, b, c, ..."""

    SUBNET, SUBNET6 = "10.204.0", "fd01:204:"

    def build(self, n: int = 3) -> "Lan":
        if not 2 <= n <= 26:
            raise ValueError("lan(n) needs 2 <= n <= 26")
        self.switch = self._ns("sw")
        self.switch.ip_batch(["link add br0 type bridge stp_state 0 mcast_snooping 0",
                              "link set br0 up"])
        self.host_list: list[Host] = []
        for i in range(1, n + 1):
            role = chr(ord("a") + i - 1)
            ns = self._ns(role)
            port = f"p{i}"
            self._veth(ns, "eth0", self.switch, port)
            self.switch.ip_batch([f"link set {port} master br0", f"link set {port} up"])
            ip, ip6 = f"{self.SUBNET}.{i}", f"{self.SUBNET6}:{i}"
            ns.ip_batch([f"addr add {ip}/24 dev eth0",
                         f"addr add {ip6}/64 dev eth0 nodad",
                         "link set eth0 up"])
            host = Host(role, ns, "eth0", ip, ip6, peer=LinkEnd(self.switch, port))
            self.hosts[role] = host
            self.host_list.append(host)
        return self


class Router:
    """The NAT router namespace: ``lan0`` (private side), ``wan0`` (public)."""

    def __init__(self, ns: Namespace, lan_ip: str, wan_ip: str, private_net: str) -> None:
        self.ns = ns
        self.lan_if, self.wan_if = "lan0", "wan0"
        self.lan_ip, self.wan_ip = lan_ip, wan_ip
        self.private_net = private_net

    def __repr__(self) -> str:
        return f"Router(ns={self.ns.name!r}, lan={self.lan_ip}, wan={self.wan_ip})"

    @property
    def name(self) -> str:
        return self.ns.name

    def _ensure_conntrack_sysctls(self) -> None:
        key = "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"
        if self.ns.run(["test", "-e", key], check=False).returncode != 0:
            run_cmd(["modprobe", "nf_conntrack"], check=False)
            if self.ns.run(["test", "-e", key], check=False).returncode != 0:
                raise RigError("nf_conntrack sysctls missing (is the nf_conntrack module available?)")

    def set_udp_timeout(self, seconds: int, stream_seconds: int | None = None) -> None:
        """Short UDP conntrack timeouts in the router's namespace.  Both the
        unreplied (``udp_timeout``) and the replied/assured
        (``udp_timeout_stream``) timeout are set, since a tunnel's flow sees
        replies and is governed by the second."""
        self._ensure_conntrack_sysctls()
        self.ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", int(seconds))
        self.ns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream",
                       int(stream_seconds if stream_seconds is not None else seconds))

    def udp_timeouts(self) -> tuple[int, int]:
        return (int(self.ns.sysctl("net.netfilter.nf_conntrack_udp_timeout")),
                int(self.ns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream")))

    def flush_conntrack(self) -> None:
        """Forget every NAT mapping (the next packet gets a fresh one)."""
        self.ns.run(["conntrack", "-F"], check=False)

    def rebind(self, new_wan_ip: str) -> str:
        """NAT rebinding: move the router's public address to ``new_wan_ip``
        (same /24) and drop every mapping, so the private host's traffic
        reaches the public side from a new source address.  Returns the
        old public address."""
        old = self.wan_ip
        self.ns.add_address(self.wan_if, f"{new_wan_ip}/24")
        self.ns.del_address(self.wan_if, f"{old}/24")
        self.wan_ip = new_wan_ip
        self.flush_conntrack()
        return old

    def conntrack_entries(self, proto: str = "udp") -> list[str]:
        cp = self.ns.run(["conntrack", "-L", "-p", proto], check=False)
        return [line for line in cp.stdout.splitlines() if line.startswith(proto)]


class Nat(Topology):
    """a (private) -- r (NAT router) -- b (public).

    a: 10.202.0.2/24 on eth0, default route via r 10.202.0.1 (lan0).
    r: lan0 10.202.0.1/24, wan0 10.203.0.1/24, forwarding on, MASQUERADE of
       10.202.0.0/24 out of wan0.
    b: 10.203.0.2/24 on eth0, no route to the private net, so b only ever
       sees r's public address.  IPv4 only.
    """

    def build(self) -> "Nat":
        na, nr, nb = self._ns("a"), self._ns("r"), self._ns("b")
        self._veth(na, "eth0", nr, "lan0")
        self._veth(nr, "wan0", nb, "eth0")
        na.ip_batch(["addr add 10.202.0.2/24 dev eth0", "link set eth0 up",
                     "route add default via 10.202.0.1 dev eth0"])
        nr.ip_batch(["addr add 10.202.0.1/24 dev lan0", "link set lan0 up",
                     "addr add 10.203.0.1/24 dev wan0", "link set wan0 up"])
        nb.ip_batch(["addr add 10.203.0.2/24 dev eth0", "link set eth0 up"])
        nr.sysctl("net.ipv4.ip_forward", 1)
        nr.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.202.0.0/24",
                "-o", "wan0", "-j", "MASQUERADE"])
        self.r = Router(nr, "10.202.0.1", "10.203.0.1", "10.202.0.0/24")
        self.a = Host("a", na, "eth0", "10.202.0.2", None, gateway="10.202.0.1",
                      peer=LinkEnd(nr, "lan0"))
        self.b = Host("b", nb, "eth0", "10.203.0.2", None, peer=LinkEnd(nr, "wan0"))
        self.hosts.update(a=self.a, b=self.b)
        return self


class HomeRouter(Router):
    """A home router of :class:`Internet`: NAT (MASQUERADE, optionally
    ``--random-fully``) of its LAN out of ``wan0``, and the usual home-router
    filter: from the WAN side only replies (conntrack ESTABLISHED/RELATED)
    are forwarded or accepted, everything unsolicited is dropped.  Dropping
    unsolicited input in the filter table also keeps conntrack from
    confirming an entry for it, so an early punch packet leaves no state
    that would later force a different source port on the outgoing flow."""

    def masquerade_rule(self, random_fully: bool) -> list[str]:
        rule = ["-s", self.private_net, "-o", self.wan_if, "-j", "MASQUERADE"]
        return rule + (["--random-fully"] if random_fully else [])

    def set_masquerade(self, random_fully: bool, flush: bool = False) -> None:
        """Switch the NAT type: default MASQUERADE keeps the source port (an
        endpoint-independent mapping), ``--random-fully`` picks a random port
        per destination (mapping per destination address and port)."""
        self.ns.run(["iptables", "-t", "nat", "-F", "POSTROUTING"])
        self.ns.run(["iptables", "-t", "nat", "-A", "POSTROUTING"] + self.masquerade_rule(random_fully))
        self.random_fully = random_fully
        if flush:
            self.flush_conntrack()


class Internet(Topology):
    """Two (or more) homes behind NAT routers on an 'internet' namespace.

    ``inet``: the internet core and the rendezvous/relay host (``rv``): bridge
    ``br0`` 10.212.0.1/24, one port ``h<i>`` per home (capture there to see
    what a home sends to the internet).  One address: a multihomed
    rendezvous would answer from the wrong source and the NATs would drop it.
    ``r<i>``: home router, ``wan0`` 10.212.0.<10+i>/24 (its public address,
    default route via 10.212.0.1), bridge ``lan0`` 10.211.<i>.1/24 with one
    port per LAN host; MASQUERADE of 10.211.<i>.0/24 out of wan0
    (``random_fully`` per home), short UDP conntrack timeouts
    (``udp_timeout`` seconds), the home-router filter of :class:`HomeRouter`.
    LAN hosts: ``a`` (and ``a2``...) behind r1 at 10.211.1.2, .3, ...; ``b``
    (``b2``...) behind r2 at 10.211.2.2, ...  LAN hosts only see public
    addresses; nothing routes to a private net from the internet.  IPv4 only.
    ``public`` hosts with no NAT: ``p1``, ``p2``... on ``br0`` at
    10.212.0.101, .102, ... (port ``q<i>`` on the bridge).
    """

    def build(self, homes: int = 2, hosts_per_home: int = 1, random_fully=(), udp_timeout: int = 30,
              public: int = 0) -> "Internet":
        self.inet = self._ns("inet")
        self.inet.ip_batch(["link add br0 type bridge stp_state 0", "addr add 10.212.0.1/24 dev br0",
                            "link set br0 up"])
        self.routers: list[HomeRouter] = []
        self.lans: list[list[Host]] = []
        for h in range(1, homes + 1):
            nr = self._ns("r%d" % h)
            self._veth(self.inet, "h%d" % h, nr, "wan0")
            self.inet.ip_batch(["link set h%d master br0" % h, "link set h%d up" % h])
            nr.ip_batch(["addr add 10.212.0.%d/24 dev wan0" % (10 + h), "link set wan0 up",
                         "route add default via 10.212.0.1 dev wan0",
                         "link add lan0 type bridge stp_state 0", "addr add 10.211.%d.1/24 dev lan0" % h,
                         "link set lan0 up"])
            nr.sysctl("net.ipv4.ip_forward", 1)
            r = HomeRouter(nr, "10.211.%d.1" % h, "10.212.0.%d" % (10 + h), "10.211.%d.0/24" % h)
            rf = h in tuple(random_fully)
            r.random_fully = rf
            nr.run(["iptables", "-t", "nat", "-A", "POSTROUTING"] + r.masquerade_rule(rf))
            for chain in ("INPUT", "FORWARD"):
                nr.run(["iptables", "-A", chain, "-i", "wan0", "-m", "conntrack", "--ctstate",
                        "ESTABLISHED,RELATED", "-j", "ACCEPT"])
                nr.run(["iptables", "-A", chain, "-i", "wan0", "-j", "DROP"])
            r.set_udp_timeout(udp_timeout, udp_timeout)
            self.routers.append(r)
            lan = []
            for j in range(1, hosts_per_home + 1):
                role = chr(ord("a") + h - 1) + ("" if j == 1 else str(j))
                ns = self._ns(role)
                port = "p%d" % j
                self._veth(ns, "eth0", nr, port)
                nr.ip_batch(["link set %s master lan0" % port, "link set %s up" % port])
                ip = "10.211.%d.%d" % (h, j + 1)
                ns.ip_batch(["addr add %s/24 dev eth0" % ip, "link set eth0 up",
                             "route add default via 10.211.%d.1 dev eth0" % h])
                host = Host(role, ns, "eth0", ip, None, gateway="10.211.%d.1" % h, peer=LinkEnd(nr, port))
                self.hosts[role] = host
                lan.append(host)
            self.lans.append(lan)
        self.public: list[Host] = []
        for i in range(1, public + 1):
            ns = self._ns("p%d" % i)
            self._veth(ns, "eth0", self.inet, "q%d" % i)
            self.inet.ip_batch(["link set q%d master br0" % i, "link set q%d up" % i])
            ip = "10.212.0.%d" % (100 + i)
            ns.ip_batch(["addr add %s/24 dev eth0" % ip, "link set eth0 up",
                         "route add default via 10.212.0.1 dev eth0"])
            host = Host("p%d" % i, ns, "eth0", ip, None, gateway="10.212.0.1",
                        peer=LinkEnd(self.inet, "q%d" % i))
            self.hosts[host.role] = host
            self.public.append(host)
        self.rv = Host("rv", self.inet, "br0", "10.212.0.1", None)
        self.r1 = self.routers[0]
        self.r2 = self.routers[1] if homes > 1 else None
        return self

    def wait_ready(self, timeout: float = 5.0) -> None:
        super().wait_ready(timeout)
        for r in self.routers:
            r.ns.wait_link_up("lan0", timeout)
        self.inet.wait_link_up("br0", timeout)


@contextlib.contextmanager
def _built(topo: Topology, *args) -> Iterator:
    try:
        topo.build(*args)
        topo.wait_ready()
        yield topo
    finally:
        topo.close()


def two_hosts(prefix: str | None = None) -> contextlib.AbstractContextManager[TwoHosts]:
    """Context manager: a TwoHosts topology, always deleted on exit."""
    return _built(TwoHosts(prefix))


def lan(n: int = 3, prefix: str | None = None) -> contextlib.AbstractContextManager[Lan]:
    """Context manager: n hosts on one bridge, always deleted on exit."""
    return _built(Lan(prefix), n)


def nat(prefix: str | None = None) -> contextlib.AbstractContextManager[Nat]:
    """Context manager: host behind a NAT router, always deleted on exit."""
    return _built(Nat(prefix))


def internet(homes: int = 2, hosts_per_home: int = 1, random_fully=(), udp_timeout: int = 30,
             prefix: str | None = None, public: int = 0
             ) -> contextlib.AbstractContextManager[Internet]:
    """Context manager: homes behind NAT routers on an internet namespace
    (and ``public`` hosts on it without NAT), always deleted on exit (see
    :class:`Internet`)."""
    return _built(Internet(prefix), homes, hosts_per_home, tuple(random_fully), udp_timeout,
                  public)
