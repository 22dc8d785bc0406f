"""``[interface]``: this daemon's own settings."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

from phantom.errors import ConfigError
from phantom.syntax import (PEER_NAME, PEER_NAME_RULE, parse_endpoint, parse_interface_address,
                            parse_network, parse_port)

from .settings import Settings
from .values import (expect, groups, parse_addresses, parse_ciphers, parse_device_name, parse_directory,
                     parse_http_listen, parse_list, parse_log_level, parse_mode, parse_mtu, parse_path,
                     parse_prefixes, parse_signer_key, parse_user, unknown_key)


INTERFACE_KEYS = ("private_key_file", "listen_port", "http_port", "http_listen", "http_socket",
                  "test_port", "test_deliver", "mode", "device", "addresses", "mtu", "state_dir",
                  "user", "fast", "log_level", "directory", "name", "endpoints", "trusted_signers",
                  "endorsers", "directory_allowed_ips", "metrics_listen", "dht_bootstrap", "dht_port", "uapi",
                  "kill_switch", "exit_node", "exit_dns_upstream", "advertise_routes", "rendezvous", "relay", "ciphers", "groups")


# [interface] keys that are true or false, each the Settings field of its name
INTERFACE_SWITCHES = frozenset(("fast", "uapi", "kill_switch", "exit_node", "rendezvous", "relay"))
# [interface] keys that are paths (relative to the file's directory)
INTERFACE_PATHS = frozenset(("private_key_file", "http_socket", "state_dir"))


def parse_node_name(value, key: str) -> str:
    if not isinstance(value, str) or not PEER_NAME.match(value):
        raise ConfigError(key, "%r is not a valid name (%s)" % (value, PEER_NAME_RULE))
    return value


def parse_dht_port(value, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigError(key, "must be a UDP port number (0..65535; 0 picks one)")
    return value


def parse_endorsers(value, key: str) -> list[bytes]:
    from phantom.directory.records import MAX_ENDORSERS
    expect(value, list, key, "a list of base64 Ed25519 public keys")
    if len(value) > MAX_ENDORSERS:
        raise ConfigError(key, "a record names at most %d endorsers" % MAX_ENDORSERS)
    return [parse_signer_key(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)]


# the other [interface] keys: the parser of each, whose value goes to the
# Settings field of the key's name
INTERFACE_VALUES = {
    "listen_port": partial(parse_port, allow_zero=True),
    "http_port": partial(parse_port, allow_zero=True),       # 0: no TCP API (Unix socket only)
    "test_port": parse_port,
    "http_listen": parse_http_listen,
    "metrics_listen": parse_endpoint,
    "test_deliver": parse_endpoint,
    "mode": parse_mode,
    "device": parse_device_name,
    "addresses": parse_list(parse_interface_address, "a list of \"address/prefix\" strings"),
    "mtu": parse_mtu,
    "user": parse_user,
    "exit_dns_upstream": parse_addresses,
    "advertise_routes": parse_prefixes,
    "log_level": parse_log_level,
    "directory": parse_directory,
    "name": parse_node_name,
    "dht_bootstrap": parse_list(parse_endpoint, "a list of \"ip:port\" strings (other DHT nodes)"),
    "dht_port": parse_dht_port,
    "ciphers": parse_ciphers,
    "groups": groups,
    "trusted_signers": parse_list(parse_signer_key, "a list of base64 Ed25519 public keys"),
    "endorsers": parse_endorsers,
    "directory_allowed_ips": parse_list(parse_network, "a list of CIDR prefixes like \"10.9.0.0/24\""),
}
assert set(INTERFACE_KEYS) == INTERFACE_SWITCHES | INTERFACE_PATHS | set(INTERFACE_VALUES) | {"endpoints"}


def apply_interface(table: dict, s: Settings, base: Optional[Path]) -> dict[str, str]:
    """Apply [interface] to ``s``; returns {field: key-path} for later checks."""
    origin = {}
    for name, value in table.items():
        key = "interface.%s" % name
        if name not in INTERFACE_KEYS:
            raise unknown_key(key, name, INTERFACE_KEYS)
        origin[name] = key
        if name in INTERFACE_SWITCHES:
            setattr(s, name, expect(value, bool, key, "true or false"))
        elif name in INTERFACE_PATHS:
            setattr(s, name, parse_path(value, key, base))
        elif name == "endpoints":
            if value == "auto":
                value = ["auto"]
            expect(value, list, key, "a list of \"ip:port\" strings, or \"auto\"")
            s.endpoints_auto = "auto" in value
            s.endpoints = [parse_endpoint(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)
                           if v != "auto"]
        else:
            setattr(s, name, INTERFACE_VALUES[name](value, key))
        if name == "private_key_file":
            s.private_key_explicit = True
        elif name == "mode":
            s.mode_explicit = True
    return origin
