"""The firewall's compiled form: :class:`Verdict` and the preallocated
``V_*`` verdicts, :func:`compile_rules` and the immutable :class:`Tables`
(the flat blob both data paths read, decoded for the reference classifier),
peer sets and the destination-port index."""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional

from phantom.dataplane.firewall.model import (
    ETH_IPV4, ETH_IPV6, ETHERTYPES_OFF, F_LOCAL4, F_LOCAL6, F_PEER, F_PEERSET, F_PORTS,
    F_PROTO, F_REMOTE4, F_REMOTE6, HDR_OFF, PORT_PROTOS, PROTOCOLS_OFF, RULE, RULES_OFF,
    TABLE_HEADER, TABLE_MAGIC, TABLE_VERSION, TF_STATEFUL, U32LE, Action, Reason, RuleSet,
)


# --- verdicts -------------------------------------------------------------------------------


class Verdict(NamedTuple):
    action: Action
    rule: int          # index of the deciding rule, -1 if none
    reason: Reason

    @property
    def accept(self) -> bool:
        return self.action == Action.ACCEPT

    @property
    def reject(self) -> bool:
        return self.action == Action.REJECT


V_MALFORMED = Verdict(Action.DROP, -1, Reason.MALFORMED)
V_PROTOCOL = Verdict(Action.DROP, -1, Reason.PROTOCOL)
V_ETHERTYPE_DROP = Verdict(Action.DROP, -1, Reason.ETHERTYPE)
V_ETHERTYPE_ACCEPT = Verdict(Action.ACCEPT, -1, Reason.ETHERTYPE)
V_ESTABLISHED = Verdict(Action.ACCEPT, -1, Reason.ESTABLISHED)
V_FRAGMENT = Verdict(Action.ACCEPT, -1, Reason.FRAGMENT)


# --- compiler ---------------------------------------------------------------------------------


def _net_bytes(net) -> tuple:
    if net is None:
        return b"\0" * 16, b"\0" * 16
    a = net.network_address.packed
    m = net.netmask.packed
    return a.ljust(16, b"\0"), m.ljust(16, b"\0")


def compile_rules(ruleset: RuleSet) -> "Tables":
    """Compile a RuleSet into the flat blob described in the module docstring."""
    n = len(ruleset.rules)
    blob = bytearray(RULES_OFF + n * RULE.size)
    TABLE_HEADER.pack_into(blob, HDR_OFF, TABLE_MAGIC, TABLE_VERSION, RULE.size, n,
                           TF_STATEFUL if ruleset.stateful else 0,
                           int(ruleset.default_in), int(ruleset.default_out), 0)
    for p in ruleset.protocols:
        blob[PROTOCOLS_OFF + p] = 1
    for t in ruleset.ethertypes | {ETH_IPV4, ETH_IPV6}:
        blob[ETHERTYPES_OFF + (t >> 3)] |= 1 << (t & 7)
    sets = bytearray()                    # the peer-set area, after the rule records
    set_offs: dict = {}
    for i, r in enumerate(ruleset.rules):
        flags = 0
        peer_word = r.peer_id or 0
        if r.proto is not None:
            flags |= F_PROTO
        if r.src_port is not None or r.dst_port is not None:
            flags |= F_PORTS
        if r.peer_set is not None:
            members = r.peer_set if r.peer_id is None else r.peer_set & {r.peer_id}
            key = tuple(sorted(members))
            if key not in set_offs:
                set_offs[key] = len(sets)
                sets += struct.pack("<I%dI" % len(key), len(key), *key)
            flags |= F_PEERSET
            peer_word = set_offs[key]
        elif r.peer_id is not None:
            flags |= F_PEER
        if r.cidr is not None:
            flags |= F_REMOTE4 if r.cidr.version == 4 else F_REMOTE6
        if r.local_cidr is not None:
            flags |= F_LOCAL4 if r.local_cidr.version == 4 else F_LOCAL6
        sp = r.src_port or (0, 65535)
        dp = r.dst_port or (0, 65535)
        ra, rm = _net_bytes(r.cidr)
        la, lm = _net_bytes(r.local_cidr)
        RULE.pack_into(blob, RULES_OFF + i * RULE.size, int(r.direction), int(r.action),
                       r.proto or 0, flags, sp[0], sp[1], dp[0], dp[1],
                       peer_word, i, ra, rm, la, lm)
    return Tables(bytes(blob + sets), ruleset)


class Tables:
    """Immutable compiled rule tables.  ``blob`` is what the fast path reads;
    the other attributes are the reference classifier's decoding of it."""

    __slots__ = ("blob", "ruleset", "nrules", "stateful", "protocols", "ethertypes",
                 "defaults", "by_dport", "rule_verdicts", "cands")

    def __init__(self, blob: bytes, ruleset: Optional[RuleSet] = None):
        magic, version, rsize, n, tflags, d_in, d_out, _ = TABLE_HEADER.unpack_from(blob, HDR_OFF)
        if magic != TABLE_MAGIC or version != TABLE_VERSION or rsize != RULE.size:
            raise ValueError("not a phantom firewall table (magic/version/record size)")
        sets_off = RULES_OFF + n * RULE.size
        if len(blob) < sets_off or (len(blob) - sets_off) % 4:
            raise ValueError("table blob length does not match its rule count")
        self.blob = blob
        self.ruleset = ruleset
        self.nrules = n
        self.stateful = bool(tflags & TF_STATEFUL)
        self.protocols = blob[PROTOCOLS_OFF:PROTOCOLS_OFF + 256]
        self.ethertypes = blob[ETHERTYPES_OFF:ETHERTYPES_OFF + 8192]
        self.defaults = (Verdict(Action(d_in), -1, Reason.DEFAULT),
                         Verdict(Action(d_out), -1, Reason.DEFAULT))
        # cands[direction][0 = v4, 1 = v6][proto] -> tuple of rule tuples:
        # (flags, slo, shi, dlo, dhi, peer, rnet, rmask, lnet, lmask, verdict, is_accept)
        # Protocols no rule names share one "generic" list per (direction, family):
        # memory is O(rules x protocols named), not O(rules x 256).
        records = [RULE.unpack_from(blob, RULES_OFF + i * RULE.size) for i in range(n)]
        peer_sets = {}
        for rec in records:
            if rec[3] & F_PEERSET and rec[8] not in peer_sets:
                peer_sets[rec[8]] = _read_peer_set(blob, sets_off, rec[8])
        named = set(PORT_PROTOS) | {r[2] for r in records if r[3] & F_PROTO}
        generic = [[[], []], [[], []]]
        specific = {p: [[[], []], [[], []]] for p in named}
        verdicts = []
        for (d, act, proto, flags, slo, shi, dlo, dhi, peer, idx, ra, rm, la, lm) in records:
            v = Verdict(Action(act), idx, Reason.RULE)
            verdicts.append(v)
            for fam, width, rbit, lbit, obits in ((0, 4, F_REMOTE4, F_LOCAL4, F_REMOTE6 | F_LOCAL6),
                                                  (1, 16, F_REMOTE6, F_LOCAL6, F_REMOTE4 | F_LOCAL4)):
                if flags & obits:
                    continue        # the rule names addresses of the other family
                t = (flags & (F_PORTS | F_PEER | F_PEERSET) | (C_REMOTE if flags & rbit else 0)
                     | (C_LOCAL if flags & lbit else 0),
                     slo, shi, dlo, dhi, peer_sets[peer] if flags & F_PEERSET else peer,
                     int.from_bytes(ra[:width], "big"), int.from_bytes(rm[:width], "big"),
                     int.from_bytes(la[:width], "big"), int.from_bytes(lm[:width], "big"),
                     v, act == Action.ACCEPT)
                ports = flags & F_PORTS
                if flags & F_PROTO:
                    if not ports or proto in PORT_PROTOS:
                        specific[proto][d][fam].append(t)
                    continue
                if not ports:
                    generic[d][fam].append(t)
                for p, lists in specific.items():
                    if not ports or p in PORT_PROTOS:
                        lists[d][fam].append(t)
        gen = [[tuple(generic[d][fam]) for fam in range(2)] for d in range(2)]
        cands = [[[tuple(specific[p][d][fam]) if p in specific else gen[d][fam]
                   for p in range(256)] for fam in range(2)] for d in range(2)]
        self.rule_verdicts = tuple(verdicts)
        # by_dport[direction][fam][0 = TCP, 1 = UDP] -> (points, lists) or None: the
        # candidates split at every rule's dst-port bounds, so a packet with ports
        # only walks lists[bisect_right(points, dport)] (same order, fewer rules)
        self.by_dport = tuple(tuple(tuple(_port_index(cands[d][fam][p]) for p in PORT_PROTOS)
                                    for fam in range(2)) for d in range(2))
        self.cands = tuple(tuple(tuple(fam) for fam in dr) for dr in cands)

    def __setattr__(self, name, value):
        if hasattr(self, "cands"):
            raise AttributeError("Tables are immutable; compile a new one")
        object.__setattr__(self, name, value)


def _read_peer_set(blob: bytes, sets_off: int, off: int) -> frozenset:
    """The peer set at ``off`` in the peer-set area: u32 count, then that
    many u32 peer ids in ascending order.  ValueError when it does not fit."""
    at = sets_off + off
    if off % 4 or at + 4 > len(blob):
        raise ValueError("peer set at %d is outside the table" % off)
    count = U32LE.unpack_from(blob, at)[0]
    if at + 4 + 4 * count > len(blob):
        raise ValueError("peer set at %d runs past the table" % off)
    ids = struct.unpack_from("<%dI" % count, blob, at + 4)
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise ValueError("peer set at %d is not in ascending order" % off)
    return frozenset(ids)


C_REMOTE = 0x100     # decoded-tuple flag bits (reference classifier only)
C_LOCAL = 0x200
_PORT_INDEX_BUDGET = 250_000    # max (intervals x candidates) per index, else walk all
_PORT_INDEX_MIN = 4             # fewer candidates than this: just walk them


def _port_index(cands: list):
    if len(cands) < _PORT_INDEX_MIN:
        return None
    points = sorted({0} | {r[3] for r in cands} | {r[4] + 1 for r in cands if r[4] < 65535})
    if len(points) * len(cands) > _PORT_INDEX_BUDGET:
        return None
    lists = [()] + [tuple(r for r in cands if r[3] <= lo <= r[4]) for lo in points]
    return tuple(points), tuple(lists)
