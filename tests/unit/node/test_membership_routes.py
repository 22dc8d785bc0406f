"""Approved routes and exits on a member (phantom/node/netroutes.py, issue
22): the member stream's certificates carry them to the peer door (the real
engine and PeerTable), overlaps go to the member that joined first, a
revoked route leaves in the same step another member's standby takes it
over, an approved exit is offered to `phantom exit use`, and this node's own
reissued certificate is taken from the stream."""

from __future__ import annotations

import ipaddress

from phantom.node.exits import DEFAULTS

from tests.unit.network.factory import NOW
from tests.unit.node.test_membership import ev, member_of, peer_of, world  # noqa: F401

N = ipaddress.ip_network
LAN = N("192.168.50.0/24")


def again(net, c, now, routes=(), exit=False):
    """``c``'s member with a reissued certificate (same addresses and since)."""
    return net.cert(c.name, ipv4=c.ipv4, ipv6=c.ipv6, since=c.since, now=now, routes=routes,
                    exit=exit, groups=c.groups)


def test_approved_routes_reach_the_peer_door_and_overlaps_go_to_the_earlier_member(world):
    d, m = member_of(world)
    net = world.net
    r = net.cert("r", since=NOW - 100, routes=[LAN])
    s = net.cert("s", since=NOW - 50, routes=[LAN, N("10.7.0.0/16")])
    plain = net.cert("plain")
    m.apply_event(ev(1, cert=s))                     # the later member first: it routes LAN...
    assert LAN in peer_of(d, "s").allowed_ips
    m.apply_event(ev(2, cert=plain))
    m.apply_event(ev(3, cert=r))                     # ...until the earlier one is approved too
    pr, ps = peer_of(d, "r"), peer_of(d, "s")
    assert set(pr.allowed_ips) == set(r.addresses) | {LAN}
    assert set(ps.allowed_ips) == set(s.addresses) | {N("10.7.0.0/16")}
    assert set(peer_of(d, "plain").allowed_ips) == set(plain.addresses)
    assert d.peers.offers_of(pr) == {"routes": (LAN,)}
    rows = {row["name"]: row for row in m.status()["routes"]["members"]}
    assert rows["s"]["standby"] == [{"prefix": "192.168.50.0/24", "behind": "r"}]
    # revoked on r: s's standby takes LAN over in the same step
    m.apply_event(ev(4, cert=again(net, r, NOW + 1)))
    assert set(peer_of(d, "r").allowed_ips) == set(r.addresses)
    assert set(peer_of(d, "s").allowed_ips) == set(s.addresses) | {LAN, N("10.7.0.0/16")}
    assert d.peers.offers_of(peer_of(d, "r")) == {}
    # all of s's revoked too: nobody routes LAN any more
    m.apply_event(ev(5, cert=again(net, s, NOW + 2)))
    assert set(peer_of(d, "s").allowed_ips) == set(s.addresses)
    assert all(LAN not in p.allowed_ips for p in d.engine.peers.values())


def test_an_approved_exit_is_offered_and_may_carry_the_default_routes(world):
    d, m = member_of(world)
    net = world.net
    x = net.cert("x", exit=True)
    other = net.cert("other")
    m.apply_event(ev(1, cert=x))
    m.apply_event(ev(2, cert=other))
    px = peer_of(d, "x")
    assert d.peers.offers_exit(px) and not d.peers.offers_exit(peer_of(d, "other"))
    # `phantom exit use x`: its /0 next to other members' host routes (the
    # longest prefix wins: a default route takes nobody's traffic)
    d.peers.set_extra({px.id: DEFAULTS})
    assert set(DEFAULTS) <= set(peer_of(d, "x").allowed_ips)
    # the approval revoked: no longer offered
    m.apply_event(ev(3, cert=again(net, x, NOW + 1)))
    assert not d.peers.offers_exit(peer_of(d, "x"))


def test_this_nodes_own_reissued_certificate_is_taken_from_the_stream(world):
    d, m = member_of(world)
    me = world.me
    mine = world.net.cert("me", key=me.key, ipv4=me.ipv4, ipv6=me.ipv6, since=me.since,
                          now=NOW + 5, routes=[LAN], exit=True, groups=me.groups)
    m.apply_event(ev(1, cert=mine))
    assert m.cert == mine and d.engine.membership == mine.encode()
    st = m.status()["routes"]
    assert st["approved"] == ["192.168.50.0/24"] and st["exit"] is True


def test_a_route_another_peer_holds_costs_the_route_never_the_member(world):
    d, m = member_of(world)
    net = world.net
    # a configured peer (not exclusive) holds a host inside the LAN
    d.peers.add(bytes(range(1, 33)), "lanhost", [N("192.168.50.7/32")])
    r = net.cert("r", routes=[LAN])
    m.apply_event(ev(1, cert=r))
    pr = peer_of(d, "r")
    assert pr is not None and set(pr.allowed_ips) == set(r.addresses)
    # removed and admitted again (a renewal after expiry): still a peer
    m.apply_event(ev(2, removal=net.removal(r.key, now=NOW + 1)))
    assert peer_of(d, "r") is None
    r2 = net.cert("r2", routes=[LAN], since=NOW + 2, now=NOW + 2)
    m.apply_event(ev(3, cert=r2))
    assert peer_of(d, "r2") is not None
