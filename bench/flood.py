"""Handshake-flood benchmark (issue 4): does an established tunnel keep its
throughput while a third host floods the responder with initiations?

  1. three namespaces on one LAN: a and b run phantomd (TUN), c is the attacker;
  2. iperf3 a -> b through the tunnel, unflooded (baseline);
  3. c sends handshake initiations with a valid mac1 (it knows b's public key,
     as any attacker may) from an unknown static key, at --rate per second;
     b answers them with cookie replies once it is under load;
  4. iperf3 a -> b again during the flood;
  5. a fresh handshake a -> b during the flood must still complete (it goes
     through the cookie round trip);
  6. prints both throughputs, their ratio, and b's handshake drop counters.

Run:  .venv/bin/python bench/flood.py [--seconds 10] [--rate 640] [--fast]
The normal handshake rate of a peer is one per two minutes; the default
flood rate, 640/s, is ten times the rate (64/s) above which phantomd
declares itself under load and demands cookies.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phantom import crypto, wire  # noqa: E402
from phantomlab import iperf as lab_iperf  # noqa: E402
from phantomlab import netns  # noqa: E402
from phantom.protocols import tai64n  # noqa: E402
from phantom.protocols.phantom import cookie, handshake  # noqa: E402
from phantom.control.keys import encode_key, public_key, write_private_key  # noqa: E402

TUN = {"a": "10.99.0.1", "b": "10.99.0.2"}


def write_cfg(d: Path, me: str, other: str, other_pub: str, other_ip: str, key: Path) -> Path:
    cfg = d / "phantom.toml"
    cfg.write_text(f"""[interface]
private_key_file = "{key}"
listen_port = 9000
mode = "tun"
device = "phantom0"
addresses = ["{TUN[me]}/24"]
state_dir = "{d / 'state'}"

[[peer]]
name = "{other}"
public_key = "{other_pub}"
endpoint = "{other_ip}:9000"
allowed_ips = ["{TUN[other]}/32"]
""")
    return cfg


def iperf(topo, seconds: int) -> float:
    r = lab_iperf.run(topo.hosts["a"], topo.hosts["b"], TUN["b"], seconds=seconds, attempts=50)
    if not r.ok:
        raise RuntimeError("iperf3 failed: %s" % r.stdout[-300:])
    return r.received_bps


class Flood(threading.Thread):
    """Initiations with valid mac1 from an unknown key, at a fixed rate."""

    def __init__(self, host, target: tuple, responder_pub: bytes, rate: float):
        super().__init__(daemon=True)
        self.sock = host.ns.udp_socket()
        self.target, self.rate = target, rate
        self.stop_flag = threading.Event()
        self.sent = 0
        self.cookies = 0
        priv = crypto.x25519_private()
        gen = cookie.CookieGenerator(responder_pub, time.monotonic)
        clock = tai64n.Tai64nClock()
        # A pool of distinct, well-formed initiations (building one costs two DHs).
        self.pool = [handshake.create_initiation(priv, responder_pub, crypto.random_u32(), clock.now(),
                                                 crypto.random_bytes(16), gen)[0] for _ in range(256)]

    def run(self):
        self.sock.setblocking(False)
        interval = 1.0 / self.rate
        nxt = time.monotonic()
        while not self.stop_flag.is_set():
            now = time.monotonic()
            if now < nxt:
                time.sleep(min(nxt - now, 0.01))
                continue
            try:
                self.sock.sendto(self.pool[self.sent % len(self.pool)], self.target)
                self.sent += 1
            except BlockingIOError:
                pass
            try:
                while True:
                    data = self.sock.recv(2048)
                    if data[:1] == bytes([wire.MessageType.COOKIE_REPLY]):
                        self.cookies += 1
            except BlockingIOError:
                pass
            nxt += interval

    def stop(self):
        self.stop_flag.set()
        self.join(5)
        self.sock.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rate", type=float, default=640.0, help="initiations per second (default 640)")
    p.add_argument("--fast", action="store_true", help="phantomd --fast")
    p.add_argument("--port", type=int, default=9000,
                   help="UDP port flooded on b (default 9000, phantomd; a closed port measures what "
                        "the attack traffic costs this 2-core machine without phantomd handling it)")
    args = p.parse_args(argv)
    if shutil.which("iperf3") is None:
        print("iperf3 is not installed", file=sys.stderr)
        return 2
    netns.install_signal_handlers()
    work = Path(tempfile.mkdtemp(prefix="phantom-flood-"))
    daemons = []
    try:
        with netns.lan(3) as topo:
            a, b, c = topo.hosts["a"], topo.hosts["b"], topo.hosts["c"]
            keys, pubs = {}, {}
            for n in "ab":
                (work / n).mkdir()
                keys[n] = work / n / "private.key"
                pubs[n] = public_key(write_private_key(keys[n]))
            for n, other in (("a", "b"), ("b", "a")):
                cfg = write_cfg(work / n, n, other, encode_key(pubs[other]), topo.hosts[other].ip, keys[n])
                d = netns.DaemonProcess(topo.hosts[n], ["--config", str(cfg), "--log-level", "warning"]
                                        + (["--fast"] if args.fast else []),
                                        log_path=work / ("%s.log" % n), name="phantomd-" + n,
                                        token_file=work / n / "state" / "token")
                daemons.append(d.start())
            for d in daemons:
                d.wait_ready(15)
            if not a.ns.ping(TUN["b"], timeout=10):
                print("tunnel did not come up", file=sys.stderr)
                return 1
            base = iperf(topo, args.seconds)
            flood = Flood(c, (b.ip, args.port), pubs["b"], args.rate)
            flood.start()
            time.sleep(1.0)
            flooded = iperf(topo, args.seconds)
            # A new handshake during the flood: close and reopen a -> b.
            daemons[0].api("POST", "/close/b")
            t0 = time.monotonic()
            code, body = daemons[0].api("POST", "/open/%s:9000" % b.ip, timeout=30)
            reopen = time.monotonic() - t0
            flood.stop()
            code_s, status = daemons[1].api("GET", "/status")
            drops = status["handshake_drops"]
            rate = flood.sent / (args.seconds + 1.0 + reopen)
            print("machine: %d cores; data path: %s" % (len(__import__("os").sched_getaffinity(0)),
                                                      "fast" if args.fast else "reference"))
            print("command: %s" % " ".join(sys.argv))
            print("iperf3 TCP unflooded:   %7.1f Mbit/s" % (base / 1e6))
            print("iperf3 TCP under flood: %7.1f Mbit/s  (%.0f%% of unflooded)" % (flooded / 1e6,
                                                                                 100 * flooded / base))
            print("flood: %d initiations sent (~%.0f/s), %d cookie replies received" % (flood.sent, rate,
                                                                                       flood.cookies))
            print("b's handshake drops: %s" % json.dumps(drops, sort_keys=True))
            print("re-handshake a -> b during the flood: HTTP %d in %.2fs (state %s)"
                  % (code, reopen, body.get("state") if isinstance(body, dict) else body))
            return 0 if code == 200 else 1
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
