"""The core of the network-namespace rig: named namespaces, commands, cleanup.

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
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple, Protocol, Sequence

__all__ = [
    "PREFIX_FAMILY", "RigError", "Namespace", "socket_in", "HttpReply", "cleanup_all",
    "install_signal_handlers", "sweep_stale", "leftovers", "list_netns", "run_prefix",
    "unique_prefix", "requirements_missing", "gate_decision", "REGISTRY", "run_cmd",
    "split_cmd", "as_ns",
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


REGISTRY = _Registry()
_COUNTER = itertools.count(1)


def cleanup_all() -> list[str]:
    """Stop every registered daemon and sniffer and delete every namespace.

    Idempotent.  Returns error strings for items that failed to clean up.
    """
    return REGISTRY.cleanup_all()


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

def split_cmd(cmd: Sequence[str] | str) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def run_cmd(cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 30.0,
         input: str | None = None) -> subprocess.CompletedProcess:
    argv = split_cmd(cmd)
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
    cp = run_cmd(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _root_links() -> list[str]:
    cp = run_cmd(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in cp.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _netns_pids(name: str) -> list[int]:
    cp = run_cmd(["ip", "netns", "pids", name], check=False)
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
    cp = run_cmd(["ip", "netns", "del", name], check=False)
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
            run_cmd(["ip", "link", "del", name], check=False)
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
    cp = run_cmd(["ip", "netns", "add", probe], check=False)
    if cp.returncode != 0:
        return f"cannot create a network namespace: {cp.stderr.strip()}"
    run_cmd(["ip", "netns", "del", probe], check=False)
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
        run_cmd(["ip", "netns", "add", name])
        REGISTRY.add(self)
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
        return run_cmd(self.exec_prefix + split_cmd(cmd), check=check, timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str] | str, **kw) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace (``ip netns exec`` execs it, so
        the Popen pid is the command's own pid)."""
        return subprocess.Popen(self.exec_prefix + split_cmd(cmd), **kw)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n <ns> args...``"""
        return run_cmd(["ip", "-n", self.name, *args], check=check)

    def ip_batch(self, lines: Sequence[str]) -> None:
        """Several ``ip`` commands in one process (``ip -n ns -batch -``)."""
        run_cmd(["ip", "-n", self.name, "-batch", "-"], input="\n".join(lines) + "\n")

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
        REGISTRY.discard(self)
        if (NETNS_DIR / self.name).exists():
            _delete_netns(self.name)

    _rig_close = delete

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


class InNamespace(Protocol):
    """What stands in one namespace (topology.py's Host and Router): its ``ns``."""

    ns: Namespace


def as_ns(x: "Namespace | InNamespace") -> Namespace:
    return x if isinstance(x, Namespace) else x.ns
