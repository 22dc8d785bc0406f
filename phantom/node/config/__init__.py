"""phantomd configuration: a TOML file with command-line flags on top.

The file has the shape WireGuard users know, in TOML::

    [interface]                     # this daemon (interface.py)
    private_key_file = "/etc/phantom/private.key"
    listen_port = 9000
    addresses = ["10.9.0.1/24", "fd09::1/64"]

    [[peer]]                        # one table per peer (peers.py)
    name = "bob"
    public_key = "base64..."
    endpoint = "192.0.2.7:9000"
    allowed_ips = ["10.9.0.2/32"]

    [firewall]                      # checked by the firewall compiler
    [dns]                           # the name service (phantom.dns.service.parse_section)
    [network]                       # written by `phantom join` (parse_network_section; docs/network.md)
    [tunables]                      # phantom.constants.Tunables fields

Every problem raises :class:`phantom.errors.ConfigError` whose
``key`` names the setting (``interface.mtu``, ``peer[1].allowed_ips[0]``,
``--http-port``); peers are numbered from 0 in file order.  Unknown keys are
errors.  Flags override the file; ``--address`` replaces the file's list.
Relative paths in the file are relative to the file's directory.

The package, by section: settings.py (the dataclasses), values.py (one parser
per kind of value), interface.py, peers.py, document.py (the whole file, the
[network] and [tunables] sections, the checks across sections), flags.py
(phantomd's command line).  Import from here: ``from phantom.node.config
import Settings, parse_daemon_args``.
"""

from phantom.errors import ConfigError
from phantom.syntax import parse_endpoint

from .document import (NETWORK_KEYS, SECTIONS, config_warnings, parse_network_section,
                       settings_from_mapping)
from .flags import build_daemon_parser, load_settings, parse_daemon_args
from .interface import INTERFACE_KEYS, INTERFACE_SWITCHES
from .peers import (PEER_KEYS, PROTOCOLS, check_own_key, check_peers, check_subnet_routes,
                    peer_offers)
from .settings import (DEFAULT_HTTP_LISTEN, DEFAULT_LOG_LEVEL, DEFAULT_MODE, LOG_LEVELS, MAX_MTU,
                       MIN_MTU, MIN_MTU_IPV6, NetworkSection, PeerConfig, Settings,
                       default_state_dir)
from .values import CIPHERS, MAX_GROUPS, groups, read_config_file

__all__ = [
    "CIPHERS", "ConfigError", "DEFAULT_HTTP_LISTEN", "DEFAULT_LOG_LEVEL", "DEFAULT_MODE",
    "INTERFACE_KEYS", "INTERFACE_SWITCHES", "LOG_LEVELS", "MAX_GROUPS", "MAX_MTU", "MIN_MTU",
    "MIN_MTU_IPV6", "NETWORK_KEYS", "NetworkSection", "PEER_KEYS", "PROTOCOLS", "PeerConfig",
    "SECTIONS", "Settings", "build_daemon_parser", "check_own_key", "check_peers",
    "check_subnet_routes", "config_warnings", "default_state_dir", "groups", "load_settings",
    "parse_daemon_args", "parse_endpoint", "parse_network_section", "peer_offers",
    "read_config_file", "settings_from_mapping",
]
