"""Address allocation: lowest free, never a taken one, a full prefix is a
clear error; randomized allocate/release sequences against a naive model."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from phantom.network import AllocationError, allocate, allocate_ipv4, allocate_ipv6, derived_ipv6

from .factory import Net

A = ipaddress.ip_address
NET = Net()


def test_the_lowest_free_host_skipping_network_broadcast_reserved_and_taken():
    p = "100.87.0.0/16"
    assert allocate_ipv4(p, []) == A("100.87.0.1")
    assert allocate_ipv4(p, ["100.87.0.1", "100.87.0.2", "100.87.0.4"]) == A("100.87.0.3")
    assert allocate_ipv4(p, ["100.87.0.1"], reserved=["100.87.0.2"]) == A("100.87.0.3")
    assert allocate_ipv4(p, ["10.0.0.1", "fd00::1"]) == A("100.87.0.1")   # others ignored
    small = "10.0.0.0/30"                                 # hosts .1 and .2
    assert allocate_ipv4(small, ["10.0.0.1"]) == A("10.0.0.2")
    with pytest.raises(AllocationError) as info:
        allocate_ipv4(small, ["10.0.0.1", "10.0.0.2"])
    assert str(info.value) == ("no free IPv4 address left in 10.0.0.0/30 "
                               "(2 of 2 host addresses taken)")
    with pytest.raises(AllocationError):
        allocate_ipv4("10.0.0.0/31", [])


def test_a_full_slash_24_is_an_error_not_the_broadcast_address():
    taken = ["10.1.2.%d" % i for i in range(1, 255)]
    with pytest.raises(AllocationError, match="254 of 254"):
        allocate_ipv4("10.1.2.0/24", taken)


def test_ipv6_is_derived_from_ipv4_and_moves_on_when_taken():
    p6 = "fd3c:9a41:7e02::/48"
    assert derived_ipv6(p6, "100.87.0.7") == A("fd3c:9a41:7e02::6457:7")
    assert allocate_ipv6(p6, [], A("100.87.0.7")) == A("fd3c:9a41:7e02::6457:7")
    assert allocate_ipv6(p6, ["fd3c:9a41:7e02::6457:7", "fd3c:9a41:7e02::6457:8"],
                         "100.87.0.7") == A("fd3c:9a41:7e02::6457:9")
    assert allocate_ipv6(p6, []) == A("fd3c:9a41:7e02::1")
    with pytest.raises(AllocationError):
        allocate_ipv6("fd00::/64", [])


def test_allocate_gives_a_pair_inside_the_definition():
    v4, v6 = allocate(NET.definition, [], [])
    assert v4 == A("100.87.0.1") and v6 == A("fd3c:9a41:7e02::6457:1")
    assert v4 in NET.definition.ipv4 and v6 in NET.definition.ipv6


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=120),
       reserved=st.sets(st.integers(1, 20), max_size=4))
def test_property_random_allocate_release_never_gives_a_taken_address(ops, reserved):
    """Allocate (True) or release the i-th held address (False); compare with
    a naive scan of every host of a /26."""
    prefix = ipaddress.ip_network("10.9.8.0/26")
    hosts = list(prefix.hosts())
    res = {hosts[i - 1] for i in reserved}
    held4, held6 = [], []
    for alloc, i in ops:
        if alloc:
            naive = next((h for h in hosts if h not in held4 and h not in res), None)
            if naive is None:
                with pytest.raises(AllocationError):
                    allocate_ipv4(prefix, held4, res)
                continue
            v4 = allocate_ipv4(prefix, held4, res)
            v6 = allocate_ipv6("fd01:2:3::/48", held6, v4)
            assert v4 == naive and v4 not in held4 and v4 not in res
            assert v4 not in (prefix.network_address, prefix.broadcast_address)
            assert v6 not in held6 and v6 in ipaddress.ip_network("fd01:2:3::/48")
            held4.append(v4)
            held6.append(v6)
        elif held4:
            j = i % len(held4)
            held4.pop(j)
            held6.pop(j)
        assert len(set(held4)) == len(held4) and len(set(held6)) == len(held6)


@settings(max_examples=60, deadline=None)
@given(taken6=st.sets(st.integers(0, 64), max_size=30), v4=st.integers(0, 40))
def test_property_ipv6_never_taken_even_when_the_derived_ones_are(taken6, v4):
    base = int(A("fd01:2:3::"))
    ip4 = A("10.0.0.0") + v4
    taken = {A(base + int(A("10.0.0.0")) + t) for t in taken6}
    got = allocate_ipv6("fd01:2:3::/48", taken, ip4)
    assert got not in taken and int(got) >= int(derived_ipv6("fd01:2:3::/48", ip4))
