"""Member names: the rules a name must follow, and the name table the
responder answers from.

A member's name is one DNS label in LDH form (RFC 1035 section 2.3.1 as
relaxed by RFC 1123: letters, digits and hyphens, 1 to 63 characters, no
hyphen first or last), compared without regard to case and kept in lower
case.  Names come from the network (certificates, the watch stream), so
they are input like any other: :class:`NameTable` refuses an entry whose
name or addresses break the rules and counts it, and the responder checks
every name it would put in an answer (:class:`phantom.dns.zone.Zone`), so
a bad name is never served.

The responder reads names through :class:`NameSource`, a two-method
protocol the network's member set can implement itself, or feed a
:class:`NameTable` with (one call per member change: O(1)).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping, NamedTuple, Protocol, Union

__all__ = [
    "MAX_LABEL", "MAX_ADDRESSES", "Address", "Addresses", "NameSource", "NameTable",
    "valid_label", "normalize_label", "normalize_domain", "DNS_PORT", "DEFAULT_TTL",
]

# The service's defaults live here, not in server.py and zone.py (which
# re-export them), because the ``[dns]`` section's settings need them and
# reading a config must not import dnspython (service.py, phantom/dns/__init__.py).
DNS_PORT = 53
DEFAULT_TTL = 5             # seconds: a removal is gone from caches within this

MAX_LABEL = 63              # RFC 1035: octets in one label
MAX_NAME = 253              # presentation form of a full name, without the root dot
MAX_ADDRESSES = 16          # per family and name: a member has one of each; bounded answers

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


class Addresses(NamedTuple):
    """What a name resolves to: its A and its AAAA addresses."""
    ipv4: tuple[ipaddress.IPv4Address, ...]
    ipv6: tuple[ipaddress.IPv6Address, ...]


class NameSource(Protocol):
    """What the responder asks of the member set.  Both calls must be cheap
    (a dict lookup): they run once per query, on the event loop."""

    def lookup(self, name: str) -> Addresses | None:
        """The addresses of member ``name`` (a valid label, lower case), or
        None when no member has that name."""

    def reverse(self, address: Address) -> str | None:
        """The name of the member that owns ``address``, or None."""


def valid_label(name: object) -> bool:
    """True when ``name`` is a str that is one LDH label (any case)."""
    # ASCII first: str.lower() maps some non-ASCII letters to ASCII ones
    # (KELVIN SIGN -> "k"), which would let "\u212a3" take over "k3"
    return (isinstance(name, str) and len(name) <= MAX_LABEL and name.isascii()
            and _LDH.match(name.lower()) is not None)


def normalize_label(name: object) -> str | None:
    """``name`` in lower case when it is a valid label, else None."""
    return name.lower() if valid_label(name) else None


def normalize_domain(domain: str) -> str:
    """The network's domain in lower case without a trailing dot
    (``"Corp.Phantom."`` -> ``"corp.phantom"``); ValueError naming the
    problem when it is not a sequence of LDH labels or lies under ``arpa``."""
    if not isinstance(domain, str):
        raise ValueError("domain must be a string")
    if not domain.isascii():
        raise ValueError("domain %r is not ASCII (write an IDN in its xn-- form)" % domain)
    d = domain.lower()
    if d.endswith("."):
        d = d[:-1]
    if not d:
        raise ValueError("domain is empty")
    # leave room for one member label of up to 63 characters in front of it
    if len(d) > MAX_NAME - MAX_LABEL - 1:
        raise ValueError("domain %r is longer than %d characters" % (domain, MAX_NAME - MAX_LABEL - 1))
    for label in d.split("."):
        if not valid_label(label):
            raise ValueError("domain %r: %r is not a DNS label (letters, digits, hyphens; "
                             "1-63 characters; no hyphen first or last)" % (domain, label))
    if d == "arpa" or d.endswith(".arpa"):
        raise ValueError("domain %r lies under arpa" % domain)
    return d


def _addresses(values: Iterable, version: int) -> tuple | None:
    out = []
    seen = set()
    for v in values:
        try:
            a = v if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
                else ipaddress.ip_address(v)
        except (TypeError, ValueError):
            return None
        if a.version != version:
            return None
        if a not in seen:
            seen.add(a)
            out.append(a)
    if len(out) > MAX_ADDRESSES:
        return None
    return tuple(out)


class NameTable:
    """name -> :class:`Addresses`, and address -> name for PTR answers.

    Every change is O(1) (a member has a bounded number of addresses), and
    takes effect for the next query: the responder keeps no copy.  The
    member set calls :meth:`set` when a member appears or changes, and
    :meth:`remove` when it leaves; :meth:`rename` is remove + set;
    :meth:`replace` loads a snapshot.  An entry whose name is not a valid
    label, or whose addresses are not addresses of the right family (at
    most :data:`MAX_ADDRESSES` each), is refused whole: ``set`` returns
    False and counts it (:meth:`stats`).  Names are kept in lower case.
    """

    def __init__(self, entries: Mapping[str, tuple] | None = None) -> None:
        self._by_name: dict[str, Addresses] = {}
        self._by_address: dict[Address, str] = {}
        self.invalid_names = 0
        self.invalid_addresses = 0
        if entries:
            self.replace(entries)

    # -- the NameSource protocol -------------------------------------------
    def lookup(self, name: str) -> Addresses | None:
        return self._by_name.get(name)

    def reverse(self, address: Address) -> str | None:
        return self._by_address.get(address)

    # -- changes -------------------------------------------------------------
    def set(self, name: str, ipv4: Iterable = (), ipv6: Iterable = ()) -> bool:
        """Add or change ``name``.  False (and counted) when refused; a
        refused change leaves the table as it was."""
        key = normalize_label(name)
        if key is None:
            self.invalid_names += 1
            return False
        v4 = _addresses(ipv4, 4)
        v6 = _addresses(ipv6, 6)
        if v4 is None or v6 is None:
            self.invalid_addresses += 1
            return False
        self._drop(key)
        entry = Addresses(v4, v6)
        self._by_name[key] = entry
        for a in v4 + v6:
            self._by_address[a] = key
        return True

    def remove(self, name: str) -> bool:
        """Forget ``name``; False when it was not there."""
        key = normalize_label(name)
        return key is not None and self._drop(key)

    def rename(self, old: str, new: str) -> bool:
        """``old`` stops answering at once; ``new`` answers with its
        addresses unless ``new`` is refused (then neither answers)."""
        key = normalize_label(old)
        entry = self._by_name.get(key) if key is not None else None
        if entry is None:
            return False
        self._drop(key)
        return self.set(new, entry.ipv4, entry.ipv6)

    def replace(self, entries: Mapping[str, tuple]) -> int:
        """Load a snapshot ``{name: (ipv4s, ipv6s)}`` in place of everything;
        returns how many entries were refused."""
        self._by_name.clear()
        self._by_address.clear()
        refused = 0
        for name, (v4, v6) in entries.items():
            refused += not self.set(name, v4, v6)
        return refused

    def _drop(self, key: str) -> bool:
        old = self._by_name.pop(key, None)
        if old is None:
            return False
        for a in old.ipv4 + old.ipv6:
            if self._by_address.get(a) == key:
                del self._by_address[a]
        return True

    # -- reading ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        key = normalize_label(name)
        return key is not None and key in self._by_name

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def stats(self) -> dict:
        return {"names": len(self._by_name), "invalid_names": self.invalid_names,
                "invalid_addresses": self.invalid_addresses}
