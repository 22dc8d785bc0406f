"""The config file's values: each parser takes a value and the key that names it
(``interface.mtu``, ``peer[1].allowed_ips[0]``, ``--mtu``) and returns it
checked, or raises :class:`phantom.errors.ConfigError` naming that key."""

from __future__ import annotations

import difflib
import ipaddress
import pwd
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Optional

from phantom.dataplane.types import Mode
from phantom.errors import ConfigError
from phantom.syntax import parse_ip_addresses, parse_network

from .settings import IFNAME_MAX, LOG_LEVELS, MAX_MTU, MIN_MTU


CIPHERS = ("aegis256", "secretbox")       # wire.SUITE_NAMES, best first


def unknown_key(key: str, name: str, known) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = "; did you mean %r?" % close[0] if close else ""
    return ConfigError(key, "unknown key%s (known: %s)" % (hint, ", ".join(known)))


def expect(value, types, key: str, what: str):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(key, "must be %s, not a boolean" % what)
    if not isinstance(value, types):
        raise ConfigError(key, "must be %s, not %s %r" % (what, type(value).__name__, value))
    return value



def parse_list(parse, what: str):
    """A parser of a list (``what`` says what it must be) whose items ``parse``
    takes, each named by its index (``interface.addresses[1]``)."""
    def parse_items(value, key: str) -> list:
        expect(value, list, key, what)
        return [parse(v, "%s[%d]" % (key, i)) for i, v in enumerate(value)]
    return parse_items

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


def parse_path(value, key: str, base: Optional[Path]) -> Path:
    expect(value, str, key, "a path string")
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def parse_device_name(value, key: str) -> str:
    expect(value, str, key, "a device name string")
    if not 1 <= len(value) <= IFNAME_MAX:
        raise ConfigError(key, "%r: a device name has 1..%d characters" % (value, IFNAME_MAX))
    if value in (".", "..") or any(c in value for c in "/: \t\n") or not value.isascii():
        raise ConfigError(key, "%r is not a valid device name" % value)
    return value


def parse_mode(value, key: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError(key, "%r is not a mode (choose tun, tap or test)" % (value,)) from None


def parse_log_level(value, key: str) -> str:
    expect(value, str, key, "a string")
    name = value.strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LOG_LEVELS:
        raise ConfigError(key, "%r is not a log level (choose %s)" % (value, ", ".join(LOG_LEVELS)))
    return name


def parse_user(value, key: str) -> str:
    expect(value, str, key, "a user name")
    try:
        pwd.getpwnam(value)
    except KeyError:
        raise ConfigError(key, "no such user %r (create it, or choose another)" % value) from None
    return value


def parse_http_listen(value, key: str) -> str:
    expect(value, str, key, "an IP address string")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigError(key, "%r is not an IP address (e.g. 127.0.0.1 or ::1)" % value) from None


def parse_directory(value, key: str):
    """A directory URL, several (a list, or commas in one string), or "dht"."""
    if isinstance(value, list):
        if not value:
            raise ConfigError(key, "an empty list: give at least one URL")
        urls = []
        for i, v in enumerate(value):
            url = parse_directory_url(v, "%s[%d]" % (key, i))
            if url not in urls:
                urls.append(url)
        return urls if len(urls) > 1 else urls[0]
    expect(value, str, key, "a URL string, a list of them, or \"dht\"")
    if value.strip().lower() == "dht":
        return "dht"
    if "," in value:
        return parse_directory([v for v in value.split(",") if v.strip()], key)
    return parse_directory_url(value, key)


def parse_directory_url(value, key: str) -> str:
    expect(value, str, key, "a URL string")
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


def parse_ciphers(value, key: str) -> list[str]:
    """``[interface] ciphers``: the Phantom transport suites this daemon may use."""
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split()]
    expect(value, list, key, "a list of cipher names (%s)" % ", ".join(CIPHERS))
    if not value:
        raise ConfigError(key, "an empty list: name at least one of %s" % ", ".join(CIPHERS))
    out = []
    for i, v in enumerate(value):
        k = "%s[%d]" % (key, i)
        expect(v, str, k, "a cipher name")
        name = v.strip().lower()
        if name not in CIPHERS:
            close = difflib.get_close_matches(name, CIPHERS, n=1)
            raise ConfigError(k, "%r is not a cipher (choose %s)%s" % (
                v, " or ".join(CIPHERS), "; did you mean %r?" % close[0] if close else ""))
        if name in out:
            raise ConfigError(k, "%r is listed twice" % name)
        out.append(name)
    return out


def parse_mtu(value, key: str) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    expect(value, int, key, "an integer")
    if not MIN_MTU <= value <= MAX_MTU:
        raise ConfigError(key, "%d is outside %d..%d" % (value, MIN_MTU, MAX_MTU))
    return value


def parse_signer_key(value: Any, key: str) -> bytes:
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


def parse_prefixes(value, key: str) -> list:
    """A list of CIDR prefixes (subnet routes), each once."""
    expect(value, list, key, "a list of CIDR strings")
    if len(value) > 256:
        raise ConfigError(key, "%d prefixes; at most 256" % len(value))
    out: list = []
    for j, text in enumerate(value):
        net = parse_network(text, "%s[%d]" % (key, j))
        if net in out:
            raise ConfigError("%s[%d]" % (key, j), "%s is listed twice" % net)
        out.append(net)
    return out


def parse_addresses(value, key: str) -> tuple:
    """A list of 1..4 IP addresses (strings), e.g. an exit's upstream resolvers."""
    items = expect(value, list, key, "a list of IP addresses")
    if not 1 <= len(items) <= 4:
        raise ConfigError(key, "give 1 to 4 addresses")
    return parse_ip_addresses(items, key)
