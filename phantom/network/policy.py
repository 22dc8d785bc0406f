"""The network policy (issue 21): who may reach whom, one signed document.

Source (what ``phantom network policy set FILE`` reads; TOML or JSON)::

    default = "deny"                       # required; or "allow": what no rule matches gets

    [groups]                               # extra groups, beside the certificates' own
    admins = ["member:alice", "key:<X25519 base64>"]

    [[rule]]
    from = ["group:laptops"]               # "*", "group:G", "member:NAME", "key:BASE64"
    to = ["group:servers"]
    proto = "tcp"                          # any, tcp, udp, icmp (v4 and v6), icmpv4, icmpv6, 0-255
    ports = [22, "8000-8999"]              # tcp/udp only (with "any": TCP and UDP)
    action = "accept"                      # default; or "drop"
    comment = "ssh"

Rules are evaluated in order, first match wins, for traffic *into* a member
that one of the rule's ``to`` selectors names, from a member one of its
``from`` selectors names.  ``group:G`` means the members whose certificate
carries G plus the policy group G's members.  A bad policy is refused whole,
naming the rule and the line: ``policy rule 3 (line 14), ports[0]: port
70000 is out of range 0-65535``.

The signed document (an admission key signs it; ``seq`` higher wins) is the
canonical form of the source plus ``v``, ``net``, ``seq``, ``issued``,
``iss``, ``sig``; :func:`verify_policy` checks it.  :func:`compile_inbound`
turns it, for one member, into :class:`InboundRules`: the rules that apply
to traffic into that member, sources kept symbolic (groups, names, keys), so
a membership change does not change them; phantom/node/policy.py turns those
into firewall rules.
"""

from __future__ import annotations

import base64
import json
import json.scanner
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Optional

from . import canonical as _c
from . import names
from .canonical import (KEY_SIZE, SEQ_MAX, SIG_SIZE, TIME_MAX, b64, bytes_field, canonical,
                        int_field, object_fields, strict_loads)
from .definition import Definition
from .errors import FormatError, PolicyError, Reason, Refused
from .keys import (POLICY_DOMAIN, SigningKey, fingerprint_field, sign_document, valid_x25519,
                   verify_document)

VERSION = 1
WHAT = "policy"
MAX_SOURCE_SIZE = 256 * 1024          # the admin's file (comments and all)
MAX_POLICY_SIZE = 48 * 1024           # the signed canonical document (fits a 64 KiB answer)
MAX_RULES = 1000
MAX_SELECTORS = 64
MAX_POLICY_GROUPS = 256
MAX_GROUP_MEMBERS = 1024
MAX_PORT_RANGES = 32
MAX_COMMENT = 200
# What one member's firewall may get from a policy, at most: the sum over the
# rules of (sources, a policy group counting its members) x (IP protocols) x
# (port ranges); a policy that could compile to more is refused.
MAX_EXPANSION = 8192
ACTIONS = ("accept", "drop")
DEFAULTS = ("deny", "allow")
PROTOCOLS = {"any": None, "tcp": frozenset({6}), "udp": frozenset({17}),
             "icmp": frozenset({1, 58}), "icmpv4": frozenset({1}), "icmpv6": frozenset({58})}
_NUMBER_NAMES = {6: "tcp", 17: "udp", 1: "icmpv4", 58: "icmpv6"}
PORT_PROTOCOLS = frozenset({6, 17})
RULE_KEYS = ("from", "to", "proto", "ports", "action", "comment")
BODY_KEYS = ("default", "groups", "rules")
SIGNED_FIELDS = ("v", "net", "seq", "issued") + BODY_KEYS + ("iss", "sig")


# --- the model ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyRule:
    action: str
    sources: tuple                       # selectors, sorted
    targets: tuple
    proto: str                           # canonical name or decimal number
    ports: tuple                         # ((lo, hi), ...) sorted; () = every port
    comment: str = ""

    @property
    def protocols(self) -> Optional[frozenset]:
        """IP protocol numbers (None: any); "any" with ports means TCP and UDP."""
        if self.proto in PROTOCOLS:
            p = PROTOCOLS[self.proto]
            return PORT_PROTOCOLS if p is None and self.ports else p
        return frozenset({int(self.proto)})

    def to_doc(self) -> dict:
        d = {"action": self.action, "from": list(self.sources), "to": list(self.targets),
             "proto": self.proto,
             "ports": [str(lo) if lo == hi else "%d-%d" % (lo, hi) for lo, hi in self.ports]}
        if self.comment:
            d["comment"] = self.comment
        return d


@dataclass(frozen=True)
class PolicyBody:
    """What the admin wrote, validated and in canonical form."""

    default: str = "deny"
    groups: tuple = ()                   # ((name, (selector, ...)), ...) sorted by name
    rules: tuple = ()                    # (PolicyRule, ...)

    def group_members(self, name: str) -> tuple:
        for g, members in self.groups:
            if g == name:
                return members
        return ()

    def to_doc(self) -> dict:
        return {"default": self.default, "groups": {g: list(m) for g, m in self.groups},
                "rules": [r.to_doc() for r in self.rules]}


@dataclass(frozen=True)
class Policy:
    """A signed policy (form checked by :func:`parse_policy`; signature by
    :func:`verify_policy`)."""

    network: str
    seq: int
    issued: int
    body: PolicyBody
    issuer: bytes
    sig: bytes = field(repr=False)
    doc: dict = field(default_factory=dict, repr=False, compare=False)

    def encode(self) -> bytes:
        return canonical(self.doc)

    def summary(self) -> dict:
        return {"seq": self.seq, "issued": self.issued, "issuer": b64(self.issuer),
                "network": self.network, "default": self.body.default,
                "groups": {g: list(m) for g, m in self.body.groups},
                "rules": [r.to_doc() for r in self.body.rules]}


# --- selectors ---------------------------------------------------------------------------------

def _selector(value: Any, path: str, in_group: bool = False) -> str:
    if not isinstance(value, str):
        raise PolicyError("selector must be a string like \"group:servers\"", field=path)
    if value == "*" and not in_group:
        return value
    kind, sep, arg = value.partition(":")
    try:
        if sep and kind == "group" and not in_group:
            return "group:" + names.group(arg, path)
        if sep and kind == "member":
            return "member:" + names.label(arg, path)
        if sep and kind == "key":
            key = bytes_field(arg, path, KEY_SIZE)
            if not valid_x25519(key):
                raise FormatError("is not a usable X25519 key", path)
            return "key:" + b64(key)
    except FormatError as exc:
        raise PolicyError("%r %s" % (value[:80], exc.problem), field=path) from None
    allowed = "\"member:NAME\" or \"key:BASE64\"" if in_group else \
        "\"*\", \"group:NAME\", \"member:NAME\" or \"key:BASE64\""
    raise PolicyError("%r is not a selector (%s)" % (value[:80], allowed), field=path)


def _selectors(value: Any, path: str, limit: int, in_group: bool = False) -> tuple:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PolicyError("must be a non-empty list of selectors", field=path)
    if len(value) > limit:
        raise PolicyError("%d selectors; at most %d" % (len(value), limit), field=path)
    out = sorted({_selector(v, "%s[%d]" % (path, i), in_group) for i, v in enumerate(value)})
    if "*" in out and len(out) > 1:
        raise PolicyError("\"*\" already means every member: list nothing else", field=path)
    return tuple(out)


def _proto(value: Any, path: str = "proto") -> str:
    if isinstance(value, str):
        s = value.strip().lower()
        if s in PROTOCOLS:
            return s
        if s.isascii() and s.isdigit() and len(s) <= 3:
            value = int(s)
        else:
            raise PolicyError("unknown protocol %r (any, tcp, udp, icmp, icmpv4, icmpv6, or a "
                              "number 0-255)" % value[:40], field=path)
    if not _c.is_int(value) or not 0 <= value <= 255:
        raise PolicyError("protocol must be a name or a number 0-255, not %r" % (value,),
                          field=path)
    return _NUMBER_NAMES.get(value, str(value))


def _port_range(value: Any, path: str) -> tuple:
    if _c.is_int(value):
        lo = hi = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}(-[0-9]{1,5})?", value.strip()):
        a, _, b = value.strip().partition("-")
        lo, hi = int(a), int(b or a)
    else:
        raise PolicyError("%r is not a port or a range \"lo-hi\"" % (value,), field=path)
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise PolicyError("port %r is out of range 0-65535" % (value,), field=path)
    if lo > hi:
        raise PolicyError("port range %r is empty (low > high)" % (value,), field=path)
    return (lo, hi)


def _rule(i: int, r: Any) -> PolicyRule:
    if not isinstance(r, dict):
        raise PolicyError("a rule is a table/object", rule=i)
    unknown = sorted(set(map(str, r)) - set(RULE_KEYS))
    if unknown:
        raise PolicyError("unknown field (known: %s)" % ", ".join(RULE_KEYS), rule=i,
                          field=unknown[0][:40])
    for k in ("from", "to"):
        if k not in r:
            raise PolicyError("missing", rule=i, field=k)
    try:
        sources = _selectors(r["from"], "from", MAX_SELECTORS)
        targets = _selectors(r["to"], "to", MAX_SELECTORS)
        proto = _proto(r.get("proto", "any"))
        action = r.get("action", "accept")
        if not isinstance(action, str) or action not in ACTIONS:
            raise PolicyError("must be \"accept\" or \"drop\", not %r" % (action,), field="action")
        ports_raw = r.get("ports", [])
        if not isinstance(ports_raw, list):
            ports_raw = [ports_raw]
        if len(ports_raw) > MAX_PORT_RANGES:
            raise PolicyError("at most %d ports or ranges" % MAX_PORT_RANGES, field="ports")
        ports = tuple(sorted({_port_range(p, "ports[%d]" % j) for j, p in enumerate(ports_raw)}))
        if ports and proto not in ("tcp", "udp", "any"):
            raise PolicyError("ports need proto \"tcp\", \"udp\" or \"any\" (TCP and UDP)",
                              field="ports")
        try:
            comment = _c.text_field(r.get("comment", ""), "comment", MAX_COMMENT)
        except FormatError as exc:
            raise PolicyError(exc.problem, field="comment") from None
    except PolicyError as exc:
        raise PolicyError(exc.problem, rule=i, field=exc.field) from None
    return PolicyRule(action, sources, targets, proto, ports, comment)


def _expansion(rule: PolicyRule, body: PolicyBody) -> int:
    sources = sum(1 + (len(body.group_members(s[6:])) if s.startswith("group:") else 0)
                  for s in rule.sources)
    protos = rule.protocols
    return sources * (2 if protos is None else len(protos)) * max(1, len(rule.ports))


def parse_body(obj: Any) -> PolicyBody:
    """Validate a policy (the source's parsed TOML/JSON); PolicyError naming the rule."""
    if not isinstance(obj, dict):
        raise PolicyError("a policy is a table/object")
    unknown = sorted(set(map(str, obj)) - {"default", "groups", "rule", "rules"})
    if unknown:
        raise PolicyError("unknown setting (known: default, groups, rule)",
                          field=unknown[0][:40])
    default = obj.get("default", "deny")
    if not isinstance(default, str) or default not in DEFAULTS:
        raise PolicyError("must be \"deny\" or \"allow\", not %r" % (default,), field="default")
    groups_raw = obj.get("groups", {})
    if not isinstance(groups_raw, dict):
        raise PolicyError("must be a table of group name -> members", field="groups")
    if len(groups_raw) > MAX_POLICY_GROUPS:
        raise PolicyError("at most %d groups" % MAX_POLICY_GROUPS, field="groups")
    groups = []
    for name in sorted(map(str, groups_raw)):
        where = "groups.%s" % name[:40]
        try:
            names.group(name, where)
        except FormatError as exc:
            raise PolicyError("group name %s" % exc.problem, field=where) from None
        groups.append((name, _selectors(groups_raw[name], where, MAX_GROUP_MEMBERS, True)))
    if "rule" in obj and "rules" in obj:
        raise PolicyError("give either \"rule\" or \"rules\", not both", field="rules")
    raw = obj.get("rule", obj.get("rules", []))
    if not isinstance(raw, list):
        raise PolicyError("must be a list of rules", field="rule")
    if len(raw) > MAX_RULES:
        raise PolicyError("%d rules; at most %d" % (len(raw), MAX_RULES), field="rule")
    body = PolicyBody(default, tuple(groups), tuple(_rule(i, r) for i, r in enumerate(raw)))
    total = 0
    for i, r in enumerate(body.rules):
        total += _expansion(r, body)
        if total > MAX_EXPANSION:
            raise PolicyError("the policy up to this rule compiles to more than %d firewall "
                              "rules on a member (sources x protocols x port ranges): merge "
                              "ports into ranges or sources into groups" % MAX_EXPANSION, rule=i)
    if "default" not in obj:          # last: a missing line, not a lockout by accident
        raise PolicyError("missing: say what no rule matches gets, default = \"deny\" or "
                          "\"allow\"", field="default")
    if len(canonical(body.to_doc())) > MAX_POLICY_SIZE - 1024:
        raise PolicyError("the signed policy would be larger than %d bytes" % MAX_POLICY_SIZE)
    return body


# --- sources with line numbers ----------------------------------------------------------------

def _json_positions(text: str) -> tuple:
    """Parse JSON strictly and note where each object starts (by id)."""
    starts: dict = {}
    decoder = _c.strict_decoder()
    plain = decoder.parse_object

    def parse_object(s_and_end, *args, **kw):
        obj, end = plain(s_and_end, *args, **kw)
        starts[id(obj)] = s_and_end[1] - 1
        return obj, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        obj = decoder.decode(text)
    except RecursionError:
        raise PolicyError("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise PolicyError("not valid JSON: %s" % exc.msg, line=exc.lineno) from None
    except ValueError as exc:          # duplicate keys, floats, NaN, long integers
        raise PolicyError("not valid JSON: %s" % exc) from None
    return obj, starts


def _key_line(lines: list, key: str, lo: int = 0, hi: Optional[int] = None) -> Optional[int]:
    """The first line (1-based) in lines[lo:hi] that sets ``key`` (TOML ``key =``,
    ``[key]``, ``[key.x]``; JSON ``"key":``)."""
    pat = re.compile(r'\s*("%s"\s*:|%s\s*=|\[\s*%s\s*[\].])' % ((re.escape(key),) * 3))
    for n in range(lo, len(lines) if hi is None else min(hi, len(lines))):
        if pat.match(lines[n]) or ('"%s"' % key in lines[n] and ":" in lines[n]):
            return n + 1
    return None


def _error_line(exc: PolicyError, lines: list, rule_starts: Optional[list]) -> Optional[int]:
    """The line to name for ``exc``: the line of the field inside the rule,
    else the rule's first line; for a top-level setting, the line setting it."""
    field_key = re.split(r"[\[.]", exc.field or "", maxsplit=1)[0]
    if exc.rule is not None:
        if rule_starts is None or exc.rule >= len(rule_starts) or rule_starts[exc.rule] is None:
            return None
        start = rule_starts[exc.rule] - 1
        nxt = [s for s in rule_starts[exc.rule + 1:] if s is not None]
        end = nxt[0] - 1 if nxt else None
        if field_key:
            found = _key_line(lines, field_key, start, end)
            if found is not None:
                return found
        return start + 1
    if exc.field:
        found = None
        if exc.field.startswith("groups."):
            found = _key_line(lines, exc.field.split(".", 1)[1].split("[", 1)[0])
        return found or _key_line(lines, field_key)
    return None


def parse_policy_source(text: Any, fmt: str = "auto") -> PolicyBody:
    """A policy file's text (TOML or JSON: ``fmt`` "toml", "json" or "auto",
    JSON when it starts with '{'); PolicyError naming the rule and line."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_SOURCE_SIZE:
            raise PolicyError("the file is %d bytes; at most %d" % (len(text), MAX_SOURCE_SIZE))
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError("the file is not UTF-8 (byte %d)" % exc.start) from None
    if not isinstance(text, str):
        raise PolicyError("a policy is text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_SIZE:
        raise PolicyError("the file is larger than %d bytes" % MAX_SOURCE_SIZE)
    if fmt == "auto":
        fmt = "json" if text.lstrip().startswith("{") else "toml"
    if fmt == "json":
        obj, starts = _json_positions(text)
        rule_starts = None
        if isinstance(obj, dict):
            rules = obj.get("rules", obj.get("rule"))
            if isinstance(rules, list):
                rule_starts = [text.count("\n", 0, starts[id(r)]) + 1 if id(r) in starts
                               else None for r in rules]
    elif fmt == "toml":
        try:
            obj = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError("not valid TOML: %s" % exc) from None
        except RecursionError:
            raise PolicyError("TOML nested too deeply") from None
        rule_starts = [n for n, line in enumerate(text.splitlines(), 1)
                       if re.match(r"\s*\[\[\s*rules?\s*\]\]", line)]
    else:
        raise ValueError("fmt must be auto, toml or json")
    try:
        return parse_body(obj)
    except PolicyError as exc:
        raise exc.at_line(_error_line(exc, text.splitlines(), rule_starts)) from None


# --- signing and verifying ---------------------------------------------------------------------

def sign_policy(body: PolicyBody, definition: Definition, admission: SigningKey, seq: int,
                now: float) -> Policy:
    """Sign ``body`` as policy number ``seq`` of the network (the directory, on ``policy set``)."""
    definition.admission_key(admission.public, now, WHAT)
    doc = sign_document(admission, POLICY_DOMAIN, {
        "v": VERSION, "net": definition.fingerprint, "seq": seq, "issued": int(now),
        **body.to_doc(), "iss": b64(admission.public)})
    return parse_policy(doc)


def parse_policy(raw: Any) -> Policy:
    """Form only (canonical, valid rules); :func:`verify_policy` checks the signature."""
    if isinstance(raw, dict):
        try:
            size = len(canonical(raw))
        except (TypeError, ValueError):
            raise FormatError("not JSON data", what=WHAT) from None
        if size > MAX_POLICY_SIZE:
            raise FormatError("%d bytes; at most %d" % (size, MAX_POLICY_SIZE), what=WHAT)
        doc = raw
    else:
        doc = strict_loads(raw, MAX_POLICY_SIZE, WHAT)
    try:
        object_fields(doc, SIGNED_FIELDS)
        if not _c.is_int(doc["v"]) or doc["v"] != VERSION:
            raise FormatError("version %r is not supported" % (doc["v"],), "v")
        net = fingerprint_field(doc["net"], "net")
        seq = int_field(doc["seq"], "seq", 1, SEQ_MAX)
        issued = int_field(doc["issued"], "issued", 0, TIME_MAX)
        issuer = bytes_field(doc["iss"], "iss", KEY_SIZE)
        sig = bytes_field(doc["sig"], "sig", SIG_SIZE)
        given = {k: doc[k] for k in BODY_KEYS}
        try:
            body = parse_body(given)
        except PolicyError as exc:
            raise FormatError(str(exc)) from None
        if canonical(body.to_doc()) != canonical(given):
            raise FormatError("the rules are not in canonical form")
    except FormatError as exc:
        raise exc.about(WHAT) from None
    return Policy(net, seq, issued, body, issuer, sig, doc)


def verify_policy(raw: Any, definition: Definition, now: float) -> Policy:
    """A policy signed by a listed, unexpired admission key of ``definition``, or Refused."""
    p = parse_policy(raw)
    if p.network != definition.fingerprint:
        raise Refused(Reason.WRONG_NETWORK, WHAT, definition.name, "it is for network %s"
                      % p.network)
    definition.admission_key(p.issuer, now, WHAT)
    if not verify_document(p.issuer, POLICY_DOMAIN, p.doc, p.sig):
        raise Refused(Reason.BAD_SIGNATURE, WHAT, definition.name)
    return p


def check_newer(current: Optional[Policy], candidate: Policy, definition: Definition) -> None:
    """Refused(STALE) unless ``candidate`` replaces ``current`` (a higher seq)."""
    if current is not None and candidate.seq <= current.seq:
        raise Refused(Reason.STALE, WHAT, definition.name, "seq %d, and seq %d is in force"
                      % (candidate.seq, current.seq))


# --- compiling for one member ------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """Who a node is to the policy: its certificate's name, key and groups
    (a node without a certificate: its configured name, key and ``[interface]
    groups``).  A Certificate serves as well."""

    name: str
    key: bytes
    groups: tuple = ()


def _matches(selector: str, who: Any, body: PolicyBody) -> bool:
    """Does ``selector`` name ``who`` (anything with .name, .key, .groups)?"""
    if selector == "*":
        return True
    kind, _, arg = selector.partition(":")
    if kind == "group":
        return arg in who.groups or any(_matches(s, who, body)
                                        for s in body.group_members(arg))
    if kind == "member":
        return who.name == arg
    return b64(who.key) == arg


@dataclass(frozen=True)
class InboundRule:
    """One policy rule as it applies to traffic into this member.

    The sources stay symbolic: ``src_groups`` are certificate groups,
    ``src_names``/``src_keys`` named members (the policy groups are expanded
    into these), so who is in which group is looked up when the firewall
    compiles, not now."""

    index: int                           # the rule's number in the policy, from 0
    action: str                          # accept or drop
    protocols: Optional[frozenset]       # IP protocol numbers; None = any
    ports: tuple                         # ((lo, hi), ...) destination ports; () = any
    src_any: bool
    src_groups: frozenset
    src_names: frozenset
    src_keys: frozenset
    comment: str = ""

    def source_matches(self, who: Any) -> bool:
        return (self.src_any or bool(self.src_groups.intersection(who.groups))
                or who.name in self.src_names or bytes(who.key) in self.src_keys)

    def matches(self, who: Any, proto: int, port: Optional[int] = None) -> bool:
        if self.protocols is not None and proto not in self.protocols:
            return False
        if self.ports:
            if proto not in PORT_PROTOCOLS or port is None:
                return False
            if not any(lo <= port <= hi for lo, hi in self.ports):
                return False
        return self.source_matches(who)


@dataclass(frozen=True)
class InboundRules:
    """What one member's firewall must do with traffic from other members."""

    default: str                         # "accept" or "drop" when no rule matches
    rules: tuple                         # (InboundRule, ...) in policy order
    policy: Optional[Policy] = None      # where they come from (None: an unsigned body)

    def decide(self, who: Any, proto: int, port: Optional[int] = None) -> tuple:
        """(action, rule index) for a packet from ``who``; index -1 = the default."""
        for r in self.rules:
            if r.matches(who, proto, port):
                return r.action, r.index
        return self.default, -1


def compile_inbound(policy: Any, me: Any) -> InboundRules:
    """The inbound rules of the member ``me`` (anything with .name, .key,
    .groups: its certificate) under ``policy`` (a Policy or a PolicyBody)."""
    body = policy.body if isinstance(policy, Policy) else policy
    out = []
    for i, rule in enumerate(body.rules):
        if not any(_matches(t, me, body) for t in rule.targets):
            continue
        groups, names_, keys, src_any = set(), set(), set(), False
        for s in rule.sources:
            kind, _, arg = s.partition(":")
            if s == "*":
                src_any = True
            elif kind == "group":
                groups.add(arg)
                for m in body.group_members(arg):
                    mk, _, ma = m.partition(":")
                    if mk == "member":
                        names_.add(ma)
                    else:
                        keys.add(base64.b64decode(ma))
            elif kind == "member":
                names_.add(arg)
            else:
                keys.add(base64.b64decode(arg))
        out.append(InboundRule(i, rule.action, rule.protocols, rule.ports, src_any,
                               frozenset(groups), frozenset(names_), frozenset(keys),
                               rule.comment))
    return InboundRules("accept" if body.default == "allow" else "drop", tuple(out),
                        policy if isinstance(policy, Policy) else None)


def decide(policy: Any, src: Any, dst: Any, proto: int, port: Optional[int] = None) -> tuple:
    """``phantom network policy test SRC DST PORT``: (action, rule index) for
    traffic from ``src`` to ``dst`` (certificates, or anything with .name,
    .key, .groups)."""
    return compile_inbound(policy, dst).decide(src, proto, port)


def referenced_groups(body: PolicyBody) -> frozenset:
    """Every group a rule names (to warn about one no member carries)."""
    out = set()
    for r in body.rules:
        for s in r.sources + r.targets:
            if s.startswith("group:"):
                out.add(s[6:])
    return frozenset(out)
