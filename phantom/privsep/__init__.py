"""Privilege separation for what the daemon changes in the kernel after it
dropped root: routes, policy rules, its nftables table, the forwarding
sysctls and systemd-resolved's settings for its device.

OpenSSH-style: phantomd (unprivileged, no capability at all after start)
asks a small helper process that keeps ``CAP_NET_ADMIN`` alone and does only
what an allowlist fixed at start permits.  See docs/routes.md.

* :mod:`.protocol`  the request format and the allowlist checks (sans-IO)
* :mod:`.nftspec`   the daemon's nftables table as a checked structure (sans-IO)
* :mod:`.journal`   what the helper installed, for crash recovery
* :mod:`.seccomp`   the helper's seccomp filter
* :mod:`.sandbox`   how the helper confines itself
* :mod:`.kernel`    netlink (pyroute2), nft, sysctls, resolvectl: the helper's hands
* :mod:`.helper`    the helper process
* :mod:`.client`    the daemon's side: spawn() and PrivClient
* :mod:`.routes`    the daemon's kernel routes through the helper (start-up, reload)
"""

from .client import PrivClient, PrivError, spawn
from .protocol import Allowlist

__all__ = ["Allowlist", "PrivClient", "PrivError", "spawn"]
