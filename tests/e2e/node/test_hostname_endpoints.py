"""Endpoints given as DNS names, resolved by glibc's real resolver inside the
lab, two ways: /etc/netns/<ns>/hosts (``ip netns exec`` mounts it over
/etc/hosts for the daemon it starts) names the server, or a DNS server
(phantom's own, ``phantomlab.dnsd``) on the client namespace's loopback
answers for it; /etc/netns/<ns>/resolv.conf points DNS at that loopback, so
no query ever leaves the namespace.  Both data paths.

* a client configured with ``endpoint = "server.lab.test:9000"`` starts
  although the name does not resolve yet (ready, counted unresolved), and
  comes up once the name appears, without a restart;
* the server moves to another address and the name with it: the client
  follows within the re-resolve period, without a restart;
* ``phantom open server.lab.test:9000``: looked up at once, followed after;
  a name that does not resolve is a clear error;
* a road-warrior wg-quick file (the server as a host name, a full tunnel,
  DNS, Table, PostUp/PostDown) imported with ``phantom wg import`` reaches
  stock wireguard-go.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from phantom import crypto
from phantom.keys import encode_key
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import UDP_PORT, peer_entry, write_config
from phantomlab.wggo import WG_PORT, keypair

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

NAME = "server.lab.test"
# short timers: a stale handshake after 2 s, a lookup every second then
TUNABLES = {"reresolve_interval": 1.0, "reresolve_after": 2.0, "resolve_timeout": 3.0,
            "rekey_timeout": 1.0, "keepalive_timeout": 2.0, "handshake_jitter": 0.1,
            "rekey_attempt_time": 4.0, "dead_retry_interval": 2.0, "timer_tick": 0.05}


@pytest.fixture
def netns_etc():
    """``write(host, name, text)``: /etc/netns/<host's ns>/<name>, written in
    place (the same inode: a running daemon's bind mount sees the change);
    every file and directory made here is removed afterwards, even on failure."""
    parent = Path("/etc/netns")
    made_parent = not parent.exists()
    files: list = []
    dirs: list = []

    def write(host, name, text):
        d = parent / host.ns.name                # the namespace's name is this run's own
        if not d.exists():
            d.mkdir(parents=True)
            dirs.append(d)
        f = d / name
        if f not in files:
            files.append(f)
        with open(f, "r+" if f.exists() else "w") as fh:
            fh.seek(0)
            fh.write(text)
            fh.truncate()
        f.chmod(0o644)                           # the daemon reads it after dropping to nobody

    yield write
    for f in files:
        f.unlink(missing_ok=True)
    for d in dirs:
        d.rmdir()
    if made_parent:
        try:
            parent.rmdir()
        except OSError:
            pass


def _hosts(ip=None) -> str:
    return "127.0.0.1 localhost\n" + ("%s %s\n" % (ip, NAME) if ip else "")


NO_DNS = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"   # the namespace's own loopback


def _metric(node, name, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    code, text = node.api("GET", "/metrics")
    assert code == 200
    found = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, "no metric %s %s" % (name, labels)
    return sum(found)


class HostsFile:
    """The name in /etc/netns/<a>/hosts."""

    def __init__(self, netns_etc, host):
        self.write, self.host = netns_etc, host
        netns_etc(host, "resolv.conf", NO_DNS)
        netns_etc(host, "hosts", _hosts())

    def point(self, ip):
        self.write(self.host, "hosts", _hosts(ip))


class DnsZone:
    """The name served by phantom.dns (phantomlab.dnsd) on 127.0.0.1:53 in
    the client's namespace, its resolv.conf pointing there."""

    def __init__(self, netns_etc, host, tmp_path, request):
        from phantomlab.dnsd import Dnsd
        netns_etc(host, "resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
        netns_etc(host, "hosts", _hosts())
        self.dnsd = Dnsd(host, ["--domain", NAME.split(".", 1)[1], "--listen", "127.0.0.1",
                                "--ipv4-prefix", "10.201.0.0/24", "--ttl", "1"],
                         tmp_path / "dnsd.log").start()
        request.addfinalizer(self.dnsd.stop)

    def point(self, ip):
        assert self.dnsd.request({"op": "set", "name": NAME.split(".", 1)[0], "ipv4": [ip]})["ok"]


@pytest.mark.parametrize("resolver", ["hosts", "dns"])
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_client_follows_its_servers_name(two_hosts, daemon_factory, tmp_path, netns_etc, request,
                                         datapath, resolver):
    a, b = two_hosts.a, two_hosts.b
    client, server = make_node(tmp_path, "client", 1, a), make_node(tmp_path, "server", 2, b)
    # the name does not resolve yet
    names = HostsFile(netns_etc, a) if resolver == "hosts" else DnsZone(netns_etc, a, tmp_path, request)
    entry = peer_entry(server, mode="tun", keepalive=1)
    entry["endpoint"] = "%s:%d" % (NAME, UDP_PORT)
    write_config(client, mode="tun", peers=[entry], tunables=TUNABLES)
    write_config(server, mode="tun", peers=[peer_entry(client, mode="tun", endpoint=False)],
                 tunables=TUNABLES)
    start(daemon_factory, server, datapath)
    start(daemon_factory, client, datapath)         # ready although the name does not resolve

    # (the API answers before the start-up lookups end: wait for the first failure)
    p = wait_for(lambda: (lambda p: p if p["resolved"]["error"] else None)(client.peer("server")),
                 timeout=20, what="the first lookup's failure")
    assert p["endpoint_name"] == "%s:%d" % (NAME, UDP_PORT) and p["endpoint"] is None
    assert p["resolved"]["addresses"] == []
    assert _metric(client, "phantom_endpoint_unresolved") == 1
    assert _metric(client, "phantom_endpoint_lookups_total", result="failed") >= 1
    assert not a.ping(server.tun4, timeout=1.0)
    bad = subprocess.run(a.ns.exec_prefix + [sys.executable, "-m", "phantom.cli", "open", "server",
                                             "--token-file", str(client.state_dir / "token")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "cannot resolve %s" % NAME in bad.stderr, bad.stderr

    # the name appears: the client comes up by itself (no restart)
    names.point(b.ip)
    wait_for(lambda: a.ping(server.tun4, timeout=1.0), timeout=30, what="ping once the name resolves")
    p = client.peer("server")
    assert p["endpoint"] == "%s:%d" % (b.ip, UDP_PORT) and p["state"] == "established"
    assert p["resolved"]["addresses"] == ["%s:%d" % (b.ip, UDP_PORT)] and p["resolved"]["error"] is None
    assert _metric(client, "phantom_endpoint_unresolved") == 0
    pid = client.daemon.proc.pid

    # the server moves, and its name with it; the old address is gone
    old = b.change_address("10.201.0.12")
    assert old != b.ip
    names.point(b.ip)
    wait_for(lambda: client.peer("server")["endpoint"] == "%s:%d" % (b.ip, UDP_PORT), timeout=30,
             what="the client's endpoint follows the name")
    wait_for(lambda: a.ping(server.tun4, timeout=1.0), timeout=30, what="ping after the move")
    assert a.ping(server.tun6, timeout=5.0)
    assert client.daemon.proc.pid == pid and client.daemon.proc.poll() is None   # no restart
    assert _metric(client, "phantom_endpoint_moves_total") >= 2
    if resolver == "dns":                            # the answers came from the DNS server
        st = names.dnsd.stats()["stats"]
        assert st["queries_udp"] >= 3 and st["responses"].get("NXDOMAIN", 0) >= 1
        assert st["responses"].get("NOERROR", 0) >= 2
    out = subprocess.run(a.ns.exec_prefix + [sys.executable, "-m", "phantom.cli", "peers",
                                             "--token-file", str(client.state_dir / "token")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, row = out.stdout.splitlines()[:2]
    assert "ENDPOINT NAME" in head and NAME in row and "%s:%d" % (b.ip, UDP_PORT) in row


def test_open_by_host_name(two_hosts, daemon_factory, tmp_path, netns_etc):
    """`phantom open server.lab.test:9000 --public-key K`: looked up at once,
    the tunnel comes up, the name is followed like a configured one; a name
    that does not resolve is a clear error (exit 1, 404 or 504), nothing added."""
    a, b = two_hosts.a, two_hosts.b
    client, server = make_node(tmp_path, "client", 1, a), make_node(tmp_path, "server", 2, b)
    netns_etc(a, "resolv.conf", NO_DNS)
    netns_etc(a, "hosts", _hosts(b.ip))
    write_config(client, mode="tun", peers=[], tunables=TUNABLES)
    write_config(server, mode="tun", peers=[peer_entry(client, mode="tun", endpoint=False)],
                 tunables=TUNABLES)
    start(daemon_factory, server)
    start(daemon_factory, client)

    def phantom(*args):
        return subprocess.run(a.ns.exec_prefix + [sys.executable, "-m", "phantom.cli", *args,
                                                  "--token-file", str(client.state_dir / "token")],
                              capture_output=True, text=True, timeout=60)

    bad = phantom("open", "nowhere.lab.test:9000", "--public-key", server.pub, "--name", "server")
    assert bad.returncode == 1 and "cannot resolve nowhere.lab.test" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    code, body = client.api("GET", "/peers")
    assert code == 200 and body["peers"] == []
    ok = phantom("open", "%s:%d" % (NAME, UDP_PORT), "--public-key", server.pub, "--name", "server",
                 "--allowed-ips", "%s/32" % server.tun4)
    assert ok.returncode == 0, ok.stderr
    p = client.peer("server")
    assert p["state"] == "established" and p["endpoint"] == "%s:%d" % (b.ip, UDP_PORT)
    assert p["endpoint_name"] == "%s:%d" % (NAME, UDP_PORT)
    assert a.ping(server.tun4, timeout=5.0)
    # followed from now on: the server moves
    b.change_address("10.201.0.13")
    netns_etc(a, "hosts", _hosts(b.ip))
    wait_for(lambda: client.peer("server")["endpoint"] == "%s:%d" % (b.ip, UDP_PORT), timeout=30,
             what="the opened peer's endpoint follows the name")
    wait_for(lambda: a.ping(server.tun4, timeout=1.0), timeout=30, what="ping after the move")


ROAD_WARRIOR = """[Interface]
PrivateKey = {priv}
Address = {addr4}/24, {addr6}/64
DNS = {wg4}, corp.example
Table = auto
PostUp = iptables -I OUTPUT ! -o %i -j REJECT
PostDown = iptables -D OUTPUT ! -o %i -j REJECT

[Peer]
# Name = office
PublicKey = {server}
PresharedKey = {psk}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = {name}:{port}
PersistentKeepalive = 25
"""


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_imported_road_warrior_file_reaches_wireguard_go(two_hosts, daemon_factory, wg_factory,
                                                         tmp_path, netns_etc, datapath):
    a, b = two_hosts.a, two_hosts.b
    netns_etc(a, "resolv.conf", NO_DNS)
    netns_etc(a, "hosts", _hosts(b.ip))
    node = make_node(tmp_path, "rw", 1, a)
    wg_priv, _ = keypair()
    wg = wg_factory(b, index=2, private=wg_priv)
    psk = crypto.random_bytes(32)
    my_priv = node.keyfile.read_text().strip()
    src = tmp_path / "office.conf"
    src.write_text(ROAD_WARRIOR.format(priv=my_priv, addr4=node.tun4, addr6=node.tun6, wg4=wg.ip4,
                                       server=encode_key(wg.public), psk=encode_key(psk),
                                       name=NAME, port=WG_PORT))
    out = tmp_path / "rw" / "phantom.toml"
    r = subprocess.run([sys.executable, "-m", "phantom.cli", "wg", "import", str(src), "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "PostUp/PostDown" in r.stderr and "resolvectl dns office %s" % wg.ip4 in r.stderr
    text = out.read_text()
    assert 'endpoint = "%s:%d"' % (NAME, WG_PORT) in text
    # the lab's own API port and state dir (never /var/lib/phantom)
    out.write_text(text.replace("[interface]\n", '[interface]\nstate_dir = "%s"\nlog_level = "debug"\n'
                                % node.state_dir, 1))
    node.config = out
    wg.set_peer(base64.b64decode(node.pub),
                allowed_ips=["%s/32" % node.tun4, "%s/128" % node.tun6],
                preshared_key=psk)
    start(daemon_factory, node, datapath)
    wait_for(lambda: a.ping(wg.ip4, timeout=1.0), timeout=30, what="ping wireguard-go")
    assert a.ping(wg.ip6, timeout=5.0)
    p = node.peer("office")
    assert p["endpoint_name"] == "%s:%d" % (NAME, WG_PORT)
    assert p["endpoint"] == "%s:%d" % (b.ip, WG_PORT) and p["protocol"] == "wireguard"
    # the whole road-warrior file: a full tunnel (docs/routes.md), the server's
    # endpoint still reached outside it
    assert "dev office" in a.run(["ip", "route", "get", "192.0.2.1"]).stdout
    assert "dev office" in a.run(["ip", "route", "get", "2001:db8::1"]).stdout
