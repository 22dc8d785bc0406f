#!/usr/bin/env python3
"""What one phantomd start costs: CPU of the daemon and of its privileged
helper from exec to ready (the end-to-end tier starts hundreds of them,
docs/testing.md "Where the suite's CPU goes").

    .venv/bin/python bench/startup.py [--runs 7] [--fast] [--json out.json]

Each run starts a phantomd in TUN mode with one configured peer in a fresh
phantomlab two-host topology (namespaces a and b, a veth between them),
waits until its API answers ready, waits 0.5 s more, then reads the user +
system CPU of the daemon's process and of its helper from /proc (the
helper is the daemon's child), and stops both.  Printed: each run, then
the medians and the load average at start and end.  Namespaces and daemons
are removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from phantomlab import netns  # noqa: E402
from phantomlab.daemons import DaemonProcess  # noqa: E402
from phantomlab.nodes import make_node  # noqa: E402
from phantomlab.templates import peer_entry, write_config  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ        # utime + stime


def children(pid: int) -> list:
    out = []
    for task in os.listdir("/proc/%d/task" % pid):
        out += [int(c) for c in Path("/proc/%d/task/%s/children" % (pid, task)).read_text().split()]
    return out


def one_start(fast: bool) -> dict:
    with netns.two_hosts() as topo:
        work = Path(tempfile.mkdtemp(prefix="phantom-startup-"))
        a, b = make_node(work, "a", 1, topo.a), make_node(work, "b", 2, topo.b)
        write_config(a, mode="tun", peers=[peer_entry(b, mode="tun")])
        d = DaemonProcess(topo.a, ["--config", str(a.config)] + (["--fast"] if fast else []),
                          name="a", log_path=work / "a.log")
        t0 = time.monotonic()
        d.start()
        try:
            d.wait_ready(30)
            ready = time.monotonic() - t0
            time.sleep(0.5)
            helpers = children(d.proc.pid)
            return {"ready_s": round(ready, 3), "daemon_cpu_s": cpu_seconds(d.proc.pid),
                    "helper_cpu_s": sum(cpu_seconds(h) for h in helpers)}
        finally:
            d.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--fast", action="store_true", help="phantomd --fast")
    p.add_argument("--json", type=Path, help="write the runs and medians here")
    args = p.parse_args()
    missing = netns.requirements_missing()
    if missing:
        print("bench/startup.py: %s" % missing, file=sys.stderr)
        return 2
    load0 = os.getloadavg()[0]
    runs = []
    restore = netns.install_signal_handlers()
    try:
        for i in range(args.runs):
            r = one_start(args.fast)
            runs.append(r)
            print("run %d: ready %.2f s, daemon %.2f CPU-s, helper %.2f CPU-s"
                  % (i + 1, r["ready_s"], r["daemon_cpu_s"], r["helper_cpu_s"]), flush=True)
    finally:
        restore()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    load1 = os.getloadavg()[0]
    print("median of %d (%s): ready %.2f s, daemon %.2f CPU-s, helper %.2f CPU-s; load %.1f -> %.1f"
          % (len(runs), "--fast" if args.fast else "reference", med["ready_s"], med["daemon_cpu_s"],
             med["helper_cpu_s"], load0, load1))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": med, "fast": args.fast,
                                         "load": [load0, load1]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
