"""Phantom's firewall: rule model, compiler, reference classifier, reject.

Pipeline
========
1. ``parse_rules(obj, peers)`` turns the ``[firewall]`` config table (or the
   JSON body of ``PUT /firewall``) into a validated :class:`RuleSet`, or raises
   :class:`FirewallError` naming the rule and the field.  Nothing is applied
   unless the whole set is valid.
2. ``compile_rules(ruleset)`` turns it into an immutable :class:`Tables`: one
   flat little-endian byte blob (layout below) that both data paths read.  The
   reference classifier decodes the blob (not the RuleSet) into tuples once.
3. ``classify(tables, direction, packet, peer_id, ...)`` returns a
   preallocated :class:`Verdict` (no allocation per packet in stateless mode)
   and bumps counters that live in a :class:`FirewallState`, outside the tables.
4. A live edit compiles a new Tables and :meth:`Firewall.install` swaps it in
   with one reference store; the data path reads ``firewall.active`` once per
   packet (or batch).  Connection tracking survives the swap.

Evaluation order (per packet, first step that decides wins)
==========================================================
1. malformed (bad version/lengths, truncated transport header on a first or
   only fragment, a TCP fragment at offset 8 bytes)       -> DROP   MALFORMED
2. TAP only: EtherType not IPv4/IPv6: allowed non-IP EtherType (ARP by
   default) -> ACCEPT ETHERTYPE, any other -> DROP ETHERTYPE (rules are
   never applied to non-IP frames)
3. protocol policy: the upper-layer protocol (IPv6: after hop-by-hop, routing,
   destination-options and fragment headers) is not allowed -> DROP PROTOCOL
4. a non-first fragment whose first fragment was accepted (same direction,
   peer, addresses, protocol, IP id, within ``FRAGMENT_TIMEOUT``)
                                                          -> ACCEPT FRAGMENT
5. stateful mode, inbound: a reply to / ICMP error about a tracked
   outbound flow                                          -> ACCEPT ESTABLISHED
6. the rules of the packet's direction, in order; first match wins -> RULE
7. no rule matched -> the direction's default (``default_in``/``default_out``,
   both "accept" unless set)                              -> DEFAULT
After the verdict: an accepted first fragment is remembered (step 4); in
stateful mode an accepted outbound packet creates/refreshes a conntrack entry.

Fragments: a non-first fragment has no ports.  In step 6 a rule that names a
port never *accepts* it and always *drops/rejects* it (when the rest of the
rule matches); rules without ports match it normally.  Step 4 is how the rest
of an accepted datagram follows its first fragment.

Parsing (the fast path must decide exactly the same)
====================================================
* TUN: the version nibble says IPv4 or IPv6, anything else is malformed.
  TAP: at least 14 bytes; EtherType 0x0800/0x86DD must carry version 4/6.
  No VLAN tags are looked into: 0x8100/0x88A8 are EtherTypes like any other.
* IPv4: >= 20 bytes, IHL >= 5, IHL*4 <= total length <= bytes available
  (bytes after the total length, e.g. Ethernet padding, are ignored).  Options
  are skipped; the header checksum is not checked.  Fragment offset = low 13
  bits of the flags word (8-byte units), "more fragments" = 0x2000, id = the
  16-bit identification.
* IPv6: >= 40 bytes, 40 + payload length <= bytes available.  Extension headers
  0 (hop-by-hop), 43 (routing), 60 (destination options) are skipped (each
  needs 8 bytes, length (byte 1 + 1) * 8); 44 (fragment, 8 bytes) gives offset
  (bits 15..3 of bytes 2-3), M (bit 0) and the 32-bit id; a non-zero offset
  stops the walk and the fragment header's next header is the protocol.  More
  than 8 headers is malformed.  Any other value (including 50 ESP, 51 AH,
  59 no next header) is the upper-layer protocol.
* First or only fragment: TCP needs >= 20 bytes after the IP headers, UDP
  >= 8, ICMP/ICMPv6 >= 8, else malformed (tiny-fragment attack, RFC 1858).
  Ports are the first two u16 (big-endian); TCP flags are byte 13.
* Non-first fragment (offset != 0): no ports; a TCP fragment with offset 1
  is malformed (RFC 1858 overlap attack).
* Local/remote: inbound remote = source, local = destination; outbound the
  other way round.

Binary layout of ``Tables.blob`` (all integers little-endian)
=============================================================
offset 0     TABLE_HEADER (16 bytes)
               0  4s   magic  b"PHFW"
               4  u16  version (2: peer sets)
               6  u16  rule record size (RULE.size == 88)
               8  u32  number of rules N
              12  u8   flags: bit 0 = stateful
              13  u8   default action inbound  (Action)
              14  u8   default action outbound (Action)
              15  u8   reserved (0)
offset 16    PROTOCOLS: 256 bytes, [p] = 1 if IP protocol p is allowed
offset 272   ETHERTYPES: 8192-byte bitmap, bit (t & 7) of byte (t >> 3) set if
             EtherType t is allowed (IPv4 and IPv6 always set)
offset 8464  N rule records (RULE, 88 bytes each), in rule order (record i is
             rule i; hit counter i belongs to it)
               0  u8   direction (Direction: 0 in, 1 out)
               1  u8   action    (Action: 0 accept, 1 drop, 2 reject)
               2  u8   proto     (valid when F_PROTO)
               3  u8   reserved
               4  u16  flags     (F_* below)
               6  u16  reserved
               8  u16  src port low   10 u16 src port high   (inclusive)
              12  u16  dst port low   14 u16 dst port high   (full range 0-65535
                                             when the rule names no port)
              16  u32  peer id   (valid when F_PEER)
              20  u32  rule index (== record number)
              24  16s  remote address, network byte order (IPv4: first 4 bytes)
              40  16s  remote mask, same layout (prefix bits set)
              56  16s  local address
              72  16s  local mask
             F_PROTO 0x01 proto must equal the packet's upper-layer protocol
             F_PORTS 0x02 the rule names a port: only TCP/UDP can match; see
                          "Fragments" above for non-first fragments
             F_PEER  0x04 peer id must equal the packet's peer
             F_REMOTE4 0x08 / F_REMOTE6 0x10  remote address (source inbound,
                          destination outbound) & mask == addr; a v4-only rule
                          never matches a v6 packet and vice versa
             F_LOCAL4 0x20 / F_LOCAL6 0x40   same for the local address
             F_PEERSET 0x80 the packet's peer must be in the peer set whose
                          offset (in the peer-set area) the u32 at 16 holds
                          (then F_PEER is clear): a rule naming a group
offset 8464 + 88 N   the peer-set area: each set is a u32 count followed by
             that many u32 peer ids in ascending order; records point at
             sets by byte offset from the area's start (4-aligned; equal
             sets are shared).  An empty set matches no packet.
Offsets are also exported as constants (``HDR_OFF``, ``PROTOCOLS_OFF``,
``ETHERTYPES_OFF``, ``RULES_OFF``) and ``RULE`` is a named struct.Struct.

Verdicts: ``(action, rule, reason)`` with :class:`Action` and :class:`Reason`
codes as numbered below; ``rule`` is the record number or -1.

Counters (owned by the data path, in :class:`FirewallState`):
``hits`` array('Q') of N (one per rule), ``drops`` and ``accepts`` array('Q')
indexed by :class:`Reason` (a REJECT counts as a drop).  The fast path may
bump them through a memoryview (``memoryview(state.hits)``, format 'Q').

Test mode (the prototype's UDP test port): payloads are not packets; the
firewall does not apply there (:class:`Firewall` accepts everything).
"""

from __future__ import annotations

import base64
from bisect import bisect_right
import enum
import ipaddress
import struct
import time
from array import array
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from phantom.dataplane import packet as _pkt
from phantom.dataplane.conntrack import NO_ID, ConnTrack, PacketInfo, Timeouts
from phantom.dataplane.types import Mode

# --- enums shared with the fast path ---------------------------------------------


class Direction(enum.IntEnum):
    IN = 0     # from the tunnel towards this host (after decryption)
    OUT = 1    # from this host into the tunnel (before encryption)


class Action(enum.IntEnum):
    ACCEPT = 0
    DROP = 1
    REJECT = 2


class Reason(enum.IntEnum):
    """Which step of the evaluation order decided (and the drop-counter index)."""

    RULE = 0
    DEFAULT = 1
    ESTABLISHED = 2
    FRAGMENT = 3
    MALFORMED = 4
    PROTOCOL = 5
    ETHERTYPE = 6


N_REASONS = len(Reason)

F_PROTO = 0x01
F_PORTS = 0x02
F_PEER = 0x04
F_REMOTE4 = 0x08
F_REMOTE6 = 0x10
F_LOCAL4 = 0x20
F_LOCAL6 = 0x40
F_PEERSET = 0x80

GROUP_MAX = 32                   # a group name: like a DNS label, at most 32 characters

TABLE_MAGIC = b"PHFW"
TABLE_VERSION = 2
TABLE_HEADER = struct.Struct("<4sHHIBBBB")
RULE = struct.Struct("<BBBxHxxHHHHII16s16s16s16s")
HDR_OFF = 0
PROTOCOLS_OFF = TABLE_HEADER.size                     # 16
ETHERTYPES_OFF = PROTOCOLS_OFF + 256                  # 272
RULES_OFF = ETHERTYPES_OFF + 8192                     # 8464
TF_STATEFUL = 0x01
_U32LE = struct.Struct("<I")
assert TABLE_HEADER.size == 16 and RULE.size == 88

MAX_RULES = 10000
FRAGMENT_TIMEOUT = 30.0          # seconds a first fragment's verdict is remembered
FRAGMENT_ENTRIES = 4096

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD

PROTO_NAMES = {
    "icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "udp": 17, "ipv6": 41, "gre": 47,
    "esp": 50, "ah": 51, "icmpv6": 58, "ospf": 89, "sctp": 132, "udplite": 136,
}
ETHERTYPE_NAMES = {"ipv4": ETH_IPV4, "arp": ETH_ARP, "ipv6": ETH_IPV6}
PROTOTYPE_PROTOCOLS = frozenset({1, 6, 17, 58})
PROTOTYPE_ETHERTYPES = frozenset({ETH_IPV4, ETH_ARP, ETH_IPV6})
POLICIES = ("prototype", "open")
PORT_PROTOS = (6, 17)
ACTION_NAMES = {"accept": Action.ACCEPT, "drop": Action.DROP, "reject": Action.REJECT}
DIRECTION_NAMES = {"in": Direction.IN, "out": Direction.OUT}


# --- rule model -----------------------------------------------------------------------


class FirewallError(ValueError):
    """A rule set was refused.  ``rule_index`` is None for a top-level setting."""

    def __init__(self, rule_index: Optional[int], field: str, problem: str):
        self.rule_index = rule_index
        self.field = field
        self.problem = problem
        where = ("firewall.rule[%d].%s" % (rule_index, field) if rule_index is not None
                 else "firewall.%s" % field)
        super().__init__("%s: %s" % (where, problem))
        self.key = where


@dataclass(frozen=True)
class Rule:
    direction: Direction
    action: Action
    proto: Optional[int] = None                 # None = any
    src_port: Optional[tuple] = None            # (lo, hi) inclusive
    dst_port: Optional[tuple] = None
    peer_id: Optional[int] = None
    peer: Optional[str] = None                  # as written (name or key)
    cidr: Optional[ipaddress._BaseNetwork] = None        # remote side
    local_cidr: Optional[ipaddress._BaseNetwork] = None
    comment: str = ""
    src_group: Optional[str] = None             # as written
    dst_group: Optional[str] = None
    # the peers the rule's groups allow (None: the rule names no group, or
    # only this node's own groups, which it is in); compiled like ``peer``
    peer_set: Optional[frozenset] = None

    def to_obj(self) -> dict:
        """The rule in config/JSON form (what GET /firewall shows)."""
        inv = {v: k for k, v in PROTO_NAMES.items()}
        d = {"direction": self.direction.name.lower(),
             "proto": "any" if self.proto is None else inv.get(self.proto, self.proto),
             "action": self.action.name.lower()}
        for name, pr in (("src_port", self.src_port), ("dst_port", self.dst_port)):
            if pr is not None:
                d[name] = pr[0] if pr[0] == pr[1] else "%d-%d" % pr
        if self.peer is not None:
            d["peer"] = self.peer
        if self.cidr is not None:
            d["cidr"] = str(self.cidr)
        if self.local_cidr is not None:
            d["local_cidr"] = str(self.local_cidr)
        if self.src_group is not None:
            d["src_group"] = self.src_group
        if self.dst_group is not None:
            d["dst_group"] = self.dst_group
        if self.comment:
            d["comment"] = self.comment
        return d


@dataclass(frozen=True)
class RuleSet:
    rules: tuple = ()
    default_policy: str = "prototype"
    protocols: frozenset = PROTOTYPE_PROTOCOLS
    ethertypes: frozenset = PROTOTYPE_ETHERTYPES
    stateful: bool = False
    default_in: Action = Action.ACCEPT
    default_out: Action = Action.ACCEPT
    conntrack_max: int = 65536
    timeouts: Timeouts = field(default_factory=Timeouts)
    reject_rate: float = 10.0       # responses per second
    reject_burst: int = 20
    extra_protocols: tuple = ()     # as written, for to_obj
    extra_ethertypes: tuple = ()
    warnings: tuple = ()            # e.g. a rule naming a group no peer is in (yet)

    def to_obj(self) -> dict:
        d = {"default_policy": self.default_policy, "stateful": self.stateful,
             "default_in": self.default_in.name.lower(),
             "default_out": self.default_out.name.lower(),
             "conntrack_max": self.conntrack_max, "timeouts": self.timeouts.as_dict(),
             "reject_rate": self.reject_rate, "reject_burst": self.reject_burst,
             "rules": [r.to_obj() for r in self.rules]}
        if self.extra_protocols:
            d["allow_protocols"] = list(self.extra_protocols)
        if self.extra_ethertypes:
            d["allow_ethertypes"] = list(self.extra_ethertypes)
        return d


# keys GET /firewall adds (counters); ignored on input so its output can be PUT back
_READONLY_TOP_KEYS = {"mode", "drops", "accepts", "conntrack", "fragments", "rejects",
                      "warnings", "own_groups"}
_READONLY_RULE_KEYS = {"hits"}
_TOP_KEYS = {"default_policy", "stateful", "default_in", "default_out", "allow_protocols",
             "allow_ethertypes", "conntrack_max", "timeouts", "reject_rate", "reject_burst",
             "rule", "rules"}
_RULE_KEYS = {"direction", "proto", "src_port", "dst_port", "peer", "cidr", "local_cidr",
              "action", "comment", "src_group", "dst_group"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_proto(v, idx, fname, allow_any=True) -> Optional[int]:
    if isinstance(v, str):
        s = v.strip().lower()
        if s == "any" and allow_any:
            return None
        if s in PROTO_NAMES:
            return PROTO_NAMES[s]
        if s.isascii() and s.isdigit():     # not "²": isdigit() takes it, int() does not
            v = int(s)
        else:
            raise FirewallError(idx, fname, "unknown protocol %r (use a name like tcp, udp, "
                                "icmp, icmpv6%s or a number 0-255)" % (v, ", any" if allow_any else ""))
    if not _is_int(v) or not 0 <= v <= 255:
        raise FirewallError(idx, fname, "protocol must be a name or a number 0-255, not %r" % (v,))
    return v


def _parse_port(v, idx, fname) -> tuple:
    if _is_int(v):
        lo = hi = v
    elif isinstance(v, str):
        s = v.strip()
        try:
            if "-" in s:
                a, b = s.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(s)
        except ValueError:
            raise FirewallError(idx, fname, "port must be a number or a range \"lo-hi\", not %r"
                                % (v,)) from None
    else:
        raise FirewallError(idx, fname, "port must be a number or a range \"lo-hi\", not %r" % (v,))
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise FirewallError(idx, fname, "port out of range 0-65535: %r" % (v,))
    if lo > hi:
        raise FirewallError(idx, fname, "port range %r is empty (low > high)" % (v,))
    return (lo, hi)


def _parse_cidr(v, idx, fname):
    if not isinstance(v, str):
        raise FirewallError(idx, fname, "must be a CIDR string like \"10.0.0.0/8\", not %r" % (v,))
    if v.strip().lower() == "any":
        return None
    try:
        return ipaddress.ip_network(v.strip(), strict=True)
    except ValueError as e:
        raise FirewallError(idx, fname, "bad CIDR %r: %s" % (v, e)) from None


def _parse_choice(v, table, idx, fname):
    if isinstance(v, str) and v.strip().lower() in table:
        return table[v.strip().lower()]
    raise FirewallError(idx, fname, "must be one of %s, not %r" % (", ".join(table), v))


def _peer_lookup(v, peers, idx):
    if not isinstance(v, str) or not v:
        raise FirewallError(idx, "peer", "must be a peer name or base64 public key, not %r" % (v,))
    if v in peers:
        return peers[v]
    try:
        raw = base64.b64decode(v, validate=True)
    except ValueError:
        raw = None
    if raw is not None and len(raw) == 32:
        raise FirewallError(idx, "peer", "no configured peer has public key %s" % v)
    raise FirewallError(idx, "peer", "unknown peer %r" % v)


_GROUP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def group_problem(v) -> Optional[str]:
    """What is wrong with ``v`` as a group name (None: nothing).  A group
    name follows the network's rule for names (phantom/network/names.py:
    a DNS label of lowercase letters a-z, digits and '-', not starting or
    ending with '-', not all digits, no "xx--" IDNA look-alike), at most
    GROUP_MAX characters."""
    if not isinstance(v, str):
        return "must be a group name (a string), not %r" % (v,)
    if not v or len(v) > GROUP_MAX:
        return "group name %r must be 1-%d characters" % (v, GROUP_MAX)
    bad = [c for c in v if c not in _GROUP_CHARS]
    if bad:
        hint = " (write %r)" % v.lower() if v.lower() != v and not set(v.lower()) - _GROUP_CHARS else ""
        return ("bad group name %r: only lowercase letters a-z, digits and '-'%s"
                % (v, hint))
    if v[0] == "-" or v[-1] == "-":
        return "bad group name %r: must not start or end with '-'" % v
    if v.isdigit():
        return "bad group name %r: must not be all digits" % v
    if len(v) >= 4 and v[2:4] == "--":
        return "bad group name %r: looks like an IDNA label (\"xn--...\")" % v
    return None


def _parse_group(v, idx, fname) -> str:
    problem = group_problem(v)
    if problem is not None:
        raise FirewallError(idx, fname, problem)
    return v


def _peer_set(r: dict, i: int, direction: Direction, groups, own_groups, warnings: list):
    """The rule's groups as the set of peer ids it may match (None: no
    constraint on the peer).  The remote side's group (``src_group`` of an
    inbound rule, ``dst_group`` of an outbound one) is the set of peers in
    it; this node's side (the other one) is decided now from ``own_groups``:
    a rule naming a group this node is not in matches nothing here."""
    src = _parse_group(r["src_group"], i, "src_group") if "src_group" in r else None
    dst = _parse_group(r["dst_group"], i, "dst_group") if "dst_group" in r else None
    if direction is Direction.IN:
        remote, own, rkey, okey = src, dst, "src_group", "dst_group"
    else:
        remote, own, rkey, okey = dst, src, "dst_group", "src_group"
    peer_set = None
    if remote is not None:
        members = groups.get(remote, ()) if groups else ()
        peer_set = frozenset(m for m in members if _is_int(m) and 0 <= m <= 0xFFFFFFFF)
        if not peer_set:
            warnings.append("firewall.rule[%d].%s: no peer is in group %r (yet): the rule "
                            "matches no packet until one is" % (i, rkey, remote))
    if own is not None and own not in own_groups:
        peer_set = frozenset()
        warnings.append("firewall.rule[%d].%s: this node is not in group %r (its own groups: "
                        "%s): the rule matches no packet here"
                        % (i, okey, own, ", ".join(sorted(own_groups)) or "none"))
    return src, dst, peer_set


def _parse_rule(i: int, r, peers: dict, protocols: frozenset, groups=None,
                own_groups: frozenset = frozenset(), warnings: Optional[list] = None) -> Rule:
    if not isinstance(r, dict):
        raise FirewallError(i, "rule", "must be a table/object, not %s" % type(r).__name__)
    unknown = set(r) - _RULE_KEYS - _READONLY_RULE_KEYS
    if unknown:
        f = sorted(unknown)[0]
        raise FirewallError(i, f, "unknown field (known: %s)" % ", ".join(sorted(_RULE_KEYS)))
    if "direction" not in r:
        raise FirewallError(i, "direction", "missing (\"in\" or \"out\")")
    if "action" not in r:
        raise FirewallError(i, "action", "missing (\"accept\", \"drop\" or \"reject\")")
    direction = _parse_choice(r["direction"], DIRECTION_NAMES, i, "direction")
    action = _parse_choice(r["action"], ACTION_NAMES, i, "action")
    proto = _parse_proto(r.get("proto", "any"), i, "proto")
    if proto is not None and proto not in protocols:
        raise FirewallError(i, "proto", "protocol %d is dropped by the protocol policy before "
                            "rules run; add it to firewall.allow_protocols" % proto)
    sp = _parse_port(r["src_port"], i, "src_port") if "src_port" in r else None
    dp = _parse_port(r["dst_port"], i, "dst_port") if "dst_port" in r else None
    if (sp or dp) and proto is not None and proto not in PORT_PROTOS:
        raise FirewallError(i, "dst_port" if dp else "src_port",
                            "ports need proto \"tcp\", \"udp\" or \"any\" (TCP and UDP)")
    peer_id = peer = None
    if "peer" in r:
        peer = r["peer"]
        peer_id = _peer_lookup(peer, peers, i)
        if not _is_int(peer_id) or not 0 <= peer_id <= 0xFFFFFFFF:
            raise FirewallError(i, "peer", "peer id %r is not a u32" % (peer_id,))
    cidr = _parse_cidr(r["cidr"], i, "cidr") if "cidr" in r else None
    local = _parse_cidr(r["local_cidr"], i, "local_cidr") if "local_cidr" in r else None
    if cidr is not None and local is not None and cidr.version != local.version:
        raise FirewallError(i, "local_cidr", "IPv%d, but cidr is IPv%d: the rule could never match"
                            % (local.version, cidr.version))
    comment = r.get("comment", "")
    if not isinstance(comment, str):
        raise FirewallError(i, "comment", "must be a string")
    src_g, dst_g, peer_set = _peer_set(r, i, direction, groups, own_groups,
                                       warnings if warnings is not None else [])
    return Rule(direction, action, proto, sp, dp, peer_id, peer, cidr, local, comment,
                src_g, dst_g, peer_set)


def parse_rules(obj, peers: dict, groups=None, own_groups=()) -> RuleSet:
    """Validate a ``[firewall]`` table / ``PUT /firewall`` body.

    ``peers`` maps each peer name *and* each base64 public key to its peer id.
    ``groups`` maps each group name to the ids of the peers in it (the peer
    table's group map; later the network's member certificates); ``own_groups``
    are this node's own groups.  A rule naming a group nobody is in is valid
    (the group may get members later) and reported in ``RuleSet.warnings``.
    Raises :class:`FirewallError` on the first problem; nothing is partial.
    """
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise FirewallError(None, "firewall", "must be a table/object")
    unknown = set(obj) - _TOP_KEYS - _READONLY_TOP_KEYS
    if unknown:
        raise FirewallError(None, sorted(unknown)[0], "unknown setting (known: %s)"
                            % ", ".join(sorted(_TOP_KEYS)))
    policy = obj.get("default_policy", "prototype")
    if policy not in POLICIES:
        raise FirewallError(None, "default_policy", "must be one of %s, not %r"
                            % (", ".join(POLICIES), policy))
    if policy == "open":
        protocols, ethertypes = frozenset(range(256)), None
    else:
        protocols, ethertypes = PROTOTYPE_PROTOCOLS, PROTOTYPE_ETHERTYPES
    extra_p = obj.get("allow_protocols", [])
    if not isinstance(extra_p, list):
        raise FirewallError(None, "allow_protocols", "must be a list")
    protocols = protocols | {_parse_proto(p, None, "allow_protocols", allow_any=False)
                             for p in extra_p}
    extra_e = obj.get("allow_ethertypes", [])
    if not isinstance(extra_e, list):
        raise FirewallError(None, "allow_ethertypes", "must be a list")
    ets = set()
    for e in extra_e:
        if isinstance(e, str) and e.lower() in ETHERTYPE_NAMES:
            ets.add(ETHERTYPE_NAMES[e.lower()])
            continue
        try:
            v = int(e, 0) if isinstance(e, str) else e
        except ValueError:
            v = None
        if not _is_int(v) or not 0 <= v <= 0xFFFF:
            raise FirewallError(None, "allow_ethertypes", "bad EtherType %r (a name: %s, or "
                                "0x0000-0xffff)" % (e, ", ".join(ETHERTYPE_NAMES)))
        ets.add(v)
    ethertypes = None if ethertypes is None else frozenset(ethertypes | ets)
    stateful = obj.get("stateful", False)
    if not isinstance(stateful, bool):
        raise FirewallError(None, "stateful", "must be true or false")
    d_in = _parse_choice(obj.get("default_in", "accept"), ACTION_NAMES, None, "default_in")
    d_out = _parse_choice(obj.get("default_out", "accept"), ACTION_NAMES, None, "default_out")
    cmax = obj.get("conntrack_max", 65536)
    if not _is_int(cmax) or not 1 <= cmax <= 1 << 24:
        raise FirewallError(None, "conntrack_max", "must be an integer 1-16777216")
    tos = obj.get("timeouts", {})
    if not isinstance(tos, dict):
        raise FirewallError(None, "timeouts", "must be a table/object")
    try:
        timeouts = Timeouts.from_mapping(tos)
    except ValueError as e:
        raise FirewallError(None, "timeouts", str(e)) from None
    rrate = obj.get("reject_rate", 10.0)
    if isinstance(rrate, bool) or not isinstance(rrate, (int, float)) or not rrate >= 0:
        raise FirewallError(None, "reject_rate", "must be a number >= 0 (responses per second)")
    rburst = obj.get("reject_burst", 20)
    if not _is_int(rburst) or rburst < 0:
        raise FirewallError(None, "reject_burst", "must be an integer >= 0")
    if "rule" in obj and "rules" in obj:
        raise FirewallError(None, "rules", "give either \"rule\" or \"rules\", not both")
    raw = obj.get("rule", obj.get("rules", []))
    if not isinstance(raw, list):
        raise FirewallError(None, "rule", "must be a list of rules")
    if len(raw) > MAX_RULES:
        raise FirewallError(None, "rule", "%d rules; at most %d" % (len(raw), MAX_RULES))
    own = frozenset(own_groups or ())
    warnings: list = []
    rules = tuple(_parse_rule(i, r, peers, protocols, groups, own, warnings)
                  for i, r in enumerate(raw))
    if ethertypes is None:      # "open": every EtherType
        ethertypes = frozenset(range(0x10000))
    return RuleSet(rules, policy, frozenset(protocols), ethertypes, stateful, d_in, d_out,
                   cmax, timeouts, float(rrate), rburst, tuple(extra_p), tuple(extra_e),
                   tuple(warnings))


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
                t = (flags & (F_PORTS | F_PEER | F_PEERSET) | (_C_REMOTE if flags & rbit else 0)
                     | (_C_LOCAL if flags & lbit else 0),
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
    count = _U32LE.unpack_from(blob, at)[0]
    if at + 4 + 4 * count > len(blob):
        raise ValueError("peer set at %d runs past the table" % off)
    ids = struct.unpack_from("<%dI" % count, blob, at + 4)
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise ValueError("peer set at %d is not in ascending order" % off)
    return frozenset(ids)


_C_REMOTE = 0x100     # decoded-tuple flag bits (reference classifier only)
_C_LOCAL = 0x200
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


def _parse_ip(packet, off: int):
    """Minimal IPv4/IPv6 parse.  Returns None if malformed, else
    (family 0/1, src int, dst int, proto, l4 offset, end, frag_offset (8-byte
    units), more_fragments, ip id)."""
    n = len(packet)
    if n - off < 1:
        return None
    ver = packet[off] >> 4
    if ver == 4:
        if n - off < 20:
            return None
        vihl, _, tlen, ident, frag, _, proto, _, src, dst = _V4.unpack_from(packet, off)
        ihl = (vihl & 15) << 2
        if ihl < 20 or tlen < ihl or off + tlen > n:
            return None
        return (0, src, dst, proto, off + ihl, off + tlen, frag & 0x1FFF, frag & 0x2000, ident)
    if ver == 6:
        if n - off < 40:
            return None
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
    if end - off < 1:
        return None
    ver = packet[off] >> 4
    if ver == 4:
        if end - off < 20:
            return None
        vihl = packet[off]
        proto = packet[off + 9]
        src, dst = struct.unpack_from("!II", packet, off + 12)
        p = off + ((vihl & 15) << 2)
        fam = 0
        if _U16.unpack_from(packet, off + 6)[0] & 0x1FFF:
            return None
    elif ver == 6:
        if end - off < 40:
            return None
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
        ip = _parse_ip(packet, off)
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
        if f & _C_REMOTE and remote & r[7] != r[6]:
            continue
        if f & _C_LOCAL and local & r[9] != r[8]:
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
        ip = _parse_ip(packet, off)        # the upper-layer protocol, past extension headers
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


# --- the object a data path holds -----------------------------------------------------------

_DIRECTIONS = {"in": 0, "out": 1, 0: 0, 1: 1}
V_NOT_APPLIED = Verdict(Action.ACCEPT, -1, Reason.DEFAULT)


class Firewall:
    """Installed tables plus the state that outlives them.

    The data path reads ``self.active`` -- a ``(Tables, FirewallState)`` pair
    replaced with one store by :meth:`install` -- so a live edit takes effect
    on the next packet, is never seen half-done, and keeps conntrack entries
    (flows still allowed keep flowing; no re-handshake is involved at all).

    ``mode`` fixes what the data path hands to :meth:`classify`: IP packets
    (TUN), Ethernet frames (TAP), or, in the prototype's test mode, datagram
    payloads that are not packets at all: there the firewall does not apply
    and every payload is accepted (counted as ``accepts["default"]``).
    """

    def __init__(self, tables: Optional[Tables] = None, mode=Mode.TUN, clock=time.monotonic):
        if tables is None:
            tables = compile_rules(parse_rules({}, {}))
        self.mode = Mode(mode)
        self.is_ethernet = self.mode is Mode.TAP
        self.applies = self.mode is not Mode.TEST
        self.clock = clock
        rs = tables.ruleset or RuleSet()
        self.drops = array("Q", bytes(8 * N_REASONS))
        self.accepts = array("Q", bytes(8 * N_REASONS))
        self.conntrack = ConnTrack(rs.conntrack_max, rs.timeouts, clock)
        self.fragments = FragmentCache()
        self.bucket = TokenBucket(rs.reject_rate, rs.reject_burst, clock())
        self.rejects = {"sent": 0, "rate_limited": 0, "unanswerable": 0}
        self.active = None
        self.install(tables)

    def install(self, tables: Tables) -> None:
        """Swap in new tables atomically (hit counters start again at zero;
        drop/accept counters, conntrack and the fragment cache carry on)."""
        rs = tables.ruleset or RuleSet()
        self.conntrack.configure(rs.conntrack_max, rs.timeouts)
        self.bucket.rate, self.bucket.burst = rs.reject_rate, rs.reject_burst
        st = FirewallState(tables.nrules, self.drops, self.accepts, self.conntrack,
                           self.fragments)
        self.active = (tables, st)

    @property
    def tables(self) -> Tables:
        return self.active[0]

    def classify(self, direction, packet, peer_id: int, now: Optional[float] = None) -> Verdict:
        """``direction``: "in"/"out" or a :class:`Direction`."""
        if not self.applies:
            self.accepts[Reason.DEFAULT] += 1
            return V_NOT_APPLIED
        tables, st = self.active
        return classify(tables, _DIRECTIONS[direction], packet, peer_id, self.is_ethernet,
                        self.clock() if now is None else now, st)

    def reject_response(self, packet, now: Optional[float] = None) -> Optional[bytes]:
        """Rate-limited (token bucket, ``reject_rate``/``reject_burst``)
        :func:`reject_response`."""
        if not self.bucket.take(self.clock() if now is None else now):
            self.rejects["rate_limited"] += 1
            return None
        out = reject_response(packet, self.is_ethernet)
        if out is None:
            self.rejects["unanswerable"] += 1
        else:
            self.rejects["sent"] += 1
        return out

    def describe(self) -> dict:
        """What GET /firewall shows: the rule set (the same shape PUT
        /firewall takes) with per-rule ``hits``, plus ``drops`` and ``accepts``
        by reason, conntrack, fragment-cache and reject statistics."""
        tables, st = self.active
        rs = tables.ruleset or RuleSet()
        obj = rs.to_obj()
        for i, r in enumerate(obj["rules"]):
            r["hits"] = st.hits[i]
        obj["mode"] = self.mode.value
        obj["drops"] = {r.name.lower(): self.drops[r] for r in Reason}
        obj["accepts"] = {r.name.lower(): self.accepts[r] for r in Reason}
        obj["conntrack"] = self.conntrack.snapshot()
        obj["fragments"] = {"entries": len(self.fragments), "full": self.fragments.full}
        obj["rejects"] = dict(self.rejects)
        obj["warnings"] = list(rs.warnings)
        return obj

    snapshot = describe


def build(section, peers: dict, mode=Mode.TUN, previous: Optional[Firewall] = None,
          groups=None, own_groups=()) -> Firewall:
    """Parse, compile and return a ready Firewall (what the daemon calls for the
    config file, PUT /firewall and SIGHUP).  Raises :class:`FirewallError`.

    With ``previous`` (the Firewall the data path holds now) the new tables
    are installed into it and it is returned: conntrack entries, the fragment
    cache and the drop counters carry over, so replies to flows that are still
    allowed keep coming in across the edit."""
    tables = compile_rules(parse_rules(section, peers, groups, own_groups))
    if previous is not None and previous.mode is Mode(mode):
        previous.install(tables)
        return previous
    return Firewall(tables, mode)
