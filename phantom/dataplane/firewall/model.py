"""The firewall's rule model: the enums shared with the fast path, the table
layout constants, :class:`FirewallError`, :class:`Rule`, :class:`RuleSet` and
the parser :func:`parse_rules` (with the group name checks).  The pipeline,
evaluation order and binary layout are documented in the package docstring
(``phantom/dataplane/firewall/__init__.py``)."""

from __future__ import annotations

import base64
import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Optional

from phantom.dataplane.conntrack import Timeouts


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
U32LE = struct.Struct("<I")
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
    # ``peer`` names no peer known when the rule compiled (a member not yet
    # learnt, a peer the directory admits later): the rule matches nothing
    # until the rules compile again with a peer of that name
    waiting: bool = False

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
                      "warnings", "own_groups", "policy"}
_READONLY_RULE_KEYS = {"hits", "waiting"}
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


def _peer_lookup(v, peers, idx, warnings: list) -> Optional[int]:
    """The id of the peer ``v`` names (a name or a base64 public key), or
    None when no peer has it yet: a warning, and the rule waits for it (a
    member not learnt yet, a peer the directory admits later)."""
    if not isinstance(v, str) or not v:
        raise FirewallError(idx, "peer", "must be a peer name or base64 public key, not %r" % (v,))
    if v in peers:
        return peers[v]
    try:
        raw = base64.b64decode(v, validate=True)
    except ValueError:
        raw = None
    what = ("no peer has public key %s" % v if raw is not None and len(raw) == 32
            else "no peer is called %r" % v)
    warnings.append("firewall.rule[%d].peer: %s (yet): the rule matches no packet until "
                    "such a peer is added" % (idx, what))
    return None


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
    if warnings is None:
        warnings = []
    peer_id = peer = None
    waiting = False
    if "peer" in r:
        peer = r["peer"]
        peer_id = _peer_lookup(peer, peers, i, warnings)
        waiting = peer_id is None
        if not waiting and (not _is_int(peer_id) or not 0 <= peer_id <= 0xFFFFFFFF):
            raise FirewallError(i, "peer", "peer id %r is not a u32" % (peer_id,))
    cidr = _parse_cidr(r["cidr"], i, "cidr") if "cidr" in r else None
    local = _parse_cidr(r["local_cidr"], i, "local_cidr") if "local_cidr" in r else None
    if cidr is not None and local is not None and cidr.version != local.version:
        raise FirewallError(i, "local_cidr", "IPv%d, but cidr is IPv%d: the rule could never match"
                            % (local.version, cidr.version))
    comment = r.get("comment", "")
    if not isinstance(comment, str):
        raise FirewallError(i, "comment", "must be a string")
    src_g, dst_g, peer_set = _peer_set(r, i, direction, groups, own_groups, warnings)
    if waiting:
        peer_set = frozenset()      # no peer yet: compiled as an empty peer set, matching nothing
    return Rule(direction, action, proto, sp, dp, peer_id, peer, cidr, local, comment,
                src_g, dst_g, peer_set, waiting)


def parse_rules(obj, peers: dict, groups=None, own_groups=()) -> RuleSet:
    """Validate a ``[firewall]`` table / ``PUT /firewall`` body.

    ``peers`` maps each peer name *and* each base64 public key to its peer id.
    ``groups`` maps each group name to the ids of the peers in it (the peer
    table's group map; later the network's member certificates); ``own_groups``
    are this node's own groups.  A rule naming a group nobody is in, or a
    ``peer`` no peer is (a name or key not known yet), is valid (the group
    may get members, the peer may be added later), matches no packet for now
    and is reported in ``RuleSet.warnings``.
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
