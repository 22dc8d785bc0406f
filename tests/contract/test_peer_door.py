"""The peer door (phantom/node/peers.py), on both data paths: every add,
remove and change of a peer through the PeerTable leaves the engine, the data
path's routes and endpoints, and the firewall's name table in step."""

from __future__ import annotations

import base64
import ipaddress
import socket

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.dataplane.types import Mode
from phantom.node.config import PeerConfig, Settings

DATAPATHS = ["reference", "fast"]
N = ipaddress.ip_network


def _key() -> bytes:
    return crypto.x25519_public(crypto.x25519_private())


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _addr(text):
    return ipaddress.ip_address(text).packed


def _rule(peer):
    return {"rule": [{"direction": "in", "action": "drop", "peer": peer, "proto": "tcp",
                      "dst_port": 22}]}


@pytest.mark.parametrize("kind", DATAPATHS)
def test_the_peer_table_keeps_engine_data_path_and_firewall_names_in_step(kind):
    from phantom.node.daemon import Daemon
    alpha = PeerConfig("alpha", _key(), ("127.0.0.1", 9), [N("10.77.0.2/32")])
    d = Daemon(Settings(mode=Mode.TEST, fast=kind == "fast", tunables=Tunables(), peers=[alpha]),
               bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()
    try:
        d.build()
        a = d.engine.peer_by_name("alpha")
        assert d.dp.lookup(_addr("10.77.0.2")) == a.id and d.peers.names["alpha"] == a.id

        key = _key()
        b = d.peers.add(key, "bee", ["10.77.0.3/32"], ("127.0.0.1", 10), dynamic=True)
        assert d.dp.lookup(_addr("10.77.0.3")) == b.id
        assert tuple(d.dp.endpoint(b.id))[:2] == ("127.0.0.1", 10)
        assert d.peers.names["bee"] == b.id == d.peers.names[base64.b64encode(key).decode()]
        assert d.peers.find("bee") is b and d.peers.find(base64.b64encode(key).decode()) is b
        assert d.peers.free_name("bee") == "bee-2"
        with pytest.raises(ValueError):                      # the engine refuses: nothing changed
            d.peers.add(_key(), "cee", ["10.77.0.2/32"], None, dynamic=True, exclusive=True)
        assert d.dp.lookup(_addr("10.77.0.2")) == a.id and len(d.engine.peers) == 2

        d.peers.update(b, name="bumble", endpoint=("127.0.0.1", 11))
        assert d.engine.peer_by_name("bumble") is b and d.engine.peer_by_name("bee") is None
        assert "bee" not in d.peers.names and d.peers.names["bumble"] == b.id
        assert tuple(d.dp.endpoint(b.id))[:2] == ("127.0.0.1", 11)
        d.firewall.replace(_rule("bumble"), d.peers.names)   # rules name peers as they are now
        assert "waiting" not in d.firewall.describe()["rules"][0]
        d.firewall.replace(_rule("bee"), d.peers.names)      # no such peer (yet): it waits
        assert d.firewall.describe()["rules"][0]["waiting"] == "for peer bee"
        d.peers.update(b, name="bee")                        # a rename through the door: in force
        assert "waiting" not in d.firewall.describe()["rules"][0]
        d.peers.update(b, name="bumble")
        assert d.firewall.describe()["rules"][0]["waiting"] == "for peer bee"
        d.firewall.replace(_rule("bumble"), d.peers.names)
        assert d.firewall.describe()["rules"][0]["peer"] == "bumble"

        d.peers.set_routes({b.id: [N("10.77.0.4/32")]})
        assert d.dp.lookup(_addr("10.77.0.4")) == b.id and d.dp.lookup(_addr("10.77.0.3")) is None
        assert b.allowed_ips == [N("10.77.0.4/32")]

        d.peers.remove(b)
        assert d.engine.peer_by_key(key) is None and b.id not in d.engine.peers
        assert d.dp.lookup(_addr("10.77.0.4")) is None and d.dp.lookup(_addr("10.77.0.2")) == a.id
        assert "bumble" not in d.peers.names and len(d.peers.names) == 2
    finally:
        if d.dp is not None:
            d.dp.close()
        d.udp.close()
        d.test_sock.close()
