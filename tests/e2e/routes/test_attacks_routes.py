"""The attack suite for "no peer may take another's traffic" (issue 18):
the hijack attempts of items 1, 8 and 10 and the reload flip of item 2,
replayed against real daemons in namespaces, on both data paths.

It asserts the property, not the mechanism: no packet that alice sends to
one peer's allowed IPs ever reaches another peer's TUN device.  Every TUN
but alice's is captured (tcpdump, filtered to alice's packets that are not
that peer's), and each capture must stay empty, while the owners keep
receiving their own traffic.

Hosts (one LAN): a = alice (and the key directory), b = ysite
(10.99.0.128/25, fd99::100/120 at alice), c = csite (10.0.0.0/8, fd99::/64
at alice: the covering prefixes), d = xray, the attacker, a peer of nobody
at alice, with a key, a daemon and records in the directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from phantomlab import netns
from phantom.keys import write_private_key
from phantomlab.nodes import make_node, start
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DIR_PORT = 4568
YSITE = ["10.99.0.128/25", "fd99::100/120"]
YSITE_HOSTS = ["10.99.0.%d/32" % i for i in range(129, 255)] + ["fd99::100/120"]
CSITE = ["10.0.0.0/8", "fd99::/64"]
# alice's packets that a TUN must never see: (device's node, BPF filter)
NOT_YSITE = "(src host 10.99.0.1 and not dst net 10.99.0.128/25) or (src host fd99::1 and not dst net fd99::100/120)"
YSITES = "(src host 10.99.0.1 and dst net 10.99.0.128/25) or (src host fd99::1 and dst net fd99::100/120)"
ANY_OF_ALICE = "src host 10.99.0.1 or src host fd99::1"

_FLOOD = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    try:
        s.sendto(b"ysite only", ("10.99.0.130", 9))
        n += 1
    except OSError:
        time.sleep(0.001)
print(n)
"""


@pytest.fixture
def lan4():
    with netns.lan(4) as topo:
        yield topo


@pytest.fixture
def public_dir():
    """alice re-reads her config after dropping to nobody: it lives here."""
    d = Path(tempfile.mkdtemp(prefix="phantom-attacks-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _cli(host, *args):
    return host.run([sys.executable, "-m", "phantom.cli", *args], check=False, timeout=30)


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_no_packet_for_one_peer_reaches_another_peers_tun(lan4, daemon_factory, sniffer, tmp_path,
                                                         public_dir, datapath):
    a_h, b_h, c_h, d_h = (lan4.hosts[r] for r in "abcd")
    url = "http://%s:%d" % (a_h.ip, DIR_PORT)
    daemon_factory(a_h, ["directory", "serve", "--listen", a_h.ip, "--port", str(DIR_PORT),
                         "--db", str(tmp_path / "dir.sqlite")],
                   executable=[sys.executable, "-m", "phantom.cli"], http_port=DIR_PORT,
                   http_host=a_h.ip, name="directory")
    signer_key = tmp_path / "signer.key"
    write_private_key(signer_key)
    signer = _cli(a_h, "directory", "signer-key", "--private-key", str(signer_key)).stdout.strip()
    alice = make_node(tmp_path, "alice", 1, a_h)
    ysite = make_node(tmp_path, "ysite", 130, b_h)
    csite = make_node(tmp_path, "csite", 3, c_h)
    xray = make_node(tmp_path, "xray", 200, d_h)
    alice.config = public_dir / "alice.toml"

    def configure_alice(ysite_nets):
        write_config(alice, mode="tun", tunables=FAST_TUNABLES, extra={"directory": url,
                                                                     "trusted_signers": [signer]},
                     peers=[{"name": "ysite", "public_key": ysite.pub, "allowed_ips": ysite_nets,
                             "endpoint": "%s:%d" % (b_h.ip, UDP_PORT)},
                            {"name": "csite", "public_key": csite.pub, "allowed_ips": CSITE,
                             "endpoint": "%s:%d" % (c_h.ip, UDP_PORT)}])
        alice.config.chmod(0o644)

    configure_alice(YSITE)
    for n in (ysite, csite, xray):
        write_config(n, mode="tun", tunables=FAST_TUNABLES,
                     peers=[{"name": "alice", "public_key": alice.pub, "allowed_ips": ["10.99.0.1/32", "fd99::1/128"],
                             "endpoint": "%s:%d" % (a_h.ip, UDP_PORT)}])
        start(daemon_factory, n)
    start(daemon_factory, alice, datapath)
    captures = {"ysite": sniffer(b_h, "phtun0", NOT_YSITE, name="ysite"),
                "csite": sniffer(c_h, "phtun0", YSITES, name="csite"),
                "xray": sniffer(d_h, "phtun0", ANY_OF_ALICE, name="xray")}

    def traffic():
        """alice pings into every prefix: ysite's (where xray's claims lie), csite's.
        The six pings run at once: most of them get no answer (nobody has those
        addresses) and would each wait out their second one after the other."""
        addrs = ("10.99.0.200", "10.99.0.130", "10.99.0.150", "fd99::150", "fd99::130", "10.99.0.3")
        with ThreadPoolExecutor(len(addrs)) as pool:
            list(pool.map(lambda addr: a_h.ping(addr, timeout=1), addrs))

    def xray_publishes(allowed, endpoint=None):
        out = _cli(d_h, "directory", "publish", "--directory", url, "--private-key", str(xray.keyfile),
                   "--name", "xray", "--endpoint", endpoint or "%s:%d" % (d_h.ip, UDP_PORT),
                   "--allowed-ips", ",".join(allowed))
        assert out.returncode == 0, out.stderr

    assert a_h.ping(ysite.tun4, timeout=5) and a_h.ping(csite.tun4, timeout=5)

    # item 1: a self-signed record inside ysite's prefixes, opened by name
    xray_publishes(["10.99.0.200/32", "fd99::150/128"])
    alice.api("POST", "/open/xray", timeout=30)
    traffic()
    # item 1: endorsed for its name, half of ysite's /25; xray knocks
    xray_publishes(["10.99.0.128/26"])
    assert _cli(a_h, "directory", "endorse", "--directory", url, "--private-key", str(signer_key),
                "--public-key", xray.pub, "--name", "xray").returncode == 0
    xray.api("POST", "/open/alice", timeout=30)
    traffic()
    # item 8: an open of xray's key with ysite's /32
    alice.api("POST", "/open/%s:%d" % (d_h.ip, UDP_PORT),
              {"public_key": xray.pub, "allowed_ips": ["10.99.0.130/32"]}, timeout=30)
    traffic()
    # item 10: a record claiming ysite's endpoint (and an address of ysite's)
    xray_publishes(["10.99.0.131/32"], endpoint="%s:%d" % (b_h.ip, UDP_PORT))
    alice.api("POST", "/open/%s:%d" % (b_h.ip, UDP_PORT), timeout=30)
    traffic()

    # item 2: reload flips ysite between its /25 and 126 /32s while alice floods 10.99.0.130
    before = alice.peer("ysite")["tx_packets"]
    flood = a_h.popen([sys.executable, "-c", _FLOOD, "30"], stdout=subprocess.PIPE)
    try:
        flips, deadline = 0, time.monotonic() + 25
        while flips < 40 and time.monotonic() < deadline:
            configure_alice(YSITE_HOSTS if flips % 2 == 0 else YSITE)
            code, body = alice.api("POST", "/reload", timeout=15)
            assert code == 200 and body["changed"] == {"ysite": ["allowed_ips"]}, body
            flips += 1
    finally:
        flood.kill()
        flood.wait(10)
    assert flips == 40, "40 reloads in 25 s"
    assert alice.peer("ysite")["tx_packets"] - before > 1000, "the flood went to ysite"

    traffic()
    assert a_h.ping(ysite.tun4, timeout=5) and a_h.ping(ysite.tun6, timeout=5), "ysite keeps its traffic"
    assert a_h.ping(csite.tun4, timeout=5) and a_h.ping(csite.tun6, timeout=5), "csite keeps its traffic"
    leaks = {name: cap.stop() for name, cap in captures.items()}
    assert {name: len(p) for name, p in leaks.items()} == {"ysite": 0, "csite": 0, "xray": 0}, \
        "alice's packets reached the wrong peer's TUN"
