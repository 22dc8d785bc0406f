"""The network's name service (issue 21): an authoritative DNS responder
for ONE domain, the network's (``corp.phantom``), answering members' names
with their tunnel addresses.  dnspython does all wire parsing and rendering.

How the daemon runs it::

    from phantom import dns as names

    table = names.NameTable()                  # or the member set, if it implements NameSource
    table.set("n3", ["100.64.0.3"], ["fd12:3456:789a::3"])      # per member change, O(1)
    zone = names.Zone("corp.phantom", table, ipv4_prefix="100.64.0.0/16",
                      ipv6_prefix="fd12:3456:789a::/48", nameserver=own_name)
    socks = names.bind_sockets(tunnel_addresses)                 # port 53, while root
    server = names.DnsServer(zone)
    await server.start(sockets=socks)                            # after the drop is fine
    split = names.split_dns(device, tunnel_addresses, zone)      # resolvectl lines for the helper
    server.stats()                                               # /status, /metrics
    await server.close()

Modules: names.py (label rules, :class:`NameSource`, :class:`NameTable`),
zone.py (:class:`Zone`: one query in, one response out, no I/O),
server.py (:class:`DnsServer`: UDP and TCP, rate limits, TCP bounds),
resolved.py (split DNS with systemd-resolved, resolv.conf text),
service.py (phantomd's side: the ``[dns]`` section, the names feed from
peers -- the member stream's place later --, :class:`NameService`),
show.py (`phantom dns`'s text).  See docs/names.md.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_face

from .names import (DEFAULT_TTL, DNS_PORT, MAX_ADDRESSES, Addresses, NameSource, NameTable,
                    normalize_domain, normalize_label, valid_label)
from .resolved import SplitDns, resolv_conf, resolved_running, split_dns

# The responder (server.py, zone.py) is loaded when first named: it imports
# dnspython (~0.1 s of CPU), which reading a config's [dns] section
# (service.py), `phantom exit use` (resolved.py) and a daemon that serves no
# names do not need.  phantomd imports it before the privilege drop when it
# may serve DNS (phantom/node/startup.py's preload).
_LAZY = {
    "server": ("DnsServer", "SourceLimiter", "bind_sockets"),
    "zone": ("DEFAULT_UDP_PAYLOAD", "MAX_QUERY", "Zone"),
}

if TYPE_CHECKING:                        # the same names for type checkers (and the layout test's graph)
    from .server import DnsServer, SourceLimiter, bind_sockets  # noqa: F401
    from .zone import DEFAULT_UDP_PAYLOAD, MAX_QUERY, Zone  # noqa: F401

__all__ = [
    "Addresses", "NameSource", "NameTable", "MAX_ADDRESSES", "valid_label", "normalize_label",
    "normalize_domain", "Zone", "DEFAULT_TTL", "DEFAULT_UDP_PAYLOAD", "MAX_QUERY",
    "DnsServer", "SourceLimiter", "bind_sockets", "DNS_PORT",
    "SplitDns", "split_dns", "resolved_running", "resolv_conf",
]


__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)
