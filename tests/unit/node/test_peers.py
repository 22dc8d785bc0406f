"""The peer door's lookups (phantom/node/peers.py) on a real engine: the
firewall's name table is a view of the engine's indexes, in step after every
add, rename and removal; planned_names gives a reload's rules the ids the
peers will have; find and free_name answer with two dict lookups."""

from __future__ import annotations

import base64

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.control.engine import Engine
from phantom.node.config import PeerConfig
from phantom.node.peers import PeerNames, PeerTable, planned_names
from tests.support.engines import private_key


def _key() -> bytes:
    return crypto.x25519_public(crypto.x25519_private())


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


class RecordingDataPath:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name,) + a)


def test_the_name_table_follows_the_engine():
    e = Engine(private_key(), Tunables())
    names = PeerNames(e)
    ka, kb = _key(), _key()
    a = e.add_peer(ka, "alpha", [])
    b = e.add_peer(kb, "beta", [])
    assert dict(names) == {"alpha": a.id, b64(ka): a.id, "beta": b.id, b64(kb): b.id}
    assert "gamma" not in names and names.get(b64(_key())) is None and 7 not in names
    e.update_peer(b.id, name="gamma")
    assert "beta" not in names and names["gamma"] == b.id
    # a name that is another peer's key: the later peer wins, as a table
    # written peer by peer in id order did
    c = e.add_peer(_key(), b64(ka), [])
    assert names[b64(ka)] == c.id
    e.remove_peer(c.id)
    assert names[b64(ka)] == a.id
    e.remove_peer(a.id)
    assert "alpha" not in names and b64(ka) not in names and len(names) == 2


def test_planned_names_give_new_peers_the_ids_they_will_get():
    e = Engine(private_key(), Tunables())
    ka, kb, kc = _key(), _key(), _key()
    a = e.add_peer(ka, "alpha", [])
    e.remove_peer(e.add_peer(_key(), "gone", []).id)         # ids are never reused
    configs = [PeerConfig("alpha", ka, None, []), PeerConfig("bee", kb, None, []),
               PeerConfig("cee", kc, None, [])]
    planned = planned_names(e, configs)
    assert planned == {"alpha": a.id, b64(ka): a.id, "bee": 3, b64(kb): 3, "cee": 4, b64(kc): 4}
    assert [e.add_peer(kb, "bee", []).id, e.add_peer(kc, "cee", []).id] == [3, 4]


def test_find_and_free_name():
    e = Engine(private_key(), Tunables())
    table = PeerTable(e, lambda actions: None, RecordingDataPath())
    ka = _key()
    a = table.add(ka, "alpha", [], ("127.0.0.1", 9))
    assert table.dp.calls == [("add_peer", a.id, []), ("set_endpoint", a.id, ("127.0.0.1", 9))]
    assert table.find("alpha") is a and table.find(b64(ka)) is a
    assert table.find("nobody") is None and table.find("") is None and table.find(b64(ka)[:-1]) is None
    assert table.free_name("alpha") == "alpha-2" and table.free_name("beta") == "beta"
    table.add(_key(), "alpha-2", [])
    assert table.free_name("alpha") == "alpha-3"
    with pytest.raises(ValueError):
        table.add(ka, "again", [])                              # the engine refuses: nothing changed
    assert len(table.dp.calls) == 3


def test_switching_an_exit_is_one_route_change_and_own_routes_stay():
    """`phantom exit use` from one exit to another: the default routes move
    between the two peers in one update_routes (no moment without them);
    each peer keeps its own prefixes; the extra ones go when the peer does."""
    import ipaddress
    e = Engine(private_key(), Tunables())
    dp = RecordingDataPath()
    t = PeerTable(e, lambda actions: None, dp)
    a = t.add(_key(), "exit1", ["10.99.0.2/32"], offers={"exit": True})
    b = t.add(_key(), "exit2", ["10.99.0.3/32"], offers={"exit": True})
    c = t.add(_key(), "plain", ["10.99.0.4/32"])
    assert t.offers_exit(a) and t.offers_exit(b) and not t.offers_exit(c)
    full = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    t.set_extra({a.id: full})
    assert set(a.allowed_ips) == {ipaddress.ip_network("10.99.0.2/32"), *full}
    assert t.own_routes(a) == [ipaddress.ip_network("10.99.0.2/32")] and t.extra_routes(a) == tuple(full)
    dp.calls.clear()
    t.set_extra({a.id: (), b.id: full})
    routes = [c for c in dp.calls if c[0] == "update_routes"]
    assert len(routes) == 1 and set(routes[0][1]) == {a.id, b.id}, dp.calls
    assert list(a.allowed_ips) == [ipaddress.ip_network("10.99.0.2/32")] and t.extra_routes(a) == ()
    assert set(b.allowed_ips) == {ipaddress.ip_network("10.99.0.3/32"), *full}
    t.remove(b)
    assert t.extra_routes(b) == () and not t.offers_exit(b)
    with pytest.raises(ValueError):
        t.set_offers({b.id: {"exit": True}})             # gone
