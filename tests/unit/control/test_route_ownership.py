"""No peer may take another's traffic (issue 18): the engine's invariants
(Engine.route_problem).  A prefix belongs to one peer; a directory record's
claim (an *exclusive* peer) overlaps no other peer's prefix, either way, IPv4
and IPv6; a change moves prefixes only between the peers it names.

The same rules in the data paths and the daemon: tests/contract/test_route_ownership.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.control.engine import Engine

N = ipaddress.ip_network


def _key() -> bytes:
    return crypto.x25519_public(crypto.x25519_private())


def test_a_prefix_belongs_to_one_peer():
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    y = e.add_peer(_key(), "ysite", ["10.77.0.128/25"])
    with pytest.raises(ValueError, match="10.77.0.128/25 is peer ysite's"):
        e.add_peer(_key(), "x", ["10.77.0.128/25"])
    # overlapping prefixes of ordinary peers are fine (the longest prefix wins)
    inner = e.add_peer(_key(), "inner", ["10.77.0.200/32"], dynamic=True)
    assert e.prefix_holder("10.77.0.200/32") is inner and e.prefix_holder(N("10.77.0.128/25")) is y
    e.remove_peer(inner.id)
    assert e.prefix_holder("10.77.0.200/32") is None


@pytest.mark.parametrize("claim, other", [
    ("10.77.0.200/32", "10.77.0.128/25"),      # inside another peer's prefix
    ("10.77.0.128/26", "10.77.0.128/25"),
    ("10.77.0.0/24", "10.77.0.128/25"),        # holding another peer's prefix
    ("10.77.0.128/25", "10.77.0.128/25"),
    ("fd77::c8/128", "fd77::80/121"),
    ("fd77::/64", "fd77::80/121"),
])
def test_a_directory_claim_overlaps_no_other_prefix_either_way(claim, other):
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    e.add_peer(_key(), "ysite", [other])
    assert e.route_problem({None: [claim]}, new_exclusive=True) is not None
    with pytest.raises(ValueError, match="ysite"):
        e.add_peer(_key(), "x", [claim], dynamic=True, exclusive=True)
    # and the other way round: a claim already admitted keeps later peers out of it
    e2 = Engine(bytearray(crypto.x25519_private()), Tunables())
    x = e2.add_peer(_key(), "x", [claim], dynamic=True, exclusive=True)
    with pytest.raises(ValueError, match="peer x's"):
        e2.add_peer(_key(), "ysite", [other])
    later = e2.add_peer(_key(), "z", ["10.88.0.0/16", "fd88::/64"])
    with pytest.raises(ValueError):
        e2.set_allowed_ips({later.id: ["10.88.0.0/16", other]})
    assert later.allowed_ips == [N("10.88.0.0/16"), N("fd88::/64")], "nothing changed"
    e2.remove_peer(x.id)
    e2.set_allowed_ips({later.id: [other]})


def test_a_peer_the_config_adopts_is_no_longer_exclusive():
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    x = e.add_peer(_key(), "x", ["10.77.0.200/32"], dynamic=True, exclusive=True)
    with pytest.raises(ValueError):
        e.add_peer(_key(), "hub", ["10.77.0.0/24"])
    e.adopt(x.id)
    assert not x.dynamic and not x.exclusive
    e.add_peer(_key(), "hub", ["10.77.0.0/24"])          # overlaps of the file's peers are fine


def test_set_allowed_ips_moves_between_the_peers_it_names_at_once():
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    a = e.add_peer(_key(), "a", ["10.0.0.1/32"])
    b = e.add_peer(_key(), "b", ["10.0.0.2/32"])
    with pytest.raises(ValueError, match="is peer a's"):
        e.set_allowed_ips({b.id: ["10.0.0.1/32"]})
    e.set_allowed_ips({a.id: ["10.0.0.2/32"], b.id: ["10.0.0.1/32"]})     # a swap is one change
    assert e.prefix_holder("10.0.0.1/32") is b and e.prefix_holder("10.0.0.2/32") is a


def test_a_host_route_claim_looks_up_its_supernets_not_every_peer(monkeypatch):
    """A network member's claim (exclusive /32 and /128) costs the same with
    400 members as with none: its overlaps are its supernets, looked up, not
    every held prefix compared (bench/network_scale.py measured 8 ms per new
    member at 1,000 members, growing with N, before).  The rules hold: a
    supernet held by another peer, either family, is still refused."""
    from phantom.control import allowed as E
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    e.add_peer(_key(), "site", ["10.77.0.0/24", "fd00:77::/64"])
    for i in range(200):
        e.add_peer(_key(), "m%d" % i, ["100.64.0.%d/32" % (i + 1), "fd00:1::%x/128" % (i + 1)],
                   dynamic=True, exclusive=True)
    compared = []
    real = E.overlap
    monkeypatch.setattr(E, "overlap", lambda a, b: compared.append(1) or real(a, b))
    e.add_peer(_key(), "new", ["100.64.1.1/32", "fd00:1::1:1/128"], dynamic=True, exclusive=True)
    assert len(compared) <= 4, "%d prefixes compared for one host claim" % len(compared)
    with pytest.raises(ValueError, match="overlaps peer site's 10.77.0.0/24"):
        e.add_peer(_key(), "in-site4", ["10.77.0.9/32"], dynamic=True, exclusive=True)
    with pytest.raises(ValueError, match="overlaps peer site's fd00:77::/64"):
        e.add_peer(_key(), "in-site6", ["fd00:77::9/128"], dynamic=True, exclusive=True)
    with pytest.raises(ValueError, match="100.64.0.7/32 is peer m6's"):
        e.add_peer(_key(), "dup", ["100.64.0.7/32"], dynamic=True, exclusive=True)


@pytest.mark.parametrize("default", ["0.0.0.0/0", "::/0"])
def test_a_default_route_overlaps_longer_prefixes_but_never_another_default(default):
    """An exit in use holds /0 beside run-time peers (the longest prefix
    wins, issue 22); a second peer's /0 of the same family would take the
    first one's traffic, so it is refused whichever way it comes."""
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    e.add_peer(_key(), "member", ["100.64.0.2/32", "fd00::2/128"], dynamic=True, exclusive=True)
    ex = e.add_peer(_key(), "exit", [default], dynamic=True, exclusive=True)
    assert e.route_problem({None: [default]}, new_exclusive=True) is not None
    with pytest.raises(ValueError, match="exit"):
        e.add_peer(_key(), "other", [default], dynamic=True, exclusive=True)
    with pytest.raises(ValueError):
        e.add_peer(_key(), "configured", [default])
    assert e.prefix_holder(default) is ex
