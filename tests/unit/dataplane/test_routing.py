"""Allowed IPs: longest-prefix-match vectors and a brute-force comparison."""

from __future__ import annotations

import ipaddress
import random

import pytest

from phantom.dataplane.routing import AllowedIPs


def b(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


@pytest.fixture
def table():
    t = AllowedIPs()
    t.insert("10.0.0.0/8", 1)
    t.insert("10.1.0.0/16", 2)
    t.insert("10.1.2.0/24", 3)
    t.insert("10.1.2.3/32", 4)
    t.insert("fd00::/8", 1)
    t.insert("fd00:1::/32", 2)
    t.insert("fd00:1::7/128", 4)
    return t


# (address, expected peer) against the fixture table.
LOOKUP_VECTORS = [
    ("10.9.9.9", 1),          # only /8 matches
    ("10.1.9.9", 2),          # /16 beats /8
    ("10.1.2.9", 3),          # /24 beats /16
    ("10.1.2.3", 4),          # /32 beats everything
    ("10.1.2.4", 3),          # next to the /32
    ("11.0.0.0", None),       # no match
    ("9.255.255.255", None),  # just below 10/8
    ("10.255.255.255", 1),    # top of 10/8
    ("fd00:1::7", 4),         # /128
    ("fd00:1::8", 2),         # /32
    ("fd99::1", 1),           # /8
    ("fe80::1", None),        # no match
    ("::ffff:10.1.2.3", None),  # IPv4-mapped IPv6 is IPv6: no v4 match
]


@pytest.mark.parametrize("addr,peer", LOOKUP_VECTORS)
def test_longest_prefix_wins(table, addr, peer):
    assert table.lookup(b(addr)) == peer
    assert table.lookup(ipaddress.ip_address(addr)) == peer
    assert table.lookup(bytearray(b(addr))) == peer
    assert table.lookup(memoryview(b"\x00" + b(addr) + b"\x00")[1:-1]) == peer


def test_default_routes_v4_and_v6_are_separate():
    t = AllowedIPs()
    t.insert("0.0.0.0/0", 7)
    assert t.lookup(b("1.2.3.4")) == 7
    assert t.lookup(b("255.255.255.255")) == 7
    assert t.lookup(b("::1")) is None            # v4 default does not cover v6
    t.insert("::/0", 8)
    assert t.lookup(b("::1")) == 8
    assert t.lookup(b("1.2.3.4")) == 7
    t.insert("1.2.3.4/32", 9)
    assert t.lookup(b("1.2.3.4")) == 9
    assert t.lookup(b("1.2.3.5")) == 7


def test_v4_bytes_never_match_v6_prefix_of_same_bits():
    t = AllowedIPs()
    t.insert("::/96", 1)                        # would cover v4 if families mixed
    assert t.lookup(b("1.2.3.4")) is None
    assert t.lookup(b"\x00" * 12 + b("1.2.3.4")) == 1


def test_host_bits_are_masked():
    t = AllowedIPs()
    t.insert("10.1.2.3/8", 1)
    assert t.entries() == [(ipaddress.ip_network("10.0.0.0/8"), 1)]
    assert t.lookup(b("10.200.0.1")) == 1


def test_reinsert_moves_prefix_to_new_peer():
    t = AllowedIPs()
    t.insert("10.0.0.0/24", 1)
    t.insert("10.0.0.0/24", 2)
    assert t.lookup(b("10.0.0.1")) == 2
    assert t.peers() == {2}
    assert len(t) == 1
    t.remove_peer(1)                            # no effect: it lost the prefix
    assert t.lookup(b("10.0.0.1")) == 2


def test_remove_peer(table):
    table.remove_peer(3)
    assert table.lookup(b("10.1.2.9")) == 2     # falls back to the /16
    assert table.lookup(b("10.1.2.3")) == 4
    table.remove_peer(2)
    assert table.lookup(b("10.1.2.9")) == 1
    assert table.lookup(b("fd00:1::8")) == 1
    table.remove_peer(1)
    assert table.lookup(b("10.1.2.9")) is None
    assert table.lookup(b("fd99::1")) is None
    assert table.lookup(b("fd00:1::7")) == 4
    table.remove_peer(4)
    assert len(table) == 0 and table.entries() == []
    assert table._v4 == () and table._v6 == ()  # no empty probe left behind
    table.remove_peer(42)                       # unknown peer: no error


def test_remove_one_prefix(table):
    assert table.remove("10.1.0.0/16") == 2
    assert table.remove("10.1.0.0/16") is None
    assert table.lookup(b("10.1.9.9")) == 1
    assert table.lookup(b("fd00:1::8")) == 2


def test_set_peer_replaces(table):
    table.set_peer(2, ["192.168.0.0/16", "2001:db8::/32"])
    assert table.lookup(b("10.1.9.9")) == 1
    assert table.lookup(b("192.168.3.4")) == 2
    assert table.peer_networks(2) == [ipaddress.ip_network("192.168.0.0/16"),
                                      ipaddress.ip_network("2001:db8::/32")]
    with pytest.raises(ValueError):
        table.set_peer(2, ["not a network"])
    assert table.lookup(b("192.168.3.4")) == 2  # a bad list changes nothing


def test_peer_allows_is_cryptokey_routing(table):
    assert table.peer_allows(3, b("10.1.2.9"))
    assert table.peer_allows(1, b("10.9.9.9"))
    # 10.1.2.3 is inside peer 1's 10/8, but the /32 gives it to peer 4:
    # peer 1 must not be able to send with that source.
    assert not table.peer_allows(1, b("10.1.2.3"))
    assert table.peer_allows(4, b("10.1.2.3"))
    assert not table.peer_allows(1, b("11.0.0.1"))
    assert not table.peer_allows(99, b("10.9.9.9"))
    assert table.peer_allows(4, ipaddress.ip_address("fd00:1::7"))
    assert not table.peer_allows(2, b("fd00:1::7"))


def test_entries_sorted(table):
    nets = [str(n) for n, _ in table.entries()]
    assert nets == ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32",
                    "fd00::/8", "fd00:1::/32", "fd00:1::7/128"]


def test_bad_addresses_raise():
    t = AllowedIPs()
    with pytest.raises(ValueError):
        t.lookup(b"\x01\x02\x03")
    with pytest.raises(TypeError):
        t.lookup(12345)
    with pytest.raises(TypeError):
        t.insert("10.0.0.0/8", "peer")


def brute_force(entries, addr):
    """Obviously correct: scan every entry, keep the longest match."""
    best, best_len = None, -1
    for net, peer in entries:
        if addr.version == net.version and addr in net and net.prefixlen > best_len:
            best, best_len = peer, net.prefixlen
    return best


def _random_net(rnd, version):
    bits = 32 if version == 4 else 128
    # cluster addresses so prefixes overlap a lot
    base = rnd.choice([0x0A000000, 0xC0A80000, 0]) if version == 4 else \
        rnd.choice([0xFD00 << 112, 0x20010DB8 << 96, 0])
    addr = base | rnd.getrandbits(bits) >> rnd.randrange(bits - 4, bits + 1) if rnd.random() < 0.7 \
        else rnd.getrandbits(bits)
    plen = rnd.choice([0, 1, 8, 12, 16, 23, 24, 25, 31, bits - 1, bits]) if rnd.random() < 0.6 \
        else rnd.randrange(bits + 1)
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((addr >> (bits - plen) << (bits - plen), plen))


def _random_probe(rnd, entries, version):
    bits = 32 if version == 4 else 128
    same = [n for n, _ in entries if n.version == version]
    if same and rnd.random() < 0.7:     # inside or just next to a known prefix
        net = rnd.choice(same)
        host = rnd.getrandbits(bits - net.prefixlen) if net.prefixlen < bits else 0
        a = int(net.network_address) + host + rnd.choice([0, 0, 0, -1, 1])
        a %= 1 << bits
    else:
        a = rnd.getrandbits(bits)
    return ipaddress.IPv4Address(a) if version == 4 else ipaddress.IPv6Address(a)


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force(seed):
    rnd = random.Random(seed)
    t = AllowedIPs()
    model = {}                                  # network -> peer
    for step in range(400):
        r = rnd.random()
        if r < 0.6:
            net = _random_net(rnd, rnd.choice((4, 6)))
            peer = rnd.randrange(6)
            t.insert(net, peer)
            model[net] = peer
        elif r < 0.7:
            peer = rnd.randrange(6)
            t.remove_peer(peer)
            model = {n: p for n, p in model.items() if p != peer}
        elif r < 0.8 and model:
            net = rnd.choice(list(model))
            assert t.remove(net) == model.pop(net)
        entries = list(model.items())
        assert sorted(t.entries(), key=str) == sorted(entries, key=str)
        for _ in range(10):
            addr = _random_probe(rnd, entries, rnd.choice((4, 6)))
            expected = brute_force(entries, addr)
            assert t.lookup(addr.packed) == expected, (step, addr)
            for peer in range(6):
                assert t.peer_allows(peer, addr.packed) == (expected == peer)


def test_unrouted_follows_the_longest_route_holding_the_prefix():
    """Which allowed IPs the kernel does not route into the device (issue 18:
    a route that cannot be installed refuses the start and the reload)."""
    from phantom.dataplane.tun import unrouted
    N = ipaddress.ip_network
    routes = [(N("0.0.0.0/0"), "eth0"), (N("10.0.0.0/8"), "ph0"), (N("10.204.0.0/24"), "eth0"),
              (N("10.50.0.0/16"), "eth0"), (N("fd99::/64"), "ph0")]
    assert unrouted("ph0", ["10.1.0.0/16", "10.0.0.0/8", "10.204.0.0/16", "fd99::5/128"], routes) == []
    assert unrouted("ph0", ["10.50.1.0/24", "0.0.0.0/0", "192.168.1.0/24", "fd98::/64"], routes) == \
        [N("10.50.1.0/24"), N("0.0.0.0/0"), N("192.168.1.0/24"), N("fd98::/64")]
