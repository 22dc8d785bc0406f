"""The traversal coordinator (sans-IO): peer-control messages sealed with
session keys between real Engines, and what a hostile peer or rendezvous
can do with them: every refusal is a counted drop."""

from __future__ import annotations

from phantom import crypto, wire
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.nat.traversal import Traversal
from phantom.dataplane.types import Keypair, PeerCounters, RelayVia
from tests.support.clock import Clock
from tests.support.engines import sends


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
    ta.client.peers = {p.public_key for p in ta.engine.peers.values()}
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


# ---------------------------------------------------------------- issue #18
RV = ("10.212.0.1", 9000)
PUB = {"a": ("10.212.0.11", 9000), "b": ("10.212.0.12", 9000)}


class Pump:
    """Carries the datagrams between a's, b's and the rendezvous' Traversals
    (engines included) as the daemon would, on the injected clock; what
    a or b send elsewhere is kept in ``sent[name]`` (time, addr, type)."""

    def __init__(self, clock, ta, tb, tr, online=("a", "b")):
        self.clock, self.t, self.tr = clock, {"a": ta, "b": tb}, tr
        self.online = set(online)
        self.sent = {"a": [], "b": []}

    def do(self, name, actions):
        for act in actions:
            if not isinstance(act, A.SendDatagram):
                continue
            if act.addr == RV:
                self.serve(name, act.data)
            else:
                self.sent[name].append((self.clock.t, act.addr, act.data[0]))

    def serve(self, name, data):
        for act in self.tr.handle_datagram(data, PUB[name]):
            if isinstance(act, A.SendDatagram):
                dest = "a" if act.addr == PUB["a"] else "b"
                if dest in self.online:
                    self.do(dest, self.t[dest].handle_datagram(act.data, RV))

    def step(self, dt=0.25):
        self.clock.t += dt
        for name in sorted(self.online):
            t = self.t[name]
            self.do(name, t.engine.tick({pid: PeerCounters() for pid in t.engine.active_ids()}))
            self.do(name, t.tick())
        self.tr.tick()

    def traffic(self, name, peer_id):
        """The data path asks for a handshake (traffic waits), as the daemon passes it on."""
        t = self.t[name]
        self.do(name, t.engine.handshake_needed(peer_id))
        self.do(name, t.handshake_needed(peer_id))


def where_is_count(tr):
    return tr.server.stats["where_is_unanswered"] + tr.server.stats["punches"]


def test_where_is_is_asked_again_while_traffic_waits():
    """a's traffic for b starts before b registered: the first where-is gets
    an empty answer.  a asks again while its traffic waits, after 1 s when
    the last ask got an empty answer (b may be a tick from registering), and
    always has a next attempt scheduled; once b registers, the next answer
    brings the punch."""
    clock, ta, tb, tr, ids = world()
    pump = Pump(clock, ta, tb, tr, online=("a",))
    pump.step()                                   # a registers
    pump.traffic("a", ids["a_b"])
    assert where_is_count(tr) == 1 and tr.server.stats["where_is_unanswered"] == 1
    peer = ta.engine.peers[ids["a_b"]]
    for _ in range(int(1.25 / 0.25)):
        pump.step()
    assert where_is_count(tr) == 2, "an unanswered ask is repeated after 1 s, not 5"
    for _ in range(int(16 / 0.25)):
        pump.step()
    assert where_is_count(tr) >= 12, "asked again every second while unanswered"
    assert peer.state.value == "handshaking" and ta.describe(ids["a_b"])["path"] == "none"
    for _ in range(int(4 / 0.25)):
        pump.step()
        assert ta.engine.next_attempt(ids["a_b"]) is not None, "traffic waits with nothing scheduled"
    pump.online.add("b")                          # b starts: registers within a tick
    for _ in range(int(6 / 0.25)):
        pump.step()
    assert tr.server.stats["punches"] >= 1
    inits = {addr for _, addr, kind in pump.sent["a"] if kind == wire.MessageType.INITIATION}
    assert ("10.211.2.2", 9000) in inits and PUB["b"] in inits, "a punches toward b at last"


def test_a_peer_cannot_turn_a_node_into_a_reflector():
    """m (a peer b accepts) registers seven "local endpoints" at a victim and
    asks where b is, again and again, then leaves.  b sends a bounded number
    of initiations to the victim (4 endpoints x 4 tries at most, with
    backoff), nothing once m is gone, and the rendezvous forgets m's
    registration when m stops renewing it."""
    victims = [("192.0.2.66", 5000 + i) for i in range(7)]
    clock, tm, tb, tr, ids = world()
    tm._local_endpoints = lambda ep: [("10.211.1.2", 9000)] + victims
    pump = Pump(clock, tm, tb, tr)
    pump.step()                                   # both register
    pump.traffic("a", ids["a_b"])
    for i in range(int(60 / 0.25)):               # m keeps asking, once a second
        if i % 4 == 0:
            pump.do("a", tm.handshake_needed(ids["a_b"]))
        pump.step()
    assert tr.server.stats["punches"] >= 10, "many punch requests reached b"
    pump.online.discard("a")                      # m leaves
    for _ in range(int(240 / 0.25)):
        pump.step()
    to_victim = [(t, addr) for t, addr, _ in pump.sent["b"] if addr in victims]
    assert 0 < len(to_victim) <= 16, to_victim
    assert len({addr for _, addr in to_victim}) <= 3, "4 local endpoints a registration, one m's own"
    late = [s for s in pump.sent["b"] if s[0] > clock.t - 150]
    assert late == [], "b still sends after m left: %r" % late[:5]
    assert tr.server.registration(tm.engine.public_key) is None
    assert not tb.engine.wants(ids["b_a"]) and tb.describe(ids["b_a"])["candidates"] == []


def test_relay_pairs_follow_acceptance_and_end_with_the_registration():
    clock, ta, tb, tr, ids = world(relay=True)
    pump = Pump(clock, ta, tb, tr)
    pump.step()
    out = []
    orig = tr.handle_datagram

    def spy(data, addr):
        acts = orig(data, addr)
        out.extend(a for a in acts if isinstance(a, A.SetRelayPair))
        return acts

    tr.handle_datagram = spy
    pump.traffic("a", ids["a_b"])
    (rid,) = {p.relay_id for p in out}
    assert set(out) == {A.SetRelayPair(ids["r_a"], rid, ids["r_b"]), A.SetRelayPair(ids["r_b"], rid, ids["r_a"])}
    assert tr.status()["rendezvous"]["relay_pairs"] == 1
    # b stops accepting a (a reload): a's frames to b are no longer forwarded
    out.clear()
    tb.engine.remove_peer(ids["b_a"])
    clock.t += 5.0
    pump.step()
    assert out == [A.SetRelayPair(ids["r_a"], rid, None)]
    # a's last session with the relay ends: its registration and the pair go
    out.clear()
    retire = []
    for idx in [i for i, e in list(tr.channel._by_index.items()) if e[0].peer_id == ids["r_a"]]:
        retire += tr.keypair_retired(idx)
    assert retire == [A.SetRelayPair(ids["r_b"], rid, None)]
    assert tr.server.registration(ta.engine.public_key) is None
    assert tr.status()["rendezvous"]["relay_pairs"] == 0


def test_relay_ids_are_drawn_at_random_and_unique():
    """Relay ids come from the random source (crypto.random_u32 in a daemon),
    never from the order of the config; a collision draws again."""
    clock = Clock()
    er, ea, eb, ec = engine(clock), engine(clock), engine(clock), engine(clock)
    draws = iter([0, 77, 77, 1234])
    tr = Traversal(er, serve=True, relay=True, relay_capable=True, relay_id_source=lambda: next(draws))
    peers = {}
    for name, e in (("a", ea), ("b", eb), ("c", ec)):
        peers[name] = er.add_peer(e.public_key, name)
        t = Traversal(e, servers=[er.public_key])
        link(t, e.add_peer(er.public_key, "rv", endpoint=RV).id, tr, peers[name].id, clock)
        tr.server.handle(e.public_key, ("198.51.100.%d" % peers[name].id, 9000),
                         wire.Register((), tuple(x.public_key for x in (ea, eb, ec) if x is not e)))
    assert tr.relay.pair_id(ea.public_key, eb.public_key) == 77
    assert tr.relay.pair_id(eb.public_key, ea.public_key) == 77          # the same pair
    assert tr.relay.pair_id(ea.public_key, ec.public_key) == 1234        # 0 and 77 are drawn again
    assert Traversal(er, serve=True, relay=True).relay.new_relay_id is crypto.random_u32


def test_a_peer_registers_again_at_once_when_its_peers_change():
    """A registration lists the keys the peer accepts; a peer added at run
    time (a network member learnt from the stream) goes to the rendezvous at
    the next tick, not at the next periodic registration 5 s later."""
    clock, ta, tb, tr, ids = world()
    pump = Pump(clock, ta, tb, tr, online=("a", "b"))
    pump.step()                                   # both register
    regs = tr.server.stats["registrations"]
    pump.step()
    assert tr.server.stats["registrations"] == regs, "nothing new: no registration"
    late = engine(clock)
    ta.engine.add_peer(late.public_key, "late")
    pump.step()
    assert tr.server.stats["registrations"] == regs + 1, "a's new peer registered at once"
    assert tr.server.accepts(ta.engine.public_key, late.public_key)
