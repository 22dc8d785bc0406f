#!/usr/bin/env python3
"""Make docs/dashboard.png: three namespaces, phantomd --fast in each, the
first peered with the other two; 25 s of iperf3 (TCP to n2, 50 Mbit/s UDP to
n3) while headless Chromium shows n1's dashboard through the Unix-socket
proxy.  Run as root:  .venv/bin/python docs/dashboard_screenshot.py"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from phantomlab import browser, netns  # noqa: E402
from phantomlab.nodes import make_node  # noqa: E402
from phantomlab.templates import HTTP_PORT, peer_entry, write_config  # noqa: E402


def main() -> int:
    out = REPO / "docs" / "dashboard.png"
    tmp = Path(tempfile.mkdtemp(prefix="phantom-shot-"))
    restore = netns.install_signal_handlers()
    daemons, procs = [], []
    try:
        with netns.lan(3) as topo:
            a, b, c = [make_node(tmp, "n%d" % (i + 1), i + 1, h) for i, h in enumerate(topo.host_list)]
            names = {"n1": "alice", "n2": "bob", "n3": "carol"}
            rules = {"rule": [
                {"direction": "in", "proto": "tcp", "dst_port": 22, "action": "drop", "comment": "no ssh in"},
                {"direction": "in", "proto": "udp", "dst_port": 7400, "action": "reject", "peer": "carol"},
                {"direction": "out", "proto": "any", "cidr": "10.99.0.0/24", "action": "accept"}]}
            def entry(n):
                e = peer_entry(n, mode="tun")
                e["name"] = names[n.name]
                return e
            write_config(a, mode="tun", peers=[entry(b), entry(c)], firewall=rules,
                         extra={"http_socket": str(tmp / "api.sock")})
            write_config(b, mode="tun", peers=[entry(a)])
            write_config(c, mode="tun", peers=[entry(a)])
            for n in (a, b, c):
                d = netns.DaemonProcess(n.host, ["--config", str(n.config), "--fast"],
                                        http_port=HTTP_PORT, name=n.name, log_path=tmp / (n.name + ".log"))
                daemons.append(d)
                d.start()
                d.wait_ready(15)
            for h in topo.host_list:
                h.ns.wait_addresses_ready()
            assert a.host.ns.ping(b.tun4, timeout=10) and a.host.ns.ping(c.tun4, timeout=10)
            procs.append(b.host.popen(["iperf3", "-s", "-1", "-B", b.tun4], stdout=subprocess.DEVNULL))
            procs.append(c.host.popen(["iperf3", "-s", "-1", "-B", c.tun4], stdout=subprocess.DEVNULL))
            prof = tmp / "chromium"
            prof.mkdir()
            driver = browser.make_driver(prof, 1400, 900)
            proxy = browser.UnixProxy(tmp / "api.sock")
            try:
                driver.get(proxy.url)
                token = (a.state_dir / "token").read_text().strip()
                driver.find_element("id", "token").send_keys(token)
                driver.find_element("id", "signin-button").click()
                time.sleep(1)
                procs.append(a.host.popen(["iperf3", "-c", b.tun4, "-t", "25"], stdout=subprocess.DEVNULL))
                procs.append(a.host.popen(["iperf3", "-c", c.tun4, "-u", "-b", "50M", "-t", "25", "-R"],
                                          stdout=subprocess.DEVNULL))
                s = c.host.ns.udp_socket()
                for i in range(4):
                    s.sendto(b"x", (a.tun4, 7400))
                s.close()
                time.sleep(24)
                driver.save_screenshot(str(out))
                print("wrote", out)
            finally:
                proxy.close()
                driver.quit()
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
        for d in daemons:
            d.stop()
        restore()
        shutil.rmtree(tmp, ignore_errors=True)      # keys and logs of this run
    return 0


if __name__ == "__main__":
    sys.exit(main())
