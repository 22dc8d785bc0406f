"""Sans-IO liveness rules of the control engine (issue #18, items 11-13),
with an injected clock: a peer whose traffic waits always has a next attempt
scheduled, and one key cannot make us hold more than three sessions."""

from __future__ import annotations

import random

from phantom import crypto
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.control.peer import PeerState
from phantom.dataplane.types import PeerCounters

ADDR_A = ("10.0.0.1", 9000)
ADDR_B = ("10.202.0.1", 9000)
TICK = 0.05


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def sends(actions):
    return [x for x in actions if isinstance(x, A.SendDatagram)]


def of(actions, kind):
    return [x for x in actions if isinstance(x, kind)]


def engines(t=None):
    t = t or Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    a = Engine(bytearray(crypto.x25519_private()), t, clock=clock, wall_clock=wall, rng=random.Random(1))
    b = Engine(bytearray(crypto.x25519_private()), t, clock=clock, wall_clock=wall, rng=random.Random(2))
    return a, b, clock, wall


def run(engine, clock, seconds, step=TICK, check=None):
    """Tick ``engine`` for ``seconds`` of its clock; returns every action."""
    out = []
    end = clock.t + seconds
    while clock.t < end:
        clock.advance(step)
        out += engine.tick({pid: PeerCounters() for pid in engine.active_ids()})
        if check is not None:
            check()
    return out


# ------------------------------------------------------------ item 13
def test_a_peer_listed_by_key_whose_traffic_came_before_its_endpoint_is_tried_again():
    """Traffic for a peer known by key only arrives before the directory
    answered: "no endpoint, cannot start a handshake".  The endpoint comes a
    moment later (the daemon sets it as the directory's record says): the
    next scheduled attempt initiates there, without new traffic (the data
    path asks for a handshake once per episode)."""
    a, b, clock, wall = engines()
    pb = a.add_peer(b.public_key, "b")
    b.add_peer(a.public_key, "a")
    assert sends(a.handshake_needed(pb.id)) == []
    assert pb.state is PeerState.HANDSHAKING
    clock.advance(0.3)
    pb.endpoint = ADDR_B                     # the directory's answer, as _peer_record sets it
    inits = sends(run(a, clock, 2 * a.t.rekey_timeout))
    assert inits and inits[0].addr == ADDR_B, "the waiting peer was tried again once it had an endpoint"
    # and the handshake completes from there
    (resp,) = sends(b.handle_datagram(inits[-1].data, ADDR_A))
    a.handle_datagram(resp.data, ADDR_B)
    assert pb.state is PeerState.ESTABLISHED and not pb.waiting


def test_an_endpoint_learnt_for_a_waiting_peer_starts_the_handshake_at_once():
    a, b, clock, wall = engines()
    pb = a.add_peer(b.public_key, "b")
    a.handshake_needed(pb.id)
    clock.advance(0.2)
    out = a.set_endpoint(pb.id, ADDR_B)
    assert of(out, A.SetEndpoint) == [A.SetEndpoint(pb.id, ADDR_B)]
    assert [s.addr for s in sends(out)] == [ADDR_B]
    # an idle peer that nothing waits for only moves
    pc = a.add_peer(crypto.x25519_public(crypto.x25519_private()), "c")
    assert sends(a.set_endpoint(pc.id, ("10.202.0.9", 9000))) == []


def test_waiting_traffic_always_has_a_next_attempt_scheduled():
    """The invariant, checked after every tick while the peer has no
    endpoint for a whole episode and beyond: while traffic waits and no
    session is up, Engine.next_attempt is set and in the future; when the
    episode gives up (the data path drops what it staged with the keys)
    nothing waits any more, and new traffic starts a new episode."""
    a, b, clock, wall = engines(Tunables(handshake_jitter=0.0, rekey_timeout=5.0, rekey_attempt_time=30.0))
    pb = a.add_peer(b.public_key, "b")
    a.handshake_needed(pb.id)
    seen = []

    def check():
        if pb.waiting and pb.state is not PeerState.ESTABLISHED:
            at = a.next_attempt(pb.id)
            assert at is not None and at > clock.t - TICK, "waiting with nothing scheduled"
            seen.append(at)

    out = run(a, clock, 29.0, check=check)
    assert len(set(seen)) >= 5, "an attempt every REKEY_TIMEOUT"
    assert of(out, A.ClearKeys) == [] and pb.state is PeerState.HANDSHAKING
    out = run(a, clock, 6.0, check=check)
    assert of(out, A.ClearKeys) == [A.ClearKeys(pb.id)] and pb.state is PeerState.DEAD
    assert not pb.waiting and a.next_attempt(pb.id) is None
    # new traffic (the data path asks again after the keys were cleared)
    a.handshake_needed(pb.id)
    assert pb.state is PeerState.HANDSHAKING and a.next_attempt(pb.id) is not None


def test_traffic_right_after_a_yielded_initiation_is_scheduled_not_forgotten():
    """Simultaneous open: we (the greater key) give up our initiation and
    answer the peer's; its confirmation is lost.  Traffic that comes right
    then is not forgotten: an attempt is scheduled, and made."""
    while True:
        a, b, clock, wall = engines()
        if a.public_key > b.public_key:
            break
    pb = a.add_peer(b.public_key, "b", endpoint=ADDR_B)
    pa = b.add_peer(a.public_key, "a", endpoint=ADDR_A)
    a.handshake_needed(pb.id)                    # our initiation goes out (and is lost)
    (theirs,) = sends(b.open(pa.id))
    assert sends(a.handle_datagram(theirs.data, ADDR_B))       # we yield and answer
    assert pb.pending is None
    clock.advance(1.0)
    assert sends(a.handshake_needed(pb.id)) == []              # the confirmation may still come
    at = a.next_attempt(pb.id)
    assert at is not None and at <= clock.t + a.t.rekey_timeout
    inits = sends(run(a, clock, a.t.rekey_timeout))
    assert [s.addr for s in inits] == [ADDR_B], "it never came: we initiate"


# ------------------------------------------------------------ item 11
def test_one_key_holds_at_most_three_sessions():
    """A peer initiating again and again (60 handshakes): we keep the data
    path's three sessions (WireGuard keeps three) and retire the rest, so
    our index table does not grow with it."""
    a, b, clock, wall = engines()
    pa = b.add_peer(a.public_key, "a")
    pb = a.add_peer(b.public_key, "b", endpoint=ADDR_B)
    retired = []
    first = None
    for i in range(60):
        wall.advance(0.02)
        clock.advance(0.02)
        (init,) = sends(a.rehandshake(pb.id, "flood"))
        out_b = b.handle_datagram(init.data, ADDR_A)
        retired += [r.local_index for r in of(out_b, A.RetireKeypair)]
        (inst,) = of(out_b, A.InstallKeypair)
        if i == 0:
            first = inst.keypair.local_index
            b.keypair_confirmed(pa.id, first)       # the first session carries traffic
        (resp,) = sends(out_b)
        a.handle_datagram(resp.data, ADDR_B)
        assert len(pa.sessions) <= 3 and len(pb.sessions) <= 3
    assert len(retired) >= 57
    kept = [s.local_index for s in pa.sessions]
    assert first in kept, "the confirmed session the peer uses is kept"
    assert inst.keypair.local_index in kept, "and the newest answer (it may confirm it next)"
    assert set(retired).isdisjoint(kept)
