"""The firewall: rule parsing, compiled tables, the reference classifier, reject.

Packets are built with scapy.  A hypothesis test compares the classifier
(which reads the compiled tables) with ``oracle`` below, a slow, direct reading
of the RuleSet and the documented evaluation order.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
# the layers by module, not scapy.all (which loads ~50 layer modules: ~0.4 s
# of every xdist worker's collection)
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6PacketTooBig, IPv6, IPv6ExtHdrFragment)
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import ARP, GRE, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from phantom.dataplane import firewall as fwmod
from phantom.dataplane.firewall import tables as fwtables
from phantom.dataplane.firewall import (
    Action, Direction, Firewall, FirewallError, Reason, Tables, Verdict, RULE, RULES_OFF,
    TABLE_HEADER, PROTOCOLS_OFF, ETHERTYPES_OFF, classify, compile_rules, parse_rules,
    reject_response,
)

IN, OUT = Direction.IN, Direction.OUT
PEERS = {"alice": 1, "bob": 2, "carol": 3,
         "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=": 2}


def tables(obj, peers=PEERS):
    return compile_rules(parse_rules(obj, peers))


def v4(proto_layer, src="10.0.0.2", dst="10.0.0.1", **kw):
    return raw(IP(src=src, dst=dst, **kw) / proto_layer)


def v6(proto_layer, src="fd00::2", dst="fd00::1", **kw):
    return raw(IPv6(src=src, dst=dst, **kw) / proto_layer)


def act(t, direction, pkt, peer=1, eth=False):
    return classify(t, direction, pkt, peer, eth).action


# --- default policy ------------------------------------------------------------------


DEFAULT = None


def setup_module(_):
    global DEFAULT
    DEFAULT = tables({})


@pytest.mark.parametrize("layer", [GRE(), SCTP(), ESP(spi=1, data=b"x" * 16)])
@pytest.mark.parametrize("direction", [IN, OUT])
def test_default_policy_drops_other_protocols(layer, direction):
    for pkt in (v4(layer), v6(layer)):
        v = classify(DEFAULT, direction, pkt, 1)
        assert v == Verdict(Action.DROP, -1, Reason.PROTOCOL)


@pytest.mark.parametrize("pkt", [
    v4(TCP(dport=80)), v4(UDP(dport=53)), v4(ICMP()),
    v6(TCP(dport=80)), v6(UDP(dport=53)), v6(ICMPv6EchoRequest()),
])
def test_default_policy_passes_tcp_udp_icmp(pkt):
    for d in (IN, OUT):
        assert classify(DEFAULT, d, pkt, 1) == Verdict(Action.ACCEPT, -1, Reason.DEFAULT)


def test_tap_arp_passes_unknown_ethertype_dropped():
    arp = raw(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ARP(pdst="10.0.0.1"))
    assert classify(DEFAULT, IN, arp, 1, True) == Verdict(Action.ACCEPT, -1, Reason.ETHERTYPE)
    odd = raw(Ether(src="02:00:00:00:00:01", type=0x88B5) / Raw(b"x" * 46))
    assert classify(DEFAULT, IN, odd, 1, True) == Verdict(Action.DROP, -1, Reason.ETHERTYPE)
    vlan = raw(Ether(type=0x8100) / Raw(b"\0" * 46))
    assert classify(DEFAULT, OUT, vlan, 1, True).reason == Reason.ETHERTYPE
    ip = raw(Ether() / IP(dst="10.0.0.1") / TCP())
    assert act(DEFAULT, IN, ip, eth=True) == Action.ACCEPT
    gre = raw(Ether() / IP(dst="10.0.0.1") / GRE())
    assert classify(DEFAULT, IN, gre, 1, True).reason == Reason.PROTOCOL
    # an EtherType saying IPv6 over an IPv4 packet is malformed
    bad = raw(Ether(type=0x86DD) / IP() / TCP())
    assert classify(DEFAULT, IN, bad, 1, True).reason == Reason.MALFORMED


def test_allow_lists_extend_and_open_policy():
    t = tables({"allow_protocols": ["gre", 132], "allow_ethertypes": ["0x88b5"]})
    assert act(t, IN, v4(GRE())) == Action.ACCEPT
    assert act(t, IN, v6(SCTP())) == Action.ACCEPT
    assert act(t, IN, v4(ESP(spi=1))) == Action.DROP
    assert act(t, IN, raw(Ether(type=0x88B5) / Raw(b"x" * 46)), eth=True) == Action.ACCEPT
    t = tables({"default_policy": "open"})
    assert act(t, IN, v4(ESP(spi=1))) == Action.ACCEPT
    assert act(t, IN, raw(Ether(type=0x88B5) / Raw(b"x" * 46)), eth=True) == Action.ACCEPT


def test_malformed_packets_dropped():
    good = v4(TCP(dport=80))
    for bad in (b"", b"\x45", good[:19], good[:30],          # truncated header / TCP
                b"\x75" + good[1:],                            # version 7
                b"\x44" + good[1:],                            # IHL 16 bytes
                good[:2] + struct.pack("!H", 400) + good[4:],  # total length > buffer
                v6(TCP())[:50]):
        assert classify(DEFAULT, IN, bad, 1) == Verdict(Action.DROP, -1, Reason.MALFORMED), bad
    # a 2-byte "TCP" first fragment cannot hide its ports (tiny-fragment attack)
    tiny = v4(Raw(b"\x00\x50"), proto=6, flags="MF")
    assert classify(DEFAULT, IN, tiny, 1).reason == Reason.MALFORMED
    # TCP fragment at offset 8 bytes could rewrite the header (RFC 1858)
    ovl = v4(Raw(b"x" * 16), proto=6, frag=1)
    assert classify(DEFAULT, IN, ovl, 1).reason == Reason.MALFORMED


# --- rules ----------------------------------------------------------------------------


def test_port_rules_and_ranges():
    t = tables({"rule": [
        {"direction": "in", "proto": "tcp", "dst_port": 22, "action": "drop"},
        {"direction": "in", "proto": "udp", "dst_port": "1000-2000", "action": "reject"},
        {"direction": "out", "proto": "tcp", "src_port": "5000-5001", "action": "drop"},
        {"direction": "in", "proto": "any", "dst_port": 53, "action": "drop"},
    ]})
    assert classify(t, IN, v4(TCP(dport=22)), 1) == Verdict(Action.DROP, 0, Reason.RULE)
    assert act(t, IN, v4(TCP(dport=23))) == Action.ACCEPT
    assert act(t, OUT, v4(TCP(dport=22))) == Action.ACCEPT       # rule 0 is inbound only
    assert act(t, IN, v4(UDP(dport=22))) == Action.ACCEPT        # rule 0 is TCP only
    for p, a in ((999, Action.ACCEPT), (1000, Action.REJECT), (1500, Action.REJECT),
                 (2000, Action.REJECT), (2001, Action.ACCEPT)):
        assert act(t, IN, v6(UDP(dport=p))) == a, p
    assert classify(t, OUT, v4(TCP(sport=5001, dport=80)), 1).rule == 2
    assert act(t, OUT, v4(TCP(sport=5002, dport=80))) == Action.ACCEPT
    # proto any + port: TCP and UDP, never ICMP
    assert classify(t, IN, v4(TCP(dport=53)), 1).rule == 3
    assert classify(t, IN, v6(UDP(dport=53)), 1).rule == 3
    assert act(t, IN, v4(ICMP())) == Action.ACCEPT


def test_peer_and_cidr_rules_v4_v6():
    t = tables({"rule": [
        {"direction": "in", "peer": "bob", "action": "drop"},
        {"direction": "in", "cidr": "10.9.0.0/16", "action": "drop"},
        {"direction": "out", "cidr": "fd00:bad::/32", "action": "drop"},
        {"direction": "in", "local_cidr": "10.0.0.77/32", "proto": "icmp", "action": "reject"},
        {"direction": "in", "peer": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
         "cidr": "fd00:99::/64", "action": "drop"},
    ]})
    assert classify(t, IN, v4(TCP()), 2).rule == 0
    assert act(t, IN, v4(TCP()), peer=1) == Action.ACCEPT
    assert classify(t, IN, v4(TCP(), src="10.9.3.4"), 1).rule == 1
    assert act(t, IN, v4(TCP(), src="10.10.3.4")) == Action.ACCEPT
    assert act(t, IN, v4(TCP(), dst="10.9.3.4")) == Action.ACCEPT   # cidr is the remote side
    assert act(t, OUT, v4(TCP(), src="10.9.3.4")) == Action.ACCEPT  # rule 1 is inbound
    assert classify(t, OUT, v6(UDP(), dst="fd00:bad:1::5"), 1).rule == 2
    assert act(t, OUT, v6(UDP(), src="fd00:bad:1::5", dst="fd00::9")) == Action.ACCEPT
    assert act(t, OUT, v4(UDP(), dst="10.9.0.1")) == Action.ACCEPT   # v6 rule, v4 packet
    assert classify(t, IN, v4(ICMP(), dst="10.0.0.77"), 1).rule == 3
    assert act(t, IN, v4(TCP(), dst="10.0.0.77")) == Action.ACCEPT
    # peer by public key, and a v6 cidr
    assert act(t, IN, v6(TCP(), src="fd00:99::1"), peer=3) == Action.ACCEPT
    assert act(t, IN, v6(TCP(), src="fd00:98::1"), peer=2) == Action.DROP  # rule 0 (bob)
    t2 = tables({"rule": [{"direction": "in", "peer": PEERS_KEY, "cidr": "fd00:99::/64",
                           "action": "drop"}]})
    assert classify(t2, IN, v6(TCP(), src="fd00:99::1"), 2).rule == 0
    assert act(t2, IN, v6(TCP(), src="fd00:98::1"), peer=2) == Action.ACCEPT


PEERS_KEY = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="


def test_first_match_wins_and_defaults():
    t = tables({"default_in": "drop", "rule": [
        {"direction": "in", "proto": "tcp", "dst_port": 80, "action": "accept"},
        {"direction": "in", "proto": "tcp", "action": "reject"},
        {"direction": "in", "proto": "tcp", "dst_port": 80, "action": "drop"},
    ]})
    assert classify(t, IN, v4(TCP(dport=80)), 1) == Verdict(Action.ACCEPT, 0, Reason.RULE)
    assert classify(t, IN, v4(TCP(dport=81)), 1) == Verdict(Action.REJECT, 1, Reason.RULE)
    assert classify(t, IN, v4(UDP(dport=80)), 1) == Verdict(Action.DROP, -1, Reason.DEFAULT)
    assert classify(t, OUT, v4(UDP(dport=80)), 1) == Verdict(Action.ACCEPT, -1, Reason.DEFAULT)
    t = tables({"default_out": "reject"})
    assert classify(t, OUT, v4(UDP()), 1) == Verdict(Action.REJECT, -1, Reason.DEFAULT)


def test_fragments_cannot_slip_past_port_rules():
    t = tables({"default_in": "drop", "rule": [
        {"direction": "in", "proto": "udp", "dst_port": 22, "action": "drop"},
        {"direction": "in", "proto": "udp", "dst_port": 53, "action": "accept"},
        {"direction": "in", "proto": "icmp", "action": "accept"},
    ]})
    later = v4(Raw(b"x" * 64), proto=17, frag=10, id=7)
    # stateless: the drop port rule always matches, the accept port rule never
    assert classify(t, IN, later, 1) == Verdict(Action.DROP, 0, Reason.RULE)
    t2 = tables({"rule": [{"direction": "in", "proto": "tcp", "dst_port": 80,
                           "action": "accept"},
                          {"direction": "in", "proto": "tcp", "action": "drop"}]})
    later_tcp = v6(IPv6ExtHdrFragment(nh=6, offset=10, m=0, id=9) / Raw(b"x" * 64))
    assert classify(t2, IN, later_tcp, 1) == Verdict(Action.DROP, 1, Reason.RULE)
    # portless rules match non-first fragments normally
    later_icmp = v4(Raw(b"x" * 64), proto=1, frag=10, id=8)
    assert classify(t, IN, later_icmp, 1).rule == 2


def test_fragments_follow_accepted_first_fragment():
    t = tables({"default_in": "drop", "rule": [
        {"direction": "in", "proto": "udp", "dst_port": 53, "action": "accept"},
    ]})
    fw = Firewall(t)
    first = v4(UDP(sport=1000, dport=53) / Raw(b"a" * 64), flags="MF", id=77)
    rest = v4(Raw(b"b" * 64), proto=17, frag=9, id=77)
    assert fw.classify(IN, rest, 1, now=1.0).action == Action.DROP    # first not seen yet
    assert fw.classify(IN, first, 1, now=1.0) == Verdict(Action.ACCEPT, 0, Reason.RULE)
    assert fw.classify(IN, rest, 1, now=2.0) == Verdict(Action.ACCEPT, -1, Reason.FRAGMENT)
    assert fw.classify(IN, rest, 2, now=2.0).action == Action.DROP    # other peer
    other_id = v4(Raw(b"b" * 64), proto=17, frag=9, id=78)
    assert fw.classify(IN, other_id, 1, now=2.0).action == Action.DROP
    assert fw.classify(IN, rest, 1, now=1.0 + fwmod.FRAGMENT_TIMEOUT).action == Action.DROP
    # a first fragment to a port that is not allowed lets nothing through
    first_bad = v4(UDP(dport=54) / Raw(b"a" * 64), flags="MF", id=79)
    rest_bad = v4(Raw(b"b" * 64), proto=17, frag=9, id=79)
    assert fw.classify(IN, first_bad, 1, now=3.0).action == Action.DROP
    assert fw.classify(IN, rest_bad, 1, now=3.0).action == Action.DROP
    # IPv6 too
    f6 = v6(IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=5) / UDP(dport=53) / Raw(b"a" * 64))
    r6 = v6(IPv6ExtHdrFragment(nh=17, offset=9, m=0, id=5) / Raw(b"b" * 64))
    assert fw.classify(IN, r6, 1, now=4.0).action == Action.DROP
    assert fw.classify(IN, f6, 1, now=4.0).rule == 0
    assert fw.classify(IN, r6, 1, now=4.0).reason == Reason.FRAGMENT


def test_fragment_cache_bounded():
    t = tables({"default_in": "drop",
                "rule": [{"direction": "in", "proto": "udp", "dst_port": 53, "action": "accept"}]})
    fw = Firewall(t)
    fw.fragments.max_entries = 4
    for i in range(6):
        fw.classify(IN, v4(UDP(dport=53) / Raw(b"a" * 16), flags="MF", id=i), 1, now=0.0)
    assert len(fw.fragments) == 4 and fw.fragments.full == 2
    assert fw.classify(IN, v4(Raw(b"b" * 8), proto=17, frag=3, id=5), 1, now=0.0).action == Action.DROP
    assert fw.classify(IN, v4(Raw(b"b" * 8), proto=17, frag=3, id=3), 1, now=0.0).action == Action.ACCEPT


# --- tables ---------------------------------------------------------------------------


def test_table_layout_is_as_documented():
    t = tables({"stateful": True, "default_in": "drop", "rule": [
        {"direction": "out", "proto": "udp", "src_port": 7, "dst_port": "100-200",
         "peer": "carol", "cidr": "192.168.0.0/16", "local_cidr": "10.1.0.0/24",
         "action": "reject"},
        {"direction": "in", "cidr": "fd00::/8", "action": "drop"},
    ]})
    blob = t.blob
    assert isinstance(blob, bytes) and len(blob) == RULES_OFF + 2 * RULE.size == 8464 + 176
    assert TABLE_HEADER.unpack_from(blob, 0) == (b"PHFW", 2, 88, 2, 1, 1, 0, 0)
    assert [i for i in range(256) if blob[PROTOCOLS_OFF + i]] == [1, 6, 17, 58]
    ets = [e for e in range(65536) if blob[ETHERTYPES_OFF + (e >> 3)] >> (e & 7) & 1]
    assert ets == [0x0800, 0x0806, 0x86DD]
    r0 = RULE.unpack_from(blob, RULES_OFF)
    assert r0[:10] == (1, 2, 17, fwmod.F_PROTO | fwmod.F_PORTS | fwmod.F_PEER
                       | fwmod.F_REMOTE4 | fwmod.F_LOCAL4, 7, 7, 100, 200, 3, 0)
    assert r0[10] == bytes([192, 168, 0, 0]) + bytes(12)
    assert r0[11] == bytes([255, 255, 0, 0]) + bytes(12)
    assert r0[12] == bytes([10, 1, 0, 0]) + bytes(12)
    assert r0[13] == bytes([255, 255, 255, 0]) + bytes(12)
    r1 = RULE.unpack_from(blob, RULES_OFF + RULE.size)
    assert r1[:10] == (0, 1, 0, fwmod.F_REMOTE6, 0, 65535, 0, 65535, 0, 1)
    assert r1[10] == bytes([0xFD]) + bytes(15) and r1[11] == bytes([0xFF]) + bytes(15)
    # the blob alone is enough: decoding it gives the same decisions
    t2 = Tables(blob)
    pkt = v4(UDP(sport=7, dport=150), src="10.1.0.3", dst="192.168.4.4")
    assert classify(t2, OUT, pkt, 3) == classify(t, OUT, pkt, 3) == Verdict(Action.REJECT, 0, Reason.RULE)
    assert classify(t2, OUT, pkt, 2).action == Action.ACCEPT


def test_tables_are_immutable_and_checked():
    t = tables({})
    with pytest.raises(AttributeError):
        t.stateful = True
    with pytest.raises(ValueError):
        Tables(b"XXXX" + t.blob[4:])
    with pytest.raises(ValueError):
        Tables(t.blob + b"\0")


# --- bad rule sets ----------------------------------------------------------------------


@pytest.mark.parametrize("rule, field", [
    ({"action": "drop"}, "direction"),
    ({"direction": "sideways", "action": "drop"}, "direction"),
    ({"direction": "in"}, "action"),
    ({"direction": "in", "action": "allow"}, "action"),
    ({"direction": "in", "action": "drop", "proto": "tcpp"}, "proto"),
    ({"direction": "in", "action": "drop", "proto": 256}, "proto"),
    ({"direction": "in", "action": "drop", "proto": "gre"}, "proto"),     # not in policy
    ({"direction": "in", "action": "drop", "proto": "icmp", "dst_port": 1}, "dst_port"),
    ({"direction": "in", "action": "drop", "proto": "tcp", "dst_port": 70000}, "dst_port"),
    ({"direction": "in", "action": "drop", "proto": "tcp", "dst_port": "20-10"}, "dst_port"),
    ({"direction": "in", "action": "drop", "proto": "tcp", "src_port": "x"}, "src_port"),
    ({"direction": "in", "action": "drop", "proto": "tcp", "src_port": True}, "src_port"),
    ({"direction": "in", "action": "drop", "peer": ""}, "peer"),
    ({"direction": "in", "action": "drop", "peer": 7}, "peer"),
    ({"direction": "in", "action": "drop", "cidr": "10.0.0.1/8"}, "cidr"),
    ({"direction": "in", "action": "drop", "cidr": "not-an-ip"}, "cidr"),
    ({"direction": "in", "action": "drop", "cidr": "10.0.0.0/8", "local_cidr": "fd00::/8"},
     "local_cidr"),
    ({"direction": "in", "action": "drop", "colour": "red"}, "colour"),
    ({"direction": "in", "action": "drop", "comment": 5}, "comment"),
])
def test_bad_rule_refused_naming_rule_and_field(rule, field):
    good = {"direction": "in", "action": "accept"}
    with pytest.raises(FirewallError) as ei:
        parse_rules({"rule": [good, good, rule]}, PEERS)
    assert ei.value.rule_index == 2 and ei.value.field == field
    assert str(ei.value).startswith("firewall.rule[2].%s: " % field)


@pytest.mark.parametrize("obj, field", [
    ({"default_policy": "paranoid"}, "default_policy"),
    ({"stateful": "yes"}, "stateful"),
    ({"default_in": "maybe"}, "default_in"),
    ({"allow_protocols": ["xyz"]}, "allow_protocols"),
    ({"allow_ethertypes": [0x10000]}, "allow_ethertypes"),
    ({"conntrack_max": 0}, "conntrack_max"),
    ({"timeouts": {"tcp_forever": 1}}, "timeouts"),
    ({"timeouts": {"udp": -1}}, "timeouts"),
    ({"reject_rate": -1}, "reject_rate"),
    ({"rule": {"direction": "in"}}, "rule"),
    ({"rule": [], "rules": []}, "rules"),
    ({"unknown": 1}, "unknown"),
    ({"rule": [{"direction": "in", "action": "drop"}] * (fwmod.MAX_RULES + 1)}, "rule"),
])
def test_bad_settings_refused(obj, field):
    with pytest.raises(FirewallError) as ei:
        parse_rules(obj, PEERS)
    assert ei.value.rule_index is None and ei.value.field == field


def test_roundtrip_to_obj():
    obj = {"default_policy": "prototype", "stateful": True, "allow_protocols": ["gre"],
           "rule": [{"direction": "in", "proto": "tcp", "dst_port": "1000-2000",
                     "src_port": 5, "peer": "alice", "cidr": "10.0.0.0/8",
                     "local_cidr": "10.1.0.0/16", "action": "reject", "comment": "x"},
                    {"direction": "out", "proto": 47, "action": "drop"}]}
    rs = parse_rules(obj, PEERS)
    again = parse_rules(rs.to_obj(), PEERS)
    assert again == rs
    assert rs.to_obj()["rules"][1]["proto"] == "gre"


# --- counters and live swap ------------------------------------------------------------


def test_hit_and_drop_counters():
    t = tables({"rule": [{"direction": "in", "proto": "tcp", "dst_port": 22, "action": "drop"},
                         {"direction": "in", "proto": "udp", "action": "accept"}]})
    fw = Firewall(t)
    for _ in range(3):
        fw.classify(IN, v4(TCP(dport=22)), 1)
    fw.classify(IN, v4(UDP()), 1)
    fw.classify(IN, v4(GRE()), 1)
    fw.classify(IN, b"\x45", 1)
    fw.classify(OUT, v4(TCP(dport=22)), 1)
    snap = fw.snapshot()
    assert [r["hits"] for r in snap["rules"]] == [3, 1]
    assert snap["drops"]["rule"] == 3 and snap["drops"]["protocol"] == 1
    assert snap["drops"]["malformed"] == 1
    assert snap["accepts"]["rule"] == 1 and snap["accepts"]["default"] == 1
    st_ = fw.active[1]
    assert list(st_.hits) == [3, 1] and st_.hits.typecode == "Q"


def test_live_swap_takes_effect_on_next_packet():
    fw = Firewall(tables({}))
    pkt = v4(TCP(dport=5201))
    assert fw.classify(IN, pkt, 1).action == Action.ACCEPT
    old_tables, old_state = fw.active
    fw.install(tables({"rule": [{"direction": "in", "proto": "tcp", "dst_port": 5201,
                                 "action": "drop"}]}))
    assert fw.classify(IN, pkt, 1) == Verdict(Action.DROP, 0, Reason.RULE)
    assert fw.active[1].conntrack is old_state.conntrack
    assert fw.describe()["rules"][0]["hits"] == 1
    assert fw.snapshot()["accepts"]["default"] == 1      # drop/accept counters persist


# --- reject ---------------------------------------------------------------------------


def test_reject_tcp_rst_v4_and_v6():
    syn = IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=40000, dport=22, flags="S", seq=1000)
    rst = IP(reject_response(raw(syn)))
    assert rst.src == "10.0.0.1" and rst.dst == "10.0.0.2"
    assert rst[TCP].sport == 22 and rst[TCP].dport == 40000
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001 and rst[TCP].seq == 0
    rst2 = IP(raw(rst))
    chk_ip, chk_tcp = rst[IP].chksum, rst[TCP].chksum
    del rst2[IP].chksum, rst2[TCP].chksum
    rst2 = IP(raw(rst2))
    assert (rst2[IP].chksum, rst2[TCP].chksum) == (chk_ip, chk_tcp)
    ack = IPv6(src="fd00::2", dst="fd00::1") / TCP(sport=1, dport=2, flags="PA", seq=5,
                                                     ack=777) / Raw(b"hello")
    rst6 = IPv6(reject_response(raw(ack)))
    assert rst6.src == "fd00::1" and rst6[TCP].flags == "R" and rst6[TCP].seq == 777
    c = rst6[TCP].chksum
    del rst6[TCP].chksum
    assert IPv6(raw(rst6))[TCP].chksum == c
    # never answer an RST
    assert reject_response(raw(IP() / TCP(flags="R"))) is None


def test_reject_icmp_admin_prohibited():
    pkt = IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=5, dport=9) / Raw(b"q" * 30)
    r = IP(reject_response(raw(pkt)))
    assert r.src == "10.0.0.1" and r[ICMP].type == 3 and r[ICMP].code == 13
    c = r[ICMP].chksum
    del r[ICMP].chksum
    assert IP(raw(r))[ICMP].chksum == c
    assert raw(pkt) in raw(r)
    p6 = IPv6(src="fd00::2", dst="fd00::1") / UDP(dport=9) / Raw(b"q" * 2000)
    r6 = IPv6(reject_response(raw(p6)))
    assert r6[ICMPv6DestUnreach].type == 1 and r6[ICMPv6DestUnreach].code == 1
    assert len(raw(r6)) <= 1280
    c = r6[ICMPv6DestUnreach].cksum
    del r6[ICMPv6DestUnreach].cksum
    assert IPv6(raw(r6))[ICMPv6DestUnreach].cksum == c
    # no errors about errors, multicast or later fragments
    err = IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=3, code=1) / Raw(b"x" * 28)
    assert reject_response(raw(err)) is None
    assert reject_response(raw(IP(dst="224.0.0.5") / UDP())) is None
    assert reject_response(raw(IP(dst="10.0.0.1", proto=17, frag=5) / Raw(b"x" * 8))) is None
    assert reject_response(raw(IPv6(dst="fd00::1") / ICMPv6DestUnreach())) is None


def test_reject_tap_swaps_macs():
    f = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(
        src="10.0.0.2", dst="10.0.0.1") / TCP(flags="S")
    r = Ether(reject_response(raw(f), is_ethernet=True))
    assert r.src == "02:00:00:00:00:01" and r.dst == "02:00:00:00:00:02"
    assert r[TCP].flags == "RA"
    assert reject_response(raw(Ether() / ARP()), is_ethernet=True) is None


def test_reject_is_rate_limited():
    t = tables({"reject_rate": 2, "reject_burst": 3,
                "rule": [{"direction": "out", "proto": "tcp", "action": "reject"}]})
    fw = Firewall(t, clock=lambda: 100.0)
    pkt = v4(TCP(flags="S"))
    assert fw.classify(OUT, pkt, 1).action == Action.REJECT
    got = [fw.reject_response(pkt, now=100.0) is not None for _ in range(5)]
    assert got == [True, True, True, False, False]
    assert fw.reject_response(pkt, now=100.5) is not None          # 1 token refilled
    assert fw.reject_response(pkt, now=100.5) is None
    assert fw.snapshot()["rejects"] == {"sent": 4, "rate_limited": 3, "unanswerable": 0}


# --- stateful mode ----------------------------------------------------------------------


def deny_new_inbound(**extra):
    return tables({"stateful": True, "default_in": "drop", **extra})


def test_stateful_tcp_replies_in_new_inbound_blocked():
    fw = Firewall(deny_new_inbound())
    syn = v4(TCP(sport=40000, dport=80, flags="S"), src="10.0.0.1", dst="10.0.0.2")
    synack = v4(TCP(sport=80, dport=40000, flags="SA"), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, synack, 1, now=0.0).action == Action.DROP     # nothing tracked
    assert fw.classify(OUT, syn, 1, now=0.0).action == Action.ACCEPT
    assert fw.classify(IN, synack, 1, now=0.1) == Verdict(Action.ACCEPT, -1, Reason.ESTABLISHED)
    # other peer, other port, new inbound SYN: dropped
    assert fw.classify(IN, synack, 2, now=0.1).action == Action.DROP
    other = v4(TCP(sport=80, dport=40001, flags="A"), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, other, 1, now=0.1).action == Action.DROP
    new = v4(TCP(sport=80, dport=40000, flags="S"), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, new, 1, now=0.1).action == Action.DROP
    new2 = v4(TCP(sport=5555, dport=22, flags="S"), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, new2, 1, now=0.1) == Verdict(Action.DROP, -1, Reason.DEFAULT)
    # established: long timeout
    ack = v4(TCP(sport=80, dport=40000, flags="A"), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, ack, 1, now=3000.0).action == Action.ACCEPT
    # FIN -> closing timeout
    fin = v4(TCP(sport=40000, dport=80, flags="FA"), src="10.0.0.1", dst="10.0.0.2")
    assert fw.classify(OUT, fin, 1, now=3001.0).action == Action.ACCEPT
    assert fw.classify(IN, ack, 1, now=3001.0 + 59).action == Action.ACCEPT
    assert fw.classify(IN, ack, 1, now=3001.0 + 59 + 61).action == Action.DROP


def test_stateful_tcp_new_flow_times_out():
    fw = Firewall(deny_new_inbound())
    syn = v6(TCP(sport=40000, dport=80, flags="S"), src="fd00::1", dst="fd00::2")
    synack = v6(TCP(sport=80, dport=40000, flags="SA"), src="fd00::2", dst="fd00::1")
    fw.classify(OUT, syn, 1, now=0.0)
    assert fw.classify(IN, synack, 1, now=31.0).action == Action.DROP


def test_stateful_udp_and_icmp_echo():
    fw = Firewall(deny_new_inbound())
    q = v4(UDP(sport=3333, dport=53), src="10.0.0.1", dst="10.0.0.2")
    a = v4(UDP(sport=53, dport=3333), src="10.0.0.2", dst="10.0.0.1")
    fw.classify(OUT, q, 1, now=0.0)
    assert fw.classify(IN, a, 1, now=10.0).reason == Reason.ESTABLISHED
    assert fw.classify(IN, a, 1, now=100.0).reason == Reason.ESTABLISHED   # udp_stream
    assert fw.classify(IN, a, 1, now=221.0).action == Action.DROP
    # ICMP echo, v4 and v6
    req = v4(ICMP(type=8, id=42, seq=1), src="10.0.0.1", dst="10.0.0.2")
    rep = v4(ICMP(type=0, id=42, seq=1), src="10.0.0.2", dst="10.0.0.1")
    rep_other = v4(ICMP(type=0, id=43, seq=1), src="10.0.0.2", dst="10.0.0.1")
    inbound_req = v4(ICMP(type=8, id=42, seq=1), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, rep, 1, now=0.0).action == Action.DROP
    fw.classify(OUT, req, 1, now=0.0)
    assert fw.classify(IN, rep, 1, now=1.0).reason == Reason.ESTABLISHED
    assert fw.classify(IN, rep_other, 1, now=1.0).action == Action.DROP
    assert fw.classify(IN, inbound_req, 1, now=1.0).action == Action.DROP
    req6 = v6(ICMPv6EchoRequest(id=7), src="fd00::1", dst="fd00::2")
    rep6 = v6(ICMPv6EchoReply(id=7), src="fd00::2", dst="fd00::1")
    fw.classify(OUT, req6, 1, now=0.0)
    assert fw.classify(IN, rep6, 1, now=1.0).reason == Reason.ESTABLISHED
    assert fw.classify(IN, rep6, 1, now=40.0).action == Action.DROP


def test_stateful_related_icmp_errors():
    fw = Firewall(deny_new_inbound())
    out = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3333, dport=9999)
    fw.classify(OUT, raw(out), 1, now=0.0)
    err = IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=3, code=3) / raw(out)
    assert fw.classify(IN, raw(err), 1, now=1.0).reason == Reason.ESTABLISHED
    forged = IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=3, code=3) / raw(
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3334, dport=9999))
    assert fw.classify(IN, raw(forged), 1, now=1.0).action == Action.DROP


def test_stateless_mode_does_not_track():
    fw = Firewall(tables({"default_in": "drop"}))
    fw.classify(OUT, v4(UDP(sport=1, dport=2), src="10.0.0.1", dst="10.0.0.2"), 1, now=0.0)
    assert len(fw.conntrack) == 0
    assert fw.classify(IN, v4(UDP(sport=2, dport=1), src="10.0.0.2", dst="10.0.0.1"), 1,
                       now=0.0).action == Action.DROP


def test_conntrack_full_is_counted_and_documented_behaviour():
    fw = Firewall(deny_new_inbound(conntrack_max=2))
    for port in (1, 2, 3):
        assert fw.classify(OUT, v4(UDP(sport=port, dport=53), src="10.0.0.1",
                                   dst="10.0.0.2"), 1, now=0.0).action == Action.ACCEPT
    assert fw.snapshot()["conntrack"]["conntrack_full"] == 1
    reply3 = v4(UDP(sport=53, dport=3), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, reply3, 1, now=0.0).action == Action.DROP
    reply1 = v4(UDP(sport=53, dport=1), src="10.0.0.2", dst="10.0.0.1")
    assert fw.classify(IN, reply1, 1, now=0.0).action == Action.ACCEPT


def test_conntrack_survives_live_swap():
    fw = Firewall(deny_new_inbound())
    fw.classify(OUT, v4(UDP(sport=1, dport=2), src="10.0.0.1", dst="10.0.0.2"), 1, now=0.0)
    fw.install(deny_new_inbound(rule=[{"direction": "in", "proto": "tcp", "action": "drop"}]))
    assert fw.classify(IN, v4(UDP(sport=2, dport=1), src="10.0.0.2", dst="10.0.0.1"), 1,
                       now=1.0).reason == Reason.ESTABLISHED


# --- differential: compiled tables vs a direct reading of the RuleSet --------------------

V4_ADDRS = ["10.0.0.1", "10.0.1.2", "192.168.1.5", "172.16.0.9"]
V6_ADDRS = ["fd00::1", "fd00:1::2", "2001:db8::5", "fe80::9"]
V4_NETS = ["10.0.0.0/8", "10.0.0.0/24", "10.0.1.2/32", "192.168.0.0/16", "0.0.0.0/0"]
V6_NETS = ["fd00::/8", "fd00:1::/32", "2001:db8::/32", "fe80::9/128", "::/0"]
PORTS = [0, 22, 53, 80, 443, 1000, 1500, 2000, 65535]
PROTOS = [1, 6, 17, 58, 47, 132]


def port_spec():
    single = st.sampled_from(PORTS)
    rng = st.tuples(st.sampled_from(PORTS), st.sampled_from(PORTS)).map(
        lambda t: "%d-%d" % (min(t), max(t)))
    return st.one_of(single, rng)


@st.composite
def rule_objs(draw):
    r = {"direction": draw(st.sampled_from(["in", "out"])),
         "action": draw(st.sampled_from(["accept", "drop", "reject"]))}
    proto = draw(st.sampled_from(["any", "tcp", "udp", "icmp", "icmpv6", 6, 17]))
    r["proto"] = proto
    if proto in ("any", "tcp", "udp", 6, 17):
        if draw(st.booleans()):
            r["dst_port"] = draw(port_spec())
        if draw(st.integers(0, 3)) == 0:
            r["src_port"] = draw(port_spec())
    if draw(st.integers(0, 3)) == 0:
        r["peer"] = draw(st.sampled_from(["alice", "bob"]))
    for key in ("src_group", "dst_group"):
        if draw(st.integers(0, 3)) == 0:
            r[key] = draw(st.sampled_from(sorted(H_GROUPS) + ["nobody"]))
    fam = draw(st.sampled_from([4, 6]))
    nets = V4_NETS if fam == 4 else V6_NETS
    if draw(st.booleans()):
        r["cidr"] = draw(st.sampled_from(nets))
    if draw(st.integers(0, 3)) == 0:
        r["local_cidr"] = draw(st.sampled_from(nets))
    return r


@st.composite
def packets(draw):
    fam = draw(st.sampled_from([4, 6]))
    addrs = V4_ADDRS if fam == 4 else V6_ADDRS
    src, dst = draw(st.sampled_from(addrs)), draw(st.sampled_from(addrs))
    proto = draw(st.sampled_from(PROTOS))
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    frag = draw(st.sampled_from(["none", "none", "first", "later"]))
    offset = draw(st.sampled_from([1, 2, 100])) if frag == "later" else 0
    if frag == "later":
        l4 = Raw(b"z" * 24)
    elif proto == 6:
        l4 = TCP(sport=sport, dport=dport, flags=draw(st.sampled_from(["S", "SA", "A", "R"])))
    elif proto == 17:
        l4 = UDP(sport=sport, dport=dport)
    elif proto == 1:
        l4 = ICMP()
    elif proto == 58:
        l4 = ICMPv6EchoRequest()
    elif proto == 47:
        l4 = GRE()
    else:
        l4 = SCTP(sport=sport, dport=dport)
    if fam == 4:
        hdr = IP(src=src, dst=dst, proto=proto, frag=offset, id=9,
                 flags="MF" if frag == "first" else 0)
        pkt = hdr / l4
    elif frag == "none":
        pkt = IPv6(src=src, dst=dst, nh=proto) / l4
    else:
        pkt = IPv6(src=src, dst=dst, nh=44) / IPv6ExtHdrFragment(
            nh=proto, offset=offset, m=1 if frag == "first" else 0, id=9) / l4
    return pkt, dict(fam=fam, src=src, dst=dst, proto=proto, sport=sport, dport=dport,
                     offset=offset)


H_GROUPS = {"ab": {1, 2}, "c": {3}, "me": {2}}     # group -> peer ids
H_OWN = ("me",)                                     # this node's groups


def oracle(rs, direction, facts, peer_id):
    """The documented evaluation order, read straight off the RuleSet."""
    proto, offset = facts["proto"], facts["offset"]
    if proto not in rs.protocols:
        return Verdict(Action.DROP, -1, Reason.PROTOCOL)
    if offset == 1 and proto == 6:
        return Verdict(Action.DROP, -1, Reason.MALFORMED)
    src, dst = ipaddress.ip_address(facts["src"]), ipaddress.ip_address(facts["dst"])
    remote, local = (dst, src) if direction == OUT else (src, dst)
    for i, r in enumerate(rs.rules):
        if r.direction != direction:
            continue
        if r.proto is not None and r.proto != proto:
            continue
        if r.src_port is not None or r.dst_port is not None:
            if proto not in (6, 17):
                continue
            if offset:
                if r.action == Action.ACCEPT:
                    continue
            else:
                if r.src_port and not r.src_port[0] <= facts["sport"] <= r.src_port[1]:
                    continue
                if r.dst_port and not r.dst_port[0] <= facts["dport"] <= r.dst_port[1]:
                    continue
        if r.peer_id is not None and r.peer_id != peer_id:
            continue
        remote_g, own_g = ((r.src_group, r.dst_group) if direction == IN
                           else (r.dst_group, r.src_group))
        if remote_g is not None and peer_id not in H_GROUPS.get(remote_g, ()):
            continue
        if own_g is not None and own_g not in H_OWN:
            continue
        if r.cidr is not None and remote not in r.cidr:
            continue
        if r.local_cidr is not None and local not in r.local_cidr:
            continue
        return Verdict(r.action, i, Reason.RULE)
    d = rs.default_in if direction == IN else rs.default_out
    return Verdict(d, -1, Reason.DEFAULT)


@pytest.mark.slow          # seconds of hypothesis: the full suite, not the quick set
@pytest.mark.timeout(120)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(rule_objs(), max_size=12),
       defaults=st.tuples(st.sampled_from(["accept", "drop", "reject"]),
                          st.sampled_from(["accept", "drop", "reject"])),
       pkts=st.lists(st.tuples(packets(), st.sampled_from([IN, OUT]), st.sampled_from([1, 2, 3])),
                     min_size=1, max_size=8))
def test_compiled_tables_agree_with_ruleset(rules, defaults, pkts):
    rs = parse_rules({"rule": rules, "default_in": defaults[0], "default_out": defaults[1]},
                     PEERS, H_GROUPS, H_OWN)
    t = compile_rules(rs)
    t_blob = Tables(t.blob)       # decoded from the bytes alone
    saved = fwtables._PORT_INDEX_MIN
    fwtables._PORT_INDEX_MIN = 1  # force the dst-port index even for tiny candidate lists
    try:
        t_idx = Tables(t.blob)
    finally:
        fwtables._PORT_INDEX_MIN = saved
    for (pkt, facts), direction, peer in pkts:
        data = raw(pkt)
        want = oracle(rs, direction, facts, peer)
        assert classify(t, direction, data, peer) == want, (pkt.summary(), facts)
        assert classify(t_blob, direction, memoryview(data), peer) == want
        assert classify(t_idx, direction, data, peer) == want


GARBAGE_FW = {}


def _garbage_fw(eth):
    if eth not in GARBAGE_FW:
        GARBAGE_FW[eth] = fwmod.build({"stateful": True, "rule": [
            {"direction": "in", "proto": "tcp", "dst_port": 1, "action": "reject"},
            {"direction": "out", "proto": "udp", "action": "reject"},
            {"direction": "in", "proto": "icmp", "action": "reject"}]}, PEERS,
            "tap" if eth else "tun")
    return GARBAGE_FW[eth]


def _check_garbage(data, eth, direction):
    fw = _garbage_fw(eth)
    v = fw.classify(direction, data, 1, 0.0)
    assert isinstance(v, Verdict)
    if v.action == Action.REJECT:
        out = reject_response(data, is_ethernet=eth)
        assert out is None or isinstance(out, bytes)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), eth=st.booleans(), direction=st.sampled_from(["in", "out"]))
def test_garbage_never_crashes(data, eth, direction):
    _check_garbage(data, eth, direction)


@pytest.mark.slow          # seconds of hypothesis: the full suite, not the quick set
@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=packets(), cut=st.integers(0, 80), flips=st.lists(st.tuples(st.integers(0, 79),
                                                                   st.integers(0, 255)),
                                                         max_size=4),
       eth=st.booleans(), direction=st.sampled_from(["in", "out"]))
def test_corrupted_packets_never_crash(p, cut, flips, eth, direction):
    data = bytearray(raw(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / p[0])
                     if eth else raw(p[0]))
    for i, b in flips:
        if i < len(data):
            data[i] = b
    if cut:
        del data[-cut:]
    _check_garbage(bytes(data), eth, direction)


# --- the object the daemon and the data paths use ----------------------------------------


def test_build_and_data_path_interface():
    fw = fwmod.build({"rule": [{"direction": "in", "proto": "tcp", "dst_port": 22,
                                "action": "reject"}]}, PEERS, "tun")
    v = fw.classify("in", memoryview(v4(TCP(dport=22, flags="S"))), 1, 0.0)
    assert v.reject and not v.accept and v.rule == 0
    assert fw.classify("out", v4(TCP(dport=22)), 1, 0.0).accept
    reply = fw.reject_response(memoryview(v4(TCP(dport=22, flags="S"))), 0.0)
    assert IP(reply)[TCP].flags == "RA"
    with pytest.raises(FirewallError):
        fwmod.build({"rule": [{"direction": "in"}]}, PEERS, "tun")


def test_build_with_previous_keeps_state():
    fw = fwmod.build({"stateful": True, "default_in": "drop"}, PEERS, "tun")
    fw.classify("out", v4(UDP(sport=1, dport=2), src="10.0.0.1", dst="10.0.0.2"), 1, 0.0)
    same = fwmod.build({"stateful": True, "default_in": "drop",
                        "rule": [{"direction": "in", "proto": "tcp", "action": "drop"}]},
                       PEERS, "tun", previous=fw)
    assert same is fw and fw.tables.nrules == 1
    assert fw.classify("in", v4(UDP(sport=2, dport=1), src="10.0.0.2", dst="10.0.0.1"), 1,
                       1.0).reason == Reason.ESTABLISHED


def test_tap_and_test_modes():
    tap = fwmod.build({}, PEERS, "tap")
    assert tap.classify("in", raw(Ether() / ARP()), 1, 0.0).accept
    assert not tap.classify("in", raw(Ether(type=0x88B5) / Raw(b"x" * 46)), 1, 0.0).accept
    assert not tap.classify("in", raw(Ether() / IP() / GRE()), 1, 0.0).accept
    syn = raw(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(
        src="10.0.0.2", dst="10.0.0.1") / TCP(flags="S"))
    assert Ether(tap.reject_response(syn, 0.0))[TCP].flags == "RA"
    # test mode: payloads are not packets, the firewall does not apply
    test = fwmod.build({"rule": [{"direction": "in", "action": "drop"}]}, PEERS, "test")
    assert test.classify("in", b"hello", 1, 0.0).accept
    assert test.describe()["accepts"]["default"] == 1


def test_describe_output_can_be_put_back():
    fw = fwmod.build({"stateful": True, "rule": [
        {"direction": "in", "proto": "udp", "dst_port": "53", "peer": "alice", "action": "accept"},
        {"direction": "in", "action": "drop"}]}, PEERS, "tun")
    fw.classify("in", v4(UDP(dport=53)), 1, 0.0)
    d = fw.describe()
    assert d["rules"][0]["hits"] == 1 and d["rules"][1]["hits"] == 0
    assert d["mode"] == "tun" and d["conntrack"]["entries"] == 0
    again = parse_rules(d, PEERS)
    assert again == fw.tables.ruleset


def test_verdict_is_preallocated():
    t = tables({"rule": [{"direction": "in", "proto": "tcp", "action": "drop"}]})
    pkt = v4(TCP())
    assert classify(t, IN, pkt, 1) is classify(t, IN, pkt, 1) is t.rule_verdicts[0]
    assert classify(t, OUT, pkt, 1) is t.defaults[OUT]


def test_v6_related_packet_too_big():
    fw = Firewall(deny_new_inbound())
    out6 = IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=40000, dport=80, flags="A") / Raw(b"x" * 100)
    fw.classify(OUT, raw(out6), 1, now=0.0)
    ptb = IPv6(src="fd00::fe", dst="fd00::1") / ICMPv6PacketTooBig(mtu=1280) / raw(out6)
    assert fw.classify(IN, raw(ptb), 1, now=1.0).reason == Reason.ESTABLISHED
    other = IPv6(src="fd00::fe", dst="fd00::1") / ICMPv6PacketTooBig(mtu=1280) / raw(
        IPv6(src="fd00::1", dst="fd00::3") / TCP(sport=40000, dport=80))
    assert fw.classify(IN, raw(other), 1, now=1.0).action == Action.DROP


@pytest.mark.parametrize("where", ["rule", "allow_protocols"])
@pytest.mark.parametrize("proto", ["\u00b2", "\u0661\u0667", "\u2466"])
def test_protocol_as_non_ascii_digits_is_a_firewall_error(where, proto):
    """Found by fuzzing (fuzz/fuzz_firewall.py): str.isdigit() is true for "²"
    (and other Unicode digits) but int() refuses some of them, so a plain
    ValueError escaped the compiler instead of a FirewallError naming the field."""
    doc = ({"rule": [{"direction": "in", "action": "drop", "proto": proto}]} if where == "rule"
           else {"allow_protocols": [proto]})
    with pytest.raises(FirewallError) as exc:
        parse_rules(doc, {})
    assert "protocol" in str(exc.value)
