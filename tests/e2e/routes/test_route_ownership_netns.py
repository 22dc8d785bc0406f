"""No peer may take another's traffic (issue 18), in namespaces (moved from
tests/contract/test_route_ownership.py, the cases there that need root):

* both data paths: a change is one step for the code that routes packets: a
  flood routed while a peer flips between 199 /32s and the /24 that holds them
  never reaches the peer owning the covering /12 (item 2; a real TUN device in
  a namespace);
* the stock ``wg set`` against phantomd's UAPI cannot take a Phantom peer's
  prefix (item 9).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from phantom import crypto
from phantom.keys import encode_key
from phantom.dataplane import ciphers
from phantom.dataplane.types import Keypair, Mode
from phantom.node.uapi import SOCKET_DIR
from phantomlab import netns
from phantomlab.nodes import make_node, start
from phantomlab.templates import write_config
from tests.contract.test_route_ownership import DATAPATHS, N, _datapath, _key, _udp


# --------------------------------------------- a route flip under a flood (item 2)
def _tun_in(ns, name, cidr):
    from phantom.dataplane.tun import open_device
    dev = open_device(Mode.TUN, name, 1420)
    try:
        subprocess.run(["ip", "link", "set", "dev", name, "netns", ns.name], check=True,
                       capture_output=True, timeout=10)
        ns.ip("addr", "add", cidr, "dev", name)
        ns.ip("link", "set", name, "up")
    except BaseException:
        dev.close()
        raise
    return dev


_FLOOD = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(b"for B only", ("172.20.0.2", 9))
            n += 1
        except OSError:
            pass
print(n)
"""


class _Collector:
    """Reads every datagram a UDP socket gets, on a thread, until stopped."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        self.sock.settimeout(0.1)
        self.got: list = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            try:
                self.got.append(self.sock.recv(4096))
            except socket.timeout:
                continue
            except OSError:
                return

    def stop(self):
        self._stop = True
        self._t.join(5)
        self.sock.close()

    def inner_destinations(self, key: bytes) -> list:
        """Open every datagram with ``key``: the inner packets' destinations."""
        out = []
        for dgram in self.got:
            opened = ciphers.open_packet(ciphers.CipherKind.SECRETBOX, key, dgram)
            plain = opened[2] if opened is not None else None
            if plain is None or len(plain) < 20:
                out.append(None)
            else:
                out.append(socket.inet_ntoa(bytes(plain[16:20])))
        return out


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("kind", DATAPATHS)
def test_no_packet_leaks_to_another_peer_while_routes_flip(kind):
    """A routes through a real TUN: B owns 199 /32s in 172.20.0.0/24, C owns
    172.16.0.0/12.  While a flood to 172.20.0.2 runs, B flips 100 times
    between the /32s and the /24.  Every flooded packet must go to B: C must
    decrypt none.  (The fast path used to remove B's old prefixes from the C
    trie one lock at a time while the worker routed in between: hundreds of
    packets for B went to C.)"""
    prefix = netns.unique_prefix()
    ns = netns.Namespace(prefix + "-r")
    dev = None
    b_rx, c_rx = _Collector(), _Collector()
    udp = _udp()
    try:
        dev = _tun_in(ns, prefix[-6:] + "tr", "10.66.0.1/24")
        ns.ip("route", "add", "172.16.0.0/12", "dev", dev.name)
        hosts = [N("172.20.0.%d/32" % i) for i in range(2, 201)]
        whole = [N("172.20.0.0/24")]
        keys = {}

        async def main():
            dp = _datapath(kind, Mode.TUN, dev.fd, udp)
            try:
                dp.add_peer(1, hosts)                       # B
                dp.add_peer(2, ["172.16.0.0/12"])           # C
                for pid, sink, idx in ((1, b_rx, 0xB0), (2, c_rx, 0xC0)):
                    send = bytearray(crypto.random_bytes(32))
                    keys[pid] = bytes(send)
                    dp.set_endpoint(pid, sink.sock.getsockname())
                    dp.install_keypair(Keypair(pid, idx, idx + 1, send, bytearray(crypto.random_bytes(32)),
                                               time.monotonic(), True), confirmed=True)
                dp.start()
                flood = await asyncio.create_subprocess_exec(
                    *ns.exec_prefix, sys.executable, "-c", _FLOOD, "6",
                    stdout=asyncio.subprocess.PIPE)
                t0 = time.monotonic()
                while len(b_rx.got) < 100 and time.monotonic() - t0 < 5:   # the flood is flowing
                    await asyncio.sleep(0.01)
                flips = 0
                while flips < 100 and flood.returncode is None:
                    dp.set_allowed_ips(1, whole if flips % 2 == 0 else hosts)
                    flips += 1
                    await asyncio.sleep(0.01)               # the loop (the reference path) routes too
                out, _ = await asyncio.wait_for(flood.communicate(), 20)
                await asyncio.sleep(0.3)
                return flips, int(out or 0)
            finally:
                dp.close()

        flips, sent = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        b_rx.stop()
        c_rx.stop()
        udp.close()
        if dev is not None:
            dev.close()
        ns.delete()
    at_b = b_rx.inner_destinations(keys[1])
    at_c = c_rx.inner_destinations(keys[2])
    assert flips == 100, "the flood ended before the flips did"
    assert len(at_b) > 1000 and set(at_b) == {"172.20.0.2"}, (sent, len(at_b))
    assert at_c.count("172.20.0.2") == 0 and len(at_c) == 0, \
        "%d packets addressed to B reached C (of %d sent, %d at B)" % (at_c.count("172.20.0.2"), sent, len(at_b))


@pytest.mark.netns
def test_stock_wg_set_cannot_take_a_phantom_peers_prefix(two_hosts, daemon_factory, tmp_path, request):
    """Item 9 with the stock tool: `wg set DEV peer K allowed-ips P` where P is
    a Phantom peer's prefix fails, and neither `wg show` nor /peers changes."""
    if shutil.which("wg") is None:
        pytest.skip("wg (wireguard-tools) is not installed")
    node = make_node(tmp_path, "ph", 1, two_hosts.a)
    dev = "phr%d" % (os.getpid() % 100000)
    # phantomd makes its UAPI socket while root and cannot remove it once it runs
    # as nobody (docs/wireguard.md): the test that started it does, after it
    request.addfinalizer(lambda: (SOCKET_DIR / (dev + ".sock")).unlink(missing_ok=True))
    ph_key = encode_key(_key())
    write_config(node, mode="tun", extra={"uapi": True, "device": dev},
                 peers=[{"name": "ph2", "public_key": ph_key, "allowed_ips": ["10.99.0.2/32"]}])
    start(daemon_factory, node)
    wg_key = encode_key(_key())
    for prefix in ("10.99.0.2/32", "10.99.0.0/25"):
        r = two_hosts.a.run(["wg", "set", dev, "peer", wg_key, "allowed-ips", prefix], check=False)
        assert r.returncode != 0, (prefix, r.stdout, r.stderr)
    assert two_hosts.a.run(["wg", "show", dev, "allowed-ips"]).stdout.strip() == ""
    code, body = node.api("GET", "/peers")
    assert [(p["name"], p["allowed_ips"]) for p in body["peers"]] == [("ph2", ["10.99.0.2/32"])]
    # a prefix of nobody's is fine
    two_hosts.a.run(["wg", "set", dev, "peer", wg_key, "allowed-ips", "10.99.0.9/32"])
    assert "10.99.0.9/32" in two_hosts.a.run(["wg", "show", dev, "allowed-ips"]).stdout
