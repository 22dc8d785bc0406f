"""The whole file: its sections, then the checks across them."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from phantom.constants import REGISTER_INTERVAL, Tunables
from phantom.dataplane.types import Mode
from phantom.errors import ConfigError

from .interface import apply_interface
from .peers import check_peers, check_subnet_routes, default_names, parse_peer
from .settings import MIN_MTU_IPV6, NetworkSection, Settings
from .values import expect, parse_directory_url, parse_path, unknown_key


SECTIONS = ("interface", "peer", "firewall", "dns", "network", "tunables")
NETWORK_KEYS = ("network", "name", "directory", "state")


def parse_tunables(table: Any) -> Tunables:
    expect(table, dict, "tunables", "a table")
    defaults = Tunables()
    for name, value in table.items():
        key = "tunables.%s" % name
        if not hasattr(defaults, name):
            raise unknown_key(key, name, [f.name for f in fields(Tunables)])
        default = getattr(defaults, name)
        if isinstance(default, int):
            expect(value, int, key, "an integer")
        else:
            expect(value, (int, float), key, "a number")
        if value < 0:
            raise ConfigError(key, "must not be negative")
        if name == "registration_ttl" and value <= REGISTER_INTERVAL:
            raise ConfigError(key, "must be more than %g s (clients renew their registration every %g s)"
                              % (REGISTER_INTERVAL, REGISTER_INTERVAL))
    try:
        return Tunables.from_mapping({k: (float(v) if isinstance(getattr(defaults, k), float) else v)
                                      for k, v in table.items()})
    except (ValueError, TypeError) as exc:
        raise ConfigError("tunables", str(exc)) from None


def settings_from_mapping(doc: dict, base: Optional[Path] = None) -> Settings:
    """Build Settings from a parsed config document (``base``: relative paths)."""
    s = Settings()
    for name in doc:
        if name not in SECTIONS:
            raise unknown_key(name, name, SECTIONS)
    if "interface" in doc:
        expect(doc["interface"], dict, "interface", "a table ([interface])")
        apply_interface(doc["interface"], s, base)
        from phantom.directory.records import MAX_ENDORSERS
        if s.name and s.endorsers is None and len(s.trusted_signers) > MAX_ENDORSERS:
            raise ConfigError("interface.endorsers", "our directory record names at most %d "
                              "endorsers, and by default it names the %d trusted_signers: list "
                              "the ones that endorse us" % (MAX_ENDORSERS, len(s.trusted_signers)))
    if "peer" in doc:
        peers = doc["peer"]
        if isinstance(peers, dict):
            raise ConfigError("peer", "write each peer as [[peer]] (an array of tables), not [peer]")
        expect(peers, list, "peer", "an array of tables ([[peer]])")
        s.peers = default_names([parse_peer(t, i, base) for i, t in enumerate(peers)])
    if "firewall" in doc:
        s.firewall = dict(expect(doc["firewall"], dict, "firewall", "a table ([firewall])"))
    if "dns" in doc:
        from phantom.dns.service import parse_section
        s.dns = parse_section(doc["dns"])
    if "network" in doc:
        s.network = parse_network_section(doc["network"], base)
    if "tunables" in doc:
        s.tunables = parse_tunables(doc["tunables"])
    default_mode(s)
    check_subnet_routes(s)          # at start and at each reload: routes join allowed_ips
    return s


def parse_network_section(table: Any, base: Optional[Path] = None) -> NetworkSection:
    expect(table, dict, "network", "a table ([network])")
    for k in table:
        if k not in NETWORK_KEYS:
            raise unknown_key("network." + k, k, NETWORK_KEYS)
    for k in NETWORK_KEYS:
        if k not in table:
            raise ConfigError("network." + k, "missing (`phantom join` writes the whole section)")
    fp = table["network"]
    if not isinstance(fp, str) or not re.fullmatch(r"[a-z2-7]{32}", fp):
        raise ConfigError("network.network", "must be the network's fingerprint (32 base32 "
                          "characters, as `phantom network show` prints it)")
    name = table["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        raise ConfigError("network.name", "must be the network's name (a DNS label)")
    urls = expect(table["directory"], list, "network.directory", "a list of URLs")
    if not urls:
        raise ConfigError("network.directory", "needs at least one directory URL")
    out = tuple(parse_directory_url(u, "network.directory[%d]" % i) for i, u in enumerate(urls))
    return NetworkSection(fp, name, out, parse_path(table["state"], "network.state", base))


def default_mode(s: Settings) -> None:
    """Addresses are a device's: a config that gives addresses and no mode
    runs in tun mode (without addresses, the default stays test mode)."""
    if not s.mode_explicit and s.addresses:
        s.mode = Mode.TUN


def config_warnings(s: Settings) -> list[str]:
    """What a valid config sets but the daemon will not use, for the log at start."""
    out = []
    if s.mode is Mode.TEST and s.addresses:
        out.append("interface.addresses: mode = \"test\" opens no device, so %s configure nothing "
                   "(they are only published as our allowed IPs in the key directory); use "
                   "mode = \"tun\" for a device with these addresses"
                   % ", ".join(str(a) for a in s.addresses))
    return out


def finish(s: Settings, mtu_key: str) -> Settings:
    check_peers(s.peers)
    if s.exit_node and s.mode is not Mode.TUN:
        raise ConfigError("interface.exit_node", "an exit node forwards IP packets from a TUN device: "
                          "it needs mode = \"tun\"")
    for i, p in enumerate(s.peers):
        if p.allow_exit and not s.exit_node:
            raise ConfigError("peer[%d].allow_exit" % i, "this node is no exit node: add exit_node = true "
                              "to [interface] (or leave allow_exit out)")
    for i, p in enumerate(s.peers):
        if p.exit_node and s.mode is not Mode.TUN:
            raise ConfigError("peer[%d].exit_node" % i, "an exit carries IP packets: using one needs "
                              "mode = \"tun\"")
    for i, p in enumerate(s.peers):
        if (p.routes or p.allow_routes) and s.mode is not Mode.TUN:
            raise ConfigError("peer[%d].%s" % (i, "routes" if p.routes else "allow_routes"),
                              "subnet routes carry IP packets: they need mode = \"tun\"")
        if p.allow_routes and not s.advertise_routes:
            raise ConfigError("peer[%d].allow_routes" % i, "this node advertises no routes: add "
                              "advertise_routes to [interface] (or leave allow_routes out)")
    if s.advertise_routes and s.mode is not Mode.TUN:
        raise ConfigError("interface.advertise_routes", "a subnet router forwards IP packets from a TUN "
                          "device: it needs mode = \"tun\"")
    if s.exit_dns_upstream and not s.exit_node:
        raise ConfigError("interface.exit_dns_upstream", "this node is no exit node: add exit_node = true "
                          "(or leave exit_dns_upstream out)")
    if s.kill_switch and s.mode is not Mode.TUN:
        raise ConfigError("interface.kill_switch", "the kill switch guards a full tunnel through a TUN "
                          "device: it needs mode = \"tun\"")
    if s.uapi and s.mode is not Mode.TUN:
        raise ConfigError("interface.uapi", "WireGuard's UAPI serves a TUN device: it needs mode = \"tun\"")
    for i, p in enumerate(s.peers):
        if p.protocol == "wireguard" and s.mode is not Mode.TUN:
            raise ConfigError("peer[%d].protocol" % i, "a WireGuard peer carries IP packets: it needs "
                              "mode = \"tun\" (this daemon runs in %s mode)" % s.mode.value)
    if any(a.version == 6 for a in s.addresses) and s.mtu < MIN_MTU_IPV6:
        raise ConfigError(mtu_key, "%d is below %d, the minimum MTU for IPv6 addresses"
                          % (s.mtu, MIN_MTU_IPV6))
    if s.private_key_file is None:
        s.private_key_file = s.state_dir / "private.key"
    return s
