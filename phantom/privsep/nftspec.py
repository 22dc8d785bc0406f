"""The daemon's nftables table as a small validated structure: sans-IO.

phantomd never sends nftables syntax to the helper.  It sends a structure
with base chains and rules made of a few match terms and one verdict;
:func:`validate` checks it (types, ranges, sizes, which verdict goes in
which chain), and :func:`to_nft` turns it into the JSON batch that
``nft -j -f -`` applies as **one transaction** that replaces the table
``inet phantom_<device>`` whole (``add table; delete table; add table;
chains; rules``): another table, another family, a named set, a jump, a
goto, a map or a raw payload expression cannot be written in it.

A table::

    {"chains": [{"name": "out", "type": "filter", "hook": "output",
                 "priority": 0, "policy": "accept"}],
     "rules": [{"chain": "out",
                "match": [{"field": "oifname", "op": "!=", "value": "phantom0"},
                          {"field": "daddr", "value": ["0.0.0.0/0"]}],
                "verdict": "drop", "counter": true}]}

Match fields (``op`` is ``==``, the default, or ``!=``): ``iifname`` and
``oifname`` (a device name or a list), ``saddr`` and ``daddr`` (a prefix or
a list of prefixes of one family), ``nfproto`` (``ipv4``/``ipv6``),
``l4proto`` (``tcp``, ``udp``, ``icmp``, ``ipv6-icmp``), ``sport`` and
``dport`` (a port, a list, or ``[low, high]`` with ``"range": true``; only after
an ``l4proto`` of tcp or udp), ``mark`` (a 32-bit value) and ``ct_state``
(a list of ``established``, ``related``, ``new``, ``invalid``; ``==`` only).
Verdicts: ``accept``, ``drop``, ``reject`` (filter chains),
``masquerade`` (nat chains on ``postrouting``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .refusal import Refused, valid_ifname
from .refusal import int_in as _int, short as _short

MAX_CHAINS = 8
MAX_RULES = 256
MAX_TERMS = 8
MAX_VALUES = 64

_CHAIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
CHAIN_TYPES = {"filter": HOOKS, "nat": ("prerouting", "input", "output", "postrouting"),
               "route": ("output",)}
VERDICTS = ("accept", "drop", "reject", "masquerade")
FIELDS = ("iifname", "oifname", "saddr", "daddr", "nfproto", "l4proto", "sport", "dport", "mark",
          "ct_state")
L4PROTOS = ("tcp", "udp", "icmp", "ipv6-icmp")
CT_STATES = ("established", "related", "new", "invalid")


def _keys(d: Any, allowed: set, required: set, what: str) -> dict:
    if not isinstance(d, dict):
        raise Refused("bad_value", "%s: not an object" % what)
    unknown = sorted(k for k in d if k not in allowed)
    if unknown:
        raise Refused("unknown_field", "%s: unknown field %s (allowed: %s)"
                      % (what, _short(unknown[0]), ", ".join(sorted(allowed))))
    missing = sorted(k for k in required if k not in d)
    if missing:
        raise Refused("malformed", "%s: missing field %r" % (what, missing[0]))
    return d


def _list(v: Any, what: str, lo: int = 1, hi: int = MAX_VALUES) -> list:
    items = v if isinstance(v, list) else [v]
    if not lo <= len(items) <= hi:
        raise Refused("bad_value", "%s: %d to %d values" % (what, lo, hi))
    return items


def _chain(c: Any, i: int) -> dict:
    what = "chains[%d]" % i
    _keys(c, {"name", "type", "hook", "priority", "policy"}, {"name", "type", "hook"}, what)
    if not isinstance(c["name"], str) or not _CHAIN_NAME.match(c["name"]):
        raise Refused("bad_value", "%s.name: %s is not a chain name ([a-z][a-z0-9_]*, up to 32)"
                      % (what, _short(c["name"])))
    if c["type"] not in CHAIN_TYPES:
        raise Refused("bad_value", "%s.type: %s (choose %s)" % (what, _short(c["type"]), ", ".join(CHAIN_TYPES)))
    if c["hook"] not in CHAIN_TYPES[c["type"]]:
        raise Refused("bad_value", "%s.hook: %s is not a hook of a %s chain (%s)"
                      % (what, _short(c["hook"]), c["type"], ", ".join(CHAIN_TYPES[c["type"]])))
    policy = c.get("policy", "accept")
    if policy not in ("accept", "drop") or (c["type"] != "filter" and policy != "accept"):
        raise Refused("bad_value", "%s.policy: %s (accept, or drop for a filter chain)" % (what, _short(policy)))
    return {"name": c["name"], "type": c["type"], "hook": c["hook"],
            "priority": _int(c.get("priority", 0), -400, 400, what + ".priority"), "policy": policy}


def _prefixes(v: Any, what: str) -> tuple:
    nets = []
    for item in _list(v, what):
        if not isinstance(item, str) or len(item) > 64:
            raise Refused("bad_value", "%s: %s is not a prefix" % (what, _short(item)))
        try:
            nets.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise Refused("bad_value", "%s: %s is not a prefix (no host bits set)" % (what, _short(item))) from None
    if len({n.version for n in nets}) != 1:
        raise Refused("bad_value", "%s: IPv4 and IPv6 prefixes in one term (make two rules)" % what)
    return tuple(nets)


def _ports(v: Any, what: str, is_range: bool) -> tuple:
    if is_range:
        if not isinstance(v, list) or len(v) != 2:
            raise Refused("bad_value", "%s: a range is [low, high]" % what)
        lo, hi = (_int(p, 0, 65535, what) for p in v)
        if lo > hi:
            raise Refused("bad_value", "%s: range %d-%d is empty" % (what, lo, hi))
        return (lo, hi)
    return tuple(_int(p, 0, 65535, what) for p in _list(v, what))


def _term(t: Any, what: str, l4: list) -> dict:
    _keys(t, {"field", "op", "value", "range"}, {"field", "value"}, what)
    f, op = t["field"], t.get("op", "==")
    if f not in FIELDS:
        raise Refused("bad_value", "%s.field: %s (choose %s)" % (what, _short(f), ", ".join(FIELDS)))
    if op not in ("==", "!="):
        raise Refused("bad_value", "%s.op: %s (== or !=)" % (what, _short(op)))
    if "range" in t and f not in ("sport", "dport"):
        raise Refused("bad_value", "%s.range: only for sport and dport" % what)
    v = t["value"]
    if f in ("iifname", "oifname"):
        names = _list(v, what)
        for n in names:
            if not valid_ifname(n):
                raise Refused("bad_value", "%s: %s is not a device name" % (what, _short(n)))
        value: Any = tuple(names)
    elif f in ("saddr", "daddr"):
        value = _prefixes(v, what)
    elif f == "nfproto":
        if v not in ("ipv4", "ipv6"):
            raise Refused("bad_value", "%s: %s (ipv4 or ipv6)" % (what, _short(v)))
        value = v
    elif f == "l4proto":
        names = _list(v, what)
        if any(n not in L4PROTOS for n in names):
            raise Refused("bad_value", "%s: %s (choose %s)" % (what, _short(v), ", ".join(L4PROTOS)))
        value = tuple(names)
        if op == "==":
            l4.extend(names)
    elif f in ("sport", "dport"):
        if not l4 or any(p not in ("tcp", "udp") for p in l4):
            raise Refused("bad_value", "%s: a port needs an earlier l4proto term of tcp or udp" % what)
        value = _ports(v, what, t.get("range", False) is True)
    elif f == "mark":
        value = _int(v, 0, 2 ** 32 - 1, what)
    else:                                                   # ct_state
        states = _list(v, what, 1, len(CT_STATES))
        if any(s not in CT_STATES for s in states) or len(set(states)) != len(states):
            raise Refused("bad_value", "%s: %s (a list of %s)" % (what, _short(v), ", ".join(CT_STATES)))
        if op != "==":
            raise Refused("bad_value", "%s: ct_state takes == only" % what)
        value = tuple(states)
    return {"field": f, "op": op, "value": value, "range": t.get("range", False) is True}


def _rule(r: Any, i: int, chains: dict) -> dict:
    what = "rules[%d]" % i
    _keys(r, {"chain", "match", "verdict", "counter"}, {"chain", "verdict"}, what)
    chain = chains.get(r["chain"]) if isinstance(r["chain"], str) else None
    if chain is None:
        raise Refused("bad_value", "%s.chain: %s is not a chain of this table" % (what, _short(r["chain"])))
    verdict = r["verdict"]
    if verdict not in VERDICTS:
        raise Refused("bad_value", "%s.verdict: %s (choose %s)" % (what, _short(verdict), ", ".join(VERDICTS)))
    if verdict == "masquerade" and (chain["type"] != "nat" or chain["hook"] != "postrouting"):
        raise Refused("bad_value", "%s: masquerade goes in a nat chain on postrouting" % what)
    if verdict != "masquerade" and chain["type"] == "nat" and verdict != "accept":
        raise Refused("bad_value", "%s: a nat chain takes masquerade or accept" % what)
    if verdict == "reject" and chain["type"] != "filter":
        raise Refused("bad_value", "%s: reject goes in a filter chain" % what)
    match = r.get("match", [])
    if not isinstance(match, list) or len(match) > MAX_TERMS:
        raise Refused("bad_value", "%s.match: a list of at most %d terms" % (what, MAX_TERMS))
    l4: list = []
    terms = [_term(t, "%s.match[%d]" % (what, j), l4) for j, t in enumerate(match)]
    counter = r.get("counter", False)
    if not isinstance(counter, bool):
        raise Refused("bad_value", "%s.counter: true or false" % what)
    return {"chain": r["chain"], "match": terms, "verdict": verdict, "counter": counter}


def validate(spec: Any, allow: Any) -> dict:
    """A table from the daemon -> its checked form, or Refused (``allow``: the
    helper's protocol.Allowlist)."""
    _keys(spec, {"chains", "rules"}, {"chains"}, "table")
    chains_in, rules_in = spec["chains"], spec.get("rules", [])
    if not isinstance(chains_in, list) or not 1 <= len(chains_in) <= MAX_CHAINS:
        raise Refused("bad_value", "table.chains: a list of 1 to %d chains" % MAX_CHAINS)
    if not isinstance(rules_in, list) or len(rules_in) > MAX_RULES:
        raise Refused("bad_value", "table.rules: a list of at most %d rules" % MAX_RULES)
    chains: dict = {}
    for i, c in enumerate(chains_in):
        c = _chain(c, i)
        if c["name"] in chains:
            raise Refused("bad_value", "chains[%d].name: %r twice" % (i, c["name"]))
        chains[c["name"]] = c
    rules = [_rule(r, i, chains) for i, r in enumerate(rules_in)]
    return {"chains": list(chains.values()), "rules": rules}


# --- to nft's JSON --------------------------------------------------------------------------------
def _addr_value(nets: tuple):
    def one(n):
        if n.prefixlen == n.max_prefixlen:
            return str(n.network_address)
        return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}
    return one(nets[0]) if len(nets) == 1 else {"set": [one(n) for n in nets]}


def _expr(t: dict) -> dict:
    f, v = t["field"], t["value"]
    if f in ("iifname", "oifname"):
        left, right = {"meta": {"key": f}}, (v[0] if len(v) == 1 else {"set": list(v)})
    elif f in ("saddr", "daddr"):
        left = {"payload": {"protocol": "ip" if v[0].version == 4 else "ip6", "field": f}}
        right = _addr_value(v)
    elif f in ("nfproto", "mark"):
        left, right = {"meta": {"key": f}}, v
    elif f == "l4proto":
        left, right = {"meta": {"key": "l4proto"}}, (v[0] if len(v) == 1 else {"set": list(v)})
    elif f in ("sport", "dport"):
        left = {"payload": {"protocol": "th", "field": f}}
        right = {"range": list(v)} if t["range"] else (v[0] if len(v) == 1 else {"set": list(v)})
    else:
        return {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": list(v)}}
    return {"match": {"op": t["op"], "left": left, "right": right}}


_VERDICT = {"accept": {"accept": None}, "drop": {"drop": None}, "masquerade": {"masquerade": None},
            "reject": {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}}


def table_ref(name: str) -> dict:
    return {"table": {"family": "inet", "name": name}}


def to_nft(spec: dict, name: str) -> dict:
    """The batch that replaces table ``inet NAME`` with ``spec`` in one transaction."""
    cmds: list = [{"add": table_ref(name)}, {"delete": table_ref(name)}, {"add": table_ref(name)}]
    for c in spec["chains"]:
        cmds.append({"add": {"chain": {"family": "inet", "table": name, "name": c["name"], "type": c["type"],
                                       "hook": c["hook"], "prio": c["priority"], "policy": c["policy"]}}})
    for r in spec["rules"]:
        expr = [_expr(t) for t in r["match"]]
        if r["counter"]:
            expr.append({"counter": None})
        expr.append(dict(_VERDICT[r["verdict"]]))
        cmds.append({"add": {"rule": {"family": "inet", "table": name, "chain": r["chain"], "expr": expr}}})
    return {"nftables": cmds}


def delete_batch(name: str) -> dict:
    """Remove table ``inet NAME`` whether or not it exists (one transaction)."""
    return {"nftables": [{"add": table_ref(name)}, {"delete": table_ref(name)}]}
