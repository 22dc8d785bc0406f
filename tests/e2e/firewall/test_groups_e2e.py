"""Firewall rules by group end to end (issue 21 item 2): four phantomd nodes
in namespaces on one LAN, on both data paths.  n3 is a server whose rules
say "laptops may reach servers on tcp/22 and icmp; nothing else inbound";
n1 and n2 are laptops in n3's config, n4 is opened at run time through
POST /open with its groups.  A reload moving n2 out of laptops takes effect
at once, without a new handshake, and n1's established SSH-port flow
carries on."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from phantomlab import netns
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import UDP_PORT, peer_entry, write_config

pytestmark = pytest.mark.netns

SSH = 22
WEB = 8080
SERVER_RULES = {"default_in": "drop", "rule": [
    {"direction": "in", "src_group": "laptops", "dst_group": "servers", "proto": "tcp",
     "dst_port": SSH, "action": "accept", "comment": "ssh"},
    {"direction": "in", "src_group": "laptops", "dst_group": "servers", "proto": "icmp",
     "action": "accept", "comment": "ping"},
    {"direction": "in", "src_group": "printers", "action": "accept", "comment": "nobody yet"},
]}


@pytest.fixture
def lan4():
    with netns.lan(4) as topo:
        yield topo


@pytest.fixture
def public_dir():
    """n3 re-reads its config after dropping privileges: it lives here."""
    d = Path(tempfile.mkdtemp(prefix="phantom-groups-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fw(node) -> dict:
    code, body = node.api("GET", "/firewall")
    assert code == 200, body
    return body


def connects(src, host: str, port: int, timeout: float = 1.5) -> bool:
    try:
        s = src.host.ns.tcp_connect(host, port, timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


def write_server(n3, laptops, others, moved=()):
    peers = []
    for n in laptops + others:
        e = peer_entry(n, mode="tun")
        e["groups"] = ["laptops"] if n in laptops and n not in moved else ["staff"]
        peers.append(e)
    write_config(n3, mode="tun", peers=peers, firewall=SERVER_RULES,
                 extra={"groups": ["servers"]})
    n3.config.chmod(0o644)


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_laptops_reach_servers_on_ssh_and_ping_only(lan4, daemon_factory, tmp_path, public_dir,
                                                    datapath):
    hosts = [lan4.hosts[r] for r in "abcd"]
    n1, n2, n3, n4 = (make_node(tmp_path, "n%d" % (i + 1), i + 1, h) for i, h in enumerate(hosts))
    n3.config = public_dir / "phantom.toml"
    write_server(n3, [n1, n2], [])
    for n in (n1, n2, n4):
        write_config(n, mode="tun", peers=[peer_entry(n3, mode="tun")])
    for n in (n1, n2, n3, n4):
        start(daemon_factory, n, datapath)

    listeners = []
    for port in (SSH, WEB):
        s = n3.host.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((n3.tun4, port))
        s.listen(16)
        listeners.append(s)
    conn = server_side = None
    try:
        # the peers' groups, as the server knows them
        code, peers = n3.api("GET", "/peers")
        assert code == 200, peers
        assert {p["name"]: p["groups"] for p in peers["peers"]} == {"n1": ["laptops"], "n2": ["laptops"]}
        state = fw(n3)
        assert state["own_groups"] == ["servers"]
        assert state["warnings"] == ["firewall.rule[2].src_group: no peer is in group 'printers' "
                                     "(yet): the rule matches no packet until one is"]

        # laptops: ssh and ping in, nothing else
        assert n1.host.ns.ping(n3.tun4, timeout=10)
        assert n2.host.ns.ping(n3.tun4, timeout=10)
        assert connects(n2, n3.tun4, SSH)
        before = fw(n3)["drops"]["default"]
        assert not connects(n1, n3.tun4, WEB)
        wait_for(lambda: fw(n3)["drops"]["default"] > before, what="the web attempt counted")

        # an established flow from a laptop that stays one
        conn = n1.host.ns.tcp_connect(n3.tun4, SSH, timeout=5)
        listeners[0].settimeout(5)
        while True:                    # the backlog holds the earlier probes first
            server_side, addr = listeners[0].accept()
            if addr == conn.getsockname():
                break
            server_side.close()
        server_side.settimeout(5)
        conn.settimeout(5)
        conn.sendall(b"hello")
        assert server_side.recv(16) == b"hello"
        hs = {n: n3.peer(n)["last_handshake"] for n in ("n1", "n2")}
        hits = {r["comment"]: r["hits"] for r in fw(n3)["rules"]}
        assert hits["ssh"] >= 2 and hits["ping"] >= 2

        # reload: n2 leaves laptops
        write_server(n3, [n1, n2], [], moved=[n2])
        t0 = time.monotonic()
        code, report = n3.api("POST", "/reload")
        assert code == 200 and report["changed"] == {"n2": ["groups"]} and report["firewall"], report
        drops = fw(n3)["drops"]["default"]
        wait_for(lambda: not n2.host.ns.ping(n3.tun4, timeout=0.5), timeout=5,
                 what="n2's pings dropped after the reload")
        assert time.monotonic() - t0 < 5
        assert not connects(n2, n3.tun4, SSH)
        wait_for(lambda: fw(n3)["drops"]["default"] >= drops + 2, what="n2's packets counted")
        # n1's established flow carries on, both ways, and n1 still gets in
        conn.sendall(b"still here")
        assert server_side.recv(16) == b"still here"
        server_side.sendall(b"ack")
        assert conn.recv(16) == b"ack"
        assert n1.host.ns.ping(n3.tun4, timeout=2)
        assert {n: n3.peer(n)["last_handshake"] for n in ("n1", "n2")} == hs, "no new handshake"
        code, peers = n3.api("GET", "/peers")
        assert {p["name"]: p["groups"] for p in peers["peers"]}["n2"] == ["staff"]

        # a peer opened at run time with its groups: the rules follow at once
        assert not n4.host.ns.ping(n3.tun4, timeout=1), "n3 does not know n4 yet"
        code, body = n3.api("POST", "/open/%s:%d" % (n4.host.ip, UDP_PORT), {
            "public_key": n4.pub, "name": "n4", "allowed_ips": ["%s/32" % n4.tun4],
            "groups": ["laptops"]})
        assert code == 200, body
        assert n4.host.ns.ping(n3.tun4, timeout=5)
        assert connects(n4, n3.tun4, SSH, timeout=3)
        assert not connects(n4, n3.tun4, WEB)
        code, body = n3.api("POST", "/open/n4", {"groups": ["servers"]})
        assert code == 409 and "groups" in body["error"], body
        # a bad group name is refused, naming the key
        code, body = n3.api("PUT", "/firewall", {"rule": [
            {"direction": "in", "src_group": "Laptops", "action": "accept"}]})
        assert code == 400 and "rule[0].src_group" in body["error"], body
    finally:
        for s in [conn, server_side] + listeners:
            if s is not None:
                s.close()
