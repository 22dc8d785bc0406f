"""An exit node for plain configured peers (issue 22 item 3, the exit's side;
docs/routes.md): on one LAN, client a and peer d have full tunnels to exit
b; c is the internet host (198.51.100.1, 2001:db8::1, reached by b only).
a reaches c through b, which c sees as the source (masquerade), IPv4 and
IPv6; d, not allowed to use the exit, is refused until a reload allows it;
b's forwarding sysctls and nftables are as before after it stops."""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from phantomlab import netns
from phantomlab.nodes import make_node, start
from phantomlab.templates import UDP_PORT, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

NET4, NET6 = "198.51.100.1", "2001:db8::1"
FULL = ["0.0.0.0/0", "::/0"]


def sources_to(packets, addr: str) -> set:
    out = set()
    for p in packets:
        ip = p.ip_packet()
        if not ip:
            continue
        if ip[0] >> 4 == 4 and ip[9] == 1 and socket.inet_ntop(socket.AF_INET, ip[16:20]) == addr:
            out.add(socket.inet_ntop(socket.AF_INET, ip[12:16]))
        elif ip[0] >> 4 == 6 and ip[6] == 58 and socket.inet_ntop(socket.AF_INET6, ip[24:40]) == addr:
            out.add(socket.inet_ntop(socket.AF_INET6, ip[8:24]))
    return out


def exit_state(host) -> tuple:
    return (host.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout,
            host.run(["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout,
            host.run(["nft", "list", "ruleset"]).stdout)


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_exit_node_forwards_and_masquerades_only_for_allowed_peers(daemon_factory, sniffer, tmp_path, datapath):
    with netns.lan(4) as topo:
        a, b, c, d = (topo.hosts[r] for r in "abcd")
        c.ns.ip("addr", "add", NET4 + "/32", "dev", "lo")
        c.ns.ip("addr", "add", NET6 + "/128", "dev", "lo")
        b.ns.ip("route", "add", NET4, "via", c.ip)
        b.ns.ip("-6", "route", "add", NET6, "via", c.ip6)
        for h in (a, d):
            h.ns.ip("route", "add", "default", "via", b.ip)
            h.ns.ip("-6", "route", "add", "default", "via", b.ip6)
        before = exit_state(b)

        public = Path(tempfile.mkdtemp(prefix="phantom-exit-"))    # readable by the daemon's user
        try:
            public.chmod(0o755)
            client, exit_, other = (make_node(tmp_path, n, i, h) for n, i, h in
                                    (("client", 1, a), ("exit", 2, b), ("other", 4, d)))
            exit_.config = public / "exit.toml"

            def exit_config(other_allowed: bool):
                write_config(exit_, mode="tun", extra={"exit_node": True}, peers=[
                    {"name": "client", "public_key": client.pub, "allowed_ips": ["10.99.0.1/32", "fd99::1/128"],
                     "allow_exit": True},
                    {"name": "other", "public_key": other.pub, "allowed_ips": ["10.99.0.4/32", "fd99::4/128"],
                     "allow_exit": other_allowed}])
                exit_.config.chmod(0o644)

            exit_config(False)
            for node in (client, other):
                write_config(node, mode="tun", peers=[{"name": "exit", "public_key": exit_.pub, "allowed_ips": FULL,
                                                       "endpoint": "%s:%d" % (b.ip, UDP_PORT)}])
            start(daemon_factory, exit_, datapath)
            start(daemon_factory, client, datapath)
            start(daemon_factory, other, datapath)

            cap = sniffer(c, "eth0", "icmp or icmp6", name="internet")
            assert a.ns.ping(NET4, timeout=10), "the client does not reach the internet through the exit"
            assert a.ns.ping(NET6, timeout=10)
            seen = cap.stop()
            assert sources_to(seen, NET4) == {b.ip} and sources_to(seen, NET6) == {b.ip6}, sources_to(seen, NET4)

            assert d.ns.ping("10.99.0.2", timeout=10), "the other peer's tunnel to the exit is up"
            cap = sniffer(c, "eth0", "icmp or icmp6", name="refused")
            assert not d.ns.ping(NET4, timeout=2) and not d.ns.ping(NET6, timeout=1)
            assert sources_to(cap.stop(), NET4) == set(), "a peer not allowed to use the exit got through"

            exit_config(True)
            code, body = exit_.api("POST", "/reload")
            assert code == 200 and body["exit"] == ["10.99.0.1/32", "10.99.0.4/32", "fd99::1/128", "fd99::4/128"], body
            assert d.ns.ping(NET4, timeout=10), "allowed by reload, the other peer still cannot use the exit"

            exit_.daemon.kill(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while exit_state(b) != before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert exit_state(b) == before
        finally:
            shutil.rmtree(public, ignore_errors=True)
