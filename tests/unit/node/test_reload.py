"""The reload planner (phantom/node/reload.py) on the node's real engine, peer
table and firewall over a recording data path: what changes, what stays, what
is refused, without namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.node import reload as rl
from phantom.node.config import ConfigError, settings_from_mapping
from phantom.control.engine import Engine
from phantom.keys import encode_key
from phantom.control.peer import PeerState
from phantom.dataplane.types import Mode
from phantom.node.firewall import FirewallSlot
from phantom.node.peers import PeerTable

KEYS = {n: encode_key(crypto.x25519_public(crypto.random_bytes(32))) for n in "bcdef"}


class RecordingDataPath:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name,) + a)


def doc(*peers, firewall_=None, **iface):
    d = {"interface": dict({"mode": "tun", "addresses": ["10.99.0.1/24"]}, **iface),
         "peer": [dict(p) for p in peers]}
    if firewall_ is not None:
        d["firewall"] = firewall_
    return d


def peer(n, **kw):
    return dict({"name": n, "public_key": KEYS[n], "endpoint": "10.201.0.%d:9000" % (ord(n) - 96),
                 "allowed_ips": ["10.99.0.%d/32" % (ord(n) - 96)]}, **kw)


class Node:
    """A reload's real parts (phantom/node/): the engine, the peer table and
    the firewall in force, over a data path that records what it is asked;
    the actions the peer table carries out are recorded in ``done``."""

    def __init__(self, d):
        s = settings_from_mapping(d)
        s.config_path = Path("/nonexistent")
        self.s = s
        self.engine = Engine(bytearray(crypto.random_bytes(32)), Tunables())
        self.dp = RecordingDataPath()
        self.done = []
        self.peers = PeerTable(self.engine, self.done.extend, self.dp)
        for pc in s.peers:
            p = self.engine.add_peer(pc.public_key, pc.name, pc.allowed_ips, pc.endpoint,
                                     pc.persistent_keepalive)
            p.set_state(PeerState.HANDSHAKING)
            p.set_state(PeerState.ESTABLISHED)
        self.firewall = FirewallSlot(Mode.TUN, s.firewall, self.peers.names)
        self.firewall.attach(self.dp)
        self.reloader = rl.Reloader(s, base=settings_from_mapping(d))

    def plan(self, fresh):
        return self.reloader.plan(fresh, self.peers, DEVICE)


DEVICE = "ph0"


def run(node, d):
    return node.reloader.run(settings_from_mapping(d), node.peers, node.firewall, DEVICE)


def test_unchanged_peers_are_not_touched_at_all():
    d = Node(doc(peer("b"), peer("c")))
    out = run(d, doc(peer("b"), peer("c")))
    assert out == {"added": [], "removed": [], "changed": {}, "unchanged": ["b", "c"],
                   "firewall": False, "notes": []}
    assert d.dp.calls == [] and d.done == []


def test_add_remove_change():
    d = Node(doc(peer("b"), peer("c"), peer("d")))
    b = d.engine.peer_by_key(crypto_key("b"))
    out = run(d, doc(peer("b", allowed_ips=["10.99.0.2/32", "10.99.0.22/32"]),
                     peer("d", name="dd", persistent_keepalive=5), peer("e")))
    assert out["added"] == ["e"] and out["removed"] == ["c"] and out["unchanged"] == []
    assert out["changed"] == {"b": ["allowed_ips"], "dd": ["name", "persistent_keepalive"]}
    assert out["firewall"] is True                    # peers added, removed, renamed
    names = [c[0] for c in d.dp.calls]
    assert "remove_peer" in names and "add_peer" in names
    # every route change of the reload is one data-path step, before the removal
    (update,) = [c for c in d.dp.calls if c[0] == "update_routes"]
    c_id, e = 2, d.engine.peer_by_key(crypto_key("e"))
    assert {k: [str(n) for n in v] for k, v in update[1].items()} == {
        b.id: ["10.99.0.2/32", "10.99.0.22/32"], c_id: [], e.id: ["10.99.0.5/32"]}
    assert names.index("update_routes") < names.index("remove_peer")
    assert ("add_peer", e.id, []) in d.dp.calls      # its routes come with the update
    assert [str(n) for n in b.allowed_ips] == ["10.99.0.2/32", "10.99.0.22/32"]
    assert b.state is PeerState.ESTABLISHED           # sessions untouched
    assert {p.name for p in d.engine.peers.values()} == {"b", "dd", "e"}
    dd = d.engine.peer_by_key(crypto_key("d"))
    assert dd.persistent_keepalive == 5 and dd.wanted    # kept up from now on
    assert not any(type(a).__name__ == "SendDatagram" for a in d.done)   # no handshake: it is up


def crypto_key(n):
    import base64
    return base64.b64decode(KEYS[n])


def test_a_roamed_endpoint_stays_unless_the_file_changes_it():
    d = Node(doc(peer("b")))
    b = d.engine.peer_by_key(crypto_key("b"))
    b.endpoint = ("10.201.0.77", 9000)                # the peer roamed
    out = run(d, doc(peer("b")))
    assert out["changed"] == {} and b.endpoint == ("10.201.0.77", 9000)
    out = run(d, doc(peer("b", endpoint="10.201.0.88:9000")))
    assert out["changed"] == {"b": ["endpoint"]} and b.endpoint == ("10.201.0.88", 9000)
    assert ("set_endpoint", b.id, ("10.201.0.88", 9000)) in d.dp.calls


def test_an_endpoint_name_in_the_file_is_left_to_the_resolver():
    """A DNS name is never an address for the engine: a reload that names one
    reports the endpoint changed and leaves the address in use alone (the
    daemon's EndpointResolver looks the new name up, node/endpoints.py)."""
    d = Node(doc(peer("b", endpoint="vpn.example.com:9000")))
    b = d.engine.peer_by_key(crypto_key("b"))
    b.endpoint = ("10.201.0.2", 9000)                 # what the name resolved to
    out = run(d, doc(peer("b", endpoint="vpn.example.com:9000")))
    assert out["changed"] == {} and b.endpoint == ("10.201.0.2", 9000)
    out = run(d, doc(peer("b", endpoint="other.example.com:9000")))
    assert out["changed"] == {"b": ["endpoint"]} and b.endpoint == ("10.201.0.2", 9000)
    assert not any(c[0] == "set_endpoint" for c in d.dp.calls)
    out = run(d, doc(peer("b", endpoint="10.201.0.9:9000")))
    assert out["changed"] == {"b": ["endpoint"]} and b.endpoint == ("10.201.0.9", 9000)


def test_bad_files_are_refused_before_anything_changes():
    d = Node(doc(peer("b"), peer("c")))
    before = {p.name: (p.id, list(p.allowed_ips)) for p in d.engine.peers.values()}
    cases = [
        (doc(peer("b"), peer("c", name="b")), "peer[1].name"),
        (doc(peer("b"), peer("c", public_key=KEYS["b"])), "peer[1].public_key"),
        (doc(peer("b"), peer("c", allowed_ips=["10.99.0.2/32"])), "peer[1].allowed_ips[0]"),
        (doc(peer("b"), peer("d"), firewall_={"rule": [{"direction": "in", "action": "drop",
                                                        "proto": "nope"}]}), "firewall"),
        (doc(peer("b"), dict(peer("c"), public_key=encode_key(d.engine.public_key))),
         "peer[1].public_key"),
    ]
    for dd, key in cases:
        with pytest.raises(ConfigError) as e:
            d.plan(settings_from_mapping(dd))
        assert e.value.key.startswith(key), (key, str(e.value))
    assert d.dp.calls == [] and d.done == []
    assert {p.name: (p.id, list(p.allowed_ips)) for p in d.engine.peers.values()} == before


def test_firewall_rules_may_name_peers_the_same_reload_adds():
    d = Node(doc(peer("b")))
    out = run(d, doc(peer("b"), peer("f"), firewall_={"rule": [
        {"direction": "in", "action": "drop", "peer": "f", "proto": "tcp", "dst_port": 22}]}))
    assert out["added"] == ["f"] and out["firewall"] is True
    f = d.engine.peer_by_key(crypto_key("f"))
    assert d.firewall.describe()["rules"][0]["peer"] == "f"
    assert f is not None


def test_api_peers_stay_and_their_names_are_reserved():
    d = Node(doc(peer("b")))
    api = d.engine.add_peer(crypto_key("c"), "carol", [], ("10.201.0.3", 9000), dynamic=True)
    out = run(d, doc(peer("b")))
    assert out["removed"] == [] and api.id in d.engine.peers
    with pytest.raises(ConfigError) as e:
        d.plan(settings_from_mapping(doc(peer("b"), peer("d", name="carol"))))
    assert e.value.key == "peer[1].name" and "API" in e.value.problem
    out = run(d, doc(peer("b"), peer("c", name="carol", endpoint="10.201.0.3:9000",
                                     allowed_ips=[])))
    assert not api.dynamic                            # adopted by the file


def test_what_needs_a_restart_is_noted_not_applied():
    d = Node(doc(peer("b")))
    out = run(d, doc(peer("b"), listen_port=9100, mtu=1380))
    assert "interface.listen_port changed: needs a restart (not applied)" in out["notes"]
    assert "interface.mtu changed: needs a restart (not applied)" in out["notes"]
    # a prefix the kernel does not route into the device (after the privilege
    # drop the daemon cannot add the route): the reload is refused whole
    with pytest.raises(ConfigError) as e:
        run(d, doc(peer("b", allowed_ips=["10.99.0.2/32", "192.168.50.0/24"]), peer("c")))
    assert e.value.key == "peer[0].allowed_ips[1]"
    assert "does not route 192.168.50.0/24 into ph0" in e.value.problem
    assert [p.name for p in d.engine.peers.values()] == ["b"]


def test_a_reload_never_overlaps_a_peer_added_at_run_time():
    """A peer opened through the API or admitted from the directory keeps its
    prefixes to itself: a file prefix equal to one, holding one or inside one
    is refused naming the key; once the file names that peer (adopts it), the
    file's overlaps are the administrator's."""
    d = Node(doc(peer("b")))
    api = d.engine.add_peer(crypto_key("c"), "carol", ["10.99.0.48/28"], ("10.201.0.3", 9000),
                            dynamic=True, exclusive=True)
    for nets in (["10.99.0.48/28"], ["10.99.0.0/24"], ["10.99.0.50/32"]):
        with pytest.raises(ConfigError) as e:
            d.plan(settings_from_mapping(doc(peer("b"), peer("d", allowed_ips=nets))))
        assert e.value.key == "peer[1].allowed_ips[0]" and "carol" in e.value.problem, nets
    assert d.dp.calls == []
    out = run(d, doc(peer("b"), peer("c", name="carol", allowed_ips=["10.99.0.48/28"]),
                     peer("d", allowed_ips=["10.99.0.0/24"])))
    assert out["added"] == ["d"] and not api.dynamic and not api.exclusive


def test_a_changed_dns_section_is_noted_not_applied():
    base = doc(peer("b"))
    base["dns"] = {"domain": "corp.phantom"}
    d = Node(base)
    same = doc(peer("b"))
    same["dns"] = {"domain": "corp.phantom"}
    assert not any("[dns]" in n for n in run(d, same)["notes"])
    other = doc(peer("b"))
    other["dns"] = {"domain": "other.phantom"}
    out = run(d, other)
    assert any(n.startswith("[dns] changed: needs a restart") for n in out["notes"]), out["notes"]


def test_a_reload_keeps_the_groups_that_do_not_come_from_the_file():
    """A network member's own groups come from its certificate
    (Reloader.extra_groups): a reload of a file without them keeps them."""
    rules = {"default_in": "drop", "rule": [{"direction": "in", "dst_group": "servers",
                                             "proto": "icmp", "action": "accept"}]}
    d = Node(doc(peer("b"), firewall_=rules))
    d.s.groups = ("servers",)
    d.reloader.extra_groups = ("servers",)
    d.firewall.own_groups = ("servers",)
    out = run(d, doc(peer("b"), firewall_=rules))
    assert out["firewall"] is False                   # nothing changed: the groups stayed
    assert d.s.groups == ("servers",) and d.firewall.own_groups == ("servers",)
    out = run(d, doc(peer("b"), firewall_=rules, groups=["admins"]))
    assert d.s.groups == ("admins", "servers") and d.firewall.own_groups == ("admins", "servers")
