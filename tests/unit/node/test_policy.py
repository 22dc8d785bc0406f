"""The network policy on a node (issue 21 item 3, phantom/node/policy.py):
a signed policy compiled into this node's firewall in place, narrowed by the
local [firewall], recompiled when groups move, refused whole when stale or
forged, cached for a restart; GET /firewall shows its rules with hit counts.

The node is the reload tests' real engine, peer table and firewall slot
(peers configured with [[peer]] groups: the same group map the member
stream will feed)."""

from __future__ import annotations

import json
import struct

import pytest

from phantom.dataplane.firewall import FirewallError, classify
from phantom.dataplane.types import Mode
from phantom.network import policy as P
from phantom.network.canonical import b64
from phantom.network.errors import Reason, Refused
from phantom.node import policy as NP
from phantom.node.firewall import FirewallSlot
from tests.unit.network.factory import NOW, Net
from tests.unit.node.test_reload import Node, crypto_key, doc, peer

POLICY = """\
default = "deny"

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "tcp"
ports = [22]

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "icmp"

[[rule]]
from = ["member:d"]
to = "*"
proto = "udp"
ports = ["53", "5000-5001"]
"""


def pkt(src: int, proto: int = 6, dport: int = 22, sport: int = 40000, dst: int = 1,
        flags: int = 0x02) -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 1024, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    else:
        l4 = bytes([8, 0]) + bytes(6)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                       bytes([10, 99, 0, src]), bytes([10, 99, 0, dst])) + l4


def node_with(firewall_=None):
    """This node is in "servers"; b and c are laptops, d has no group."""
    d0 = doc(peer("b", groups=["laptops"]), peer("c", groups=["laptops"]), peer("d"),
             groups=["servers"], **({} if firewall_ is None else {"firewall_": firewall_}))
    node = Node(d0)
    for pc in node.s.peers:
        node.peers.set_groups({node.engine.peer_by_key(bytes(pc.public_key)).id: pc.groups})
    node.firewall = FirewallSlot(Mode.TUN, node.s.firewall, node.peers.names,
                                 node.peers.group_map(), node.s.groups)
    node.firewall.attach(node.dp)
    node.peers.on_groups = lambda: node.firewall.regroup(node.peers.names,
                                                        node.peers.group_map())
    node.ids = {n: node.engine.peer_by_key(crypto_key(n)).id for n in "bcd"}
    return node


ME = NP.Identity("srv", b"\x01" * 32, ("servers",))


def signed(net: Net, seq: int = 1, text: str = POLICY):
    return P.sign_policy(P.parse_policy_source(text), net.definition, net.admission, seq,
                         NOW).doc


def verdict(node, name, *a, **kw) -> bool:
    return node.firewall.current.classify("in", pkt(ord(name) - 96, *a, **kw),
                                          node.ids[name], now=1.0).accept


def test_a_policy_is_compiled_in_place_and_decides():
    node, net = node_with(), Net()
    before = node.firewall.current
    assert verdict(node, "b", dport=80)                      # no policy: the local default
    p = NP.apply_policy(node.firewall, signed(net), net.definition, ME, NOW)
    assert p.seq == 1 and node.firewall.policy == p
    assert node.firewall.current is before, "installed into the firewall in force"
    assert ("set_firewall", before) in node.dp.calls
    assert verdict(node, "b") and verdict(node, "c") and verdict(node, "b", proto=1)
    assert not verdict(node, "b", dport=80)
    assert not verdict(node, "b", proto=17, dport=53)
    assert not verdict(node, "d")                             # d is no laptop
    assert not verdict(node, "d", proto=1)
    assert verdict(node, "d", proto=17, dport=53) and verdict(node, "d", proto=17, dport=5001)
    assert not verdict(node, "d", proto=17, dport=5002)
    shown = node.firewall.describe()
    pol = shown["policy"]
    assert (pol["seq"], pol["issuer"], pol["default"]) == (1, b64(net.admission.public), "deny")
    assert [(r["index"], r["applies"], r["hits"]) for r in pol["rules"]] == [
        (1, True, 2), (2, True, 1), (3, True, 2)]
    assert shown["rules"] == [] and shown["default_in"] == "accept"
    assert shown["drops"]["default"] == 5
    # GET /firewall's output goes back through PUT unchanged in meaning
    node.firewall.replace(json.loads(json.dumps(shown)), node.peers.names,
                          node.peers.group_map())
    assert node.firewall.policy == p and not verdict(node, "b", dport=80)


def test_the_local_firewall_can_only_narrow_the_policy():
    local = {"default_in": "accept", "rule": [
        {"direction": "in", "peer": "c", "proto": "icmp", "action": "drop"},
        {"direction": "in", "peer": "b", "proto": "tcp", "dst_port": 80, "action": "accept"},
        {"direction": "out", "peer": "d", "action": "reject"}]}
    node, net = node_with(local), Net()
    assert verdict(node, "b", dport=80) and not verdict(node, "c", proto=1)
    NP.apply_policy(node.firewall, signed(net), net.definition, ME, NOW)
    assert not verdict(node, "c", proto=1), "a local drop stays in force"
    assert verdict(node, "b", proto=1)
    assert not verdict(node, "b", dport=80), "a local accept does not widen the policy"
    out = node.firewall.current.classify("out", pkt(1, dst=4), node.ids["d"], now=1.0)
    assert out.reject, "outbound rules stay as written"
    shown = node.firewall.describe()
    assert [r["hits"] for r in shown["rules"]] == [1, 0, 1]
    assert shown["policy"]["ignored_local_rules"] == [1]
    assert any("cannot widen" in w for w in shown["warnings"])
    # a local default_in drop narrows a policy whose default is allow
    allow = POLICY.replace('default = "deny"', 'default = "allow"')
    node.firewall.replace({"default_in": "drop"}, node.peers.names, node.peers.group_map())
    NP.apply_policy(node.firewall, signed(net, 2, allow), net.definition, ME, NOW)
    assert not verdict(node, "d") and verdict(node, "b")
    node.firewall.replace({}, node.peers.names, node.peers.group_map())
    assert verdict(node, "d"), "the policy's default allow"
    assert node.firewall.describe()["policy"]["effective_default_in"] == "accept"


def test_put_firewall_answers_with_the_local_table_not_the_compiled_policy():
    """PUT /firewall's answer goes back into the dashboard's editor: it must be
    the local table (what PUT takes), never the policy's compiled rules."""
    import asyncio
    from types import SimpleNamespace
    from phantom.node.controller import Controller
    node, net = node_with(), Net()
    NP.apply_policy(node.firewall, signed(net), net.definition, ME, NOW)
    ctl = Controller(SimpleNamespace(firewall=node.firewall, peers=node.peers))
    local = {"rule": [{"direction": "in", "peer": "c", "action": "drop"}]}
    shown = asyncio.run(ctl.set_firewall(local))
    assert [r.get("peer") for r in shown["rules"]] == ["c"]
    assert shown["policy"]["seq"] == 1 and ctl.firewall() == shown
    assert not verdict(node, "c") and verdict(node, "b")


def test_a_bad_local_rule_is_named_by_its_place_in_the_local_table():
    node, net = node_with(), Net()
    NP.apply_policy(node.firewall, signed(net), net.definition, ME, NOW)
    with pytest.raises(FirewallError) as e:
        node.firewall.replace({"rule": [{"direction": "in", "action": "drop"},
                                        {"direction": "in", "action": "nope"}]},
                              node.peers.names, node.peers.group_map())
    assert str(e.value).startswith("firewall.rule[1].action")
    assert not verdict(node, "b", dport=80), "the rules in force stay"


def test_a_group_change_recompiles_the_policy_in_place():
    node, net = node_with(), Net()
    NP.apply_policy(node.firewall, signed(net), net.definition, ME, NOW)
    f = node.firewall.current
    assert verdict(node, "b")
    node.peers.set_groups({node.ids["b"]: ["staff"], node.ids["d"]: ["laptops"]})
    assert node.firewall.current is f
    assert not verdict(node, "b") and verdict(node, "d")


def test_established_flows_that_stay_allowed_survive_a_policy_change():
    node, net = node_with(), Net()
    NP.apply_policy(node.firewall, signed(net), net.definition, ME, NOW)
    f = node.firewall.current
    # this node opens tcp/8080 to d; d's replies come back (stateful with a policy)
    assert f.classify("out", pkt(1, dport=8080, sport=41000, dst=4), node.ids["d"], now=1.0).accept
    reply = pkt(4, dport=41000, sport=8080, flags=0x12)
    assert f.classify("in", reply, node.ids["d"], now=1.1).accept
    assert f.describe()["accepts"]["established"] == 1
    tighter = POLICY.split("[[rule]]\nfrom = [\"member:d\"]")[0]
    NP.apply_policy(node.firewall, signed(net, 2, tighter), net.definition, ME, NOW)
    assert node.firewall.current is f and f.conntrack.snapshot()["entries"] == 1
    assert f.classify("in", reply, node.ids["d"], now=1.2).accept
    assert not verdict(node, "d", proto=17, dport=53), "the new policy is in force"
    # an explicit stateful = false is kept: then replies need rules of their own
    node.firewall.replace({"stateful": False}, node.peers.names, node.peers.group_map())
    assert node.firewall.describe()["stateful"] is False


def test_a_new_identity_recompiles_the_policy_in_force():
    node, net = node_with(), Net()
    NP.set_identity(node.firewall, ME)                        # no policy: nothing to do
    NP.apply_policy(node.firewall, signed(net), net.definition, ME, NOW)
    assert verdict(node, "b")
    NP.set_identity(node.firewall, NP.Identity("srv", ME.key, ("desks",)))
    assert not verdict(node, "b"), "no longer in servers: the laptops rules do not apply"
    assert verdict(node, "d", proto=17, dport=53), "to \"*\" still applies"
    assert node.firewall.policy.seq == 1


def test_stale_forged_and_foreign_policies_change_nothing():
    node, net = node_with(), Net()
    NP.apply_policy(node.firewall, signed(net, 5), net.definition, ME, NOW)
    tables = node.firewall.current.tables
    for bad, reason in [(signed(net, 5, POLICY.replace("22", "23")), Reason.STALE),
                        (signed(net, 4), Reason.STALE),
                        (dict(signed(net, 9), default="allow"), Reason.BAD_SIGNATURE),
                        (signed(Net(tag="x"), 9), Reason.WRONG_NETWORK)]:
        with pytest.raises(Refused) as e:
            NP.apply_policy(node.firewall, bad, net.definition, ME, NOW)
        assert e.value.reason is reason
        assert node.firewall.current.tables is tables and node.firewall.policy.seq == 5


def test_after_a_rotation_a_thiefs_high_seq_holds_nothing_back():
    from phantom.network.definition import revise
    from phantom.network.keys import SigningKey
    from tests.unit.network.factory import seed
    node, net = node_with(), Net()
    thief = P.sign_policy(P.parse_policy_source('default = "allow"\n'), net.definition,
                          net.admission, 10 ** 9, NOW)
    NP.apply_policy(node.firewall, thief.doc, net.definition, ME, NOW)
    assert verdict(node, "d", dport=80)
    new_key = SigningKey(seed("rotated"))
    rotated = revise(net.definition, net.authority, NOW + 1,
                     add_admission=[(new_key.public, NOW + 10 ** 6)],
                     remove_admission=[net.admission.public])
    legit = P.sign_policy(P.parse_policy_source(POLICY), rotated, new_key, 2, NOW + 1)
    with pytest.raises(Refused) as e:              # under the old definition: stale
        NP.apply_policy(node.firewall, legit.doc, net.definition, ME, NOW + 1)
    assert e.value.reason in (Reason.STALE, Reason.UNKNOWN_ISSUER)
    NP.apply_policy(node.firewall, legit.doc, rotated, ME, NOW + 1)
    assert node.firewall.policy.seq == 2 and not verdict(node, "d", dport=80)


def test_the_policy_is_cached_for_a_restart(tmp_path):
    node, net = node_with(), Net()
    assert NP.load_cached_policy(tmp_path, net.definition, NOW) is None
    p = NP.apply_policy(node.firewall, signed(net, 3), net.definition, ME, NOW, state_dir=tmp_path)
    assert NP.load_cached_policy(tmp_path, net.definition, NOW) == p
    cache = tmp_path / "network" / "policy.json"
    cache.write_text(cache.read_text().replace('"deny"', '"allow"'))
    assert NP.load_cached_policy(tmp_path, net.definition, NOW) is None
    cache.write_bytes(b"\x00" * 10)
    assert NP.load_cached_policy(tmp_path, net.definition, NOW) is None


def test_member_and_key_sources_not_yet_peers_match_nothing_and_are_reported(caplog):
    import logging
    node, net = node_with(), Net()
    text = ('default = "deny"\n[[rule]]\nfrom = ["member:zed", "key:%s", "key:%s"]\nto = "*"\n'
            % (b64(crypto_key("f")), b64(crypto_key("c"))))
    with caplog.at_level(logging.WARNING, logger="phantom.daemon"):
        NP.apply_policy(node.firewall, signed(net, 1, text), net.definition, ME, NOW)
        node.peers.set_groups({node.ids["b"]: ["staff"]})           # a recompile
    assert caplog.text.count("member 'zed' is not a peer") == 1, "logged once, not per recompile"
    assert verdict(node, "c", dport=1234) and not verdict(node, "b")
    warnings = node.firewall.describe()["warnings"]
    assert any("member 'zed' is not a peer" in w for w in warnings)
    assert any(b64(crypto_key("f")) in w for w in warnings)


def test_the_compiled_tables_decide_like_the_policy_itself():
    """Every (peer, protocol, port) the policy decides by itself
    (InboundRules.decide) is decided the same by the compiled flat tables."""
    node, net = node_with(), Net()
    text = POLICY + ('\n[[rule]]\nfrom = "*"\nto = "group:servers"\nproto = "tcp"\n'
                     'ports = ["1000-2000"]\naction = "drop"\n[[rule]]\nfrom = "group:laptops"\n'
                     'to = "member:srv"\nports = [1500]\n')
    policy = P.verify_policy(signed(net, 1, text), net.definition, NOW)
    NP.apply_policy(node.firewall, policy.doc, net.definition, ME, NOW)
    inbound = P.compile_inbound(policy, ME)
    tables = node.firewall.current.tables
    groups = {"b": ("laptops",), "c": ("laptops",), "d": ()}
    checked = 0
    for name in "bcd":
        who = NP.Identity(name, crypto_key(name), groups[name])
        for proto in (1, 6, 17, 58):
            for port in (22, 53, 999, 1000, 1500, 2000, 5000, 5001, 5002):
                if proto == 58:
                    continue          # an IPv4 packet cannot carry ICMPv6
                want, _ = inbound.decide(who, proto, port if proto in (6, 17) else None)
                got = classify(tables, 0, pkt(ord(name) - 96, proto, port), node.ids[name])
                assert got.accept == (want == "accept"), (name, proto, port)
                checked += 1
    assert checked == 81
