"""No peer may take another's traffic (issue 18): the rules that live in the
data paths and the daemon, on both data paths.

* both data paths: a change takes a prefix only from a peer it names, and
  removing a peer removes only its own routes (item 8);
* the daemon: ``open`` of a new key with a configured peer's /32 is refused
  (409) and leaves the configured peer's route alone (item 8);
* WireGuard's UAPI: ``wg set ... allowed-ips`` never takes a Phantom peer's
  prefix (item 9).

The engine's own invariants are in tests/unit/control/test_route_ownership.py;
a route flip under a flood through a real TUN device (item 2) and stock
``wg set`` against phantomd are in tests/e2e/routes/test_route_ownership_netns.py.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import socket

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.node.config import PeerConfig, Settings
from phantom.dataplane.types import Mode

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
    from phantom.node.daemon import Daemon
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
    from phantom.errors import Conflict
    ysite = PeerConfig("ysite", _key(), ("127.0.0.1", 9), [N("10.77.0.2/32")])
    d = _test_daemon(kind, [ysite])
    absent = _udp()

    async def main():
        d.build()
        d.dp.start()
        ticker = asyncio.get_running_loop().create_task(d.executor.run_ticker(d.shutdown))
        y = d.engine.peer_by_name("ysite")
        try:
            with pytest.raises(Conflict, match="10.77.0.2/32 is peer ysite's"):
                await d.controller.open(absent.getsockname(), public_key=base64.b64encode(_key()).decode(),
                             allowed_ips=["10.77.0.2/32"])
            # nor a prefix holding it: a peer added at run time moves nobody's traffic
            with pytest.raises(Conflict, match="10.77.0.0/24 overlaps peer ysite's 10.77.0.2/32"):
                await d.controller.open(absent.getsockname(), public_key=base64.b64encode(_key()).decode(),
                             allowed_ips=["10.77.0.0/24"])
        finally:
            d.shutdown.set()
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
    from phantom.node.uapi import PeerTableBackend, UapiServer
    ph = PeerConfig("ph", _key(), None, [N("10.99.0.2/32")])
    K_WG1 = _key()
    wg1 = PeerConfig("wg1", K_WG1, None, [N("10.99.0.3/32")], protocol="wireguard")
    d = _test_daemon(kind, [ph, wg1])
    d.build()
    try:
        srv = UapiServer(PeerTableBackend(d.peers, d.udp), "x", directory=tmp_path)
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
