"""The firewall end to end (issue 6): real daemons, real packets, in
network namespaces, on every data path."""

from __future__ import annotations

import socket
import time

import pytest

from phantomlab import iperf
from phantomlab.nodes import mesh
from phantomlab.poll import wait_for

pytestmark = pytest.mark.netns

DATAPATHS = ["reference", "fast"]


@pytest.fixture(params=DATAPATHS)
def datapath(request):
    return request.param


def fw(node) -> dict:
    code, body = node.api("GET", "/firewall")
    assert code == 200, body
    return body


def tcp_connects(src, host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        s = src.host.ns.tcp_connect(host, port, timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


class Listener:
    """TCP listeners inside a namespace (accepting in the kernel backlog)."""

    def __init__(self, node, ports):
        self.socks = []
        for port in ports:
            s = node.host.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((node.tun4, port))
            s.listen(16)
            self.socks.append(s)

    def close(self):
        for s in self.socks:
            s.close()


def test_gre_and_sctp_are_dropped_and_counted(two_hosts, daemon_factory, tmp_path, datapath):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath)
    assert a.host.ns.ping(b.tun4, timeout=10)
    from scapy.all import GRE, IP, SCTP, raw
    before = fw(a)["drops"]["protocol"]
    for layer, proto in ((GRE(), 47), (SCTP(sport=1, dport=2), 132)):
        s = a.host.ns.socket(socket.AF_INET, socket.SOCK_RAW, proto)
        try:
            s.sendto(raw(layer / b"PAYLOAD"), (b.tun4, 0))
        finally:
            s.close()
    wait_for(lambda: fw(a)["drops"]["protocol"] >= before + 2, what="GRE and SCTP counted as drops")
    assert b.status()["peers"][0]["rx_packets"] >= 1   # the ping got through, the rest did not


def test_tcp_rule_blocks_one_port_not_another(two_hosts, daemon_factory, tmp_path, datapath):
    rules = {"rule": [{"direction": "in", "proto": "tcp", "dst_port": 5202, "action": "reject"}]}
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath, firewalls={2: rules})
    assert a.host.ns.ping(b.tun4, timeout=10)
    servers = [iperf.Server(b.host, b.tun4, p).start() for p in (5201, 5202)]
    try:
        # what is checked is that TCP crosses on the open port: 8 MiB as fast as
        # they go (-n), not 1 s at full speed (-t)
        ok = wait_for(lambda: a.host.run(iperf.client_argv(b.tun4, port=5201, json=False, nbytes=8 << 20),
                                         check=False, timeout=20).returncode == 0, timeout=10, interval=0.2,
                      what="iperf3 on the open port")
        assert ok
        t0 = time.monotonic()
        blocked = a.host.run(iperf.client_argv(b.tun4, port=5202, seconds=1, json=False), check=False,
                             timeout=20)
        assert blocked.returncode != 0
        assert time.monotonic() - t0 < 5, "reject answers with a RST: no waiting for a timeout"
    finally:
        for s in servers:
            s.stop()
    rule = fw(b)["rules"][0]
    assert rule["hits"] >= 1


def test_stateful_lets_replies_in_and_blocks_new_inbound(two_hosts, daemon_factory, tmp_path, datapath):
    rules = {"stateful": True, "default_in": "drop"}
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath, firewalls={2: rules})
    la, lb = Listener(a, [7001]), Listener(b, [7002])
    try:
        # ICMP echo: b's own pings come back, a's pings to b do not get in
        assert b.host.ns.ping(a.tun4, timeout=10)
        assert not a.host.ns.ping(b.tun4, timeout=1.5)
        # TCP
        assert tcp_connects(b, a.tun4, 7001)
        assert not tcp_connects(a, b.tun4, 7002, timeout=1.5)
        # UDP: b asks, a answers
        ub = b.host.ns.udp_socket(bind=(b.tun4, 0))
        ua = a.host.ns.udp_socket(bind=(a.tun4, 7003))
        ub.settimeout(3)
        ua.settimeout(3)
        ub.sendto(b"question", (a.tun4, 7003))
        data, src = ua.recvfrom(100)
        ua.sendto(b"answer", src)
        assert ub.recvfrom(100)[0] == b"answer"
        # a new UDP flow from a is dropped
        ua.sendto(b"unsolicited", (b.tun4, 7004))
        ub2 = b.host.ns.udp_socket(bind=(b.tun4, 7004))
        ub2.settimeout(1)
        ua.sendto(b"unsolicited", (b.tun4, 7004))
        with pytest.raises(socket.timeout):
            ub2.recvfrom(100)
        for s in (ua, ub, ub2):
            s.close()
    finally:
        la.close()
        lb.close()
    state = fw(b)
    assert state["accepts"]["established"] > 0 and state["drops"]["default"] > 0


def test_live_edit_takes_effect_without_a_new_handshake(two_hosts, daemon_factory, tmp_path, datapath):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath)
    lb = Listener(b, [7010, 7011])
    try:
        assert a.host.ns.ping(b.tun4, timeout=10)
        assert tcp_connects(a, b.tun4, 7010)
        hs = b.peer("n1")["last_handshake"]
        code, body = b.api("PUT", "/firewall", {"rule": [
            {"direction": "in", "proto": "tcp", "dst_port": 7011, "action": "drop"}]})
        assert code == 200, body
        assert not tcp_connects(a, b.tun4, 7011, timeout=1.5), "the next packet meets the new rules"
        assert tcp_connects(a, b.tun4, 7010), "flows that are still allowed carry on"
        assert a.host.ns.ping(b.tun4, timeout=2)
        assert b.peer("n1")["last_handshake"] == hs, "no new handshake"
        # a bad rule set is refused whole, naming the rule and the field
        code, body = b.api("PUT", "/firewall", {"rule": [
            {"direction": "in", "proto": "tcp", "action": "accept"},
            {"direction": "sideways", "action": "drop"}]})
        assert code == 400 and "rule[1]" in body["error"] and "direction" in body["error"], body
        assert [r["dst_port"] for r in fw(b)["rules"]] == [7011] or fw(b)["rules"][0]["dst_port"] in (7011, "7011")
    finally:
        lb.close()


def test_tap_passes_arp_and_drops_unknown_ethertypes(two_hosts, daemon_factory, tmp_path, datapath):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], mode="tap", datapath=datapath)
    assert a.host.ns.ping(b.tun4, timeout=10), "ARP resolved across the tunnel"
    before = fw(a)["drops"]["ethertype"]
    s = a.host.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind(("phtap0", 0))
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + (0x88B5).to_bytes(2, "big") + b"experimental" * 4
        for _ in range(3):
            s.send(frame)
    finally:
        s.close()
    wait_for(lambda: fw(a)["drops"]["ethertype"] >= before + 3, what="unknown EtherType counted")
    assert fw(a)["accepts"].get("ethertype", 0) > 0, "ARP frames were accepted by EtherType"


def test_sighup_reloads_rules_from_the_config_file(two_hosts, daemon_factory, tmp_path, datapath):
    import os
    import shutil
    import signal
    import tempfile
    from pathlib import Path
    from phantomlab.nodes import start
    from phantomlab.templates import peer_entry, write_config
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath, start_daemons=False)
    # SIGHUP re-reads the file as the unprivileged user: it must be readable by it
    public = Path(tempfile.mkdtemp(prefix="phantom-cfg-"))
    public.chmod(0o755)
    b.config = public / "phantom.toml"
    write_config(b, mode="tun", peers=[peer_entry(a, mode="tun")])
    b.config.chmod(0o644)
    start(daemon_factory, a, datapath)
    start(daemon_factory, b, datapath)
    request_cleanup = lambda: shutil.rmtree(public, ignore_errors=True)  # noqa: E731
    assert fw(b)["rules"] == []
    write_config(b, mode="tun", peers=[peer_entry(a, mode="tun")],
                 firewall={"rule": [{"direction": "in", "proto": "udp", "dst_port": "6000-6010",
                                     "action": "drop", "comment": "reloaded"}]})
    os.kill(b.daemon.pid, signal.SIGHUP)
    wait_for(lambda: [r.get("comment") for r in fw(b)["rules"]] == ["reloaded"], what="rules reloaded")
    # a broken file is refused and the running rules stay
    b.config.write_text(b.config.read_text().replace('action = "drop"', 'action = "explode"'))
    os.kill(b.daemon.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert [r.get("comment") for r in fw(b)["rules"]] == ["reloaded"]
    assert "reload refused, nothing changed: firewall" in b.daemon.log()
    request_cleanup()
