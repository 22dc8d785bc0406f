"""Firewall classification cost in ns per packet, for 1, 10 and 100 rules.

    /tmp/venv/bin/python -m pytest bench/bench_classify.py --benchmark-columns=min,median,mean
    /tmp/venv/bin/python bench/bench_classify.py          # plain table, no pytest

Three rule sets of N inbound TCP rules (see ``rules_for``): "ports" (dst-port
rules; the reference classifier's dst-port index skips straight to the
interval of port 8080), "cidrs" (source-address rules: every rule is looked
at, the worst case) and "groups" (``src_group`` rules of 1000-peer groups the
packet's peer is not in: every rule is looked at, one set lookup each).  The packet is an inbound TCP SYN to port 8080 that no rule
matches; the default accepts it.  A UDP packet has no candidate rules at all
(the best case).

Columns: one per classifier.  The fast path adds its own entry to
``CLASSIFIERS`` (a callable taking ``(tables, direction, packet, peer_id)``).
"""

from __future__ import annotations

import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pytest  # noqa: E402

from phantom.dataplane.firewall import (  # noqa: E402
    Direction, Firewall, classify, compile_rules, parse_rules,
)

SIZES = (1, 10, 100)


def _ipv4_tcp(dport: int) -> bytes:
    # a fixed 40-byte IPv4/TCP SYN, built by hand so the benchmark needs no scapy
    import struct
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    return ip + tcp


def _ipv4_udp() -> bytes:
    import struct
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    return ip + struct.pack("!HHHH", 5000, 53, 8, 0)


def rules_for(n: int, kind: str = "ports"):
    """N inbound rules: "ports" = TCP dst-port rules (ports 1..N); "cidrs" =
    TCP rules by source /24 (192.168.i.0/24) that the packet (from 10.0.0.2)
    misses, and that no port index can skip: every one is looked at; "groups" =
    TCP rules by ``src_group``, each group 1000 peers (ids 2..1001) that the
    packet's peer (1) is not among: every rule is looked at, each with a
    binary search of its peer set."""
    if kind == "groups":
        rules = [{"direction": "in", "proto": "tcp", "src_group": "g%d" % i, "action": "drop"}
                 for i in range(n)]
        groups = {"g%d" % i: range(2 + i, 1002 + i) for i in range(n)}
        return compile_rules(parse_rules({"rule": rules}, {}, groups))
    if kind == "ports":
        rules = [{"direction": "in", "proto": "tcp", "dst_port": p, "action": "drop"}
                 for p in range(1, n + 1)]
    else:
        rules = [{"direction": "in", "proto": "tcp", "cidr": "192.168.%d.%d/32" % (i // 250, i % 250),
                  "action": "drop"} for i in range(n)]
    return compile_rules(parse_rules({"rule": rules}, {}))


def _reference(tables, direction, packet, peer_id):
    return classify(tables, direction, packet, peer_id)


def _reference_counting():
    """The reference classifier as the data path calls it: with counters."""
    cache = {}

    def run(tables, direction, packet, peer_id):
        fw = cache.get(id(tables))
        if fw is None:
            fw = cache[id(tables)] = Firewall(tables)
        t, st = fw.active
        return classify(t, direction, packet, peer_id, False, 0.0, st)
    return run


CLASSIFIERS = {
    "reference": _reference,
    "reference+counters": _reference_counting(),
}

TCP_MISS = _ipv4_tcp(8080)
UDP_NONE = _ipv4_udp()


@pytest.mark.parametrize("name", list(CLASSIFIERS))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["ports", "cidrs", "groups"])
def test_classify_tcp_no_match(benchmark, kind, name, n):
    t = rules_for(n, kind)
    fn = CLASSIFIERS[name]
    v = benchmark(fn, t, Direction.IN, TCP_MISS, 1)
    assert v.rule == -1
    benchmark.extra_info["rules"] = n


@pytest.mark.parametrize("name", list(CLASSIFIERS))
@pytest.mark.parametrize("n", SIZES)
def test_classify_udp_no_candidates(benchmark, name, n):
    t = rules_for(n)
    v = benchmark(CLASSIFIERS[name], t, Direction.IN, UDP_NONE, 1)
    assert v.rule == -1


def fast_ns_per_packet(tables, direction, packet, peer_id, iterations: int = 200000) -> float:
    """The fast path's C classifier, timed in C (as its packet loop calls it: no
    Python in between); best of 5."""
    from phantom.fastpath import _testing
    blob, pkt = bytes(tables.blob), bytes(packet)
    action = _testing.fw_decide(blob, int(direction), pkt, peer_id)[0]
    assert action != 3, "this packet would be handed to the Python classifier"
    return min(_testing.fw_bench(blob, int(direction), pkt, peer_id, iterations)
               for _ in range(5)) / iterations * 1e9


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["ports", "cidrs", "groups"])
def test_classify_fast_path_in_c(benchmark, kind, n):
    from phantom.fastpath import _testing
    t = rules_for(n, kind)
    blob, pkt = bytes(t.blob), bytes(TCP_MISS)
    action, rule, _ = _testing.fw_decide(blob, int(Direction.IN), pkt, 1)
    assert rule == -1 and action != 3
    iterations = 10000
    seconds = benchmark(_testing.fw_bench, blob, int(Direction.IN), pkt, 1, iterations)
    benchmark.extra_info["rules"] = n
    benchmark.extra_info["ns_per_packet"] = seconds / iterations * 1e9


def main() -> None:
    print("ns per packet (best of 5 runs), IPv4 TCP SYN, no rule matches")
    names = list(CLASSIFIERS) + ["fast (in C)"]
    print("%-6s %-6s" % ("rules", "kind") + "".join("%22s" % name for name in names))
    for kind in ("ports", "cidrs", "groups"):
        for n in SIZES:
            t = rules_for(n, kind)
            row = "%-6d %-6s" % (n, kind)
            for fn in CLASSIFIERS.values():
                loops = 20000
                best = min(timeit.repeat(lambda: fn(t, Direction.IN, TCP_MISS, 1),
                                         number=loops, repeat=5))
                row += "%22.0f" % (best / loops * 1e9)
            row += "%22.1f" % fast_ns_per_packet(t, Direction.IN, TCP_MISS, 1)
            print(row)


if __name__ == "__main__":
    main()
