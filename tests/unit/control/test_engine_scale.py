"""The engine's tick costs the active peers, not the configured ones (issue #15).

* idle peers drop out of the tick and cost nothing, however many there are;
* every event that concerns a peer wakes it;
* a randomized simulation of a hub and its clients gives exactly the same
  actions, in the same order, as an engine that ticks every peer every time
  (the behaviour before the active set), so every timer rule is unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.control.peer import PeerState
from phantom.dataplane.types import PeerCounters
from tests.support.clock import Clock
from tests.support.engines import private_key as _key

HUB = ("10.0.0.1", 9000)


class EveryPeerEngine(Engine):
    """The engine as it was: every configured peer is visited on every tick,
    and every timer rule runs for it (no peer is skipped until a deadline)."""

    def tick(self, counters: dict) -> list:
        self.active = dict(self.peers)
        for peer in self.peers.values():
            peer.tick_until = float("-inf")
        return super().tick(counters)


def test_idle_peers_leave_the_tick():
    clock = Clock()
    hub = Engine(_key(), Tunables(), clock=clock, wall_clock=Clock(1.7e9))
    for _ in range(5000):
        hub.add_peer(crypto.x25519_public(bytes(_key())), allowed_ips=[])
    assert len(hub.active_ids()) == 5000           # new peers are looked at once
    assert hub.tick({}) == []
    assert hub.active_ids() == []
    t0 = time.perf_counter()
    for _ in range(100):
        clock.t += 0.1
        assert hub.tick({}) == []
    assert time.perf_counter() - t0 < 0.05         # 100 ticks over 5,000 idle peers


class CountingEngine(Engine):
    """Counts the peers whose timer rules a tick runs (each visit starts
    with the session-expiry rule)."""

    visits = 0

    def _timer_expire_sessions(self, peer, now):
        self.visits += 1
        return super()._timer_expire_sessions(peer, now)


def test_a_tick_after_many_handshakes_runs_only_the_due_peers_rules():
    """A hub answered N initiations (as under bench/hsload.py): every peer
    holds a session, so it stays in the active set until the session expires
    (REJECT_AFTER_TIME), but no timer rule can fire for it before its
    deadline (the unconfirmed answer's, then the expiry): the ticks between
    run no peer's rules, whatever N is (before: N peers every tick)."""
    n = 1000
    t = Tunables(under_load_initiations=10 ** 9, handshakes_per_second_per_source=10 ** 9,
                 handshake_burst_per_source=10 ** 9)
    clock, wall = Clock(), Clock(1.7e9)
    hub = CountingEngine(_key(), t, clock=clock, wall_clock=wall)
    keys = [_key() for _ in range(n)]
    pids = [hub.add_peer(crypto.x25519_public(bytes(k)), allowed_ips=[]).id for k in keys]
    hub.tick({})
    assert hub.active_ids() == []
    for i, k in enumerate(keys):
        c = Engine(k, t, clock=clock, wall_clock=wall)
        c.add_peer(hub.public_key, "hub", endpoint=HUB)
        wall.t += 0.001
        (init,) = [x for x in c.open(1) if isinstance(x, A.SendDatagram)]
        out = hub.handle_datagram(init.data, ("10.1.%d.%d" % (i // 250, i % 250 + 1), 5000))
        assert any(isinstance(x, A.InstallKeypair) for x in out)
    assert sorted(hub.active_ids()) == pids          # all handshook: all active
    empty = {pid: PeerCounters() for pid in pids}
    hub.tick(empty)                                   # the first tick looks at each once
    hub.visits = 0
    for _ in range(30):                               # 3 s at 10 Hz, before any deadline
        clock.t += 0.1
        assert hub.tick(empty) == []
    assert hub.visits == 0
    assert len(hub.active_ids()) == n                 # still active: the deadlines are kept
    # the unconfirmed answers' deadline passes: each peer's rules run once
    clock.t += t.rekey_timeout + t.handshake_jitter
    assert hub.tick(empty) == []
    assert hub.visits == n
    hub.visits = 0
    for _ in range(30):
        clock.t += 0.1
        hub.tick(empty)
    assert hub.visits == 0
    # the sessions expire: the peers go idle and leave the active set
    clock.t += t.reject_after_time
    out = hub.tick(empty)
    assert len([x for x in out if isinstance(x, A.RetireKeypair)]) == n
    hub.tick(empty)
    assert hub.active_ids() == []


def test_events_wake_a_sleeping_peer_and_it_sleeps_again_when_done():
    t = Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    ka, kb = _key(), _key()
    a = Engine(ka, t, clock=clock, wall_clock=wall)
    b = Engine(kb, t, clock=clock, wall_clock=wall)
    pa = a.add_peer(b.public_key, "b", endpoint=("10.0.0.2", 9000))
    pb = b.add_peer(a.public_key, "a", endpoint=HUB)
    a.tick({})
    b.tick({})
    assert a.active_ids() == [] and b.active_ids() == []
    wall.t += 0.01
    init = [x for x in a.open(pa.id) if isinstance(x, A.SendDatagram)][0]
    assert a.active_ids() == [pa.id]
    out_b = b.handle_datagram(init.data, HUB)
    assert b.active_ids() == [pb.id]
    resp = [x for x in out_b if isinstance(x, A.SendDatagram)][0]
    a.handle_datagram(resp.data, ("10.0.0.2", 9000))
    assert pa.state is PeerState.ESTABLISHED
    # established: stays active until its sessions expire
    clock.t += t.reject_after_time + 1
    a.tick({pa.id: PeerCounters()})
    assert pa.state is PeerState.IDLE
    a.tick({pa.id: PeerCounters()})
    assert a.active_ids() == []
    # the data path asks for a handshake: awake again
    clock.t += 10
    assert a.handshake_needed(pa.id)
    assert a.active_ids() == [pa.id]


def test_changed_counters_wake_a_sleeping_peer():
    clock = Clock()
    e = Engine(_key(), Tunables(), clock=clock, wall_clock=Clock(1.7e9))
    p = e.add_peer(crypto.x25519_public(bytes(_key())), allowed_ips=[])
    e.tick({p.id: PeerCounters()})
    assert e.active_ids() == []
    e.tick({p.id: PeerCounters(last_rx=clock.t, last_data_rx=clock.t)})
    assert e.active_ids() == [p.id]


def _shape(act):
    """An action without its random bytes (ephemeral keys differ per world)."""
    if isinstance(act, A.SendDatagram):
        return ("send", act.data[0], act.addr)
    if isinstance(act, A.InstallKeypair):
        kp = act.keypair
        return ("install", kp.peer_id, kp.local_index, kp.remote_index, kp.initiator, act.confirmed)
    return (type(act).__name__,) + tuple(v for k, v in sorted(vars(act).items()) if k != "data")


class World:
    """A hub engine and its clients, each client a one-peer engine."""

    def __init__(self, cls, keys, seed: int, tunables: Tunables):
        self.clock = Clock()
        self.wall = Clock(1.7e9)
        hub_key, client_keys = keys
        self.hub = cls(bytearray(hub_key), tunables, clock=self.clock, wall_clock=self.wall,
                       rng=random.Random(seed), index_source=itertools.count(1).__next__)
        self.clients = []
        self.addrs = []
        for i, ck in enumerate(client_keys):
            addr = ("10.1.0.%d" % (i + 1), 9000)
            c = Engine(bytearray(ck), tunables, clock=self.clock, wall_clock=self.wall,
                       rng=random.Random(seed * 1000 + i), index_source=itertools.count(1 << 20).__next__)
            c.add_peer(self.hub.public_key, "hub", endpoint=HUB)
            pk = 2.0 if i % 4 == 0 else 0.0
            self.hub.add_peer(crypto.x25519_public(bytes(ck)), "c%d" % i,
                              endpoint=addr if i % 2 == 0 else None, persistent_keepalive=pk)
            self.clients.append(c)
            self.addrs.append(addr)
        self.counters = {pid: PeerCounters() for pid in self.hub.peers}
        self.log: list = []

    def hub_do(self, actions, rng: random.Random) -> None:
        """Record the hub's actions and carry out the ones the clients see."""
        self.log.extend(_shape(a) for a in actions)
        for act in actions:
            if isinstance(act, A.SendDatagram) and rng.random() > 0.2:     # 20 % loss
                i = self.addrs.index(act.addr) if act.addr in self.addrs else None
                if i is not None:
                    self.client_do(i, self.clients[i].handle_datagram(act.data, HUB), rng)

    def client_do(self, i, actions, rng) -> None:
        for act in actions:
            if isinstance(act, A.SendDatagram) and rng.random() > 0.2:
                self.hub_do(self.hub.handle_datagram(act.data, self.addrs[i]), rng)


def changed_counters(w: "World", ids) -> dict:
    """DataPath.counters_changed's contract over the world's counters: only
    the peers whose counter times changed since they were last reported (a
    fresh copy each, as a data path makes)."""
    seen = w.__dict__.setdefault("seen", {})
    out = {}
    for pid in ids:
        c = w.counters[pid]
        times = (c.last_rx, c.last_tx, c.last_data_rx, c.last_data_tx)
        if seen.get(pid) != times:
            seen[pid] = times
            out[pid] = dataclasses.replace(c)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_active_set_ticks_exactly_like_every_peer(seed):
    """Three hubs see the same events: one ticks every peer every time (the
    behaviour before the active set), one the active set with every active
    peer's counters, one the active set with only the changed counters
    (tick(changed_only=True), as the executor ticks with
    DataPath.counters_changed): the same actions in the same order."""
    t = Tunables(rekey_after_time=6.0, reject_after_time=9.0, rekey_timeout=1.0, keepalive_timeout=2.0,
                 rekey_attempt_time=4.0, dead_retry_interval=3.0, handshake_jitter=0.2)
    keys = (crypto.x25519_private(), [crypto.x25519_private() for _ in range(12)])
    worlds = [World(CountingEngine, keys, seed, t), World(EveryPeerEngine, keys, seed, t),
              World(CountingEngine, keys, seed, t)]
    given = active = 0
    ev_rng = random.Random(seed)
    for step in range(400):
        dt = ev_rng.choice([0.05, 0.1, 0.1, 0.3, 1.0, 2.5])
        ev = ev_rng.random()
        who = ev_rng.randrange(12)
        pid = who + 1
        data_t = ev_rng.random()
        for k, w in enumerate(worlds):
            rng = random.Random(seed * 7919 + step)     # the same losses in both worlds
            w.clock.t += dt
            w.wall.t += dt
            now = w.clock.t
            if ev < 0.08:                                # a client opens to the hub
                w.client_do(who, w.clients[who].open(1), rng)
            elif ev < 0.12:
                w.hub_do(w.hub.open(pid, w.addrs[who]), rng)
            elif ev < 0.15:
                w.hub_do(w.hub.close(pid), rng)
            elif ev < 0.25:
                w.hub_do(w.hub.handshake_needed(pid), rng)
            elif ev < 0.30:
                p = w.hub.peers[pid]
                if p.sessions:
                    w.hub_do(w.hub.keypair_confirmed(pid, p.sessions[-1].local_index), rng)
            elif ev < 0.45 and w.hub.peers[pid].sessions:   # traffic on a session moves counters
                c = w.counters[pid]
                if data_t < 0.5:
                    c.last_data_tx = c.last_tx = now
                else:
                    c.last_data_rx = c.last_rx = now
            if k == 2:
                ids = w.hub.active_ids()
                changed = changed_counters(w, ids)
                given, active = given + len(changed), active + len(ids)
                w.hub_do(w.hub.tick(changed, changed_only=True), rng)
            else:
                w.hub_do(w.hub.tick(dict(w.counters)), rng)
            for i, c in enumerate(w.clients):
                w.client_do(i, c.tick({}), rng)
        assert worlds[0].log == worlds[1].log, "step %d" % step
        assert worlds[2].log == worlds[0].log, "step %d (changed counters only)" % step
    assert worlds[0].log, "the simulation did something"
    # the active set and the deadlines did leave peers out of the ticks
    assert worlds[0].hub.visits < 0.5 * 400 * 12
    # and the changed-only ticks were given far fewer counters than the active peers'
    assert given < 0.5 * active
    assert any(s[0] == "install" for s in worlds[0].log)


def test_peers_by_name_and_key_without_a_walk():
    import base64
    from phantom.node.config import Settings
    from phantom.node.daemon import Daemon
    from phantom.dataplane.types import Mode
    d = Daemon(Settings(mode=Mode.TEST), bytearray(crypto.x25519_private()))
    keys = [crypto.x25519_public(bytes(_key())) for _ in range(3)]
    p1 = d.engine.add_peer(keys[0], "alpha", [])
    p2 = d.engine.add_peer(keys[1], "beta", [])
    b64 = base64.b64encode(keys[2]).decode()
    p3 = d.engine.add_peer(keys[2], "gamma", [])
    assert d.peers.find("alpha") is p1
    assert d.peers.find(base64.b64encode(keys[1]).decode()) is p2
    assert d.peers.find(b64) is p3
    assert d.peers.find("nobody") is None and d.peers.find("") is None
    assert d.peers.free_name("alpha") == "alpha-2" and d.peers.free_name("delta") == "delta"
    # a later peer named like an earlier peer's key: the earlier one wins, as before
    p4 = d.engine.add_peer(crypto.x25519_public(bytes(_key())), b64, [])
    assert d.peers.find(b64) is p3
    d.engine.remove_peer(p3.id)
    assert d.peers.find(b64) is p4
    d.engine.remove_peer(p1.id)
    assert d.peers.find("alpha") is None and d.engine.peer_by_name("alpha") is None


def test_a_peer_changed_in_place_is_reindexed_and_woken():
    """A reload or `wg set` changes fields in place (Engine.update_peer,
    through the peer table): the renamed peer is found under its new name,
    and a keepalive given to a sleeping peer runs at the next tick."""
    clock = Clock()
    e = Engine(_key(), Tunables(), clock=clock, wall_clock=Clock(1.7e9))
    p = e.add_peer(crypto.x25519_public(bytes(_key())), "old", [], endpoint=("10.0.0.9", 9000))
    e.tick({})
    assert e.active_ids() == []
    e.update_peer(p.id, name="new", persistent_keepalive=5.0, wanted=True)
    assert e.peer_by_name("new") is p and e.peer_by_name("old") is None
    clock.t += 6
    out = e.tick({p.id: PeerCounters()})
    assert any(isinstance(a, A.SendDatagram) for a in out), "persistent keepalive starts a handshake"


def test_update_peer_checks_everything_before_it_changes_anything():
    """Engine.update_peer refuses a field it does not own, a preshared key for
    a Phantom peer (or not 32 bytes), suites for a WireGuard peer and an
    unknown peer, before any field changes; a WireGuard peer's new preshared
    key replaces (and wipes) the old one; its sessions stay."""
    e = Engine(_key(), Tunables(), clock=Clock(), wall_clock=Clock(1.7e9))
    ph = e.add_peer(crypto.x25519_public(bytes(_key())), "ph", [], endpoint=("10.0.0.9", 9000))
    wg = e.add_peer(crypto.x25519_public(bytes(_key())), "wg", [], protocol="wireguard",
                    preshared_key=b"\x01" * 32)
    with pytest.raises(TypeError, match="allowed_ips"):
        e.update_peer(ph.id, name="x", allowed_ips=[])          # routes: set_allowed_ips
    with pytest.raises(ValueError, match="only a WireGuard peer"):
        e.update_peer(ph.id, name="x", preshared_key=b"\x02" * 32)
    with pytest.raises(ValueError, match="32 bytes"):
        e.update_peer(wg.id, name="x", preshared_key=b"\x02" * 31)
    with pytest.raises(ValueError, match="only a Phantom peer"):
        e.update_peer(wg.id, name="x", suites=(1,))
    with pytest.raises(KeyError):
        e.update_peer(999, name="x")
    assert (ph.name, wg.name) == ("ph", "wg") and e.peer_by_name("x") is None, "nothing changed"
    old = wg.preshared_key
    e.update_peer(wg.id, preshared_key=b"\x02" * 32, endpoint=("10.0.0.10", 51820),
                  persistent_keepalive=25)
    assert bytes(old) == bytes(32), "the old key is wiped"
    assert bytes(wg.preshared_key) == b"\x02" * 32 and wg.endpoint == ("10.0.0.10", 51820)
    assert wg.persistent_keepalive == 25.0
    e.update_peer(wg.id, preshared_key=None)
    assert wg.preshared_key is None


def test_session_indexes_draw_the_csprng_a_chunk_at_a_time(monkeypatch):
    """An engine's handshake and session indexes (RandomIndexes, the
    default index source) come from crypto.random_bytes a 4 KiB chunk at a
    time -- one system call per 1,024 indexes, not one per index -- each
    byte used once, little-endian u32s as before; a forked child (another
    pid) draws afresh rather than repeat its parent's."""
    from phantom.control import engine as engine_mod
    draws = []
    real = crypto.random_bytes
    monkeypatch.setattr(engine_mod.crypto, "random_bytes", lambda n: draws.append(n) or real(n))
    monkeypatch.setattr(engine_mod.crypto, "random_u32", lambda: draws.append(4) or
                        int.from_bytes(real(4), "little"))
    hub = Engine(_key(), Tunables(), clock=Clock(), wall_clock=Clock(1.7e9))
    draws.clear()
    got = [hub._alloc_index("session", 1) for _ in range(2048)]
    assert len(set(got)) == 2048
    assert 1 <= len(draws) <= 3, "%d draws of randomness for 2,048 indexes" % len(draws)
    assert set(draws) == {engine_mod.RandomIndexes.CHUNK}
    src = engine_mod.RandomIndexes(draw=lambda n: bytes(range(256)) * (n // 256))
    assert [src() for _ in range(2)] == [0x03020100, 0x07060504]
    monkeypatch.setattr(engine_mod.os, "getpid", lambda: -1)   # as in a forked child
    assert src() == 0x03020100
