"""Network-namespace rig: throw-away topologies, daemons and packet capture.

Used by the end-to-end tests (tests/conftest.py), by ``phantom demo`` and by
the bench/ scripts.  It needs root, iproute2 (``ip``) and, for captures,
tcpdump; NAT topologies also need iptables and conntrack.  Everything is
done with plain ``ip``/``sysctl``/``iptables`` commands run through
subprocess, plus one ctypes call (setns(2)) to create sockets inside a
namespace from this process.

How a topology is built:

  1. every namespace is named ``<family><pid>x<n>-<role>`` (``phx4242x3-a``),
     so a run owns a unique prefix and a crashed run's leftovers can be told
     apart from a live run's (the pid in the name is dead);
  2. veth pairs are created directly inside their namespaces
     (``ip link add X netns A type veth peer name Y netns B``), so no link
     ever lives in the root namespace and deleting a namespace deletes its
     links;
  3. addresses are added with ``nodad`` and DAD is off, so they are usable
     at once -- no sleeps anywhere in the rig, only polling of real signals;
  4. every namespace, daemon and sniffer registers itself in one registry;
     builders clean up in ``finally``, and :func:`cleanup_all` runs at
     interpreter exit (atexit) and from the SIGINT/SIGTERM handlers that
     :func:`install_signal_handlers` installs;
  5. :func:`sweep_stale` removes namespaces of the same family whose owning
     pid is dead (a run that was SIGKILLed), and never touches anything else.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import http.client
import itertools
import json
import os
import random
import re
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

__all__ = [
    "PREFIX_FAMILY", "RigError", "DaemonExited", "Namespace", "Host", "Router",
    "TwoHosts", "Lan", "Nat", "Internet", "HomeRouter", "two_hosts", "lan", "nat", "internet", "socket_in",
    "DaemonProcess", "phantomd_command", "Sniffer", "Packet", "UdpDatagram",
    "HttpReply", "read_pcap", "cleanup_all", "install_signal_handlers",
    "sweep_stale", "leftovers", "list_netns", "run_prefix", "unique_prefix",
    "requirements_missing", "gate_decision",
]

PREFIX_FAMILY = "phx"
NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15          # usable characters in an interface name
# (aliases: class bodies below define a method named "socket")
_AF_INET, _SOCK_DGRAM = socket.AF_INET, socket.SOCK_DGRAM

# Per-namespace sysctls applied at creation.  keep_addr_on_down keeps IPv6
# addresses across a cut()/restore(); promote_secondaries lets a host move
# to a new IPv4 address without losing it when the old one is deleted.
_NS_SYSCTLS = (
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.keep_addr_on_down=1",
    "net.ipv6.conf.default.keep_addr_on_down=1",
    "net.ipv4.conf.all.promote_secondaries=1",
    "net.ipv4.conf.default.promote_secondaries=1",
)


class RigError(RuntimeError):
    """A rig operation failed (command error, timeout, missing tool)."""


class DaemonExited(RigError):
    """A daemon process exited while we waited for it to become ready."""


# ---------------------------------------------------------------------------
# Registry and cleanup
# ---------------------------------------------------------------------------

class _Registry:
    """Everything that must be torn down, newest first.

    Items have a ``_rig_close()`` method that is idempotent and never raises
    for "already gone".  A re-entrant lock, because a signal handler may run
    cleanup in the main thread while that thread is inside ``add``.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._items: list[object] = []
        self.owner_pid = os.getpid()

    def add(self, item: object) -> None:
        with self._lock:
            self._items.append(item)

    def discard(self, item: object) -> None:
        with self._lock:
            self._items = [i for i in self._items if i is not item]

    def snapshot(self) -> list[object]:
        with self._lock:
            return list(self._items)

    def cleanup_all(self) -> list[str]:
        if os.getpid() != self.owner_pid:      # a forked child: not ours
            return []
        errors = []
        while True:
            with self._lock:
                if not self._items:
                    break
                item = self._items.pop()
            try:
                item._rig_close()               # type: ignore[attr-defined]
            except Exception as exc:            # keep going: clean the rest
                errors.append(f"{item!r}: {exc}")
        return errors


_REGISTRY = _Registry()
_COUNTER = itertools.count(1)


def cleanup_all() -> list[str]:
    """Stop every registered daemon and sniffer and delete every namespace.

    Idempotent.  Returns error strings for items that failed to clean up.
    """
    return _REGISTRY.cleanup_all()


atexit.register(cleanup_all)


def install_signal_handlers(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
                            ) -> Callable[[], None]:
    """Clean up on SIGINT/SIGTERM, then behave as the previous handler would.

    SIGINT then usually raises KeyboardInterrupt (so pytest still reports);
    SIGTERM with the default disposition re-delivers the signal and the
    process dies with it.  A signal that is ignored (SIG_IGN) stays ignored.
    Main thread only.  Returns a function that
    restores the previous handlers.
    """
    previous: dict[int, object] = {}

    def handler(signum, frame):
        cleanup_all()
        prev = previous.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in signals:
        prev = signal.getsignal(sig)
        if prev == signal.SIG_IGN:       # e.g. SIGINT in a background job: respect it
            continue
        previous[sig] = prev
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

    return restore


def run_prefix(family: str = PREFIX_FAMILY) -> str:
    """The prefix of every name this process creates: ``phx<pid>x``."""
    return f"{family}{os.getpid()}x"


def unique_prefix(family: str = PREFIX_FAMILY) -> str:
    """A fresh prefix for one topology: ``phx<pid>x<n>``."""
    return f"{run_prefix(family)}{next(_COUNTER)}"


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

def _cmd(cmd: Sequence[str] | str) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _run(cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 30.0,
         input: str | None = None) -> subprocess.CompletedProcess:
    argv = _cmd(cmd)
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            input=input, stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise RigError(f"{argv[0]}: not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise RigError(f"timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and cp.returncode != 0:
        raise RigError(f"command failed ({cp.returncode}): {shlex.join(argv)}\n"
                       f"{(cp.stderr or cp.stdout).strip()}")
    return cp


def list_netns() -> list[str]:
    """Names of all named network namespaces on the machine."""
    cp = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _root_links() -> list[str]:
    cp = _run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in cp.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _netns_pids(name: str) -> list[int]:
    cp = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in cp.stdout.split() if p.isdigit()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(name: str, timeout: float = 5.0) -> None:
    """SIGKILL every process whose network namespace is ``name``; wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in _netns_pids(name) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RigError(f"processes {pids} in netns {name} did not die")
        time.sleep(0.02)


def _delete_netns(name: str) -> None:
    _kill_netns_processes(name)
    cp = _run(["ip", "netns", "del", name], check=False)
    if cp.returncode != 0 and name in list_netns():
        raise RigError(f"ip netns del {name}: {cp.stderr.strip()}")


def leftovers(prefix: str | None = None) -> list[str]:
    """Namespaces and root-namespace links whose name starts with ``prefix``
    (default: this process's :func:`run_prefix`)."""
    prefix = prefix or run_prefix()
    found = [f"netns {n}" for n in list_netns() if n.startswith(prefix)]
    found += [f"link {n}" for n in _root_links() if n.startswith(prefix)]
    return found


def sweep_stale(family: str = PREFIX_FAMILY) -> list[str]:
    """Remove namespaces/links of ``family`` left by runs whose pid is dead.

    A name ``<family><pid>x...`` whose pid is alive belongs to a running
    session (another engineer, another terminal) and is left alone, as is
    every name outside the family.  Returns what was removed.
    """
    pat = re.compile(rf"^{re.escape(family)}(\d+)x")
    removed = []
    for name in list_netns():
        m = pat.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _delete_netns(name)
            removed.append(f"netns {name}")
    for name in _root_links():
        m = pat.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _run(["ip", "link", "del", name], check=False)
            removed.append(f"link {name}")
    return removed


def requirements_missing() -> str | None:
    """Why netns tests cannot run here, or None if they can.

    Checks root, /dev/net/tun, ``ip``, and that a namespace can really be
    created and deleted (root in an unprivileged container cannot).
    """
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"{run_prefix()}0-probe"
    cp = _run(["ip", "netns", "add", probe], check=False)
    if cp.returncode != 0:
        return f"cannot create a network namespace: {cp.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def gate_decision(missing: str | None, environ: dict | os._Environ = os.environ) -> str:
    """'run', 'skip' or 'fail' for a netns test.

    With the variable CI set (to anything but '', '0', 'false', 'no'), a
    missing requirement is a failure, never a silent skip.
    """
    if missing is None:
        return "run"
    ci = environ.get("CI")
    if ci is not None and ci.strip().lower() not in ("", "0", "false", "no"):
        return "fail"
    return "skip"


# ---------------------------------------------------------------------------
# Sockets inside a namespace
# ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int


def socket_in(ns_name: str, family: int = _AF_INET, type: int = _SOCK_DGRAM,
              proto: int = 0) -> socket.socket:
    """Create a socket that lives in network namespace ``ns_name``.

    A short-lived thread enters the namespace with setns(2) (a thread may
    switch its own network namespace), creates the socket and exits.  The
    socket stays in that namespace for its whole life; the calling thread
    never changes namespace.
    """
    path = NETNS_DIR / ns_name
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["sock"] = socket.socket(family, type, proto)
        except BaseException as exc:           # re-raised in the caller
            box["err"] = exc

    t = threading.Thread(target=worker, name=f"setns-{ns_name}", daemon=True)
    t.start()
    t.join(10.0)
    if "err" in box:
        raise box["err"]                       # type: ignore[misc]
    if "sock" not in box:
        raise RigError(f"socket_in({ns_name}) timed out")
    return box["sock"]                         # type: ignore[return-value]


class HttpReply(NamedTuple):
    status: int
    body: object        # parsed JSON, or text when the body is not JSON


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---------------------------------------------------------------------------
# Namespace
# ---------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Namespace:
    """A named network namespace with loopback up.  ``delete()`` kills every
    process still inside it and removes it."""

    def __init__(self, name: str) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad namespace name {name!r}")
        self.name = name
        self._deleted = False
        _run(["ip", "netns", "add", name])
        _REGISTRY.add(self)
        try:
            self.ip_batch(["link set lo up"])
            self.run(["sysctl", "-q", "-w", *_NS_SYSCTLS], check=False)
        except BaseException:
            self.delete()
            raise

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    # -- commands ---------------------------------------------------------
    def run(self, cmd: Sequence[str] | str, check: bool = True, timeout: float = 30.0,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the namespace; text output captured."""
        return _run(self.exec_prefix + _cmd(cmd), check=check, timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str] | str, **kw) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace (``ip netns exec`` execs it, so
        the Popen pid is the command's own pid)."""
        return subprocess.Popen(self.exec_prefix + _cmd(cmd), **kw)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n <ns> args...``"""
        return _run(["ip", "-n", self.name, *args], check=check)

    def ip_batch(self, lines: Sequence[str]) -> None:
        """Several ``ip`` commands in one process (``ip -n ns -batch -``)."""
        _run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(lines) + "\n")

    def sysctl(self, key: str, value: object | None = None) -> str:
        """Read (value None) or write a sysctl in this namespace."""
        if value is None:
            return self.run(["sysctl", "-n", key]).stdout.strip()
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])
        return str(value)

    def pids(self) -> list[int]:
        return _netns_pids(self.name)

    # -- addresses and links ---------------------------------------------
    def add_address(self, ifname: str, cidr: str) -> None:
        self.ip("addr", "add", cidr, "dev", ifname, *(["nodad"] if ":" in cidr else []))

    def del_address(self, ifname: str, cidr: str) -> None:
        self.ip("addr", "del", cidr, "dev", ifname)

    def addresses(self, ifname: str) -> list[str]:
        """Addresses (``a.b.c.d/len``) configured on ``ifname``, global scope."""
        out = json.loads(self.ip("-j", "addr", "show", "dev", ifname).stdout or "[]")
        return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link.get("addr_info", [])
                if a.get("scope") == "global"]

    def link_state(self, ifname: str) -> str:
        out = json.loads(self.ip("-j", "link", "show", "dev", ifname).stdout)
        return out[0].get("operstate", "UNKNOWN")

    def wait_addresses_ready(self, timeout: float = 5.0) -> None:
        """Wait until no IPv6 address is tentative.  Even a ``nodad`` address
        is tentative for a moment after its link comes up, and a neighbour
        solicitation arriving then is ignored (the sender's retries then
        take seconds)."""
        deadline = time.monotonic() + timeout
        while self.ip("-6", "addr", "show", "tentative").stdout.strip():
            if time.monotonic() > deadline:
                raise RigError(f"IPv6 addresses in {self.name} still tentative after {timeout}s")
            time.sleep(0.005)

    def wait_link_up(self, ifname: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.link_state(ifname)) not in ("UP", "UNKNOWN"):
            if time.monotonic() > deadline:
                raise RigError(f"link {ifname} in {self.name} is {state} after {timeout}s")
            time.sleep(0.005)

    def set_link(self, ifname: str, up: bool) -> None:
        self.ip("link", "set", "dev", ifname, "up" if up else "down")

    # -- sockets ----------------------------------------------------------
    def socket(self, family: int = _AF_INET, type: int = _SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        return socket_in(self.name, family, type, proto)

    def udp_socket(self, family: int = _AF_INET,
                   bind: tuple | None = None) -> socket.socket:
        """A UDP socket in this namespace, optionally bound (e.g. to
        ``("127.0.0.1", 0)`` to talk to a daemon's test port)."""
        sock = socket_in(self.name, family, socket.SOCK_DGRAM)
        if bind is not None:
            try:
                sock.bind(bind)
            except BaseException:
                sock.close()
                raise
        return sock

    def tcp_connect(self, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket_in(self.name, family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def http(self, method: str, path: str, port: int = 4567, host: str = "127.0.0.1",
             token: str | None = None, json_body: object = None, timeout: float = 5.0,
             headers: dict | None = None) -> HttpReply:
        """One HTTP request to ``host:port`` as seen from inside this namespace.

        Returns ``HttpReply(status, body)`` (unpacks as a 2-tuple); ``body``
        is parsed JSON when it parses, else text.  Connection errors raise
        OSError (ConnectionRefusedError when nothing listens).
        """
        sock = self.tcp_connect(host, port, timeout)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        try:
            hdrs = {"Accept": "application/json", "Connection": "close"}
            body = None
            if json_body is not None:
                body = json.dumps(json_body).encode()
                hdrs["Content-Type"] = "application/json"
            if token is not None:
                hdrs["Authorization"] = f"Bearer {token}"
            hdrs.update(headers or {})
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        text = raw.decode("utf-8", "replace")
        try:
            parsed: object = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = text
        return HttpReply(resp.status, parsed)

    def ping(self, addr: str, timeout: float = 2.0, interval: float = 0.2) -> bool:
        """ICMP echo from this namespace (raw socket; no iputils needed).

        Sends a request every ``interval`` seconds until a matching reply
        arrives (True) or ``timeout`` passes (False).
        """
        v6 = ":" in addr
        if v6:
            sock = self.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            sock = self.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        ident = random.randrange(1, 0xFFFF)
        token = os.urandom(8)
        try:
            deadline = time.monotonic() + timeout
            seq = 0
            next_send = 0.0
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return False
                if now >= next_send:
                    seq += 1
                    if v6:   # the kernel fills in the ICMPv6 checksum
                        pkt = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + token
                    else:
                        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + token
                        pkt = struct.pack("!BBHHH", 8, 0, _inet_checksum(hdr), ident, seq) + token
                    with contextlib.suppress(OSError):     # e.g. ENETUNREACH
                        sock.sendto(pkt, (addr, 0))
                    next_send = now + interval
                wait = max(0.0, min(deadline, next_send) - time.monotonic())
                r, _, _ = select.select([sock], [], [], wait)
                if not r:
                    continue
                data, _src = sock.recvfrom(2048)
                icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
                if len(icmp) < 16:
                    continue
                typ, _code, _ck, rid, _rseq = struct.unpack_from("!BBHHH", icmp)
                if typ == (129 if v6 else 0) and rid == ident and icmp[8:16] == token:
                    return True
        finally:
            sock.close()

    # -- teardown ---------------------------------------------------------
    def delete(self) -> None:
        """Kill every process in the namespace and delete it.  Idempotent."""
        if self._deleted:
            return
        self._deleted = True
        _REGISTRY.discard(self)
        if (NETNS_DIR / self.name).exists():
            _delete_netns(self.name)

    _rig_close = delete

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


def _as_ns(x: "Namespace | Host | Router") -> Namespace:
    return x if isinstance(x, Namespace) else x.ns


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
        _run(["ip", "link", "add", a_if, "netns", a.name, "type", "veth",
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
            _run(["modprobe", "nf_conntrack"], check=False)
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
    """

    def build(self, homes: int = 2, hosts_per_home: int = 1, random_fully=(), udp_timeout: int = 30,
              ) -> "Internet":
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
             prefix: str | None = None) -> contextlib.AbstractContextManager[Internet]:
    """Context manager: homes behind NAT routers on an internet namespace,
    always deleted on exit (see :class:`Internet`)."""
    return _built(Internet(prefix), homes, hosts_per_home, tuple(random_fully), udp_timeout)


# ---------------------------------------------------------------------------
# Daemons
# ---------------------------------------------------------------------------

def phantomd_command() -> list[str]:
    """argv prefix that starts phantomd: ``<sys.prefix>/bin/phantomd`` if
    installed there, else ``python -m phantom.daemon``."""
    exe = Path(sys.prefix) / "bin" / "phantomd"
    if exe.exists() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-m", "phantom.daemon"]


class DaemonProcess:
    """A daemon (phantomd by default) running inside a namespace.

    stdout and stderr go to ``log_path`` (appended across restarts, one
    ``=== start #n`` line per start).  Readiness is ``GET /status`` on
    ``http_host:http_port`` (default 127.0.0.1:4567) inside the namespace answering 200.
    """

    def __init__(self, ns: "Namespace | Host", args: Sequence[str], *, http_port: int = 4567,
                 http_host: str = "127.0.0.1", log_path: str | os.PathLike | None = None, name: str = "phantomd",
                 executable: Sequence[str] | None = None, env: dict | None = None,
                 token: str | None = None, token_file: str | os.PathLike | None = None,
                 cwd: str | os.PathLike | None = None) -> None:
        self.ns = _as_ns(ns)
        self.name = name
        self.args = [str(a) for a in args]
        self.command = list(executable) if executable else phantomd_command()
        self.http_port = http_port
        self.http_host = http_host
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self._token = token
        self.token_file = Path(token_file) if token_file else None
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"DaemonProcess({self.name!r}, ns={self.ns.name!r}, pid={self.pid})"

    @property
    def argv(self) -> list[str]:
        return self.command + self.args

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def token(self) -> str | None:
        if self._token is not None:
            return self._token
        if self.token_file and self.token_file.exists():
            return self.token_file.read_text().strip()
        return None

    def start(self) -> "DaemonProcess":
        if self.running:
            raise RigError(f"{self!r} already running")
        self.starts += 1
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"=== start #{self.starts}: {shlex.join(self.argv)} "
                      f"(netns {self.ns.name})\n".encode())
            log.flush()
            self.proc = self.ns.popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                      start_new_session=True)
        _REGISTRY.add(self)
        return self

    def wait_ready(self, timeout: float = 10.0, path: str = "/status") -> None:
        """Poll ``GET path`` until it answers 200.  Raises DaemonExited (with
        the log tail) as soon as the process exits, RigError on timeout."""
        if self.proc is None:
            raise RigError(f"{self!r} was never started")
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise DaemonExited(f"{self.name} exited with code {code} before it was ready "
                                   f"(netns {self.ns.name}); log tail:\n{self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RigError(f"{self.name} not ready after {timeout}s ({last}); "
                               f"log tail:\n{self.log_tail()}")
            try:
                status, body = self.ns.http("GET", path, port=self.http_port,
                                            host=self.http_host, timeout=max(0.1, min(1.0, left)))
                if status == 200:
                    return
                last = f"GET {path} -> {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"GET {path}: {exc.__class__.__name__}: {exc}"
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def api(self, method: str, path: str, json_body: object = None,
            timeout: float = 5.0) -> HttpReply:
        """Call this daemon's HTTP API (with its token when known)."""
        return self.ns.http(method, path, port=self.http_port, host=self.http_host, token=self.token,
                            json_body=json_body, timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int | None:
        """Send ``sig`` to the daemon's process group and wait for it to exit.
        Returns the exit code (negative signal number when killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                raise RigError(f"{self!r} survived SIGKILL")
            return None

    def terminate(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        code = self.kill(signal.SIGTERM, timeout)
        if self.running:
            code = self.kill(signal.SIGKILL)
        return code

    def restart(self, sig: int = signal.SIGKILL, wait: bool = True,
                timeout: float = 10.0) -> "DaemonProcess":
        """Stop (default: SIGKILL) and start again with the same argv (so the
        same config and key); waits for readiness unless ``wait`` is False."""
        if self.running:
            self.kill(sig)
            if self.running:
                self.kill(signal.SIGKILL)
        self.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        """Terminate (SIGTERM, grace, SIGKILL) and forget.  Idempotent."""
        _REGISTRY.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM, timeout=3.0)
            if self.running:
                self.kill(signal.SIGKILL)

    _rig_close = stop

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


# ---------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------

class UdpDatagram(NamedTuple):
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass
class Packet:
    ts: float
    data: bytes          # the captured frame, link-layer header included
    linktype: int

    def ip_packet(self) -> bytes | None:
        """The IP packet inside the frame, or None (ARP, unknown link)."""
        d, lt = self.data, self.linktype
        if lt == 1:                                   # Ethernet
            off, ethertype = 14, struct.unpack_from("!H", d, 12)[0] if len(d) >= 14 else 0
            while ethertype in (0x8100, 0x88A8) and len(d) >= off + 4:
                ethertype = struct.unpack_from("!H", d, off + 2)[0]
                off += 4
            return d[off:] if ethertype in (0x0800, 0x86DD) else None
        if lt == 113:                                 # Linux cooked v1
            return d[16:] if len(d) >= 16 and struct.unpack_from("!H", d, 14)[0] in (0x0800, 0x86DD) else None
        if lt == 276:                                 # Linux cooked v2
            return d[20:] if len(d) >= 20 and struct.unpack_from("!H", d, 0)[0] in (0x0800, 0x86DD) else None
        if lt in (12, 14, 101, 228, 229):             # raw IP
            return d
        return None

    def udp(self) -> UdpDatagram | None:
        """Decode an IPv4/IPv6 UDP datagram (unfragmented), else None."""
        ip = self.ip_packet()
        if not ip:
            return None
        version = ip[0] >> 4
        if version == 4 and len(ip) >= 20:
            ihl = (ip[0] & 0x0F) * 4
            total, frag, proto = struct.unpack_from("!H", ip, 2)[0], struct.unpack_from("!H", ip, 6)[0], ip[9]
            if proto != 17 or frag & 0x1FFF:
                return None
            src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
            l4 = ip[ihl:total]
        elif version == 6 and len(ip) >= 40:
            nxt, off = ip[6], 40
            while nxt in (0, 43, 60) and len(ip) >= off + 8:   # hop-by-hop, routing, dest opts
                nxt, off = ip[off], off + (ip[off + 1] + 1) * 8
            if nxt != 17:
                return None
            src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
            l4 = ip[off:]
        else:
            return None
        if len(l4) < 8:
            return None
        sport, dport, length = struct.unpack_from("!HHH", l4)
        return UdpDatagram(src, sport, dst, dport, bytes(l4[8:length]))


_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_PCAP_GLOBAL = struct.Struct("4sHHiIII")      # magic, major, minor, zone, sigfigs, snaplen, linktype
_PCAP_RECORD_LEN = 16                         # ts_sec, ts_frac, incl_len, orig_len


def read_pcap(data: bytes) -> list[Packet]:
    """Parse a classic pcap file (any byte order, us or ns timestamps).
    A truncated last record (file still being written) is ignored."""
    if len(data) < _PCAP_GLOBAL.size:
        return []
    magic = data[:4]
    if magic not in _PCAP_MAGIC:
        raise RigError(f"not a pcap file (magic {magic.hex()})")
    order, unit = _PCAP_MAGIC[magic]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    packets, off = [], _PCAP_GLOBAL.size
    while off + _PCAP_RECORD_LEN <= len(data):
        sec, frac, incl, _orig = record.unpack_from(data, off)
        off += _PCAP_RECORD_LEN
        if off + incl > len(data):
            break
        packets.append(Packet(sec + frac * unit, bytes(data[off:off + incl]), linktype))
        off += incl
    return packets


class Sniffer:
    """tcpdump in a namespace, writing a pcap file.

    ``with Sniffer(ns, "eth0", "udp port 9000") as sn: ...`` -- entering
    returns once tcpdump reports it is listening; leaving stops it and
    fills ``sn.result``.  ``stop()`` does the same and returns the packets.
    """

    def __init__(self, ns: "Namespace | Host | Router", iface: str, bpf_filter: str = "", *,
                 path: str | os.PathLike | None = None, ready_timeout: float = 5.0) -> None:
        self.ns = _as_ns(ns)
        self.iface = iface
        self.bpf_filter = bpf_filter
        if path is None:
            fd, path = tempfile.mkstemp(prefix="phantom-", suffix=".pcap")
            os.close(fd)
        self.path = Path(path)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.result: list[Packet] | None = None
        self._stderr: list[str] = []
        self._drain: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Sniffer(ns={self.ns.name!r}, iface={self.iface!r}, filter={self.bpf_filter!r})"

    def start(self) -> "Sniffer":
        if self.proc is not None:
            return self
        argv = ["tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-Z", "root",
                "-s", "0", "-w", str(self.path)]
        if self.bpf_filter:
            argv.append(self.bpf_filter)
        self.proc = self.ns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True)
        _REGISTRY.add(self)
        stream = self.proc.stderr
        assert stream is not None
        deadline = time.monotonic() + self.ready_timeout
        buf = b""
        while b"listening on" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._kill()
                raise RigError(f"tcpdump did not start on {self.iface} in {self.ns.name}: "
                               f"{buf.decode(errors='replace').strip()}")
            r, _, _ = select.select([stream], [], [], left)
            if r:
                chunk = os.read(stream.fileno(), 4096)
                if not chunk:
                    continue
                buf += chunk
        self._stderr.append(buf.decode(errors="replace"))
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr.append(line.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def packets(self) -> list[Packet]:
        """Packets captured so far (readable while running)."""
        try:
            return read_pcap(self.path.read_bytes())
        except FileNotFoundError:
            return []

    def wait_for(self, predicate: Callable[[list[Packet]], bool], timeout: float = 5.0) -> bool:
        """Poll the capture until ``predicate(packets)`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.packets()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _settle(self, quiet: float = 0.1, limit: float = 1.0) -> None:
        """Let packets already on their way reach the file: wait until the
        file has not grown for ``quiet`` seconds (at most ``limit``)."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.02)

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)     # tcpdump flushes on SIGINT
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5.0)
        if self._drain is not None:
            self._drain.join(2.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> list[Packet]:
        """Stop tcpdump and return every captured packet.  Idempotent."""
        _REGISTRY.discard(self)
        if self.result is not None:
            return self.result
        if self.proc is not None and self.proc.poll() is None:
            self._settle()
        self._kill()
        self.result = self.packets()
        return self.result

    def _rig_close(self) -> None:
        if self.proc is not None and self.result is None:
            self._kill()
        _REGISTRY.discard(self)

    def find(self, marker: bytes) -> list[Packet]:
        """Captured packets whose bytes contain ``marker`` anywhere."""
        pkts = self.result if self.result is not None else self.packets()
        return [p for p in pkts if marker in p.data]

    def udp(self) -> list[UdpDatagram]:
        pkts = self.result if self.result is not None else self.packets()
        return [u for u in (p.udp() for p in pkts) if u is not None]

    def __enter__(self) -> "Sniffer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
