"""The firewall's reference classifier: :func:`classify` and its packet
parsing helpers, plus the mutable state the data path owns
(:class:`FragmentCache`, :class:`FirewallState`).  The fast path
(``phantom/fastpath/firewall.pxi``) must decide exactly the same."""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from typing import Optional

from phantom.dataplane.conntrack import NO_ID, PacketInfo
from phantom.dataplane.firewall.model import (
    ETH_IPV4, ETH_IPV6, F_PEER, F_PEERSET, F_PORTS, FRAGMENT_ENTRIES, FRAGMENT_TIMEOUT,
    N_REASONS,
)
from phantom.dataplane.firewall.tables import (
    C_LOCAL, C_REMOTE, V_ESTABLISHED, V_ETHERTYPE_ACCEPT, V_ETHERTYPE_DROP, V_FRAGMENT,
    V_MALFORMED, V_PROTOCOL, Tables, Verdict,
)


# --- mutable state the data path owns ---------------------------------------------------------


class FragmentCache:
    """Remembers accepted first fragments so the rest of the datagram follows.

    Key ``(direction, peer, family, src, dst, proto, ip_id)``.  Bounded: when
    full, expired entries are swept (at most once a second); if still full the
    first fragment is not remembered (counted in ``full``) and its later
    fragments go through the rules like any non-first fragment."""

    __slots__ = ("max_entries", "timeout", "_d", "_last_sweep", "full")

    def __init__(self, max_entries: int = FRAGMENT_ENTRIES, timeout: float = FRAGMENT_TIMEOUT):
        self.max_entries = max_entries
        self.timeout = timeout
        self._d = {}
        self._last_sweep = float("-inf")
        self.full = 0

    def __len__(self):
        return len(self._d)

    def add(self, key, now: float) -> None:
        d = self._d
        if key not in d and len(d) >= self.max_entries:
            if now - self._last_sweep >= 1.0:
                self._last_sweep = now
                for k in [k for k, e in d.items() if e <= now]:
                    del d[k]
            if len(d) >= self.max_entries:
                self.full += 1
                return
        d[key] = now + self.timeout

    def hit(self, key, now: float) -> bool:
        e = self._d.get(key)
        if e is None:
            return False
        if e <= now:
            del self._d[key]
            return False
        return True


class FirewallState:
    """Counters and state that go with one installed Tables.  ``hits`` is new
    for each Tables; the rest is shared across swaps."""

    __slots__ = ("hits", "drops", "accepts", "conntrack", "fragments")

    def __init__(self, nrules: int, drops=None, accepts=None, conntrack=None, fragments=None):
        self.hits = array("Q", bytes(8 * nrules))
        self.drops = drops if drops is not None else array("Q", bytes(8 * N_REASONS))
        self.accepts = accepts if accepts is not None else array("Q", bytes(8 * N_REASONS))
        self.conntrack = conntrack
        self.fragments = fragments if fragments is not None else FragmentCache()


# --- the reference classifier ---------------------------------------------------------------

_V4 = struct.Struct("!BBHHHBBHII")      # ver/ihl tos len id frag ttl proto csum src dst
_V6 = struct.Struct("!IHBB16s16s")      # ver/tc/flow plen next hop src dst
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT_HEADERS = (0, 43, 60)             # hop-by-hop, routing, destination options
_MAX_EXT = 8
_ICMP4_ERRORS = (3, 4, 5, 11, 12)
_ICMP6_ERRORS = (1, 2, 3, 4)


def _version(packet, off: int, end: int) -> int:
    """4 or 6 when the packet at ``off`` is IPv4/IPv6 and its fixed header (20/40
    bytes) stands whole before ``end``; else 0.  Both parsers start with it."""
    if end - off < 1:
        return 0
    ver = packet[off] >> 4
    if ver == 4:
        return 4 if end - off >= 20 else 0
    if ver == 6:
        return 6 if end - off >= 40 else 0
    return 0


def parse_ip(packet, off: int):
    """Minimal IPv4/IPv6 parse.  Returns None if malformed, else
    (family 0/1, src int, dst int, proto, l4 offset, end, frag_offset (8-byte
    units), more_fragments, ip id)."""
    n = len(packet)
    ver = _version(packet, off, n)
    if ver == 4:
        vihl, _, tlen, ident, frag, _, proto, _, src, dst = _V4.unpack_from(packet, off)
        ihl = (vihl & 15) << 2
        if ihl < 20 or tlen < ihl or off + tlen > n:
            return None
        return (0, src, dst, proto, off + ihl, off + tlen, frag & 0x1FFF, frag & 0x2000, ident)
    if ver == 6:
        _, plen, nh, _, s, d = _V6.unpack_from(packet, off)
        end = off + 40 + plen
        if end > n:
            return None
        p = off + 40
        fragoff = more = ident = 0
        for _ in range(_MAX_EXT):
            if nh in _EXT_HEADERS:
                if p + 8 > end:
                    return None
                nh, hlen = packet[p], (packet[p + 1] + 1) << 3
                p += hlen
                if p > end:
                    return None
            elif nh == 44:
                if p + 8 > end:
                    return None
                fo = _U16.unpack_from(packet, p + 2)[0]
                ident = _U32.unpack_from(packet, p + 4)[0]
                nh = packet[p]
                p += 8
                fragoff, more = fo >> 3, fo & 1
                if fragoff:
                    break
            else:
                break
        else:
            return None
        return (1, int.from_bytes(s, "big"), int.from_bytes(d, "big"), nh, p, end,
                fragoff, more, ident)
    return None


def _icmp_info(packet, p: int, end: int, fam: int, proto: int, peer_id: int, src, dst):
    """PacketInfo for an ICMP/ICMPv6 message (echo ids, or the quoted packet of an error)."""
    itype = packet[p]
    if fam == 0:
        req, rep, errors = 8, 0, _ICMP4_ERRORS
    else:
        req, rep, errors = 128, 129, _ICMP6_ERRORS
    if itype == req or itype == rep:
        ident = _U16.unpack_from(packet, p + 4)[0]
        if itype == req:
            return PacketInfo(peer_id, 4 + 2 * fam, proto, src, dst, ident, NO_ID)
        return PacketInfo(peer_id, 4 + 2 * fam, proto, src, dst, NO_ID, ident)
    info = PacketInfo(peer_id, 4 + 2 * fam, proto, src, dst, -2, -2)
    if itype in errors:
        q = _parse_quoted(packet, p + 8, end, peer_id)
        if q is not None and q.family == info.family:
            info.related = q
    return info


def _parse_quoted(packet, off: int, end: int, peer_id: int):
    """The packet quoted in an ICMP error (usually truncated: only its header
    and the first 8 transport bytes are needed)."""
    ver = _version(packet, off, end)
    if ver == 4:
        vihl = packet[off]
        proto = packet[off + 9]
        src, dst = struct.unpack_from("!II", packet, off + 12)
        p = off + ((vihl & 15) << 2)
        fam = 0
        if _U16.unpack_from(packet, off + 6)[0] & 0x1FFF:
            return None
    elif ver == 6:
        proto = packet[off + 6]
        src = int.from_bytes(packet[off + 8:off + 24], "big")
        dst = int.from_bytes(packet[off + 24:off + 40], "big")
        p = off + 40
        fam = 1
        if proto in _EXT_HEADERS or proto == 44:
            return None       # not followed; such errors get no "related" pass
    else:
        return None
    if end - p < 8:
        return None
    if proto == 6 or proto == 17:
        sp, dp = _PORTS.unpack_from(packet, p)
        return PacketInfo(peer_id, 4 + 2 * fam, proto, src, dst, sp, dp)
    if proto == 1 or proto == 58:
        itype = packet[p]
        if itype == (8 if fam == 0 else 128):
            return PacketInfo(peer_id, 4 + 2 * fam, proto, src, dst,
                              _U16.unpack_from(packet, p + 4)[0], NO_ID)
        return None
    return PacketInfo(peer_id, 4 + 2 * fam, proto, src, dst)


def classify(tables: Tables, direction: int, packet, peer_id: int, is_ethernet: bool = False,
             now: float = 0.0, state: Optional[FirewallState] = None) -> Verdict:
    """Decide one packet (see the evaluation order in the module docstring).

    ``packet`` is an IP packet (TUN) or an Ethernet frame (``is_ethernet``).
    Without ``state`` the decision is stateless and nothing is counted."""
    off = 0
    if is_ethernet:
        if len(packet) < 14:
            return _count(state, V_MALFORMED)
        et = (packet[12] << 8) | packet[13]
        if et == ETH_IPV4:
            want = 4
        elif et == ETH_IPV6:
            want = 6
        elif (tables.ethertypes[et >> 3] >> (et & 7)) & 1:
            return _count(state, V_ETHERTYPE_ACCEPT)
        else:
            return _count(state, V_ETHERTYPE_DROP)
        off = 14
        if len(packet) < 15 or packet[14] >> 4 != want:
            return _count(state, V_MALFORMED)
    if len(packet) - off >= 20 and packet[off] >> 4 == 4:      # IPv4, inlined
        vihl, _, tlen, ident, frag, _, proto, _, src, dst = _V4.unpack_from(packet, off)
        p = (vihl & 15) << 2
        end = off + tlen
        if p < 20 or tlen < p or end > len(packet):
            return _count(state, V_MALFORMED)
        p += off
        fam = 0
        fragoff = frag & 0x1FFF
        more = frag & 0x2000
    else:
        ip = parse_ip(packet, off)
        if ip is None:
            return _count(state, V_MALFORMED)
        fam, src, dst, proto, p, end, fragoff, more, ident = ip
    if not tables.protocols[proto]:
        return _count(state, V_PROTOCOL)
    sport = dport = -1
    flags = 0
    if fragoff == 0:
        avail = end - p
        if proto == 6:
            if avail < 20:
                return _count(state, V_MALFORMED)
            sport, dport = _PORTS.unpack_from(packet, p)
            flags = packet[p + 13]
        elif proto == 17:
            if avail < 8:
                return _count(state, V_MALFORMED)
            sport, dport = _PORTS.unpack_from(packet, p)
        elif proto == 1 or proto == 58:
            if avail < 8:
                return _count(state, V_MALFORMED)
    elif fragoff == 1 and proto == 6:
        return _count(state, V_MALFORMED)      # RFC 1858 overlapping-fragment attack

    if state is not None and fragoff:
        if state.fragments.hit((direction, peer_id, fam, src, dst, proto, ident), now):
            return _count(state, V_FRAGMENT)

    info = None
    ct = state.conntrack if state is not None and tables.stateful else None
    if ct is not None and fragoff == 0:
        if proto == 1 or proto == 58:
            info = _icmp_info(packet, p, end, fam, proto, peer_id, src, dst)
        else:
            info = PacketInfo(peer_id, 4 + 2 * fam, proto, src, dst, sport, dport, flags)
        if direction == 0 and ct.is_reply(info, now):
            return _first_frag(state, V_ESTABLISHED, direction, peer_id, fam, src, dst,
                               proto, ident, fragoff, more, now)

    if direction:
        remote, local = dst, src
    else:
        remote, local = src, dst
    verdict = tables.defaults[direction]
    if dport >= 0 and (idx := tables.by_dport[direction][fam][proto == 17]) is not None:
        rules = idx[1][bisect_right(idx[0], dport)]
    else:
        rules = tables.cands[direction][fam][proto]
    for r in rules:
        f = r[0]
        if f & F_PORTS:
            if fragoff:
                if r[11]:
                    continue
            elif not (r[1] <= sport <= r[2] and r[3] <= dport <= r[4]):
                continue
        if f & F_PEER and r[5] != peer_id:
            continue
        if f & F_PEERSET and peer_id not in r[5]:
            continue
        if f & C_REMOTE and remote & r[7] != r[6]:
            continue
        if f & C_LOCAL and local & r[9] != r[8]:
            continue
        verdict = r[10]
        break
    if state is None:
        return verdict
    if verdict.rule >= 0:
        state.hits[verdict.rule] += 1
    if verdict.action:
        state.drops[verdict.reason] += 1
        return verdict
    state.accepts[verdict.reason] += 1
    if more and fragoff == 0:
        state.fragments.add((direction, peer_id, fam, src, dst, proto, ident), now)
    if info is not None and direction:
        ct.track_outbound(info, now)
    return verdict


def _count(state, verdict: Verdict) -> Verdict:
    if state is not None:
        if verdict.action:
            state.drops[verdict.reason] += 1
        else:
            state.accepts[verdict.reason] += 1
    return verdict


def _first_frag(state, verdict, direction, peer_id, fam, src, dst, proto, ident, fragoff,
                more, now):
    state.accepts[verdict.reason] += 1
    if more and fragoff == 0:
        state.fragments.add((direction, peer_id, fam, src, dst, proto, ident), now)
    return verdict
