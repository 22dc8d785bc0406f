"""The firewall in force: the ``[firewall]`` rules compiled against the
peers' names (the peer table's name table, peers.py), the peers' groups (the
peer table's group map) and this node's own groups (``[interface] groups``),
and installed in the data path, which swaps its tables in one step.
Replaced by ``PUT /firewall`` (controller.py), by a reload whose rules, peer
names or groups changed (reload.py), and recompiled in place when who is in
which group changes or a peer a rule names comes or goes
(:meth:`FirewallSlot.regroup`, the peer table's ``on_groups`` and
``named_by_rules``); connection tracking and drop counters carry over.

A rule naming a peer (``peer = "n3"`` or a key) that no peer is yet -- a
member not learnt yet, a peer the directory admits later -- is not a refusal
to start: it is logged once as a warning (the rule, and its line in the
config file when known), matches no packet, shows ``waiting`` in GET
/firewall, and comes into force when a peer of that name is added (the
recompile above); when that peer goes, it waits again.

With a network policy in force (:meth:`FirewallSlot.set_policy`,
node/policy.py) what is compiled is the local table merged with the policy's
inbound rules for this node; the local table stays what PUT /firewall and a
reload replace, and GET /firewall shows it with the policy beside it."""

from __future__ import annotations

import logging
from typing import Mapping, Optional

from ..dataplane import firewall
from ..errors import ConfigError
from . import policy as node_policy

log = logging.getLogger("phantom.daemon")


class FirewallSlot:
    def __init__(self, mode, section: dict, names: Mapping, groups: Optional[Mapping] = None,
                 own_groups=(), config_path=None):
        """Compile ``section`` for a start: bad rules are a ConfigError
        (``firewall``) before anything opens.  ``config_path``: the file the
        rules come from (warnings name a rule's line in it)."""
        self.mode = mode
        self.config_path = config_path
        self.peer_refs: frozenset = frozenset()   # the peers the rules in force name (name or key)
        self._warned: frozenset = frozenset()     # the warnings of the rules in force, logged once
        self._logged: frozenset = frozenset()     # every warning logged so far
        self.dp = None                    # the data path, attached by startup.build()
        self.section = section
        self.own_groups = tuple(own_groups)
        self.inbound = None               # the network policy's rules for this node (or None)
        self._names, self._groups = names, groups
        self._local = self._merged = None
        try:
            self.current: Optional[firewall.Firewall] = firewall.build(
                section, names, mode, groups=groups, own_groups=self.own_groups)
        except firewall.FirewallError as exc:
            raise ConfigError("firewall", str(exc)) from None
        self._installed(self.current)

    def attach(self, dp) -> None:
        self.dp = dp

    def replace(self, section: dict, names: Mapping, groups: Optional[Mapping] = None,
                own_groups=None) -> "firewall.Firewall":
        """Compile ``section`` (FirewallError: nothing changed) and install it.
        ``own_groups`` None: this node's groups stay as they are."""
        own = self.own_groups if own_groups is None else tuple(own_groups)
        new = self._build(section, names, groups, own, self.inbound)
        self.current, self.section, self.own_groups = new, section, own
        self._names, self._groups = names, groups
        if self.dp is not None:
            self.dp.set_firewall(new)
        self._installed(new)
        return new

    def _build(self, section, names, groups, own, inbound) -> "firewall.Firewall":
        """Compile (and install into the Firewall in force) ``section``, merged
        with ``inbound`` when a policy is in force; FirewallError: nothing changed.
        A bad local rule is named by its place in the local table."""
        if inbound is None:
            new = firewall.build(section, names, self.mode, previous=self.current,
                                 groups=groups, own_groups=own)
            self._local = self._merged = None
            return new
        local = firewall.parse_rules(section, names, groups, own)
        merged = node_policy.merge(section, local, inbound, names)
        new = firewall.build(merged.section, names, self.mode, previous=self.current,
                             groups=groups, own_groups=own)
        before = set(self._merged.warnings) if self._merged is not None else set()
        self._local, self._merged = local, merged
        for w in merged.warnings:
            if w not in before:               # once, not at every recompile (group changes)
                log.warning("%s", w)
        return new

    @property
    def policy(self):
        """The signed policy in force (a phantom.network.policy.Policy) or None."""
        return self.inbound.policy if self.inbound is not None else None

    def set_policy(self, inbound) -> "firewall.Firewall":
        """Put the network policy's rules for this node (``InboundRules``;
        None: no policy) in force: the local table merged with them,
        compiled against the peers and groups of the last compile, swapped in
        place (conntrack carries over: flows still allowed keep flowing).
        FirewallError: nothing changed."""
        new = self._build(self.section, self._names, self._groups, self.own_groups, inbound)
        self.current, self.inbound = new, inbound
        if self.dp is not None:
            self.dp.set_firewall(new)
        self._installed(new)
        return new

    def regroup(self, names: Mapping, groups: Mapping) -> None:
        """Who is in which group changed, or a peer a rule names came or
        went: the rules in force compiled again against ``names`` and
        ``groups`` and installed in place (no tunnel is touched; flows the
        rules still allow keep flowing).  Should they no longer compile, the
        old tables stay and the error is logged."""
        try:
            new = self.replace(self.section, names, groups)
        except firewall.FirewallError as exc:
            log.error("firewall: the peers or groups changed, but the rules no longer compile "
                      "(%s); the rules in force stay", exc)
            return
        log.info("firewall: peers or groups changed: rules recompiled (%d rules)",
                 len(new.tables.ruleset.rules) if new.tables.ruleset else 0)

    def _installed(self, fw) -> None:
        """After a compile: remember which peers the rules name (the peer
        table recompiles when one comes or goes), log each warning once
        (not at every recompile), and say when a waiting rule's peer came."""
        rs = fw.tables.ruleset if fw is not None else None
        rules = rs.rules if rs is not None else ()
        self.peer_refs = frozenset(r.peer for r in rules if r.peer is not None)
        warnings = frozenset(rs.warnings if rs is not None else ())
        lines = None
        for w in (rs.warnings if rs is not None else ()):
            if w in self._warned:
                continue
            if w in self._logged:           # said before (its peer came and went): not again
                log.info("%s (again)", w)
                continue
            if lines is None:
                lines = _rule_lines(self.config_path)
            line = _line_of(w, lines) if self.inbound is None else None   # merged: other indexes
            log.warning("%s%s", w, " (%s line %d)" % (self.config_path, line) if line else "")
        for w in self._warned - warnings:
            if ".peer: no peer " in w:
                log.info("%s: its peer is here now: the rule is in force", w.split(": ", 1)[0])
        self._warned = warnings
        if len(self._logged) < 4096:        # bounded: rules are at most MAX_RULES
            self._logged |= warnings

    def describe(self) -> dict:
        if self.current is None:
            return {"rules": [], "drops": {}}
        obj = self.current.describe()
        if self.inbound is not None and self._merged is not None:
            obj = node_policy.describe(obj, self._local, self._merged, self.inbound)
        obj["own_groups"] = list(self.own_groups)
        return obj


def _rule_lines(path) -> list:
    """The line of each ``[[firewall.rule]]`` header in the config file at
    ``path``, in order (rule i starts at the i-th); [] when unknown."""
    if path is None:
        return []
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError):
        return []
    return [n for n, line in enumerate(text.splitlines(), 1)
            if line.strip().replace(" ", "").startswith("[[firewall.rule]]")]


def _line_of(warning: str, lines: list) -> Optional[int]:
    """The config line of the rule a ``firewall.rule[i]...`` warning names."""
    if not warning.startswith("firewall.rule["):
        return None
    try:
        i = int(warning[len("firewall.rule["):].split("]", 1)[0])
    except ValueError:
        return None
    return lines[i] if 0 <= i < len(lines) else None
