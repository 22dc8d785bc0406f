"""The text forms of names, endpoints and prefixes, parsed and written the
same way by the config file, the HTTP API, the key directory's records and
the command line.  Every problem raises :class:`phantom.errors.ConfigError`
naming the key it was given (``peer[1].endpoint``, ``allowed_ips[0]``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional

from .errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

PEER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
PEER_NAME_RULE = ("1-64 characters: a letter, then letters, digits, '.', '_' or '-'")


def parse_endpoint(text: Any, key: str = "endpoint") -> tuple[str, int]:
    """Parse ``"1.2.3.4:9000"`` or ``"[fd00::1]:9000"`` into ``(ip, port)``.

    The host must be an IP address literal (names are not resolved here); IPv6
    needs brackets.  Raises ConfigError(key, problem).
    """
    if not isinstance(text, str):
        raise ConfigError(key, "must be a string like \"192.0.2.1:9000\" or \"[fd00::1]:9000\"")
    s = text.strip()
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(key, "%r: an IPv6 endpoint is written [address]:port" % text)
        port_text = rest[1:]
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep:
            raise ConfigError(key, "%r has no port; write address:port, e.g. 192.0.2.1:9000" % text)
        if ":" in host:
            raise ConfigError(key, "%r: put an IPv6 address in brackets: [address]:port" % text)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(key, "%r: %r is not an IP address" % (text, host)) from None
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(key, "%r: port %r is not a number" % (text, port_text))
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(key, "%r: port %d is outside 1..65535" % (text, port))
    if addr.is_unspecified or addr.is_multicast:
        raise ConfigError(key, "%r: %s cannot be a peer's address" % (text, addr))
    return str(addr), port


# A host name as DNS allows it in an endpoint (RFC 1123 labels: letters,
# digits and inner hyphens, 1-63 characters; at most 253 in all; an
# optional final dot).  The last label is not all digits, so a mistyped
# address (1.2.3.4.5, 10.0.0) is not taken for a name.
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
HOSTNAME_RULE = ("a DNS name: labels of letters, digits and inner hyphens, 1-63 characters "
                 "each, at most 253 in all, the last one not all digits")


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# What ``open HOST:PORT`` answers when HOST does not resolve (node/endpoints.py);
# the daemon never repeats the name, the CLI puts the one it was given in front
NO_ADDRESS = "the endpoint's host name has no address"
LOOKUP_FAILED = "the endpoint's host name could not be looked up"


def looks_like_key(text: str) -> bool:
    """True when ``text`` is a 32-byte key in one of the forms keys are
    written (base64 standard or URL-safe, padded or not; hex).  Such text is
    never taken for a host name: resolving it would hand a (perhaps private)
    key to the DNS resolver and everyone on its path."""
    import base64
    import binascii
    t = text.strip()
    if len(t) == 64:
        try:
            return len(bytes.fromhex(t)) == 32
        except ValueError:
            return False
    if len(t) not in (43, 44):
        return False
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            if len(decode(t + "=" * (-len(t) % 4))) == 32:
                return True
        except (binascii.Error, ValueError):
            pass
    return False


def hostname_problem(host: str) -> Optional[str]:
    """Why ``host`` is not a valid DNS host name (None: it is one)."""
    if looks_like_key(host):
        return "looks like a key, not a host name (it is not looked up)"
    if not host.isascii():
        return "%r is not ASCII: write an internationalised name in its xn-- form" % host
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return "%r is not %s" % (host, HOSTNAME_RULE)
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return "%r is neither an IP address nor %s" % (host, HOSTNAME_RULE)
    return None


def parse_peer_endpoint(text: Any, key: str = "endpoint") -> tuple[str, int]:
    """A peer's endpoint: :func:`parse_endpoint`'s IP literals, or
    ``"vpn.example.com:51820"`` (a DNS name and a port; the name is kept in
    lower case without a final dot, and resolved later, never here).  Tell
    the two apart with :func:`is_ip_literal`.  Raises ConfigError(key, problem)."""
    try:
        return parse_endpoint(text, key)
    except ConfigError as exc:
        if not isinstance(text, str):
            raise
        s = text.strip()
        host, sep, port_text = s.rpartition(":")
        if s.startswith("[") or not sep or ":" in host or is_ip_literal(host) or not host:
            raise
        problem = hostname_problem(host)
        if problem is not None and looks_like_key(host):
            raise ConfigError(key, problem) from None       # never repeat a key
        if problem is not None:
            raise ConfigError(key, "%r: %s" % (text, problem)) from None
        del exc
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(key, "%r: port %r is not a number" % (text, port_text))
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(key, "%r: port %d is outside 1..65535" % (text, port))
    return host.rstrip(".").lower(), port


def format_endpoint(endpoint: tuple) -> str:
    host, port = endpoint[0], endpoint[1]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def parse_network(text: Any, key: str) -> IPNetwork:
    """An allowed-IPs prefix: strict (no host bits set)."""
    if not isinstance(text, str):
        raise ConfigError(key, "must be a CIDR string like \"10.0.0.0/24\"")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ConfigError(key, "%r is not an IP prefix (%s)" % (text, exc)) from None
        raise ConfigError(key, "%r has host bits set; did you mean %s?" % (text, loose)) from None


def parse_interface_address(text: Any, key: str) -> IPInterface:
    """An interface address with its prefix, e.g. ``10.9.0.1/24``."""
    if not isinstance(text, str):
        raise ConfigError(key, "must be a string like \"10.9.0.1/24\"")
    if "/" not in text:
        raise ConfigError(key, "%r needs a prefix length, e.g. %s/24" % (text, text))
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError as exc:
        raise ConfigError(key, "%r is not an address/prefix (%s)" % (text, exc)) from None
    if iface.ip.is_unspecified or iface.ip.is_multicast:
        raise ConfigError(key, "%r cannot be an interface address" % text)
    return iface


def parse_ip_addresses(items: list, key: str) -> tuple[str, ...]:
    """IP addresses (v4 or v6) written as strings, each named ``key[i]``, in
    their canonical text (an exit's upstream resolvers, [dns] listen)."""
    out = []
    for i, a in enumerate(items):
        try:
            if not isinstance(a, str):
                raise ValueError
            out.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise ConfigError("%s[%d]" % (key, i), "%r is not an IP address" % (a,)) from None
    return tuple(out)


def parse_port(value: Any, key: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():   # not "²"
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, "must be a port number (an integer), not %r" % (value,))
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(key, "port %d is outside %d..65535" % (value, low))
    return value
