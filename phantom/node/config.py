"""phantomd configuration: a TOML file with command-line flags on top.

The file has the shape WireGuard users know, in TOML::

    [interface]                     # this daemon
    private_key_file = "/etc/phantom/private.key"
    listen_port = 9000
    addresses = ["10.9.0.1/24", "fd09::1/64"]

    [[peer]]                        # one table per peer
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
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import pwd
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from phantom.constants import (DEFAULT_HTTP_PORT, DEFAULT_MTU, DEFAULT_TEST_PORT,
                               DEFAULT_UDP_PORT, Tunables)
from phantom.dataplane.types import Mode
from phantom.errors import ConfigError
from phantom.syntax import (PEER_NAME, PEER_NAME_RULE, IPInterface, IPNetwork, format_endpoint,
                            is_ip_literal, parse_endpoint, parse_peer_endpoint,
                            parse_interface_address, parse_network, parse_port)

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


# --- the file's schema -------------------------------------------------------------------------
SECTIONS = ("interface", "peer", "firewall", "dns", "network", "tunables")
NETWORK_KEYS = ("network", "name", "directory", "state")
INTERFACE_KEYS = ("private_key_file", "listen_port", "http_port", "http_listen", "http_socket",
                  "test_port", "test_deliver", "mode", "device", "addresses", "mtu", "state_dir",
                  "user", "fast", "log_level", "directory", "name", "endpoints", "trusted_signers",
                  "endorsers", "directory_allowed_ips", "metrics_listen", "dht_bootstrap", "dht_port", "uapi",
                  "kill_switch", "exit_node", "exit_dns_upstream", "advertise_routes", "rendezvous", "relay", "ciphers", "groups")
CIPHERS = ("aegis256", "secretbox")       # wire.SUITE_NAMES, best first
PEER_KEYS = ("name", "public_key", "endpoint", "allowed_ips", "persistent_keepalive", "protocol",
             "preshared_key_file", "rendezvous", "ciphers", "allow_exit", "exit_node", "routes", "allow_routes", "groups")
PROTOCOLS = ("phantom", "wireguard")


def _unknown(key: str, name: str, known) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = "; did you mean %r?" % close[0] if close else ""
    return ConfigError(key, "unknown key%s (known: %s)" % (hint, ", ".join(known)))


def _expect(value, types, key: str, what: str):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(key, "must be %s, not a boolean" % what)
    if not isinstance(value, types):
        raise ConfigError(key, "must be %s, not %s %r" % (what, type(value).__name__, value))
    return value


def read_config_file(path) -> dict:
    """Parse a TOML file into a dict; ConfigError for unreadable or invalid files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--config", "cannot read %s: %s" % (path, exc.strerror or exc)) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "not UTF-8 text (%s)" % exc) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "invalid TOML: %s" % exc) from None


def _path(value, key: str, base: Optional[Path]) -> Path:
    _expect(value, str, key, "a path string")
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def _device_name(value, key: str) -> str:
    _expect(value, str, key, "a device name string")
    if not 1 <= len(value) <= IFNAME_MAX:
        raise ConfigError(key, "%r: a device name has 1..%d characters" % (value, IFNAME_MAX))
    if value in (".", "..") or any(c in value for c in "/: \t\n") or not value.isascii():
        raise ConfigError(key, "%r is not a valid device name" % value)
    return value


def _mode(value, key: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError(key, "%r is not a mode (choose tun, tap or test)" % (value,)) from None


def _log_level(value, key: str) -> str:
    _expect(value, str, key, "a string")
    name = value.strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LOG_LEVELS:
        raise ConfigError(key, "%r is not a log level (choose %s)" % (value, ", ".join(LOG_LEVELS)))
    return name


def _user(value, key: str) -> str:
    _expect(value, str, key, "a user name")
    try:
        pwd.getpwnam(value)
    except KeyError:
        raise ConfigError(key, "no such user %r (create it, or choose another)" % value) from None
    return value


def _http_listen(value, key: str) -> str:
    _expect(value, str, key, "an IP address string")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigError(key, "%r is not an IP address (e.g. 127.0.0.1 or ::1)" % value) from None


def _directory(value, key: str):
    """A directory URL, several (a list, or commas in one string), or "dht"."""
    if isinstance(value, list):
        if not value:
            raise ConfigError(key, "an empty list: give at least one URL")
        urls = []
        for i, v in enumerate(value):
            url = _directory_url(v, "%s[%d]" % (key, i))
            if url not in urls:
                urls.append(url)
        return urls if len(urls) > 1 else urls[0]
    _expect(value, str, key, "a URL string, a list of them, or \"dht\"")
    if value.strip().lower() == "dht":
        return "dht"
    if "," in value:
        return _directory([v for v in value.split(",") if v.strip()], key)
    return _directory_url(value, key)


def _directory_url(value, key: str) -> str:
    _expect(value, str, key, "a URL string")
    u = urllib.parse.urlsplit(value.strip())
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ConfigError(key, "%r is not an http:// or https:// URL" % value)
    try:
        u.port
    except ValueError as exc:
        raise ConfigError(key, "%r: %s" % (value, exc)) from None
    return value.strip().rstrip("/")


MAX_GROUPS = 32


def groups(value, key: str) -> tuple:
    """A ``groups`` list (a peer's, this node's, POST /open's): group names
    as the firewall's ``src_group``/``dst_group`` name them (the network's
    rule for names: lowercase letters, digits and '-', at most 32
    characters), sorted, without repeats."""
    from phantom.dataplane.firewall import group_problem
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of group names, like [\"laptops\"]")
    if len(value) > MAX_GROUPS:
        raise ConfigError(key, "%d groups; at most %d" % (len(value), MAX_GROUPS))
    for i, g in enumerate(value):
        problem = group_problem(g)
        if problem is not None:
            raise ConfigError("%s[%d]" % (key, i), problem)
    return tuple(sorted(set(value)))


def _ciphers(value, key: str) -> list[str]:
    """``[interface] ciphers``: the Phantom transport suites this daemon may use."""
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split()]
    _expect(value, list, key, "a list of cipher names (%s)" % ", ".join(CIPHERS))
    if not value:
        raise ConfigError(key, "an empty list: name at least one of %s" % ", ".join(CIPHERS))
    out = []
    for i, v in enumerate(value):
        k = "%s[%d]" % (key, i)
        _expect(v, str, k, "a cipher name")
        name = v.strip().lower()
        if name not in CIPHERS:
            close = difflib.get_close_matches(name, CIPHERS, n=1)
            raise ConfigError(k, "%r is not a cipher (choose %s)%s" % (
                v, " or ".join(CIPHERS), "; did you mean %r?" % close[0] if close else ""))
        if name in out:
            raise ConfigError(k, "%r is listed twice" % name)
        out.append(name)
    return out


def _mtu(value, key: str) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    _expect(value, int, key, "an integer")
    if not MIN_MTU <= value <= MAX_MTU:
        raise ConfigError(key, "%d is outside %d..%d" % (value, MIN_MTU, MAX_MTU))
    return value


# [interface] keys that are true or false, each the Settings field of its name
INTERFACE_SWITCHES = frozenset(("fast", "uapi", "kill_switch", "exit_node", "rendezvous", "relay"))


def _interface(table: dict, s: Settings, base: Optional[Path]) -> dict[str, str]:
    """Apply [interface] to ``s``; returns {field: key-path} for later checks."""
    origin = {}
    for name, value in table.items():
        key = "interface.%s" % name
        if name not in INTERFACE_KEYS:
            raise _unknown(key, name, INTERFACE_KEYS)
        origin[name] = key
        if name in INTERFACE_SWITCHES:
            setattr(s, name, _expect(value, bool, key, "true or false"))
        elif name == "private_key_file":
            s.private_key_file = _path(value, key, base)
            s.private_key_explicit = True
        elif name == "listen_port":
            s.listen_port = parse_port(value, key, allow_zero=True)
        elif name == "http_port":
            s.http_port = parse_port(value, key, allow_zero=True)    # 0: no TCP API (Unix socket only)
        elif name == "test_port":
            s.test_port = parse_port(value, key)
        elif name == "http_listen":
            s.http_listen = _http_listen(value, key)
        elif name == "http_socket":
            s.http_socket = _path(value, key, base)
        elif name == "metrics_listen":
            s.metrics_listen = parse_endpoint(value, key)
        elif name == "test_deliver":
            s.test_deliver = parse_endpoint(value, key)
        elif name == "mode":
            s.mode = _mode(value, key)
            s.mode_explicit = True
        elif name == "device":
            s.device = _device_name(value, key)
        elif name == "addresses":
            _expect(value, list, key, "a list of \"address/prefix\" strings")
            s.addresses = [parse_interface_address(v, "%s[%d]" % (key, i))
                           for i, v in enumerate(value)]
        elif name == "mtu":
            s.mtu = _mtu(value, key)
        elif name == "state_dir":
            s.state_dir = _path(value, key, base)
        elif name == "user":
            s.user = _user(value, key)
        elif name == "exit_dns_upstream":
            s.exit_dns_upstream = _addresses_list(value, key)
        elif name == "advertise_routes":
            s.advertise_routes = _prefixes(value, key)
        elif name == "log_level":
            s.log_level = _log_level(value, key)
        elif name == "directory":
            s.directory = _directory(value, key)
        elif name == "name":
            if not isinstance(value, str) or not PEER_NAME.match(value):
                raise ConfigError(key, "%r is not a valid name (%s)" % (value, PEER_NAME_RULE))
            s.name = value
        elif name == "endpoints":
            if value == "auto":
                value = ["auto"]
            _expect(value, list, key, "a list of \"ip:port\" strings, or \"auto\"")
            s.endpoints_auto = "auto" in value
            s.endpoints = [parse_endpoint(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)
                           if v != "auto"]
        elif name == "dht_bootstrap":
            _expect(value, list, key, "a list of \"ip:port\" strings (other DHT nodes)")
            s.dht_bootstrap = [parse_endpoint(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)]
        elif name == "dht_port":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                raise ConfigError(key, "must be a UDP port number (0..65535; 0 picks one)")
            s.dht_port = value
        elif name == "ciphers":
            s.ciphers = _ciphers(value, key)
        elif name == "groups":
            s.groups = groups(value, key)
        elif name == "trusted_signers":
            _expect(value, list, key, "a list of base64 Ed25519 public keys")
            s.trusted_signers = [_signer_key(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)]
        elif name == "endorsers":
            from phantom.directory.records import MAX_ENDORSERS
            _expect(value, list, key, "a list of base64 Ed25519 public keys")
            if len(value) > MAX_ENDORSERS:
                raise ConfigError(key, "a record names at most %d endorsers" % MAX_ENDORSERS)
            s.endorsers = [_signer_key(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)]
        elif name == "directory_allowed_ips":
            _expect(value, list, key, "a list of CIDR prefixes like \"10.9.0.0/24\"")
            s.directory_allowed_ips = [parse_network(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)]
    return origin


def _signer_key(value: Any, key: str) -> bytes:
    import base64
    import binascii
    if not isinstance(value, str):
        raise ConfigError(key, "must be a base64 string (phantom directory signer-key prints it)")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(key, "not a base64 32-byte Ed25519 public key "
                          "(phantom directory signer-key --private-key FILE prints one)")
    return raw


def _peer(table: Any, i: int, base: Optional[Path] = None) -> PeerConfig:
    from phantom.keys import KeyFormatError, decode_public_key

    where = "peer[%d]" % i
    _expect(table, dict, where, "a table ([[peer]])")
    for name in table:
        if name not in PEER_KEYS:
            raise _unknown("%s.%s" % (where, name), name, PEER_KEYS)
    if "public_key" not in table:
        raise ConfigError("%s.public_key" % where, "missing: every peer needs a public key")
    try:
        public = decode_public_key(_expect(table["public_key"], str, where + ".public_key",
                                           "a base64 string"))
    except KeyFormatError as exc:
        raise ConfigError(where + ".public_key", str(exc)) from None
    if "name" in table:
        name = _expect(table["name"], str, where + ".name", "a string")
        if not PEER_NAME.match(name):
            raise ConfigError(where + ".name", "%r: a peer name is %s" % (name, PEER_NAME_RULE))
    else:
        name = ""                          # a default name is given once all peers are read
    endpoint = endpoint_name = None
    if "endpoint" in table:
        endpoint = parse_peer_endpoint(table["endpoint"], where + ".endpoint")
        if not is_ip_literal(endpoint[0]):
            endpoint, endpoint_name = None, endpoint
    allowed: list[IPNetwork] = []
    if "allowed_ips" in table:
        key = where + ".allowed_ips"
        _expect(table["allowed_ips"], list, key, "a list of CIDR strings")
        for j, text in enumerate(table["allowed_ips"]):
            net = parse_network(text, "%s[%d]" % (key, j))
            if net in allowed:
                raise ConfigError("%s[%d]" % (key, j), "%s is listed twice" % net)
            allowed.append(net)
    keepalive = 0
    if "persistent_keepalive" in table:
        key = where + ".persistent_keepalive"
        keepalive = _expect(table["persistent_keepalive"], int, key, "a number of seconds")
        if not 0 <= keepalive <= 65535:
            raise ConfigError(key, "%d is outside 0..65535 seconds (0 turns it off)" % keepalive)
    protocol = "phantom"
    if "protocol" in table:
        key = where + ".protocol"
        protocol = _expect(table["protocol"], str, key, "a string")
        if protocol not in PROTOCOLS:
            raise ConfigError(key, "%r is not a protocol (choose %s)" % (protocol, " or ".join(PROTOCOLS)))
    psk_file = None
    if "preshared_key_file" in table:
        key = where + ".preshared_key_file"
        if protocol != "wireguard":
            raise ConfigError(key, "only a WireGuard peer has a preshared key "
                              "(add protocol = \"wireguard\")")
        psk_file = _path(table["preshared_key_file"], key, base)
    ciphers = None
    if "ciphers" in table:
        if protocol != "phantom":
            raise ConfigError(where + ".ciphers", "a WireGuard peer's cipher is fixed "
                              "(ChaCha20-Poly1305); ciphers is for Phantom peers")
        ciphers = _ciphers(table["ciphers"], where + ".ciphers")
    rendezvous = _expect(table.get("rendezvous", False), bool, where + ".rendezvous", "true or false")
    if rendezvous and endpoint is None:
        raise ConfigError(where + ".rendezvous", "a rendezvous node needs an endpoint%s" % (
            " given as an IP address (not a name)" if endpoint_name else ""))
    if rendezvous and protocol != "phantom":
        raise ConfigError(where + ".rendezvous", "a rendezvous node speaks the phantom protocol")
    allow_exit = _expect(table.get("allow_exit", False), bool, where + ".allow_exit", "true or false")
    offers_exit = _expect(table.get("exit_node", False), bool, where + ".exit_node", "true or false")
    allow_routes = _expect(table.get("allow_routes", False), bool, where + ".allow_routes", "true or false")
    routes = _prefixes(table["routes"], where + ".routes") if "routes" in table else []
    for j, net in enumerate(routes):
        if net in allowed:
            raise ConfigError("%s.routes[%d]" % (where, j), "%s is in allowed_ips already" % net)
        if net.prefixlen == 0:
            raise ConfigError("%s.routes[%d]" % (where, j), "a default route is an exit: exit_node = true "
                              "and `phantom exit use %s`" % name)
    peer_groups = groups(table["groups"], where + ".groups") if "groups" in table else ()
    return PeerConfig(name=name, public_key=public, endpoint=endpoint, allowed_ips=allowed,
                      persistent_keepalive=keepalive, protocol=protocol,
                      preshared_key_file=psk_file, rendezvous=rendezvous, ciphers=ciphers,
                      endpoint_name=endpoint_name, allow_exit=allow_exit, exit_node=offers_exit,
                      routes=routes, allow_routes=allow_routes, groups=peer_groups)


DEFAULT_NAME_BYTES = 4      # "peer-" + 8 hex digits of the key, longer only where needed
DEFAULT_NAME_MAX_BYTES = 29  # "peer-" + 58 hex digits: still within a name's 64 characters


def _default_names(peers: list[PeerConfig]) -> list[PeerConfig]:
    """Name unnamed peers "peer-<hex of the key>": 4 bytes, or as many more
    as it takes to be unique among all names (keys differ, so this ends).
    The same config always gives the same names."""
    taken = {p.name for p in peers if p.name}
    unnamed = [p for p in peers if not p.name]
    size = DEFAULT_NAME_BYTES
    while unnamed:
        if size > DEFAULT_NAME_MAX_BYTES:
            i = peers.index(unnamed[0])
            raise ConfigError("peer[%d].name" % i, "no default name is free for this key (other "
                              "names take every prefix of it): give this peer a name")
        short = {}
        for p in unnamed:
            short.setdefault(p.public_key[:size], []).append(p)
        left = []
        for prefix, group in short.items():
            name = "peer-" + prefix.hex()
            if len(group) == 1 and name not in taken:
                group[0].name = name
                taken.add(name)
            else:
                left += group
        unnamed, size = left, size + 1
    return peers


def check_own_key(settings: "Settings", own_public_key: bytes) -> None:
    """Refuse a [[peer]] that carries this daemon's own public key: a peer
    is someone else (exit 2 naming the key, before anything is opened)."""
    for i, p in enumerate(settings.peers):
        if bytes(p.public_key) == bytes(own_public_key):
            raise ConfigError("peer[%d].public_key" % i, "%s is this daemon's own public key (the "
                              "one of private_key_file): a peer must be another node"
                              % p.public_key_b64)


def check_peers(peers: list[PeerConfig]) -> None:
    names: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    prefixes: dict[IPNetwork, tuple[int, int]] = {}
    for i, p in enumerate(peers):
        if p.name in names:
            raise ConfigError("peer[%d].name" % i, "%r is already the name of peer[%d]"
                              % (p.name, names[p.name]))
        names[p.name] = i
        if p.public_key in keys:
            raise ConfigError("peer[%d].public_key" % i, "the same key as peer[%d] (%s)"
                              % (keys[p.public_key], peers[keys[p.public_key]].name))
        keys[p.public_key] = i
        for j, net in enumerate(p.allowed_ips):
            if net in prefixes:
                oi, oj = prefixes[net]
                raise ConfigError("peer[%d].allowed_ips[%d]" % (i, j),
                                  "%s is already routed to peer %r (peer[%d].allowed_ips[%d]); "
                                  "overlapping prefixes are fine, the same prefix twice is not"
                                  % (net, peers[oi].name, oi, oj))
            prefixes[net] = (i, j)


def _tunables(table: Any) -> Tunables:
    _expect(table, dict, "tunables", "a table")
    defaults = Tunables()
    for name, value in table.items():
        key = "tunables.%s" % name
        if not hasattr(defaults, name):
            raise _unknown(key, name, [f.name for f in fields(Tunables)])
        default = getattr(defaults, name)
        if isinstance(default, int):
            _expect(value, int, key, "an integer")
        else:
            _expect(value, (int, float), key, "a number")
        if value < 0:
            raise ConfigError(key, "must not be negative")
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
            raise _unknown(name, name, SECTIONS)
    if "interface" in doc:
        _expect(doc["interface"], dict, "interface", "a table ([interface])")
        _interface(doc["interface"], s, base)
        from phantom.directory.records import MAX_ENDORSERS
        if s.name and s.endorsers is None and len(s.trusted_signers) > MAX_ENDORSERS:
            raise ConfigError("interface.endorsers", "our directory record names at most %d "
                              "endorsers, and by default it names the %d trusted_signers: list "
                              "the ones that endorse us" % (MAX_ENDORSERS, len(s.trusted_signers)))
    if "peer" in doc:
        peers = doc["peer"]
        if isinstance(peers, dict):
            raise ConfigError("peer", "write each peer as [[peer]] (an array of tables), not [peer]")
        _expect(peers, list, "peer", "an array of tables ([[peer]])")
        s.peers = _default_names([_peer(t, i, base) for i, t in enumerate(peers)])
    if "firewall" in doc:
        s.firewall = dict(_expect(doc["firewall"], dict, "firewall", "a table ([firewall])"))
    if "dns" in doc:
        from phantom.dns.service import parse_section
        s.dns = parse_section(doc["dns"])
    if "network" in doc:
        s.network = parse_network_section(doc["network"], base)
    if "tunables" in doc:
        s.tunables = _tunables(doc["tunables"])
    _default_mode(s)
    check_subnet_routes(s)          # at start and at each reload: routes join allowed_ips
    return s


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


def parse_network_section(table: Any, base: Optional[Path] = None) -> NetworkSection:
    _expect(table, dict, "network", "a table ([network])")
    for k in table:
        if k not in NETWORK_KEYS:
            raise _unknown("network." + k, k, NETWORK_KEYS)
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
    urls = _expect(table["directory"], list, "network.directory", "a list of URLs")
    if not urls:
        raise ConfigError("network.directory", "needs at least one directory URL")
    out = tuple(_directory_url(u, "network.directory[%d]" % i) for i, u in enumerate(urls))
    return NetworkSection(fp, name, out, _path(table["state"], "network.state", base))


def _default_mode(s: Settings) -> None:
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


def _prefixes(value, key: str) -> list:
    """A list of CIDR prefixes (subnet routes), each once."""
    _expect(value, list, key, "a list of CIDR strings")
    if len(value) > 256:
        raise ConfigError(key, "%d prefixes; at most 256" % len(value))
    out: list = []
    for j, text in enumerate(value):
        net = parse_network(text, "%s[%d]" % (key, j))
        if net in out:
            raise ConfigError("%s[%d]" % (key, j), "%s is listed twice" % net)
        out.append(net)
    return out


def peer_offers(p: PeerConfig) -> dict:
    """What a [[peer]] offers us, as the peer table holds it (PeerTable.set_offers)."""
    return {k: v for k, v in (("exit", p.exit_node), ("routes", tuple(p.routes))) if v}


def check_subnet_routes(s) -> None:
    """A peer's ``routes`` (subnets behind it that we accept) may overlap no
    other peer's prefix (allowed_ips or routes) and none of our own subnets:
    a subnet route never takes another peer's traffic or our own LAN's (the
    route-ownership rule; ConfigError naming it, logged by the start or the
    reload that refuses it).  Then the routes join the peer's allowed IPs
    (the data path routes them and accepts their replies; the kernel routes
    them into the device).  A full tunnel's ``/0`` is no overlap: the subnet
    route is the longer prefix and wins, as meant."""
    own = [a.network for a in s.addresses]
    for i, p in enumerate(s.peers):
        for j, net in enumerate(p.routes):
            key = "peer[%d].routes[%d]" % (i, j)
            for o in own:
                if net.version == o.version and net.overlaps(o):
                    raise ConfigError(key, "%s overlaps this node's own subnet %s" % (net, o))
            for k, q in enumerate(s.peers):
                if k == i:
                    continue
                for m in list(q.allowed_ips) + [r for r in q.routes if r not in q.allowed_ips]:
                    if m.prefixlen and net.version == m.version and net.overlaps(m):   # (a /0 is a full tunnel)
                        raise ConfigError(key, "%s overlaps peer %s's %s: refused (a subnet route may "
                                          "not take another peer's traffic)" % (net, q.name, m))
    for p in s.peers:
        p.allowed_ips = list(p.allowed_ips) + [n for n in p.routes if n not in p.allowed_ips]


def _addresses_list(value, key: str) -> tuple:
    """A list of 1..4 IP addresses (strings), e.g. an exit's upstream resolvers."""
    items = _expect(value, list, key, "a list of IP addresses")
    if not 1 <= len(items) <= 4:
        raise ConfigError(key, "give 1 to 4 addresses")
    out = []
    for i, a in enumerate(items):
        try:
            out.append(str(ipaddress.ip_address(_expect(a, str, "%s[%d]" % (key, i), "an IP address"))))
        except ValueError:
            raise ConfigError("%s[%d]" % (key, i), "%r is not an IP address" % (a,)) from None
    return tuple(out)


def _finish(s: Settings, mtu_key: str) -> Settings:
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


# --- command line -------------------------------------------------------------------------------
def build_daemon_parser() -> argparse.ArgumentParser:
    """phantomd's flags.  Defaults are None so that only given flags override the file."""
    p = argparse.ArgumentParser(
        prog="phantomd",
        description="Phantom tunnel daemon. Flags override the --config file.")
    a = p.add_argument
    a("--config", "-c", metavar="PATH", help="TOML config file (see examples/phantom.toml)")
    a("-p", "--http-port", metavar="PORT", help="HTTP command API port (default %d)" % DEFAULT_HTTP_PORT)
    a("-u", "--udp-port", metavar="PORT",
      help="UDP tunnel port, [interface] listen_port (default %d; 0 = any)" % DEFAULT_UDP_PORT)
    a("-t", "--test-port", metavar="PORT", help="UDP test port (default %d)" % DEFAULT_TEST_PORT)
    a("--mode", metavar="MODE", help="tun, tap or test (default tun when addresses are given, "
                                     "else %s)" % DEFAULT_MODE.value)
    a("--device", metavar="NAME", help="TUN/TAP device name")
    a("--address", metavar="CIDR", action="append",
      help="interface address, e.g. 10.9.0.1/24 (repeatable; replaces the file's list)")
    a("--private-key", metavar="FILE", help="private key file (mode 0600)")
    a("--fast", action="store_true", default=None, help="use the Cython fast path")
    a("--log-level", metavar="LEVEL", help="debug, info, warning, error or critical (default info)")
    a("--user", metavar="NAME", help="unprivileged user to switch to after setup")
    a("--state-dir", metavar="DIR",
      help="API token and generated key live here (default /var/lib/phantom as root, else ./.phantom)")
    a("--http-listen", metavar="ADDR", help="API listen address (default %s)" % DEFAULT_HTTP_LISTEN)
    a("--http-socket", metavar="PATH", help="also serve the API on this Unix socket (mode 0600)")
    a("--metrics-listen", metavar="IP:PORT",
      help="also serve GET /metrics alone on this address (e.g. 127.0.0.1:9586)")
    a("--directory", metavar="URL[,URL]|dht", help="key directory (or several, comma-separated) to publish to and resolve peers from, or \"dht\" for the mainline DHT")
    a("--mtu", metavar="N", help="tunnel MTU (default %d)" % DEFAULT_MTU)
    a("--ciphers", metavar="LIST",
      help="Phantom transport suites allowed, comma-separated: aegis256, secretbox "
           "(default: aegis256 where the CPU has AES instructions, and secretbox)")
    return p


def parse_daemon_args(argv=None) -> Settings:
    """Parse phantomd's command line (and its --config file) into Settings.

    Malformed flags exit through argparse (status 2); every other problem
    raises ConfigError.
    """
    return load_settings(build_daemon_parser().parse_args(argv))


def load_settings(args: argparse.Namespace) -> Settings:
    """Read ``args.config`` (if any), then apply the flags that were given."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    if get("config"):
        path = Path(get("config")).expanduser()
        s = settings_from_mapping(read_config_file(path), base=path.resolve().parent)
        s.config_path = path
    else:
        s = Settings()
    mtu_key = "interface.mtu"

    if get("http_port") is not None:
        s.http_port = parse_port(get("http_port"), "--http-port", allow_zero=True)
    if get("udp_port") is not None:
        s.listen_port = parse_port(get("udp_port"), "--udp-port", allow_zero=True)
    if get("test_port") is not None:
        s.test_port = parse_port(get("test_port"), "--test-port")
    if get("mode") is not None:
        s.mode = _mode(get("mode"), "--mode")
        s.mode_explicit = True
    if get("device") is not None:
        s.device = _device_name(get("device"), "--device")
    if get("address"):
        s.addresses = [parse_interface_address(v, "--address") for v in get("address")]
    if get("private_key") is not None:
        s.private_key_file = _path(get("private_key"), "--private-key", Path.cwd())
        s.private_key_explicit = True
    if get("fast"):
        s.fast = True
    if get("log_level") is not None:
        s.log_level = _log_level(get("log_level"), "--log-level")
    if get("user") is not None:
        s.user = _user(get("user"), "--user")
    if get("state_dir") is not None:
        s.state_dir = _path(get("state_dir"), "--state-dir", Path.cwd())
    if get("http_listen") is not None:
        s.http_listen = _http_listen(get("http_listen"), "--http-listen")
    if get("http_socket") is not None:
        s.http_socket = _path(get("http_socket"), "--http-socket", Path.cwd())
    if get("directory") is not None:
        s.directory = _directory(get("directory"), "--directory")
    if get("metrics_listen") is not None:
        s.metrics_listen = parse_endpoint(get("metrics_listen"), "--metrics-listen")
    if get("mtu") is not None:
        s.mtu = _mtu(get("mtu"), "--mtu")
        mtu_key = "--mtu"
    if get("ciphers") is not None:
        s.ciphers = _ciphers(get("ciphers"), "--ciphers")
    _default_mode(s)                # --address without a mode anywhere: tun
    return _finish(s, mtu_key)
