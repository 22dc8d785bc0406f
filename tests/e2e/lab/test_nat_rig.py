"""The two-NAT 'internet' topology of the rig (issue #11): homes behind
MASQUERADE routers, with and without --random-fully, short conntrack
timeouts, the home-router filter."""

from __future__ import annotations

import socket

import pytest

from phantomlab import netns

pytestmark = pytest.mark.netns


def _reflexive(src, dst_ns, dst_ip, dst_port, sport=9000):
    """Source address and port ``dst`` sees for a datagram from ``src``'s port ``sport``."""
    rx = dst_ns.udp_socket(bind=("0.0.0.0", dst_port))
    tx = src.ns.udp_socket(bind=("0.0.0.0", sport))
    try:
        rx.settimeout(3)
        tx.sendto(b"hello", (dst_ip, dst_port))
        _, addr = rx.recvfrom(100)
        return addr
    finally:
        rx.close()
        tx.close()


def test_internet_topology_masquerade_keeps_ports_and_filters_unsolicited():
    with netns.internet(udp_timeout=5) as net:
        a, b = net["a"], net["b"]
        assert net.r1.udp_timeouts() == (5, 5)
        assert a.ping(net.rv.ip) and b.ping(net.rv.ip)
        assert not a.ping(net.r2.wan_ip, timeout=1), "a home router answers nothing unsolicited"
        assert not a.ping(b.ip, timeout=1), "a private address is not routed across the internet"
        # default MASQUERADE: the source port survives (endpoint-independent mapping)
        assert _reflexive(a, net.inet, net.rv.ip, 7001) == (net.r1.wan_ip, 9000)
        assert _reflexive(b, net.inet, net.rv.ip, 7002) == (net.r2.wan_ip, 9000)
        # unsolicited traffic to a home's public address reaches nobody
        rx = a.udp_socket(bind=("0.0.0.0", 9001))
        tx = net.inet.udp_socket()
        try:
            rx.settimeout(0.5)
            tx.sendto(b"knock", (net.r1.wan_ip, 9001))
            with pytest.raises(socket.timeout):
                rx.recvfrom(100)
        finally:
            rx.close()
            tx.close()


def test_internet_topology_random_fully_and_switching_back():
    with netns.internet(random_fully=(1,), hosts_per_home=2) as net:
        a, a2 = net["a"], net["a2"]
        assert a.ping(a2.ip), "two hosts on one home LAN"
        ports = {_reflexive(a, net.inet, net.rv.ip, 7000 + i, sport=9100 + i)[1] for i in range(4)}
        assert ports != {9100, 9101, 9102, 9103}, "--random-fully picks random source ports"
        net.r1.set_masquerade(random_fully=False, flush=True)
        assert _reflexive(a, net.inet, net.rv.ip, 7010, sport=9200) == (net.r1.wan_ip, 9200)
