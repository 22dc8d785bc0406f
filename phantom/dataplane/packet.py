"""Inner packets: parse IPv4/IPv6 and Ethernet/ARP, build ICMP errors and TCP resets.

Everything here runs on untrusted bytes (decrypted payloads come from peers,
frames from TUN/TAP).  The parsers never raise on any input: malformed input
gives None.  They take ``bytes``, ``bytearray`` or ``memoryview`` and an
optional ``offset`` where the packet starts, so a caller holding a larger
buffer (an Ethernet frame, an in-place encryption buffer) need not copy.

Hot-path helpers:

* :func:`ip_dst` / :func:`ip_src` -- one length check, one version test, one
  slice: for the routing lookup of every packet.
* :func:`parse_ip` -- the full picture (ports, fragments, IPv6 extension
  headers) for the firewall.

Builders (:func:`icmp_unreachable`, :func:`icmp_admin_prohibited`,
:func:`tcp_rst_for`) return the packet to write back into the local
interface, or None when the RFCs say not to answer (errors about errors,
non-first fragments, multicast/broadcast, a non-unicast source, RST for RST).
They do not rate-limit: the caller must (RFC 4443 2.4(f), RFC 1812 4.3.2.8).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from typing import Optional

# --- protocol numbers -----------------------------------------------------------
PROTO_HOPOPT = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_DCCP = 33
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_NONE = 59
PROTO_DSTOPTS = 60
PROTO_SCTP = 132
PROTO_UDPLITE = 136

# Transport protocols whose header starts with 16-bit source and destination ports.
PORT_PROTOCOLS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_DCCP, PROTO_SCTP, PROTO_UDPLITE))
# IPv6 extension headers walked by parse_ip (RFC 8200 section 4, AH from RFC 4302).
IPV6_EXTENSION_HEADERS = frozenset((PROTO_HOPOPT, PROTO_ROUTING, PROTO_FRAGMENT, PROTO_DSTOPTS, PROTO_AH))
MAX_IPV6_EXTENSION_HEADERS = 8       # more than this is treated as malformed (bounded work)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100              # 802.1Q C-tag
ETHERTYPE_QINQ = 0x88A8              # 802.1ad S-tag
MAX_VLAN_TAGS = 2
BROADCAST_MAC = b"\xff" * 6

# --- layouts ----------------------------------------------------------------------
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")   # ver/ihl tos totlen id frag ttl proto csum src dst
IPV6_HEADER = struct.Struct("!IHBB16s16s")     # ver/tc/flow paylen nexthdr hoplimit src dst
IPV4_PSEUDO_HEADER = struct.Struct("!4s4sxBH")  # src dst zero proto length
IPV6_PSEUDO_HEADER = struct.Struct("!16s16sI3xB")  # src dst length zero next-header
ICMP_HEADER = struct.Struct("!BBHI")           # type code checksum rest-of-header
TCP_HEADER = struct.Struct("!HHIIBBHHH")       # sport dport seq ack offset flags window csum urg
PORTS = struct.Struct("!HH")
ETHER_HEADER = struct.Struct("!6s6sH")
VLAN_TAG = struct.Struct("!HH")                # TCI, inner ethertype
ARP_IPV4 = struct.Struct("!HHBBH6s4s6s4s")     # htype ptype hlen plen op sha spa tha tpa
CHECKSUM = struct.Struct("!H")

IPV4_HEADER_SIZE = IPV4_HEADER.size            # 20, without options
IPV6_HEADER_SIZE = IPV6_HEADER.size            # 40
ICMP_HEADER_SIZE = ICMP_HEADER.size            # 8
TCP_HEADER_SIZE = TCP_HEADER.size              # 20, without options
ETHER_HEADER_SIZE = ETHER_HEADER.size          # 14
ARP_IPV4_SIZE = ARP_IPV4.size                  # 28

IPV4_SRC_OFFSET = 12
IPV4_DST_OFFSET = 16
IPV4_CHECKSUM_OFFSET = 10
IPV6_SRC_OFFSET = 8
IPV6_DST_OFFSET = 24
IPV4_ADDR_SIZE = 4
IPV6_ADDR_SIZE = 16
ICMP_CHECKSUM_OFFSET = 2
TCP_CHECKSUM_OFFSET = 16
ARP_SPA_OFFSET = 14                            # sender protocol address inside ARP
ARP_TPA_OFFSET = 24                            # target protocol address inside ARP

IPV4_FLAG_DF = 0x4000
IPV4_FLAG_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF
IPV6_FRAG_OFFSET_MASK = 0xFFF8
IPV6_FRAG_MF = 0x0001

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

# ICMP error sizes: RFC 1812 4.3.2.3 (IPv4: at most 576 bytes in all),
# RFC 4443 2.4(c) (IPv6: at most the minimum MTU, 1280 bytes).
ICMPV4_ERROR_MAX = 576
ICMPV6_ERROR_MAX = 1280
ERROR_TTL = 64
ICMPV4_ERROR_TOS = 0xC0        # precedence 6, internetwork control (RFC 1812 4.3.2.5)

ICMP_DEST_UNREACH = 3
ICMP_HOST_UNREACH = 1
ICMP_ADMIN_PROHIBITED = 13
ICMPV6_DEST_UNREACH = 1
ICMPV6_ADMIN_PROHIBITED = 1
ICMPV6_ADDR_UNREACH = 3
# ICMPv4 types that are queries/informational; every other type counts as an
# error, and no error is ever sent about an error (RFC 1122 3.2.2).
ICMPV4_INFO_TYPES = frozenset((0, 8, 9, 10, 13, 14, 15, 16, 17, 18))
ICMPV6_INFO_TYPE_MIN = 128     # RFC 4443 2.1: types 0..127 are errors


# What the parsers below return: plain slotted records, compared field by
# field (unhashable, as mutable records are).
_record = dataclasses.dataclass(slots=True)


@_record
class IPInfo:
    """What :func:`parse_ip` learnt about an IP packet.

    ``header_len`` is where the transport header starts (IPv6: after every
    extension header walked); ``total_len`` is the packet length its header
    claims (bytes beyond it, e.g. Ethernet padding, are not part of it).
    ``frag_offset`` is in bytes.  ``sport``/``dport`` are set for TCP, UDP,
    UDP-Lite, DCCP and SCTP and ``icmp_type``/``icmp_code`` for ICMP/ICMPv6,
    only when the packet is unfragmented or the first fragment.
    """

    version: int
    src: bytes
    dst: bytes
    proto: int
    header_len: int
    total_len: int
    is_fragment: bool
    frag_offset: int
    sport: Optional[int]
    dport: Optional[int]
    icmp_type: Optional[int]
    icmp_code: Optional[int]


@_record
class EtherInfo:
    """What :func:`parse_ether` learnt about an Ethernet frame.

    ``ethertype`` is the one after any VLAN tags; ``payload_offset`` is where
    that payload starts; ``vlan`` is the outermost VLAN id (None if untagged).
    """

    dst: bytes
    src: bytes
    ethertype: int
    payload_offset: int
    vlan: Optional[int]

    def __repr__(self) -> str:
        return "EtherInfo(dst=%s, src=%s, ethertype=0x%04x, payload_offset=%d, vlan=%r)" % (
            self.dst.hex(":"), self.src.hex(":"), self.ethertype, self.payload_offset, self.vlan)


@_record
class ArpInfo:
    """An Ethernet/IPv4 ARP packet (RFC 826)."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    def __repr__(self) -> str:
        return "ArpInfo(op=%d, sender=%s/%s, target=%s/%s)" % (
            self.op, self.sender_mac.hex(":"), ipaddress.IPv4Address(self.sender_ip),
            self.target_mac.hex(":"), ipaddress.IPv4Address(self.target_ip))


# --- hot path: addresses only ---------------------------------------------------------
def _address_at(v4_offset: int, v6_offset: int, name: str, doc: str):
    """One body for :func:`ip_dst` and :func:`ip_src`: the reader of the address
    at ``v4_offset``/``v6_offset`` of the header (a closure, so no extra call
    per packet)."""
    def address(buf, offset: int = 0):
        n = len(buf) - offset
        if n >= IPV4_HEADER_SIZE:
            v = buf[offset] >> 4
            if v == 4:
                return buf[offset + v4_offset:offset + v4_offset + IPV4_ADDR_SIZE]
            if v == 6 and n >= IPV6_HEADER_SIZE:
                return buf[offset + v6_offset:offset + v6_offset + IPV6_ADDR_SIZE]
        return None

    address.__name__ = address.__qualname__ = name
    address.__doc__ = doc
    return address


ip_dst = _address_at(IPV4_DST_OFFSET, IPV6_DST_OFFSET, "ip_dst", """\
The destination address (4 or 16 bytes, sliced from ``buf``) or None.

Checks only the version nibble and that the header is long enough to hold
the address; :func:`parse_ip` does the full validation.
""")
ip_src = _address_at(IPV4_SRC_OFFSET, IPV6_SRC_OFFSET, "ip_src",
                     "The source address (4 or 16 bytes, sliced from ``buf``) or None; see :func:`ip_dst`.")


# --- full parse -------------------------------------------------------------------------
def parse_ip(buf, offset: int = 0) -> Optional[IPInfo]:
    """Parse an IPv4 or IPv6 packet starting at ``offset``; None if malformed.

    Malformed means: truncated header, bad IHL, a total length larger than the
    buffer or smaller than the header, an IPv6 extension header chain that runs
    past the packet, is longer than MAX_IPV6_EXTENSION_HEADERS, repeats the
    fragment header or has hop-by-hop options anywhere but first; and, for an
    unfragmented packet or a first fragment of a port or ICMP protocol, a
    transport header too short to hold the ports or type/code (a "tiny
    fragment", RFC 1858 / RFC 7112).  An IPv4 TCP fragment at offset 8 bytes is
    also refused (RFC 1858 overlapping-fragment attack).
    """
    n = len(buf) - offset
    if n < IPV4_HEADER_SIZE or offset < 0:
        return None
    version = buf[offset] >> 4
    if version == 4:
        return _parse_ipv4(buf, offset, n)
    if version == 6:
        return _parse_ipv6(buf, offset, n)
    return None


def _parse_ipv4(buf, offset: int, n: int) -> Optional[IPInfo]:
    vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = IPV4_HEADER.unpack_from(buf, offset)
    hl = (vihl & 0x0F) << 2
    if hl < IPV4_HEADER_SIZE or total < hl or total > n:
        return None
    frag_offset = (frag & IPV4_OFFSET_MASK) << 3
    is_fragment = frag_offset != 0 or (frag & IPV4_FLAG_MF) != 0
    sport = dport = itype = icode = None
    if frag_offset == 0:
        if proto in PORT_PROTOCOLS:
            if total - hl < PORTS.size:
                return None
            sport, dport = PORTS.unpack_from(buf, offset + hl)
        elif proto == PROTO_ICMP:
            if total - hl < 2:
                return None
            itype = buf[offset + hl]
            icode = buf[offset + hl + 1]
    elif frag_offset == 8 and proto == PROTO_TCP:
        return None
    return IPInfo(4, src, dst, proto, hl, total, is_fragment, frag_offset, sport, dport, itype, icode)


def _parse_ipv6(buf, offset: int, n: int) -> Optional[IPInfo]:
    if n < IPV6_HEADER_SIZE:
        return None
    _vtcfl, paylen, nh, _hlim, src, dst = IPV6_HEADER.unpack_from(buf, offset)
    total = IPV6_HEADER_SIZE + paylen
    if total > n:
        return None
    end = offset + total
    pos = offset + IPV6_HEADER_SIZE
    frag_offset = 0
    is_fragment = False
    seen_fragment = False
    count = 0
    while nh in IPV6_EXTENSION_HEADERS:
        count += 1
        if count > MAX_IPV6_EXTENSION_HEADERS or pos + 8 > end:
            return None
        if nh == PROTO_FRAGMENT:
            if seen_fragment:
                return None
            seen_fragment = True
            field = (buf[pos + 2] << 8) | buf[pos + 3]
            frag_offset = field & IPV6_FRAG_OFFSET_MASK
            # An "atomic fragment" (offset 0, no more fragments) is a whole
            # packet (RFC 6946).
            is_fragment = frag_offset != 0 or (field & IPV6_FRAG_MF) != 0
            nh = buf[pos]
            pos += 8
            if frag_offset:
                break            # what follows is the middle of a payload
            continue
        if nh == PROTO_HOPOPT and count != 1:
            return None          # RFC 8200 4.3: only right after the IPv6 header
        if nh == PROTO_AH:
            length = (buf[pos + 1] + 2) << 2       # RFC 4302: 4-octet units, minus 2
        else:
            length = (buf[pos + 1] + 1) << 3       # RFC 8200: 8-octet units, minus 1
        nh = buf[pos]
        pos += length
        if pos > end:
            return None
    hl = pos - offset
    sport = dport = itype = icode = None
    if frag_offset == 0:
        if nh in PORT_PROTOCOLS:
            if end - pos < PORTS.size:
                return None
            sport, dport = PORTS.unpack_from(buf, pos)
        elif nh == PROTO_ICMPV6:
            if end - pos < 2:
                return None
            itype = buf[pos]
            icode = buf[pos + 1]
    return IPInfo(6, src, dst, nh, hl, total, is_fragment, frag_offset, sport, dport, itype, icode)


# --- Ethernet and ARP ---------------------------------------------------------------
def parse_ether(frame, offset: int = 0) -> Optional[EtherInfo]:
    """Parse an Ethernet II header with up to MAX_VLAN_TAGS 802.1Q/802.1ad tags.

    None if the frame is shorter than its header or carries more tags.
    An ethertype below 0x0600 is an 802.3 length field and is returned as is.
    """
    n = len(frame) - offset
    if n < ETHER_HEADER_SIZE or offset < 0:
        return None
    dst, src, ethertype = ETHER_HEADER.unpack_from(frame, offset)
    pos = ETHER_HEADER_SIZE
    vlan = None
    tags = 0
    while ethertype == ETHERTYPE_VLAN or ethertype == ETHERTYPE_QINQ:
        tags += 1
        if tags > MAX_VLAN_TAGS or pos + VLAN_TAG.size > n:
            return None
        tci, ethertype = VLAN_TAG.unpack_from(frame, offset + pos)
        if vlan is None:
            vlan = tci & 0x0FFF
        pos += VLAN_TAG.size
    return EtherInfo(dst, src, ethertype, pos, vlan)


def mac_is_group(mac) -> bool:
    """True for a broadcast or multicast MAC address (I/G bit set)."""
    return len(mac) == 6 and (mac[0] & 1) == 1


def _arp_ok(buf, offset: int) -> bool:
    # Ethernet hardware (1), IPv4 protocol, 6-byte MACs, 4-byte addresses.
    return (offset >= 0 and len(buf) - offset >= ARP_IPV4_SIZE
            and buf[offset] == 0 and buf[offset + 1] == 1
            and buf[offset + 2] == 0x08 and buf[offset + 3] == 0x00
            and buf[offset + 4] == 6 and buf[offset + 5] == 4)


def arp_sender_ip(buf, offset: int = 0):
    """The sender protocol address (4 bytes) of an Ethernet/IPv4 ARP packet
    starting at ``offset`` (the Ethernet payload), or None."""
    if not _arp_ok(buf, offset):
        return None
    return buf[offset + ARP_SPA_OFFSET:offset + ARP_SPA_OFFSET + IPV4_ADDR_SIZE]


def arp_target_ip(buf, offset: int = 0):
    """The target protocol address (4 bytes) of an Ethernet/IPv4 ARP packet, or None."""
    if not _arp_ok(buf, offset):
        return None
    return buf[offset + ARP_TPA_OFFSET:offset + ARP_TPA_OFFSET + IPV4_ADDR_SIZE]


def parse_arp(buf, offset: int = 0) -> Optional[ArpInfo]:
    """Parse an Ethernet/IPv4 ARP packet starting at ``offset``; None otherwise."""
    if not _arp_ok(buf, offset):
        return None
    _, _, _, _, op, sha, spa, tha, tpa = ARP_IPV4.unpack_from(buf, offset)
    return ArpInfo(op, sha, spa, tha, tpa)


# --- checksums ------------------------------------------------------------------------
def _ones_sum(data) -> int:
    """The 16-bit one's complement sum of ``data`` (zero-padded to even length).

    Uses 2**16 == 1 (mod 0xFFFF): the big-endian integer value of the data is
    congruent to the sum of its 16-bit words (RFC 1071 section 2(B)), so one
    C-speed ``%`` replaces a Python loop.  The one's complement sum of words
    that are not all zero is never 0 (it is 0xFFFF instead).
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    s = value % 0xFFFF
    if s == 0 and value:
        return 0xFFFF
    return s


def _ones_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def internet_checksum(data, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``.

    ``initial`` is a one's complement partial sum to start from (for example
    the sum of a pseudo-header from :func:`pseudo_header_sum`).  Checking a
    received header that includes its checksum gives 0 when it is correct.
    """
    return ~_ones_add(initial, _ones_sum(data)) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """One's complement sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 9293 3.1,
    RFC 8200 8.1), to pass as ``initial`` to :func:`internet_checksum`."""
    if len(src) == IPV4_ADDR_SIZE:
        return _ones_sum(IPV4_PSEUDO_HEADER.pack(src, dst, proto, length))
    return _ones_sum(IPV6_PSEUDO_HEADER.pack(src, dst, length, proto))


# --- builders ------------------------------------------------------------------------
def _addr_bytes(addr, version: int) -> bytes:
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        packed = addr.packed
    elif isinstance(addr, str):
        packed = ipaddress.ip_address(addr).packed
    else:
        packed = bytes(addr)
    if len(packed) != (IPV4_ADDR_SIZE if version == 4 else IPV6_ADDR_SIZE):
        raise ValueError("from_addr %r is not an IPv%d address" % (addr, version))
    return packed


def _v4_unicast(addr: bytes) -> bool:
    first = addr[0]
    # 0/8 "this network", 127/8 loopback, 224/4 multicast, 240/4 reserved + broadcast
    return first != 0 and first != 127 and first < 224


_ZERO_15 = bytes(15)


def _v6_unicast(addr: bytes) -> bool:
    # not ff00::/8 (multicast), not :: (unspecified), not ::1 (loopback)
    if addr[0] == 0xFF:
        return False
    return addr[15] > 1 or addr[:15] != _ZERO_15


def _build_ipv4(src: bytes, dst: bytes, proto: int, tos: int, payload_len: int) -> bytearray:
    pkt = bytearray(IPV4_HEADER_SIZE + payload_len)
    IPV4_HEADER.pack_into(pkt, 0, 0x45, tos, len(pkt), 0, IPV4_FLAG_DF, ERROR_TTL, proto, 0, src, dst)
    CHECKSUM.pack_into(pkt, IPV4_CHECKSUM_OFFSET, internet_checksum(memoryview(pkt)[:IPV4_HEADER_SIZE]))
    return pkt


def _build_ipv6(src: bytes, dst: bytes, proto: int, payload_len: int) -> bytearray:
    pkt = bytearray(IPV6_HEADER_SIZE + payload_len)
    IPV6_HEADER.pack_into(pkt, 0, 6 << 28, payload_len, proto, ERROR_TTL, src, dst)
    return pkt


def icmp_error(packet, from_addr, v4_type: int, v4_code: int, v6_type: int, v6_code: int,
               offset: int = 0) -> Optional[bytes]:
    """An ICMP (IPv4) or ICMPv6 error about ``packet``, sent from ``from_addr``
    to the packet's source, quoting as much of the packet as fits in 576
    (IPv4, RFC 1812 4.3.2.3) or 1280 (IPv6, RFC 4443 2.4(c)) bytes.

    ``from_addr`` (bytes, ipaddress object or string of the packet's IP
    version; None = the packet's own destination) is the error's source.
    Returns None when no error may be sent: the packet is malformed, is a
    non-first fragment, is itself an ICMP error, was sent to a multicast or
    broadcast address, or comes from a non-unicast source (RFC 1122 3.2.2,
    RFC 1812 4.3.2.7, RFC 4443 2.4(e)).
    """
    info = parse_ip(packet, offset)
    if info is None or info.frag_offset:
        return None
    quote_len = info.total_len
    if info.version == 4:
        if not _v4_unicast(info.src) or info.dst[0] >= 224:
            return None
        if info.proto == PROTO_ICMP and info.icmp_type not in ICMPV4_INFO_TYPES:
            return None
        src = info.dst if from_addr is None else _addr_bytes(from_addr, 4)
        quote_len = min(quote_len, ICMPV4_ERROR_MAX - IPV4_HEADER_SIZE - ICMP_HEADER_SIZE)
        pkt = _build_ipv4(src, info.src, PROTO_ICMP, ICMPV4_ERROR_TOS, ICMP_HEADER_SIZE + quote_len)
        start = IPV4_HEADER_SIZE
        ICMP_HEADER.pack_into(pkt, start, v4_type, v4_code, 0, 0)
        pkt[start + ICMP_HEADER_SIZE:] = packet[offset:offset + quote_len]
        initial = 0
    else:
        if not _v6_unicast(info.src) or info.dst[0] == 0xFF:
            return None
        if info.proto == PROTO_ICMPV6 and info.icmp_type < ICMPV6_INFO_TYPE_MIN:
            return None
        src = info.dst if from_addr is None else _addr_bytes(from_addr, 6)
        quote_len = min(quote_len, ICMPV6_ERROR_MAX - IPV6_HEADER_SIZE - ICMP_HEADER_SIZE)
        length = ICMP_HEADER_SIZE + quote_len
        pkt = _build_ipv6(src, info.src, PROTO_ICMPV6, length)
        start = IPV6_HEADER_SIZE
        ICMP_HEADER.pack_into(pkt, start, v6_type, v6_code, 0, 0)
        pkt[start + ICMP_HEADER_SIZE:] = packet[offset:offset + quote_len]
        initial = pseudo_header_sum(src, info.src, PROTO_ICMPV6, length)
    CHECKSUM.pack_into(pkt, start + ICMP_CHECKSUM_OFFSET,
                       internet_checksum(memoryview(pkt)[start:], initial))
    return bytes(pkt)


def icmp_unreachable(packet, from_addr=None, offset: int = 0) -> Optional[bytes]:
    """ICMP destination unreachable / host unreachable (type 3 code 1), or ICMPv6
    destination unreachable / address unreachable (type 1 code 3): the answer
    to a packet that matches no peer.  See :func:`icmp_error`."""
    return icmp_error(packet, from_addr, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH,
                      ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH, offset)


def icmp_admin_prohibited(packet, from_addr=None, offset: int = 0) -> Optional[bytes]:
    """ICMP communication administratively prohibited (type 3 code 13), or ICMPv6
    administratively prohibited (type 1 code 1): the firewall's reject answer
    for non-TCP packets.  See :func:`icmp_error`."""
    return icmp_error(packet, from_addr, ICMP_DEST_UNREACH, ICMP_ADMIN_PROHIBITED,
                      ICMPV6_DEST_UNREACH, ICMPV6_ADMIN_PROHIBITED, offset)


def tcp_rst_for(packet, offset: int = 0) -> Optional[bytes]:
    """A TCP reset answering ``packet`` as its destination would (RFC 9293 3.10.7.1).

    If the segment has ACK, the reset is ``<SEQ=SEG.ACK><CTL=RST>``; otherwise
    ``<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>``, where SEG.LEN counts SYN and
    FIN.  None for anything but a whole (unfragmented) well-formed TCP segment
    between unicast addresses, and for a segment that is itself a reset.
    """
    info = parse_ip(packet, offset)
    if info is None or info.proto != PROTO_TCP or info.is_fragment:
        return None
    if info.version == 4:
        if not (_v4_unicast(info.src) and _v4_unicast(info.dst)):
            return None
    elif not (_v6_unicast(info.src) and _v6_unicast(info.dst)):
        return None
    tcp = offset + info.header_len
    seg_total = info.total_len - info.header_len
    if seg_total < TCP_HEADER_SIZE:
        return None
    sport, dport, seq, ack, data_off, flags, _win, _csum, _urg = TCP_HEADER.unpack_from(packet, tcp)
    thl = (data_off >> 4) << 2
    if thl < TCP_HEADER_SIZE or thl > seg_total or flags & TCP_RST:
        return None
    if flags & TCP_ACK:
        r_seq, r_ack, r_flags = ack, 0, TCP_RST
    else:
        seg_len = seg_total - thl + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
        r_seq, r_ack, r_flags = 0, (seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    src, dst = info.dst, info.src
    if info.version == 4:
        pkt = _build_ipv4(src, dst, PROTO_TCP, 0, TCP_HEADER_SIZE)
        start = IPV4_HEADER_SIZE
    else:
        pkt = _build_ipv6(src, dst, PROTO_TCP, TCP_HEADER_SIZE)
        start = IPV6_HEADER_SIZE
    TCP_HEADER.pack_into(pkt, start, dport, sport, r_seq, r_ack,
                         (TCP_HEADER_SIZE >> 2) << 4, r_flags, 0, 0, 0)
    initial = pseudo_header_sum(src, dst, PROTO_TCP, TCP_HEADER_SIZE)
    CHECKSUM.pack_into(pkt, start + TCP_CHECKSUM_OFFSET,
                       internet_checksum(memoryview(pkt)[start:], initial))
    return bytes(pkt)
