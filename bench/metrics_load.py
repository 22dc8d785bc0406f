#!/usr/bin/env python3
"""Does scraping /metrics slow the fast path?  iperf3 through ``phantomd
--fast`` with and without a scraper hitting GET /metrics 10 times a second.

    .venv/bin/python bench/metrics_load.py [--runs 5] [--seconds 5] [--hz 10]
                                           [--extra-peers 20] [--json out.json]

One pair of fresh namespaces (phantomlab.netns.two_hosts: a 10.201.0.1, b
10.201.0.2 on a veth pair), one phantomd --fast in each (TUN mode, MTU
1420), a peered with b plus ``--extra-peers`` idle peers (so a scrape has
rows to read).  Each run does both configurations, in ABBA order across
runs so that drift on a shared machine does not favour either:

  off   iperf3 -c b -t N -J (one TCP stream a -> b), no scraper;
  on    the same while a thread scrapes a's and b's /metrics at --hz each
        (from inside the namespaces, over the API's TCP listener), and
        counts the scrapes, their failures and their latency.

Reported: receiver throughput per run, median and spread (min..max and
sample standard deviation) per configuration, the median difference in
percent, and whether that difference is within the noise (smaller than the
larger of the two spreads), and the on/off ratio of each run's pair (the
two halves of a pair run back to back, so the ratio is less exposed to
other load on a shared machine than the medians).  Everything is bounded in time and cleaned up
on exit, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO,):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from phantom import crypto  # noqa: E402
from phantom.keys import encode_key  # noqa: E402
from phantomlab import iperf as lab_iperf  # noqa: E402
from phantomlab import netns  # noqa: E402
from phantomlab.nodes import make_node  # noqa: E402
from phantomlab.templates import HTTP_PORT, peer_entry, write_config  # noqa: E402


class Scraper(threading.Thread):
    def __init__(self, hosts, hz: float, path: str = "/metrics"):
        super().__init__(daemon=True, name="scraper")
        self.hosts, self.period, self.path = hosts, 1.0 / hz, path
        self.stop_ev = threading.Event()
        self.ok = self.failed = 0
        self.latency: list = []

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.stop_ev.is_set():
            for h in self.hosts:
                t0 = time.monotonic()
                try:
                    code, body = h.ns.http("GET", self.path, port=HTTP_PORT, timeout=2.0)
                    if code == 200 and (self.path != "/metrics" or "phantom_peer_rx_bytes_total" in body):
                        self.ok += 1
                    else:
                        self.failed += 1
                except OSError:
                    self.failed += 1
                self.latency.append(time.monotonic() - t0)
            nxt += self.period
            self.stop_ev.wait(max(0.0, nxt - time.monotonic()))


def iperf(a, b, seconds: float) -> float:
    r = lab_iperf.run(a.host, b.host, b.tun4, port=5301, seconds=seconds)
    if not r.ok:
        raise RuntimeError("iperf3 failed: %s" % r.error)
    return r.received_bps


def summary(xs: list) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0, "runs": xs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--extra-peers", type=int, default=20)
    ap.add_argument("--datapath", choices=["fast", "reference"], default="fast")
    ap.add_argument("--path", default="/metrics",
                    help="what the scraper GETs (/status: a control, same HTTP cost, no render)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    restore = netns.install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="phantom-metrics-bench-"))
    daemons = []
    try:
        with netns.two_hosts() as topo:
            a = make_node(tmp, "n1", 1, topo.a)
            b = make_node(tmp, "n2", 2, topo.b)
            extra = [{"name": "idle%d" % i,
                      "public_key": encode_key(crypto.x25519_public(crypto.random_bytes(32))),
                      "allowed_ips": ["10.99.%d.%d/32" % (1 + i // 250, 1 + i % 250)]}
                     for i in range(args.extra_peers)]
            write_config(a, mode="tun", peers=[peer_entry(b, mode="tun")] + extra)
            write_config(b, mode="tun", peers=[peer_entry(a, mode="tun")])
            for n in (a, b):
                argv_ = ["--config", str(n.config)] + (["--fast"] if args.datapath == "fast" else [])
                d = netns.DaemonProcess(n.host, argv_, http_port=HTTP_PORT, name=n.name,
                                        log_path=tmp / ("%s.log" % n.name),
                                        token_file=n.state_dir / "token")
                daemons.append(d)
                d.start()
                d.wait_ready(15)
                n.daemon = d
            topo.a.ns.wait_addresses_ready()
            topo.b.ns.wait_addresses_ready()
            if not topo.a.ns.ping(b.tun4, timeout=10):
                raise RuntimeError("the tunnel does not answer a ping")
            iperf(a, b, 1.0)                                   # warm up
            results = {"off": [], "on": []}
            scrapes = {"ok": 0, "failed": 0, "latency": []}
            for run in range(args.runs):
                order = ["off", "on"] if run % 2 == 0 else ["on", "off"]
                for mode in order:
                    sc = None
                    if mode == "on":
                        sc = Scraper([topo.a, topo.b], args.hz, args.path)
                        sc.start()
                        time.sleep(0.2)
                    try:
                        bps = iperf(a, b, args.seconds)
                    finally:
                        if sc is not None:
                            sc.stop_ev.set()
                            sc.join(5)
                            scrapes["ok"] += sc.ok
                            scrapes["failed"] += sc.failed
                            scrapes["latency"] += sc.latency
                    results[mode].append(bps)
                    print("run %d %-3s %7.1f Mbit/s%s" % (
                        run + 1, mode, bps / 1e6,
                        "  (%d scrapes, %d failed)" % (sc.ok, sc.failed) if sc else ""), flush=True)
    finally:
        for d in daemons:
            d.stop()
        restore()
        shutil.rmtree(tmp, ignore_errors=True)      # keys and logs of this run
    off, on = summary(results["off"]), summary(results["on"])
    diff = (on["median"] - off["median"]) / off["median"] * 100
    noise = max(off["max"] - off["min"], on["max"] - on["min"]) / off["median"] * 100
    ratios = [x / y for x, y in zip(results["on"], results["off"])]
    lat = sorted(scrapes["latency"])
    out = {"datapath": args.datapath, "path": args.path, "seconds": args.seconds, "hz": args.hz,
           "extra_peers": args.extra_peers, "off": off, "on": on,
           "median_diff_percent": diff, "noise_percent": noise,
           "within_noise": abs(diff) <= noise,
           "paired_ratio_median": statistics.median(ratios), "paired_ratios": ratios,
           "scrapes": {"ok": scrapes["ok"], "failed": scrapes["failed"],
                       "latency_median_ms": 1000 * lat[len(lat) // 2] if lat else None,
                       "latency_p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None}}
    print()
    print("| scraper | median Mbit/s | min..max | stdev |")
    print("|---|---:|---:|---:|")
    for name, s in (("off", off), ("on (GET %s, %g Hz x 2 daemons)" % (args.path, args.hz), on)):
        print("| %s | %.1f | %.1f..%.1f | %.1f |" % (name, s["median"] / 1e6, s["min"] / 1e6,
                                                   s["max"] / 1e6, s["stdev"] / 1e6))
    print()
    print("median difference %+.1f%%, spread %.1f%% of the median: %s" % (
        diff, noise, "within noise" if out["within_noise"] else "NOT within noise"))
    print("paired on/off ratio per run: %s (median %.3f)" % (
        " ".join("%.2f" % r for r in ratios), statistics.median(ratios)))
    print("scrapes: %d ok, %d failed, latency median %.1f ms, p99 %.1f ms" % (
        scrapes["ok"], scrapes["failed"], out["scrapes"]["latency_median_ms"] or 0,
        out["scrapes"]["latency_p99_ms"] or 0))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
