#!/usr/bin/env python3
"""NAT traversal benchmark: a direct (hole-punched) path against a relayed one, in one run.

    PYTHONPATH=. .venv/bin/python bench/nat.py [--seconds N] [--pings N] [--json out.json]

Two fresh ``phantomlab.netns.internet()`` topologies, one after the other, each
with a rendezvous/relay node (``rv``, ``rendezvous = true``, ``relay = true``)
on the internet namespace and peers ``a`` and ``b`` behind two home NAT routers:

  direct   default MASQUERADE on both routers: the peers punch a hole and
           talk NAT to NAT;
  relayed  MASQUERADE --random-fully on both: punching fails and the traffic
           goes a -> rv -> b (reference data path: the relay is Python);
  relayed* the same with the relay node on --fast (forwarding in C);
  direct-f, relayed-f: the first two with every daemon on --fast.

For each: the path reported by GET /peers, the time from the first ping to
the first answer (path set-up), ``--pings`` ICMP echo round trips over the
tunnel (min / median / max, ms), and one TCP stream ``iperf3 -t N`` (bits/s
the receiver got).  Namespaces and daemons are removed on
exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO,):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from phantomlab import iperf, netns  # noqa: E402
from phantomlab.nodes import make_node  # noqa: E402
from phantomlab.poll import wait_for  # noqa: E402
from phantomlab.templates import FAST_TUNABLES, HTTP_PORT, peer_entry, write_config  # noqa: E402


def _start(node, work, datapath):
    argv = ["--config", str(node.config)] + (["--fast"] if datapath == "fast" else [])
    node.daemon = netns.DaemonProcess(node.host, argv, http_port=HTTP_PORT, name=node.name,
                                      log_path=work / ("%s.log" % node.name),
                                      token_file=node.state_dir / "token")
    node.daemon.start()
    node.daemon.wait_ready(15)
    node.host.ns.wait_addresses_ready()


def _rtts(ns, addr, count):
    out = []
    for _ in range(count):
        t = time.monotonic()
        if ns.ping(addr, timeout=2):
            out.append((time.monotonic() - t) * 1000)
    return out


MTU = None
PERF_DIR = None


def _counters(node) -> dict:
    """What moved in a daemon and its namespace: the data path's drops and
    worker counters (GET /status), and the namespace's IP fragment/reassembly
    and UDP counters (nstat)."""
    out = {}
    code, st = node.daemon.api("GET", "/status")
    if code == 200:
        out.update({"drop." + k: v for k, v in (st.get("drops") or {}).items() if isinstance(v, int)})
        out.update({"worker." + k: v for k, v in (st.get("workers") or {}).items() if isinstance(v, int)})
    cp = node.host.ns.run(["nstat", "-az"], check=False, timeout=10)
    for line in cp.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(("Ip", "Udp")) and parts[1].isdigit():
            if any(w in parts[0] for w in ("Frag", "Reasm", "Datagrams", "Errors", "BufErrors", "Out")):
                out["ns." + parts[0]] = int(parts[1])
    return out


def _diff(a: dict, b: dict) -> dict:
    return {k: b[k] - a.get(k, 0) for k in sorted(b) if b[k] - a.get(k, 0)}


def _perf_start(nodes, name):
    import subprocess
    out = Path(PERF_DIR)
    out.mkdir(parents=True, exist_ok=True)
    pids = ",".join(str(n.daemon.pid) for n in nodes.values())
    return subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-p", pids, "-o",
                             str(out / ("%s.perf.data" % name.replace("*", "s")))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _perf_stop(proc):
    import signal
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except Exception:
        proc.kill()
        proc.wait()


def scenario(name, random_fully, seconds, pings, datapath="reference", relay_datapath=None):
    work = Path(tempfile.mkdtemp(prefix="phantom-nat-bench-"))
    daemons = []
    with netns.internet(random_fully=random_fully, udp_timeout=30) as net:
        try:
            rv = make_node(work, "rv", 10, net.rv)
            a = make_node(work, "n1", 1, net["a"])
            b = make_node(work, "n2", 2, net["b"])
            write_config(rv, mode="tun", ipv6=False, tunables=FAST_TUNABLES,
                         extra=dict({"rendezvous": True, "relay": True, "log_level": "info"},
                                    **({"mtu": MTU} if MTU else {})),
                         peers=[peer_entry(n, mode="tun", endpoint=False, allowed=[]) for n in (a, b)])
            for n, o in ((a, b), (b, a)):
                rv_entry = dict(peer_entry(rv, mode="tun", keepalive=1, allowed=[]), rendezvous=True)
                write_config(n, mode="tun", ipv6=False, tunables=FAST_TUNABLES,
                             extra=dict({"log_level": "info"}, **({"mtu": MTU} if MTU else {})),
                             peers=[rv_entry, peer_entry(o, mode="tun", endpoint=False, ipv6=False)])
            for n in (rv, a, b):
                _start(n, work, relay_datapath if n is rv and relay_datapath else datapath)
                daemons.append(n.daemon)
            for n in (a, b):
                wait_for(lambda: n.daemon.api("GET", "/status")[1]["nat"]["reflexive"], timeout=15,
                         what="registration")
            t0 = time.monotonic()
            assert a.host.ns.ping(b.tun4, timeout=10), "no tunnel"
            setup = time.monotonic() - t0
            code, peers = a.daemon.api("GET", "/peers")
            path = {p["name"]: (p["path"], p["endpoint"]) for p in peers["peers"]}["n2"]
            rtt = _rtts(a.host.ns, b.tun4, pings)
            nodes = {"rv": rv, "a": a, "b": b}
            before = {k: _counters(n) for k, n in nodes.items()}
            perf = _perf_start(nodes, name) if PERF_DIR else None
            r = iperf.run(a.host, b.host, b.tun4, seconds=seconds,
                          cpu_pids={k: n.daemon.pid for k, n in nodes.items()})
            if perf is not None:
                _perf_stop(perf)
            counters = {k: _diff(before[k], _counters(n)) for k, n in nodes.items()}
            bps = r.received_bps if r.ok else None
            if bps is None:
                print("%s: iperf3 failed: %s %s" % (name, r.stdout[-300:], r.stderr[-300:]), file=sys.stderr)
            return {"scenario": name, "path": path[0], "endpoint": path[1], "setup_s": round(setup, 2),
                    "rtt_ms": {"min": round(min(rtt), 3), "median": round(statistics.median(rtt), 3),
                               "max": round(max(rtt), 3), "n": len(rtt)} if rtt else None,
                    "tcp1_bps": bps, "cpu_pct": r.cpu,
                    "retransmits": r.end.get("sum_sent", {}).get("retransmits"),
                    "counters": counters}
        finally:
            for d in reversed(daemons):
                d.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--mtu", type=int, help="tunnel MTU of every daemon (default phantom's 1420)")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--perf", type=Path, help="perf record -g the three daemons over each iperf3 run "
                    "into DIR/<scenario>.perf.data")
    ap.add_argument("--counters", action="store_true", help="print what moved in each daemon "
                    "(drops, worker counters) and namespace (IP fragments, UDP) over the iperf3 run")
    args = ap.parse_args(argv)
    global MTU, PERF_DIR
    MTU = args.mtu
    PERF_DIR = args.perf
    restore = netns.install_signal_handlers()
    try:
        plan = [("direct", (), {}), ("relayed", (1, 2), {}), ("relayed*", (1, 2), {"relay_datapath": "fast"}),
                ("direct-f", (), {"datapath": "fast"}), ("relayed-f", (1, 2), {"datapath": "fast"})]
        only = set(args.only.split(",")) if args.only else None
        rows = [scenario(name, rf, args.seconds, args.pings, **kw) for name, rf, kw in plan
                if only is None or name in only]
    finally:
        netns.cleanup_all()
        restore()
    print("%-9s %-16s %-18s %8s %28s %12s" % ("scenario", "path", "endpoint", "setup", "rtt ms min/med/max",
                                              "tcp1 Mbit/s"))
    for r in rows:
        rtt = r["rtt_ms"]
        print("%-9s %-16s %-18s %7.2fs %28s %12s" % (
            r["scenario"], r["path"], r["endpoint"], r["setup_s"],
            "%.3f / %.3f / %.3f" % (rtt["min"], rtt["median"], rtt["max"]) if rtt else "-",
            "%.1f" % (r["tcp1_bps"] / 1e6) if r["tcp1_bps"] else "-"))
    for r in rows:
        print("%-9s cpu %% of a core: %s  retransmits: %s" % (r["scenario"], r["cpu_pct"], r["retransmits"]))
        if args.counters:
            for k, c in r["counters"].items():
                print("    %-3s %s" % (k, " ".join("%s=%s" % kv for kv in c.items())))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
