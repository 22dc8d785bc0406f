"""The name service in the node (``[dns]``, phantom/dns/): our own name and
every peer's, with their addresses, answered over DNS on the tunnel's
addresses (and registered with systemd-resolved as split DNS).

:class:`NameLink` holds the service and feeds it: at start, after a reload,
and on the executor's tick when the peers changed (opened, closed,
admitted: within a second), as an observer of the executor (executor.py).
"""

from __future__ import annotations

from typing import Optional

from .executor import Observer


class NameLink(Observer):
    def __init__(self, settings, engine):
        from ..dns.service import NameService
        self.s = settings
        self.engine = engine
        # a bad [dns] section is a ConfigError here, before anything opens (exit 2)
        self.service = NameService(settings.dns, settings.name, settings.addresses)

    # ------------------------------------------------------------ lifetime
    def bind(self, device: Optional[str]) -> None:
        """Root only (open_privileged): port 53, and resolved's split DNS for ``device``."""
        self.service.bind()
        self.service.register_split_dns(device)

    async def start(self) -> None:
        await self.service.start()
        self.sync()

    async def close(self) -> None:
        await self.service.close()

    # ------------------------------------------------------------ the feed
    def sync(self) -> None:
        """The names feed until the network's member stream: our own name and
        addresses, and every peer's name with its host addresses."""
        from ..dns.service import peer_entries
        peers = [(p.name, p.allowed_ips) for p in self.engine.peers.values()]
        self.service.sync(peer_entries(self.service.own_name, self.s.addresses, peers))

    def tick(self) -> list:
        engine = self.engine
        if self.service.due((len(engine.peers), max(engine.peers, default=0))):
            self.sync()              # peers opened, closed or admitted: within 1 s
        return []

    # ------------------------------------------------------------ reading
    def stats(self) -> dict:
        return self.service.stats()

    def describe(self) -> dict:
        return self.service.describe()
