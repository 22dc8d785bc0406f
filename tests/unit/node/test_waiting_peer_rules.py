"""A ``[firewall]`` rule naming a peer not known yet, on the node's side
(issue 20 item 6): the daemon's firewall slot compiles it with a warning
(logged once, with the rule's line in the config file), the rule matches
nothing, and the peer door recompiles the rules in place when a peer of
that name (or key) comes -- whoever brings it -- and when it goes."""

from __future__ import annotations

import base64
import logging
import struct

from phantom.dataplane.types import Mode
from phantom.node.firewall import FirewallSlot
from phantom.node.peers import Batch
from tests.unit.node.test_reload import Node, crypto_key, doc, peer

RULES = {"rule": [{"direction": "in", "peer": "n3", "proto": "icmp", "action": "drop"}]}


def ping_from(index: int) -> bytes:
    icmp = bytes([8, 0]) + bytes(6)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 1, 0, bytes([10, 99, 0, index]),
                       bytes([10, 99, 0, 1])) + icmp


def wired(rules=RULES, config_path=None):
    """A node whose rules, peer door and data path are wired as startup.build does."""
    node = Node(doc(peer("b")))
    node.firewall = FirewallSlot(Mode.TUN, rules, node.peers.names, node.peers.group_map(), (),
                                 config_path=config_path)
    node.firewall.attach(node.dp)
    node.peers.on_groups = lambda: node.firewall.regroup(node.peers.names,
                                                         node.peers.group_map())
    node.peers.named_by_rules = lambda: node.firewall.peer_refs
    return node


def verdict(node, peer_id):
    return node.firewall.current.classify("in", ping_from(3), peer_id, now=1.0).accept


def test_a_rule_waits_for_its_peer_and_applies_when_it_comes(caplog, tmp_path):
    cfg = tmp_path / "phantom.toml"
    cfg.write_text('[interface]\nx = 1\n\n[firewall]\n\n[[firewall.rule]]\npeer = "n3"\n')
    with caplog.at_level(logging.INFO, logger="phantom.daemon"):
        node = wired(config_path=cfg)                    # the old code: FirewallError at start
        f = node.firewall.current
        assert node.firewall.describe()["rules"][0]["waiting"] == "for peer n3"
        b = node.engine.peer_by_key(crypto_key("b"))
        assert verdict(node, b.id)
        # a peer of that name through the peer door (a member, an admission, open)
        n3 = node.peers.add(crypto_key("c"), "n3", [])
        assert node.firewall.current is f, "recompiled in place"
        assert not verdict(node, n3.id) and verdict(node, b.id)
        assert "waiting" not in node.firewall.describe()["rules"][0]
        # another peer coming does not recompile
        n = sum(1 for c in node.dp.calls if c[0] == "set_firewall")
        node.peers.add(crypto_key("d"), "n4", [])
        assert sum(1 for c in node.dp.calls if c[0] == "set_firewall") == n
        # gone: the rule matches nothing again
        node.peers.remove(n3)
        assert node.firewall.describe()["rules"][0]["waiting"] == "for peer n3"
        again = node.peers.add(crypto_key("c"), "n3", [])
        assert not verdict(node, again.id)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["firewall.rule[0].peer: no peer is called 'n3' (yet): the rule matches no "
                      "packet until such a peer is added (%s line 6)" % cfg], warned
    assert any("its peer is here now" in r.getMessage() for r in caplog.records)


def test_a_batch_and_a_key_wake_the_rule_too():
    key = base64.b64encode(crypto_key("e")).decode()
    node = wired({"rule": [{"direction": "in", "peer": key, "proto": "icmp", "action": "drop"}]})
    node.peers.apply(Batch(add=[dict(public_key=crypto_key("e"), name="whatever")]))
    k = node.engine.peer_by_key(crypto_key("e"))
    assert not verdict(node, k.id)
    node.peers.apply(Batch(remove=[k]))
    assert node.firewall.describe()["rules"][0]["waiting"] == "for peer %s" % key


def test_a_reload_removing_a_named_peer_is_taken_and_its_rule_waits():
    from tests.unit.node.test_reload import run
    rules = {"rule": [{"direction": "in", "peer": "c", "proto": "icmp", "action": "drop"}]}
    node = Node(doc(peer("b"), peer("c"), firewall_=rules))
    assert "waiting" not in node.firewall.describe()["rules"][0]
    out = run(node, doc(peer("b"), firewall_=rules))       # the old code: ConfigError "firewall"
    assert out["removed"] == ["c"]
    assert node.firewall.describe()["rules"][0]["waiting"] == "for peer c"
    out = run(node, doc(peer("b"), peer("c"), firewall_=rules))
    c = node.engine.peer_by_key(crypto_key("c"))
    assert "waiting" not in node.firewall.describe()["rules"][0]
    assert not node.firewall.current.classify("in", ping_from(3), c.id, now=1.0).accept
