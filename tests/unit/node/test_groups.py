"""Groups on the node's side (issue 21 item 2): the ``groups`` config keys,
the peer door's group map and its ``on_groups`` hook, the rules recompiled
in place by a reload that moves a peer between groups."""

from __future__ import annotations

import logging
import struct

import pytest

from phantom.dataplane.firewall import Action
from phantom.dataplane.types import Mode
from phantom.node.config import ConfigError, settings_from_mapping
from phantom.node.firewall import FirewallSlot
from phantom.node.peers import Batch, PeerTable, planned_groups
from tests.unit.node.test_reload import Node, crypto_key, doc, peer, run

RULES = {"default_in": "drop", "rule": [
    {"direction": "in", "src_group": "laptops", "dst_group": "servers", "proto": "icmp",
     "action": "accept"}]}


def ping_from(index: int) -> bytes:
    icmp = bytes([8, 0]) + bytes(6)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 1, 0, bytes([10, 99, 0, index]),
                       bytes([10, 99, 0, 1])) + icmp


def test_groups_keys_parse_and_bad_names_name_the_key():
    s = settings_from_mapping(doc(peer("b", groups=["laptops", "admins", "laptops"]),
                                  groups=["servers"]))
    assert s.peers[0].groups == ("admins", "laptops") and s.groups == ("servers",)
    assert settings_from_mapping(doc(peer("b"))).peers[0].groups == ()
    for d, key in [(doc(peer("b", groups=["Laptops"])), "peer[0].groups[0]"),
                   (doc(peer("b", groups="laptops")), "peer[0].groups"),
                   (doc(peer("b"), groups=["ok", "no_underscore"]), "interface.groups[1]"),
                   (doc(peer("b", groups=["g%d" % i for i in range(33)])), "peer[0].groups")]:
        with pytest.raises(ConfigError) as e:
            settings_from_mapping(d)
        assert e.value.key == key, (key, str(e.value))


def test_the_peer_door_keeps_the_group_map_and_says_when_it_changes():
    node = Node(doc())
    table, fired = node.peers, []
    table.on_groups = lambda: fired.append(table.group_map())
    b = table.add(crypto_key("b"), "b", [], groups=["laptops"])
    c = table.add(crypto_key("c"), "c", [])                           # no groups: no recompile
    assert fired == [{"laptops": frozenset({b.id})}]
    table.update(c, groups=["laptops", "servers"])
    assert fired[-1] == {"laptops": frozenset({b.id, c.id}), "servers": frozenset({c.id})}
    assert table.groups_of(c) == ("laptops", "servers")
    n = len(fired)
    table.update(c, groups=["servers", "laptops"])                     # the same groups
    assert len(fired) == n
    table.remove(b)
    assert fired[-1] == {"laptops": frozenset({c.id}), "servers": frozenset({c.id})}
    with pytest.raises(ValueError):
        table.set_groups({999: ["x"]})
    # a batch changes groups in one step: one call, or none when the caller recompiles
    n = len(fired)
    table.apply(Batch(update=[(c, {"groups": ()})],
                      add=[dict(public_key=crypto_key("d"), name="d", groups=["laptops"])]))
    assert len(fired) == n + 1
    d = node.engine.peer_by_key(crypto_key("d"))
    assert fired[-1] == {"laptops": frozenset({d.id})}
    table.apply(Batch(remove=[d]), regroup=False)
    assert len(fired) == n + 1 and table.group_map() == {}


def grouped_node(stateful=False):
    fw = dict(RULES, stateful=stateful)
    d0 = doc(peer("b", groups=["laptops"]), peer("c", groups=["laptops"]), firewall_=fw,
             groups=["servers"])
    node = Node(d0)
    s = node.s
    for pc in s.peers:
        node.peers.set_groups({node.engine.peer_by_key(bytes(pc.public_key)).id: pc.groups})
    node.firewall = FirewallSlot(Mode.TUN, s.firewall, node.peers.names, node.peers.group_map(),
                                 s.groups)
    node.firewall.attach(node.dp)
    return node, fw


def test_a_reload_moving_a_peer_out_of_a_group_recompiles_in_place():
    node, fw = grouped_node(stateful=True)
    b, c = (node.engine.peer_by_key(crypto_key(n)) for n in "bc")
    f = node.firewall.current
    assert f.classify("in", ping_from(2), b.id, now=1.0).accept
    assert f.classify("in", ping_from(3), c.id, now=1.0).accept
    out_pkt = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([10, 99, 0, 1]),
                          bytes([10, 99, 0, 3])) + struct.pack("!HH", 22, 40000) + bytes(16)
    assert f.classify("out", out_pkt, c.id, now=1.0).accept            # a tracked flow to c
    out = run(node, doc(peer("b", groups=["staff"]), peer("c", groups=["laptops"]),
                        firewall_=fw, groups=["servers"]))
    assert out["changed"] == {"b": ["groups"]} and out["firewall"] is True
    assert node.firewall.current is f, "installed in place"
    assert f.conntrack.snapshot()["entries"] == 1
    assert not f.classify("in", ping_from(2), b.id, now=2.0).accept
    assert f.classify("in", ping_from(3), c.id, now=2.0).accept
    assert [c[0] for c in node.dp.calls if c[0] != "set_firewall"] == [], \
        "no peer is touched in the data path"
    assert not any(type(a).__name__ == "SendDatagram" for a in node.done), "no handshake"
    # this node leaving "servers": the rule matches nothing here now, and says so
    out = run(node, doc(peer("b", groups=["staff"]), peer("c", groups=["laptops"]),
                        firewall_=fw, groups=["desks"]))
    assert out["firewall"] is True and out["notes"] == []
    assert not f.classify("in", ping_from(3), c.id, now=3.0).accept
    assert node.firewall.describe()["own_groups"] == ["desks"]
    assert "this node is not in group 'servers'" in node.firewall.describe()["warnings"][0]


def test_planned_groups_give_new_peers_the_ids_they_will_get():
    node, _ = grouped_node()
    s = settings_from_mapping(doc(peer("b", groups=["laptops"]), peer("e", groups=["laptops", "x"])))
    b = node.engine.peer_by_key(crypto_key("b"))
    nxt = node.engine.next_peer_id
    assert planned_groups(node.engine, s.peers) == {"laptops": frozenset({b.id, nxt}),
                                                    "x": frozenset({nxt})}


def test_regroup_after_a_named_peer_went_leaves_its_rule_waiting(caplog):
    # (issue 20 item 6: this used to keep the old rules, logging that they no
    # longer compiled; a rule naming a peer nobody is now matches nothing)
    node, fw = grouped_node()
    slot = node.firewall
    slot.replace({"rule": [{"direction": "in", "peer": "b", "action": "drop"}]}, node.peers.names,
                 node.peers.group_map())
    before = slot.current.tables
    b = node.engine.peer_by_key(crypto_key("b"))
    assert not slot.current.classify("in", ping_from(2), b.id, now=1.0).accept
    node.engine.update_peer(b.id, name="bee")
    with caplog.at_level(logging.WARNING, logger="phantom.daemon"):
        slot.regroup(node.peers.names, node.peers.group_map())
    assert slot.current.tables is not before
    assert slot.current.classify("in", ping_from(2), b.id, now=2.0).accept
    assert slot.describe()["rules"][0]["waiting"] == "for peer b"
    assert "no peer is called 'b' (yet)" in caplog.text


def test_a_peer_added_with_groups_recompiles_the_rules_through_the_door():
    node, fw = grouped_node()
    node.peers.on_groups = lambda: node.firewall.regroup(node.peers.names, node.peers.group_map())
    f = node.firewall.current
    new = node.peers.add(crypto_key("d"), "d", [], groups=["laptops"])
    assert f.classify("in", ping_from(4), new.id, now=1.0).action == Action.ACCEPT
    node.peers.remove(new)
    other = node.peers.add(crypto_key("e"), "e", [])
    assert f.classify("in", ping_from(5), other.id, now=1.0).action == Action.DROP
