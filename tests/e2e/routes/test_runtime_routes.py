"""Kernel routes for peers learnt at run time (issue 22; docs/routes.md): a
peer opened through the API with allowed IPs outside the interface's subnet
gets its routes through the device from the privileged helper, in the same
step as the data path's; `close` removes them again, and so does a reload
that drops a configured peer's extra prefix; nothing is left after stop."""

from __future__ import annotations

import signal

import pytest

from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import UDP_PORT, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SITE4, SITE6 = "10.77.0.0/24", "fd77::/64"       # outside 10.99.0.0/24, fd99::/64
HOST4, HOST6 = "10.77.0.1", "fd77::1"


def routes_of(host, dev: str = "phtun0") -> str:
    return (host.run(["ip", "route", "show", "dev", dev]).stdout
            + host.run(["ip", "-6", "route", "show", "dev", dev]).stdout)


def kernel_state(host) -> tuple:
    return tuple(host.run(cmd).stdout for cmd in (["ip", "rule"], ["ip", "-6", "rule"],
                                                   ["ip", "route", "show", "table", "all"],
                                                   ["ip", "-6", "route", "show", "table", "all"]))


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_peer_opened_at_run_time_gets_kernel_routes_until_closed(lan3, daemon_factory, tmp_path, datapath):
    a, b = lan3.hosts["a"], lan3.hosts["b"]
    alice, bob = make_node(tmp_path, "alice", 1, a), make_node(tmp_path, "bob", 2, b)
    b.ns.ip("addr", "add", HOST4 + "/32", "dev", "lo")        # bob's site, behind his tunnel address
    b.ns.ip("addr", "add", HOST6 + "/128", "dev", "lo")
    write_config(alice, mode="tun", peers=[])
    write_config(bob, mode="tun", peers=[{"name": "alice", "public_key": alice.pub,
                                           "allowed_ips": ["10.99.0.1/32", "fd99::1/128"]}])
    before = kernel_state(a)
    start(daemon_factory, bob, datapath)
    start(daemon_factory, alice, datapath)
    assert "10.77.0.0" not in routes_of(a)

    code, body = alice.api("POST", "/open/%s:%d" % (b.ip, UDP_PORT),
                           {"public_key": bob.pub, "name": "bob",
                            "allowed_ips": ["10.99.0.2/32", "fd99::2/128", SITE4, SITE6]}, timeout=30)
    assert code == 200 and body["state"] == "established", body
    routes = routes_of(a)
    assert "10.77.0.0/24 proto 112" in routes and "fd77::/64 proto 112" in routes, routes
    assert "dev phtun0" in a.run(["ip", "route", "get", HOST4]).stdout
    assert a.ns.ping(HOST4, timeout=10), "the run-time peer's prefix is not reached through the tunnel"
    assert a.ns.ping(HOST6, timeout=10)
    assert sorted(alice.status()["privsep"]["routes"]) == ["10.77.0.0/24", "fd77::/64"]

    code, body = alice.api("POST", "/close/bob")
    assert code == 200 and body["removed"] is True, body
    routes = routes_of(a)
    assert "10.77.0.0" not in routes and "fd77::" not in routes, routes
    assert alice.status()["privsep"]["routes"] == []
    assert not a.ns.ping(HOST4, timeout=1)

    # open again, then stop: nothing of it is left in the kernel
    code, body = alice.api("POST", "/open/%s:%d" % (b.ip, UDP_PORT),
                           {"public_key": bob.pub, "name": "bob", "allowed_ips": ["10.99.0.2/32", SITE4]},
                           timeout=30)
    assert code == 200, body
    assert "10.77.0.0/24" in routes_of(a)
    alice.daemon.kill(signal.SIGTERM)
    assert wait_for(lambda: kernel_state(a) == before, timeout=10), kernel_state(a)


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_run_time_peer_whose_prefix_the_host_routes_elsewhere_is_refused(lan3, daemon_factory, tmp_path,
                                                                           datapath):
    """A prefix the kernel already routes through another device: the open
    is refused naming it (409), no peer, no route: never a data-path route
    the kernel does not follow."""
    a, b = lan3.hosts["a"], lan3.hosts["b"]
    alice, bob = make_node(tmp_path, "alice", 1, a), make_node(tmp_path, "bob", 2, b)
    a.ns.ip("route", "add", SITE4, "via", b.ip)
    write_config(alice, mode="tun", peers=[])
    write_config(bob, mode="tun", peers=[{"name": "alice", "public_key": alice.pub,
                                           "allowed_ips": ["10.99.0.1/32"]}])
    start(daemon_factory, bob, datapath)
    start(daemon_factory, alice, datapath)
    code, body = alice.api("POST", "/open/%s:%d" % (b.ip, UDP_PORT),
                           {"public_key": bob.pub, "name": "bob", "allowed_ips": ["10.99.0.2/32", SITE4]},
                           timeout=30)
    assert code == 409 and SITE4 in body["error"], body
    assert all(p["name"] != "bob" for p in alice.status()["peers"])
    assert "phtun0" not in a.run(["ip", "route", "show", SITE4]).stdout
