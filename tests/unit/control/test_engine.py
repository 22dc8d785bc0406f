"""Sans-IO tests of the control engine: handshakes and every timer rule,
with an injected clock and no sockets."""

from __future__ import annotations

import random

import pytest

from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.control.peer import InvalidTransition, Peer, PeerState
from phantom.dataplane.types import PeerCounters
from tests.support.clock import Clock
from tests.support.engines import handshake, of, sends
from tests.support.engines import private_key as _key

ADDR_A = ("10.0.0.1", 9000)
ADDR_B = ("10.0.0.2", 9000)


def make_pair(tunables=None, pk=0.0):
    t = tunables or Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    ka, kb = _key(), _key()
    a = Engine(ka, t, clock=clock, wall_clock=wall, rng=random.Random(1))
    b = Engine(kb, t, clock=clock, wall_clock=wall, rng=random.Random(2))
    pa = a.add_peer(b.public_key, "b", endpoint=ADDR_B, persistent_keepalive=pk)
    pb = b.add_peer(a.public_key, "a", endpoint=ADDR_A, persistent_keepalive=pk)
    return a, b, pa, pb, clock, wall


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


# ---- issue #10 item 4: keys before sends; no peer left handshaking with nothing pending

def _assert_keys_first(actions):
    """Every InstallKeypair precedes every send (the invariant in actions.py)."""
    assert A.keys_before_sends(actions), [type(x).__name__ for x in actions]
    kinds = [type(x) for x in actions]
    if A.InstallKeypair in kinds:
        first_install = kinds.index(A.InstallKeypair)
        assert all(k not in (A.SendDatagram, A.SendKeepalive) for k in kinds[:first_install])


def test_responder_installs_keys_before_its_response_leaves():
    a, b, pa, pb, clock, wall = make_pair()
    acts_a, acts_b = handshake(a, b, pa, wall)
    kinds = [type(x) for x in acts_b]
    assert kinds.index(A.InstallKeypair) < kinds.index(A.SendDatagram), kinds
    _assert_keys_first(acts_b)


def test_initiator_installs_keys_before_its_confirming_keepalive():
    a, b, pa, pb, clock, wall = make_pair()
    wall.advance(0.01)
    (init,) = sends(a.open(pa.id))
    (resp,) = sends(b.handle_datagram(init.data, ADDR_A))
    out = a.handle_datagram(resp.data, ADDR_B)
    kinds = [type(x) for x in out]
    assert kinds.index(A.InstallKeypair) < kinds.index(A.SendKeepalive), kinds
    _assert_keys_first(out)


def test_rekey_and_simultaneous_open_keep_the_order():
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    b.keypair_confirmed(pb.id, pb.sessions[-1].local_index)
    # rekey: a new handshake while established (the "next" slot at b, "previous" at a)
    clock.advance(120.1)
    busy = PeerCounters(last_data_tx=clock(), last_rx=clock(), last_data_rx=clock())
    (init,) = sends(a.tick({pa.id: busy}))
    wall.advance(0.01)
    out_b = b.handle_datagram(init.data, ADDR_A)
    _assert_keys_first(out_b)
    assert of(out_b, A.InstallKeypair)[0].confirmed is False
    out_a = a.handle_datagram(sends(out_b)[0].data, ADDR_B)
    _assert_keys_first(out_a)
    # simultaneous open after a close
    a.close(pa.id)
    b.close(pb.id)
    wall.advance(0.01)
    (ia,) = sends(a.open(pa.id))
    wall.advance(0.01)
    (ib,) = sends(b.open(pb.id))
    for out in (a.handle_datagram(ib.data, ADDR_B), b.handle_datagram(ia.data, ADDR_A)):
        _assert_keys_first(out)


def test_keys_before_sends_helpers():
    kp = object()
    install = A.InstallKeypair(kp, False)
    send = A.SendDatagram(b"x", ADDR_A)
    ep = A.SetEndpoint(1, ADDR_A)
    assert A.keys_before_sends([ep, install, send, A.SendKeepalive(1)])
    assert not A.keys_before_sends([ep, send, install])
    assert A.installs_first([ep, send, install]) == [ep, install, send]
    assert A.installs_first([send]) == [send]


def _simultaneous_open_losing_the_confirmation(tunables=None):
    """Both open at once; the smaller key's confirming keepalive never
    reaches the greater key (the race of issue #10, or a lost packet)."""
    a, b, pa, pb, clock, wall = make_pair(tunables)
    wall.advance(0.01)
    (ia,) = sends(a.open(pa.id))
    wall.advance(0.01)
    (ib,) = sends(b.open(pb.id))
    ra = a.handle_datagram(ib.data, ADDR_B)
    rb = b.handle_datagram(ia.data, ADDR_A)
    big, small = (a, b) if a.public_key > b.public_key else (b, a)
    big_peer, small_peer = (pa, pb) if big is a else (pb, pa)
    big_addr, small_addr = (ADDR_A, ADDR_B) if big is a else (ADDR_B, ADDR_A)
    resp_to_small = sends(rb if small is a else ra)[0]
    resp_to_big = sends(ra if small is a else rb)[0]
    out = small.handle_datagram(resp_to_small.data, big_addr)
    assert of(out, A.SendKeepalive) and small_peer.state is PeerState.ESTABLISHED
    # ... the keepalive is lost; the answer to the abandoned initiation is dropped
    assert big.handle_datagram(resp_to_big.data, small_addr) == []
    assert big_peer.state is PeerState.HANDSHAKING and big_peer.pending is None
    return big, small, big_peer, small_peer, big_addr, small_addr, clock, wall


def test_unanswered_confirmation_makes_the_yielding_side_initiate():
    t = Tunables(handshake_jitter=0.2, rekey_timeout=5.0)
    big, small, big_peer, small_peer, big_addr, small_addr, clock, wall = \
        _simultaneous_open_losing_the_confirmation(t)
    clock.advance(4.9)
    assert sends(big.tick({})) == [], "not before REKEY_TIMEOUT"
    clock.advance(0.35)                  # past REKEY_TIMEOUT + the largest jitter
    (init,) = sends(big.tick({}))
    assert big_peer.pending is not None and big_peer.state is PeerState.HANDSHAKING
    assert sends(big.tick({})) == [], "once"
    wall.advance(0.01)
    out = small.handle_datagram(init.data, big_addr)
    (resp,) = sends(out)
    _assert_keys_first(out)
    out = big.handle_datagram(resp.data, small_addr)
    assert of(out, A.SendKeepalive)
    assert big_peer.state is PeerState.ESTABLISHED and small_peer.state is PeerState.ESTABLISHED


def test_confirmed_answer_needs_no_initiation():
    big, small, big_peer, small_peer, big_addr, small_addr, clock, wall = \
        _simultaneous_open_losing_the_confirmation()
    big.keypair_confirmed(big_peer.id, big_peer.sessions[-1].local_index)   # data arrived after all
    assert big_peer.state is PeerState.ESTABLISHED and big_peer.sessions[-1].confirmed
    clock.advance(6)
    assert sends(big.tick({})) == []


def test_a_mere_responder_never_initiates_on_its_own():
    a, b, pa, pb, clock, wall = make_pair()
    wall.advance(0.01)
    (init,) = sends(a.open(pa.id))
    b.handle_datagram(init.data, ADDR_A)      # b answers; a never confirms
    assert pb.state is PeerState.IDLE
    clock.advance(10)
    assert sends(b.tick({})) == []


def test_open_failed_keeps_a_live_session_and_forgets_the_handshake():
    big, small, big_peer, small_peer, big_addr, small_addr, clock, wall = \
        _simultaneous_open_losing_the_confirmation()
    # the small side uses the session; the big one gives up on its open
    (sess,) = big_peer.sessions
    out = big.open_failed(big_peer.id)
    assert of(out, A.ClearKeys) == [], "the peer still uses these keys"
    assert big_peer.sessions == [sess] and big._indexes.get(sess.local_index) == ("session", big_peer.id)
    assert big_peer.pending is None and big_peer.state is PeerState.DEAD and not big_peer.wanted
    clock.advance(60)
    assert sends(big.tick({})) == [], "not wanted: no retries"
    # the peer's data still confirms it
    big.keypair_confirmed(big_peer.id, sess.local_index)
    assert big_peer.state is PeerState.ESTABLISHED


def test_open_failed_without_a_session_resets_and_frees_the_index():
    t = Tunables(handshake_jitter=0.0, open_attempts=2)
    a, b, pa, pb, clock, wall = make_pair(t)
    a.open(pa.id)
    assert a._indexes
    out = a.open_failed(pa.id)
    assert A.ClearKeys(pa.id) in out and pa.state is PeerState.IDLE
    assert a._indexes == {} and pa.pending is None
    assert a.open_failed(12345) == []          # gone already: nothing to do
    assert a.remove_peer(pa.id) and a._indexes == {} and a.peers == {}


def test_daemon_carries_out_installs_before_sends():
    """The node's executor enforces the invariant even for a list that breaks it."""
    from phantom.node.executor import Executor

    class DP:
        def __init__(self):
            self.calls = []

        def send_control(self, data, addr):
            self.calls.append("send")

        def install_keypair(self, kp, confirmed):
            self.calls.append("install")

        def send_keepalive(self, peer_id):
            self.calls.append("keepalive")

        def set_endpoint(self, peer_id, addr):
            self.calls.append("endpoint")

    d = Executor(None, 1.0, on_failure=print)
    d.attach(DP())
    d.do([A.SetEndpoint(1, ADDR_A), A.SendDatagram(b"r", ADDR_A), A.InstallKeypair(None, False),
          A.SendKeepalive(1)])
    assert d.dp.calls == ["endpoint", "install", "send", "keepalive"]


def test_a_completed_handshake_counts_as_hearing_from_the_peer():
    """Data sent before the latest handshake is not "unanswered": once the
    stale peer's new handshake completes, it is not marked stale again (and
    re-handshaken) on the next tick.  It flapped once per tick before."""
    a, b, pa, pb, clock, wall = make_pair()
    handshake(a, b, pa, wall)
    t0 = clock()
    c = PeerCounters(last_rx=t0, last_tx=t0 + 1, last_data_tx=t0 + 1)
    clock.advance(16.1)
    out = a.tick({pa.id: c})
    assert pa.state is PeerState.STALE
    (init,) = sends(out)
    wall.advance(0.01)
    (resp,) = sends(b.handle_datagram(init.data, ADDR_A))
    a.handle_datagram(resp.data, ADDR_B)
    assert pa.state is PeerState.ESTABLISHED
    for _ in range(20):                  # the counters have not moved: no new data, no rx
        clock.advance(0.1)
        assert sends(a.tick({pa.id: c})) == [], "no new handshake for data sent before the last one"
    assert pa.state is PeerState.ESTABLISHED
    # data sent after the new handshake and unanswered does make it stale again, in time
    c = PeerCounters(last_rx=t0, last_tx=clock() + 0.5, last_data_tx=clock() + 0.5)
    clock.advance(1)
    assert sends(a.tick({pa.id: c})) == []
    clock.advance(15.1)
    a.tick({pa.id: c})
    assert pa.state is PeerState.STALE
