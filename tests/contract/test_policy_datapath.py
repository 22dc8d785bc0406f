"""A network policy on both data paths (issue 21 item 3): the rules
phantom/node/policy.py compiles for a member decide packets that really
cross a data path (sealed by a peer, opened, checked, filtered, written to
the device) the same on the reference path and on ``--fast``; a new policy
swaps in place on the running path (no new keys), and the C classifier
decides the compiled tables exactly as the reference classifier does."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.dataplane import fast
from phantom.dataplane.firewall import classify
from phantom.dataplane.reference import ReferenceDataPath
from phantom.dataplane.types import Keypair, Mode
from phantom.network import policy as P
from phantom.node import policy as NP
from phantom.node.firewall import FirewallSlot
from tests.support.datapath import Recorder, run, until
from tests.support.datapath import udp_socket as _udp
from tests.unit.network.factory import NOW, Net, x25519_key

_testing = pytest.importorskip("phantom.fastpath._testing", reason="the fast path is not built")

pytestmark = pytest.mark.timeout(60)

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
from = "member:d"
to = "*"
proto = "udp"
ports = ["53"]
"""
# the same, changed: laptops lose ssh, d may ping
POLICY2 = POLICY.replace("ports = [22]", "ports = [2222]").replace(
    'from = "member:d"\nto = "*"\nproto = "udp"\nports = ["53"]',
    'from = "member:d"\nto = "*"\nproto = "icmp"')

PEERS = {2: "b", 3: "c", 4: "d"}                 # b and c are laptops
NAMES = {"b": 2, "c": 3, "d": 4}
GROUPS = {"laptops": frozenset({2, 3})}
ME = NP.Identity("srv", x25519_key("srv"), ("servers",))
KEYS = {pid: (crypto.blake2b(b"k%d" % pid, digest_size=32),
              crypto.blake2b(b"r%d" % pid, digest_size=32)) for pid in PEERS}


def ip4(src: int, proto: int, dport: int = 0, payload: bytes = b"") -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 0x50, 0x02, 1024, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0)
    else:
        l4 = bytes([8, 0]) + bytes(6)
    l4 += payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0, 64, proto, 0,
                       bytes([10, 0, 0, src]), bytes([10, 0, 0, 1])) + l4


FLOWS = [(pid, proto, port) for pid in PEERS for proto, port in
         ((6, 22), (6, 2222), (6, 80), (1, 0), (17, 53), (17, 54))]


def _scenario(kind: str, local: dict) -> dict:
    """One TUN data path of ``kind`` (the device is a socketpair) with peers
    2-4; the policy applied through the firewall slot; every flow sent from
    its peer, sealed; what reached the device, counters, policy hits."""
    net = Net()

    async def main():
        app, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        dev.setblocking(False)
        app.settimeout(0.3)
        udp = _udp()
        sinks = {pid: _udp() for pid in PEERS}
        cls = ReferenceDataPath if kind == "reference" else fast.FastDataPath
        dp = cls(Mode.TUN, udp, dev.fileno(), None, events=Recorder(), tunables=Tunables())
        slot = FirewallSlot(Mode.TUN, local, NAMES, GROUPS, ME.groups)
        counters = dict.fromkeys(PEERS, 0)
        try:
            for pid in PEERS:
                dp.add_peer(pid, ["10.0.0.%d/32" % pid])
            dp.start()
            for pid, (send, recv) in KEYS.items():
                dp.set_endpoint(pid, sinks[pid].getsockname())
                dp.install_keypair(Keypair(pid, 0x100 + pid, 0x200 + pid, bytearray(send),
                                           bytearray(recv), time.monotonic(), False),
                                   confirmed=True)
            slot.attach(dp)

            async def send_all() -> list:
                for pid, proto, port in FLOWS:
                    send, recv = KEYS[pid]
                    sinks[pid].sendto(_testing.seal_packet(
                        recv, 0x100 + pid, counters[pid], ip4(pid, proto, port)),
                        udp.getsockname())
                    counters[pid] += 1
                got = []
                while True:
                    try:
                        pkt = await asyncio.to_thread(app.recv, 70000)
                    except socket.timeout:
                        break
                    got.append((pkt[15], pkt[9], struct.unpack("!H", pkt[22:24])[0]
                                if pkt[9] in (6, 17) else 0))
                await until(lambda: sum(dp.counters(p).rx_packets for p in PEERS)
                            == sum(counters.values()))
                return sorted(got)

            log = {}
            NP.apply_policy(slot, P.sign_policy(P.parse_policy_source(POLICY), net.definition,
                                                net.admission, 1, NOW).doc,
                            net.definition, ME, NOW)
            fw = slot.current
            log["first"] = await send_all()
            log["hits1"] = [r["hits"] for r in slot.describe()["policy"]["rules"]]
            NP.apply_policy(slot, P.sign_policy(P.parse_policy_source(POLICY2), net.definition,
                                                net.admission, 2, NOW).doc,
                            net.definition, ME, NOW)
            assert slot.current is fw
            log["second"] = await send_all()
            log["hits2"] = [r["hits"] for r in slot.describe()["policy"]["rules"]]
            await until(lambda: sum(dp.counters(p).drops.get("firewall", 0) for p in PEERS)
                        == 2 * len(FLOWS) - len(log["first"]) - len(log["second"]))
            log["drops"] = {PEERS[p]: dp.counters(p).drops for p in PEERS}
            log["fw_drops"] = slot.describe()["drops"]["default"]
            return log
        finally:
            dp.close()
            for s in [app, dev, udp, *sinks.values()]:
                s.close()
    return run(main())


@pytest.mark.parametrize("local", [{}, {"stateful": False}], ids=["stateful", "stateless"])
def test_a_policy_decides_real_packets_the_same_on_both_paths(local):
    ref = _scenario("reference", local)
    mine = _scenario("fast", local)
    assert mine == ref
    assert ref["first"] == [(2, 1, 0), (2, 6, 22), (3, 1, 0), (3, 6, 22), (4, 17, 53)]
    assert ref["hits1"] == [2, 2, 1]
    assert ref["second"] == [(2, 1, 0), (2, 6, 2222), (3, 1, 0), (3, 6, 2222), (4, 1, 0)]
    assert ref["hits2"] == [2, 2, 1]
    assert ref["drops"] == {"b": {"firewall": 8}, "c": {"firewall": 8}, "d": {"firewall": 10}}
    assert ref["fw_drops"] == 26


def test_the_c_classifier_decides_compiled_policies_like_the_reference():
    """Stateless merged tables (the C classifier decides them itself; stateful
    ones it hands to the reference classifier): every rule shape a policy
    compiles to, every packet kind, every peer."""
    net = Net()
    policies = [POLICY, POLICY2,
                'default = "allow"\n[[rule]]\nfrom = ["group:laptops", "member:d"]\nto = "*"\n'
                'proto = "any"\nports = ["20-25", 53, "1000-2000"]\naction = "drop"\n'
                '[[rule]]\nfrom = "*"\nto = "group:servers"\nproto = "47"\naction = "drop"\n'
                '[[rule]]\nfrom = "key:%s"\nto = "*"\nproto = "icmpv6"\n' % (
                    __import__("base64").b64encode(x25519_key("b")).decode())]
    locals_ = [{"stateful": False},
               {"stateful": False, "default_in": "reject", "default_policy": "open", "rule": [
                   {"direction": "in", "peer": "c", "proto": "tcp", "dst_port": 22,
                    "action": "drop"}]}]
    names = dict(NAMES, **{__import__("base64").b64encode(x25519_key("b")).decode(): 2})
    packets = [ip4(2, proto, port) for proto, port in
               ((6, 22), (6, 23), (6, 1500), (17, 53), (17, 99), (1, 0), (47, 0))]
    v6 = struct.pack("!IHBB16s16s", 6 << 28, 8, 58, 64, bytes(15) + b"\x02",
                     bytes(15) + b"\x01") + bytes([128, 0]) + bytes(6)
    checked = 0
    for text in policies:
        pol = P.sign_policy(P.parse_policy_source(text), net.definition, net.admission, 1, NOW)
        for local in locals_:
            slot = FirewallSlot(Mode.TUN, local, names, GROUPS, ME.groups)
            NP.apply_policy(slot, pol.doc, net.definition, ME, NOW)
            tables = slot.current.tables
            for pk in packets + [v6]:
                for peer in (2, 3, 4, 9, -1):
                    ref = classify(tables, 0, pk, peer)
                    got = _testing.fw_decide(tables.blob, 0, pk, peer)
                    assert got == (int(ref.action), ref.rule, int(ref.reason)), (text, local,
                                                                                 pk.hex(), peer)
                    checked += 1
    assert checked == 3 * 2 * 8 * 5
