"""The firewall in force: the ``[firewall]`` rules compiled against the
peers' names (the peer table's name table, peers.py) and installed in the
data path, which swaps its tables in one step.  Replaced by ``PUT /firewall``
(controller.py) and by a reload whose rules or peer names changed
(reload.py); connection tracking and drop counters carry over."""

from __future__ import annotations

from typing import Mapping, Optional

from ..dataplane import firewall
from ..errors import ConfigError


class FirewallSlot:
    def __init__(self, mode, section: dict, names: Mapping):
        """Compile ``section`` for a start: bad rules are a ConfigError
        (``firewall``) before anything opens."""
        self.mode = mode
        self.dp = None                    # the data path, attached by startup.build()
        try:
            self.current: Optional[firewall.Firewall] = firewall.build(section, names, mode)
        except firewall.FirewallError as exc:
            raise ConfigError("firewall", str(exc)) from None

    def attach(self, dp) -> None:
        self.dp = dp

    def replace(self, section: dict, names: Mapping) -> "firewall.Firewall":
        """Compile ``section`` (FirewallError: nothing changed) and install it."""
        new = firewall.build(section, names, self.mode, previous=self.current)
        self.current = new
        if self.dp is not None:
            self.dp.set_firewall(new)
        return new

    def describe(self) -> dict:
        if self.current is None:
            return {"rules": [], "drops": {}}
        return self.current.describe()
