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

Modules: ``model`` (enums shared with the fast path, the layout constants,
:class:`FirewallError`, :class:`Rule`, :class:`RuleSet`, :func:`parse_rules`),
``tables`` (:class:`Verdict`, :func:`compile_rules`, :class:`Tables`),
``classifier`` (the reference classifier and the state it bumps), ``reject``
(:func:`reject_response`, :class:`TokenBucket`); this package holds
:class:`Firewall` and :func:`build` and re-exports every public name above.
"""

from __future__ import annotations

import time
from array import array
from typing import Optional

from phantom.dataplane.conntrack import ConnTrack
from phantom.dataplane.firewall.classifier import FirewallState, FragmentCache, classify
from phantom.dataplane.firewall.model import (
    ACTION_NAMES, DIRECTION_NAMES, ETH_ARP, ETH_IPV4, ETH_IPV6, ETHERTYPE_NAMES, ETHERTYPES_OFF,
    F_LOCAL4, F_LOCAL6, F_PEER, F_PEERSET, F_PORTS, F_PROTO, F_REMOTE4, F_REMOTE6,
    FRAGMENT_ENTRIES, FRAGMENT_TIMEOUT, GROUP_MAX, HDR_OFF, MAX_RULES, N_REASONS, POLICIES,
    PORT_PROTOS, PROTO_NAMES, PROTOCOLS_OFF, PROTOTYPE_ETHERTYPES, PROTOTYPE_PROTOCOLS, RULE,
    RULES_OFF, TABLE_HEADER, TABLE_MAGIC, TABLE_VERSION, TF_STATEFUL, Action, Direction,
    FirewallError, Reason, Rule, RuleSet, group_problem, parse_rules,
)
from phantom.dataplane.firewall.reject import TokenBucket, reject_response
from phantom.dataplane.firewall.tables import (
    V_ESTABLISHED, V_ETHERTYPE_ACCEPT, V_ETHERTYPE_DROP, V_FRAGMENT, V_MALFORMED, V_PROTOCOL,
    Tables, Verdict, compile_rules,
)
from phantom.dataplane.types import Mode

# The package's public names, as they were when all of it was this one file
# (importers use ``from phantom.dataplane.firewall import X`` and ``firewall.X``).
__all__ = [
    # model.py
    "Direction", "Action", "Reason", "N_REASONS", "F_PROTO", "F_PORTS", "F_PEER", "F_REMOTE4",
    "F_REMOTE6", "F_LOCAL4", "F_LOCAL6", "F_PEERSET", "GROUP_MAX", "TABLE_MAGIC",
    "TABLE_VERSION", "TABLE_HEADER", "RULE", "HDR_OFF", "PROTOCOLS_OFF", "ETHERTYPES_OFF",
    "RULES_OFF", "TF_STATEFUL", "MAX_RULES", "FRAGMENT_TIMEOUT", "FRAGMENT_ENTRIES",
    "ETH_IPV4", "ETH_ARP", "ETH_IPV6", "PROTO_NAMES", "ETHERTYPE_NAMES", "PROTOTYPE_PROTOCOLS",
    "PROTOTYPE_ETHERTYPES", "POLICIES", "PORT_PROTOS", "ACTION_NAMES", "DIRECTION_NAMES",
    "FirewallError", "Rule", "RuleSet", "group_problem", "parse_rules",
    # tables.py
    "Verdict", "V_MALFORMED", "V_PROTOCOL", "V_ETHERTYPE_DROP", "V_ETHERTYPE_ACCEPT",
    "V_ESTABLISHED", "V_FRAGMENT", "compile_rules", "Tables",
    # classifier.py
    "FragmentCache", "FirewallState", "classify",
    # reject.py
    "reject_response", "TokenBucket",
    # here
    "V_NOT_APPLIED", "Firewall", "build",
]

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
            if rs.rules[i].waiting:             # names a peer not known yet: matches nothing
                r["waiting"] = "for peer %s" % rs.rules[i].peer
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
