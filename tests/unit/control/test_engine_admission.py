"""Sans-IO tests of admission in the handshake (issue 20): a member's
initiation carries its membership (``engine.membership``); a responder with
``admit_unknown`` admits an unknown key from it in the same call (no dropped
first initiation) or answers with an authenticated, rate-limited refusal;
the refused initiator gets :class:`actions.HandshakeRefused` and holds back
(no retry storm).  A node without ``admit_unknown`` behaves as before.

The admission function here is a small real one (the engine's contract):
it admits keys whose attachment is the certificate a dict holds for them,
through ``add_peer``, and refuses anything else with a sentence.
"""

from __future__ import annotations

import random

import pytest

from phantom import wire
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.admission import REFUSAL_BURST, REFUSAL_HOLD
from phantom.control.engine import Engine
from phantom.control.peer import PeerState
from tests.support.clock import Clock
from tests.support.engines import of, sends
from tests.support.engines import private_key as _key

ADDR_A = ("10.0.0.1", 9000)
ADDR_B = ("10.0.0.2", 9000)


class Admission:
    """admit_unknown for the tests: ``certs`` key -> the certificate it must
    attach; ``removed``: keys refused as removed."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.certs: dict = {}
        self.removed: set = set()
        self.calls: list = []

    def __call__(self, key: bytes, attachment: bytes, addr: tuple):
        self.calls.append((key, attachment, addr))
        if key in self.removed:
            return "removed by the network"
        if self.certs.get(key) != attachment:
            return "not a member of corp"
        self.engine.add_peer(key, "m%d" % len(self.calls), endpoint=None, dynamic=True, exclusive=True)
        return None


def make(member_cert=b"cert-of-a", admit=True, suites=None, tunables=None):
    """a (a member, membership set) with peer b; b with ``tunables``."""
    t = tunables or Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    a = Engine(_key(), Tunables(handshake_jitter=0.0), clock=clock, wall_clock=wall, rng=random.Random(1),
               suites=suites)
    b = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(2))
    a.membership = member_cert
    pa = a.add_peer(b.public_key, "b", endpoint=ADDR_B)
    adm = None
    if admit:
        adm = Admission(b)
        b.admit_unknown = adm
    return a, b, pa, adm, clock, wall


def deliver(src, dst, actions, addr):
    """Hand every datagram in ``actions`` to ``dst``; their answers."""
    out = []
    for s in sends(actions):
        out += dst.handle_datagram(s.data, addr)
    return out


def test_first_initiation_from_a_member_is_answered_at_once():
    a, b, pa, adm, clock, wall = make()
    adm.certs[a.public_key] = b"cert-of-a"
    (init,) = sends(a.open(pa.id))
    assert len(init.data) == 166 + 2 + len(b"cert-of-a")
    out_b = b.handle_datagram(init.data, ADDR_A)
    assert adm.calls == [(a.public_key, b"cert-of-a", ADDR_A)]
    pb = b.peer_by_key(a.public_key)
    assert pb is not None and pb.endpoint == ADDR_A
    (resp,) = sends(out_b)
    assert len(resp.data) == wire.RESPONSE_CHOICE_SIZE
    assert of(out_b, A.InstallKeypair) and b.drops["unknown_key"] == 0
    out_a = a.handle_datagram(resp.data, ADDR_B)
    assert of(out_a, A.InstallKeypair) and pa.state is PeerState.ESTABLISHED
    # later initiations from the admitted key do not ask again
    clock.advance(200)
    wall.advance(200)
    (init2,) = sends(a.rehandshake(pa.id, "test"))
    assert sends(b.handle_datagram(init2.data, ADDR_A)) and len(adm.calls) == 1


@pytest.mark.parametrize("removed, reason", [(True, wire.Refusal.REMOVED),
                                             (False, wire.Refusal.NOT_MEMBER)])
def test_refusal_both_ways(removed, reason, caplog):
    a, b, pa, adm, clock, wall = make()
    if removed:
        adm.removed.add(a.public_key)
    (init,) = sends(a.open(pa.id))
    with caplog.at_level("WARNING", logger="phantom.control"):
        out_b = b.handle_datagram(init.data, ADDR_A)
    (refusal,) = sends(out_b)
    assert out_b == [refusal] and len(refusal.data) == 109 < len(init.data)
    assert b.peer_by_key(a.public_key) is None and not b.peers
    assert b.drops["refused"] == 1 and b.refusals[reason.name.lower()] == 1
    assert any("refused the handshake" in r.getMessage() for r in caplog.records)
    out_a = a.handle_datagram(refusal.data, ADDR_B)
    (act,) = of(out_a, A.HandshakeRefused)
    assert (act.peer_id, act.reason) == (pa.id, reason) and act.sentence == reason.sentence
    assert not of(out_a, A.InstallKeypair) and not sends(out_a)
    assert of(out_a, A.ClearKeys)           # what waited for keys goes with them
    assert pa.state is PeerState.DEAD and pa.pending is None and pa.refused == reason
    assert a.drops["refused_us"] == 1 and a.drops["bad_handshake"] == 0


def test_a_refused_initiator_does_not_retry_in_a_storm():
    """Wanted (opened) and with traffic waiting every second for ten minutes:
    the refused initiator tries again only when its hold ends, the hold
    doubling (10 s, 20 s, 40 s, ...), not every REKEY_TIMEOUT."""
    a, b, pa, adm, clock, wall = make()
    adm.removed.add(a.public_key)
    sent = []
    out = a.open(pa.id)
    for _ in range(600):
        sent += sends(out)
        answers = deliver(a, b, out, ADDR_A)
        out = []
        for s in sends(answers):
            out += a.handle_datagram(s.data, ADDR_B)
        clock.advance(1.0)
        wall.advance(1.0)
        out += a.handshake_needed(pa.id)
        out += a.tick({})
    # at 0, then each hold later: 10, 30, 70, 150, 310 s (and 300 s apart from
    # there): 6 in ten minutes, where a peer that is not refused but gets no
    # answer would have sent one every REKEY_TIMEOUT or dead retry
    assert REFUSAL_HOLD == 10.0 and len(sent) <= 7, len(sent)
    assert pa.refusals == len(sent)
    assert b.drops["refused"] + b.drops["refusal_rate_limited"] == len(sent)


def test_an_explicit_open_tries_at_once_and_a_new_membership_lifts_the_hold():
    a, b, pa, adm, clock, wall = make()
    (init,) = sends(a.open(pa.id))
    a.handle_datagram(sends(b.handle_datagram(init.data, ADDR_A))[0].data, ADDR_B)
    assert pa.state is PeerState.DEAD
    clock.advance(1)
    assert sends(a.handshake_needed(pa.id)) == [] and sends(a.tick({})) == []
    assert len(sends(a.open(pa.id))) == 1                  # the user asked: now
    a.open_failed(pa.id)
    clock.advance(6)
    assert sends(a.handshake_needed(pa.id)) == [] and sends(a.tick({})) == []
    adm.certs[a.public_key] = b"renewed"
    a.membership = b"renewed"                              # renewed: try again now
    (init,) = sends(a.tick({}))
    (resp,) = sends(b.handle_datagram(init.data, ADDR_A))
    a.handle_datagram(resp.data, ADDR_B)
    assert pa.state is PeerState.ESTABLISHED and pa.refusals == 0


def test_refusals_are_rate_limited_per_source_and_per_key():
    a, b, pa, adm, clock, wall = make()
    for i in range(10):
        wall.advance(0.01)
        (init,) = sends(a.rehandshake(pa.id, "flood") or a.open(pa.id))
        a.open_failed(pa.id)
        b.handle_datagram(init.data, ADDR_A)
    assert b.drops["refused"] == REFUSAL_BURST
    assert b.drops["refusal_rate_limited"] == 10 - REFUSAL_BURST
    # the same key from other addresses: still limited (per key)
    for i in range(5):
        wall.advance(0.01)
        (init,) = sends(a.open(pa.id))
        a.open_failed(pa.id)
        b.handle_datagram(init.data, ("10.0.1.%d" % i, 9000))
    assert b.drops["refused"] == REFUSAL_BURST
    # other keys from the flooding address: limited per source
    for i in range(3):
        c = Engine(_key(), Tunables(), clock=clock, wall_clock=wall)
        c.membership = b"x"
        pc = c.add_peer(b.public_key, "b", endpoint=ADDR_B)
        (init,) = sends(c.open(pc.id))
        assert sends(b.handle_datagram(init.data, ADDR_A)) == []
    clock.advance(10)
    wall.advance(10)
    (init,) = sends(a.open(pa.id))
    assert len(sends(b.handle_datagram(init.data, ADDR_A))) == 1   # refilled


def test_a_plain_node_drops_attached_initiations_from_unknown_keys_silently():
    a, b, pa, adm, clock, wall = make(admit=False)
    (init,) = sends(a.open(pa.id))
    assert b.handle_datagram(init.data, ADDR_A) == []
    assert b.drops["unknown_key"] == 1 and b.drops["refused"] == 0


def test_a_responder_without_admission_answers_a_known_member_normally():
    """The attachment is ignored by a responder that knows the key (with or
    without admit_unknown): the handshake is the usual one."""
    for admit in (False, True):
        a, b, pa, adm, clock, wall = make(admit=admit)
        b.add_peer(a.public_key, "a", endpoint=ADDR_A)
        (init,) = sends(a.open(pa.id))
        (resp,) = sends(b.handle_datagram(init.data, ADDR_A))
        a.handle_datagram(resp.data, ADDR_B)
        assert pa.state is PeerState.ESTABLISHED
        assert adm is None or adm.calls == []


def test_a_v1_initiation_to_an_admitting_responder_is_dropped_as_before():
    a, b, pa, adm, clock, wall = make(member_cert=None)
    (init,) = sends(a.open(pa.id))
    assert len(init.data) in (164, 166)
    assert b.handle_datagram(init.data, ADDR_A) == []
    assert adm.calls == [] and b.drops["unknown_key"] == 1 and b.drops["refused"] == 0


def test_without_membership_the_initiation_is_byte_for_byte_the_old_form():
    for suites, size in (((wire.Suite.SECRETBOX,), 164), (None, None)):
        a, b, pa, adm, clock, wall = make(member_cert=None, suites=suites)
        (init,) = sends(a.open(pa.id))
        assert len(init.data) == (size or (166 if len(a.suites) > 1 else 164))


def test_a_secretbox_only_member_offers_secretbox_with_its_attachment():
    a, b, pa, adm, clock, wall = make(suites=(wire.Suite.SECRETBOX,))
    adm.certs[a.public_key] = b"cert-of-a"
    (init,) = sends(a.open(pa.id))
    assert len(init.data) == 168 + len(b"cert-of-a")
    (resp,) = sends(b.handle_datagram(init.data, ADDR_A))
    out = a.handle_datagram(resp.data, ADDR_B)
    (inst,) = of(out, A.InstallKeypair)
    assert pa.state is PeerState.ESTABLISHED and inst.keypair.cipher == 0


def test_a_broken_admission_is_a_counted_drop():
    a, b, pa, adm, clock, wall = make()

    def broken(key, attachment, addr):
        raise ValueError("certificate JSON: unexpected end")
    b.admit_unknown = broken
    (init,) = sends(a.open(pa.id))
    assert b.handle_datagram(init.data, ADDR_A) == []
    assert b.drops["admit_failed"] == 1


def test_an_admission_that_adds_no_peer_is_a_refusal():
    a, b, pa, adm, clock, wall = make()
    b.admit_unknown = lambda key, attachment, addr: None
    (init,) = sends(a.open(pa.id))
    (refusal,) = sends(b.handle_datagram(init.data, ADDR_A))
    (act,) = of(a.handle_datagram(refusal.data, ADDR_B), A.HandshakeRefused)
    assert act.reason is wire.Refusal.REFUSED and not b.peers


@pytest.mark.parametrize("garbage", [b"\x00", b"{", bytes(range(256)) * 4, b"\xff" * 700])
def test_garbage_attachments_are_refused_never_crash(garbage):
    a, b, pa, adm, clock, wall = make(member_cert=garbage)
    (init,) = sends(a.open(pa.id))
    (refusal,) = sends(b.handle_datagram(init.data, ADDR_A))
    assert adm.calls[0][1] == garbage
    assert of(a.handle_datagram(refusal.data, ADDR_B), A.HandshakeRefused)


def test_mangled_attached_initiations_are_counted_drops():
    a, b, pa, adm, clock, wall = make(member_cert=b"c" * 500)
    (init,) = sends(a.open(pa.id))
    d = init.data
    for bad in (d[:-1], d[:168], d + b"\0", d + bytes(1192 - len(d) + 1), d[:100]):
        assert b.handle_datagram(bad, ADDR_A) == []
    flipped = bytearray(d)
    flipped[300] ^= 1
    assert b.handle_datagram(bytes(flipped), ADDR_A) == []
    assert b.drops["malformed"] + b.drops["bad_mac1"] + b.drops["bad_handshake"] == 6
    assert adm.calls == []


def test_membership_must_fit():
    a, b, pa, adm, clock, wall = make()
    for bad in (b"", bytes(1025)):
        with pytest.raises(ValueError):
            a.membership = bad
    a.membership = bytes(1024)
    assert a.membership == bytes(1024)
    a.membership = None
    assert len(sends(a.open(pa.id))[0].data) in (164, 166)


def test_a_refusal_during_a_session_clears_its_keys():
    """An established member that is removed: its rekey is refused, and the
    session with the peer that no longer accepts it goes."""
    a, b, pa, adm, clock, wall = make()
    adm.certs[a.public_key] = b"cert-of-a"
    (init,) = sends(a.open(pa.id))
    a.handle_datagram(sends(b.handle_datagram(init.data, ADDR_A))[0].data, ADDR_B)
    assert pa.state is PeerState.ESTABLISHED
    b.remove_peer(b.peer_by_key(a.public_key).id)
    adm.removed.add(a.public_key)
    clock.advance(200)
    wall.advance(200)
    (init,) = sends(a.rehandshake(pa.id, "test"))
    out = a.handle_datagram(sends(b.handle_datagram(init.data, ADDR_A))[0].data, ADDR_B)
    assert of(out, A.HandshakeRefused) and of(out, A.ClearKeys)
    assert pa.state is PeerState.DEAD and not pa.sessions


@pytest.mark.parametrize("member", [True, False])
def test_under_load_an_attached_initiation_gets_a_cookie_first(member):
    """Under load the cookie mechanism comes before any admission: mac2 over
    the attached initiation's end, a 64-byte cookie reply, and the retry
    with mac2 is admitted (or refused) like any other."""
    a, b, pa, adm, clock, wall = make(tunables=Tunables(handshake_jitter=0.0, under_load_initiations=0))
    if member:
        adm.certs[a.public_key] = b"cert-of-a"
    (init,) = sends(a.open(pa.id))
    (reply,) = sends(b.handle_datagram(init.data, ADDR_A))
    assert reply.data[0] == 3 and len(reply.data) == 64 < len(init.data)
    assert adm.calls == [] and b.drops["cookie_sent"] == 1
    assert a.handle_datagram(reply.data, ADDR_B) == []
    clock.advance(0.11)
    wall.advance(0.001)
    (again,) = sends(a.tick({}))
    assert again.data[-16:] != bytes(16)                     # mac2, at the message's end
    (answer,) = sends(b.handle_datagram(again.data, ADDR_A))
    assert answer.data[0] == 2 and len(adm.calls) == 1
    out = a.handle_datagram(answer.data, ADDR_B)
    assert (pa.state is PeerState.ESTABLISHED) == member and bool(of(out, A.HandshakeRefused)) != member
