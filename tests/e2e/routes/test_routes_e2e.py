"""Who may route what, end to end in namespaces (issue 18, items 1, 10, 16):
real phantomd processes, a real directory server, records published and
endorsed with the CLI, pings through real TUN devices.

* item 1: a directory record never takes part of another peer's prefix,
  endorsed or not, and its prefixes must lie inside directory_allowed_ips;
* item 10: an endpoint in the directory is a claim, never an identity: an
  anonymous record claiming a peer's endpoint does not make `open IP:PORT`
  use its key;
* item 16: a route that cannot be installed (a prefix the host already
  routes through another device) refuses the start, and the reload, naming
  it.  (A full tunnel beside the default route is policy routing now:
  test_full_tunnel.py.)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from phantom.keys import encode_key, public_key, write_private_key
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DIR_PORT = 4568


def cli(host, *args, check=True):
    out = host.run([sys.executable, "-m", "phantom.cli", *args], check=False, timeout=30)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def directory(daemon_factory, host, tmp_path):
    daemon_factory(host, ["directory", "serve", "--listen", host.ip, "--port", str(DIR_PORT),
                          "--db", str(tmp_path / "dir.sqlite")],
                   executable=[sys.executable, "-m", "phantom.cli"], http_port=DIR_PORT,
                   http_host=host.ip, name="directory")
    return "http://%s:%d" % (host.ip, DIR_PORT)


def publish(node, url, name, endpoint, allowed, keyfile=None):
    cli(node.host, "directory", "publish", "--directory", url, "--private-key", str(keyfile or node.keyfile),
        "--name", name, "--endpoint", endpoint, "--allowed-ips", ",".join(allowed))


def peer_of(node, name):
    for p in node.status()["peers"]:
        if p["name"] == name:
            return p
    return None


def log_text(node):
    return node.daemon.log_path.read_text(errors="replace")


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_directory_record_never_takes_part_of_another_peers_prefix(lan3, daemon_factory, tmp_path,
                                                                     datapath):
    """Alice has ysite (10.99.0.128/25, fd99::100/120).  X publishes a record
    inside them: `phantom open xray` is refused (409) and X's TUN never sees
    alice's packets for ysite; endorsed for its name, X claims half of
    ysite's prefix and is not admitted; endorsed with a prefix outside what
    alice accepts from the directory, X is admitted without it."""
    a_host, b_host, c_host = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    url = directory(daemon_factory, a_host, tmp_path)
    signer_key = tmp_path / "signer.key"
    write_private_key(signer_key)
    signer = cli(a_host, "directory", "signer-key", "--private-key", str(signer_key)).stdout.strip()
    alice = make_node(tmp_path, "alice", 1, a_host)
    ysite = make_node(tmp_path, "ysite", 130, b_host)          # 10.99.0.130, fd99::130
    xray = make_node(tmp_path, "xray", 200, c_host)            # 10.99.0.200, fd99::200
    ys_nets = ["10.99.0.128/25", "fd99::100/120"]
    write_config(alice, mode="tun", tunables=FAST_TUNABLES,
                 peers=[{"name": "ysite", "public_key": ysite.pub, "allowed_ips": ys_nets,
                         "endpoint": "%s:%d" % (b_host.ip, UDP_PORT)}],
                 extra={"directory": url, "trusted_signers": [signer]})
    for n in (ysite, xray):
        write_config(n, mode="tun", tunables=FAST_TUNABLES,
                     peers=[{"name": "alice", "public_key": alice.pub, "allowed_ips": ["10.99.0.1/32", "fd99::1/128"],
                             "endpoint": "%s:%d" % (a_host.ip, UDP_PORT)}])
        start(daemon_factory, n)
    start(daemon_factory, alice, datapath)

    # 1. unendorsed: a /32 and a /128 inside ysite's prefixes
    publish(xray, url, "xray", "%s:%d" % (c_host.ip, UDP_PORT), ["10.99.0.200/32", "fd99::150/128"])
    code, body = alice.api("POST", "/open/xray", timeout=30)
    assert code == 409, body
    assert "10.99.0.200/32 overlaps peer ysite's 10.99.0.128/25" in body["error"], body
    assert peer_of(alice, "xray") is None
    assert "directory record of xray" in log_text(alice) and "refused" in log_text(alice)
    assert not a_host.ping("10.99.0.200", timeout=2)           # ysite's: xray never answers it
    assert peer_of(xray, "alice")["rx_packets"] == 0, "nothing of alice's reached xray"

    # 2. endorsed for its name: half of ysite's /25
    publish(xray, url, "xray", "%s:%d" % (c_host.ip, UDP_PORT), ["10.99.0.128/26"])
    cli(a_host, "directory", "endorse", "--directory", url, "--private-key", str(signer_key),
        "--public-key", xray.pub, "--name", "xray")
    code, body = xray.api("POST", "/open/alice", timeout=30)
    assert code == 504, body                                     # alice never answers it
    assert peer_of(alice, "xray") is None, "an endorsement vouches for a name, not for addresses"
    assert "endorsed key not admitted" in log_text(alice)
    assert a_host.ping(ysite.tun4, timeout=5), "10.99.0.130 still reaches ysite"
    assert peer_of(xray, "alice")["rx_packets"] == 0

    # 3. endorsed, outside what alice takes from the directory: admitted without it
    publish(xray, url, "xray", "%s:%d" % (c_host.ip, UDP_PORT), ["192.168.77.0/24", "10.99.0.60/32"])
    time.sleep(2.1)                                              # the endorsement check is per key every 2 s
    code, body = xray.api("POST", "/open/alice", timeout=30)
    assert code == 200 and body["state"] == "established", body
    x = wait_for(lambda: peer_of(alice, "xray"), what="xray admitted")
    assert x["allowed_ips"] == ["10.99.0.60/32"], "192.168.77.0/24 is outside alice's subnets"
    assert "left out: outside the prefixes this node accepts from the directory" in log_text(alice)
    assert a_host.ping(ysite.tun4, timeout=5)


def test_open_by_endpoint_never_takes_a_key_from_a_directory_claim(lan3, daemon_factory, tmp_path):
    """ysite publishes its record; an anonymous key publishes another record
    claiming ysite's endpoint (and a prefix).  `open IP:PORT` used to take
    whichever record the listing gave first (504, the stranger's allowed IPs
    installed).  Now the key comes only from the config or a session proved
    at that endpoint: before, a clear 400; after opening ysite by name, the
    endpoint means ysite."""
    a_host, b_host = lan3.hosts["a"], lan3.hosts["b"]
    url = directory(daemon_factory, a_host, tmp_path)
    alice = make_node(tmp_path, "alice", 1, a_host)
    ysite = make_node(tmp_path, "ysite", 2, b_host)
    ys_ep = "%s:%d" % (b_host.ip, UDP_PORT)
    write_config(alice, mode="tun", peers=[], tunables=FAST_TUNABLES, extra={"directory": url})
    write_config(ysite, mode="tun", tunables=FAST_TUNABLES,
                 peers=[{"name": "alice", "public_key": alice.pub, "allowed_ips": ["10.99.0.1/32"]}],
                 extra={"directory": url, "name": "ysite", "endpoints": [ys_ep]})
    start(daemon_factory, ysite)
    start(daemon_factory, alice)
    wait_for(lambda: cli(a_host, "directory", "lookup", "ysite", "--directory", url, check=False).returncode == 0,
             what="ysite published")
    # the claimant: a key whose record lists first (the listing is in key order)
    while True:
        stranger = tmp_path / ("stranger%d.key" % time.monotonic_ns())
        raw = write_private_key(stranger)
        spub = encode_key(public_key(raw))
        if spub < ysite.pub:                    # the client sorts listings by base64 key
            break
    cli(a_host, "directory", "publish", "--directory", url, "--private-key", str(stranger),
        "--name", "zz", "--endpoint", ys_ep, "--allowed-ips", "10.99.0.77/32")
    code, body = alice.api("POST", "/open/" + ys_ep, timeout=30)
    assert code == 400, body
    assert "claim, not an identity" in body["error"]
    assert [p["public_key"] for p in alice.status()["peers"]] == [], "no key taken from a claim"
    code, body = alice.api("POST", "/open/ysite", timeout=30)
    assert code == 200 and body["state"] == "established", body
    code, body = alice.api("POST", "/open/" + ys_ep, timeout=30)
    assert code == 200 and body["public_key"] == ysite.pub and body.get("already_established"), body
    assert spub not in {p["public_key"] for p in alice.status()["peers"]}


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_route_that_cannot_be_installed_refuses_the_start_and_the_reload(two_hosts, daemon_factory,
                                                                           tmp_path, datapath):
    """A prefix the host already routes through eth0: adding it into phtun0
    fails with "File exists", which was swallowed while the log said "route
    ... via phtun0" (the traffic then left outside the tunnel).  The start
    now fails naming the route; a reload that would need such a route is
    refused whole."""
    a, b = two_hosts.a, two_hosts.b
    a.ns.ip("route", "add", "10.77.0.0/16", "via", b.ip, "dev", "eth0")
    node = make_node(tmp_path, "n1", 1, a)
    other = make_node(tmp_path, "n2", 2, b)
    full = {"name": "n2", "public_key": other.pub, "endpoint": "%s:%d" % (b.ip, UDP_PORT),
            "allowed_ips": ["10.77.0.0/16", "fd77::/64"]}
    write_config(node, mode="tun", peers=[full])
    start(daemon_factory, node, datapath, wait=False)
    deadline = time.monotonic() + 15
    while node.daemon.running and time.monotonic() < deadline:
        time.sleep(0.1)
    log = log_text(node)
    assert not node.daemon.running, "phantomd started although 10.77.0.0/16 is not routed into its device"
    assert node.daemon.returncode != 0
    assert "cannot route 10.77.0.0/16 into phtun0" in log and "eth0" in log, log
    assert "route 10.77.0.0/16 via" not in log
    assert "eth0" in a.run(["ip", "-4", "route", "show", "10.77.0.0/16"]).stdout   # untouched

    # a working daemon; a reload that would need the full tunnel is refused whole
    node2 = make_node(tmp_path, "n3", 1, a)
    public = Path(tempfile.mkdtemp(prefix="phantom-routes-"))   # readable by the daemon's user
    try:
        public.chmod(0o755)
        node2.config = public / "n3.toml"
        ok = dict(full, allowed_ips=["10.99.0.2/32"])
        write_config(node2, mode="tun", peers=[ok])
        node2.config.chmod(0o644)
        start(daemon_factory, node2, datapath)
        write_config(node2, mode="tun", peers=[full, {"name": "n4", "public_key": node.pub,
                                                     "allowed_ips": ["10.99.0.4/32"]}])
        code, body = node2.api("POST", "/reload")
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert code == 400, body
    assert "peer[0].allowed_ips[0]" in body["error"] and "does not route 10.77.0.0/16 into phtun0" in body["error"]
    (p,) = node2.status()["peers"]
    assert p["name"] == "n2" and p["allowed_ips"] == ["10.99.0.2/32"], "nothing changed"
