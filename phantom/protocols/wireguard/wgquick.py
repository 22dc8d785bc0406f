"""``phantom wg import`` / ``phantom wg export``: wg-quick configs <-> phantom.toml.

import
    A wg-quick file (``wg0.conf``: ``[Interface]`` and ``[Peer]`` sections)
    becomes a phantom.toml whose peers all have ``protocol = "wireguard"``.
    Keys do not go into the TOML: the private key and each preshared key are
    written to files (mode 0600) next to it and named by ``private_key_file``
    and ``preshared_key_file``.  Endpoints are kept as written, DNS names
    too (phantomd resolves them, node/endpoints.py).  Settings Phantom has
    no equivalent for (``DNS``, ``Table``, ``FwMark``, ``Pre/PostUp/Down``,
    ``SaveConfig``) are reported (:func:`notes`), each with what phantomd
    does instead; :func:`unreachable` names the peers the result can never
    connect with.  A ``# Name = bob`` comment in a ``[Peer]`` names that peer.

export
    ``phantom wg export --config phantom.toml PEER`` writes the wg-quick file
    the WireGuard peer ``PEER`` uses to reach us (its address, our public key,
    our endpoint, the preshared key); without ``PEER``, our own interface as a
    wg0.conf with our WireGuard peers (the reverse of import).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ...errors import ConfigError
from ...syntax import PEER_NAME, format_endpoint, parse_peer_endpoint
from ...keys import KeyFormatError, decode_private_key, decode_public_key, encode_key, public_key
from .keys import decode_preshared_key, load_preshared_key

# [Interface] keys phantomd has no equivalent for: what it does instead, said
# once per key (the hooks once for all four).  DNS and Table get their own
# wording (_dns_note, _table_note).
_IGNORED = {"fwmark": "phantomd sets no firewall mark on its socket; left out",
            "saveconfig": "phantomd never writes its config back (`wg set` changes last until "
                          "the restart); left out"}
_HOOKS = ("preup", "postup", "predown", "postdown")


class WgConfError(ValueError):
    """A wg-quick file that cannot be converted; the message names the line."""


@dataclass
class WgPeer:
    public_key: bytes
    name: str = ""
    preshared_key: Optional[bytearray] = None
    allowed_ips: list = field(default_factory=list)
    endpoint: Optional[tuple] = None
    persistent_keepalive: int = 0


@dataclass
class WgConf:
    private_key: Optional[bytearray] = None
    listen_port: Optional[int] = None
    addresses: list = field(default_factory=list)
    mtu: Optional[int] = None
    peers: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    dns: list = field(default_factory=list)          # DNS = servers and search domains, as given
    table: Optional[str] = None
    hooks: list = field(default_factory=list)        # (line number, key) of Pre/PostUp/Down


def _dns_note(conf: WgConf, device: str) -> str:
    """What to do with ``DNS =``: phantomd does not change the host's resolver
    (wg-quick runs resolvconf); the same with systemd-resolved or resolv.conf."""
    servers, domains = [], []
    for item in conf.dns:
        try:
            servers.append(str(ipaddress.ip_address(item)))
        except ValueError:
            domains.append(item)
    out = ("DNS = %s: phantomd does not change the host's resolver (wg-quick runs resolvconf); "
           "while the tunnel is up, point it there yourself: `resolvectl dns %s %s` and "
           "`resolvectl domain %s %s` (systemd-resolved), or `nameserver` lines in "
           "/etc/resolv.conf" % (", ".join(conf.dns), device, " ".join(servers) or "-", device,
                                 " ".join(domains) or "'~.'"))
    return out


def _table_note(conf: WgConf, device: str) -> Optional[str]:
    t = conf.table.strip().lower()
    if t == "auto":
        return None                   # what phantomd does anyway: routes for the allowed IPs
    if t == "off":
        return ("Table = off: phantomd still routes each peer's allowed IPs into %s (main "
                "table); it cannot be turned off" % device)
    return ("Table = %s: phantomd routes the allowed IPs in the main table, not in table %s"
            % (conf.table, conf.table))


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_wg_quick(text: str) -> WgConf:
    """Parse a wg-quick file; raises WgConfError naming the offending line."""
    conf = WgConf()
    section = None
    peer: Optional[dict] = None
    peers: list[tuple[int, dict]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        m = re.match(r"#\s*name\s*[=:]\s*(\S+)\s*$", line, re.I)
        if m and section == "peer":
            peer["name"] = m.group(1)
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.strip("[]").strip().lower()
            if name == "interface":
                section = "interface"
            elif name == "peer":
                section = "peer"
                peer = {}
                peers.append((lineno, peer))
            else:
                raise WgConfError("line %d: unknown section [%s]" % (lineno, name))
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise WgConfError("line %d: expected Key = Value" % lineno)
        key, value = key.strip().lower(), value.strip()
        where = "line %d (%s)" % (lineno, key)
        try:
            if section == "interface":
                if key == "privatekey":
                    conf.private_key = decode_private_key(value)
                elif key == "listenport":
                    conf.listen_port = int(value)
                elif key == "address":
                    conf.addresses += [ipaddress.ip_interface(v) for v in _split_list(value)]
                elif key == "mtu":
                    conf.mtu = int(value)
                elif key == "dns":
                    conf.dns += _split_list(value)
                elif key == "table":
                    conf.table = value
                elif key in _HOOKS:
                    conf.hooks.append((lineno, key))
                elif key in _IGNORED:
                    conf.warnings.append("%s: %s" % (where, _IGNORED[key]))
                else:
                    raise WgConfError("%s: unknown [Interface] key" % where)
            elif section == "peer":
                if key in peer and key != "allowedips":
                    raise WgConfError("%s: given twice in one [Peer]" % where)
                peer[key] = value if key != "allowedips" else peer.get(key, []) + _split_list(value)
                peer.setdefault("_line", lineno)
            else:
                raise WgConfError("line %d: %s outside a section" % (lineno, key))
        except (ValueError, KeyFormatError) as exc:
            if isinstance(exc, WgConfError):
                raise
            raise WgConfError("%s: %s" % (where, exc)) from None
    if conf.private_key is None:
        raise WgConfError("[Interface] has no PrivateKey")
    for lineno, p in peers:
        conf.peers.append(_peer(lineno, p, conf))
    return conf


def notes(conf: WgConf, device: str) -> list:
    """What the import does not carry over and what phantomd does instead,
    one line each (the hooks in one line)."""
    out = []
    if conf.dns:
        out.append(_dns_note(conf, device))
    if conf.table is not None:
        t = _table_note(conf, device)
        if t:
            out.append(t)
    if conf.hooks:
        out.append("%s (line%s %s): never run: phantomd runs no commands from its config; do "
                   "what they do once yourself, or in the service that starts phantomd "
                   "(systemd ExecStartPost=/ExecStopPost=)" % (
                       "/".join(sorted({_HOOK_NAMES[k] for _, k in conf.hooks},
                                       key=lambda k: [_HOOK_NAMES[h] for h in _HOOKS].index(k))),
                       "s" if len(conf.hooks) > 1 else "",
                       ", ".join(str(n) for n, _ in conf.hooks)))
    return out + list(conf.warnings)


_HOOK_NAMES = {"preup": "PreUp", "postup": "PostUp", "predown": "PreDown", "postdown": "PostDown"}


def unreachable(conf: WgConf) -> list:
    """Peers the imported config can never connect with: no Endpoint to
    reach them at, and no ListenPort for them to reach us on (wg-quick would
    listen on a random port nobody knows).  A peer without an endpoint is
    fine when we listen on a known port: it contacts us, as a server's
    road warriors do."""
    if conf.listen_port:
        return []
    return [p for p in conf.peers if p.endpoint is None]


def _peer(lineno: int, p: dict, conf: WgConf) -> WgPeer:
    where = "[Peer] at line %d" % lineno
    if "publickey" not in p:
        raise WgConfError("%s has no PublicKey" % where)
    try:
        peer = WgPeer(decode_public_key(p["publickey"]))
    except KeyFormatError as exc:
        raise WgConfError("%s: PublicKey: %s" % (where, exc)) from None
    name = p.get("name", "")
    if name and not PEER_NAME.match(name):
        raise WgConfError("%s: %r is not a valid peer name" % (where, name))
    peer.name = name
    for k in p:
        if k not in ("publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive",
                     "name", "_line"):
            raise WgConfError("%s: unknown [Peer] key %r" % (where, k))
    if "presharedkey" in p:
        try:
            peer.preshared_key = decode_preshared_key(p["presharedkey"])
        except ValueError as exc:
            raise WgConfError("%s: PresharedKey: %s" % (where, exc)) from None
    for text in p.get("allowedips", []):
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise WgConfError("%s: AllowedIPs: %s" % (where, exc)) from None
        if str(net) != text.strip():
            conf.warnings.append("%s: AllowedIPs %s has host bits set; imported as %s" % (where, text, net))
        if net not in peer.allowed_ips:
            peer.allowed_ips.append(net)
    if "endpoint" in p:
        try:                          # an IP literal, or a DNS name phantomd resolves (and re-resolves)
            peer.endpoint = parse_peer_endpoint(p["endpoint"], "Endpoint")
        except ConfigError as exc:
            raise WgConfError("%s: %s" % (where, exc)) from None
    if "persistentkeepalive" in p:
        v = p["persistentkeepalive"].strip().lower()
        try:
            peer.persistent_keepalive = 0 if v == "off" else int(v)
        except ValueError:
            raise WgConfError("%s: PersistentKeepalive %r is not a number" % (where, v)) from None
    return peer


def _toml_str(s) -> str:
    return '"%s"' % str(s).replace("\\", "\\\\").replace('"', '\\"')


def _toml_list(items) -> str:
    return "[" + ", ".join(_toml_str(x) for x in items) + "]"


def to_phantom_toml(conf: WgConf, *, device: str, key_dir: Path, write_secret) -> str:
    """The phantom.toml text for ``conf``.  ``write_secret(path, text)`` stores keys."""
    key_dir = Path(key_dir)
    priv_path = key_dir / ("%s.key" % device)
    write_secret(priv_path, encode_key(conf.private_key) + "\n")
    lines = ["# Imported from a wg-quick config by `phantom wg import`.", "[interface]",
             "private_key_file = %s" % _toml_str(priv_path.name),
             'mode = "tun"', "device = %s" % _toml_str(device)]
    if conf.listen_port is not None:
        lines.append("listen_port = %d" % conf.listen_port)
    if conf.addresses:
        lines.append("addresses = %s" % _toml_list(str(a) for a in conf.addresses))
    if conf.mtu is not None:
        lines.append("mtu = %d" % conf.mtu)
    for w in notes(conf, device):
        lines.append("# not imported: %s" % w)
    for i, p in enumerate(conf.peers):
        lines += ["", "[[peer]]"]
        if p.name:
            lines.append("name = %s" % _toml_str(p.name))
        lines += ['protocol = "wireguard"', "public_key = %s" % _toml_str(encode_key(p.public_key))]
        if p.endpoint:
            lines.append("endpoint = %s" % _toml_str(format_endpoint(p.endpoint)))
        if p.allowed_ips:
            lines.append("allowed_ips = %s" % _toml_list(str(n) for n in p.allowed_ips))
        if p.persistent_keepalive:
            lines.append("persistent_keepalive = %d" % p.persistent_keepalive)
        if p.preshared_key is not None:
            psk_path = key_dir / ("%s-peer%d.psk" % (device, i))
            write_secret(psk_path, encode_key(p.preshared_key) + "\n")
            lines.append("preshared_key_file = %s" % _toml_str(psk_path.name))
    return "\n".join(lines) + "\n"


def _psk_line(peer) -> list[str]:
    if peer.preshared_key_file is None:
        return []
    return ["PresharedKey = %s" % encode_key(load_preshared_key(peer.preshared_key_file))]


def export_interface(settings, private_key) -> tuple[str, list[str]]:
    """Our own interface as a wg-quick file (the WireGuard peers only).
    ``settings``: a phantom.toml's (phantom.node.config.Settings, which the
    command line loads: this module is a format and knows no node)."""
    notes = []
    lines = ["# Exported from %s by `phantom wg export`." % (settings.config_path or "phantom.toml"),
             "[Interface]", "PrivateKey = %s" % encode_key(private_key),
             "ListenPort = %d" % settings.listen_port]
    if settings.addresses:
        lines.append("Address = %s" % ", ".join(str(a) for a in settings.addresses))
    lines.append("MTU = %d" % settings.mtu)
    for p in settings.peers:
        if p.protocol != "wireguard":
            notes.append("peer %s speaks Phantom's protocol: left out" % p.name)
            continue
        lines += ["", "[Peer]", "# Name = %s" % p.name, "PublicKey = %s" % p.public_key_b64]
        lines += _psk_line(p)
        if p.allowed_ips:
            lines.append("AllowedIPs = %s" % ", ".join(str(n) for n in p.allowed_ips))
        if p.endpoint_text:
            lines.append("Endpoint = %s" % p.endpoint_text)
        if p.persistent_keepalive:
            lines.append("PersistentKeepalive = %d" % p.persistent_keepalive)
    return "\n".join(lines) + "\n", notes


def export_for_peer(settings, our_public: bytes, peer_name: str, *,
                    endpoint: Optional[tuple] = None, peer_private_key=None) -> tuple[str, list[str]]:
    """The wg-quick file the WireGuard peer ``peer_name`` uses to reach us
    (``settings`` as for :func:`export_interface`)."""
    p = settings.peer(peer_name)
    if p is None:
        raise WgConfError("no peer named %r in the config" % peer_name)
    if p.protocol != "wireguard":
        raise WgConfError("peer %r speaks Phantom's protocol, not WireGuard's "
                          "(set protocol = \"wireguard\" for it first)" % peer_name)
    notes = []
    if peer_private_key is not None:
        if public_key(peer_private_key) != p.public_key:
            raise WgConfError("the private key given is not the one of peer %r's public key" % peer_name)
        key_line = "PrivateKey = %s" % encode_key(peer_private_key)
    else:
        key_line = "PrivateKey = REPLACE_WITH_%s_PRIVATE_KEY" % re.sub(r"\W", "_", peer_name).upper()
        notes.append("the peer's private key is not ours to know: fill in PrivateKey "
                     "(its public key must stay %s)" % p.public_key_b64)
    lines = ["# For WireGuard peer %s of the phantomd at %s; made by `phantom wg export`."
             % (p.name, settings.config_path or "phantom.toml"), "[Interface]", key_line]
    hosts = []
    for net in p.allowed_ips:
        if net.num_addresses == 1:
            hosts.append("%s/%d" % (net.network_address,
                                    _prefix_of(settings, net.network_address) or net.prefixlen))
    if hosts:
        lines.append("Address = %s" % ", ".join(hosts))
    else:
        notes.append("peer %s has no single-address allowed_ips: set its Address yourself" % p.name)
    lines.append("MTU = %d" % settings.mtu)
    lines += ["", "[Peer]", "# Name = %s" % (settings.name or "phantom"),
              "PublicKey = %s" % encode_key(our_public)]
    lines += _psk_line(p)
    nets = sorted({str(a.network) for a in settings.addresses})
    if nets:
        lines.append("AllowedIPs = %s" % ", ".join(nets))
    ep = endpoint or (settings.endpoints[0] if settings.endpoints else None)
    if ep:
        lines.append("Endpoint = %s" % format_endpoint(ep))
    else:
        notes.append("no endpoint known for this daemon (give --endpoint or [interface] endpoints): "
                     "the peer will wait for us to contact it")
    return "\n".join(lines) + "\n", notes


def _prefix_of(settings, addr) -> Optional[int]:
    """The prefix length of our interface network that holds ``addr``."""
    for a in settings.addresses:
        if addr in a.network:
            return a.network.prefixlen
    return None
