"""The network policy on a member (issue 21): the signed policy's inbound
rules for this node, merged with the local ``[firewall]`` into the flat
tables both data paths run.

How the two combine (the local table can only narrow the policy):

1. the local ``direction = "out"`` rules and ``default_out``: as written (the
   policy says nothing about what leaves this node);
2. the local inbound ``drop`` and ``reject`` rules, in their order: first;
3. the policy's rules that apply to this node (a ``to`` selector names it),
   in the policy's order, first match wins; their sources stay symbolic
   (``src_group``, a member's name or key as ``peer``), so a change of who
   is in which group recompiles in place like any group rule;
4. the default: the policy's (``deny`` -> drop), unless the local
   ``default_in`` is ``drop`` or ``reject``, which then wins.

A local inbound ``accept`` rule cannot widen the policy: while a policy is
in force it is left out, with a warning.  The policy says who may *start*
a flow into a member, so while one is in force the firewall is stateful
(replies to flows this node started come back) unless the local table says
``stateful = false`` explicitly (then replies need policy rules of their
own).  Cost: the fast path hands the packets of stateful tables to the
Python classifier (conntrack lives there), as for any stateful ``[firewall]``.
A policy rule for an IP protocol the local
protocol policy drops (``allow_protocols``) is left out with a warning: the
protocol is dropped before rules anyway.

The member daemon's follower calls :func:`apply_policy` for an
``{"op": "policy"}`` event of the member stream (and for the snapshot's
``policy``), :func:`load_cached_policy` then :func:`apply_policy` at start
(state_dir/network/policy.json), :func:`set_identity` when its own
certificate changes; and, after adding or removing members through the peer
door, ``FirewallSlot.regroup`` when the policy names members by name or key
(``member:NAME``/``key:K`` are resolved to peers when the rules compile; a
group change recompiles by itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..dataplane.firewall import PROTO_NAMES, Action, Direction, RuleSet
from ..network.canonical import b64
from ..network.errors import NetworkError
from ..network.keys import atomic_write, read_limited
from ..network.policy import (MAX_POLICY_SIZE, Identity, InboundRules, Policy,  # noqa: F401
                              check_newer, compile_inbound, verify_policy)

log = logging.getLogger("phantom.daemon")

CACHE = Path("network") / "policy.json"
_PROTO_WORDS = {v: k for k, v in PROTO_NAMES.items() if k in ("tcp", "udp", "icmp", "icmpv6")}


@dataclass(frozen=True)
class Merged:
    """The firewall section to compile, and where each of its rules came from:
    ``origins[i]`` is ("local", index in the local table) or ("policy", index
    in the policy, from 0)."""

    section: dict
    origins: tuple
    ignored: tuple                       # local rule indexes left out (inbound accepts)
    warnings: tuple


def _sources(rule, names: Mapping, warnings: list) -> list:
    if rule.src_any:
        return [{}]
    out = [{"src_group": g} for g in sorted(rule.src_groups)]
    for ref, what in ([(n, "member %r" % n) for n in sorted(rule.src_names)]
                      + [(b64(k), "key %s" % b64(k)) for k in sorted(rule.src_keys)]):
        if ref in names:
            out.append({"peer": ref})
        else:
            warnings.append("policy rule %d: %s is not a peer of this node (yet): that source "
                            "matches nothing here" % (rule.index + 1, what))
    return out


def merge(section: Mapping, local: RuleSet, inbound: InboundRules, names: Mapping) -> Merged:
    """The local ``[firewall]`` ``section`` (already parsed as ``local``)
    combined with ``inbound`` as the module doc says."""
    section = dict(section or {})
    raw = list(section.pop("rule", section.pop("rules", [])) or [])
    warnings: list = []
    rules, origins, ignored = [], [], []
    for i, (r, parsed) in enumerate(zip(raw, local.rules)):
        if parsed.direction is Direction.IN and parsed.action is Action.ACCEPT:
            ignored.append(i)
            warnings.append("firewall.rule[%d]: an inbound accept rule cannot widen the network "
                            "policy: left out while a policy is in force" % i)
            continue
        rules.append(r)
        origins.append(("local", i))
    for pr in inbound.rules:
        protos = [None] if pr.protocols is None else sorted(pr.protocols)
        kept = [p for p in protos if p is None or p in local.protocols]
        for p in protos:
            if p not in kept:
                warnings.append("policy rule %d: protocol %d is dropped by this node's protocol "
                                "policy (firewall.allow_protocols)" % (pr.index + 1, p))
        ports = list(pr.ports) or [None]
        for src in _sources(pr, names, warnings):
            for p in kept:
                for port in ports:
                    r = {"direction": "in", "action": pr.action,
                         "proto": "any" if p is None else _PROTO_WORDS.get(p, p),
                         "comment": "policy rule %d" % (pr.index + 1), **src}
                    if port is not None:
                        r["dst_port"] = "%d-%d" % port
                    rules.append(r)
                    origins.append(("policy", pr.index))
    local_default = local.default_in.name.lower()
    section["default_in"] = local_default if local_default != "accept" else inbound.default
    section["stateful"] = bool(section.get("stateful", True))
    section["rule"] = rules
    return Merged(section, tuple(origins), tuple(ignored), tuple(warnings))


def describe(obj: dict, local: RuleSet, merged: Merged, inbound: InboundRules) -> dict:
    """GET /firewall with a policy in force: ``obj`` (the compiled tables'
    description) turned back into the local table (its rules with their
    hits; what PUT /firewall takes) plus ``policy``: the policy's rules with
    hit counts summed over what each compiled to."""
    hits = [r.get("hits", 0) for r in obj.get("rules", [])]
    local_hits = [0] * len(local.rules)
    policy_hits: dict = {}
    for n, (kind, i) in enumerate(merged.origins):
        h = hits[n] if n < len(hits) else 0
        if kind == "local":
            local_hits[i] += h
        else:
            policy_hits[i] = policy_hits.get(i, 0) + h
    local_obj = local.to_obj()
    for i, r in enumerate(local_obj["rules"]):
        r["hits"] = local_hits[i]
    out = dict(obj)
    out.update({k: local_obj[k] for k in ("rules", "default_in")})
    out["stateful"] = merged.section["stateful"]          # what runs (see the module doc)
    p = inbound.policy
    applies = {r.index for r in inbound.rules}
    rules = []
    if p is not None:
        for i, r in enumerate(p.body.rules):
            d = r.to_doc()
            d.update({"index": i + 1, "applies": i in applies, "hits": policy_hits.get(i, 0)})
            rules.append(d)
    out["policy"] = {"seq": p.seq if p else 0, "issuer": b64(p.issuer) if p else None,
                     "issued": p.issued if p else None,
                     "default": "deny" if inbound.default == "drop" else "allow",
                     "effective_default_in": merged.section["default_in"],
                     "rules": rules, "ignored_local_rules": list(merged.ignored)}
    out["warnings"] = list(obj.get("warnings", [])) + list(merged.warnings)
    return out


# --- what the member daemon calls ------------------------------------------------------------

def _still_valid(policy: Optional[Policy], definition: Any, now: float) -> Optional[Policy]:
    """``policy`` if its issuer is still a listed, unexpired admission key of
    ``definition``; None otherwise: after a rotation, a policy a retired key
    signed (a thief's, with whatever seq) no longer holds the seq back."""
    if policy is None:
        return None
    try:
        definition.admission_key(policy.issuer, now, "policy")
    except NetworkError:
        return None
    return policy


def apply_policy(firewall: Any, signed_doc: Any, definition: Any, me: Identity, now: float,
                 state_dir: Any = None) -> Policy:
    """An ``{"op": "policy"}`` event: verify ``signed_doc`` against the
    network ``definition``, refuse one not newer than the policy in force
    (Refused STALE; a policy in force whose issuer the definition no longer
    lists holds nothing back), compile this node's inbound rules and swap them into
    ``firewall`` (a :class:`phantom.node.firewall.FirewallSlot`) in place;
    cache it in ``state_dir``/network/policy.json.  On any refusal nothing
    changes (NetworkError, or FirewallError when it does not compile here)."""
    policy = verify_policy(signed_doc, definition, now)
    check_newer(_still_valid(firewall.policy, definition, now), policy, definition)
    firewall.set_policy(compile_inbound(policy, me))
    if state_dir is not None:
        path = Path(state_dir) / CACHE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, policy.encode() + b"\n", mode=0o644)
    log.info("network policy seq %d in force (%d rules, %d apply to this node, default %s)",
             policy.seq, len(policy.body.rules), len(firewall.inbound.rules),
             policy.body.default)
    return policy


def set_identity(firewall: Any, me: Identity) -> None:
    """This node's certificate changed (a renewal with other groups, a
    rename): the policy in force compiled again for ``me``, in place."""
    if firewall.policy is not None:
        firewall.set_policy(compile_inbound(firewall.policy, me))


def load_cached_policy(state_dir: Any, definition: Any, now: float) -> Optional[Policy]:
    """The policy cached in ``state_dir`` (None: none, or it no longer
    verifies -- logged -- so the directory's copy is awaited)."""
    path = Path(state_dir) / CACHE
    if not path.exists():
        return None
    try:
        return verify_policy(read_limited(path, MAX_POLICY_SIZE + 1), definition, now)
    except (NetworkError, OSError) as exc:
        log.warning("the cached network policy %s is not used: %s", path, exc)
        return None
