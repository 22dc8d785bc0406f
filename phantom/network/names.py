"""Names, domains, endpoints, URLs and prefixes of a network, validated.

A member's name is a DNS label (issue 21 answers ``NAME.DOMAIN``), in the
one spelling DNS compares equal: lowercase ASCII letters, digits and '-'
(RFC 1123), 1 to 63 characters, no '-' at either end, not all digits (so
``ping 100`` never means a member), and never an IDNA-looking label
("xn--..." or any "??--": RFC 5891 reserves them), so no Unicode lookalike
can be smuggled in through punycode.  Anything else is refused with the
character that broke the rule named (``U+0430 (CYRILLIC SMALL LETTER A)``).
Group and network names follow the same rule (groups: at most 32
characters).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from .canonical import describe_char
from .errors import FormatError

LABEL_MAX = 63
GROUP_MAX = 32
DOMAIN_MAX = 189              # NAME (63) + "." + DOMAIN fits DNS's 253
URL_MAX = 256
ENDPOINT_MAX = 261            # a 253-character host name, ':' and a port
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
LABEL_RULE = "lowercase letters a-z, digits and '-', not starting or ending with '-'"


def label(value: Any, path: str = "name", max_len: int = LABEL_MAX) -> str:
    """A DNS label in canonical form, or FormatError naming what is wrong."""
    if not isinstance(value, str):
        raise FormatError("must be a string", path)
    if not value:
        raise FormatError("is empty", path)
    if len(value) > max_len:
        raise FormatError("is %d characters; at most %d" % (len(value), max_len), path)
    for ch in value:
        if ch not in _LABEL_CHARS:
            if "A" <= ch <= "Z":
                raise FormatError("must be lowercase (write %r)" % value.lower(), path)
            raise FormatError("contains %s: only %s" % (describe_char(ch), LABEL_RULE), path)
    if value[0] == "-" or value[-1] == "-":
        raise FormatError("must not start or end with '-'", path)
    if len(value) >= 4 and value[2:4] == "--":
        raise FormatError("%r looks like an IDNA label (\"xn--...\"): such names are refused"
                          % value, path)
    if value.isdigit():
        raise FormatError("must not be all digits", path)
    return value


def group(value: Any, path: str = "group") -> str:
    return label(value, path, GROUP_MAX)


def domain(value: Any, path: str = "domain") -> str:
    """A DNS domain: dot-separated labels, lowercase, no trailing dot."""
    if not isinstance(value, str):
        raise FormatError("must be a string", path)
    if len(value) > DOMAIN_MAX:
        raise FormatError("is %d characters; at most %d" % (len(value), DOMAIN_MAX), path)
    if value.endswith("."):
        raise FormatError("write it without the trailing '.'", path)
    for i, part in enumerate(value.split(".")):
        try:
            label(part, path)
        except FormatError as exc:
            raise FormatError("label %d (%r) %s" % (i + 1, part, exc.problem), path) from None
    return value


def hostname(value: Any, path: str) -> str:
    """A DNS host name (for endpoints and URLs), lowercase, labels checked."""
    if not isinstance(value, str) or not value:
        raise FormatError("must be a host name", path)
    if len(value) > 253:
        raise FormatError("host name is longer than 253 characters", path)
    for part in value.split("."):
        if not part or len(part) > LABEL_MAX or any(ch not in _LABEL_CHARS for ch in part) \
                or part[0] == "-" or part[-1] == "-":
            bad = next((ch for ch in value if ch not in _LABEL_CHARS and ch != "."), None)
            raise FormatError("%r is not a host name%s" % (value, (": it contains %s"
                              % describe_char(bad)) if bad else ""), path)
    return value


def endpoint(value: Any, path: str = "endpoint") -> str:
    """"host:port" in canonical form: an IPv4 literal, ``[IPv6]`` or a
    lowercase host name, and a decimal port 1-65535 without leading zeros."""
    if not isinstance(value, str) or len(value) > ENDPOINT_MAX or not value.isascii():
        raise FormatError("must be \"host:port\"", path)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or port != str(int(port)) or not 1 <= int(port) <= 65535:
        raise FormatError("%r: the port must be 1-65535" % value, path)
    if host.startswith("["):
        if not host.endswith("]"):
            raise FormatError("%r: an IPv6 address in brackets" % value, path)
        try:
            addr = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise FormatError("%r: bad IPv6 address" % value, path) from None
        canon = "[%s]:%s" % (addr, port)
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            addr = ipaddress.IPv4Address(host)
        except ValueError:
            raise FormatError("%r: bad IPv4 address" % value, path) from None
        canon = "%s:%s" % (addr, port)
    else:
        canon = "%s:%s" % (hostname(host, path), port)
    if canon != value:
        raise FormatError("write %r as %r" % (value, canon), path)
    return value


def url(value: Any, path: str = "directory") -> str:
    """An http(s) URL of a directory: a host, an optional port and path, no
    user info, query or fragment, no trailing '/' (one spelling)."""
    if not isinstance(value, str) or not value or len(value) > URL_MAX:
        raise FormatError("must be an http(s) URL of at most %d characters" % URL_MAX, path)
    if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
        bad = next(ch for ch in value if not ch.isascii() or ch.isspace() or not ch.isprintable())
        raise FormatError("URL contains %s" % describe_char(bad), path)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise FormatError("%r is not a URL: %s" % (value, exc), path) from None
    if parts.scheme not in ("http", "https"):
        raise FormatError("%r: the scheme must be http or https" % value, path)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise FormatError("%r: no user or password in the URL" % value, path)
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise FormatError("%r: no query or fragment" % value, path)
    if value.endswith("/"):
        raise FormatError("write %r without the trailing '/'" % value, path)
    host = parts.hostname or ""
    if not host:
        raise FormatError("%r has no host" % value, path)
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise FormatError("%r: bad IPv6 address" % value, path) from None
    elif not re.fullmatch(r"[0-9.]+", host):
        hostname(host, path)
        if parts.netloc.split(":")[0] != host:
            raise FormatError("%r: write the host in lowercase" % value, path)
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise FormatError("%r: bad IPv4 address" % value, path) from None
    if port is not None and not 1 <= port <= 65535:
        raise FormatError("%r: port out of range" % value, path)
    return value


def network(value: Any, path: str, version: int | None = None) -> ipaddress._BaseNetwork:
    """A prefix written exactly as :mod:`ipaddress` prints it (host bits zero)."""
    if not isinstance(value, str) or len(value) > 50 or not value.isascii():
        raise FormatError("must be a prefix like \"10.1.0.0/16\"", path)
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise FormatError("%r: %s" % (value, exc), path) from None
    if version is not None and net.version != version:
        raise FormatError("%r is not an IPv%d prefix" % (value, version), path)
    if str(net) != value:
        raise FormatError("write %r as %r" % (value, str(net)), path)
    return net


def address(value: Any, path: str, version: int) -> ipaddress._BaseAddress:
    """One address written exactly as :mod:`ipaddress` prints it."""
    if not isinstance(value, str) or len(value) > 45 or not value.isascii():
        raise FormatError("must be an IPv%d address" % version, path)
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise FormatError("%r is not an IP address" % value, path) from None
    if addr.version != version:
        raise FormatError("%r is not an IPv%d address" % (value, version), path)
    if str(addr) != value:
        raise FormatError("write %r as %r" % (value, str(addr)), path)
    return addr
