"""The firewall's REJECT: :func:`reject_response` (a TCP RST or ICMP error for
a rejected packet) and the :class:`TokenBucket` that rate-limits it."""

from __future__ import annotations

from typing import Optional

from phantom.dataplane import packet as _pkt
from phantom.dataplane.firewall.classifier import parse_ip
from phantom.dataplane.firewall.model import ETH_IPV4, ETH_IPV6


# --- reject responses ----------------------------------------------------------------------


def reject_response(packet, is_ethernet: bool = False) -> Optional[bytes]:
    """The packet answering a REJECTed one: a TCP RST for TCP, ICMP
    administratively prohibited otherwise (built by :mod:`.packet`); None
    when the RFCs forbid an answer (RST for RST, ICMP errors about ICMP
    errors, non-first fragments, multicast/broadcast addresses).

    It goes back the way the rejected packet came: for an outbound reject
    write it into the TUN/TAP device; for an inbound reject it belongs to the
    peer (send it through the tunnel; it does not pass the firewall again).
    In TAP mode the answer is an Ethernet frame with the MAC addresses
    swapped.  Not rate limited: use :meth:`Firewall.reject_response`."""
    off = 0
    if is_ethernet:
        if len(packet) < 15:
            return None
        et = (packet[12] << 8) | packet[13]
        if et != ETH_IPV4 and et != ETH_IPV6:
            return None
        off = 14
    if len(packet) - off < 20:
        return None
    ver = packet[off] >> 4
    if ver == 4:
        proto = packet[off + 9]
    else:
        ip = parse_ip(packet, off)        # the upper-layer protocol, past extension headers
        if ip is None:
            return None
        proto = ip[3]
    if proto == 6:
        out = _pkt.tcp_rst_for(packet, off)
    else:
        out = _pkt.icmp_admin_prohibited(packet, None, off)
    if out is None or not is_ethernet:
        return out
    return bytes(packet[6:12]) + bytes(packet[0:6]) + bytes(packet[12:14]) + out


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: int, now: float = 0.0):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        if now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
