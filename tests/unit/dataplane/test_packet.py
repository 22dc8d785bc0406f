"""Inner packet parsing and building, checked against scapy and by fuzzing."""

from __future__ import annotations

import ipaddress
import logging
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6TimeExceeded, IPv6, IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH  # noqa: E402
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.layers.sctp import SCTP  # noqa: E402
from scapy.utils import checksum as scapy_checksum  # noqa: E402

from phantom.dataplane import packet as P  # noqa: E402
from phantom.dataplane.packet import (  # noqa: E402
    arp_sender_ip, arp_target_ip, icmp_admin_prohibited, icmp_unreachable, internet_checksum,
    ip_dst, ip_src, parse_arp, parse_ether, parse_ip, pseudo_header_sum, tcp_rst_for,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def a(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def naive_checksum(data: bytes) -> int:
    """RFC 1071 written out the slow, obvious way."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- checksums ------------------------------------------------------------------------
CHECKSUM_VECTORS = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\xff\xff",
    b"\xff\xff\xff\xff",
    b"\x01",
    b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7",          # RFC 1071 section 3 example
    bytes.fromhex("4500003c1c4640004006" "0000" "ac100a63ac100a0c"),
]


@pytest.mark.parametrize("data", CHECKSUM_VECTORS)
def test_checksum_vectors(data):
    assert internet_checksum(data) == naive_checksum(data) == scapy_checksum(data)


def test_checksum_rfc1071_example():
    # RFC 1071 3: the one's complement sum of these words is 0xddf2
    assert internet_checksum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == (~0xDDF2 & 0xFFFF)


@FUZZ
@given(st.binary(max_size=3000))
def test_checksum_matches_naive_and_scapy(data):
    c = internet_checksum(data)
    assert c == naive_checksum(data) == scapy_checksum(data)
    # the data followed by its checksum sums to zero (when even-length)
    if len(data) % 2 == 0:
        assert internet_checksum(data + struct.pack("!H", c)) == 0


@FUZZ
@given(st.binary(min_size=0, max_size=200).map(lambda b: b[: len(b) // 2 * 2]), st.binary(max_size=200))
def test_checksum_initial_is_concatenation(head, tail):
    # a partial sum of an even-length head, then the tail == checksum of both
    head_sum = ~internet_checksum(head) & 0xFFFF
    assert internet_checksum(tail, head_sum) == naive_checksum(head + tail)


def test_pseudo_header_checksum_matches_scapy_tcp():
    for ip in (IP(src="192.0.2.1", dst="198.51.100.7"), IPv6(src="2001:db8::1", dst="2001:db8::2")):
        pkt = ip / TCP(sport=40000, dport=443, flags="PA", seq=7, ack=9) / (b"z" * 33)
        raw = bytes(pkt)
        info = parse_ip(raw)
        seg = bytearray(raw[info.header_len:])
        expected = struct.unpack_from("!H", seg, 16)[0]
        seg[16:18] = b"\x00\x00"
        ph = pseudo_header_sum(info.src, info.dst, 6, len(seg))
        assert internet_checksum(seg, ph) == expected


# --- parse_ip: vectors built with scapy --------------------------------------------------
def v4(**kw):
    return IP(src="10.0.0.1", dst="10.0.0.2", **kw)


def v6(**kw):
    return IPv6(src="fd00::1", dst="fd00::2", **kw)


def check_info(info, version, proto, hl, total, frag, off, sport, dport, itype=None, icode=None):
    assert info is not None
    assert (info.version, info.proto, info.header_len, info.total_len, info.is_fragment,
            info.frag_offset, info.sport, info.dport, info.icmp_type, info.icmp_code) == \
        (version, proto, hl, total, frag, off, sport, dport, itype, icode)


def test_ipv4_tcp_udp_icmp_sctp():
    raw = bytes(v4() / TCP(sport=1, dport=2) / b"abc")
    info = parse_ip(raw)
    check_info(info, 4, 6, 20, 43, False, 0, 1, 2)
    assert info.src == a("10.0.0.1") and info.dst == a("10.0.0.2")
    check_info(parse_ip(bytes(v4() / UDP(sport=53, dport=5353))), 4, 17, 20, 28, False, 0, 53, 5353)
    check_info(parse_ip(bytes(v4() / ICMP(type=8, code=0))), 4, 1, 20, 28, False, 0, None, None, 8, 0)
    check_info(parse_ip(bytes(v4() / SCTP(sport=9, dport=10))), 4, 132, 20, 32, False, 0, 9, 10)
    check_info(parse_ip(bytes(v4(proto=47) / b"gre!")), 4, 47, 20, 24, False, 0, None, None)


def test_ipv4_options_and_padding():
    raw = bytes(v4(options=b"\x01\x01\x01\x00") / UDP(sport=7, dport=8))
    check_info(parse_ip(raw), 4, 17, 24, 32, False, 0, 7, 8)
    # Ethernet padding after the packet is not part of it
    check_info(parse_ip(raw + b"\x00" * 18), 4, 17, 24, 32, False, 0, 7, 8)


def test_ipv4_fragments():
    whole = v4(id=5) / UDP(sport=1000, dport=2000) / (b"q" * 100)
    first, second = [bytes(f) for f in fragment(whole, fragsize=64)][:2]
    check_info(parse_ip(first), 4, 17, 20, 20 + 64, True, 0, 1000, 2000)
    check_info(parse_ip(second), 4, 17, 20, len(second), True, 64, None, None)
    # a fragment at offset 8 of TCP may overwrite the TCP flags (RFC 1858)
    assert parse_ip(bytes(v4(frag=1, proto=6) / (b"x" * 16))) is None
    assert parse_ip(bytes(v4(frag=1, proto=17) / (b"x" * 16))) is not None
    # a first fragment too short to hold the ports ("tiny fragment")
    assert parse_ip(bytes(v4(flags="MF", proto=6) / b"xx")) is None
    assert parse_ip(bytes(v4(proto=1) / b"x")) is None


@pytest.mark.parametrize("mutate", [
    lambda b: b[:19],                                   # truncated header
    lambda b: bytes([0x44]) + b[1:],                    # IHL 4
    lambda b: bytes([0x4F]) + b[1:],                    # IHL 15 > packet
    lambda b: b[:2] + struct.pack("!H", len(b) + 1) + b[4:],   # total length past the end
    lambda b: b[:2] + struct.pack("!H", 19) + b[4:],    # total length < header
    lambda b: bytes([0x55]) + b[1:],                    # version 5
    lambda b: b"",
])
def test_ipv4_malformed(mutate):
    assert parse_ip(mutate(bytes(v4() / UDP(sport=1, dport=2) / b"payload"))) is None


def test_ipv6_plain_and_icmpv6():
    raw = bytes(v6() / TCP(sport=443, dport=50000) / b"x")
    info = parse_ip(raw)
    check_info(info, 6, 6, 40, 61, False, 0, 443, 50000)
    assert info.src == a("fd00::1") and info.dst == a("fd00::2")
    check_info(parse_ip(bytes(v6() / ICMPv6EchoRequest())), 6, 58, 40, 48, False, 0, None, None, 128, 0)
    check_info(parse_ip(bytes(v6(nh=59))), 6, 59, 40, 40, False, 0, None, None)


def test_ipv6_extension_header_walk():
    raw = bytes(v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
                / IPv6ExtHdrDestOpt(options=[]) / UDP(sport=11, dport=22) / b"data")
    hl = 40 + 8 + 8 + 8 + 8
    check_info(parse_ip(raw), 6, 17, hl, len(raw), False, 0, 11, 22)
    # a routing header with addresses: length 1 + 2*... 8-octet units
    raw = bytes(v6() / IPv6ExtHdrRouting(addresses=["fd00::9", "fd00::a"]) / UDP(sport=3, dport=4))
    check_info(parse_ip(raw), 6, 17, 40 + 8 + 32, len(raw), False, 0, 3, 4)
    # AH counts its length in 4-octet units (RFC 4302)
    raw = bytes(v6() / AH(nh=17, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12) / UDP(sport=5, dport=6))
    check_info(parse_ip(raw), 6, 17, 40 + 24, len(raw), False, 0, 5, 6)


def test_ipv6_fragments():
    first = bytes(v6() / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=9) / UDP(sport=1, dport=2) / (b"y" * 8))
    check_info(parse_ip(first), 6, 17, 48, len(first), True, 0, 1, 2)
    later = bytes(v6() / IPv6ExtHdrFragment(nh=17, offset=2, m=0, id=9) / (b"y" * 8))
    check_info(parse_ip(later), 6, 17, 48, len(later), True, 16, None, None)
    # a non-first fragment's bytes are not headers: not walked even if they look like one
    later = bytes(v6() / IPv6ExtHdrFragment(nh=0, offset=1, m=1, id=9) / (b"\xff" * 16))
    check_info(parse_ip(later), 6, 0, 48, len(later), True, 8, None, None)
    atomic = bytes(v6() / IPv6ExtHdrFragment(nh=6, offset=0, m=0, id=9) / TCP(sport=5, dport=6))
    check_info(parse_ip(atomic), 6, 6, 48, len(atomic), False, 0, 5, 6)
    # tiny first fragment: the upper-layer header is not in it (RFC 7112)
    tiny = bytes(v6() / IPv6ExtHdrFragment(nh=6, offset=0, m=1) / b"ab")
    assert parse_ip(tiny) is None


@pytest.mark.parametrize("build", [
    # hop-by-hop that is not first
    lambda: v6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP(),
    # two fragment headers
    lambda: v6() / IPv6ExtHdrFragment(nh=44) / IPv6ExtHdrFragment(nh=17) / UDP(),
    # too many extension headers
    lambda: v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
    / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
    / IPv6ExtHdrDestOpt() / UDP(),
])
def test_ipv6_bad_chains(build):
    assert parse_ip(bytes(build())) is None


def test_ipv6_chain_past_end():
    raw = bytearray(bytes(v6() / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2)))
    raw[41] = 5                          # dest-opts claims 48 bytes
    assert parse_ip(bytes(raw)) is None
    raw = bytes(v6() / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2))
    assert parse_ip(raw[:44]) is None    # truncated inside the first extension header
    # the last extension header claims 8 bytes more than the payload length
    raw = bytearray(bytes(v6() / IPv6ExtHdrDestOpt(nh=59)) + bytes(8))
    raw[41] = 1                          # 16 bytes of dest-opts ...
    raw[4:6] = struct.pack("!H", 8)      # ... in an 8-byte payload
    assert parse_ip(bytes(raw)) is None
    raw[4:6] = struct.pack("!H", 16)
    check_info(parse_ip(bytes(raw)), 6, 59, 56, 56, False, 0, None, None)
    raw = bytes(v6() / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2))
    # payload length past the buffer
    assert parse_ip(raw[:-1]) is None
    # payload length 0 (a jumbogram) with a hop-by-hop header: not ours
    jumbo = bytearray(bytes(v6() / IPv6ExtHdrHopByHop() / UDP()))
    jumbo[4:6] = b"\x00\x00"
    assert parse_ip(bytes(jumbo)) is None


def test_extra_bytes_beyond_payload_length_are_ignored():
    raw = bytes(v6() / UDP(sport=1, dport=2))
    check_info(parse_ip(raw + b"\x00" * 10), 6, 17, 40, 48, False, 0, 1, 2)


def test_offset_and_buffer_types():
    raw = bytes(v6() / IPv6ExtHdrHopByHop() / TCP(sport=80, dport=81))
    expected = parse_ip(raw)
    framed = b"\xaa" * 14 + raw
    assert parse_ip(framed, 14) == expected
    assert parse_ip(bytearray(framed), 14) == expected
    assert parse_ip(memoryview(framed), 14) == expected
    assert parse_ip(memoryview(framed)[14:]) == expected
    assert parse_ip(framed, -3) is None
    assert ip_dst(framed, 14) == a("fd00::2") and ip_src(framed, 14) == a("fd00::1")
    assert bytes(ip_dst(memoryview(framed), 14)) == a("fd00::2")


def test_ip_src_dst_fast_path():
    raw4 = bytes(IP(src="192.0.2.1", dst="198.51.100.2") / UDP())
    raw6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2"))
    assert ip_src(raw4) == a("192.0.2.1") and ip_dst(raw4) == a("198.51.100.2")
    assert ip_src(raw6) == a("2001:db8::1") and ip_dst(raw6) == a("2001:db8::2")
    assert ip_dst(raw6[:39]) is None and ip_src(raw6[:39]) is None
    assert ip_dst(raw4[:19]) is None and ip_dst(b"") is None
    assert ip_dst(b"\x50" + raw4[1:]) is None


# --- parse_ip compared with scapy on random packets ----------------------------------------
@st.composite
def random_packets(draw):
    version = draw(st.sampled_from((4, 6)))
    src = draw(st.integers(1, 2 ** (32 if version == 4 else 128) - 1))
    dst = draw(st.integers(1, 2 ** (32 if version == 4 else 128) - 1))
    if version == 4:
        ip = IP(src=str(ipaddress.IPv4Address(src)), dst=str(ipaddress.IPv4Address(dst)),
                options=draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x01" * 8])))
    else:
        ip = IPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)))
        for ext in draw(st.lists(st.sampled_from(["dst", "rt"]), max_size=3)):
            ip = ip / (IPv6ExtHdrDestOpt() if ext == "dst" else IPv6ExtHdrRouting())
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    payload = draw(st.binary(max_size=64))
    if l4 == "tcp":
        pkt = ip / TCP(sport=sport, dport=dport) / payload
    elif l4 == "udp":
        pkt = ip / UDP(sport=sport, dport=dport) / payload
    else:
        pkt = ip / (ICMP(type=sport & 0xFF, code=dport & 0xFF) if version == 4
                    else ICMPv6EchoRequest(type=sport & 0xFF, code=dport & 0xFF)) / payload
    return l4, sport, dport, bytes(pkt)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_packets())
def test_parse_ip_agrees_with_scapy(sample):
    l4, sport, dport, raw = sample
    info = parse_ip(raw)
    assert info is not None
    pkt = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
    assert info.src == a(pkt.src) and info.dst == a(pkt.dst)
    assert ip_src(raw) == info.src and ip_dst(raw) == info.dst
    assert info.total_len == len(raw) and not info.is_fragment
    if l4 == "icmp":
        assert (info.icmp_type, info.icmp_code) == (sport & 0xFF, dport & 0xFF)
        assert info.proto == (1 if info.version == 4 else 58)
    else:
        layer = TCP if l4 == "tcp" else UDP
        assert (info.sport, info.dport) == (pkt[layer].sport, pkt[layer].dport) == (sport, dport)
        assert raw[info.header_len:] == bytes(pkt[layer])


# --- fuzzing: no input raises ---------------------------------------------------------------
SEEDS = [
    bytes(v4() / TCP(sport=1, dport=2, flags="S") / b"abc"),
    bytes(v4(options=b"\x01" * 4) / UDP(sport=1, dport=2)),
    bytes(v4() / ICMP()),
    bytes(v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrFragment(nh=60)
          / IPv6ExtHdrDestOpt() / TCP(sport=3, dport=4)),
    bytes(v6() / AH(nh=58, payloadlen=4, icv=b"\x00" * 12) / ICMPv6EchoRequest()),
    bytes(Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=4) / ARP()),
]

mutated = st.tuples(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                                      max_size=6), st.integers(0, 220) | st.just(None)).map(
    lambda t: bytes(_mutate(t[0], t[1])[: t[2]]))


def _mutate(seed, edits):
    b = bytearray(seed)
    for pos, val in edits:
        if pos < len(b):
            b[pos] = val
    return b


@st.composite
def plausible_ip(draw):
    """Packets whose length fields are mostly consistent, so that the fuzzing
    reaches deep into the IPv4 option/fragment and IPv6 extension-header code."""
    if draw(st.booleans()):
        ihl = draw(st.one_of(st.just(5), st.integers(0, 15)))
        proto = draw(st.sampled_from([1, 6, 17, 33, 132, 136, 47, 255]))
        frag = draw(st.sampled_from([0, 0x2000, 1, 0x2001, 2, 0x4000])) | (draw(st.integers(0, 7)) << 13) * \
            draw(st.sampled_from([0, 0, 1]))
        body = draw(st.binary(max_size=60))
        size = 20 + len(body)
        total = draw(st.one_of(st.just(size), st.integers(0, size + 8)))
        header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, 0, frag & 0xFFFF, 64, proto, 0,
                             b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
        return header + body
    chain = draw(st.lists(st.sampled_from([0, 43, 44, 60, 51]), max_size=10))
    last = draw(st.sampled_from([6, 17, 58, 59, 132, 0, 44]))
    body = bytearray()
    nhs = chain + [last]
    for i, ext in enumerate(chain):
        units = draw(st.integers(0, 3))
        size = (units + 2) * 4 if ext == 51 else (units + 1) * 8
        size += draw(st.sampled_from([0, 0, 0, -4, 8]))
        hdr = bytearray(draw(st.binary(min_size=max(size, 2), max_size=max(size, 2))))
        hdr[0], hdr[1] = nhs[i + 1], units
        if ext == 44:
            hdr[2:4] = struct.pack("!H", draw(st.sampled_from([0, 1, 8, 9, 0xFFF8])))
        body += hdr
    body += draw(st.binary(max_size=12))
    paylen = draw(st.one_of(st.just(len(body)), st.integers(0, len(body) + 8)))
    header = struct.pack("!IHBB16s16s", 6 << 28, paylen, nhs[0], 64, a("fd00::1"), a("fd00::2"))
    return header + bytes(body)


def _run_everything(data):
    for off in (0, 1, 14):
        info = parse_ip(data, off)
        if info is not None:
            assert info.version in (4, 6)
            assert 20 <= info.header_len <= info.total_len <= len(data) - off
            if info.sport is not None:
                assert info.header_len + 4 <= info.total_len and info.frag_offset == 0
            if info.icmp_type is not None:
                assert info.header_len + 2 <= info.total_len and info.frag_offset == 0
        ip_dst(data, off)
        ip_src(data, off)
        eth = parse_ether(data, off)
        if eth is not None:
            assert 14 <= eth.payload_offset <= len(data) - off
        parse_arp(data, off)
        arp_sender_ip(data, off)
        arp_target_ip(data, off)
        for out in (icmp_unreachable(data, offset=off), icmp_admin_prohibited(data, offset=off),
                    tcp_rst_for(data, off)):
            if out is not None:
                assert parse_ip(out) is not None


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_raise(data):
    _run_everything(data)
    _run_everything(bytearray(data))


@pytest.mark.slow          # seconds of hypothesis: the full suite, not the quick set
@FUZZ
@given(plausible_ip())
def test_fuzz_plausible_packets_never_raise(data):
    _run_everything(data)
    _run_everything(b"\x00" * 14 + data)


ETHERTYPES = st.sampled_from([0x8100, 0x88A8, 0x0800, 0x0806, 0x86DD, 0x0042])


@pytest.mark.slow          # seconds of hypothesis: the full suite, not the quick set
@FUZZ
@given(st.binary(min_size=12, max_size=12), st.lists(st.tuples(ETHERTYPES, st.integers(0, 0xFFFF)), max_size=4),
       st.one_of(plausible_ip(), st.binary(max_size=40)), st.integers(0, 6))
def test_fuzz_plausible_frames_never_raise(macs, tags, payload, cut):
    frame = macs + b"".join(struct.pack("!HH", t, tci) for t, tci in tags) + payload
    frame = frame[:len(frame) - cut]
    eth = parse_ether(frame)
    if eth is not None:
        assert 14 <= eth.payload_offset <= len(frame)
        parse_ip(frame, eth.payload_offset)
        parse_arp(frame, eth.payload_offset)
        ip_dst(frame, eth.payload_offset)
    _run_everything(frame)


@FUZZ
@given(mutated)
def test_fuzz_mutated_packets_never_raise(data):
    _run_everything(data)


# --- Ethernet and ARP -------------------------------------------------------------------------
DST, SRC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def mac(s):
    return bytes.fromhex(s.replace(":", ""))


def test_parse_ether_untagged_and_tagged():
    raw = bytes(Ether(dst=DST, src=SRC) / IP())
    assert parse_ether(raw) == P.EtherInfo(mac(DST), mac(SRC), 0x0800, 14, None)
    raw = bytes(Ether(dst=DST, src=SRC) / Dot1Q(vlan=42) / IPv6())
    assert parse_ether(raw) == P.EtherInfo(mac(DST), mac(SRC), 0x86DD, 18, 42)
    raw = bytes(Ether(dst=DST, src=SRC) / Dot1AD(vlan=100) / Dot1Q(vlan=200) / ARP())
    info = parse_ether(raw)
    assert (info.ethertype, info.payload_offset, info.vlan) == (0x0806, 22, 100)
    # three tags is more than we accept; a tag cut short is malformed
    assert parse_ether(bytes(Ether() / Dot1AD() / Dot1Q() / Dot1Q() / IP())) is None
    assert parse_ether(bytes(Ether() / Dot1Q() / IP())[:16]) is None
    assert parse_ether(raw[:13]) is None


def test_parse_ether_then_ip():
    frame = bytes(Ether() / Dot1Q(vlan=7) / IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=9, dport=9))
    eth = parse_ether(frame)
    assert ip_dst(frame, eth.payload_offset) == a("10.2.2.2")
    check_info(parse_ip(frame, eth.payload_offset), 4, 17, 20, 28, False, 0, 9, 9)


def test_mac_is_group():
    assert P.mac_is_group(P.BROADCAST_MAC)
    assert P.mac_is_group(mac("33:33:00:00:00:01"))
    assert not P.mac_is_group(mac(SRC))


def test_arp():
    frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=SRC)
                  / ARP(op=1, hwsrc=SRC, psrc="10.0.0.5", hwdst="00:00:00:00:00:00", pdst="10.0.0.9"))
    eth = parse_ether(frame)
    assert eth.ethertype == P.ETHERTYPE_ARP
    assert arp_sender_ip(frame, eth.payload_offset) == a("10.0.0.5")
    assert arp_target_ip(frame, eth.payload_offset) == a("10.0.0.9")
    assert parse_arp(frame, 14) == P.ArpInfo(1, mac(SRC), a("10.0.0.5"), bytes(6), a("10.0.0.9"))
    payload = frame[14:]
    assert arp_sender_ip(payload) == a("10.0.0.5")
    assert arp_sender_ip(payload[:27]) is None
    assert arp_sender_ip(b"\x00\x06" + payload[2:]) is None      # not Ethernet hardware
    assert arp_sender_ip(payload[:2] + b"\x86\xdd" + payload[4:]) is None  # not IPv4


# --- ICMP errors ---------------------------------------------------------------------------------
def verify_v4_icmp(out: bytes, original: bytes, src: str, type_: int, code: int):
    pkt = IP(out)
    assert pkt.src == src and pkt.dst == IP(original).src
    assert pkt.proto == 1 and pkt[ICMP].type == type_ and pkt[ICMP].code == code
    assert pkt.len == len(out) <= 576
    quote = out[28:]
    assert quote == original[:len(quote)]
    assert len(quote) == min(len(original), 576 - 28)
    # independent checksums: scapy recomputes both, and the naive sums are zero
    again = IP(out)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(again) == out
    assert naive_checksum(out[:20]) == 0 and naive_checksum(out[20:]) == 0


def verify_v6_icmp(out: bytes, original: bytes, src: str, type_: int, code: int):
    pkt = IPv6(out)
    assert pkt.src == src and pkt.dst == IPv6(original).src
    assert pkt.nh == 58 and out[40] == type_ and out[41] == code
    assert pkt.plen + 40 == len(out) <= 1280
    quote = out[48:]
    assert quote == original[:len(quote)]
    assert len(quote) == min(len(original), 1280 - 48)
    again = IPv6(out)
    del again[1].cksum                  # the ICMPv6 layer
    assert bytes(again) == out
    pseudo = out[8:40] + struct.pack("!I3xB", len(out) - 40, 58)
    assert naive_checksum(pseudo + out[40:]) == 0


@pytest.mark.parametrize("size", [0, 8, 500, 548, 549, 1400])
def test_icmp_unreachable_v4(size):
    original = bytes(IP(src="10.0.0.1", dst="10.9.9.9") / UDP(sport=5000, dport=53) / (b"m" * size))
    out = icmp_unreachable(original, "10.0.0.254")
    verify_v4_icmp(out, original, "10.0.0.254", 3, 1)
    assert IP(out)[ICMP].type == 3
    assert IP(out).tos == 0xC0 and IP(out).ttl == 64


@pytest.mark.parametrize("size", [0, 100, 1184, 1185, 3000])
def test_icmp_unreachable_v6(size):
    original = bytes(IPv6(src="fd00::1", dst="fd00:9::9") / UDP(sport=5000, dport=53) / (b"m" * size))
    out = icmp_unreachable(original, ipaddress.ip_address("fd00::fe"))
    verify_v6_icmp(out, original, "fd00::fe", 1, 3)
    assert isinstance(IPv6(out)[1], ICMPv6DestUnreach)


def test_icmp_admin_prohibited_both_versions():
    o4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"hi")
    verify_v4_icmp(icmp_admin_prohibited(o4, a("10.0.0.2")), o4, "10.0.0.2", 3, 13)
    o6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2))
    verify_v6_icmp(icmp_admin_prohibited(o6), o6, "fd00::2", 1, 1)   # default: from the dst
    verify_v4_icmp(icmp_admin_prohibited(o4), o4, "10.0.0.2", 3, 13)


def test_icmp_error_quote_ignores_padding():
    original = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    out = icmp_unreachable(original + b"\x00" * 18, "10.0.0.2")
    assert out[28:] == original


def test_icmp_error_from_wrong_version_raises():
    o4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP())
    with pytest.raises(ValueError):
        icmp_unreachable(o4, "fd00::1")


@pytest.mark.parametrize("original", [
    IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=3, code=1) / IP() / UDP(),   # error about an error
    IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=11) / IP() / UDP(),
    IP(src="10.0.0.1", dst="10.0.0.2", frag=8, proto=17) / (b"x" * 20),          # non-first fragment
    IP(src="10.0.0.1", dst="224.0.0.5") / UDP(),                                 # multicast
    IP(src="10.0.0.1", dst="255.255.255.255") / UDP(),                           # broadcast
    IP(src="0.0.0.0", dst="10.0.0.2") / UDP(),                                   # unspecified source
    IP(src="127.0.0.1", dst="10.0.0.2") / UDP(),                                 # loopback source
    IP(src="224.1.1.1", dst="10.0.0.2") / UDP(),                                 # multicast source
    IPv6(src="fd00::1", dst="fd00::2") / ICMPv6DestUnreach() / IPv6(),           # error about an error
    IPv6(src="fd00::1", dst="fd00::2") / ICMPv6TimeExceeded() / IPv6(),
    IPv6(src="fd00::1", dst="ff02::1") / UDP(),                                  # multicast
    IPv6(src="::", dst="fd00::2") / UDP(),                                       # unspecified source
    IPv6(src="ff02::1", dst="fd00::2") / UDP(),                                  # multicast source
    IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=17, offset=3) / (b"x" * 8),
])
def test_no_icmp_error_when_rfcs_forbid(original):
    assert icmp_unreachable(bytes(original)) is None
    assert icmp_admin_prohibited(bytes(original)) is None


def test_icmp_error_answers_queries():
    echo4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8) / b"ping")
    verify_v4_icmp(icmp_unreachable(echo4, "10.0.0.3"), echo4, "10.0.0.3", 3, 1)
    echo6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest() / b"ping")
    verify_v6_icmp(icmp_unreachable(echo6, "fd00::3"), echo6, "fd00::3", 1, 3)


# --- TCP reset ------------------------------------------------------------------------------------
def verify_rst(out: bytes, original: bytes):
    ip_cls = IP if original[0] >> 4 == 4 else IPv6
    orig, pkt = ip_cls(original), ip_cls(out)
    assert (pkt.src, pkt.dst) == (orig.dst, orig.src)
    assert (pkt[TCP].sport, pkt[TCP].dport) == (orig[TCP].dport, orig[TCP].sport)
    again = ip_cls(out)
    if ip_cls is IP:
        del again.chksum
        assert naive_checksum(out[:20]) == 0
    del again[TCP].chksum
    assert bytes(again) == out
    return pkt[TCP]


@pytest.mark.parametrize("ip", [IP(src="10.0.0.1", dst="10.0.0.2"), IPv6(src="fd00::1", dst="fd00::2")])
def test_tcp_rst(ip):
    syn = bytes(ip / TCP(sport=40000, dport=22, flags="S", seq=1000))
    rst = verify_rst(tcp_rst_for(syn), syn)
    assert (rst.flags, rst.seq, rst.ack) == ("RA", 0, 1001)
    # ACK set: the reset takes its sequence number from SEG.ACK
    data = bytes(ip / TCP(sport=40000, dport=22, flags="PA", seq=5, ack=777) / b"payload")
    rst = verify_rst(tcp_rst_for(data), data)
    assert (rst.flags, rst.seq, rst.ack) == ("R", 777, 0)
    # no ACK: SEG.SEQ + data length + SYN + FIN, mod 2**32
    fin = bytes(ip / TCP(sport=1, dport=2, flags="SF", seq=2 ** 32 - 3) / b"abc")
    rst = verify_rst(tcp_rst_for(fin), fin)
    assert (rst.flags, rst.seq, rst.ack) == ("RA", 0, (2 ** 32 - 3 + 3 + 2) % 2 ** 32)
    # TCP options are not payload
    opt = bytes(ip / TCP(sport=1, dport=2, flags="S", seq=10, options=[("MSS", 1460), ("NOP", None)]))
    rst = verify_rst(tcp_rst_for(opt), opt)
    assert rst.ack == 11


@pytest.mark.parametrize("original", [
    IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="R"),                # never answer a reset
    IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="RA"),
    IP(src="10.0.0.1", dst="10.0.0.2") / UDP(),                         # not TCP
    IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP(flags="S"),    # a fragment
    IP(src="10.0.0.1", dst="224.0.0.1") / TCP(flags="S"),               # multicast
    IP(src="0.0.0.0", dst="10.0.0.2") / TCP(flags="S"),
    IPv6(src="fd00::1", dst="ff02::2") / TCP(flags="S"),
    IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=6, m=1) / TCP(flags="S"),
    IP(src="10.0.0.1", dst="10.0.0.2", proto=6) / (b"\x00" * 19),          # truncated TCP header
])
def test_no_tcp_rst(original):
    assert tcp_rst_for(bytes(original)) is None


def test_tcp_rst_bad_data_offset():
    raw = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S")))
    raw[32] = 0x40                        # data offset 4 (< 5)
    assert tcp_rst_for(bytes(raw)) is None
    raw[32] = 0xF0                        # data offset 15 (past the end)
    assert tcp_rst_for(bytes(raw)) is None


def test_builders_accept_offset():
    original = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S", seq=1))
    framed = b"\x00" * 14 + original
    assert tcp_rst_for(framed, 14) == tcp_rst_for(original)
    assert icmp_unreachable(framed, "10.0.0.9", 14) == icmp_unreachable(original, "10.0.0.9")


def test_ipinfo_is_named_and_comparable():
    info = parse_ip(bytes(v4() / UDP(sport=1, dport=2)))
    assert "sport=1" in repr(info)
    assert info == parse_ip(bytes(v4() / UDP(sport=1, dport=2)))
    assert info != parse_ip(bytes(v4() / UDP(sport=1, dport=3)))
