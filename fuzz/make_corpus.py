"""Write the seed corpus: valid inputs for every target, built from the fixed
keys in common.py (so signatures and MACs are right for the harnesses).

    PYTHONPATH=. python fuzz/make_corpus.py

Files are named ``seed-<what>``; inputs the fuzzer found are kept next to
them as ``found-<what>`` (minimised by hand or with -minimize_crash).
Re-running rewrites the seeds only.
"""

import json
import os
import struct
import sys

import common  # noqa: F401  (sys.path)

from phantom import crypto, wire
from phantom import directory as d
from phantom.protocols import tai64n
from phantom.protocols.phantom import cookie, handshake as hs

R_PUB = crypto.x25519_public(common.RESPONDER_PRIV)
I_PUB = crypto.x25519_public(common.INITIATOR_PRIV)


def put(target: str, name: str, data: bytes) -> None:
    path = common.corpus_dir(target)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "seed-" + name), "wb") as f:
        f.write(data)


def ipv4(proto: int, l4: bytes, src=b"\x0a\x63\0\x01", dst=b"\x0a\x63\0\x02", frag=0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0, src, dst) + l4


def ipv6(nh: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64, b"\xfd\x99" + bytes(13) + b"\x01",
                       b"\xfd\x99" + bytes(13) + b"\x02") + l4


TCP_SYN = struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
UDP = struct.pack("!HHHH", 5000, 53, 12, 0) + b"abcd"
ICMP = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"
PACKETS = {
    "tcp4": ipv4(6, TCP_SYN), "udp4": ipv4(17, UDP), "icmp4": ipv4(1, ICMP),
    "frag4": ipv4(17, UDP, frag=0x2000), "later-frag4": ipv4(17, b"rest", frag=3),
    "tcp6": ipv6(6, TCP_SYN), "udp6": ipv6(17, UDP), "icmp6": ipv6(58, ICMP),
    "hbh6": ipv6(0, bytes([17, 0]) + bytes(6) + UDP), "frag6": ipv6(44, bytes([17, 0, 0, 1]) + bytes(4) + UDP),
}
ETHER = b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + PACKETS["udp4"]
ARP = (b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x08\x06" +
       struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02\0\0\0\0\x01", b"\x0a\x63\0\x01",
                   bytes(6), b"\x0a\x63\0\x02"))


def handshake_messages():
    ts = tai64n.encode(int(common.NOW))
    gen = cookie.CookieGenerator(R_PUB, lambda: common.NOW)
    init, ist = hs.create_initiation(common.INITIATOR_PRIV, R_PUB, 7, ts, bytes(range(16)), gen)
    info = hs.consume_initiation(common.RESPONDER_PRIV, init)
    resp, _ = hs.create_response(info.state, 9, cookie.CookieGenerator(I_PUB, lambda: common.NOW))
    checker = cookie.CookieChecker(R_PUB, lambda: common.NOW)
    reply = checker.create_reply(init, 7, common.PEER_ADDR)
    key = bytearray(32)
    transport = bytearray(wire.TRANSPORT_PAYLOAD_OFFSET) + bytearray(PACKETS["icmp4"])
    wire.TRANSPORT_HEADER.pack_into(transport, 0, wire.MessageType.TRANSPORT, 9, 3)
    crypto.secretbox_seal_into(key, 3, transport, wire.TRANSPORT_PAYLOAD_OFFSET,
                               len(transport) - wire.TRANSPORT_PAYLOAD_OFFSET)
    keepalive = wire.pack_transport_header(9, 4) + bytes(wire.AEAD_TAG_SIZE)
    return init, resp, reply, bytes(transport), keepalive


def wire_seeds():
    init, resp, reply, transport, keepalive = handshake_messages()
    for name, data in (("initiation", init), ("response", resp), ("cookie-reply", reply),
                       ("transport", transport), ("keepalive", keepalive),
                       ("truncated-initiation", init[:100]), ("reserved-set", b"\x04\x01" + keepalive[2:]),
                       ("ether", ETHER), ("arp", ARP)):
        put("wire", name, data)
    for name, p in PACKETS.items():
        put("wire", "inner-" + name, keepalive[:wire.TRANSPORT_PAYLOAD_OFFSET] + p)
        put("wire", "raw-" + name, p)


def handshake_seeds():
    init, resp, reply, _, keepalive = handshake_messages()
    put("handshake", "raw-initiation", b"\x00" + init)
    put("handshake", "raw-response", b"\x00" + resp)
    put("handshake", "raw-cookie", b"\x00" + reply)
    put("handshake", "raw-transport", b"\x00" + keepalive)
    put("handshake", "mac1-initiation", b"\x01" + init)
    put("handshake", "mac1-initiation-flipped", b"\x01" + init[:50] + bytes([init[50] ^ 1]) + init[51:])
    put("handshake", "mac1-response", b"\x01" + resp)
    ts = tai64n.encode(int(common.NOW))
    # mode 2: [stranger?][index u32][ts 12][nonce 16][eph?][eph 32][mutate?]...
    struct2 = b"\x00" + struct.pack("<I", 7) + ts + bytes(range(16)) + b"\x00" + b"\x00"
    put("handshake", "genuine-initiation", b"\x02" + struct2)
    put("handshake", "genuine-initiation-loaded", b"\x0a" + struct2)
    put("handshake", "stranger-initiation", b"\x02\x01" + struct2[1:])
    put("handshake", "bad-timestamp", b"\x02\x00" + struct.pack("<I", 7) + b"\xff" * 12 + bytes(18))
    put("handshake", "genuine-response", b"\x03" + struct.pack("<I", 9) + b"\x00")
    put("handshake", "mutated-response", b"\x03" + struct.pack("<I", 9) + b"\x01\x20\x00\x41")
    put("handshake", "cookie-reply", b"\x04" + reply)
    # mode 5: stranger flag, words (a length byte, then text), attachment size, attachment
    put("handshake", "attached-member", b"\x05\x01\x00" + struct.pack("<H", 20) + b"member:" + bytes(13))
    put("handshake", "attached-refused", b"\x05\x01\x15removed by the network" + struct.pack("<H", 300)
        + bytes(300))
    put("handshake", "attached-known", b"\x05\x00\x00" + struct.pack("<H", 700) + bytes(700))


def firewall_seeds():
    docs = {
        "empty": ({}, "udp4"),
        "basic": ({"default_in": "drop", "rule": [
            {"direction": "in", "proto": "tcp", "dst_port": 22, "action": "accept"},
            {"direction": "in", "proto": "icmp", "action": "accept", "cidr": "10.99.0.0/24"},
            {"direction": "out", "proto": "udp", "dst_port": "5000-6000", "action": "reject",
             "peer": "n2", "comment": "no"}]}, "tcp4"),
        "v6": ({"default_policy": "open", "allow_ethertypes": ["0x88cc", "arp"], "rules": [
            {"direction": "in", "proto": "any", "cidr": "fd99::/64", "local_cidr": "fd99::2/128",
             "action": "drop"},
            {"direction": "in", "proto": 58, "action": "accept"}]}, "icmp6"),
        "stateful": ({"stateful": True, "conntrack_max": 16, "timeouts": {"udp": 5, "tcp_new": 2.5},
                      "reject_rate": 1.5, "reject_burst": 2, "allow_protocols": ["gre", 132],
                      "rule": [{"direction": "out", "action": "accept", "src_port": "1-65535",
                                "peer": "q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0Vng="}]}, "udp6"),
        "fragments": ({"rule": [{"direction": "in", "proto": "udp", "dst_port": 53, "action": "drop"},
                                {"direction": "in", "proto": "udp", "action": "accept"}]}, "frag4"),
        "groups": ({"default_in": "drop", "rule": [
            {"direction": "in", "src_group": "laptops", "dst_group": "servers", "proto": "tcp",
             "dst_port": 22, "action": "accept"},
            {"direction": "in", "src_group": "laptops", "proto": "icmp", "action": "accept"},
            {"direction": "out", "dst_group": "admins", "src_group": "printers", "action": "reject"},
            {"direction": "in", "peer": "n2", "src_group": "admins", "action": "accept"}]}, "tcp4"),
    }
    docs["numbers-as-text"] = ({"allow_protocols": ["47", "0x84"], "allow_ethertypes": ["0x0806", 35020],
                                "rule": [{"direction": " IN ", "proto": " 17 ", "action": "Drop",
                                          "src_port": " 7 - 9 ", "dst_port": "53"}]}, "udp4")
    for name, (doc, pk) in docs.items():
        put("firewall", "json-" + name, b"\x00" + json.dumps(doc).encode() + b"\0" + PACKETS[pk])
    toml = b"""[firewall]
default_in = "drop"
stateful = false
allow_protocols = ["esp"]

[[firewall.rule]]
direction = "in"
proto = "udp"
dst_port = "53"
action = "accept"

[[firewall.rule]]
direction = "out"
proto = "any"
cidr = "10.0.0.0/8"
action = "reject"
"""
    put("firewall", "json-infinite", b"\x02" + b'{"stateful": true, "reject_rate": Infinity, '
        b'"timeouts": {"udp": Infinity, "tcp_new": 1e308}, "rule": [{"direction": "out", "action": '
        b'"accept"}]}' + b"\0" + PACKETS["udp4"])
    put("firewall", "toml-basic", b"\x01" + toml + b"\0" + PACKETS["udp4"])
    put("firewall", "toml-out", b"\x03" + toml + b"\0" + PACKETS["tcp4"])
    groups = b"""[firewall]
default_in = "drop"

[[firewall.rule]]
direction = "in"
src_group = "laptops"
dst_group = "servers"
proto = "icmp"
action = "accept"
"""
    put("firewall", "toml-groups", b"\x05" + groups + b"\0" + PACKETS["icmp4"])


def directory_seeds():
    signer = d.NodeSigner(common.INITIATOR_PRIV)
    endorser = d.NodeSigner(common.SIGNER_PRIV)
    exp = int(common.NOW) + 3600
    rec = d.make_record(signer, "alice", ["192.0.2.1:9000", "[2001:db8::1]:9000"],
                        ["10.99.0.1/32", "fd99::1/128"], 3, exp)
    put("directory", "record", b"\x00" + d.canonical(rec))
    rec2 = dict(rec)
    rec2["endorsements"] = [d.make_endorsement(endorser, signer.public_key, "alice", exp)]
    put("directory", "endorsed", b"\x04" + d.canonical(rec2))
    put("directory", "endorsed-strict", b"\x06" + d.canonical(rec2))
    rev = d.make_record(signer, "alice", [], [], d.MAX_SEQ, 1, revoked=True)
    put("directory", "revocation", b"\x00" + d.canonical(rev))
    put("directory", "resign", b"\x01" + d.canonical(rec))
    put("directory", "pretty", b"\x01" + json.dumps(rec, indent=1).encode())


def dns_seeds():
    """Queries of the name service: byte 0 = flags (fuzz_dns.py), then the query."""
    import random

    import dns.edns
    import dns.message

    from phantomlab.dnshostile import _compression, header

    def q(name, rdtype, **kw):
        m = dns.message.make_query(name, rdtype, **kw)
        m.id = 0x5150
        return m.to_wire()

    seeds = {
        "a": q("n3.corp.phantom", "A"),
        "aaaa-edns": q("N3.corp.phantom", "AAAA", use_edns=0, payload=1232),
        "any-many": q("many.corp.phantom", "ANY"),
        "any-many-edns": q("many.corp.phantom", "ANY", use_edns=0, payload=700),
        "nxdomain": q("n9.corp.phantom", "A"),
        "deep": q("a.n3.corp.phantom", "A"),
        "apex-soa": q("corp.phantom", "SOA"),
        "apex-ns": q("corp.phantom", "NS", use_edns=0),
        "refused": q("example.com", "A"),
        "ptr4": q("3.0.64.100.in-addr.arpa", "PTR"),
        "ptr6": q("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.a.9.8.7.6.5.4.3.2.1.d.f.ip6.arpa", "PTR"),
        "ptr-partial": q("0.64.100.in-addr.arpa", "PTR"),
        "axfr": q("corp.phantom", "AXFR"),
        "chaos": q("version.bind", "TXT", rdclass="CH"),
        "badvers": q("n3.corp.phantom", "A", use_edns=1),
        "options": q("n3.corp.phantom", "A", use_edns=0,
                     options=[dns.edns.GenericOption(10, b"\x01" * 8), dns.edns.ECSOption("100.64.0.0", 16)]),
    }
    for name, wire_ in seeds.items():
        put("dns", name, b"\x00" + wire_)
        put("dns", name + "-tcp", b"\x01" + wire_)
    put("dns", "hostile-any", b"\x04" + seeds["any-many"])
    put("dns", "hostile-ptr", b"\x04" + q("7.0.64.100.in-addr.arpa", "PTR"))
    put("dns", "forced-counts", b"\x02" + seeds["a"][:12] + b"\x01a\x00\x00\x01\x00\x01")
    notify = dns.message.make_query("corp.phantom", "SOA")
    notify.set_opcode(4)
    put("dns", "notify", b"\x00" + notify.to_wire())
    put("dns", "two-questions", b"\x00" + header(1, qd=2) + b"\x01a\x00\x00\x01\x00\x01" * 2)
    rng = random.Random(1)
    for i in range(12):                      # loops, pointer chains, reserved label types
        put("dns", "compression-%d" % i, b"\x02" + _compression(rng))

def network_seeds():
    from phantom import network as n
    from phantom.network.canonical import b64, canonical
    now = int(common.NOW)
    authority = n.SigningKey(common.NETWORK_AUTHORITY_SEED)
    admission = n.SigningKey(common.NETWORK_ADMISSION_SEED)
    defn = common.network_definition(n, authority, admission)
    alice = common.network_member(n, defn, admission)
    put("network", "definition", b"\x00" + defn.encode())
    put("network", "definition-resign", b"\x08" + defn.encode())
    put("network", "certificate", b"\x01" + alice.encode())
    put("network", "certificate-presented", b"\x11" + alice.encode())
    put("network", "certificate-resign", b"\x09" + alice.encode())
    router = n.issue_certificate(defn, admission, key=I_PUB[::-1], name="router",
                                 ipv4="100.87.0.2", ipv6="fd3c:9a41:7e02::6457:2", serial=2,
                                 now=now - 60, groups=["servers", "routers"],
                                 routes=["192.168.10.0/24", "2001:db8:5::/48"], exit=True)
    put("network", "certificate-routes", b"\x09" + router.encode())
    fixed = iter(range(256))
    token, _ = n.create_invite(defn, now, name="bob", groups=["laptops"],
                               random_bytes=lambda k: bytes(next(fixed) for _ in range(k)))
    put("network", "token", b"\x02" + token.encode().encode())
    from phantom.network import join as j
    key, signing_key, sign = common.network_node()
    invite_token = common.network_invite(n, defn)[0]
    request = j.make_join_request(invite_token, key, signing_key, sign, now, name="carol")
    put("network", "join", b"\x05" + canonical(request))
    put("network", "join-resign", b"\x0d" + canonical(request))
    put("network", "join-no-name", b"\x0d" + canonical(dict(request, name=None)))
    renewal = j.make_renew_request(defn.fingerprint, key, signing_key, sign, now)
    put("network", "renew", b"\x06" + canonical(renewal))
    put("network", "renew-resign", b"\x0e" + canonical(renewal))
    rotated = n.revise(defn, authority, now, add_admission=[(authority.public, now + 86400)])
    put("network", "event-network", b"\x04" + canonical({"seq": 2, "op": "network",
                                                         "definition": rotated.doc}))
    put("network", "event-network-resign", b"\x0c" + canonical(
        {"seq": 2, "op": "network", "definition": dict(rotated.doc, seq=3)}))
    removal = n.make_removal(defn, admission, alice.key, now)
    put("network", "removal", b"\x03" + removal.encode())
    from phantom.network import policy as pol
    source = (b'default = "deny"\n[groups]\nadmins = ["member:node"]\n'
              b'[[rule]]\nfrom = "group:laptops"\nto = "group:servers"\nproto = "tcp"\n'
              b'ports = [22, "8000-8999"]\n[[rule]]\nfrom = ["group:admins", "member:alice"]\n'
              b'to = "*"\nproto = "icmp"\n[[rule]]\nfrom = "*"\nto = "member:alice"\n'
              b'proto = "udp"\nports = [53]\naction = "drop"\n')
    put("network", "policy-source", b"\x17" + source)
    put("network", "policy-source-json", b"\x17" + json.dumps(
        {"default": "allow", "rules": [{"from": "*", "to": "*", "proto": 47,
                                        "action": "drop"}]}, indent=1).encode())
    signed = pol.sign_policy(pol.parse_policy_source(source), defn, admission, 3, now)
    put("network", "policy", b"\x07" + signed.encode())
    put("network", "policy-resign", b"\x0f" + signed.encode())
    put("network", "removal-resign", b"\x0b" + removal.encode())
    dup = n.issue_certificate(defn, admission, key=R_PUB, name="dup", ipv4="100.87.0.1",
                              ipv6="fd3c:9a41:7e02::dead", serial=3, now=now - 30)
    for name, flags, ev in (
            ("event-member", 4, {"seq": 2, "op": "member", "cert": router.doc,
                                 "endpoints": ["192.0.2.2:51820"]}),
            ("event-conflict", 4, {"seq": 2, "op": "member", "cert": dup.doc}),
            ("event-resign", 12, {"seq": 2, "op": "member", "cert": dup.doc}),
            ("event-removed", 4, {"seq": 2, "op": "removed", "removal": removal.doc}),
            ("event-endpoints", 4, {"seq": 2, "op": "endpoints", "key": b64(alice.key),
                                    "endpoints": ["[2001:db8::1]:4000"]})):
        put("network", name, bytes([flags]) + canonical(ev))


if __name__ == "__main__":
    wire_seeds()
    handshake_seeds()
    firewall_seeds()
    directory_seeds()
    dns_seeds()
    network_seeds()
    for t in common.TARGETS:
        print(t, len(os.listdir(common.corpus_dir(t))), "files")
