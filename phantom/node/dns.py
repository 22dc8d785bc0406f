"""The name service in the node (``[dns]``, phantom/dns/): our own name and
every peer's, with their addresses, answered over DNS on the tunnel's
addresses (and registered with systemd-resolved as split DNS).

:class:`NameLink` holds the service and feeds it: at start, after a reload,
and on the executor's tick when the peers changed (opened, closed,
admitted: within a second), as an observer of the executor (executor.py).

A member of a network (``[network]``, membership.py) runs it without a
``[dns]`` section (MagicDNS, issue 21 item 1): :func:`member_dns` gives the
settings -- the definition's domain and prefixes, the certificate's name.
An explicit ``[dns]`` still wins key by key: what it leaves at the default
(domain, name, prefixes) comes from the network; ``enabled = false`` turns
it off.  Members are peers named after their certificates (membership.py),
so the peers feed below already carries the members' names.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from .executor import Observer

log = logging.getLogger("phantom.daemon")


def member_dns(settings, membership):
    """The ``[dns]`` settings this daemon serves with, or None: the section
    as written; for a member, the network's domain, prefixes and our
    certificate's name where the section (or its absence) leaves the default."""
    from ..dns.service import DEFAULT_DOMAIN, DnsSettings
    dns = settings.dns
    if membership is None:
        return dns if dns is not None and dns.enabled else None
    if dns is None:
        if getattr(settings, "exit_node", False):
            # an exit node's port 53 on its tunnel addresses is its clients' DNS forwarder
            # (startup.open_exit_dns); a [dns] section with other dns.listen addresses has both
            log.info("network: an exit node: the tunnel addresses' port 53 is the exit's DNS "
                     "forwarder, not the network's names (a [dns] section turns them on; "
                     "docs/names.md)")
            return None
        dns = DnsSettings(enabled=True)
    if not dns.enabled:
        return None
    d, cert = membership.definition, membership.cert
    return dataclasses.replace(
        dns, domain=d.domain if dns.domain == DEFAULT_DOMAIN else dns.domain,
        name=dns.name or cert.name,
        ipv4_prefix=dns.ipv4_prefix or str(d.ipv4), ipv6_prefix=dns.ipv6_prefix or str(d.ipv6))


class NameLink(Observer):
    def __init__(self, settings, engine, dns=None):
        """``dns``: the settings to serve with (:func:`member_dns`); default ``settings.dns``."""
        from ..dns.service import NameService
        self.s = settings
        self.engine = engine
        # a bad [dns] section is a ConfigError here, before anything opens (exit 2)
        self.service = NameService(dns if dns is not None else settings.dns, settings.name,
                                   settings.addresses)

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
