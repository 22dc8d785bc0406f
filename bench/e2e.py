#!/usr/bin/env python3
"""End-to-end throughput benchmark: bare veth, wireguard-go, phantomd (reference and --fast), phantomd --fast <-> wireguard-go.

    .venv/bin/python bench/e2e.py [--seconds N] [--runs R] [--only bare,wireguard-go,reference,fast,fast-wg]
                                  [--json out.json]

One invocation, one pair of fresh namespaces (a: 10.201.0.1, b: 10.201.0.2,
joined by a veth pair, from ``phantomlab.netns.two_hosts()``).  The
configurations run one after another on the same pair:

  1. bare          iperf3 straight over the veth, no tunnel;
  2. wireguard-go  ``wireguard-go -f`` in each namespace, keyed with ``wg``,
                   10.98.0.1/24 <-> 10.98.0.2/24, MTU 1420;
  3. reference     phantomd, pure-Python data path, TUN mode,
                   10.99.0.1/24 <-> 10.99.0.2/24, MTU 1420 (phantom's default);
  4. fast          the same with ``phantomd --fast`` (the Cython data path).
                   When it does not start, its row says "not available: ..."
                   and the run goes on;
  4b. fast-secretbox  (only with --only) ``phantomd --fast`` pinned to the
                   secretbox suite (``--ciphers secretbox``): row 4 negotiates
                   AEGIS-256 where the CPU has AES instructions, this one the
                   prototype's cipher, in the same run;
  5. fast-wg       ``phantomd --fast`` in a with a WireGuard peer
                   (``protocol = "wireguard"``), stock wireguard-go in b,
                   10.98.0.1/24 <-> 10.98.0.2/24, MTU 1420: the interop row,
                   to read against row 2 of the same run.

For each configuration, once the tunnel answers a ping:

  tcp1   iperf3 -t N -J                 one TCP stream, bits/s the receiver got
  tcp4   iperf3 -t N -J -P 4            four TCP streams, same
  udp64  iperf3 -t N -u -l 64 -b 0      64-byte UDP payloads as fast as the
                                        client can send; packets per second
                                        counted by the *server* (its own JSON
                                        report: datagrams that arrived)

and the CPU time each tunnel daemon used during the test (utime+stime from
/proc/PID/stat, which sums over all threads), as a percentage of one core.

With ``--runs R`` (default 1) the whole sequence is repeated R times on the
same namespaces, the order of the configurations rotated each run (so no
configuration always goes first on a cooling or warming machine); the table
then gives the **median** of the R runs for every number, and a second table
the spread (min - max, and the median of the per-run ratios to
wireguard-go, each taken within one run).  What a user reproduces is the
median, not the best run.

The iperf3 server always runs in b with ``-1`` (one test, then exit) and
``-J``; the client runs in a.  Every subprocess has a timeout; namespaces,
daemons, wireguard-go processes and their control sockets are removed on
exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from phantomlab import iperf, netns  # noqa: E402
from phantomlab.procs import CpuMeter, kill_proc  # noqa: E402,F401  (bench/scale.py uses them)
from phantomlab.wggo import WG_SOCK_DIR, WgSide  # noqa: E402
from phantomlab.wggo import stop_all as _stop_all_wg  # noqa: E402
from phantom.keys import encode_key, public_key, write_private_key  # noqa: E402

CONFIGS = ("bare", "wireguard-go", "reference", "fast", "fast-secretbox", "fast-wg")
DEFAULT_CONFIGS = ("bare", "wireguard-go", "reference", "fast", "fast-wg")
# fast-wg: phantomd --fast in a with a WireGuard peer (protocol = "wireguard"),
# stock wireguard-go in b: the interop row, against wireguard-go <-> wireguard-go.
TESTS = ("tcp1", "tcp4", "udp64")
TEST_TITLES = {"tcp1": "TCP 1-stream", "tcp4": "TCP 4-stream", "udp64": "UDP 64 B"}
BASELINE = "wireguard-go"

IPERF_PORT = 5201
UDP_PAYLOAD = 64
WG_NET = ("10.98.0.1", "10.98.0.2")
WG_PORT = 51820
WG_MTU = 1420
PH_NET = ("10.99.0.1", "10.99.0.2")
PH_PORT = 9000

PING_TIMEOUT = 10.0          # tunnel up (handshake included)
DAEMON_READY_TIMEOUT = 15.0  # phantomd answers GET /status
CONNECT_ATTEMPTS = 5



class BenchError(RuntimeError):
    """A configuration or a test could not be run; the message says why."""


# ---------------------------------------------------------------------------
# iperf3 (phantomlab.iperf: the one iperf3 helper)
# ---------------------------------------------------------------------------

@dataclass
class IperfRun:
    client: dict            # the client's -J report
    server: dict            # the server's -J report
    cpu: dict[str, float | None]
    wall: float


def run_iperf(topo: netns.TwoHosts, server_ip: str, extra: list[str], seconds: int,
              daemon_pids: dict[str, int]) -> IperfRun:
    """One iperf3 test: server (-1 -J) in b bound to ``server_ip``, client in a.

    The client is retried while the server is not reachable yet (a fresh
    server is started when the previous one exited).  CPU of the daemons is
    measured over the client's run."""
    try:
        r = iperf.run(topo.a, topo.b, server_ip, port=IPERF_PORT, seconds=seconds, extra=extra,
                      server_report=True, cpu_pids=daemon_pids, attempts=CONNECT_ATTEMPTS, check=True)
    except iperf.IperfError as exc:
        raise BenchError(str(exc)) from None
    return IperfRun(r.report, r.server, r.cpu, r.wall)


def summarize(test: str, run: IperfRun, seconds: int) -> dict:
    """The numbers we report for one test, all as the receiver saw them."""
    end_c, end_s = run.client.get("end", {}), run.server.get("end", {})
    res: dict = {"daemon_cpu_percent": run.cpu, "wall_seconds": round(run.wall, 2)}
    cpu_c = end_c.get("cpu_utilization_percent", {})
    res["iperf3_client_cpu_percent"] = cpu_c.get("host_total")
    res["iperf3_server_cpu_percent"] = cpu_c.get("remote_total")
    if test in ("tcp1", "tcp4"):
        recv = end_c["sum_received"]
        res["gbit_per_s"] = round(recv["bits_per_second"] / 1e9, 4)
        res["bytes_received"] = recv["bytes"]
        res["seconds"] = round(recv["seconds"], 3)
        res["retransmits"] = end_c.get("sum_sent", {}).get("retransmits")
    else:
        # The server's own report: payload bytes that arrived, divided by the
        # payload size.  In iperf3 3.12 the client's end.sum counts what was
        # *sent*, and the server's end.sum has bytes 0 for UDP; the server's
        # end.sum_received is the one that counts arrivals.  Its "packets" is
        # the highest sequence number seen, so packets - lost_packets must
        # agree with bytes / 64 (kept in the JSON as a cross-check).
        srv = end_s.get("sum_received") or end_s["sum"]
        secs = srv.get("seconds") or seconds
        received = srv["bytes"] // UDP_PAYLOAD
        res.update({
            "kpps": round(received / secs / 1e3, 2),
            "packets_received": received,
            "packets_received_by_sequence": srv.get("packets", 0) - srv.get("lost_packets", 0),
            "packets_sent": end_c.get("sum", {}).get("packets"),
            "server_lost_packets": srv.get("lost_packets"),
            "server_lost_percent": srv.get("lost_percent"),
            "seconds": round(secs, 3),
            "received_gbit_per_s": round(srv["bits_per_second"] / 1e9, 4),
        })
    return res


# ---------------------------------------------------------------------------
# The configurations.  Each is a context manager that brings its tunnel up
# and yields a Setup; leaving it tears the tunnel down (also on errors).
# ---------------------------------------------------------------------------

@dataclass
class Setup:
    server_ip: str                                  # where the iperf3 server binds (in b)
    daemons: dict[str, int] = field(default_factory=dict)   # "a"/"b" -> pid
    info: dict = field(default_factory=dict)


def _wait_ping(topo: netns.TwoHosts, addr: str) -> float:
    t0 = time.monotonic()
    if not topo.a.ping(addr, timeout=PING_TIMEOUT):
        raise BenchError(f"no ping answer from {addr} through the tunnel within {PING_TIMEOUT:.0f}s")
    return round((time.monotonic() - t0) * 1000, 1)


@contextlib.contextmanager
def setup_bare(topo: netns.TwoHosts, work: Path) -> Iterator[Setup]:
    _wait_ping(topo, topo.b.ip)
    yield Setup(topo.b.ip)


# -- wireguard-go (phantomlab.wggo.WgSide) ---------------------------------

def _wg_genkey(work: Path, name: str) -> tuple[Path, str]:
    """A private key file (0600) and its public key, made with ``wg``."""
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, timeout=10, check=True).stdout
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, timeout=10,
                         check=True).stdout.strip()
    path = work / f"{name}.wgkey"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(priv)
    return path, pub


@contextlib.contextmanager
def setup_wireguard(topo: netns.TwoHosts, work: Path) -> Iterator[Setup]:
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (Debian: wireguard-go, wireguard-tools)")
    WG_SOCK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    hosts = (topo.a, topo.b)
    # The control-socket directory is shared by every namespace: names must
    # differ between the two sides and from any other run on the machine.
    tag = f"wgb{os.getpid()}"
    sides = [WgSide(h, f"{tag}{'AB'[i]}", work / f"wireguard-go-{'ab'[i]}.log")
             for i, h in enumerate(hosts)]
    try:
        keys = [_wg_genkey(work, f"wg-{'ab'[i]}") for i in range(2)]
        for s in sides:
            s.start()
        for i, s in enumerate(sides):
            other = 1 - i
            s.host.run(["wg", "set", s.ifname, "listen-port", str(WG_PORT),
                        "private-key", str(keys[i][0]),
                        "peer", keys[other][1], "allowed-ips", f"{WG_NET[other]}/32",
                        "endpoint", f"{hosts[other].ip}:{WG_PORT}"], timeout=10)
            s.host.ns.ip_batch([f"addr add {WG_NET[i]}/24 dev {s.ifname}",
                                f"link set dev {s.ifname} mtu {WG_MTU} up"])
        ping_ms = _wait_ping(topo, WG_NET[1])
        version = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()
        yield Setup(WG_NET[1], {"a": sides[0].proc.pid, "b": sides[1].proc.pid},
                    {"interfaces": [s.ifname for s in sides], "first_ping_ms": ping_ms,
                     "version": version[0] if version else "?"})
    finally:
        for s in sides:
            s.stop()


# -- phantomd ----------------------------------------------------------------

def _phantom_config(d: Path, key: Path, me: int, other_pub: str, other_ip: str) -> Path:
    """The same shape of config as ``phantom demo`` writes."""
    cfg = d / "phantom.toml"
    cfg.write_text(f"""[interface]
private_key_file = "{key}"
listen_port = {PH_PORT}
http_port = 4567
mode = "tun"
device = "phantom0"
addresses = ["{PH_NET[me]}/24"]
state_dir = "{d / 'state'}"

[[peer]]
name = "{'b' if me == 0 else 'a'}"
public_key = "{other_pub}"
endpoint = "{other_ip}:{PH_PORT}"
allowed_ips = ["{PH_NET[1 - me]}/32"]
""")
    return cfg


_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b|\berror\b|\bfailed\b|\bcannot\b", re.I)


def first_error_line(log: str) -> str:
    """The line of a daemon log that best says why it failed."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith("=== start")]
    for ln in lines:                       # "ImportError: ..." style (end of a traceback)
        if re.match(r"^[\w.]*(Error|Exception|Exit)\b.*:", ln):
            return ln[:200]
    for ln in lines:
        if _ERROR_LINE.search(ln) and not ln.startswith("Traceback"):
            return ln[:200]
    return lines[-1][:200] if lines else "no output"


@contextlib.contextmanager
def setup_phantom(topo: netns.TwoHosts, work: Path, fast: bool, ciphers: str = "") -> Iterator[Setup]:
    hosts = (topo.a, topo.b)
    label = "fast" if fast else "reference"
    root = work / f"phantom-{label}{'-' + ciphers if ciphers else ''}"
    keys, pubs = [], []
    for i in range(2):
        d = root / "ab"[i]
        d.mkdir(parents=True)
        k = d / "private.key"
        pubs.append(encode_key(public_key(write_private_key(k))))
        keys.append(k)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    daemons: list[netns.DaemonProcess] = []
    try:
        for i in range(2):
            cfg = _phantom_config(root / "ab"[i], keys[i], i, pubs[1 - i], hosts[1 - i].ip)
            argv = ["--config", str(cfg)] + (["--fast"] if fast else []) + \
                (["--ciphers", ciphers] if ciphers else [])
            d = netns.DaemonProcess(hosts[i], argv, log_path=root / f"phantomd-{'ab'[i]}.log",
                                    name=f"phantomd-{label}-{'ab'[i]}", env=env, cwd=str(REPO))
            daemons.append(d.start())
        for d in daemons:
            try:
                d.wait_ready(DAEMON_READY_TIMEOUT)
            except netns.RigError as exc:
                raise BenchError(first_error_line(d.log()) if isinstance(exc, netns.DaemonExited)
                                 else str(exc).splitlines()[0]) from None
        status = daemons[0].api("GET", "/status").body
        path = status.get("data_path") if isinstance(status, dict) else None
        if path != label:
            raise BenchError(f"phantomd reports data_path={path!r}, expected {label!r}")
        ping_ms = _wait_ping(topo, PH_NET[1])
        peers = daemons[0].api("GET", "/peers").body
        cipher = peers["peers"][0].get("cipher") if isinstance(peers, dict) and peers.get("peers") else None
        yield Setup(PH_NET[1], {"a": daemons[0].pid, "b": daemons[1].pid},
                    {"data_path": path, "first_ping_ms": ping_ms, "cipher": cipher,
                     "command": shlex.join(daemons[0].argv)})
        for d in daemons:                   # crashed during the tests?
            if not d.running:
                raise BenchError(f"{d.name} exited ({d.returncode}): {first_error_line(d.log())}")
    finally:
        for d in daemons:
            d.stop()


def _phantom_wg_config(d: Path, key: Path, wg_pub: str, wg_ip: str) -> Path:
    """phantomd in a, its one peer the wireguard-go in b."""
    cfg = d / "phantom.toml"
    cfg.write_text(f"""[interface]
private_key_file = "{key}"
listen_port = {PH_PORT}
http_port = 4567
mode = "tun"
device = "phantom0"
addresses = ["{WG_NET[0]}/24"]
mtu = {WG_MTU}
state_dir = "{d / 'state'}"

[[peer]]
name = "wg"
protocol = "wireguard"
public_key = "{wg_pub}"
endpoint = "{wg_ip}:{WG_PORT}"
allowed_ips = ["{WG_NET[1]}/32"]
""")
    return cfg


@contextlib.contextmanager
def setup_phantom_wg(topo: netns.TwoHosts, work: Path, fast: bool = True) -> Iterator[Setup]:
    """phantomd (--fast) in a <-> wireguard-go in b, speaking WireGuard."""
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (Debian: wireguard-go, wireguard-tools)")
    WG_SOCK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    label = "fast" if fast else "reference"
    root = work / f"phantom-wg-{label}"
    root.mkdir(parents=True)
    k = root / "private.key"
    ph_pub = encode_key(public_key(write_private_key(k)))
    wg_key, wg_pub = _wg_genkey(root, "wg-b")
    side = WgSide(topo.b, f"wgp{os.getpid()}B", root / "wireguard-go-b.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    daemon = None
    try:
        side.start()
        topo.b.run(["wg", "set", side.ifname, "listen-port", str(WG_PORT), "private-key", str(wg_key),
                    "peer", ph_pub, "allowed-ips", f"{WG_NET[0]}/32",
                    "endpoint", f"{topo.a.ip}:{PH_PORT}"], timeout=10)
        topo.b.ns.ip_batch([f"addr add {WG_NET[1]}/24 dev {side.ifname}",
                            f"link set dev {side.ifname} mtu {WG_MTU} up"])
        cfg = _phantom_wg_config(root, k, wg_pub, topo.b.ip)
        argv = ["--config", str(cfg)] + (["--fast"] if fast else [])
        daemon = netns.DaemonProcess(topo.a, argv, log_path=root / "phantomd-a.log",
                                     name=f"phantomd-wg-{label}-a", env=env, cwd=str(REPO)).start()
        try:
            daemon.wait_ready(DAEMON_READY_TIMEOUT)
        except netns.RigError as exc:
            raise BenchError(first_error_line(daemon.log()) if isinstance(exc, netns.DaemonExited)
                             else str(exc).splitlines()[0]) from None
        status = daemon.api("GET", "/status").body
        path = status.get("data_path") if isinstance(status, dict) else None
        if path != label:
            raise BenchError(f"phantomd reports data_path={path!r}, expected {label!r}")
        ping_ms = _wait_ping(topo, WG_NET[1])
        chacha = (status.get("crypto") or {}).get("chacha20poly1305", {}).get("implementation")
        yield Setup(WG_NET[1], {"a": daemon.pid, "b": side.proc.pid},
                    {"data_path": path, "peer": "wireguard-go", "first_ping_ms": ping_ms,
                     "chacha20poly1305": chacha,
                     "command": shlex.join(daemon.argv), "interface_b": side.ifname})
        if not daemon.running:
            raise BenchError(f"{daemon.name} exited ({daemon.returncode}): {first_error_line(daemon.log())}")
    finally:
        if daemon is not None:
            daemon.stop()
        side.stop()


def setup_for(name: str, topo: netns.TwoHosts, work: Path):
    if name == "bare":
        return setup_bare(topo, work)
    if name == "wireguard-go":
        return setup_wireguard(topo, work)
    if name == "reference":
        return setup_phantom(topo, work, fast=False)
    if name == "fast":
        return setup_phantom(topo, work, fast=True)
    if name == "fast-secretbox":
        return setup_phantom(topo, work, fast=True, ciphers="secretbox")
    if name == "fast-wg":
        return setup_phantom_wg(topo, work, fast=True)
    raise ValueError(name)


TEST_ARGS = {
    "tcp1": [],
    "tcp4": ["-P", "4"],
    "udp64": ["-u", "-l", str(UDP_PAYLOAD), "-b", "0"],
}


def bench_config(name: str, topo: netns.TwoHosts, work: Path, seconds: int, log) -> dict:
    """Bring ``name`` up, run the three tests, tear it down."""
    result: dict = {"status": "ok", "tests": {}}
    try:
        with setup_for(name, topo, work) as setup:
            result["setup"] = setup.info
            result["daemon_pids"] = setup.daemons
            for test in TESTS:
                log(f"  {name}: {TEST_TITLES[test]} ({seconds}s) ...")
                try:
                    run = run_iperf(topo, setup.server_ip, TEST_ARGS[test], seconds, setup.daemons)
                    result["tests"][test] = summarize(test, run, seconds)
                except (BenchError, netns.RigError, KeyError, ValueError) as exc:
                    result["tests"][test] = {"error": str(exc).splitlines()[0]}
                    log(f"  {name}: {test} failed: {exc}")
    except (BenchError, netns.RigError, subprocess.SubprocessError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        if result["tests"]:
            result["status"] = f"error after the tests: {msg}"
        else:
            result["status"] = f"not available: {msg}"
        log(f"  {name}: {result['status']}")
    return result


# ---------------------------------------------------------------------------
# Several runs: medians and spread
# ---------------------------------------------------------------------------

def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def aggregate(runs: list[dict]) -> dict:
    """One configuration's R results as one result whose numbers are the
    medians; ``runs`` keeps every run, ``spread`` the per-test values."""
    ok = [r for r in runs if r.get("tests")]
    if not ok:
        out = dict(runs[-1])
        out["runs"] = runs
        return out
    out: dict = {"status": "ok" if all(r["status"] == "ok" for r in runs) else
                 "; ".join(sorted({r["status"] for r in runs if r["status"] != "ok"})),
                 "setup": ok[0].get("setup", {}), "daemon_pids": ok[0].get("daemon_pids", {}),
                 "tests": {}, "spread": {}, "runs": runs}
    for test in TESTS:
        key = "kpps" if test == "udp64" else "gbit_per_s"
        vals = [v for v in (_value(r, test) for r in ok) if v is not None]
        if not vals:
            errs = [r["tests"].get(test, {}).get("error") for r in ok]
            out["tests"][test] = {"error": next((e for e in errs if e), "no result")}
            continue
        cpu: dict = {}
        for r in ok:
            for side, c in (r["tests"].get(test, {}).get("daemon_cpu_percent") or {}).items():
                if c is not None:
                    cpu.setdefault(side, []).append(c)
        out["tests"][test] = {key: round(_median(vals), 4),
                              "daemon_cpu_percent": {k: round(_median(v), 1) for k, v in cpu.items()},
                              "failed_runs": len(ok) - len(vals)}
        out["spread"][test] = {"values": vals, "min": min(vals), "max": max(vals), "n": len(vals)}
    return out


def per_run_ratios(all_runs: dict) -> dict:
    """name -> test -> ratios to wireguard-go taken within each run."""
    base = all_runs.get(BASELINE)
    out: dict = {}
    if not base:
        return out
    for name, runs in all_runs.items():
        out[name] = {}
        for test in TESTS:
            rs = []
            for r, b in zip(runs, base):
                v, bv = _value(r, test), _value(b, test)
                if v is not None and bv:
                    rs.append(round(v / bv, 3))
            out[name][test] = rs
    return out


def spread_table(results: dict, ratios: dict, runs: int) -> str:
    lines = [f"spread over {runs} runs: min - max (median of the per-run ratios to {BASELINE}):"]
    for name, res in results.items():
        sp = res.get("spread")
        if not sp:
            continue
        parts = []
        for test in TESTS:
            t = sp.get(test)
            if not t:
                parts.append(f"{test} -")
                continue
            fmt = ".1f" if test == "udp64" else ".3f"
            rr = ratios.get(name, {}).get(test) or []
            rtxt = f" (x{_median(rr):.2f})" if rr and name != BASELINE else ""
            parts.append(f"{test} {t['min']:{fmt}}-{t['max']:{fmt}}{rtxt}"
                         + (f" [{len(t['values'])}/{runs} ok]" if len(t["values"]) != runs else ""))
        lines.append(f"  {name:<13} " + "   ".join(parts))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def machine_info() -> dict:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def first_line(argv: list[str]) -> str:
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (cp.stdout or cp.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cpu_model": model,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "iperf3": first_line(["iperf3", "--version"]),
        "wireguard_go": first_line(["wireguard-go", "--version"]),
    }


def _value(res: dict, test: str) -> float | None:
    t = res.get("tests", {}).get(test, {})
    return t.get("kpps" if test == "udp64" else "gbit_per_s")


def add_ratios(results: dict) -> None:
    base = results.get(BASELINE)
    for res in results.values():
        ratios = {}
        for test in TESTS:
            v = _value(res, test)
            b = _value(base, test) if base else None
            ratios[test] = round(v / b, 2) if v is not None and b else None
        res["ratio_to_wireguard_go"] = ratios


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _cpu_sum(res: dict, test: str) -> float | None:
    cpu = res.get("tests", {}).get(test, {}).get("daemon_cpu_percent")
    if not cpu or any(v is None for v in cpu.values()):
        return None
    return sum(cpu.values())


def table(results: dict) -> str:
    head = ["configuration", "TCP1 Gbit/s", "x wg", "TCP4 Gbit/s", "x wg", "UDP64 kpps", "x wg",
            "daemon CPU % a+b (TCP1/TCP4/UDP)"]
    rows = [head]
    notes = []
    for name, res in results.items():
        if not res["tests"]:
            rows.append([name, res["status"]] + [""] * (len(head) - 2))
            continue
        r = res["ratio_to_wireguard_go"]
        cpus = []
        for test in TESTS:
            c = _cpu_sum(res, test)
            cpus.append("-" if c is None else f"{c:.0f}")
        cpu_cell = "/".join(cpus) if res.get("daemon_pids") else "no daemon"
        rows.append([name,
                     _fmt(_value(res, "tcp1"), ".3f"), _fmt(r["tcp1"], ".2f"),
                     _fmt(_value(res, "tcp4"), ".3f"), _fmt(r["tcp4"], ".2f"),
                     _fmt(_value(res, "udp64"), ".1f"), _fmt(r["udp64"], ".2f"),
                     cpu_cell])
        for test in TESTS:
            err = res["tests"].get(test, {}).get("error")
            if err:
                notes.append(f"{name} {test}: {err}")
        if res["status"] != "ok":
            notes.append(f"{name}: {res['status']}")
    full = [row for row in rows if not row[1].startswith(("not available", "error"))]
    widths = [max(len(row[i]) for row in full) for i in range(len(head))]
    lines = []
    for row in rows:
        if not any(row is r for r in full):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
            continue
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(row)))
        if row is head:
            lines.append("-" * len(lines[0]))
    lines.extend(f"  note: {n}" for n in notes)
    return "\n".join(lines)


def cpu_table(results: dict) -> str:
    lines = ["daemon CPU, % of one core, per side (a = iperf3 client side, b = server side):"]
    for name, res in results.items():
        if not res.get("daemon_pids") or not res["tests"]:
            continue
        parts = []
        for test in TESTS:
            cpu = res["tests"].get(test, {}).get("daemon_cpu_percent") or {}
            parts.append(f"{test} a={_fmt(cpu.get('a'), '.0f')} b={_fmt(cpu.get('b'), '.0f')}")
        lines.append(f"  {name:<13} " + "   ".join(parts))
    if len(lines) == 1:
        lines.append("  (no configuration with a daemon was measured)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10, help="iperf3 -t for each test (default 10)")
    p.add_argument("--only", default=",".join(DEFAULT_CONFIGS),
                   help="comma-separated subset of %s (default: %s, in that order)"
                   % (",".join(CONFIGS), ",".join(DEFAULT_CONFIGS)))
    p.add_argument("--runs", type=int, default=1,
                   help="repeat everything this many times; report medians and spread (default 1)")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--keep-logs", action="store_true", help="keep daemon logs and configs (path printed)")
    args = p.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    bad = [c for c in only if c not in CONFIGS]
    if bad or not only:
        p.error("--only: unknown configuration(s) %s; choose from %s" % (",".join(bad), ",".join(CONFIGS)))
    args.configs = [c for c in CONFIGS if c in only]
    if not 1 <= args.seconds <= 600:
        p.error("--seconds must be between 1 and 600")
    if not 1 <= args.runs <= 50:
        p.error("--runs must be between 1 and 50")
    return args


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = netns.requirements_missing()
    if missing:
        print(f"bench/e2e.py: {missing}", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("bench/e2e.py: iperf3 is not installed", file=sys.stderr)
        return 2
    # SIGTERM: the rig deletes the namespaces, then this raises SystemExit so
    # every finally (wireguard-go sockets, daemons) runs too.
    signal.signal(signal.SIGTERM, _sigterm)
    netns.install_signal_handlers()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    started = _dt.datetime.now(_dt.timezone.utc)
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="phantom-bench-"))
    results: dict = {}
    all_runs: dict = {}
    try:
        netns.sweep_stale()
        with netns.two_hosts() as topo:
            log(f"namespaces {topo.a.name} ({topo.a.ip}) and {topo.b.name} ({topo.b.ip})")
            for run in range(args.runs):
                k = run % len(args.configs)
                order = args.configs[k:] + args.configs[:k]
                run_work = work / f"run{run + 1}"
                run_work.mkdir()
                for name in order:
                    log(f"{name}:" + (f" (run {run + 1}/{args.runs})" if args.runs > 1 else ""))
                    all_runs.setdefault(name, []).append(bench_config(name, topo, run_work, args.seconds, log))
    finally:
        _stop_all_wg()
        if args.keep_logs:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for name in args.configs:
        if name in all_runs:
            runs = all_runs[name]
            results[name] = runs[0] if args.runs == 1 else aggregate(runs)
    add_ratios(results)
    ratios = per_run_ratios(all_runs)
    finished = _dt.datetime.now(_dt.timezone.utc)

    print(f"command:  {command}")
    print(f"date:     {started.strftime('%Y-%m-%d %H:%M:%S UTC')} "
          f"({(finished - started).total_seconds():.0f} s)")
    print(f"machine:  {machine['nproc']} CPUs ({machine['cpu_model']}), Linux {machine['kernel']}, "
          f"load average at start {' '.join(map(str, machine['loadavg_at_start']))}")
    print(f"tools:    {machine['iperf3']}; {machine['wireguard_go']}; Python {machine['python']}")
    print(f"tests:    iperf3 -t {args.seconds}; TCP1 = 1 stream, TCP4 = -P 4 (Gbit/s received); "
          f"UDP64 = -u -l 64 -b 0 (thousand packets/s received by the server)")
    print(f"ratios:   'x wg' = this row / {BASELINE} in this same run")
    if args.runs > 1:
        print(f"runs:     {args.runs}; every number is the median of the runs (configurations "
              f"rotated each run)")
    print()
    print(table(results))
    if args.runs > 1:
        print()
        print(spread_table(results, ratios, args.runs))
    print()
    print(cpu_table(results))

    if args.json:
        doc = {"command": command, "argv": sys.argv[1:], "seconds": args.seconds,
               "started": started.isoformat(), "finished": finished.isoformat(),
               "machine": machine, "baseline": BASELINE, "runs": args.runs,
               "per_run_ratios": ratios, "configurations": results}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    ok = any(res["tests"] for res in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # the rig's SIGINT handler has deleted the namespaces; the finally
        # blocks have stopped wireguard-go and removed its sockets
        print("bench/e2e.py: interrupted, everything cleaned up", file=sys.stderr)
        sys.exit(130)
