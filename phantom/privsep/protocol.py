"""The request protocol between phantomd and its privileged helper: sans-IO.

One request or reply per ``SOCK_SEQPACKET`` message (the kernel keeps the
boundaries; a message longer than :data:`MAX_MESSAGE` arrives truncated, is
seen as such with ``MSG_TRUNC`` and refused, and the channel stays in step).
A message is a UTF-8 JSON object; duplicate keys, ``NaN``/``Infinity``,
unknown ops and unknown fields are refused, every value is checked for its
type and range, and every request is checked against the :class:`Allowlist`
that the helper fixed when it started.

Requests: ``{"id": N, "op": OP, ...fields}``; replies ``{"id": N, "ok": true,
...}`` or ``{"id": N, "ok": false, "error": TEXT, "errno": N|null,
"refused": REASON|null}``: ``refused`` says the helper would not try (the
request was malformed or outside the allowlist; counted per reason),
``errno`` that the kernel (or ``nft``, ``resolvectl``) said no.

Nothing here does I/O: :func:`parse_request` is what the helper runs on
every message, and what the unit tests drive with hostile input.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .refusal import IFNAME_MAX, REASONS, Refused, valid_ifname  # noqa: F401  (their home)
from .refusal import int_in as _int, short as _short

VERSION = 1
MAX_MESSAGE = 64 * 1024           # a request (and the start message), bytes
MAX_REPLY = 256 * 1024            # a reply, bytes (the client's receive buffer)
MAX_ID = 2 ** 53
RTPROT_PHANTOM = 112              # rtm_protocol / FRA_PROTOCOL of every route and rule we add
MAIN_TABLE = 254
RESERVED_TABLES = (0, 252, 253, 254, 255)   # unspec, compat, default, main, local
PRIORITY_BASE = 5180              # our two policy-rule priorities: 5180 and 5181
PRIORITIES = 2
DEFAULT_TABLE = 51820             # wg-quick's table and fwmark when the UDP port cannot be one
MAX_ROUTES = 10000                # routes one helper keeps installed at once
MAX_DNS = 4
MAX_DOMAINS = 16
CAP_NET_ADMIN = 12


# --- the allowlist --------------------------------------------------------------------------------
def nft_table_name(device: str) -> str:
    """``phantom-<device>``: letters and digits as they are, anything else as
    ``_xx`` (hex), so two device names never share a table."""
    return "phantom-" + "".join(c if c.isascii() and c.isalnum() else "_%02x" % ord(c) for c in device)


KILLSWITCH_TABLE = "phantom-killswitch"   # the kill switch (kept when the daemon dies: see helper)


def table_for_port(port: int) -> int:
    """The daemon's routing table id and fwmark: its UDP port, as wg-quick
    does (51820 for a port that is a reserved table id, or 0)."""
    return port if 0 < port <= 65535 and port not in RESERVED_TABLES else DEFAULT_TABLE


@dataclass(frozen=True)
class Allowlist:
    """What the helper may do, fixed when it starts (from the daemon's
    config, before the daemon reads anything from the network)."""

    device: str                     # the daemon's TUN/TAP device ...
    ifindex: int                    # ... pinned by index: routes go only through it
    mode: str                       # "tun" or "tap"
    table: int                      # the daemon's own routing table (besides main)
    fwmark: int                     # the daemon's own fwmark
    priorities: tuple               # the priorities its policy rules may have
    addresses: tuple                # the interface addresses (ip_interface) it may add
    journal: str                    # the helper's journal (crash recovery)
    uid: Optional[int] = None       # the user the helper runs as (None: stays who it is)
    gid: Optional[int] = None

    @property
    def nft_table(self) -> str:
        return nft_table_name(self.device)

    @property
    def nft_tables(self) -> tuple:
        """The only nftables tables (family inet) this daemon may write."""
        return (self.nft_table, KILLSWITCH_TABLE)

    @property
    def subnets(self) -> list:
        return [a.network for a in self.addresses]

    @classmethod
    def for_device(cls, device: str, ifindex: int, mode: str, port: int, addresses,
                   state_dir, uid: Optional[int] = None, gid: Optional[int] = None) -> "Allowlist":
        table = table_for_port(port)
        journal = Path(state_dir).absolute() / ("privsep-%s.journal" % nft_table_name(device)[8:])
        return cls(device, ifindex, mode, table, table,
                   tuple(range(PRIORITY_BASE, PRIORITY_BASE + PRIORITIES)),
                   tuple(ipaddress.ip_interface(a) for a in addresses), str(journal), uid, gid)

    def to_json(self) -> dict:
        return {"v": VERSION, "device": self.device, "ifindex": self.ifindex, "mode": self.mode,
                "table": self.table, "fwmark": self.fwmark, "priorities": list(self.priorities),
                "addresses": [str(a) for a in self.addresses], "journal": self.journal,
                "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_json(cls, d: Any) -> "Allowlist":
        """The start message, checked as strictly as any request."""
        if not isinstance(d, dict):
            raise Refused("malformed", "the start message is not a JSON object")
        _fields(d, {"v", "device", "ifindex", "mode", "table", "fwmark", "priorities", "addresses",
                    "journal", "uid", "gid"}, required={"v", "device", "ifindex", "mode", "table",
                                                        "fwmark", "priorities", "addresses", "journal"})
        if d["v"] != VERSION:
            raise Refused("bad_value", "protocol version %s, this helper speaks %d" % (_short(d["v"]), VERSION))
        if not valid_ifname(d["device"]):
            raise Refused("bad_value", "device: %s is not a device name" % _short(d["device"]))
        if d["mode"] not in ("tun", "tap"):
            raise Refused("bad_value", "mode: %s is neither tun nor tap" % _short(d["mode"]))
        table = _int(d["table"], 1, 2 ** 32 - 1, "table")
        if table in RESERVED_TABLES:
            raise Refused("bad_value", "table: %d is a reserved table" % table)
        prios = d["priorities"]
        if not isinstance(prios, list) or not 1 <= len(prios) <= 8:
            raise Refused("bad_value", "priorities: a list of 1 to 8 rule priorities")
        addrs = d["addresses"]
        if not isinstance(addrs, list) or len(addrs) > 64:
            raise Refused("bad_value", "addresses: a list of at most 64 interface addresses")
        journal = d["journal"]
        if not isinstance(journal, str) or not journal.startswith("/") or "\0" in journal:
            raise Refused("bad_value", "journal: an absolute path")
        ids = [None if d.get(k) is None else _int(d[k], 0, 2 ** 32 - 2, k) for k in ("uid", "gid")]
        return cls(d["device"], _int(d["ifindex"], 1, 2 ** 31 - 1, "ifindex"), d["mode"], table,
                   _int(d["fwmark"], 1, 2 ** 32 - 1, "fwmark"),
                   tuple(_int(p, 1, 32765, "priorities") for p in prios),
                   tuple(_interface(a, "addresses") for a in addrs), journal, ids[0], ids[1])


# --- values ---------------------------------------------------------------------------------------
def _fields(msg: dict, allowed: set, required: set = frozenset()) -> None:
    unknown = sorted(k for k in msg if k not in allowed)
    if unknown:
        raise Refused("unknown_field", "unknown field %s (allowed: %s)"
                      % (_short(unknown[0]), ", ".join(sorted(allowed)) or "none"))
    missing = sorted(k for k in required if k not in msg)
    if missing:
        raise Refused("malformed", "missing field %r" % missing[0])


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise Refused("bad_value", "%s: %s is not true or false" % (what, _short(v)))
    return v


def _family(v: Any) -> int:
    if v not in (4, 6) or isinstance(v, bool):
        raise Refused("bad_value", "family: %s is neither 4 nor 6" % _short(v))
    return v


def _network(v: Any, what: str):
    if not isinstance(v, str) or len(v) > 64:
        raise Refused("bad_value", "%s: %s is not a prefix string" % (what, _short(v)))
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError:
        raise Refused("bad_value", "%s: %s is not a prefix (address/length, no host bits set)"
                      % (what, _short(v))) from None


def _ip_value(parse, v: Any, what: str, noun: str):
    """``parse`` (ipaddress.ip_interface, ip_address) of a string of at most
    64 characters, or Refused: "``what``: ... is not ``noun``"."""
    if isinstance(v, str) and len(v) <= 64:
        try:
            return parse(v)
        except ValueError:
            pass
    raise Refused("bad_value", "%s: %s is not %s" % (what, _short(v), noun))


def _interface(v: Any, what: str):
    return _ip_value(ipaddress.ip_interface, v, what, "an interface address")


def _address(v: Any, what: str):
    return _ip_value(ipaddress.ip_address, v, what, "an IP address")


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _domain(v: Any, default_route: bool = False) -> str:
    if not isinstance(v, str) or not 1 <= len(v) <= 254:
        raise Refused("bad_value", "domains: %s is not a domain name" % _short(v))
    name = v[1:] if v.startswith("~") else v
    if v == "~." and default_route:
        return v                    # an exit in use: every query to the exit's tunnel address
    if name in ("", "."):
        raise Refused("not_allowed", "domains: %s would send every DNS query into the tunnel "
                      "(only with default_route, for an exit in use)" % _short(v))
    name = name[:-1] if name.endswith(".") else name
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise Refused("bad_value", "domains: %s is not a domain name" % _short(v))
    return v


# --- requests -------------------------------------------------------------------------------------
@dataclass
class Request:
    id: int
    op: str
    args: dict = field(default_factory=dict)


def _table(v: Any, allow: Allowlist) -> int:
    if v == "main":
        return MAIN_TABLE
    t = _int(v, 0, 2 ** 32 - 1, "table")
    if t not in (MAIN_TABLE, allow.table):
        raise Refused("not_allowed", "table %d is not this daemon's (main or %d)" % (t, allow.table))
    return t


def _route(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, {"prefix", "table", "dev"}, required={"prefix"})
    if "dev" in msg and msg["dev"] != allow.device:
        raise Refused("not_allowed", "dev %s: routes go only through this daemon's device %s"
                      % (_short(msg["dev"]), allow.device))
    if allow.mode != "tun":
        raise Refused("not_allowed", "routes go into a TUN device; %s is a TAP device" % allow.device)
    return {"net": _network(msg["prefix"], "prefix"), "table": _table(msg.get("table", "main"), allow)}


def rule_key(a: dict) -> tuple:
    return (a["family"], a["priority"], a["table"], a["fwmark"], a["invert"], a["suppress_prefixlength"])


def _rule(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, {"family", "priority", "table", "fwmark", "invert", "suppress_prefixlength"},
            required={"family", "priority", "table"})
    fam = _family(msg["family"])
    prio = _int(msg["priority"], 0, 2 ** 32 - 1, "priority")
    if prio not in allow.priorities:
        raise Refused("not_allowed", "priority %d is not this daemon's (%s)"
                      % (prio, ", ".join(map(str, allow.priorities))))
    table = _table(msg["table"], allow)
    mark = msg.get("fwmark")
    if mark is not None and _int(mark, 0, 2 ** 32 - 1, "fwmark") != allow.fwmark:
        raise Refused("not_allowed", "fwmark %d is not this daemon's (%d)" % (mark, allow.fwmark))
    invert = _bool(msg.get("invert", False), "invert")
    if invert and mark is None:
        raise Refused("bad_value", "invert needs a fwmark")
    sup = msg.get("suppress_prefixlength")
    if sup is not None:
        _int(sup, 0, 128 if fam == 6 else 32, "suppress_prefixlength")
        if table != MAIN_TABLE:
            raise Refused("not_allowed", "suppress_prefixlength goes with the main table only")
    elif table == MAIN_TABLE:
        raise Refused("not_allowed", "a rule to the main table must carry suppress_prefixlength")
    return {"family": fam, "priority": prio, "table": table, "fwmark": mark, "invert": invert,
            "suppress_prefixlength": sup}


def _addr(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, {"address"}, required={"address"})
    a = _interface(msg["address"], "address")
    if a not in allow.addresses:
        raise Refused("not_allowed", "address %s is not one of this daemon's (%s)"
                      % (a, ", ".join(map(str, allow.addresses)) or "none"))
    return {"address": a}


def _link_up(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, {"addrgenmode_none"})
    return {"addrgenmode_none": _bool(msg.get("addrgenmode_none", False), "addrgenmode_none")}


def _nft_replace(msg: dict, allow: Allowlist) -> dict:
    from . import nftspec
    _fields(msg, {"table", "family", "name"}, required={"table"})
    name = _own_nft_table(msg, allow)
    return {"name": name, "spec": nftspec.validate(msg["table"], allow)}


def _own_nft_table(msg: dict, allow: Allowlist) -> str:
    if "family" in msg and msg["family"] != "inet":
        raise Refused("not_allowed", "nftables family %s: this daemon's tables are inet"
                      % _short(msg["family"]))
    name = msg.get("name", allow.nft_table)
    if name not in allow.nft_tables:
        raise Refused("not_allowed", "nftables table %s is not this daemon's (inet %s)"
                      % (_short(name), " or ".join(allow.nft_tables)))
    return name


def _nft_delete(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, {"family", "name"})
    return {"name": _own_nft_table(msg, allow)}


def _forwarding(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, {"family", "enabled"}, required={"family", "enabled"})
    return {"family": _family(msg["family"]), "enabled": _bool(msg["enabled"], "enabled")}


def _resolved(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, {"dns", "domains", "default_route"}, required={"dns"})
    dns, domains = msg["dns"], msg.get("domains", [])
    default_route = _bool(msg.get("default_route", False), "default_route")
    if not isinstance(dns, list) or not 1 <= len(dns) <= MAX_DNS:
        raise Refused("bad_value", "dns: a list of 1 to %d addresses" % MAX_DNS)
    if not isinstance(domains, list) or len(domains) > MAX_DOMAINS:
        raise Refused("bad_value", "domains: a list of at most %d names" % MAX_DOMAINS)
    servers = []
    for v in dns:
        ip = _address(v, "dns")
        if not any(ip.version == n.version and ip in n for n in allow.subnets):
            raise Refused("not_allowed", "dns server %s is outside this daemon's subnets (%s)"
                          % (ip, ", ".join(map(str, allow.subnets)) or "none"))
        servers.append(ip)
    return {"dns": servers, "domains": [_domain(d, default_route) for d in domains],
            "default_route": default_route}


def _nothing(msg: dict, allow: Allowlist) -> dict:
    _fields(msg, set())
    return {}


OPS = {
    "status": _nothing,
    "shutdown": _nothing,
    "link_up": _link_up,
    "addr_add": _addr,
    "route_add": _route,
    "route_del": _route,
    "rule_add": _rule,
    "rule_del": _rule,
    "nft_replace": _nft_replace,
    "nft_delete": _nft_delete,
    "forwarding": _forwarding,
    "resolved_register": _resolved,
    "resolved_revert": _nothing,
}


def loads(data: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity."""
    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise Refused("malformed", "duplicate key %s" % _short(k))
            out[k] = v
        return out

    def constant(name):
        raise Refused("malformed", "%s is not JSON" % name)

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except Refused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError) as exc:
        raise Refused("malformed", "not a JSON text: %s" % str(exc)[:80]) from None


def parse_request(data: bytes, allow: Allowlist, truncated: bool = False) -> Request:
    """One message from the daemon -> a checked Request, or Refused."""
    if truncated or len(data) > MAX_MESSAGE:
        raise Refused("oversized", "request over %d bytes" % MAX_MESSAGE)
    msg = loads(data)
    if not isinstance(msg, dict):
        raise Refused("malformed", "a request is a JSON object")
    rid = msg.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid < MAX_ID:
        raise Refused("malformed", "id: %s is not a request number" % _short(rid))
    op = msg.get("op")
    check = OPS.get(op) if isinstance(op, str) else None
    if check is None:
        raise Refused("unknown_op", "unknown op %s (known: %s)" % (_short(op), ", ".join(OPS)), rid)
    body = {k: v for k, v in msg.items() if k not in ("id", "op")}
    try:
        return Request(rid, op, check(body, allow))
    except Refused as exc:
        exc.id = rid
        raise


# --- the journal, read back after a crash ---------------------------------------------------------
def journal_entry_allowed(entry: Any, allow: Allowlist) -> bool:
    """Whether a journal entry (see :mod:`.journal`) may be undone by this
    helper.  The journal lives in the daemon's state directory: a
    compromised daemon could write lines into it, so recovery undoes only
    what this helper's allowlist would have let it do (routes and rules
    also carry our protocol number, which the kernel matches on delete)."""
    if not isinstance(entry, dict) or len(entry) != 1:
        return False
    (kind, v), = entry.items()
    try:
        if kind == "nft":
            return v in allow.nft_tables
        if not isinstance(v, dict):
            return False
        if kind == "route":
            _fields(v, {"prefix", "table", "ifindex"}, required={"prefix", "table", "ifindex"})
            _network(v["prefix"], "prefix")
            t = _int(v["table"], 1, 2 ** 32 - 1, "table")
            return (t == MAIN_TABLE or t not in RESERVED_TABLES) and _int(v["ifindex"], 1, 2 ** 31 - 1, "ifindex") > 0
        if kind == "rule":
            _fields(v, {"family", "priority", "table", "fwmark", "invert", "suppress_prefixlength"},
                    required={"family", "priority", "table", "fwmark", "invert", "suppress_prefixlength"})
            _family(v["family"])
            t = _int(v["table"], 1, 2 ** 32 - 1, "table")
            if v["fwmark"] is not None:
                _int(v["fwmark"], 1, 2 ** 32 - 1, "fwmark")
            if v["suppress_prefixlength"] is not None:
                _int(v["suppress_prefixlength"], 0, 128, "suppress_prefixlength")
            _bool(v["invert"], "invert")
            return v["priority"] in allow.priorities and (t == MAIN_TABLE or t not in RESERVED_TABLES)
        if kind in ("addr", "link"):
            return v.get("ifindex") == allow.ifindex and (kind == "link" or (
                isinstance(v.get("address"), str) and _interface(v["address"], "address") in allow.addresses))
        if kind == "forwarding":
            return v.get("family") in (4, 6) and v.get("previous") in ("0", "1")
        if kind == "resolved":
            return v.get("ifindex") == allow.ifindex
    except Refused:
        return False
    return False


# --- encoding -------------------------------------------------------------------------------------
def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str).encode()


def encode_request(rid: int, op: str, **fields) -> bytes:
    data = _dumps(dict(fields, id=rid, op=op))
    if len(data) > MAX_MESSAGE:
        raise ValueError("request over %d bytes" % MAX_MESSAGE)
    return data


def reply_ok(rid: Optional[int], **extra) -> bytes:
    return _dumps(dict(extra, id=rid, ok=True))


def reply_error(rid: Optional[int], error: str, errno: Optional[int] = None,
                refused: Optional[str] = None, **extra) -> bytes:
    return _dumps(dict(extra, id=rid, ok=False, error=error[:2000], errno=errno, refused=refused))


def errno_text(code: int) -> str:
    return os.strerror(code) if code else "error"
