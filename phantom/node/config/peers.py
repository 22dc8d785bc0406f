"""``[[peer]]``: one table per peer, and the checks across peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from phantom.errors import ConfigError
from phantom.syntax import PEER_NAME, PEER_NAME_RULE, IPNetwork, is_ip_literal, parse_network, parse_peer_endpoint

from .settings import PeerConfig, Settings
from .values import expect, groups, parse_ciphers, parse_path, parse_prefixes, unknown_key


PEER_KEYS = ("name", "public_key", "endpoint", "allowed_ips", "persistent_keepalive", "protocol",
             "preshared_key_file", "rendezvous", "ciphers", "allow_exit", "exit_node", "routes", "allow_routes", "groups")
PROTOCOLS = ("phantom", "wireguard")


def parse_peer(table: Any, i: int, base: Optional[Path] = None) -> PeerConfig:
    from phantom.keys import KeyFormatError, decode_public_key

    where = "peer[%d]" % i
    expect(table, dict, where, "a table ([[peer]])")
    for name in table:
        if name not in PEER_KEYS:
            raise unknown_key("%s.%s" % (where, name), name, PEER_KEYS)
    if "public_key" not in table:
        raise ConfigError("%s.public_key" % where, "missing: every peer needs a public key")
    try:
        public = decode_public_key(expect(table["public_key"], str, where + ".public_key",
                                           "a base64 string"))
    except KeyFormatError as exc:
        raise ConfigError(where + ".public_key", str(exc)) from None
    if "name" in table:
        name = expect(table["name"], str, where + ".name", "a string")
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
        expect(table["allowed_ips"], list, key, "a list of CIDR strings")
        for j, text in enumerate(table["allowed_ips"]):
            net = parse_network(text, "%s[%d]" % (key, j))
            if net in allowed:
                raise ConfigError("%s[%d]" % (key, j), "%s is listed twice" % net)
            allowed.append(net)
    keepalive = 0
    if "persistent_keepalive" in table:
        key = where + ".persistent_keepalive"
        keepalive = expect(table["persistent_keepalive"], int, key, "a number of seconds")
        if not 0 <= keepalive <= 65535:
            raise ConfigError(key, "%d is outside 0..65535 seconds (0 turns it off)" % keepalive)
    protocol = "phantom"
    if "protocol" in table:
        key = where + ".protocol"
        protocol = expect(table["protocol"], str, key, "a string")
        if protocol not in PROTOCOLS:
            raise ConfigError(key, "%r is not a protocol (choose %s)" % (protocol, " or ".join(PROTOCOLS)))
    psk_file = None
    if "preshared_key_file" in table:
        key = where + ".preshared_key_file"
        if protocol != "wireguard":
            raise ConfigError(key, "only a WireGuard peer has a preshared key "
                              "(add protocol = \"wireguard\")")
        psk_file = parse_path(table["preshared_key_file"], key, base)
    ciphers = None
    if "ciphers" in table:
        if protocol != "phantom":
            raise ConfigError(where + ".ciphers", "a WireGuard peer's cipher is fixed "
                              "(ChaCha20-Poly1305); ciphers is for Phantom peers")
        ciphers = parse_ciphers(table["ciphers"], where + ".ciphers")
    rendezvous = expect(table.get("rendezvous", False), bool, where + ".rendezvous", "true or false")
    if rendezvous and endpoint is None:
        raise ConfigError(where + ".rendezvous", "a rendezvous node needs an endpoint%s" % (
            " given as an IP address (not a name)" if endpoint_name else ""))
    if rendezvous and protocol != "phantom":
        raise ConfigError(where + ".rendezvous", "a rendezvous node speaks the phantom protocol")
    allow_exit = expect(table.get("allow_exit", False), bool, where + ".allow_exit", "true or false")
    offers_exit = expect(table.get("exit_node", False), bool, where + ".exit_node", "true or false")
    allow_routes = expect(table.get("allow_routes", False), bool, where + ".allow_routes", "true or false")
    routes = parse_prefixes(table["routes"], where + ".routes") if "routes" in table else []
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


def default_names(peers: list[PeerConfig]) -> list[PeerConfig]:
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
