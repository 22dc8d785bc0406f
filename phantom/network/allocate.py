"""Address allocation: the rule, as a pure function of the prefixes and the
taken addresses.

The join transaction (``join._allocate``) gives exactly this address without
collecting the taken ones (point lookups on the store's unique address
columns, a cursor and a freed list: flat in N; tests/unit/directory/
test_network_ledger.py checks the two agree), inside the transaction that
consumes the invite and inserts the member (with unique constraints on both
addresses), so two front ends can never hand out one address twice: the
loser of a race fails its insert and retries.

* IPv4: the lowest free host address of the prefix: never the network or
  broadcast address, nor one in ``reserved``, nor a taken one.
* IPv6: derived from the IPv4 address -- the /48, subnet 0, and the IPv4
  address as the low 32 bits (``fd3c:9a41:7e02::6457:7`` for 100.87.0.7), so
  the two read alike -- or, if that one is taken (a member kept an older
  address), the next free one above it in subnet 0.

A full prefix is an :class:`AllocationError` saying so.  The cost is
O(len(taken)): the lowest free address is at most ``len(taken) + 1`` steps
from the start.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional

from .errors import AllocationError


def _ints(addresses: Iterable[Any], version: int) -> set:
    out = set()
    for a in addresses:
        a = a if isinstance(a, ipaddress._BaseAddress) else ipaddress.ip_address(a)
        if a.version == version:
            out.add(int(a))
    return out


def allocate_ipv4(prefix: Any, taken: Iterable[Any], reserved: Iterable[Any] = ()
                  ) -> ipaddress.IPv4Address:
    """The lowest host address of ``prefix`` not in ``taken`` or ``reserved``."""
    net = ipaddress.IPv4Network(prefix)
    if net.prefixlen > 30:
        raise AllocationError("%s has no room for members (use /30 or shorter)" % net)
    used = _ints(taken, 4) | _ints(reserved, 4)
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - 1
    candidate = first
    while candidate <= last:
        if candidate not in used:
            return ipaddress.IPv4Address(candidate)
        candidate += 1
    in_prefix = sum(1 for u in used if first <= u <= last)
    raise AllocationError("no free IPv4 address left in %s (%d of %d host addresses taken)"
                          % (net, in_prefix, last - first + 1))


def derived_ipv6(prefix: Any, ipv4: Any) -> ipaddress.IPv6Address:
    """The /48's subnet 0 with ``ipv4`` as the low 32 bits."""
    net = ipaddress.IPv6Network(prefix)
    if net.prefixlen != 48:
        raise AllocationError("%s is not a /48" % net)
    return ipaddress.IPv6Address(int(net.network_address) | int(ipaddress.IPv4Address(ipv4)))


def allocate_ipv6(prefix: Any, taken: Iterable[Any], ipv4: Optional[Any] = None
                  ) -> ipaddress.IPv6Address:
    """The address derived from ``ipv4`` (or ::1 of subnet 0 without it), or
    the next free one above it in subnet 0 of the /48."""
    net = ipaddress.IPv6Network(prefix)
    if net.prefixlen != 48:
        raise AllocationError("%s is not a /48" % net)
    used = _ints(taken, 6)
    base = int(net.network_address)
    start = int(derived_ipv6(net, ipv4)) if ipv4 is not None else base + 1
    last = base + (1 << 64) - 1                  # subnet 0: the /64 at the start of the /48
    candidate = max(start, base + 1)
    for _ in range(len(used) + 1):
        if candidate > last:
            break
        if candidate not in used:
            return ipaddress.IPv6Address(candidate)
        candidate += 1
    raise AllocationError("no free IPv6 address in subnet 0 of %s above %s"
                          % (net, ipaddress.IPv6Address(start)))


def allocate(definition: Any, taken4: Iterable[Any], taken6: Iterable[Any],
             reserved4: Iterable[Any] = ()) -> tuple:
    """(IPv4, IPv6) for a new member of ``definition`` (anything with
    ``ipv4``/``ipv6`` prefixes), never one of the taken addresses."""
    v4 = allocate_ipv4(definition.ipv4, taken4, reserved4)
    return v4, allocate_ipv6(definition.ipv6, taken6, v4)
