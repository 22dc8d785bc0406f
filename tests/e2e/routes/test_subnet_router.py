"""A subnet router for configured peers (issue 22 item 4; docs/routes.md
"Subnet routers"): router b advertises 192.168.50.0/24 (its LAN with host
c, which routes the tunnel's subnet back through b: no masquerade) to
client a (allow_routes); a accepts it (`routes` in b's [[peer]]) and
reaches c through the tunnel, c sees a's tunnel address; d, not allowed on
b, does not get through; a reload of the router withdrawing the route stops
it, a reload of the client removes the kernel route within 5 s; a route
overlapping another peer's prefix is refused naming it."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from phantomlab import netns
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import UDP_PORT, write_config
from tests.e2e.routes.test_exit_node import sources_to

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LAN = "192.168.50.0/24"
ROUTER_LAN, HOST_LAN = "192.168.50.1", "192.168.50.2"


def kernel_route(host) -> str:
    return host.run(["ip", "route", "show", LAN]).stdout


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_lan_behind_a_subnet_router_is_reached_through_the_tunnel(daemon_factory, sniffer, tmp_path, datapath):
    with netns.lan(4) as topo:
        a, b, c, d = (topo.hosts[r] for r in "abcd")
        b.ns.ip("addr", "add", ROUTER_LAN + "/24", "dev", "eth0")
        c.ns.ip("addr", "add", HOST_LAN + "/24", "dev", "eth0")
        c.ns.ip("route", "add", "10.99.0.0/24", "via", ROUTER_LAN)     # the LAN routes the tunnel back
        public = Path(tempfile.mkdtemp(prefix="phantom-subnet-"))
        try:
            public.chmod(0o755)
            client, router, other = (make_node(tmp_path, n, i, h) for n, i, h in
                                     (("client", 1, a), ("router", 2, b), ("other", 4, d)))
            router.config, client.config = public / "router.toml", public / "client.toml"

            def router_config(advertise):
                write_config(router, mode="tun", extra={"advertise_routes": advertise} if advertise else {}, peers=[
                    {"name": "client", "public_key": client.pub, "allowed_ips": ["10.99.0.1/32"],
                     **({"allow_routes": True} if advertise else {})},
                    {"name": "other", "public_key": other.pub, "allowed_ips": ["10.99.0.4/32"]}])
                router.config.chmod(0o644)

            def client_config(routes, extra_peer=None):
                peers = [{"name": "router", "public_key": router.pub, "allowed_ips": ["10.99.0.2/32"],
                          "endpoint": "%s:%d" % (b.ip, UDP_PORT), **({"routes": routes} if routes else {})}]
                if extra_peer:
                    peers.append(extra_peer)
                write_config(client, mode="tun", peers=peers)
                client.config.chmod(0o644)

            router_config([LAN])
            client_config([LAN])
            write_config(other, mode="tun", peers=[{"name": "router", "public_key": router.pub,
                                                    "allowed_ips": ["10.99.0.2/32"], "routes": [LAN],
                                                    "endpoint": "%s:%d" % (b.ip, UDP_PORT)}])
            start(daemon_factory, router, datapath)
            start(daemon_factory, client, datapath)
            start(daemon_factory, other, datapath)

            assert "dev phtun0" in kernel_route(a) and "proto 112" in kernel_route(a)
            assert client.peer("router")["offers"] == {"routes": [LAN]}     # the peer table holds it
            cap = sniffer(c, "eth0", "icmp", name="lan")
            assert a.ns.ping(HOST_LAN, timeout=10), "the LAN host is not reached through the router"
            assert sources_to(cap.stop(), HOST_LAN) == {"10.99.0.1"}, "not routed as it is (no masquerade)"
            assert router.status()["privsep"]["exit_node"]["routes"] == {"from": ["10.99.0.1/32"], "to": [LAN]}
            assert d.ns.ping("10.99.0.2", timeout=10), "the other peer's tunnel is up"
            assert not d.ns.ping(HOST_LAN, timeout=2), "a peer without allow_routes got through the router"

            # the router withdraws the route (reload): the client no longer gets through
            router_config(None)
            code, body = router.api("POST", "/reload")
            assert code == 200 and body.get("subnet_routes", "missing") is None, body
            assert not a.ns.ping(HOST_LAN, timeout=2), "a withdrawn route still forwarded"
            router_config([LAN])
            code, body = router.api("POST", "/reload")
            assert code == 200 and body["subnet_routes"] == {"from": ["10.99.0.1/32"], "to": [LAN]}, body
            assert a.ns.ping(HOST_LAN, timeout=10)

            # a route overlapping another peer's prefix: refused, naming it, nothing changed
            client_config([LAN], {"name": "lanhost", "public_key": other.pub, "allowed_ips": ["192.168.50.7/32"]})
            code, body = client.api("POST", "/reload")
            assert code == 400 and "peer[0].routes[0]" in body["error"] and "overlaps peer lanhost" in body["error"], body
            assert "dev phtun0" in kernel_route(a)

            # the client drops the route (reload): the kernel route goes within 5 s
            client_config(None)
            t0 = time.monotonic()
            code, body = client.api("POST", "/reload")
            assert code == 200 and LAN in body["routes"]["removed"], body
            wait_for(lambda: kernel_route(a) == "", timeout=5, what="the withdrawn route gone")
            assert time.monotonic() - t0 < 5
            assert not a.ns.ping(HOST_LAN, timeout=1)
            assert client.peer("router")["offers"] == {}
        finally:
            shutil.rmtree(public, ignore_errors=True)
