"""The traversal coordinator (sans-IO): peer-control messages sealed with
session keys between real Engines, and what a hostile peer or rendezvous
can do with them: every refusal is a counted drop."""

from __future__ import annotations

from phantom import crypto, wire
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.control.traversal import Traversal
from phantom.dataplane.types import Keypair, RelayVia


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def engine(clock):
    return Engine(bytearray(crypto.x25519_private()), Tunables(), clock=clock)


_idx = iter(range(500, 90000))


def link(tx, x_peer, ty, y_peer, clock):
    """A session between two Traversals' engines, keys installed by hand."""
    k1, k2 = crypto.random_bytes(32), crypto.random_bytes(32)
    ix, iy = next(_idx), next(_idx)
    tx.keypair_installed(Keypair(x_peer, ix, iy, bytearray(k1), bytearray(k2), clock(), True), True)
    ty.keypair_installed(Keypair(y_peer, iy, ix, bytearray(k2), bytearray(k1), clock(), False), True)


def world(relay=False):
    clock = Clock()
    ea, eb, er = engine(clock), engine(clock), engine(clock)
    a_r = ea.add_peer(er.public_key, "rv", endpoint=("10.212.0.1", 9000))
    a_b = ea.add_peer(eb.public_key, "b")
    b_r = eb.add_peer(er.public_key, "rv", endpoint=("10.212.0.1", 9000))
    b_a = eb.add_peer(ea.public_key, "a")
    r_a = er.add_peer(ea.public_key, "a")
    r_b = er.add_peer(eb.public_key, "b")
    ta = Traversal(ea, servers=[er.public_key], relay_capable=True, local_endpoints=lambda ep: [("10.211.1.2", 9000)])
    tb = Traversal(eb, servers=[er.public_key], relay_capable=True, local_endpoints=lambda ep: [("10.211.2.2", 9000)])
    tr = Traversal(er, serve=True, relay=relay, relay_capable=True)
    link(ta, a_r.id, tr, r_a.id, clock)
    link(tb, b_r.id, tr, r_b.id, clock)
    link(ta, a_b.id, tb, b_a.id, clock)
    ids = dict(a_r=a_r.id, a_b=a_b.id, b_r=b_r.id, b_a=b_a.id, r_a=r_a.id, r_b=r_b.id)
    return clock, ta, tb, tr, ids


def sends(actions):
    return [a for a in actions if isinstance(a, A.SendDatagram)]


def test_registration_where_is_and_punch_between_engines():
    clock, ta, tb, tr, ids = world(relay=True)
    for t, pub in ((ta, ("10.212.0.11", 9000)), (tb, ("10.212.0.12", 9000))):
        (reg,) = sends(t.tick())
        (ack,) = sends(tr.handle_datagram(reg.data, pub))
        assert ack.addr == pub
        t.handle_datagram(ack.data, ("10.212.0.1", 9000))
        assert list(t.client.reflexive.values()) == [pub]
    (ask,) = sends(ta.handshake_needed(ids["a_b"]))
    served = tr.handle_datagram(ask.data, ("10.212.0.11", 9000))
    answer, punch = sends(served)
    assert answer.addr == ("10.212.0.11", 9000) and punch.addr == ("10.212.0.12", 9000)
    # the relay forwards the pair both ways (each accepts the other) under
    # one random relay id, installed before the answers that name it
    pairs = [a for a in served if isinstance(a, A.SetRelayPair)]
    (rid,) = {p.relay_id for p in pairs}
    assert rid not in (0, ids["r_a"], ids["r_b"])
    assert set(pairs) == {A.SetRelayPair(ids["r_a"], rid, ids["r_b"]), A.SetRelayPair(ids["r_b"], rid, ids["r_a"])}
    assert served.index(pairs[-1]) < served.index(answer)
    out_a = ta.handle_datagram(answer.data, ("10.212.0.1", 9000))
    out_b = tb.handle_datagram(punch.data, ("10.212.0.1", 9000))
    # both sides initiate to every candidate at once
    assert {s.addr for s in sends(out_a)} == {("10.212.0.12", 9000), ("10.211.2.2", 9000)}
    assert {s.addr for s in sends(out_b)} == {("10.212.0.11", 9000), ("10.211.1.2", 9000)}
    assert [a for a in out_a if isinstance(a, A.SetRelayRoute)] == [A.SetRelayRoute(ids["a_b"], ids["a_r"], rid)]
    assert [a for a in out_b if isinstance(a, A.SetRelayRoute)] == [A.SetRelayRoute(ids["b_a"], ids["b_r"], rid)]
    # no direct path within relay_after: the relay is tried, last
    clock.t += 3.5
    out = ta.tick()
    targets = [s.addr for s in sends(out) if s.data[0] == wire.MessageType.INITIATION]
    assert targets[-1] == RelayVia(ids["a_r"], rid)
    ta.endpoint_set(ids["a_b"], RelayVia(ids["a_r"], rid))
    assert ta.describe(ids["a_b"])["path"] == "relayed via rv"


def test_forged_replayed_and_misdirected_control_messages_are_counted_drops():
    clock, ta, tb, tr, ids = world()
    (reg,) = sends(ta.tick())
    bad = bytearray(reg.data)
    bad[-1] ^= 1
    assert tr.handle_datagram(bytes(bad), ("10.212.0.11", 9000)) == []
    assert tr.channel.drops["auth_failed"] == 1
    assert sends(tr.handle_datagram(reg.data, ("10.212.0.11", 9000)))
    assert tr.handle_datagram(reg.data, ("10.212.0.11", 9000)) == []
    assert tr.channel.drops["replay"] == 1
    # a peer asking a node that is no rendezvous
    ask = tb.channel.seal(ids["b_a"], wire.WhereIs(tr.engine.public_key))
    assert ta.handle_datagram(ask, ("10.212.0.12", 9000)) == []
    assert ta.drops["not_a_rendezvous"] == 1
    # a punch from a peer that is not our rendezvous: refused
    fake = tb.channel.seal(ids["b_a"], wire.Punch(tb.engine.public_key, (("192.0.2.66", 1),)))
    assert ta.handle_datagram(fake, ("10.212.0.12", 9000)) == []
    assert ta.client.drops["not_a_rendezvous"] == 1
    # a hostile rendezvous: hints about a key we do not accept, unsolicited answers
    stranger = crypto.x25519_public(crypto.x25519_private())
    ta.client.peers = set(ta.engine._by_key)
    p = tr.channel.seal(ids["r_a"], wire.Punch(stranger, (("192.0.2.66", 1),)))
    assert ta.handle_datagram(p, ("10.212.0.1", 9000)) == []
    assert ta.client.drops["hint_for_unknown_key"] == 1
    e = tr.channel.seal(ids["r_a"], wire.Endpoints(tb.engine.public_key, (("192.0.2.66", 1),)))
    assert ta.handle_datagram(e, ("10.212.0.1", 9000)) == []
    assert ta.client.drops["unsolicited_answer"] == 1
    # a datagram for no session, garbage
    assert ta.handle_datagram(b"\x05\x00\x00\x00" + bytes(80), ("10.212.0.1", 9000)) == []
    assert ta.channel.drops["malformed"] + ta.channel.drops["unknown_index"] == 1
    assert ta.status()["drops"]["not_a_rendezvous"] == 2


def test_retired_keys_cannot_be_used():
    clock, ta, tb, tr, ids = world()
    (reg,) = sends(ta.tick())
    for idx in list(tr.channel._by_index):
        tr.keypair_retired(idx)
    assert tr.handle_datagram(reg.data, ("10.212.0.11", 9000)) == []
    assert tr.channel.drops["unknown_index"] == 1
