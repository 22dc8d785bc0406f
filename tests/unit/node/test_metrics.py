"""The Prometheus collector (phantom/control/metrics.py) on a stand-in daemon:
names, labels, types and values, parsed back with prometheus-client's parser."""

from __future__ import annotations

import ipaddress
import time
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from phantom import crypto
from phantom.constants import Tunables
from phantom.control.engine import Engine
from phantom.node.metrics import DaemonCollector, make_registry, render
from phantom.control.peer import PeerState
from phantom.dataplane import firewall
from phantom.dataplane.types import Mode, PeerCounters


class StubDataPath:
    def __init__(self):
        self.c = {}
        self.worker_stats = {"inner_batches": 10, "inner_packets": 320, "udp_batches": 4,
                             "udp_packets": 100, "capped": 2}

    def counters(self, pid):
        return self.c.get(pid, PeerCounters())

    def global_drops(self):
        return {"replay": 3, "no_route": 1}


def stub_daemon(fast=True):
    t = Tunables()
    eng = Engine(bytearray(crypto.random_bytes(32)), t)
    bob = eng.add_peer(crypto.x25519_public(crypto.random_bytes(32)), "bob",
                       [ipaddress.ip_network("10.9.0.2/32")], ("192.0.2.2", 9000))
    eng.add_peer(crypto.x25519_public(crypto.random_bytes(32)), "carol", [], None)
    bob.set_state(PeerState.HANDSHAKING)
    bob.set_state(PeerState.ESTABLISHED)
    bob.handshakes = 2
    bob.last_handshake = time.monotonic() - 5
    bob.last_handshake_wall = time.time() - 5
    eng.drops["unknown_key"] += 7
    dp = StubDataPath()
    dp.c[bob.id] = PeerCounters(rx_bytes=1000, tx_bytes=2000, rx_packets=10, tx_packets=20,
                                drops={"replay": 2})
    if not fast:
        del dp.worker_stats
    fw = firewall.build({"rule": [{"direction": "in", "action": "drop", "proto": "udp",
                                   "dst_port": 7000, "peer": "bob"}]}, {"bob": bob.id}, Mode.TUN)
    fw.active[1].hits[0] = 5
    s = SimpleNamespace(mode=Mode.TUN, fast=fast)
    return SimpleNamespace(s=s, t=t, engine=eng, dp=dp, fw=fw, started=time.time() - 60), bob


def scrape(daemon, process=False):
    text = render(make_registry(daemon, process=process)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return text, fams


def value(fams, family, sample, **labels):
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((sample, labels))


def test_peer_metrics_named_typed_and_labelled():
    d, bob = stub_daemon()
    text, fams = scrape(d)
    assert fams["phantom_peer_rx_bytes"].type == "counter"
    assert value(fams, "phantom_peer_rx_bytes", "phantom_peer_rx_bytes_total", peer="bob") == 1000
    assert value(fams, "phantom_peer_tx_bytes", "phantom_peer_tx_bytes_total", peer="bob") == 2000
    assert value(fams, "phantom_peer_rx_packets", "phantom_peer_rx_packets_total", peer="bob") == 10
    assert value(fams, "phantom_peer_tx_packets", "phantom_peer_tx_packets_total", peer="carol") == 0
    assert value(fams, "phantom_peer_drops", "phantom_peer_drops_total", peer="bob", reason="replay") == 2
    assert value(fams, "phantom_peer_handshakes", "phantom_peer_handshakes_total", peer="bob") == 2
    age = value(fams, "phantom_peer_latest_handshake_age_seconds",
                "phantom_peer_latest_handshake_age_seconds", peer="bob")
    assert 4.5 < age < 30
    # carol never shook hands: no age sample rather than a made-up one
    assert not [s for s in fams["phantom_peer_latest_handshake_age_seconds"].samples
                if s.labels["peer"] == "carol"]
    assert value(fams, "phantom_peer_state", "phantom_peer_state", peer="bob", state="established") == 1
    assert value(fams, "phantom_peer_state", "phantom_peer_state", peer="bob", state="idle") == 0
    assert value(fams, "phantom_peer_state", "phantom_peer_state", peer="carol", state="idle") == 1
    assert value(fams, "phantom_peer_path", "phantom_peer_path", peer="bob", path="direct") == 1
    assert value(fams, "phantom_peer_path", "phantom_peer_path", peer="bob", path="relayed") == 0
    assert value(fams, "phantom_peers", "phantom_peers") == 2
    assert 'phantom_info{data_path="fast",mode="tun",version=' in text


def test_global_firewall_and_batch_metrics():
    d, bob = stub_daemon()
    _, fams = scrape(d)
    assert value(fams, "phantom_drops", "phantom_drops_total", reason="replay") == 3
    assert value(fams, "phantom_handshake_drops", "phantom_handshake_drops_total",
                 reason="unknown_key") == 7
    assert value(fams, "phantom_handshake_drops", "phantom_handshake_drops_total",
                 reason="bad_mac1") == 0
    assert value(fams, "phantom_firewall_rule_hits", "phantom_firewall_rule_hits_total",
                 rule="0", direction="in", action="drop") == 5
    assert "phantom_firewall_drops" in fams and "phantom_firewall_conntrack_entries" in fams
    assert value(fams, "phantom_datapath_batches", "phantom_datapath_batches_total", side="inner") == 10
    assert value(fams, "phantom_datapath_packets", "phantom_datapath_packets_total", side="udp") == 100
    assert value(fams, "phantom_datapath_burst_size", "phantom_datapath_burst_size") == d.t.burst


def test_reference_path_has_no_batch_metrics_and_process_facts_are_there():
    d, _ = stub_daemon(fast=False)
    _, fams = scrape(d, process=True)
    assert "phantom_datapath_batches" not in fams
    assert "process_resident_memory_bytes" in fams and "process_open_fds" in fams
    assert "python_info" in fams


def test_label_values_are_bounded():
    """No label carries an address, a port or a key: only names, reasons, states."""
    d, _ = stub_daemon()
    _, fams = scrape(d)
    allowed = {"peer", "reason", "state", "path", "rule", "direction", "action", "side",
               "version", "mode", "data_path"}
    for f in fams.values():
        for s in f.samples:
            assert set(s.labels) <= allowed, (s.name, s.labels)
            for v in s.labels.values():
                assert "192.0.2" not in v and "/" not in v


def test_collector_without_a_built_data_path():
    d, _ = stub_daemon()
    d.dp = None
    names = [m.name for m in DaemonCollector(d).collect()]
    assert names == ["phantom_info", "phantom_uptime_seconds", "phantom_healthy"]


def test_directory_drops_are_exported():
    """Issue 18: the DHT's drop counters were counted but exposed nowhere."""
    from phantom.directory.client import DhtDirectoryClient
    from phantom.directory.store.dht import DhtNode
    d, _ = stub_daemon()
    _, fams = scrape(d)
    assert "phantom_directory_drops" not in fams            # no directory: no family
    client = DhtDirectoryClient(None, node=DhtNode("127.0.0.1:0"))   # not started: no socket
    key = crypto.x25519_public(crypto.random_bytes(32))
    for junk in (b"not json", 7, b"x" * 2000):              # what a hostile node could serve
        assert client.store.parse_item(junk, key) is None
    client.stats["rejected"] = 2
    d.directory = client
    _, fams = scrape(d)
    assert value(fams, "phantom_directory_drops", "phantom_directory_drops_total",
                 reason="dht_malformed") == 3
    assert value(fams, "phantom_directory_drops", "phantom_directory_drops_total",
                 reason="rejected") == 2
    assert value(fams, "phantom_directory_drops", "phantom_directory_drops_total",
                 reason="dht_forged") == 0


def test_network_policy_rules_and_hits_are_metrics():
    from phantom.network import policy as P
    from phantom.node import policy as NP
    from phantom.node.firewall import FirewallSlot
    from tests.unit.network.factory import NOW, Net
    d, bob = stub_daemon()
    net = Net()
    slot = FirewallSlot(Mode.TUN, {"stateful": False}, {"bob": bob.id},
                        {"laptops": frozenset({bob.id})}, ("servers",))
    doc = P.sign_policy(P.parse_policy_source(
        'default = "deny"\n[[rule]]\nfrom = "group:laptops"\nto = "group:servers"\n'
        'proto = "icmp"\n[[rule]]\nfrom = "*"\nto = "group:printers"\n'), net.definition,
        net.admission, 4, NOW).doc
    NP.apply_policy(slot, doc, net.definition, NP.Identity("srv", bytes(32), ("servers",)), NOW)
    ping = bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 9, 0, 2, 10, 9, 0, 1, 8, 0]) + \
        bytes(6)
    for _ in range(3):
        assert slot.current.classify("in", ping, bob.id, now=1.0).accept
    d.firewall, d.fw = slot, slot.current
    _, fams = scrape(d)
    assert value(fams, "phantom_network_policy_seq", "phantom_network_policy_seq") == 4
    assert value(fams, "phantom_network_policy_rule_hits", "phantom_network_policy_rule_hits_total",
                 rule="1", action="accept") == 3
    with_rule_2 = [s for s in fams["phantom_network_policy_rule_hits"].samples
                   if s.labels["rule"] == "2"]
    assert with_rule_2 == [], "a rule that does not apply to this node is not a series"
    assert fams["phantom_firewall_rule_hits"].samples == [], "no local rules"


def test_peer_groups_and_membership_are_labelled_by_name_only():
    """Issue 21 item 4: a peer's groups (a member's: its certificate's) and
    our membership, with the peer's name and the group as the only labels."""
    from phantom.node.peers import PeerTable
    d, bob = stub_daemon()
    d.peers = PeerTable(d.engine, lambda actions: None)
    d.peers.set_groups({bob.id: ("servers", "db")}, regroup=False)
    d.membership = SimpleNamespace(status=lambda: {"network": "corp", "name": "n1",
                                                   "domain": "corp.internal", "members": 3})
    _, fams = scrape(d)
    got = sorted((s.labels["peer"], s.labels["group"], s.value)
                 for s in fams["phantom_peer_group"].samples)
    assert got == [("bob", "db", 1), ("bob", "servers", 1)]           # carol: no groups, no series
    assert value(fams, "phantom_network_info", "phantom_network_info", network="corp",
                 name="n1", domain="corp.internal") == 1
    assert value(fams, "phantom_network_members", "phantom_network_members") == 3
