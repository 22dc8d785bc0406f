"""The fast path against the reference in real TUN devices inside network
namespaces (moved from tests/contract/test_fastpath.py: these two need root):
routing, source checks and ICMP unreachable, and the compiled firewall's
counters, the same on both paths."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
import subprocess
import threading
import time

import pytest

from phantom.constants import Tunables
from phantom.dataplane import fast
from phantom.dataplane.reference import ReferenceDataPath
from phantom.dataplane.types import Mode
from tests.contract.test_fastpath import Recorder, _checksum, keypairs
from tests.support.datapath import run, until
from tests.support.datapath import udp_socket as _udp

pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")

pytestmark = pytest.mark.timeout(60)
_fw = pytest.importorskip("phantom.dataplane.firewall")


# ------------------------------------------------------------- TUN mode, in namespaces
def _tun_in(ns, name, cidr, mtu=1420, extra_flags=0):
    """A TUN device opened here (python-pytun, via dataplane/tun.py), moved into
    ``ns`` and configured there; the fd keeps working across the move."""
    from phantom.dataplane.tun import open_device
    dev = open_device(Mode.TUN, name, mtu, extra_flags)
    try:
        subprocess.run(["ip", "link", "set", "dev", name, "netns", ns.name], check=True,
                       capture_output=True, timeout=10)
        ns.ip("addr", "add", cidr, "dev", name)
        ns.ip("link", "set", name, "up")
    except BaseException:
        dev.close()
        raise
    return dev


def _tcp_transfer(ns_client, ns_server, server_ip, blob, timeout=20.0):
    """Send ``blob`` over TCP from one namespace to the other; the receiver's
    SHA-256 of what arrived."""
    srv = ns_server.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((server_ip, 0))
    srv.listen(1)
    srv.settimeout(timeout)
    port = srv.getsockname()[1]
    box = {}

    def serve():
        try:
            conn, _ = srv.accept()
            conn.settimeout(timeout)
            h = hashlib.sha256()
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                h.update(chunk)
            box["digest"] = h.hexdigest()
            conn.close()
        except OSError as exc:
            box["error"] = exc
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cli = ns_client.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.settimeout(timeout)
    try:
        cli.connect((server_ip, port))
        cli.sendall(blob)
        cli.shutdown(socket.SHUT_WR)
        t.join(timeout)
    finally:
        cli.close()
        srv.close()
    if "error" in box:
        raise box["error"]
    return box.get("digest")


def _echo_answer(ns, addr, timeout=3.0):
    """Send an ICMP echo request from ``ns``; the type of the first ICMP
    message that comes back about it (0 echo reply, 3 unreachable), or None."""
    import select
    sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        ident = random.randrange(1, 0xFFFF)
        body = struct.pack("!HH", ident, 1) + b"unreachable?"
        csum = _checksum(struct.pack("!BBH", 8, 0, 0) + body)
        sock.sendto(struct.pack("!BBH", 8, 0, csum) + body, (addr, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], 0.2)
            if not r:
                continue
            data = sock.recv(2048)
            icmp = data[(data[0] & 0x0F) * 4:]
            if icmp[0] == 0 and icmp[4:6] == struct.pack("!H", ident):
                return 0
            if icmp[0] == 3 and body[:4] in icmp:
                return 3
        return None
    finally:
        sock.close()


@pytest.mark.netns
@pytest.mark.parametrize("kind", ["reference", "fast", "fast-offloads"])
def test_tun_mode_routes_checks_sources_and_answers_unreachable(kind):
    """Two namespaces, each with a TUN device whose data path runs here over
    loopback UDP: ping across, a spoofed inner source is dropped, an unrouted
    destination gets ICMP unreachable."""
    from phantomlab import netns
    prefix = netns.unique_prefix()
    ns_a = netns.Namespace(prefix + "-a")
    ns_b = None
    devs = []
    try:
        ns_b = netns.Namespace(prefix + "-b")
        flags = fast.DEVICE_FLAGS if kind == "fast-offloads" else 0
        devs.append(_tun_in(ns_a, prefix[-6:] + "ta", "10.77.0.1/24", extra_flags=flags))
        devs.append(_tun_in(ns_b, prefix[-6:] + "tb", "10.77.0.2/24", extra_flags=flags))
        ns_a.ip("addr", "add", "10.77.0.5/32", "dev", devs[0].name)   # a source B must refuse

        async def main():
            ua, ub = _udp(), _udp()
            ea, eb = Recorder(), Recorder()
            cls = ReferenceDataPath if kind == "reference" else fast.FastDataPath
            a = cls(Mode.TUN, ua, devs[0].fd, None, events=ea, tunables=Tunables(),
                    local_addresses=["10.77.0.1/24"])
            b = cls(Mode.TUN, ub, devs[1].fd, None, events=eb, tunables=Tunables(),
                    local_addresses=["10.77.0.2/24"])
            if kind == "fast-offloads":
                assert {"tso4", "tso6", "udp-gso", "udp-gro"} <= set(a.offloads), a.offloads
            try:
                a.add_peer(1, ["10.77.0.2/32"])
                b.add_peer(2, ["10.77.0.1/32"])
                a.set_endpoint(1, ub.getsockname())
                b.set_endpoint(2, ua.getsockname())
                a.start()
                b.start()
                ka, kb = keypairs(1, 2)
                b.install_keypair(kb, confirmed=False)
                a.install_keypair(ka, confirmed=True)
                assert await asyncio.to_thread(ns_a.ping, "10.77.0.2", 5.0)
                assert await asyncio.to_thread(ns_b.ping, "10.77.0.1", 5.0)
                await until(lambda: eb.confirmed == [(2, 0x2222)])
                # a TCP transfer (TSO super-packets when offloads are on): every
                # byte arrives intact, so segment lengths and checksums are right
                blob = os.urandom(3 << 20)
                got = await asyncio.to_thread(_tcp_transfer, ns_a, ns_b, "10.77.0.2", blob)
                assert got == hashlib.sha256(blob).hexdigest()
                if kind == "fast-offloads":     # A cut super-packets, B coalesced them again
                    assert a.worker_stats["tso_segments"] > a.worker_stats["tso_packets"] > 0
                    assert b.worker_stats["gro_tun_segments"] > b.worker_stats["gro_tun_packets"] > 0
                # spoofed source: routed out by A (destination is B's), refused by B
                s = ns_a.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("10.77.0.5", 0))
                s.sendto(b"spoofed", ("10.77.0.2", 9))
                s.close()
                await until(lambda: b.counters(2).drops.get("src_not_allowed") == 1)
                # unrouted destination: dropped, answered with ICMP unreachable
                icmp_type = await asyncio.to_thread(_echo_answer, ns_a, "10.77.0.9")
                assert icmp_type == 3, "expected ICMP destination unreachable"
                assert a.global_drops()["no_route"] >= 1
                assert a.counters(1).tx_packets >= 3 and b.counters(2).rx_packets >= 3
            finally:
                a.close()
                b.close()
                ua.close()
                ub.close()
        run(main())
    finally:
        for d in devs:
            d.close()
        if ns_b is not None:
            ns_b.delete()
        ns_a.delete()


@pytest.mark.netns
def test_real_firewall_in_tun_mode_counts_like_the_reference():
    """A phantom Firewall (compiled tables) on both paths: the same packets
    give the same per-rule hits and drop/accept counters."""
    results = {}
    for kind in ("reference", "fast"):
        from phantomlab import netns
        prefix = netns.unique_prefix()
        ns_a, ns_b, devs = netns.Namespace(prefix + "-a"), None, []
        try:
            ns_b = netns.Namespace(prefix + "-b")
            devs.append(_tun_in(ns_a, prefix[-6:] + "ta", "10.77.0.1/24"))
            devs.append(_tun_in(ns_b, prefix[-6:] + "tb", "10.77.0.2/24"))
            section = {"rule": [{"direction": "in", "action": "drop", "proto": "udp", "dst_port": 9},
                                {"direction": "in", "action": "reject", "proto": "tcp", "dst_port": 7},
                                {"direction": "out", "action": "drop", "proto": "udp", "dst_port": 11}]}

            async def main():
                ua, ub = _udp(), _udp()
                cls = ReferenceDataPath if kind == "reference" else fast.FastDataPath
                fwb = _fw.build(section, {}, Mode.TUN)
                a = cls(Mode.TUN, ua, devs[0].fd, None, events=Recorder(), tunables=Tunables())
                b = cls(Mode.TUN, ub, devs[1].fd, None, events=Recorder(), tunables=Tunables(),
                        firewall=fwb)
                try:
                    a.add_peer(1, ["10.77.0.2/32"])
                    b.add_peer(2, ["10.77.0.1/32"])
                    a.set_endpoint(1, ub.getsockname())
                    b.set_endpoint(2, ua.getsockname())
                    a.start()
                    b.start()
                    ka, kb = keypairs(1, 2)
                    b.install_keypair(kb, confirmed=False)
                    a.install_keypair(ka, confirmed=True)
                    assert await asyncio.to_thread(ns_a.ping, "10.77.0.2", 5.0)
                    s = ns_a.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    for port in (9, 9, 10):
                        s.sendto(b"x", ("10.77.0.2", port))
                    s.close()
                    t = ns_a.socket(socket.AF_INET, socket.SOCK_STREAM)
                    t.settimeout(3)
                    with pytest.raises(OSError):          # RST from the reject rule
                        await asyncio.to_thread(t.connect, ("10.77.0.2", 7))
                    t.close()
                    await until(lambda: b.counters(2).drops.get("firewall", 0) >= 3)
                    await asyncio.sleep(0.2)
                    d = fwb.describe()
                    return ([r["hits"] for r in d["rules"]], d["drops"], d["accepts"]["default"] > 0,
                            b.counters(2).drops)
                finally:
                    a.close()
                    b.close()
                    ua.close()
                    ub.close()
            results[kind] = run(main())
        finally:
            for dv in devs:
                dv.close()
            if ns_b is not None:
                ns_b.delete()
            ns_a.delete()
    assert results["fast"] == results["reference"]
    hits = results["fast"][0]
    assert hits[0] == 2 and hits[1] >= 1
