"""Soak: a tunnel under churn for --minutes, watched for leaks and stalls (issue #15).

    .venv/bin/python bench/soak.py --minutes M   (this module's main()) [--path fast|reference] [--json out.json]

Two phantomd in fresh namespaces (``phantomlab.netns.two_hosts()``): a
(10.99.0.1, never restarted) and b (10.99.0.2), TUN mode, each with the
other as a peer with an endpoint and a persistent keepalive, and timers
shortened in ``[tunables]`` so that the tunnel rekeys every few seconds
(SOAK_TUNABLES: a new handshake every 4 s, sessions retired after 10 s).
For the whole run:

* **traffic**: an iperf3 TCP stream a -> b at --rate (default 20 Mbit/s, so
  the machine stays usable), restarted whenever it ends (a kill cuts it);
* **probe**: a UDP echo through the tunnel every 50 ms (a -> b:7777 and
  back); a *stall* is a gap of more than 1 s between answered probes that
  does not overlap a deliberate kill (from the kill until b is ready again
  plus --grace seconds for the new handshake);
* **kills**: every --kill-every seconds b is killed (alternately SIGKILL
  and SIGTERM) and started again; a's tunnel comes back by itself (dead
  retry and b's persistent keepalive);
* **firewall**: a's rules are replaced (PUT /firewall) every
  --firewall-every seconds, alternating two rule sets that pass the traffic;
* **scraper**: GET /status on both daemons in a loop; an answer slower than
  1 s (outside b's kill windows for b) is an API stall;
* **samples**: every second, RSS (VmRSS) and open file descriptors
  (/proc/PID/fd) of every daemon (b per incarnation).

Report: RSS and fds over time for every daemon; growth of a (never
restarted) from the end of the first minute (or of the first half, for runs
shorter than 2 minutes) to the end; stalls; API latency; ERROR lines and
tracebacks in the logs.  Verdict (``failures``): RSS growth above
--max-rss-growth (default 10 %), fd growth above --max-fd-growth (default
2 descriptors), any stall, any ERROR/Traceback in a log, or too few
handshakes.  Exit status 1 when there is a failure.  ``run_soak()`` is the
entry point of tests/soak/test_soak.py (2 minutes in CI).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import phantom
from phantom.keys import encode_key, public_key, write_private_key

from . import iperf, netns
from .daemons import first_error_line
from .namespaces import RigError

REPO = Path(phantom.__file__).resolve().parent.parent   # the daemons run this source tree

TUN = ("10.99.0.1", "10.99.0.2")
PORT = 9000
HTTP_PORT = 4567
ECHO_PORT = 7777
PROBE_INTERVAL = 0.05
STALL = 1.0
SOAK_TUNABLES = {
    "rekey_after_time": 4.0,       # the initiator rekeys every 4 s of use
    "reject_after_time": 10.0,     # sessions retired after 10 s
    "rekey_timeout": 1.0,
    "keepalive_timeout": 2.0,
    "rekey_attempt_time": 6.0,
    "dead_retry_interval": 1.0,    # a's retry while b is down
}
FIREWALLS = [
    {"stateful": True, "rule": [{"direction": "in", "proto": "tcp", "dst_port": 7999, "action": "reject",
                                 "comment": "soak-a"}]},
    {"rule": [{"direction": "in", "proto": "udp", "dst_port": 7998, "action": "drop", "comment": "soak-b"},
              {"direction": "out", "proto": "tcp", "dst_port": 7997, "action": "drop", "comment": "soak-b2"}]},
]
_LOG_ERROR = re.compile(r"\bERROR\b|Traceback|CRITICAL")


def _config(d: Path, key: Path, me: int, other_pub: str, other_ip: str, log_level: str) -> Path:
    tun = "\n".join(f"{k} = {v}" for k, v in SOAK_TUNABLES.items())
    cfg = d / "phantom.toml"
    cfg.write_text(f"""[interface]
private_key_file = "{key}"
listen_port = {PORT}
http_port = {HTTP_PORT}
mode = "tun"
device = "phsoak0"
addresses = ["{TUN[me]}/24"]
state_dir = "{d / 'state'}"
log_level = "{log_level}"

[[peer]]
name = "{'b' if me == 0 else 'a'}"
public_key = "{other_pub}"
endpoint = "{other_ip}:{PORT}"
allowed_ips = ["{TUN[1 - me]}/32"]
persistent_keepalive = 1

[tunables]
{tun}
""")
    return cfg


def _rss_fds(pid: int | None) -> tuple[int | None, int | None]:
    if pid is None:
        return None, None
    rss = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None, None
    return rss, fds


class Soak:
    def __init__(self, minutes: float, path: str = "fast", rate: str = "20M", kill_every: float = 30.0,
                 firewall_every: float = 3.0, grace: float = 5.0, log=print, log_level: str = "info",
                 max_rss_growth: float = 0.10, max_fd_growth: int = 2):
        self.duration = minutes * 60.0
        self.fast = path == "fast"
        self.path = path
        self.rate = rate
        self.kill_every = kill_every
        self.firewall_every = firewall_every
        self.grace = grace
        self.log = log
        self.log_level = log_level
        self.max_rss_growth = max_rss_growth
        self.max_fd_growth = max_fd_growth
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.replies: list[float] = []          # monotonic times of answered probes
        self.sent = 0
        self.windows: list[list[float]] = []    # deliberate outages [start, end]
        self.samples: list[dict] = []
        self.api: dict = {"a": [], "b": []}     # (t, seconds or None)
        self.handshakes: dict = {"a": set(), "b": set()}   # distinct last_handshake times seen
        self.fw_changes = 0
        self.fw_errors: list[str] = []
        self.iperf_starts = 0
        self.iperf_bytes = 0
        self.iperf_segments: list[dict] = []
        self.kills: list[dict] = []
        self.incarnation = 1
        self.t0 = 0.0

    # ----------------------------------------------------------- threads
    def _echo(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data, addr = sock.recvfrom(64)
                sock.sendto(data, addr)
            except (socket.timeout, OSError):
                continue

    def _probe(self, sock: socket.socket) -> None:
        sock.settimeout(PROBE_INTERVAL)
        seq = 0
        nxt = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= nxt:
                seq += 1
                with contextlib.suppress(OSError):
                    sock.sendto(struct.pack("!Q", seq), (TUN[1], ECHO_PORT))
                    self.sent += 1
                nxt = now + PROBE_INTERVAL
            try:
                sock.recv(64)
                with self.lock:
                    self.replies.append(time.monotonic())
            except (socket.timeout, OSError):
                pass

    def _scrape(self, name: str, host: netns.Host) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                status, body = host.ns.http("GET", "/status", port=HTTP_PORT, timeout=5.0)
                took = time.monotonic() - t if status == 200 else None
                if took is not None and isinstance(body, dict):
                    for p in body.get("peers", []):
                        if p.get("last_handshake"):
                            self.handshakes[name].add(p["last_handshake"])
            except (OSError, Exception):
                took = None
            self.api[name].append((t - self.t0, took))
            self.stop.wait(0.2)

    def _traffic(self, topo) -> None:
        # bound to every address: b's TUN device goes away with every kill
        server = iperf.Server(topo.b, None, 5201, one_off=False).start()
        try:
            while not self.stop.is_set():
                if not server.running:
                    server.stop()
                    server = iperf.Server(topo.b, None, 5201, one_off=False).start()
                left = self.t0 + self.duration - time.monotonic()
                if left < 2:
                    break
                self.iperf_starts += 1
                seg = int(min(left - 1, 20))          # 20 s segments: each reports what it moved
                client = iperf.Client(topo.a, TUN[1], port=5201, seconds=seg,
                                      extra=["-b", self.rate, "--connect-timeout", "2000"]).start()
                while client.running and not self.stop.is_set():
                    self.stop.wait(0.5)
                if client.running:
                    client.stop()
                with contextlib.suppress(Exception):
                    doc = client.result(timeout=10).report
                    got = int(doc.get("end", {}).get("sum_received", {}).get("bytes", 0))
                    self.iperf_bytes += got
                    self.iperf_segments.append({"t_end_s": round(time.monotonic() - self.t0, 1),
                                                "seconds": seg, "mbit_per_s": round(got * 8 / seg / 1e6, 1),
                                                "error": doc.get("error")})
                self.stop.wait(0.5)
        finally:
            server.stop()

    def _firewall(self, a: netns.DaemonProcess) -> None:
        i = 0
        while not self.stop.wait(self.firewall_every):
            i += 1
            try:
                status, body = a.api("PUT", "/firewall", FIREWALLS[i % 2], timeout=5.0)
                if status == 200:
                    self.fw_changes += 1
                else:
                    self.fw_errors.append(f"PUT /firewall -> {status}: {str(body)[:200]}")
            except OSError as exc:
                self.fw_errors.append(f"PUT /firewall: {exc}")

    # --------------------------------------------------------------- run
    def run(self) -> dict:
        work = Path(tempfile.mkdtemp(prefix="phantom-soak-"))
        res: dict = {"minutes": self.duration / 60, "path": self.path, "tunables": SOAK_TUNABLES,
                     "rate": self.rate, "kill_every_s": self.kill_every, "firewall_every_s": self.firewall_every}
        daemons: list[netns.DaemonProcess] = []
        threads: list[threading.Thread] = []
        socks: list[socket.socket] = []
        try:
            netns.sweep_stale()
            with netns.two_hosts() as topo:
                hosts = (topo.a, topo.b)
                keys, pubs = [], []
                for i in range(2):
                    d = work / "ab"[i]
                    d.mkdir(parents=True)
                    k = d / "private.key"
                    pubs.append(encode_key(public_key(write_private_key(k))))
                    keys.append(k)
                env = dict(os.environ)
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
                for i in range(2):
                    d = work / "ab"[i]
                    cfg = _config(d, keys[i], i, pubs[1 - i], hosts[1 - i].ip, self.log_level)
                    argv = ["--config", str(cfg)] + (["--fast"] if self.fast else [])
                    daemons.append(netns.DaemonProcess(hosts[i], argv, log_path=work / f"phantomd-{'ab'[i]}.log",
                                                       name=f"soak-{'ab'[i]}", env=env, cwd=str(REPO),
                                                       token_file=d / "state" / "token"))
                a, b = daemons
                for dmn in daemons:
                    dmn.start()
                for dmn in daemons:
                    dmn.wait_ready(30)
                if not topo.a.ns.ping(TUN[1], timeout=15):
                    raise RigError("the tunnel did not come up")
                echo = topo.b.udp_socket(bind=("0.0.0.0", ECHO_PORT))
                probe = topo.a.udp_socket(bind=("0.0.0.0", 0))
                socks += [echo, probe]
                self.t0 = time.monotonic()
                self.log(f"soak: {self.duration / 60:g} min, {self.path} path, namespaces {topo.a.name} / "
                         f"{topo.b.name}, logs in {work}")
                for target, args in ((self._echo, (echo,)), (self._probe, (probe,)),
                                     (self._scrape, ("a", topo.a)), (self._scrape, ("b", topo.b)),
                                     (self._traffic, (topo,)), (self._firewall, (a,))):
                    t = threading.Thread(target=target, args=args, daemon=True)
                    t.start()
                    threads.append(t)
                next_kill = self.t0 + self.kill_every
                next_sample = self.t0
                kill_sig = signal.SIGKILL
                last_report = self.t0
                while True:
                    now = time.monotonic()
                    if now >= self.t0 + self.duration:
                        break
                    if now >= next_sample:
                        ra, fa = _rss_fds(a.pid if a.running else None)
                        rb, fb = _rss_fds(b.pid if b.running else None)
                        self.samples.append({"t": round(now - self.t0, 1), "a_rss_kb": ra, "a_fds": fa,
                                             "b_rss_kb": rb, "b_fds": fb, "b_incarnation": self.incarnation})
                        next_sample += 1.0
                    if not a.running:
                        raise RigError(f"a exited ({a.returncode}): {first_error_line(a.log())}")
                    if now >= next_kill and now + self.kill_every / 2 < self.t0 + self.duration:
                        w = [now - self.t0, None]
                        self.windows.append(w)
                        b.kill(kill_sig, timeout=10)
                        time.sleep(1.0)
                        b.start()
                        b.wait_ready(30)
                        w[1] = time.monotonic() - self.t0 + self.grace
                        self.incarnation += 1
                        self.kills.append({"t": round(w[0], 1), "signal": signal.Signals(kill_sig).name,
                                           "restarted_in_s": round(w[1] - self.grace - w[0], 2)})
                        kill_sig = signal.SIGTERM if kill_sig == signal.SIGKILL else signal.SIGKILL
                        next_kill = time.monotonic() + self.kill_every
                    if now - last_report >= 30:
                        s = self.samples[-1]
                        self.log(f"  t={s['t']:.0f}s a: {s['a_rss_kb']} kB {s['a_fds']} fds; "
                                 f"b#{s['b_incarnation']}: {s['b_rss_kb']} kB {s['b_fds']} fds; "
                                 f"probes answered {len(self.replies)}/{self.sent}")
                        last_report = now
                    time.sleep(0.1)
                res["status_a"] = _peer_summary(a)
                res["status_b"] = _peer_summary(b)
                self.stop.set()
                for t in threads:
                    t.join(15)
                for dmn in daemons:
                    dmn.stop()
                res["logs"] = {dmn.name: _log_errors(dmn.log()) for dmn in daemons}
        finally:
            self.stop.set()
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
            for dmn in daemons:
                with contextlib.suppress(Exception):
                    dmn.stop()
            shutil.rmtree(work, ignore_errors=True)
        return self.report(res)

    # ------------------------------------------------------------ report
    def report(self, res: dict) -> dict:
        end = self.duration
        wins = [(s, e if e is not None else end) for s, e in self.windows]
        replies = [t - self.t0 for t in self.replies]
        stalls = []
        edges = [0.0] + replies + [end]
        for x, y in zip(edges, edges[1:]):
            if y - x > STALL and not any(x < we and y > ws for ws, we in wins):
                stalls.append({"from_s": round(x, 2), "to_s": round(y, 2), "gap_s": round(y - x, 2)})
        api_stalls = []
        for name, series in self.api.items():
            for t, took in series:
                in_win = name == "b" and any(ws <= t <= we for ws, we in wins)
                if (took is None or took > STALL) and not in_win:
                    api_stalls.append({"daemon": name, "t_s": round(t, 1),
                                       "seconds": None if took is None else round(took, 3)})
        # growth of a from the end of the first minute (first half if shorter)
        base_t = min(60.0, end / 2)
        base = [s for s in self.samples if base_t - 10 <= s["t"] <= base_t and s["a_rss_kb"]]
        last = [s for s in self.samples if s["t"] >= end - 10 and s["a_rss_kb"]]
        growth = {}
        if base and last:
            b_rss = max(s["a_rss_kb"] for s in base)
            l_rss = max(s["a_rss_kb"] for s in last)
            b_fd = max(s["a_fds"] for s in base)
            l_fd = max(s["a_fds"] for s in last)
            growth = {"from_s": base_t, "rss_kb": [b_rss, l_rss], "rss_growth": round((l_rss - b_rss) / b_rss, 4),
                      "fds": [b_fd, l_fd], "fd_growth": l_fd - b_fd}
        # b per incarnation
        b_inc: dict = {}
        for s in self.samples:
            if s["b_rss_kb"]:
                e = b_inc.setdefault(s["b_incarnation"], {"rss_kb_min": s["b_rss_kb"], "rss_kb_max": s["b_rss_kb"],
                                                          "fds_min": s["b_fds"], "fds_max": s["b_fds"]})
                e["rss_kb_min"] = min(e["rss_kb_min"], s["b_rss_kb"])
                e["rss_kb_max"] = max(e["rss_kb_max"], s["b_rss_kb"])
                e["fds_min"] = min(e["fds_min"], s["b_fds"])
                e["fds_max"] = max(e["fds_max"], s["b_fds"])
        lat = [took for series in self.api.values() for _t, took in series if took is not None]
        handshakes = len(self.handshakes["a"])
        res.update({
            "probes_sent": self.sent, "probes_answered": len(self.replies),
            "deliberate_outages": [[round(s, 1), round(e, 1)] for s, e in wins], "kills": self.kills,
            "stalls": stalls, "api_stalls": api_stalls,
            "api_latency_s": {"n": len(lat), "max": round(max(lat), 3) if lat else None,
                              "median": round(sorted(lat)[len(lat) // 2], 4) if lat else None},
            "firewall_changes": self.fw_changes, "firewall_errors": self.fw_errors[:10],
            "handshakes_seen_by_a": handshakes, "iperf_starts": self.iperf_starts, "iperf_gbytes": round(self.iperf_bytes / 1e9, 3),
            "iperf_segments": self.iperf_segments,
            "growth_a": growth, "b_incarnations": b_inc, "samples": self.samples,
        })
        failures = []
        if not growth:
            failures.append("not enough samples for the growth check")
        else:
            if growth["rss_growth"] > self.max_rss_growth:
                failures.append(f"a's RSS grew {growth['rss_growth']:.1%} after {base_t:.0f} s "
                                f"(bound {self.max_rss_growth:.0%})")
            if growth["fd_growth"] > self.max_fd_growth:
                failures.append(f"a's open fds grew by {growth['fd_growth']} (bound {self.max_fd_growth})")
        if stalls:
            failures.append(f"{len(stalls)} stall(s) > {STALL:.0f} s outside the kills: {stalls[:3]}")
        if api_stalls:
            failures.append(f"{len(api_stalls)} API answer(s) slower than {STALL:.0f} s or failed: {api_stalls[:3]}")
        for name, errs in (res.get("logs") or {}).items():
            if errs:
                failures.append(f"{name}: {len(errs)} ERROR/Traceback line(s), first: {errs[0]}")
        if self.fw_errors:
            failures.append(f"{len(self.fw_errors)} firewall replacement(s) failed: {self.fw_errors[0]}")
        expect = max(1, int(self.duration / SOAK_TUNABLES["rekey_after_time"] / 3))
        if handshakes < expect:
            failures.append(f"only {handshakes} handshakes seen by a (expected >= {expect})")
        res["failures"] = failures
        res["ok"] = not failures
        return res


def _peer_summary(d: netns.DaemonProcess) -> dict:
    try:
        st = d.api("GET", "/status", timeout=10).body
    except OSError as exc:
        return {"error": str(exc)}
    peers = st.get("peers", []) if isinstance(st, dict) else []
    p = peers[0] if peers else {}
    return {"state": p.get("state"), "rx_bytes": p.get("rx_bytes"), "tx_bytes": p.get("tx_bytes"),
            "sessions": p.get("sessions"),
            "drops": {k: v for k, v in (st.get("drops") or {}).items() if v} if isinstance(st, dict) else {}}


def _log_errors(text: str) -> list[str]:
    return [ln.strip()[:240] for ln in text.splitlines() if _LOG_ERROR.search(ln)]


def run_soak(minutes: float, **kw) -> dict:
    return Soak(minutes, **kw).run()


def summary(res: dict) -> str:
    g = res.get("growth_a") or {}
    lines = [f"soak {res['minutes']:g} min, {res['path']} path: {'OK' if res['ok'] else 'FAILED'}",
             f"  probes answered {res['probes_answered']}/{res['probes_sent']}; kills of b: {len(res['kills'])} "
             f"(restarted in {[k['restarted_in_s'] for k in res['kills']]} s); firewall replaced "
             f"{res['firewall_changes']} times; iperf3 starts {res['iperf_starts']}, "
             f"{res['iperf_gbytes']} GB received (Mbit/s per segment "
             f"{[x['mbit_per_s'] for x in res.get('iperf_segments', [])]}); handshakes seen by a "
             f"{res['handshakes_seen_by_a']} (distinct last_handshake times scraped)",
             f"  a (never restarted): RSS {g.get('rss_kb')} kB, growth {g.get('rss_growth')} after "
             f"{g.get('from_s')} s; fds {g.get('fds')} (+{g.get('fd_growth')})",
             "  b per incarnation (RSS kB min-max, fds min-max): " + ", ".join(
                 f"#{k}: {v['rss_kb_min']}-{v['rss_kb_max']} / {v['fds_min']}-{v['fds_max']}"
                 for k, v in sorted(res.get("b_incarnations", {}).items())),
             f"  stalls > 1 s outside kills: {len(res['stalls'])}; API: {res['api_latency_s']}, "
             f"stalls {len(res['api_stalls'])}"]
    every = max(1, len(res.get("samples", [])) // 12)
    lines.append("  t s   a RSS kB  a fds   b RSS kB  b fds")
    for s in res.get("samples", [])[::every]:
        lines.append(f"  {s['t']:5.0f}  {s['a_rss_kb'] or '-':>8}  {s['a_fds'] or '-':>5}  "
                     f"{s['b_rss_kb'] or '-':>8}  {s['b_fds'] or '-':>5}")
    for f in res["failures"]:
        lines.append(f"  FAILURE: {f}")
    return "\n".join(lines)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--path", choices=("fast", "reference"), default="fast")
    p.add_argument("--rate", default="20M", help="iperf3 -b (default 20M)")
    p.add_argument("--kill-every", type=float, default=30.0)
    p.add_argument("--firewall-every", type=float, default=3.0)
    p.add_argument("--grace", type=float, default=5.0)
    p.add_argument("--max-rss-growth", type=float, default=0.10)
    p.add_argument("--max-fd-growth", type=int, default=2)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    missing = netns.requirements_missing()
    if missing:
        print(f"bench/soak.py: {missing}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    netns.install_signal_handlers()
    started = _dt.datetime.now(_dt.timezone.utc)
    res = run_soak(a.minutes, path=a.path, rate=a.rate, kill_every=a.kill_every,
                   firewall_every=a.firewall_every, grace=a.grace, max_rss_growth=a.max_rss_growth,
                   max_fd_growth=a.max_fd_growth, log=lambda m: print(m, file=sys.stderr, flush=True))
    res["command"] = " ".join(getattr(sys, "orig_argv", sys.argv))
    res["started"] = started.isoformat()
    print(f"command: {res['command']}")
    print(f"date:    {started.strftime('%Y-%m-%d %H:%M:%S UTC')}")
    print(summary(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench/soak.py: interrupted, everything cleaned up", file=sys.stderr)
        sys.exit(130)
