"""No peer may take another's traffic (issue 18): who may hold a prefix, and
route changes as one step, at the level where each rule lives.

* the engine's invariants (Engine.route_problem): a prefix belongs to one
  peer; a directory record's claim (an *exclusive* peer) overlaps no other
  peer's prefix, either way, IPv4 and IPv6;
* both data paths: a change takes a prefix only from a peer it names,
  removing a peer removes only its own routes (item 8), and a change is one
  step for the code that routes packets: a flood routed while a peer flips
  between 199 /32s and the /24 that holds them never reaches the peer owning
  the covering /12 (item 2; real TUN device in a namespace);
* the daemon: ``open`` of a new key with a configured peer's /32 is refused
  (409) and leaves the configured peer's route alone (item 8);
* WireGuard's UAPI: ``wg set ... allowed-ips`` never takes a Phantom peer's
  prefix (item 9).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import socket
import subprocess
import sys
import threading
import time

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.control.config import PeerConfig, Settings
from phantom.control.engine import Engine
from phantom.dataplane import ciphers
from phantom.dataplane.types import Keypair, Mode

DATAPATHS = ["reference", "fast"]
N = ipaddress.ip_network


def _key() -> bytes:
    return crypto.x25519_public(crypto.x25519_private())


def _udp(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


class _Events:
    def __init__(self):
        self.needed = []

    def control_packet(self, data, addr):
        pass

    def handshake_needed(self, peer_id):
        self.needed.append(peer_id)

    def keypair_confirmed(self, peer_id, local_index):
        pass


def _datapath(kind, mode=Mode.TEST, device_fd=None, udp=None, test=None):
    udp = udp or _udp()
    test = test if test is not None or mode is not Mode.TEST else _udp()
    kw = dict(events=_Events(), tunables=Tunables())
    if kind == "reference":
        from phantom.dataplane.reference import ReferenceDataPath
        return ReferenceDataPath(mode, udp, device_fd, test, **kw)
    from phantom.dataplane.fast import FastDataPath
    return FastDataPath(mode, udp, device_fd, test, **kw)


def _addr(text):
    return ipaddress.ip_address(text).packed


# ----------------------------------------------------------------------- the engine
def test_a_prefix_belongs_to_one_peer():
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    y = e.add_peer(_key(), "ysite", ["10.77.0.128/25"])
    with pytest.raises(ValueError, match="10.77.0.128/25 is peer ysite's"):
        e.add_peer(_key(), "x", ["10.77.0.128/25"])
    # overlapping prefixes of ordinary peers are fine (the longest prefix wins)
    inner = e.add_peer(_key(), "inner", ["10.77.0.200/32"], dynamic=True)
    assert e.prefix_holder("10.77.0.200/32") is inner and e.prefix_holder(N("10.77.0.128/25")) is y
    e.remove_peer(inner.id)
    assert e.prefix_holder("10.77.0.200/32") is None


@pytest.mark.parametrize("claim, other", [
    ("10.77.0.200/32", "10.77.0.128/25"),      # inside another peer's prefix
    ("10.77.0.128/26", "10.77.0.128/25"),
    ("10.77.0.0/24", "10.77.0.128/25"),        # holding another peer's prefix
    ("10.77.0.128/25", "10.77.0.128/25"),
    ("fd77::c8/128", "fd77::80/121"),
    ("fd77::/64", "fd77::80/121"),
])
def test_a_directory_claim_overlaps_no_other_prefix_either_way(claim, other):
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    e.add_peer(_key(), "ysite", [other])
    assert e.route_problem({None: [claim]}, new_exclusive=True) is not None
    with pytest.raises(ValueError, match="ysite"):
        e.add_peer(_key(), "x", [claim], dynamic=True, exclusive=True)
    # and the other way round: a claim already admitted keeps later peers out of it
    e2 = Engine(bytearray(crypto.x25519_private()), Tunables())
    x = e2.add_peer(_key(), "x", [claim], dynamic=True, exclusive=True)
    with pytest.raises(ValueError, match="peer x's"):
        e2.add_peer(_key(), "ysite", [other])
    later = e2.add_peer(_key(), "z", ["10.88.0.0/16", "fd88::/64"])
    with pytest.raises(ValueError):
        e2.set_allowed_ips({later.id: ["10.88.0.0/16", other]})
    assert later.allowed_ips == [N("10.88.0.0/16"), N("fd88::/64")], "nothing changed"
    e2.remove_peer(x.id)
    e2.set_allowed_ips({later.id: [other]})


def test_a_peer_the_config_adopts_is_no_longer_exclusive():
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    x = e.add_peer(_key(), "x", ["10.77.0.200/32"], dynamic=True, exclusive=True)
    with pytest.raises(ValueError):
        e.add_peer(_key(), "hub", ["10.77.0.0/24"])
    e.adopt(x.id)
    assert not x.dynamic and not x.exclusive
    e.add_peer(_key(), "hub", ["10.77.0.0/24"])          # overlaps of the file's peers are fine


def test_set_allowed_ips_moves_between_the_peers_it_names_at_once():
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    a = e.add_peer(_key(), "a", ["10.0.0.1/32"])
    b = e.add_peer(_key(), "b", ["10.0.0.2/32"])
    with pytest.raises(ValueError, match="is peer a's"):
        e.set_allowed_ips({b.id: ["10.0.0.1/32"]})
    e.set_allowed_ips({a.id: ["10.0.0.2/32"], b.id: ["10.0.0.1/32"]})     # a swap is one change
    assert e.prefix_holder("10.0.0.1/32") is b and e.prefix_holder("10.0.0.2/32") is a


# ------------------------------------------------------------------ the data paths
@pytest.mark.parametrize("kind", DATAPATHS)
def test_a_data_path_change_takes_a_prefix_only_from_a_peer_it_names(kind):
    dp = _datapath(kind)
    try:
        dp.add_peer(1, ["10.77.0.2/32", "10.77.0.0/24"])
        with pytest.raises(ValueError):
            dp.add_peer(2, ["10.77.0.2/32"])            # another peer's: refused, nothing added
        dp.add_peer(2, ["10.77.0.3/32"])
        with pytest.raises(ValueError):
            dp.set_allowed_ips(2, ["10.77.0.2/32"])
        assert dp.lookup(_addr("10.77.0.2")) == 1 and dp.lookup(_addr("10.77.0.3")) == 2
        # the removed peer's own routes go, nobody else's (issue 18, item 8)
        dp.remove_peer(2)
        assert dp.lookup(_addr("10.77.0.2")) == 1 and dp.lookup(_addr("10.77.0.3")) == 1
        dp.add_peer(3, [])
        dp.update_routes({1: ["10.77.0.0/24"], 3: ["10.77.0.2/32"]})   # named: it moves
        assert dp.lookup(_addr("10.77.0.2")) == 3 and dp.lookup(_addr("10.77.0.9")) == 1
        with pytest.raises(ValueError):
            dp.update_routes({3: ["10.77.0.0/24"]})
        assert dp.lookup(_addr("10.77.0.9")) == 1
    finally:
        dp.close()


def _test_daemon(kind, peers=(), mode=Mode.TEST):
    from phantom.daemon import Daemon
    t = Tunables(rekey_timeout=0.1, handshake_jitter=0.0, open_attempts=2, timer_tick=0.02)
    d = Daemon(Settings(mode=mode, fast=kind == "fast", tunables=t, peers=list(peers)),
               bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()
    return d


@pytest.mark.parametrize("kind", DATAPATHS)
def test_open_of_a_new_key_with_a_configured_peers_prefix_is_refused(kind):
    """Issue 18, item 8: the docs promise 409; the open used to go ahead and,
    when it timed out, the temporary peer's removal took the configured
    peer's route out of the data path (no_route until restart)."""
    from phantom.control.errors import Conflict
    ysite = PeerConfig("ysite", _key(), ("127.0.0.1", 9), [N("10.77.0.2/32")])
    d = _test_daemon(kind, [ysite])
    absent = _udp()

    async def main():
        d.build()
        d.dp.start()
        ticker = asyncio.get_running_loop().create_task(d._ticker())
        y = d.engine.peer_by_name("ysite")
        try:
            with pytest.raises(Conflict, match="10.77.0.2/32 is peer ysite's"):
                await d.open(absent.getsockname(), public_key=base64.b64encode(_key()).decode(),
                             allowed_ips=["10.77.0.2/32"])
            # nor a prefix holding it: a peer added at run time moves nobody's traffic
            with pytest.raises(Conflict, match="10.77.0.0/24 overlaps peer ysite's 10.77.0.2/32"):
                await d.open(absent.getsockname(), public_key=base64.b64encode(_key()).decode(),
                             allowed_ips=["10.77.0.0/24"])
        finally:
            d._stop.set()
            await ticker
        assert list(d.engine.peers) == [y.id], "nothing added"
        assert d.dp.lookup(_addr("10.77.0.2")) == y.id, "the configured peer keeps its route"
        d.dp.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        for s in (d.udp, d.test_sock, absent):
            s.close()


# ------------------------------------------------------------------ WireGuard's UAPI
@pytest.mark.parametrize("kind", DATAPATHS)
def test_wg_set_never_takes_a_phantom_peers_prefix(kind, tmp_path):
    """Issue 18, item 9: `wg set PEER allowed-ips` moved a Phantom peer's
    prefix to a WireGuard peer (which `wg show` cannot even display)."""
    from phantom.control.wireguard.uapi import DaemonBackend, UapiServer
    ph = PeerConfig("ph", _key(), None, [N("10.99.0.2/32")])
    K_WG1 = _key()
    wg1 = PeerConfig("wg1", K_WG1, None, [N("10.99.0.3/32")], protocol="wireguard")
    d = _test_daemon(kind, [ph, wg1])
    d.build()
    try:
        srv = UapiServer(DaemonBackend(d), "x", directory=tmp_path)
        newkey = _key()
        answer = srv.handle("set=1", ["public_key=" + newkey.hex(), "allowed_ip=10.99.0.2/32"])
        assert answer == "errno=%d\n\n" % -errno.EADDRINUSE
        assert d.engine.peer_by_key(newkey) is None, "nothing changed"
        # nor part of it, by a longer or a shorter prefix
        for net in ("10.99.0.0/24", "10.99.0.2/32"):
            assert srv.handle("set=1", ["public_key=" + K_WG1.hex(), "allowed_ip=" + net]) == \
                "errno=%d\n\n" % -errno.EADDRINUSE, net
        assert d.engine.peer_by_name("wg1").allowed_ips == [N("10.99.0.3/32")]
        p = d.engine.peer_by_name("ph")
        assert p.allowed_ips == [N("10.99.0.2/32")] and d.dp.lookup(_addr("10.99.0.2")) == p.id
        assert "10.99.0.2" not in srv.handle("get=1", [])
        # between WireGuard peers a prefix moves, as wg does it
        assert srv.handle("set=1", ["public_key=" + newkey.hex(), "allowed_ip=10.99.0.3/32"]) == "errno=0\n\n"
        w = d.engine.peer_by_key(newkey)
        assert d.dp.lookup(_addr("10.99.0.3")) == w.id and d.engine.peer_by_name("wg1").allowed_ips == []
    finally:
        d.dp.close()
        d.udp.close()
        d.test_sock.close()


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
    from phantom import netns
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
def test_stock_wg_set_cannot_take_a_phantom_peers_prefix(two_hosts, daemon_factory, tmp_path):
    """Item 9 with the stock tool: `wg set DEV peer K allowed-ips P` where P is
    a Phantom peer's prefix fails, and neither `wg show` nor /peers changes."""
    import os
    import shutil

    from phantom.control.keys import encode_key
    from tunnelkit import make_node, start, write_config
    if shutil.which("wg") is None:
        pytest.skip("wg (wireguard-tools) is not installed")
    node = make_node(tmp_path, "ph", 1, two_hosts.a)
    dev = "phr%d" % (os.getpid() % 100000)
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


def test_unrouted_follows_the_longest_route_holding_the_prefix():
    from phantom.dataplane.tun import unrouted
    routes = [(N("0.0.0.0/0"), "eth0"), (N("10.0.0.0/8"), "ph0"), (N("10.204.0.0/24"), "eth0"),
              (N("10.50.0.0/16"), "eth0"), (N("fd99::/64"), "ph0")]
    assert unrouted("ph0", ["10.1.0.0/16", "10.0.0.0/8", "10.204.0.0/16", "fd99::5/128"], routes) == []
    assert unrouted("ph0", ["10.50.1.0/24", "0.0.0.0/0", "192.168.1.0/24", "fd98::/64"], routes) == \
        [N("10.50.1.0/24"), N("0.0.0.0/0"), N("192.168.1.0/24"), N("fd98::/64")]
