"""Hand-built inner packets for sans-IO tests: ICMP and ICMPv6 echo with
correct checksums, and their parser."""

from __future__ import annotations

import ipaddress
import struct
from typing import Optional

from phantom.dataplane import packet as pkt

_ICMP_ECHO = struct.Struct("!BBHHH")


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes = b"phantom-wg",
              reply: bool = False) -> bytes:
    """An IPv4 ICMP or IPv6 ICMPv6 echo request (or reply) with correct checksums."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        body = bytearray(_ICMP_ECHO.pack(0 if reply else 8, 0, 0, ident, seq) + payload)
        struct.pack_into("!H", body, 2, pkt.internet_checksum(bytes(body)))
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, 1, 0,
                                    s.packed, d.packed))
        struct.pack_into("!H", hdr, 10, pkt.internet_checksum(bytes(hdr)))
        return bytes(hdr + body)
    body = bytearray(_ICMP_ECHO.pack(129 if reply else 128, 0, 0, ident, seq) + payload)
    csum = pkt.internet_checksum(bytes(body), pkt.pseudo_header_sum(s.packed, d.packed, 58, len(body)))
    struct.pack_into("!H", body, 2, csum)
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 64, s.packed, d.packed)
    return hdr + bytes(body)


def parse_echo(packet: bytes) -> Optional[tuple[str, str, int, int, int]]:
    """(src, dst, icmp type, ident, seq) of an echo packet, else None."""
    info = pkt.parse_ip(packet)
    if info is None:
        return None
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        if packet[9] != 1:
            return None
        t, _, _, ident, seq = _ICMP_ECHO.unpack_from(packet, ihl)
        src, dst = packet[12:16], packet[16:20]
    else:
        if packet[6] != 58:
            return None
        t, _, _, ident, seq = _ICMP_ECHO.unpack_from(packet, 40)
        src, dst = packet[8:24], packet[24:40]
    return (str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), t, ident, seq)
