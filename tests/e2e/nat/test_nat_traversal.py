"""NAT traversal end to end (issue #11): real phantomd processes behind real
iptables NAT routers (phantomlab.netns.Internet), a rendezvous node on the
'internet' namespace, both data paths.  Every test watches the wires and
asserts that no tunnel payload crossed any of them in plaintext."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest

from phantom import wire
from phantomlab import iperf as lab_iperf
from phantomlab import memscan, netns
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, peer_entry, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# Unique per run (random bytes): a hit in a capture or a process's memory
# cannot come from an earlier run, the test's source or anything on disk.
MARKER = b"PHANTOM-NAT-" + secrets.token_bytes(16)
DATAPATHS = ["reference", "fast"]
UDP_CONNTRACK_TIMEOUT = 5      # short: keepalives (1 s to the rendezvous) must keep mappings up


@pytest.fixture(params=DATAPATHS)
def datapath(request):
    return request.param


# Captures keep datagrams up to this size: every marked datagram (and every
# handshake, keepalive and ping) fits, bulk iperf3 segments do not, so a
# capture of a multi-second transfer stays small in memory.
CAPTURE_FILTER = "udp and less 600"


@pytest.fixture
def wires(sniffer):
    """watch(ns, iface): capture UDP; at teardown no capture may hold MARKER."""
    caps = []

    def watch(where, iface, bpf=CAPTURE_FILTER):
        cap = sniffer(where, iface, bpf, name="%s-%s" % (getattr(where, "name", "ns"), iface))
        caps.append(cap)
        return cap

    yield watch
    for cap in caps:
        cap.stop()
        assert cap.find(MARKER) == [], "tunnel payload crossed %r in plaintext" % cap


def send_marked(src, dst, count=5, port=7100):
    s = src.host.ns.udp_socket()
    try:
        for i in range(count):
            s.sendto(MARKER + b" %d" % i, (dst.tun4, port))
    finally:
        s.close()


# Receives marked datagrams on a tunnel address and keeps them in memory
# until told to exit: the positive control for the memory scan of the relay.
KEEPER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)
print("bound", flush=True)
kept = []
try:
    while len(kept) < int(sys.argv[3]):
        kept.append(bytearray(s.recv(4096)))
except socket.timeout:
    pass
print(len(kept), flush=True)
sys.stdin.readline()
"""


class Keeper:
    """A process on ``node``'s host holding the datagrams it received on
    ``node.tun4:port`` (up to ``count``)."""

    def __init__(self, node, count, port=7100):
        self.proc = node.host.popen([sys.executable, "-c", KEEPER, node.tun4, str(port), str(count)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "bound"

    @property
    def pid(self):
        return self.proc.pid

    def received(self) -> int:
        return int(self.proc.stdout.readline())

    def close(self):
        self.proc.kill()
        self.proc.wait(5)


def build_nodes(tmp_path, net, lan_hosts, relay=False):
    """A rendezvous node on the internet namespace and one node per LAN
    host; every LAN node knows the others by key only (no endpoint) and the
    rendezvous by key and endpoint."""
    rv = make_node(tmp_path, "rv", 10, net.rv)
    nodes = [make_node(tmp_path, "n%d" % (i + 1), i + 1, h) for i, h in enumerate(lan_hosts)]
    extra = {"rendezvous": True, "relay": True} if relay else {"rendezvous": True}
    write_config(rv, mode="tun", ipv6=False, tunables=FAST_TUNABLES, extra=extra,
                 peers=[peer_entry(n, mode="tun", endpoint=False, allowed=[]) for n in nodes])
    for n in nodes:
        rv_entry = peer_entry(rv, mode="tun", keepalive=1, allowed=[])
        rv_entry["rendezvous"] = True
        others = [peer_entry(o, mode="tun", endpoint=False, ipv6=False) for o in nodes if o is not n]
        write_config(n, mode="tun", ipv6=False, tunables=FAST_TUNABLES, peers=[rv_entry] + others)
    return rv, nodes


def start_all(daemon_factory, datapath, rv, nodes, relay_datapath=None):
    start(daemon_factory, rv, relay_datapath or datapath)
    for n in nodes:
        start(daemon_factory, n, datapath)
    for n in nodes:
        n.wait_peer_state("rv", "established", timeout=10)
        wait_for(lambda: n.status()["nat"]["reflexive"], timeout=10, what="%s registered" % n.name)


def data_grams(cap):
    # longer than a keepalive of either suite (secretbox 32 bytes, aegis256 48);
    # an IP packet inside is at least 20 bytes
    return [u for u in cap.udp() if u.payload[:1] == bytes([wire.MessageType.TRANSPORT])
            and len(u.payload) > wire.AEGIS256_OVERHEAD]


def iperf(client, server, seconds=5, nbytes=None):
    # nbytes: that many bytes as fast as they go (-n) instead of for ``seconds``
    # (-t), where the test checks a rate and an amount, not a duration
    out = lab_iperf.run(client.host, server.host, server.tun4, seconds=seconds, nbytes=nbytes)
    assert out.returncode == 0, out.stderr
    return out.received_bps


def test_hole_punching_through_two_masquerade_nats(daemon_factory, tmp_path, datapath, wires):
    with netns.internet(udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        core1 = wires(net.inet, "h1")
        core2 = wires(net.inet, "h2")
        wires(net["a"], "eth0")
        wires(net["b"], "eth0")
        rv, (a, b) = build_nodes(tmp_path, net, [net["a"], net["b"]])
        start_all(daemon_factory, datapath, rv, [a, b])
        t0 = time.monotonic()
        assert a.host.ns.ping(b.tun4, timeout=5), "a reaches b through both NATs"
        assert time.monotonic() - t0 < 5.0
        pa, pb = a.peer("n2"), b.peer("n1")
        assert pa["path"] == "direct" and pb["path"] == "direct"
        code, body = a.api("GET", "/peers")
        assert code == 200 and {p["name"]: p["path"] for p in body["peers"]}["n2"] == "direct"
        assert pa["endpoint"] == "%s:%d" % (net.r2.wan_ip, UDP_PORT)
        assert pb["endpoint"] == "%s:%d" % (net.r1.wan_ip, UDP_PORT)
        bps = iperf(a, b, 5)
        assert bps > 1e6
        send_marked(a, b, count=100)
        send_marked(b, a, count=100)
        time.sleep(0.3)
        core1.stop()
        core2.stop()
        # the data went between the two NATs' public addresses, not through the rendezvous
        grams = data_grams(core1)
        assert len(grams) >= 150
        assert {(u.src, u.dst) for u in grams} <= {(net.r1.wan_ip, net.r2.wan_ip),
                                                   (net.r2.wan_ip, net.r1.wan_ip)}
        assert rv.status()["nat"]["rendezvous"]["punches"] >= 1


def test_two_peers_behind_the_same_nat_use_their_lan_addresses(daemon_factory, tmp_path, datapath, wires):
    with netns.internet(hosts_per_home=2, udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        wires(net.inet, "h1")
        wires(net["a"], "eth0")
        a_host, a2_host = net["a"], net["a2"]
        rv, (a, a2) = build_nodes(tmp_path, net, [a_host, a2_host])
        start_all(daemon_factory, datapath, rv, [a, a2])
        assert a.host.ns.ping(a2.tun4, timeout=5)
        assert a.peer("n2")["endpoint"] == "%s:%d" % (a2_host.ip, UDP_PORT)
        assert a2.peer("n1")["endpoint"] == "%s:%d" % (a_host.ip, UDP_PORT)
        assert a.peer("n2")["path"] == "direct"
        send_marked(a, a2)


def test_rendezvous_restart_and_expired_mapping_heal(daemon_factory, tmp_path, datapath, wires):
    with netns.internet(udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        wires(net.inet, "h1")
        wires(net.inet, "h2")
        rv, (a, b) = build_nodes(tmp_path, net, [net["a"], net["b"]])
        start_all(daemon_factory, datapath, rv, [a, b])
        assert a.host.ns.ping(b.tun4, timeout=5)
        # the rendezvous restarts (same key): clients re-establish and re-register
        rv.daemon.stop()
        start(daemon_factory, rv, datapath)
        for n in (a, b):
            n.wait_peer_state("rv", "established", timeout=15)
        wait_for(lambda: rv.status()["nat"]["rendezvous"].get("registrations", 0) >= 2, timeout=15,
                 what="both peers registered again")
        # every NAT mapping is forgotten: the tunnel and the punch must come back
        net.r1.flush_conntrack()
        net.r2.flush_conntrack()
        wait_for(lambda: a.host.ns.ping(b.tun4, timeout=1), timeout=20, what="a reaches b again")
        assert b.host.ns.ping(a.tun4, timeout=3)
        send_marked(a, b)
        send_marked(b, a)


def test_a_peer_that_registers_after_the_traffic_started_is_found(daemon_factory, tmp_path, datapath, wires):
    """Issue #18, item 12: n1's traffic for n2 starts before n2 runs, so the
    rendezvous has no registration for n2 when n1 first asks where it is.
    n1 asks again every 5 s while its traffic waits, and reaches n2 once n2
    has registered; `phantom open n2` then works too."""
    with netns.internet(udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        wires(net.inet, "h1")
        wires(net.inet, "h2")
        rv, (a, b) = build_nodes(tmp_path, net, [net["a"], net["b"]])
        start_all(daemon_factory, datapath, rv, [a])
        pinger = a.host.popen(["ping", "-i", "0.5", "-w", "40", b.tun4], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
        try:
            wait_for(lambda: rv.status()["nat"]["rendezvous"].get("where_is_unanswered", 0) >= 1,
                     timeout=10, what="n1 asked where n2 is before n2 registered")
            time.sleep(1.0)
            start(daemon_factory, b, datapath)
            b.wait_peer_state("rv", "established", timeout=10)
            wait_for(lambda: a.peer("n2")["state"] == "established", timeout=15, interval=0.2,
                     what="n1 reaches n2 after n2 registered")
        finally:
            pinger.kill()
            pinger.wait(5)
        assert a.peer("n2")["path"] == "direct"
        assert a.host.ns.ping(b.tun4, timeout=3)
        code, body = a.api("POST", "/open/n2")
        assert code == 200 and body["state"] == "established", body
        send_marked(a, b)


# Relays: the relay node and the relayed peers on either data path (the fast
# path forwards, wraps and unwraps relay frames in C).
@pytest.mark.parametrize("relay_datapath", DATAPATHS)
def test_relay_when_both_nats_map_per_destination(daemon_factory, tmp_path, wires, datapath, relay_datapath):
    with netns.internet(random_fully=(1, 2), udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        core1, core2 = wires(net.inet, "h1"), wires(net.inet, "h2")
        wires(net["a"], "eth0")
        wires(net["b"], "eth0")
        rv, (a, b) = build_nodes(tmp_path, net, [net["a"], net["b"]], relay=True)
        start_all(daemon_factory, datapath, rv, [a, b], relay_datapath=relay_datapath)
        rv_tun = wires(net.inet, "phtun0", bpf="ip")  # all IPv4 on the relay's device (its own IPv6 RS aside)
        t0 = time.monotonic()
        assert a.host.ns.ping(b.tun4, timeout=5), "a reaches b through the relay"
        took = time.monotonic() - t0
        assert took < 5.0
        assert a.peer("n2")["path"] == "relayed via rv"
        wait_for(lambda: b.peer("n1")["path"] == "relayed via rv", timeout=3, what="b relayed too")
        assert a.peer("n2")["endpoint"] == "%s:%d" % (net.rv.ip, UDP_PORT)
        # 8 MiB (-n), not 3 s (-t), which sent 100 MB and more through the relay:
        # what is checked is TCP at full MTU at > 1 Mbit/s, and > 1000 frames forwarded
        assert iperf(a, b, 3, nbytes=8 << 20) > 1e6, "TCP at full MTU through the relay"
        keepers = [Keeper(b, 20), Keeper(a, 20)]
        try:
            send_marked(a, b, count=20)
            send_marked(b, a, count=20)
            got = [k.received() for k in keepers]
            assert all(got), "marked datagrams delivered both ways through the relay: %r" % got
            # the scanner finds the marker where it is: the receiving
            # processes (another process's heap) and this one (a bytearray)
            for k in keepers:
                held = memscan.scan(k.pid, MARKER)
                assert held.complete and held.found, held
        finally:
            for k in keepers:
                k.close()
        assert a.host.ns.ping(b.tun4, timeout=3)
        time.sleep(0.3)
        for cap in (core1, core2):
            cap.stop()
            relayed = [u for u in cap.udp() if u.payload[:1] in (b"\x06", b"\x07")]   # relay frames
            assert relayed, "relay frames on %r" % cap
            # data and relay frames all have the relay at one end: only the
            # (failed) punch initiations went NAT to NAT
            assert all(net.rv.ip in (u.src, u.dst) for u in cap.udp()
                       if u.payload[:1] in (b"\x04", b"\x06", b"\x07"))
            assert all(u.payload[:1] in (b"\x01", b"\x02") for u in cap.udp()
                       if net.rv.ip not in (u.src, u.dst))
        rv_tun.stop()
        assert rv_tun.packets() == [], "the relay's own device saw nothing of the relayed traffic"
        # ... nor its memory (the daemon and any process under it), after
        # the same scanner found the marker in the receivers above and here
        held = bytearray(MARKER)
        mine = memscan.scan(os.getpid(), MARKER)
        assert mine.complete and mine.found and held, mine
        scans = memscan.scan_tree(rv.daemon.pid, MARKER)
        assert scans and all(r.complete and r.regions > 0 for r in scans), scans
        assert [r for r in scans if r.found] == [], "the relay held the relayed payload in plaintext"
        relayed = rv.status()["nat"]["relayed"]
        assert relayed["forwarded"] > 1000 and relayed["budget"] == 0
        assert rv.status()["nat"]["drops"] == {} or "auth_failed" not in rv.status()["nat"]["drops"]


UPGRADE_RUN = 24        # the stream's length (s): the upgrade takes a probe interval and a
AFTER_UPGRADE = 4       # registration (5 + 5 s; docs/nat.md), and this much of it must follow


def test_relayed_path_upgrades_to_direct_without_breaking_tcp(daemon_factory, tmp_path, wires, datapath):
    with netns.internet(random_fully=(1, 2), udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        core1 = wires(net.inet, "h1")
        rv, (a, b) = build_nodes(tmp_path, net, [net["a"], net["b"]], relay=True)
        start_all(daemon_factory, datapath, rv, [a, b])
        assert a.host.ns.ping(b.tun4, timeout=5)
        assert a.peer("n2")["path"] == "relayed via rv"
        with lab_iperf.Server(b.host, b.tun4):
            # one TCP stream at a steady rate for UPGRADE_RUN s: relayed at first,
            # direct once the NATs change; what is checked is that it crossed
            # the switch and kept flowing after it, not how much it carried
            started = time.monotonic()
            client = lab_iperf.Client(a.host, b.tun4, seconds=UPGRADE_RUN, extra=["-b", "4M"]).start()
            time.sleep(2)
            t0 = time.monotonic()
            for r in (net.r1, net.r2):                 # both homes get endpoint-independent NATs
                r.set_masquerade(random_fully=False, flush=True)
            # the upgrade comes while the stream runs, AFTER_UPGRADE s before its end at least
            wait_for(lambda: a.peer("n2")["path"] == "direct", timeout=UPGRADE_RUN - 2 - AFTER_UPGRADE,
                     interval=0.2, what="the path upgrades to direct")
            upgraded = time.monotonic() - t0
            since = time.monotonic() - started         # into the stream (its intervals start later)
            assert client.running, "the stream is still running at the upgrade"
            out = client.result(timeout=60)
            assert out.returncode == 0, out.stderr
            intervals = out.intervals
            assert all(i["sum"]["bytes"] > 0 for i in intervals[-5:]), "the transfer kept flowing"
            after = [i for i in intervals if i["sum"]["start"] >= since]
            assert len(after) >= AFTER_UPGRADE - 1 and all(i["sum"]["bytes"] > 0 for i in after), \
                "the stream crossed the switch and kept flowing after it (%.1f s into it): %s" % (
                    since, [(round(i["sum"]["start"]), i["sum"]["bytes"]) for i in intervals])
            print("upgraded %.1f s after the switch, %.1f s into the stream" % (upgraded, since))
        assert upgraded < 30
        assert a.peer("n2")["endpoint"] == "%s:%d" % (net.r2.wan_ip, UDP_PORT)
        send_marked(a, b)
