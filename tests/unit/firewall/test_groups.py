"""Firewall rules by group (issue 21 item 2): ``src_group`` / ``dst_group``
parse, compile into the flat tables as peer sets, and are decided the same
by the reference classifier and the C classifier (``_testing.fw_decide``)."""

from __future__ import annotations

import itertools
import json
import struct

import pytest

from phantom.dataplane import firewall as fw
from phantom.dataplane.firewall import (Action, Direction, FirewallError, Reason, Tables, RULE,
                                        RULES_OFF, F_PEERSET, classify, compile_rules,
                                        parse_rules)

IN, OUT = Direction.IN, Direction.OUT
PEERS = {"alice": 1, "bob": 2, "carol": 3, "dave": 4}
GROUPS = {"laptops": {1, 2}, "servers": {3}, "admins": {2, 4}}
OWN = ("servers",)


def pkt4(proto=6, sport=40000, dport=22, src="10.0.0.2", dst="10.0.0.1"):
    import ipaddress
    if proto in (6, 17):
        l4 = struct.pack("!HH", sport, dport) + (bytes(16) if proto == 6 else bytes(4))
    else:
        l4 = bytes([8, 0]) + bytes(6)          # ICMP echo request
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + l4


def ruleset(rules, default_in="drop", groups=GROUPS, own=OWN):
    return parse_rules({"default_in": default_in, "rule": rules}, PEERS, groups, own)


LAPTOPS_TO_SERVERS = [
    {"direction": "in", "src_group": "laptops", "dst_group": "servers", "proto": "tcp",
     "dst_port": 22, "action": "accept"},
    {"direction": "in", "src_group": "laptops", "dst_group": "servers", "proto": "icmp",
     "action": "accept"},
]


def test_group_rule_matches_members_only():
    t = compile_rules(ruleset(LAPTOPS_TO_SERVERS))
    ssh, web, ping = pkt4(dport=22), pkt4(dport=80), pkt4(proto=1)
    for peer in (1, 2):                         # laptops
        assert classify(t, IN, ssh, peer) == (Action.ACCEPT, 0, Reason.RULE)
        assert classify(t, IN, ping, peer) == (Action.ACCEPT, 1, Reason.RULE)
        assert classify(t, IN, web, peer).action == Action.DROP
    for peer in (3, 4, 99):                     # not laptops
        assert classify(t, IN, ssh, peer) == (Action.DROP, -1, Reason.DEFAULT)
        assert classify(t, IN, ping, peer) == (Action.DROP, -1, Reason.DEFAULT)


def test_own_group_decided_at_compile_time():
    # On a node in "laptops" only, a rule for traffic *to servers* matches nothing.
    rs = ruleset(LAPTOPS_TO_SERVERS, own=("laptops",))
    t = compile_rules(rs)
    assert classify(t, IN, pkt4(), 1).action == Action.DROP
    assert any("this node is not in group 'servers'" in w for w in rs.warnings)
    # outbound: src_group is this node, dst_group the peer
    out = [{"direction": "out", "src_group": "servers", "dst_group": "admins",
            "action": "drop"}]
    t = compile_rules(parse_rules({"rule": out}, PEERS, GROUPS, OWN))
    assert classify(t, OUT, pkt4(), 2).action == Action.DROP
    assert classify(t, OUT, pkt4(), 4).action == Action.DROP
    assert classify(t, OUT, pkt4(), 1).action == Action.ACCEPT
    t = compile_rules(parse_rules({"rule": out}, PEERS, GROUPS, ("laptops",)))
    assert classify(t, OUT, pkt4(), 2).action == Action.ACCEPT


def test_group_and_peer_together_must_both_hold():
    rules = [{"direction": "in", "peer": "bob", "src_group": "laptops", "action": "drop"},
             {"direction": "in", "peer": "carol", "src_group": "laptops", "action": "drop"}]
    t = compile_rules(ruleset(rules, default_in="accept"))
    assert classify(t, IN, pkt4(), 2) == (Action.DROP, 0, Reason.RULE)
    assert classify(t, IN, pkt4(), 1).action == Action.ACCEPT     # alice: not rule 0's peer
    assert classify(t, IN, pkt4(), 3).action == Action.ACCEPT     # carol: not in laptops


def test_unknown_group_is_valid_but_reported():
    rs = ruleset([{"direction": "in", "src_group": "printers", "action": "accept"}])
    assert rs.rules[0].peer_set == frozenset()
    assert rs.warnings == ("firewall.rule[0].src_group: no peer is in group 'printers' (yet): "
                           "the rule matches no packet until one is",)
    t = compile_rules(rs)
    for peer in (1, 2, 3, 4, 0):
        assert classify(t, IN, pkt4(), peer).action == Action.DROP
    f = fw.Firewall(t)
    assert f.describe()["warnings"] == list(rs.warnings)
    # no groups at all (a daemon without a group map) is the same
    assert parse_rules({"rule": [{"direction": "in", "src_group": "x", "action": "drop"}]},
                       PEERS).warnings


@pytest.mark.parametrize("value, problem", [
    ("Laptops", "write 'laptops'"), ("lap tops", "only lowercase"), ("-x", "start or end"),
    ("", "1-32"), ("a" * 33, "1-32"), ("123", "all digits"), ("xn--abc", "IDNA"),
    (7, "must be a group name"), (["laptops"], "must be a group name")])
@pytest.mark.parametrize("key", ["src_group", "dst_group"])
def test_bad_group_name_is_an_error_naming_the_key(value, problem, key):
    with pytest.raises(FirewallError) as e:
        ruleset([{"direction": "in", "action": "accept"},
                 {"direction": "in", key: value, "action": "accept"}])
    assert e.value.key == "firewall.rule[1].%s" % key
    assert problem in str(e.value)


def test_group_names_follow_the_network_rule():
    from phantom.network import names
    from phantom.network.errors import FormatError
    for v in ["laptops", "a", "a-b", "x1", "1x", "a" * 32, "a" * 33, "Laptops", "-a", "a-",
              "12", "xn--a", "ab--c", "a_b", "a.b", "é", ""]:
        try:
            names.group(v)
            ok = True
        except FormatError:
            ok = False
        assert (fw.group_problem(v) is None) == ok, v


def test_peer_sets_in_the_blob_as_documented():
    rules = LAPTOPS_TO_SERVERS + [{"direction": "out", "dst_group": "admins", "action": "drop"},
                                  {"direction": "in", "src_group": "laptops", "action": "drop"}]
    t = compile_rules(ruleset(rules))
    n = len(rules)
    sets_off = RULES_OFF + n * RULE.size
    recs = [RULE.unpack_from(t.blob, RULES_OFF + i * RULE.size) for i in range(n)]
    assert all(r[3] & F_PEERSET for r in recs)
    assert recs[0][8] == recs[1][8] == recs[3][8]          # equal sets are shared
    def members(off):
        count = struct.unpack_from("<I", t.blob, sets_off + off)[0]
        return list(struct.unpack_from("<%dI" % count, t.blob, sets_off + off + 4))
    assert members(recs[0][8]) == [1, 2]
    assert members(recs[2][8]) == [2, 4]
    assert len(t.blob) == sets_off + 4 * (3 + 3)
    assert Tables(t.blob).nrules == n                       # decodes from the bytes alone
    bad = bytearray(t.blob)
    struct.pack_into("<I", bad, sets_off, 1000)             # a count running past the end
    with pytest.raises(ValueError):
        Tables(bytes(bad))


def test_to_obj_round_trip_keeps_groups():
    rs = ruleset(LAPTOPS_TO_SERVERS)
    obj = json.loads(json.dumps(fw.Firewall(compile_rules(rs)).describe()))
    assert obj["rules"][0]["src_group"] == "laptops" and obj["rules"][0]["dst_group"] == "servers"
    again = parse_rules(obj, PEERS, GROUPS, OWN)
    assert compile_rules(again).blob == compile_rules(rs).blob


def test_regroup_in_place_keeps_conntrack_and_counters():
    section = {"stateful": True, "default_in": "drop", "rule": LAPTOPS_TO_SERVERS}
    f = fw.build(section, PEERS, groups=GROUPS, own_groups=OWN)
    out = pkt4(sport=22, dport=40000, src="10.0.0.1", dst="10.0.0.2")
    assert f.classify("out", out, 3, now=1.0).accept                 # tracks a flow to carol
    assert not f.classify("in", pkt4(dport=80), 1, now=1.0).accept   # counted drop
    moved = {"laptops": {2}, "servers": {3}, "admins": {2, 4}}       # alice leaves laptops
    g = fw.build(section, PEERS, previous=f, groups=moved, own_groups=OWN)
    assert g is f
    assert f.describe()["drops"]["default"] == 1
    assert f.conntrack.snapshot()["entries"] == 1
    assert not f.classify("in", pkt4(), 1, now=2.0).accept          # alice: out now
    assert f.classify("in", pkt4(), 2, now=2.0).accept              # bob: still in


# --- the C classifier decides the same (differential) --------------------------------------

GROUP_CHOICES = [None, "laptops", "servers", "admins", "printers"]


def _rules():
    out = []
    for d, sg, dg, peer, proto in itertools.product(
            ["in", "out"], GROUP_CHOICES, GROUP_CHOICES, [None, "bob"], ["tcp", "icmp"]):
        r = {"direction": d, "proto": proto, "action": "accept"}
        if sg:
            r["src_group"] = sg
        if dg:
            r["dst_group"] = dg
        if peer:
            r["peer"] = peer
        if proto == "tcp":
            r["dst_port"] = 22
        out.append(r)
    return out


@pytest.mark.parametrize("own", [(), ("servers",), ("laptops", "admins")])
def test_c_classifier_decides_group_rules_like_the_reference(own):
    _testing = pytest.importorskip("phantom.fastpath._testing")
    packets = [pkt4(), pkt4(dport=80), pkt4(proto=1), pkt4(proto=17, dport=22)]
    groups = {"laptops": {1, 2}, "servers": {3}, "admins": {2, 4, 0xFFFFFFFF},
              "big": set(range(5, 400, 3))}
    checked = 0
    for r in _rules():
        t = compile_rules(parse_rules({"default_in": "drop", "default_out": "reject",
                                       "rule": [r]}, PEERS, groups, own))
        for d in (0, 1):
            for peer in (-1, 0, 1, 2, 3, 4, 5, 8, 0xFFFFFFFF, 1 << 32):
                for p in packets:
                    ref = classify(t, d, p, peer)
                    got = _testing.fw_decide(t.blob, d, p, peer)
                    assert got == (int(ref.action), ref.rule, int(ref.reason)), (r, d, peer)
                    checked += 1
    # a rule set of many group rules, with a large group (binary search)
    rules = [{"direction": "in", "src_group": g, "proto": "tcp", "dst_port": 22 + i,
              "action": "accept"} for i, g in enumerate(["big", "laptops", "admins", "nope"])]
    t = compile_rules(parse_rules({"default_in": "drop", "rule": rules}, PEERS, groups, own))
    for peer in range(-1, 410):
        for port in (22, 23, 24, 25):
            p = pkt4(dport=port)
            ref = classify(t, 0, p, peer)
            assert _testing.fw_decide(t.blob, 0, p, peer) == (int(ref.action), ref.rule,
                                                              int(ref.reason))
            if port == 22:
                assert ref.accept == (peer in groups["big"])
    assert checked > 10000
