"""A rule naming a peer not known yet (issue 20 item 6): a warning, not a
refusal; the rule matches no packet (both classifiers) until the rules
compile again with a peer of that name, and shows as waiting."""

from __future__ import annotations

import struct

import pytest

from phantom.dataplane import firewall as fw
from phantom.dataplane.firewall import Action, Direction, Reason, classify, compile_rules, parse_rules

IN = Direction.IN
KEY = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWc="
RULES = {"rule": [{"direction": "in", "proto": "tcp", "dst_port": 22, "action": "accept"},
                  {"direction": "in", "peer": "n3", "proto": "icmp", "action": "drop"},
                  {"direction": "in", "peer": KEY, "action": "drop"}]}


def ping(src="10.0.0.3"):
    import ipaddress
    l4 = bytes([8, 0]) + bytes(6)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, 1, 0,
                       ipaddress.ip_address(src).packed,
                       ipaddress.ip_address("10.0.0.1").packed) + l4


def test_unknown_peer_is_a_warning_and_the_rule_matches_nothing():
    rs = parse_rules(RULES, {"n2": 2})
    assert [r.waiting for r in rs.rules] == [False, True, True]
    assert rs.warnings == (
        "firewall.rule[1].peer: no peer is called 'n3' (yet): the rule matches no packet "
        "until such a peer is added",
        "firewall.rule[2].peer: no peer has public key %s (yet): the rule matches no packet "
        "until such a peer is added" % KEY)
    t = compile_rules(rs)
    for peer in (0, 1, 2, 3, 4, 0xFFFFFFFF):
        assert classify(t, IN, ping(), peer) == (Action.ACCEPT, -1, Reason.DEFAULT)
    # the config form is unchanged (PUT back: the same rules), "waiting" is read-only
    obj = rs.to_obj()
    assert obj["rules"][1] == {"direction": "in", "proto": "icmp", "action": "drop", "peer": "n3"}
    obj["rules"][1]["waiting"] = "peer 'n3' not known yet"
    assert parse_rules(obj, {"n2": 2}).rules == rs.rules


def test_the_rule_applies_once_compiled_with_the_peer_and_waits_again_without():
    t = compile_rules(parse_rules(RULES, {"n2": 2, "n3": 3, KEY: 4}))
    assert classify(t, IN, ping(), 3) == (Action.DROP, 1, Reason.RULE)
    assert classify(t, IN, ping(), 4) == (Action.DROP, 2, Reason.RULE)
    assert classify(t, IN, ping(), 2) == (Action.ACCEPT, -1, Reason.DEFAULT)
    rs = parse_rules(RULES, {"n2": 2})            # n3 and the key gone again
    t = compile_rules(rs)
    assert classify(t, IN, ping(), 3) == (Action.ACCEPT, -1, Reason.DEFAULT)
    assert [r.waiting for r in rs.rules] == [False, True, True]


def test_a_waiting_peer_with_a_group_still_matches_nothing():
    rs = parse_rules({"rule": [{"direction": "in", "peer": "n3", "src_group": "ops",
                                "action": "drop"}]}, {"n2": 2}, {"ops": {2, 3}})
    t = compile_rules(rs)
    for peer in (2, 3):
        assert classify(t, IN, ping(), peer).reason == Reason.DEFAULT


def test_c_classifier_decides_waiting_rules_like_the_reference():
    _testing = pytest.importorskip("phantom.fastpath._testing")
    for peers in ({"n2": 2}, {"n2": 2, "n3": 3, KEY: 4}):
        t = compile_rules(parse_rules(dict(RULES, default_in="drop"), peers))
        for peer in (-1, 0, 2, 3, 4, 5, 0xFFFFFFFF):
            ref = classify(t, 0, ping(), peer)
            assert _testing.fw_decide(t.blob, 0, ping(), peer) == (
                int(ref.action), ref.rule, int(ref.reason))


def test_firewall_describe_shows_the_rule_waiting():
    f = fw.build(RULES, {"n2": 2})
    rules = f.describe()["rules"]
    assert "waiting" not in rules[0]
    assert rules[1]["waiting"] == "for peer n3"
    assert rules[2]["waiting"] == "for peer %s" % KEY
    f = fw.build(RULES, {"n2": 2, "n3": 3, KEY: 4})
    assert all("waiting" not in r for r in f.describe()["rules"])
