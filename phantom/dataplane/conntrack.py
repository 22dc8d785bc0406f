"""Connection tracking for the firewall's stateful mode.

Only *outbound* packets (from this host into the tunnel) that the firewall
accepted create entries.  An inbound packet is let in ahead of the rules when it
is a reply to such a flow (``established``) or an ICMP error about one
(``related``).

Keys
----
``(peer_id, family, proto, local_addr, remote_addr, local_id, remote_id)``
where ``family`` is 4 or 6, addresses are ints, and the two ids are:

* TCP, UDP: the local and remote ports;
* ICMP / ICMPv6 echo: an echo *request* has ``(id, -1)``, an echo *reply*
  ``(-1, id)``; so only a reply matches the request this side sent (an inbound
  request with the same id does not);
* any other protocol the policy lets through: ``(-1, -1)`` (address pair only).

The peer id is part of the key: a reply must come back through the peer the
flow went out to.

States and timeouts (seconds, :class:`Timeouts`)
------------------------------------------------
* TCP: ``NEW`` (only this side seen, ``tcp_new``) -> ``ESTABLISHED`` (a reply
  seen, ``tcp_established``) -> ``CLOSING`` (a FIN or RST either way,
  ``tcp_closing``).  An outbound SYN on a ``CLOSING`` entry starts it again as
  ``NEW`` (port reuse).  Entries are picked up from any outbound packet, not
  only a SYN, so flows survive a rule-set swap or a full table that has drained.
  An inbound SYN without ACK is never a reply (it is a new connection).
* UDP: ``udp`` until a reply is seen, then ``udp_stream``.
* ICMP echo: ``icmp``.
* other protocols: ``other``.

Every matching packet, either way, pushes the expiry forward.

Bounds
------
At most ``max_entries`` entries.  When a new flow finds the table full, expired
entries are swept (a full scan, at most once per ``sweep_interval`` seconds so a
full table of live flows does not cost a scan per packet); if it is still full
the flow is **not tracked**: the packet itself still goes out (the rules
accepted it), the refusal is counted in ``stats["conntrack_full"]``, and its
replies are judged by the inbound rules like any new inbound packet -- in a
"deny new inbound" rule set they are dropped.  Existing entries are never
evicted early, so a flood of new flows cannot break established ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace

# TCP flag bits (byte 13 of the TCP header)
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

# entry states
NEW = 0
ESTABLISHED = 1
CLOSING = 2

NO_ID = -1


@dataclass(frozen=True)
class Timeouts:
    """Per-protocol idle timeouts in seconds."""

    tcp_new: float = 30.0
    tcp_established: float = 3600.0
    tcp_closing: float = 60.0
    udp: float = 30.0
    udp_stream: float = 120.0
    icmp: float = 30.0
    other: float = 60.0

    @classmethod
    def from_mapping(cls, values: dict) -> "Timeouts":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError("unknown timeout(s): %s" % ", ".join(sorted(unknown)))
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError("timeout %s must be a positive number of seconds" % k)
        return replace(cls(), **{k: float(v) for k, v in values.items()})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class PacketInfo:
    """The parts of a packet connection tracking needs (built by the classifier).

    ``sport``/``dport`` hold the ids described in the module docstring.
    ``related`` is, for an ICMP error, the info of the packet it quotes (as
    that packet was sent: its source is this side), else ``None``.
    """

    __slots__ = ("peer_id", "family", "proto", "src", "dst", "sport", "dport",
                 "tcp_flags", "related")

    def __init__(self, peer_id, family, proto, src, dst, sport=NO_ID, dport=NO_ID,
                 tcp_flags=0, related=None):
        self.peer_id = peer_id
        self.family = family
        self.proto = proto
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.tcp_flags = tcp_flags
        self.related = related

    def __repr__(self):
        return ("PacketInfo(peer=%r, v%d, proto=%d, %r:%r -> %r:%r, flags=%#x, related=%r)"
                % (self.peer_id, self.family, self.proto, self.src, self.sport,
                   self.dst, self.dport, self.tcp_flags, self.related))


def _is_icmp(proto: int) -> bool:
    return proto == PROTO_ICMP or proto == PROTO_ICMPV6


class ConnTrack:
    """A bounded table of flows this side started.  Not thread-safe: owned by
    one data-path thread (the classifier's caller)."""

    def __init__(self, max_entries: int = 65536, timeouts: Timeouts = Timeouts(),
                 clock=time.monotonic, sweep_interval: float = 1.0):
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.timeouts = timeouts
        self.clock = clock
        self.sweep_interval = sweep_interval
        # key -> [expiry, state]
        self._table: dict = {}
        self._last_sweep = float("-inf")
        self.stats = {"created": 0, "expired": 0, "conntrack_full": 0,
                      "established": 0, "related": 0}

    def configure(self, max_entries: int, timeouts: Timeouts) -> None:
        """Apply new bounds/timeouts (a live edit); existing entries keep their
        current expiry.  Shrinking below the current size refuses new flows
        until enough expire."""
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.timeouts = timeouts

    def __len__(self) -> int:
        return len(self._table)

    def clear(self) -> None:
        self._table.clear()

    # --- internals -----------------------------------------------------------
    def _timeout(self, proto: int, state: int) -> float:
        t = self.timeouts
        if proto == PROTO_TCP:
            if state == ESTABLISHED:
                return t.tcp_established
            if state == CLOSING:
                return t.tcp_closing
            return t.tcp_new
        if proto == PROTO_UDP:
            return t.udp_stream if state == ESTABLISHED else t.udp
        if _is_icmp(proto):
            return t.icmp
        return t.other

    def expire(self, now: float | None = None) -> int:
        """Remove every expired entry; returns how many went."""
        if now is None:
            now = self.clock()
        self._last_sweep = now
        dead = [k for k, e in self._table.items() if e[0] <= now]
        for k in dead:
            del self._table[k]
        self.stats["expired"] += len(dead)
        return len(dead)

    @staticmethod
    def _trackable(info: PacketInfo) -> bool:
        if _is_icmp(info.proto):
            # only echo requests start an ICMP "flow"
            return info.sport != NO_ID and info.dport == NO_ID
        return True

    # --- the two operations the classifier uses --------------------------------
    def track_outbound(self, info: PacketInfo, now: float | None = None) -> bool:
        """Record (or refresh) the flow of an accepted outbound packet.

        Returns False when the packet starts no trackable flow (e.g. an ICMP
        error or echo reply) or the table is full (counted as
        ``conntrack_full``)."""
        if not self._trackable(info):
            return False
        if now is None:
            now = self.clock()
        key = (info.peer_id, info.family, info.proto, info.src, info.dst,
               info.sport, info.dport)
        table = self._table
        entry = table.get(key)
        proto = info.proto
        if entry is not None and entry[0] > now:
            state = entry[1]
            if proto == PROTO_TCP:
                flags = info.tcp_flags
                if flags & (TCP_FIN | TCP_RST):
                    state = CLOSING
                elif state == CLOSING and flags & TCP_SYN and not flags & TCP_ACK:
                    state = NEW
            entry[1] = state
            entry[0] = now + self._timeout(proto, state)
            return True
        if entry is not None:           # expired: recreate in place
            del table[key]
            self.stats["expired"] += 1
        elif len(table) >= self.max_entries:
            if now - self._last_sweep >= self.sweep_interval:
                self.expire(now)
            if len(table) >= self.max_entries:
                self.stats["conntrack_full"] += 1
                return False
        state = NEW
        if proto == PROTO_TCP and info.tcp_flags & (TCP_FIN | TCP_RST):
            state = CLOSING
        table[key] = [now + self._timeout(proto, state), state]
        self.stats["created"] += 1
        return True

    def is_reply(self, info: PacketInfo, now: float | None = None) -> bool:
        """Is this inbound packet a reply to (or an ICMP error about) a flow
        this side started?  A hit refreshes the entry."""
        if now is None:
            now = self.clock()
        rel = info.related
        if rel is not None:
            # an ICMP error quoting a packet this side sent: the quoted packet's
            # source must be us (the error's destination)
            if rel.src != info.dst or rel.family != info.family:
                return False
            key = (info.peer_id, rel.family, rel.proto, rel.src, rel.dst, rel.sport, rel.dport)
            entry = self._table.get(key)
            if entry is None or entry[0] <= now:
                return False
            self.stats["related"] += 1
            return True
        proto = info.proto
        flags = info.tcp_flags
        if proto == PROTO_TCP and flags & TCP_SYN and not flags & TCP_ACK:
            return False
        key = (info.peer_id, info.family, proto, info.dst, info.src, info.dport, info.sport)
        table = self._table
        entry = table.get(key)
        if entry is None:
            return False
        if entry[0] <= now:
            del table[key]
            self.stats["expired"] += 1
            return False
        state = entry[1]
        if proto == PROTO_TCP:
            if flags & (TCP_FIN | TCP_RST):
                state = CLOSING
            elif state == NEW:
                state = ESTABLISHED
        elif proto == PROTO_UDP:
            state = ESTABLISHED
        entry[1] = state
        entry[0] = now + self._timeout(proto, state)
        self.stats["established"] += 1
        return True

    def snapshot(self) -> dict:
        return {"entries": len(self._table), "max_entries": self.max_entries,
                "timeouts": self.timeouts.as_dict(), **self.stats}
