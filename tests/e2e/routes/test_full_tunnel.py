"""Full tunnels, the kill switch and the privileged helper, end to end in
namespaces (issue 22 items 1-2; docs/routes.md).

The client ``a`` has a default route to a fake uplink ``b`` (IPv4 and
IPv6); the peer's endpoint 203.0.113.2 is reachable only through that
default route, so a datagram of the tunnel's own that were routed into the
tunnel would loop and no handshake would complete.  198.51.100.1 and
2001:db8::1 stand for the internet.  Every test compares ``ip rule``,
``ip route show table all`` (v4 and v6) and ``nft list ruleset`` with the
state before the daemon started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import UDP_PORT, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ENDPOINT = "203.0.113.2"                  # b's address, only behind a's default route
NET4, NET6 = "198.51.100.1", "2001:db8::1"
FULL = ["0.0.0.0/0", "::/0"]


def kernel_state(host) -> dict:
    out = {}
    for name, cmd in [("rule4", ["ip", "-4", "rule"]), ("rule6", ["ip", "-6", "rule"]),
                      ("route4", ["ip", "-4", "route", "show", "table", "all"]),
                      ("route6", ["ip", "-6", "route", "show", "table", "all"]),
                      ("nft", ["nft", "list", "ruleset"])]:
        out[name] = host.run(cmd).stdout
    return out


def wait_state(host, want: dict, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = kernel_state(host)
        if now == want:
            return
        if time.monotonic() > deadline:
            diff = {k: (want[k], now[k]) for k in want if want[k] != now[k]}
            raise AssertionError("the kernel state is not what it was before the daemon: %s" % diff)
        time.sleep(0.1)


def uplink(two_hosts):
    """a's default routes go to b; b answers from ENDPOINT."""
    a, b = two_hosts.a, two_hosts.b
    a.ns.ip("route", "add", "default", "via", b.ip, "dev", "eth0")
    a.ns.ip("-6", "route", "add", "default", "via", b.ip6, "dev", "eth0")
    b.ns.ip("addr", "add", ENDPOINT + "/32", "dev", "lo")
    b.ns.ip("route", "replace", "10.201.0.0/24", "dev", "eth0", "src", ENDPOINT)
    return a, b


def pair(tmp_path, a, b, datapath, daemon_factory, extra=None, public=None):
    client = make_node(tmp_path, "client", 1, a)
    exit_ = make_node(tmp_path, "exit", 2, b)
    if public is not None:
        client.config = public / "client.toml"
    write_config(exit_, mode="tun", peers=[{"name": "client", "public_key": client.pub,
                                             "allowed_ips": ["10.99.0.1/32", "fd99::1/128"]}])
    write_config(client, mode="tun", extra=extra,
                 peers=[{"name": "exit", "public_key": exit_.pub, "endpoint": "%s:%d" % (ENDPOINT, UDP_PORT),
                         "allowed_ips": FULL}])
    if public is not None:
        client.config.chmod(0o644)
    start(daemon_factory, exit_, datapath)
    return client, exit_


def route_dev(host, addr: str, *extra: str) -> str:
    out = host.run(["ip", "-6" if ":" in addr else "-4", "route", "get", addr, *extra]).stdout.split()
    return out[out.index("dev") + 1]


def icmp_to(packets, addr: str) -> list:
    """The ICMP/ICMPv6 packets to ``addr`` in a capture (plaintext)."""
    out = []
    for p in packets:
        ip = p.ip_packet()
        if not ip:
            continue
        if ip[0] >> 4 == 4 and ip[9] == 1 and socket.inet_ntop(socket.AF_INET, ip[16:20]) == addr:
            out.append(p)
        elif ip[0] >> 4 == 6 and ip[6] == 58 and socket.inet_ntop(socket.AF_INET6, ip[24:40]) == addr:
            out.append(p)
    return out


def proc_status(pid: int) -> dict:
    with open("/proc/%d/status" % pid) as f:
        return dict((k, v.strip()) for k, v in (line.split(":", 1) for line in f if ":" in line))


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_full_tunnel_policy_routing_and_cleanup(two_hosts, daemon_factory, sniffer, tmp_path, datapath):
    """allowed_ips 0.0.0.0/0 and ::/0 beside the host's default routes: the
    internet goes into the tunnel (route get, and the packets: on the exit's
    TUN, never in plaintext on the uplink), the tunnel's own datagrams leave
    by the uplink (the handshake completes through the default route); SIGTERM
    leaves the kernel exactly as before; SIGKILL of the daemon and its helper
    leaves rules behind, which the next start removes."""
    a, b = uplink(two_hosts)
    before = kernel_state(a)
    client, exit_ = pair(tmp_path, a, b, datapath, daemon_factory)
    start(daemon_factory, client, datapath)

    assert route_dev(a, NET4) == "phtun0" and route_dev(a, NET6) == "phtun0"
    assert route_dev(a, ENDPOINT, "mark", str(UDP_PORT)) == "eth0"        # the daemon's marked socket
    assert route_dev(a, "10.201.0.2") == "eth0"                            # the LAN stays (suppress 0)
    rules = a.run(["ip", "-4", "rule"]).stdout
    assert "5180:\tfrom all lookup main suppress_prefixlength 0" in rules, rules
    assert "5181:\tnot from all fwmark %#x lookup %d" % (UDP_PORT, UDP_PORT) in rules, rules
    assert "suppress_prefixlength 0" in a.run(["ip", "-6", "rule"]).stdout

    tun_cap = sniffer(b, "phtun0", "", name="exit-tun")
    up_cap = sniffer(a, "eth0", "", name="uplink")
    assert a.ns.ping("10.99.0.2", timeout=10), "no tunnel: the handshake through the default route failed"
    marker = b"phantom-marker-" + os.urandom(8).hex().encode()
    for fam, dst in ((socket.AF_INET, NET4), (socket.AF_INET6, NET6)):
        with a.udp_socket(fam) as s:
            for _ in range(3):
                s.sendto(marker, (dst, 7777))
    a.ns.ping(NET4, timeout=1)
    a.ns.ping(NET6, timeout=1)
    assert tun_cap.wait_for(lambda ps: icmp_to(ps, NET4) and icmp_to(ps, NET6) and sum(
        marker in p.data for p in ps) >= 6, timeout=5), "the internet's packets did not come out of the tunnel"
    uplink_packets = up_cap.stop()
    assert not [p for p in uplink_packets if marker in p.data], "the marker left in plaintext"
    assert icmp_to(uplink_packets, NET4) == [] and icmp_to(uplink_packets, NET6) == [], "plaintext on the uplink"
    for p in uplink_packets:            # IPv4: only tunnel datagrams; IPv6: only link-local chatter
        ip, u = p.ip_packet(), p.udp()
        if ip is None:
            continue                    # ARP
        if ip[0] >> 4 == 6:             # neighbour discovery, or MLD (behind a hop-by-hop header)
            assert (ip[6] == 58 and ip[40] in (133, 134, 135, 136)) or ip[6] == 0, ip.hex()
        else:
            assert u is not None and {u.src, u.dst} == {a.ip, ENDPOINT} and UDP_PORT in (u.sport, u.dport), ip.hex()
    tunnel = [p.udp() for p in uplink_packets if p.udp() and p.udp().dst == ENDPOINT]
    assert tunnel and all(u.dport == UDP_PORT for u in tunnel)

    st = client.status()["privsep"]
    assert st["full_tunnel"] == ["ipv4", "ipv6"] and st["table"] == UDP_PORT, st
    log = client.daemon.log()
    assert "route 0.0.0.0/0 via phtun0 table %d" % UDP_PORT in log and "route ::/0 via phtun0 table" in log

    client.daemon.kill(signal.SIGTERM)
    wait_state(a, before)

    # SIGKILL to the process group: the daemon and its helper die, the rules stay
    client.daemon.restart(wait=True)
    a.ns.wait_addresses_ready()
    client.daemon.kill(signal.SIGKILL)
    left = a.run(["ip", "-4", "rule"]).stdout
    assert "5181:" in left and "5180:" in left, "nothing left behind: the test would prove nothing"
    client.daemon.start().wait_ready(15)
    assert "removed a leftover of a previous run" in client.daemon.log()
    assert route_dev(a, NET4) == "phtun0"
    client.daemon.kill(signal.SIGTERM)
    wait_state(a, before)


def test_a_dropped_daemon_changes_routes_through_its_helper(two_hosts, daemon_factory, tmp_path):
    """phantomd runs as nobody with no capability at all; its helper keeps
    CAP_NET_ADMIN alone, as nobody too; a reload after the drop adds a route
    (and removes it again) through the helper."""
    a, b = uplink(two_hosts)
    before = kernel_state(a)
    public = Path(tempfile.mkdtemp(prefix="phantom-privsep-"))   # readable by the daemon's user
    try:
        public.chmod(0o755)
        client, exit_ = pair(tmp_path, a, b, "reference", daemon_factory, public=public)
        only = {"name": "exit", "public_key": exit_.pub, "endpoint": "%s:%d" % (ENDPOINT, UDP_PORT),
                "allowed_ips": ["10.99.0.2/32"]}
        write_config(client, mode="tun", peers=[only])
        start(daemon_factory, client)
        st = client.status()["privsep"]
        daemon, helper = proc_status(client.daemon.pid), proc_status(st["pid"])
        nobody = str(__import__("pwd").getpwnam("nobody").pw_uid)
        assert daemon["Uid"].split() == [nobody] * 4 and int(daemon["CapEff"], 16) == 0
        assert int(daemon["CapPrm"], 16) == 0 and int(daemon["CapBnd"], 16) == 0
        assert helper["Uid"].split() == [nobody] * 4
        assert int(helper["CapEff"], 16) == 1 << 12 and int(helper["CapBnd"], 16) == 1 << 12
        assert helper["NoNewPrivs"] == "1" and helper["Seccomp"] == "2"
        assert "10.50.0.0/16" not in a.run(["ip", "route"]).stdout

        write_config(client, mode="tun", peers=[dict(only, allowed_ips=["10.99.0.2/32", "10.50.0.0/16"])])
        client.config.chmod(0o644)
        code, body = client.api("POST", "/reload")
        assert code == 200 and body["routes"]["added"] == ["10.50.0.0/16"], body
        r = a.run(["ip", "route", "show", "10.50.0.0/16"]).stdout
        assert "dev phtun0" in r and "proto 112" in r, r

        write_config(client, mode="tun", peers=[only])
        code, body = client.api("POST", "/reload")
        assert code == 200 and body["routes"]["removed"] == ["10.50.0.0/16"], body
        assert a.run(["ip", "route", "show", "10.50.0.0/16"]).stdout == ""

        # a full tunnel by reload, and off again: rules and table come and go
        write_config(client, mode="tun", peers=[dict(only, allowed_ips=["10.99.0.2/32"] + FULL)])
        code, body = client.api("POST", "/reload")
        assert code == 200 and body["routes"]["added"] == FULL, body
        assert route_dev(a, NET4) == "phtun0" and route_dev(a, NET6) == "phtun0"
        assert a.ns.ping("10.99.0.2", timeout=10)
        write_config(client, mode="tun", peers=[only])
        code, body = client.api("POST", "/reload")
        assert code == 200 and sorted(body["routes"]["removed"]) == sorted(FULL), body
        assert route_dev(a, NET4) == "eth0"
        assert "5181:" not in a.run(["ip", "-4", "rule"]).stdout + a.run(["ip", "-6", "rule"]).stdout
        client.daemon.kill(signal.SIGTERM)
        wait_state(a, before)
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_kill_switch(two_hosts, daemon_factory, sniffer, tmp_path):
    """kill_switch = true: while the full tunnel is configured, nothing but
    the tunnel leaves (the LAN gateway is unreachable in plaintext, the
    tunnel works); when the daemon dies, its helper removes the routes and
    rules but keeps the kill switch: nothing reaches the uplink in
    plaintext; the next start takes over, a clean stop removes it all."""
    a, b = uplink(two_hosts)
    before = kernel_state(a)
    client, exit_ = pair(tmp_path, a, b, "reference", daemon_factory, extra={"kill_switch": True})
    start(daemon_factory, client)
    assert "table inet phantom-killswitch" in a.run(["nft", "list", "ruleset"]).stdout
    assert client.status()["privsep"]["kill_switch"] == ["ipv4", "ipv6"]
    assert a.ns.ping("10.99.0.2", timeout=10), "the kill switch blocks the tunnel itself"
    assert not a.ns.ping(b.ip, timeout=1), "plaintext to the LAN left with the kill switch on"

    helper_pid = client.status()["privsep"]["pid"]
    os.kill(client.daemon.pid, signal.SIGKILL)                   # the daemon alone: its helper cleans up
    client.daemon.proc.wait(5)
    wait_for(lambda: not os.path.exists("/proc/%d" % helper_pid), timeout=10)
    assert "5181:" not in a.run(["ip", "-4", "rule"]).stdout
    assert route_dev(a, NET4) == "eth0"                           # the tunnel is gone ...
    cap = sniffer(a, "eth0", "icmp or icmp6", name="uplink")
    a.ns.ping(NET4, timeout=1)
    a.ns.ping(NET6, timeout=1)
    assert icmp_to(cap.stop(), NET4) == [], "... and the kill switch let plaintext out"
    assert "table inet phantom-killswitch" in a.run(["nft", "list", "ruleset"]).stdout

    client.daemon.start().wait_ready(15)
    assert a.ns.ping("10.99.0.2", timeout=10)
    client.daemon.kill(signal.SIGTERM)
    wait_state(a, before)
