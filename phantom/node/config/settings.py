"""The settings phantomd runs with: what the config file and the flags make."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from phantom.constants import DEFAULT_HTTP_PORT, DEFAULT_MTU, DEFAULT_TEST_PORT, DEFAULT_UDP_PORT, Tunables
from phantom.dataplane.types import Mode
from phantom.syntax import IPInterface, IPNetwork, format_endpoint


DEFAULT_MODE = Mode.TEST          # the prototype's mode: needs no root and no TUN
DEFAULT_HTTP_LISTEN = "127.0.0.1"
DEFAULT_LOG_LEVEL = "info"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ROOT_STATE_DIR = Path("/var/lib/phantom")
MIN_MTU = 576
MIN_MTU_IPV6 = 1280
MAX_MTU = 65535
IFNAME_MAX = 15                   # IFNAMSIZ - 1


def default_state_dir() -> Path:
    """/var/lib/phantom for root, ./.phantom (absolute) for anyone else."""
    return ROOT_STATE_DIR if os.geteuid() == 0 else Path.cwd() / ".phantom"


@dataclass
class PeerConfig:
    name: str
    public_key: bytes                                  # 32 bytes
    endpoint: Optional[tuple[str, int]] = None         # (ip, port); None: wait for the peer
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    persistent_keepalive: int = 0                      # seconds, 0 = off
    rendezvous: bool = False                           # NAT traversal: this peer is a rendezvous node
    protocol: str = "phantom"                          # PROTOCOLS: what this peer speaks
    preshared_key_file: Optional[Path] = None          # WireGuard's optional psk (base64 file)
    ciphers: Optional[list[str]] = None                # Phantom suites for this peer; None: [interface]'s
    allow_exit: bool = False                           # may use this node as its exit (exit_node = true)
    exit_node: bool = False                            # offers itself as exit: `phantom exit use NAME` may pick it
    routes: list = field(default_factory=list)         # subnets behind it we accept (in allowed_ips too)
    allow_routes: bool = False                         # may reach our advertise_routes through us
    groups: tuple = ()                                 # firewall groups (src_group/dst_group), sorted
    # endpoint = "vpn.example.com:51820": (name, port), resolved by the daemon
    # at start and again while the peer is stale (node/endpoints.py); then
    # ``endpoint`` is None
    endpoint_name: Optional[tuple[str, int]] = None

    @property
    def endpoint_text(self) -> Optional[str]:
        """The endpoint as written: the name and port, or the IP literal."""
        if self.endpoint_name is not None:
            return "%s:%d" % self.endpoint_name
        return format_endpoint(self.endpoint) if self.endpoint is not None else None

    @property
    def public_key_b64(self) -> str:
        from phantom.keys import encode_key
        return encode_key(self.public_key)


@dataclass
class Settings:
    config_path: Optional[Path] = None
    private_key_file: Optional[Path] = None
    # True when the key file was named (file or flag): then it must exist.
    # False: the daemon may create <state_dir>/private.key at first start.
    private_key_explicit: bool = False
    listen_port: int = DEFAULT_UDP_PORT
    http_port: int = DEFAULT_HTTP_PORT
    http_listen: str = DEFAULT_HTTP_LISTEN
    http_socket: Optional[Path] = None
    metrics_listen: Optional[tuple[str, int]] = None    # GET /metrics alone on its own IP:PORT
    test_port: int = DEFAULT_TEST_PORT
    test_deliver: Optional[tuple[str, int]] = None
    mode: Mode = DEFAULT_MODE
    # True when the file or --mode named the mode; without it, addresses mean
    # a TUN device (:func:`_default_mode`).
    mode_explicit: bool = False
    device: Optional[str] = None
    addresses: list[IPInterface] = field(default_factory=list)
    mtu: int = DEFAULT_MTU
    state_dir: Path = field(default_factory=default_state_dir)
    user: Optional[str] = None
    fast: bool = False
    uapi: bool = False                                  # serve WireGuard's UAPI socket (wg show/set)
    kill_switch: bool = False                           # block non-tunnel egress while a full tunnel is configured
    exit_node: bool = False                             # forward and masquerade for peers with allow_exit
    exit_dns_upstream: tuple = ()                       # the exit's resolvers for its clients' DNS (default: resolv.conf)
    advertise_routes: list = field(default_factory=list)  # subnet router: LAN prefixes peers with allow_routes reach
    log_level: str = DEFAULT_LOG_LEVEL
    directory: Optional[Any] = None        # a URL, a list of URLs, or "dht"
    dht_bootstrap: list[tuple[str, int]] = field(default_factory=list)  # with directory = "dht"
    dht_port: int = 6881                   # the DHT node's UDP port (directory = "dht")
    name: Optional[str] = None                          # our name in the key directory
    endpoints: list[tuple[str, int]] = field(default_factory=list)   # advertised in the directory
    endpoints_auto: bool = False           # endpoints = "auto": the address we reach the directory from
    trusted_signers: list[bytes] = field(default_factory=list)      # Ed25519 keys of endorsers
    endorsers: Optional[list[bytes]] = None  # who may endorse our record (None: trusted_signers)
    # where a directory record's allowed IPs may lie (None: the interface's own subnets)
    directory_allowed_ips: Optional[list[IPNetwork]] = None
    rendezvous: bool = False                            # NAT traversal: serve as a rendezvous node
    relay: bool = False                                 # ... and relay for peers without a direct path
    ciphers: Optional[list[str]] = None                 # Phantom transport suites allowed; None: automatic
    groups: tuple = ()                                  # this node's own firewall groups, sorted
    peers: list[PeerConfig] = field(default_factory=list)
    firewall: dict = field(default_factory=dict)
    dns: Optional[Any] = None              # phantom.dns.service.DnsSettings; None: no [dns] section
    network: Optional["NetworkSection"] = None   # [network], written by `phantom join`
    tunables: Tunables = field(default_factory=Tunables)

    @property
    def published_endorsers(self) -> list[bytes]:
        """The signers our directory record lets endorse it: ``endorsers``, or by
        default ``trusted_signers`` (an empty list: anyone may)."""
        return list(self.trusted_signers if self.endorsers is None else self.endorsers)

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"

    def peer(self, name: str) -> Optional[PeerConfig]:
        for p in self.peers:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True)
class NetworkSection:
    """``[network]``: the network this node joined (``phantom join`` writes it).

    network    the network's fingerprint (32 base32 characters)
    name       the network's name
    directory  the directory URLs the node enrolled at (renewal, the member stream)
    state      the directory holding definition.json and certificate.json (0700)
    """

    network: str
    name: str
    directory: tuple
    state: Path
