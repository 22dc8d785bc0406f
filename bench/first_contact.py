#!/usr/bin/env python3
"""First contact between two network members (issue 20): the time from the
first packet to its answer, against the same on a configured pair.

    .venv/bin/python bench/first_contact.py [--runs 5] [--fast] [--json out.json]

A phantomlab lan of 3 hosts (namespaces joined by a bridge): ``a`` runs
``phantom directory serve --network`` (SQLite); each run, two fresh members
join with their own invites (``phantom join --no-start``) on ``b`` and ``c``
and run ``phantomd``; once each lists the other as a peer (learned from the
member stream, no handshake yet), ONE ICMP echo goes from b to c's
certificate address (the rig's raw-socket ping with a resend interval longer
than the timeout, so a dropped first packet or initiation shows as a 5 s
retry or a loss, never hidden by a second echo); the time until its reply is
the first-contact time.  Then 10 echoes on the established tunnel (the
tunnel's round trip).

The baseline: the same two hosts with a configured pair (``[[peer]]`` with
keys and endpoints, no network): the first echo there costs one handshake
round trip plus one echo round trip, the least a first packet can cost.
The responder's drop counters (GET /status ``handshake_drops`` and
``drops``) are printed for each run:
``unknown_key`` > 0 would mean an initiation dropped while admission ran.
tcpdump on b's bridge port counts the UDP datagrams each way during the
first echo: one handshake round trip plus the echo is 2 out, 2 back.
Namespaces and daemons are removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from phantomlab import netns  # noqa: E402
from phantomlab.capture import Sniffer  # noqa: E402
from phantomlab.nodes import make_node  # noqa: E402
from phantomlab.poll import wait_for  # noqa: E402
from phantomlab.templates import HTTP_PORT, peer_entry, write_config  # noqa: E402

CLI = [sys.executable, "-m", "phantom.cli"]
DIR_PORT = 4568


def cli(host, *args, timeout=60):
    out = host.run(CLI + [str(a) for a in args], check=False, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError("%s: %s%s" % (args[:2], out.stdout, out.stderr))
    return out.stdout


def first_echo(host, addr, peer_ip, timeout=10.0):
    """(seconds from sending one echo to its reply or None, the UDP datagrams
    host -> peer and peer -> host on the bridge meanwhile: tcpdump)."""
    with Sniffer(host, host.ifname, "udp and host %s" % peer_ip) as sn:
        t = time.monotonic()
        ok = host.ns.ping(addr, timeout=timeout, interval=timeout + 1)
        took = time.monotonic() - t if ok else None
    grams = [g for g in (p.udp() for p in sn.result) if g is not None]
    return took, (sum(1 for g in grams if g.src == host.ip),
                  sum(1 for g in grams if g.src == peer_ip),
                  ["%s %d B type %d" % ("out" if g.src == host.ip else "back", len(g.payload),
                                         g.payload[0] if g.payload else -1) for g in grams])


def rtts(host, addr, count=10):
    out = []
    for _ in range(count):
        t = time.monotonic()
        if host.ns.ping(addr, timeout=2, interval=3):
            out.append(time.monotonic() - t)
    return out


def start(work, host, config, name, fast, token_file):
    argv = ["--config", str(config)] + (["--fast"] if fast else [])
    d = netns.DaemonProcess(host, argv, http_port=HTTP_PORT, name=name,
                            log_path=work / ("%s.log" % name), token_file=token_file)
    d.start()
    d.wait_ready(30)
    host.ns.wait_addresses_ready()
    return d


def peer_state(d, key):
    code, body = d.api("GET", "/status")
    for p in body.get("peers", []):
        if p.get("public_key") == key or p.get("key") == key:
            return p.get("state")
    return None


def status_drops(d):
    """The non-zero handshake drops (engine: unknown_key, replays, ...) and data-path drops."""
    code, body = d.api("GET", "/status")
    drops = dict(body.get("drops") or {}, **(body.get("handshake_drops") or {}))
    return {k: v for k, v in drops.items() if v}


def member_run(work, lan, auth, i, fast):
    a, b, c = lan.hosts["a"], lan.hosts["b"], lan.hosts["c"]
    members, daemons = [], []
    try:
        for host, name in ((b, "b%d" % i), (c, "c%d" % i)):
            token = cli(a, "network", "invite", "--name", name, "--dir", auth,
                        "--admin-token-file", auth / "admin.token").strip()
            state = work / name
            joined = json.loads(cli(host, "join", token, "--state-dir", state, "--json",
                                    "--no-start"))
            members.append((host, name, state, joined))
        for host, name, state, joined in members:
            daemons.append(start(work, host, state / "phantom.toml", name, fast,
                                 state / "token"))
        (hb, nb, _, jb), (hc, nc, _, jc) = members
        db, dc = daemons
        wait_for(lambda: peer_state(db, jc["key"]) is not None and
                 peer_state(dc, jb["key"]) is not None, timeout=20, what="members known")
        before = peer_state(db, jc["key"])
        first, grams = first_echo(hb, jc["ipv4"], hc.ip)
        rt = rtts(hb, jc["ipv4"])
        return {"first_s": first, "state_before": before, "datagrams": grams,
                "rtt_median_s": statistics.median(rt) if rt else None,
                "responder_drops": status_drops(dc), "initiator_drops": status_drops(db)}
    finally:
        for d in reversed(daemons):
            d.stop()


def static_run(work, lan, i, fast):
    b, c = lan.hosts["b"], lan.hosts["c"]
    nb = make_node(work, "sb%d" % i, 2, b)
    nc = make_node(work, "sc%d" % i, 3, c)
    for n, o in ((nb, nc), (nc, nb)):
        write_config(n, mode="tun", ipv6=False, extra={"log_level": "info"},
                     peers=[peer_entry(o, mode="tun", ipv6=False)])
    daemons = []
    try:
        for n in (nb, nc):
            n.state_dir.mkdir(exist_ok=True)
            daemons.append(start(work, n.host, n.config, n.name, fast, n.state_dir / "token"))
        before = peer_state(daemons[0], nc.pub)
        first, grams = first_echo(b, nc.tun4, c.ip)
        rt = rtts(b, nc.tun4)
        return {"first_s": first, "state_before": before, "datagrams": grams,
                "rtt_median_s": statistics.median(rt) if rt else None,
                "responder_drops": status_drops(daemons[1])}
    finally:
        for d in reversed(daemons):
            d.stop()


def med(rows, key):
    v = [r[key] for r in rows if r[key] is not None]
    return statistics.median(v) if v else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--fast", action="store_true", help="every phantomd on --fast")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="phantom-first-contact-"))
    restore = netns.install_signal_handlers()
    directory = None
    try:
        with netns.lan(3) as lan:
            a = lan.hosts["a"]
            url = "http://%s:%d" % (a.ip, DIR_PORT)
            auth = work / "authority"
            subprocess.run(CLI + ["network", "init", "bench", "--dir", str(auth), "--ipv4",
                                  "100.100.0.0/16", "--directory", url], check=True,
                           capture_output=True, timeout=60)
            directory = netns.DaemonProcess(
                a, ["directory", "serve", "--listen", a.ip, "--port", str(DIR_PORT), "--db",
                    str(work / "dir.sqlite"), "--network", str(auth),
                    "--source-writes-per-minute", "0"],
                executable=CLI, http_port=DIR_PORT, http_host=a.ip, name="directory",
                log_path=work / "directory.log")
            directory.start()
            directory.wait_ready(30)
            members = [member_run(work, lan, auth, i, args.fast) for i in range(args.runs)]
            statics = [static_run(work, lan, i, args.fast) for i in range(args.runs)]
            directory.stop()
            directory = None
    finally:
        if directory is not None:
            directory.stop()
        netns.cleanup_all()
        restore()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    cmd = ".venv/bin/python bench/first_contact.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv)
    print("`%s`\n%s; %d cores; load average %.2f before, %.2f after; data path %s\n"
          % (cmd.strip(), started, os.cpu_count(), load0[0], load1[0],
             "fast" if args.fast else "reference"))
    print("| pair | first echo -> reply (median of %d; each) | echo RTT on the tunnel (median) "
          "| peer state before | responder drops | UDP datagrams out/back during the "
          "first echo |" % args.runs)
    print("|---|---:|---:|---|---|---|")
    for label, rows in (("two members (network)", members), ("configured pair", statics)):
        firsts = ", ".join("%.1f" % (r["first_s"] * 1e3) if r["first_s"] is not None else "lost"
                           for r in rows)
        m = med(rows, "first_s")
        rt = med(rows, "rtt_median_s")
        print("| %s | %s ms (%s) | %s ms | %s | %s | %s |" % (
            label, "%.1f" % (m * 1e3) if m is not None else "-", firsts,
            "%.2f" % (rt * 1e3) if rt is not None else "-",
            sorted({str(r["state_before"]) for r in rows}),
            [r["responder_drops"] for r in rows],
            " ".join("%d/%d" % tuple(r["datagrams"][:2]) for r in rows)))
    if args.json:
        args.json.write_text(json.dumps({"date": started, "load": [load0, load1],
                                         "members": members, "configured": statics},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
