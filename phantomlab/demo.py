"""`phantom demo`: Phantom's main job, end to end, in two throw-away namespaces.

  1. two network namespaces joined by a veth pair (10.201.0.1 <-> 10.201.0.2);
  2. a key pair and a config for each side, peered with each other;
  3. a phantomd in each namespace with a TUN device (10.99.0.1 / 10.99.0.2);
  4. ping through the tunnel, then a 5-second iperf3 TCP run;
  5. the result printed, and everything removed on exit (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from phantom.keys import encode_key, public_key, write_private_key

from . import iperf, netns

TUN = ("10.99.0.1", "10.99.0.2")


def _config(d: Path, key: Path, me: int, other_pub: str, other_ip: str, mode: str) -> Path:
    cfg = d / "phantom.toml"
    cfg.write_text(f"""[interface]
private_key_file = "{key}"
listen_port = 9000
http_port = 4567
mode = "{mode}"
device = "phantom0"
addresses = ["{TUN[me]}/24"]
state_dir = "{d / 'state'}"

[[peer]]
name = "{'b' if me == 0 else 'a'}"
public_key = "{other_pub}"
endpoint = "{other_ip}:9000"
allowed_ips = ["{TUN[1 - me]}/32"]
""")
    return cfg


def run(seconds: int, fast: bool, keep_logs: bool) -> int:
    missing = netns.requirements_missing()
    if missing:
        print("phantom demo: %s" % missing, file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("phantom demo: iperf3 is not installed (run setup.sh)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="phantom-demo-"))
    daemons = []
    try:
        with netns.two_hosts() as topo:
            hosts = (topo.a, topo.b)
            keys, pubs = [], []
            for i in range(2):
                d = work / "ab"[i]
                d.mkdir()
                k = d / "private.key"
                pubs.append(encode_key(public_key(write_private_key(k))))
                keys.append(k)
            for i in range(2):
                cfg = _config(work / "ab"[i], keys[i], i, pubs[1 - i], hosts[1 - i].ip, "tun")
                argv = ["--config", str(cfg)] + (["--fast"] if fast else [])
                # their runtime records (phantom/runtime.py) go with the rest of the demo
                env = dict(os.environ, PHANTOM_RUNTIME_DIR=str(work / "run"))
                d = netns.DaemonProcess(hosts[i], argv, log_path=work / ("phantomd-%s.log" % "ab"[i]),
                                        name="phantomd-" + "ab"[i], env=env)
                daemons.append(d.start())
            for d in daemons:
                d.wait_ready(15)
            print("phantomd up in %s and %s (%s data path)" % (topo.a.name, topo.b.name,
                                                                "fast" if fast else "reference"))
            t0 = time.monotonic()
            if not topo.a.ns.ping(TUN[1], timeout=10):
                print("ping %s through the tunnel: no answer" % TUN[1])
                return 1
            print("ping %s through the tunnel: ok (first answer after %.0f ms, handshake included)"
                  % (TUN[1], (time.monotonic() - t0) * 1000))
            out = iperf.run(topo.a, topo.b, TUN[1], seconds=seconds, attempts=50)
            if not out.ok:
                print("iperf3 failed: %s" % (out.stdout[-500:] or out.error))
                return 1
            print("iperf3 TCP, %ds, one stream through the encrypted tunnel: %.0f Mbit/s received"
                  % (seconds, out.received_bps / 1e6))
            code, status = daemons[0].api("GET", "/status")
            peer = status["peers"][0]
            print("peer %s: %s, rx %d packets, tx %d packets" % (peer["name"], peer["state"],
                                                               peer["rx_packets"], peer["tx_packets"]))
            return 0
    finally:
        for d in daemons:
            d.stop()
        if keep_logs:
            print("logs kept in %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="phantom demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5, help="iperf3 duration (default 5)")
    p.add_argument("--fast", action="store_true", help="run phantomd with the Cython fast path")
    p.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs and configs")
    args = p.parse_args(argv)
    netns.install_signal_handlers()
    return run(args.seconds, args.fast, args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
