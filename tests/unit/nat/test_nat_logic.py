"""Sans-IO NAT traversal: peer-control wire format, rendezvous server and
client rules, path selection.  Injected clocks, no sockets."""

from __future__ import annotations

import functools
import os

import pytest

from phantom import crypto, wire
from phantom.nat.paths import PathTable
from phantom.rendezvous import RendezvousClient, RendezvousServer, usable_endpoint
from tests.support.clock import Clock as _Clock

Clock = functools.partial(_Clock, 100.0)


def key(i):
    return bytes([i]) * 32


A, B, C, R = key(1), key(2), key(3), key(9)


# ------------------------------------------------------------------- wire
@pytest.mark.parametrize("msg", [
    wire.Register((("10.0.0.2", 9000), ("fd00::2", 9001)), (A, B)),
    wire.Register(),
    wire.WhereIs(B),
    wire.Endpoints(B, (("203.0.113.5", 40000),)),
    wire.Endpoints(B, ()),
    wire.Punch(A, (("198.51.100.1", 1), ("10.1.0.2", 9000)), 7),
    wire.Registered((("203.0.113.5", 40000),)),
])
def test_control_body_round_trip(msg):
    seq, back = wire.decode_control(wire.encode_control(77, msg))
    assert seq == 77 and back == msg


@pytest.mark.parametrize("body", [
    b"", b"\x00" * 8, wire.PEER_CONTROL_BODY_HEADER.pack(1, 99),
    wire.PEER_CONTROL_BODY_HEADER.pack(1, 2) + b"\x01" * 31,                  # short key
    wire.encode_control(1, wire.WhereIs(A)) + b"x",                           # trailing
    wire.encode_control(1, wire.Punch(A, (("10.0.0.1", 1),)))[:-1],           # truncated endpoint
    wire.PEER_CONTROL_BODY_HEADER.pack(1, 4) + A + bytes(4) + b"\x09",        # 9 endpoints
    wire.PEER_CONTROL_BODY_HEADER.pack(1, 4) + A + bytes(4) + b"\x01\x05" + bytes(6),  # family 5
    wire.PEER_CONTROL_BODY_HEADER.pack(1, 1) + b"\x00" + b"\x02\x00" + A,     # 2 keys announced, 1 given
])
def test_control_body_garbage_is_a_wire_error(body):
    with pytest.raises(wire.WireError):
        wire.decode_control(body)


def test_random_bodies_never_raise_anything_but_wire_error():
    for _ in range(3000):
        body = os.urandom(os.urandom(1)[0] % 80)
        try:
            wire.decode_control(body)
        except wire.WireError:
            pass


def test_peer_control_datagram_framing_and_nonce_domain():
    k = bytes(range(32))
    nonce = wire.control_nonce(os.urandom(23))
    assert nonce[-1] == 1 and nonce != wire.transport_nonce(5)
    box = crypto.secretbox_seal_nonce(k, nonce, wire.encode_control(3, wire.WhereIs(A)))
    dg = wire.pack_peer_control(1234, nonce, box)
    assert wire.message_type(dg) is wire.MessageType.PEER_CONTROL
    idx, n2, b2 = wire.unpack_peer_control(dg)
    assert (idx, n2) == (1234, nonce)
    assert wire.decode_control(crypto.secretbox_open_nonce(k, n2, b2)) == (3, wire.WhereIs(A))
    # a transport-domain nonce is refused before any crypto
    bad = dg[:wire.PEER_CONTROL_HEADER.size - 1] + b"\x00" + dg[wire.PEER_CONTROL_HEADER.size:]
    with pytest.raises(wire.WireError):
        wire.unpack_peer_control(bad)
    with pytest.raises(wire.WireError):
        wire.message_type(dg[:wire.PEER_CONTROL_MIN_SIZE - 1])
    with pytest.raises(crypto.CryptoError):
        crypto.secretbox_open_nonce(bytes(32), n2, b2)


def test_usable_endpoint():
    assert usable_endpoint(("10.0.0.1", 9000))
    for bad in [("0.0.0.0", 9), ("224.0.0.1", 9), ("255.255.255.255", 9), ("10.0.0.1", 0), ("::", 1),
                ("nonsense", 1), None]:
        assert not usable_endpoint(bad)


# -------------------------------------------------------------- rendezvous
def registered_server(clock, **kw):
    s = RendezvousServer(clock, **kw)
    s.handle(A, ("203.0.113.1", 40001), wire.Register((("10.1.0.2", 9000),), (B,)))
    s.handle(B, ("203.0.113.2", 40002), wire.Register((("10.2.0.2", 9000),), (A,)))
    return s


def test_register_answers_the_reflexive_endpoint():
    s = RendezvousServer(Clock())
    out = s.handle(A, ("203.0.113.1", 40001), wire.Register((("10.1.0.2", 9000),), (B,)))
    assert out == [(A, wire.Registered((("203.0.113.1", 40001),)))]
    reg = s.registration(A)
    assert reg.endpoints() == (("203.0.113.1", 40001), ("10.1.0.2", 9000))


def test_where_is_answers_and_punches_both_ways():
    s = registered_server(Clock())
    out = s.handle(A, ("203.0.113.1", 40001), wire.WhereIs(B))
    assert out == [(A, wire.Endpoints(B, (("203.0.113.2", 40002), ("10.2.0.2", 9000)))),
                   (B, wire.Punch(A, (("203.0.113.1", 40001), ("10.1.0.2", 9000))))]


def test_reflexive_endpoint_follows_the_latest_authenticated_source():
    s = registered_server(Clock())
    s.observe(B, ("203.0.113.2", 50000))          # B's NAT mapping changed
    out = s.handle(A, ("203.0.113.1", 40001), wire.WhereIs(B))
    assert out[0][1].endpoints[0] == ("203.0.113.2", 50000)


def test_never_reveals_a_peer_to_a_key_it_does_not_accept():
    clock = Clock()
    s = registered_server(clock)
    s.handle(C, ("203.0.113.3", 40003), wire.Register((), (A, B)))
    # C accepts B, but B does not accept C: C learns nothing and B gets no punch
    assert s.handle(C, ("203.0.113.3", 40003), wire.WhereIs(B)) == [(C, wire.Endpoints(B, ()))]
    # unknown key: the same answer (no oracle)
    assert s.handle(C, ("203.0.113.3", 40003), wire.WhereIs(key(42))) == [(C, wire.Endpoints(key(42), ()))]
    # asking for oneself: nothing
    assert s.handle(A, ("203.0.113.1", 40001), wire.WhereIs(A)) == [(A, wire.Endpoints(A, ()))]


def test_only_registered_peers_may_ask_and_lost_sessions_are_forgotten():
    s = registered_server(Clock())
    assert s.handle(C, ("203.0.113.3", 1), wire.WhereIs(A)) == []
    assert s.drops["not_registered"] == 1
    s.session_lost(B)
    assert s.handle(A, ("203.0.113.1", 40001), wire.WhereIs(B)) == [(A, wire.Endpoints(B, ()))]


def test_where_is_is_rate_limited_per_asking_key():
    clock = Clock()
    s = registered_server(clock, punch_rate=1.0, punch_burst=3)
    answered = [bool(s.handle(A, ("203.0.113.1", 40001), wire.WhereIs(B))) for _ in range(10)]
    assert answered == [True] * 3 + [False] * 7
    assert s.drops["rate_limited"] == 7
    # B is not affected by A's flood
    assert s.handle(B, ("203.0.113.2", 40002), wire.WhereIs(A))
    clock.t += 1.0
    assert s.handle(A, ("203.0.113.1", 40001), wire.WhereIs(B))


def test_server_drops_answers_sent_to_it():
    s = registered_server(Clock())
    assert s.handle(A, ("203.0.113.1", 40001), wire.Punch(B, (("1.2.3.4", 5),))) == []
    assert s.handle(A, ("203.0.113.1", 40001), wire.Endpoints(B, ())) == []
    assert s.drops["unexpected_kind"] == 2


def test_client_registration_and_schedule():
    clock = Clock()
    c = RendezvousClient(clock, servers={R}, peers={A, B, R}, local_endpoints=(("10.1.0.2", 9000),),
                         register_interval=10)
    reg = c.registration()
    assert reg.accepts == (A, B) and reg.endpoints == (("10.1.0.2", 9000),)
    assert c.due_registrations([R]) == [R]
    assert c.due_registrations([R]) == []
    clock.t += 10
    assert c.due_registrations([R]) == [R]
    c.session_lost(R)
    assert c.due_registrations([R]) == [R]


def test_client_trusts_only_its_rendezvous_and_its_peers():
    clock = Clock()
    c = RendezvousClient(clock, servers={R}, peers={A, R})
    assert c.handle(C, wire.Punch(A, (("1.2.3.4", 5),))) is None
    assert c.drops["not_a_rendezvous"] == 1
    assert c.handle(R, wire.Punch(C, (("1.2.3.4", 5),))) is None      # C is not our peer
    assert c.drops["hint_for_unknown_key"] == 1
    assert c.handle(R, wire.Endpoints(A, (("1.2.3.4", 5),))) is None  # never asked
    assert c.drops["unsolicited_answer"] == 1
    got = c.handle(R, wire.Punch(A, (("1.2.3.4", 5), ("0.0.0.0", 9))))
    assert got.kind == "punch" and got.endpoints == (("1.2.3.4", 5),)
    assert c.drops["unusable_endpoint"] == 1
    assert c.may_ask(R, A)
    assert not c.may_ask(R, A)
    assert c.handle(R, wire.Endpoints(A, (("1.2.3.4", 5),))).kind == "answer"
    clock.t += 1
    assert c.may_ask(R, A)


def test_client_learns_its_reflexive_endpoint():
    c = RendezvousClient(Clock(), servers={R}, peers={A, R})
    c.handle(R, wire.Registered((("203.0.113.1", 40001),)))
    assert c.reflexive[R] == ("203.0.113.1", 40001)


# ------------------------------------------------------------------- paths
def test_candidates_order_ttl_and_bound():
    clock = Clock()
    t = PathTable(clock, candidate_ttl=10, max_candidates=3)
    t.add_candidates(1, [("192.0.2.1", 9000)], "config")
    assert t.add_candidates(1, [("203.0.113.2", 1), ("10.2.0.2", 9000)], "rendezvous") == \
        [("203.0.113.2", 1), ("10.2.0.2", 9000)]
    assert set(t.targets(1)) == {("192.0.2.1", 9000), ("203.0.113.2", 1), ("10.2.0.2", 9000)}
    t.add_candidates(1, [("203.0.113.9", 2)], "punch")
    assert len(t.targets(1)) == 3 and ("192.0.2.1", 9000) in t.targets(1)   # config is kept
    clock.t += 11
    assert t.targets(1) == [("192.0.2.1", 9000)]


def test_path_changes_and_relay_timing():
    clock = Clock()
    t = PathTable(clock, relay_after=3, probe_interval=5)
    t.punch_started(1)
    clock.t += 2
    assert not t.wants_relay(1)
    clock.t += 1
    assert t.wants_relay(1)
    ch = t.relayed(1, "rv", "no direct path within 3s")
    assert (ch.old, ch.new) == ("none", "relayed via rv")
    assert t.wants_direct_probe(1) and not t.wants_direct_probe(1)
    clock.t += 5
    assert t.wants_direct_probe(1)
    ch = t.direct(1, ("203.0.113.2", 1), "handshake answered from 203.0.113.2:1")
    assert ch.new == "direct 203.0.113.2:1" and ch.old == "relayed via rv"
    assert t.direct(1, ("203.0.113.2", 1), "again") is None
    assert not t.wants_relay(1)
    t.add_candidates(1, [("10.0.0.1", 5), ("203.0.113.2", 1)], "punch")
    assert t.targets(1)[0] == ("203.0.113.2", 1)     # the endpoint in use first
    assert t.describe(1)["path"] == "direct"
    assert t.down(1, "session expired").new == "none"


def test_client_notices_a_silent_rendezvous():
    clock = Clock()
    c = RendezvousClient(clock, servers={R}, peers={A, R})
    assert c.due_registrations([R]) == [R]
    c.handle(R, wire.Registered((("203.0.113.1", 1),)))
    clock.t += 2
    assert c.unanswered(2.0) == []
    clock.t += 5
    assert c.due_registrations([R]) == [R]        # re-registration, then silence
    clock.t += 1
    assert c.unanswered(2.0) == []
    clock.t += 1
    assert c.unanswered(2.0) == [R]


# ----------------------------------------------- issue #18: reflection bounds
def test_a_registration_carries_few_endpoints_and_ends_when_not_renewed():
    clock = Clock()
    s = RendezvousServer(clock, registration_ttl=20)
    victims = tuple(("192.0.2.66", 5000 + i) for i in range(7))
    s.handle(A, ("198.51.100.1", 4000), wire.Register((("10.1.0.2", 9000),) + victims, (B,)))
    s.handle(B, ("198.51.100.2", 4000), wire.Register((), (A,)))
    assert len(s.registration(A).local) == 4 and s.drops["too_many_endpoints"] == 4
    (_, answer), _ = s.handle(B, ("198.51.100.2", 4000), wire.WhereIs(A))
    assert len(answer.endpoints) == 5        # the reflexive one and four local ones
    # A does not renew; B does
    clock.t += 15
    s.handle(B, ("198.51.100.2", 4000), wire.Register((), (A,)))
    clock.t += 6
    (_, answer), = s.handle(B, ("198.51.100.2", 4000), wire.WhereIs(A))
    assert answer.endpoints == (), "an expired registration is not served"
    assert s.expire() == [A] and s.registration(A) is None and s.registration(B) is not None
    # nor may a peer whose registration expired ask
    s.handle(A, ("198.51.100.1", 4000), wire.WhereIs(B))
    assert s.drops["not_registered"] == 1


def test_client_takes_few_endpoints_from_a_hint():
    c = RendezvousClient(Clock(), servers={R}, peers={A, B, R})
    eps = tuple(("192.0.2.66", 5000 + i) for i in range(8))
    got = c.handle(R, wire.Punch(A, eps))
    assert len(got.endpoints) == 5 and c.drops["too_many_endpoints"] == 3


def test_learnt_endpoints_get_bounded_tries_with_backoff():
    clock = Clock()
    t = PathTable(clock, probe_tries=4, probe_backoff=5, probe_memory=600, max_probed=3)
    ep, other = ("192.0.2.66", 5000), ("10.1.0.2", 9000)
    sent = []
    for _ in range(400):                  # every 0.5 s for 200 s, as often as anyone asks
        sent += t.gate(1, [ep])
        clock.t += 0.5
    assert len(sent) == 4, "four tries, then nothing"
    assert t.tries(1, ep) == 4
    # the times: 0, 5, 15, 35 s (backoff doubles)
    clock.t = 100.0
    t2 = PathTable(clock, probe_tries=4, probe_backoff=5)
    times = []
    for _ in range(200):
        if t2.gate(1, [ep]):
            times.append(clock.t - 100.0)
        clock.t += 0.5
    assert times == [0.0, 5.0, 15.0, 35.0]
    # an endpoint the peer answered from is its own: counted no more
    t2.verified(1, ep)
    assert t2.gate(1, [ep]) == [ep]
    # at most max_probed endpoints per peer are counted; more are refused
    t3 = PathTable(clock, max_probed=3)
    eps = [("192.0.2.66", 6000 + i) for i in range(5)]
    assert t3.gate(1, eps) == eps[:3] and t3.refused["candidate_over_budget"] == 2
    assert t3.gate(2, [other]) == [other]           # per peer
    # forgotten probe_memory after the last try
    t4 = PathTable(clock, probe_tries=1, probe_memory=600)
    assert t4.gate(1, [ep]) == [ep] and t4.gate(1, [ep]) == []
    clock.t += 601
    assert t4.gate(1, [ep]) == [ep]


def test_the_documented_reflection_bound():
    """tests/e2e/nat/test_attacks_nat.py and docs/nat.md state 4 local endpoints x 4 tries."""
    from phantom.rendezvous import MAX_LOCAL_ENDPOINTS
    assert MAX_LOCAL_ENDPOINTS * PathTable(Clock()).probe_tries == 16
