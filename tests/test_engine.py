"""Sans-IO tests of the control engine: handshakes and every timer rule,
with an injected clock and no sockets."""

from __future__ import annotations

import random

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.control.peer import InvalidTransition, Peer, PeerState
from phantom.dataplane.types import PeerCounters

ADDR_A = ("10.0.0.1", 9000)
ADDR_B = ("10.0.0.2", 9000)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def _key():
    return bytearray(crypto.x25519_private())


def make_pair(tunables=None, pk=0.0):
    t = tunables or Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    ka, kb = _key(), _key()
    a = Engine(ka, t, clock=clock, wall_clock=wall, rng=random.Random(1))
    b = Engine(kb, t, clock=clock, wall_clock=wall, rng=random.Random(2))
    pa = a.add_peer(b.public_key, "b", endpoint=ADDR_B, persistent_keepalive=pk)
    pb = b.add_peer(a.public_key, "a", endpoint=ADDR_A, persistent_keepalive=pk)
    return a, b, pa, pb, clock, wall


def sends(actions):
    return [x for x in actions if isinstance(x, A.SendDatagram)]


def of(actions, kind):
    return [x for x in actions if isinstance(x, kind)]


def handshake(a, b, pa, wall):
    """a opens to b; deliver every datagram; return (actions at a, actions at b)."""
    wall.advance(0.01)
    out_a = a.open(pa.id)
    (init,) = sends(out_a)
    out_b = b.handle_datagram(init.data, ADDR_A)
    (resp,) = sends(out_b)
    out_a2 = a.handle_datagram(resp.data, ADDR_B)
    return out_a + out_a2, out_b


def test_handshake_installs_matching_keys():
    a, b, pa, pb, clock, wall = make_pair()
    acts_a, acts_b = handshake(a, b, pa, wall)
    (ia,) = of(acts_a, A.InstallKeypair)
    (ib,) = of(acts_b, A.InstallKeypair)
    assert ia.confirmed and not ib.confirmed
    assert ia.keypair.send_key == ib.keypair.recv_key
    assert ia.keypair.recv_key == ib.keypair.send_key
    assert ia.keypair.remote_index == ib.keypair.local_index
    assert ib.keypair.remote_index == ia.keypair.local_index
    assert pa.state is PeerState.ESTABLISHED
    assert of(acts_a, A.SendKeepalive), "initiator confirms the session at once"
    assert b.keypair_confirmed(pb.id, ib.keypair.local_index)
    assert pb.state is PeerState.ESTABLISHED


def test_open_when_established_is_a_no_op():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    assert sends(a.open(pa.id)) == []


def test_unknown_key_gets_no_answer():
    a, b, pa, pb, clock, wall = make_pair()
    stranger = Engine(_key(), Tunables(), clock=clock, wall_clock=wall)
    p = stranger.add_peer(b.public_key, "b", endpoint=ADDR_B)
    (init,) = sends(stranger.open(p.id))
    assert b.handle_datagram(init.data, ("10.0.0.9", 9000)) == []
    assert b.drops["unknown_key"] == 1


def test_replayed_initiation_is_dropped():
    a, b, pa, pb, clock, wall = make_pair()
    (init,) = sends(a.open(pa.id))
    assert sends(b.handle_datagram(init.data, ADDR_A))
    assert b.handle_datagram(init.data, ADDR_A) == []
    assert b.drops["replayed_initiation"] == 1


@pytest.mark.parametrize("cut", [0, 1, 50, 140])
def test_garbage_is_counted_never_raises(cut):
    a, b, pa, pb, clock, wall = make_pair()
    (init,) = sends(a.open(pa.id))
    bad = bytearray(init.data)
    bad[cut] ^= 0xFF
    assert b.handle_datagram(bytes(bad), ADDR_A) == []
    assert b.handle_datagram(init.data[:cut], ADDR_A) == []
    assert sum(b.drops.values()) == 2


def test_retransmit_then_give_up():
    t = Tunables(handshake_jitter=0.0, rekey_timeout=5.0, open_attempts=3)
    a, b, pa, pb, clock, wall = make_pair(t)
    assert len(sends(a.open(pa.id))) == 1
    assert pa.state is PeerState.HANDSHAKING
    clock.advance(4.9)
    assert sends(a.tick({})) == []
    clock.advance(0.2)
    assert len(sends(a.tick({}))) == 1          # attempt 2
    clock.advance(5.1)
    assert len(sends(a.tick({}))) == 1          # attempt 3
    clock.advance(5.1)
    out = a.tick({})
    assert sends(out) == [] and pa.state is PeerState.DEAD
    assert of(out, A.StateChanged)[-1].new == "dead"
    assert pa.pending is None


def test_retries_use_fresh_ephemeral_keys():
    a, b, pa, pb, clock, wall = make_pair()
    (i1,) = sends(a.open(pa.id))
    clock.advance(6)
    (i2,) = sends(a.tick({}))
    assert i1.data[8:40] != i2.data[8:40]


def test_dead_peer_retried_and_recovers():
    t = Tunables(handshake_jitter=0.0, open_attempts=1, dead_retry_interval=30.0)
    a, b, pa, pb, clock, wall = make_pair(t)
    a.open(pa.id)
    clock.advance(5.1)
    a.tick({})
    assert pa.state is PeerState.DEAD
    clock.advance(29)
    assert sends(a.tick({})) == []
    clock.advance(1.1)
    (init,) = sends(a.tick({}))
    assert pa.state is PeerState.HANDSHAKING
    wall.advance(1)
    (resp,) = sends(b.handle_datagram(init.data, ADDR_A))
    a.handle_datagram(resp.data, ADDR_B)
    assert pa.state is PeerState.ESTABLISHED


def test_passive_keepalive():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    now = clock()
    c = PeerCounters(last_rx=now, last_data_rx=now, last_tx=now - 1)
    clock.advance(9.9)
    assert of(a.tick({pa.id: c}), A.SendKeepalive) == []
    clock.advance(0.2)
    assert of(a.tick({pa.id: c}), A.SendKeepalive)
    # not again right away
    assert of(a.tick({pa.id: c}), A.SendKeepalive) == []


def test_no_keepalive_when_we_sent_after_receiving():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    now = clock()
    c = PeerCounters(last_rx=now, last_data_rx=now, last_tx=now + 1)
    clock.advance(20)
    assert of(a.tick({pa.id: c}), A.SendKeepalive) == []


def test_persistent_keepalive():
    a, b, pa, pb, clock, wall = make_pair(pk=25)
    handshake(a, b, pa, wall)
    c = PeerCounters(last_tx=clock())
    clock.advance(24.9)
    assert of(a.tick({pa.id: c}), A.SendKeepalive) == []
    clock.advance(0.2)
    assert of(a.tick({pa.id: c}), A.SendKeepalive)


def test_dead_peer_detection_marks_stale_and_rehandshakes():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    t0 = clock()
    c = PeerCounters(last_rx=t0, last_tx=t0 + 1, last_data_tx=t0 + 1)
    clock.advance(1)
    assert a.tick({pa.id: c}) == []
    clock.advance(14.9)
    assert sends(a.tick({pa.id: c})) == []
    clock.advance(0.2)
    out = a.tick({pa.id: c})
    assert pa.state is PeerState.STALE
    assert len(sends(out)) == 1


def test_rekey_after_time_by_initiator_only_while_used():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    clock.advance(120.1)
    idle = PeerCounters(last_data_tx=clock() - 60, last_rx=clock() - 60)
    assert sends(a.tick({pa.id: idle})) == []
    busy = PeerCounters(last_data_tx=clock(), last_rx=clock())
    assert len(sends(a.tick({pa.id: busy}))) == 1


def test_sessions_expire_and_keys_are_retired():
    a, b, pa, pb, clock, wall = make_pair()
    acts, _ = handshake(a, b, pa, wall)
    (ia,) = of(acts, A.InstallKeypair)
    clock.advance(180.1)
    out = a.tick({})
    assert A.RetireKeypair(ia.keypair.local_index) in out
    assert pa.state is PeerState.IDLE


def test_simultaneous_open_converges_on_one_session():
    a, b, pa, pb, clock, wall = make_pair()
    (ia,) = sends(a.open(pa.id))
    wall.advance(0.001)
    (ib,) = sends(b.open(pb.id))
    ra = a.handle_datagram(ib.data, ADDR_B)
    rb = b.handle_datagram(ia.data, ADDR_A)
    # both answered; the one with the greater key abandoned its initiation
    big, small = (a, b) if a.public_key > b.public_key else (b, a)
    big_peer = pa if big is a else pb
    assert big_peer.pending is None
    resp_to_small = sends(rb if small is a else ra)[0]
    resp_to_big = sends(ra if small is a else rb)[0]
    out_small = small.handle_datagram(resp_to_small.data, ADDR_B if small is a else ADDR_A)
    assert of(out_small, A.InstallKeypair)
    # the big side ignores the answer to its abandoned initiation
    assert big.handle_datagram(resp_to_big.data, ADDR_A if big is b else ADDR_B) == []


def test_state_transitions_are_whitelisted():
    p = Peer(1, b"k" * 32, "x", [])
    with pytest.raises(InvalidTransition):
        p.set_state(PeerState.STALE)


def test_close_clears_keys_and_goes_idle():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    out = a.close(pa.id)
    assert A.ClearKeys(pa.id) in out and pa.state is PeerState.IDLE


def test_flood_gets_cookie_replies_and_mac2_passes():
    t = Tunables(handshake_jitter=0.0, under_load_initiations=3)
    a, b, pa, pb, clock, wall = make_pair(t)
    replies = []
    for i in range(6):
        wall.advance(0.001)
        pa.pending = None
        (init,) = sends(a._send_initiation(pa))
        replies.append(b.handle_datagram(init.data, ADDR_A))
    cookie = [sends(r) for r in replies if sends(r) and sends(r)[0].data[0] == 3]
    assert cookie, "under load b demands a cookie"
    assert b.drops["cookie_sent"] >= 1
    # a takes the cookie; its next initiation carries mac2 and is answered
    assert a.handle_datagram(cookie[-1][0].data, ADDR_B) == []
    wall.advance(0.001)
    pa.pending = None
    (init,) = sends(a._send_initiation(pa))
    (resp,) = sends(b.handle_datagram(init.data, ADDR_A))
    assert resp.data[0] == 2


def test_cookie_reply_brings_the_retry_forward():
    t = Tunables(handshake_jitter=0.0, under_load_initiations=0)
    a, b, pa, pb, clock, wall = make_pair(t)
    (init,) = sends(a.open(pa.id))
    (reply,) = sends(b.handle_datagram(init.data, ADDR_A))
    assert reply.data[0] == 3
    assert a.handle_datagram(reply.data, ADDR_B) == []
    clock.advance(0.11)
    (again,) = sends(a.tick({}))
    wall.advance(0.001)
    (resp,) = sends(b.handle_datagram(again.data, ADDR_A))
    assert resp.data[0] == 2, "the retry carries mac2 and is answered"


def test_responder_rekeys_before_reject_after_time():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)          # b is the responder of the current session
    limit = 180 - 10 - 5
    clock.advance(limit - 1)
    busy = PeerCounters(last_data_tx=clock(), last_rx=clock(), last_data_rx=clock())
    assert sends(b.tick({pb.id: busy})) == []
    clock.advance(1.1)
    busy = PeerCounters(last_data_tx=clock(), last_rx=clock(), last_data_rx=clock())
    assert len(sends(b.tick({pb.id: busy}))) == 1
