"""The engine with WireGuard peers, sans-IO (injected clocks, no sockets).

The same state machine runs both protocols; these tests check that a peer's
protocol decides its messages (148/92/64 bytes, WireGuard's MACs), its
keypairs' cipher, and that the shared rules -- replayed timestamps, unknown
keys, cookies under load, retransmits with a fresh ephemeral, rekey after
time -- apply to WireGuard peers too, also when one engine has a Phantom
peer and a WireGuard peer at once.
"""

from __future__ import annotations

import random

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.control.peer import PeerState
from phantom.protocols.wireguard import handshake as wh
from phantom.protocols.wireguard.cookie import WgCookieChecker, WgCookieGenerator
from phantom.dataplane.ciphers import CipherKind
from phantom.dataplane.types import PeerCounters
from phantom.wire import wireguard as wgw
from tests.support.clock import Clock
from tests.support.engines import of, sends
from tests.support.engines import private_key as _key
from phantom.wire import Suite

ADDR_A = ("10.0.0.1", 9000)
ADDR_B = ("10.0.0.2", 51820)
PSK = bytes(range(32))


def make_pair(psk_a=None, psk_b=None, tunables=None, proto_b="wireguard"):
    t = tunables or Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    a = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(1))
    b = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(2))
    pa = a.add_peer(b.public_key, "b", endpoint=ADDR_B, protocol="wireguard", preshared_key=psk_a)
    pb = b.add_peer(a.public_key, "a", endpoint=ADDR_A, protocol=proto_b,
                    preshared_key=psk_b if proto_b == "wireguard" else None)
    return a, b, pa, pb, clock, wall


def handshake(a, b, pa, wall):
    wall.advance(0.01)
    out_a = a.open(pa.id)
    (init,) = sends(out_a)
    out_b = b.handle_datagram(init.data, ADDR_A)
    resp = sends(out_b)
    out_a2 = a.handle_datagram(resp[0].data, ADDR_B) if resp else []
    return out_a + out_a2, out_b, init.data, resp[0].data if resp else None


@pytest.mark.parametrize("psk", [None, PSK], ids=["no-psk", "psk"])
def test_wireguard_peers_handshake_with_wireguard_messages(psk):
    a, b, pa, pb, clock, wall = make_pair(psk, psk)
    assert pa.protocol == pb.protocol == "wireguard"
    acts_a, acts_b, init, resp = handshake(a, b, pa, wall)
    assert len(init) == 148 and init[0] == 1 and len(resp) == 92 and resp[0] == 2
    # mac1 is WireGuard's (BLAKE2s, keyed with the responder's key)
    assert WgCookieChecker(b.public_key, clock).check_mac1(init)
    assert WgCookieChecker(a.public_key, clock).check_mac1(resp)
    (ia,) = of(acts_a, A.InstallKeypair)
    (ib,) = of(acts_b, A.InstallKeypair)
    assert ia.keypair.cipher == ib.keypair.cipher == CipherKind.CHACHA20POLY1305
    assert ia.keypair.send_key == ib.keypair.recv_key and ia.keypair.recv_key == ib.keypair.send_key
    assert A.keys_before_sends(acts_b)
    assert pa.state is PeerState.ESTABLISHED and of(acts_a, A.SendKeepalive)


def test_the_other_side_initiates_too():
    a, b, pa, pb, clock, wall = make_pair(PSK, PSK)
    acts_b, acts_a, init, resp = handshake(b, a, pb, wall)
    assert len(init) == 148 and len(resp) == 92
    assert of(acts_b, A.InstallKeypair)[0].keypair.send_key == of(acts_a, A.InstallKeypair)[0].keypair.recv_key


@pytest.mark.parametrize("psk_a,psk_b", [(PSK, None), (None, PSK), (PSK, bytes(31) + b"x")],
                         ids=["initiator-only", "responder-only", "different"])
def test_a_wrong_preshared_key_gets_no_session(psk_a, psk_b):
    a, b, pa, pb, clock, wall = make_pair(psk_a, psk_b)
    acts_a, acts_b, init, resp = handshake(a, b, pa, wall)
    assert resp is not None                      # b cannot tell; a's check fails
    assert a.drops["bad_handshake"] == 1
    assert not of(acts_a, A.InstallKeypair)
    assert pa.state is PeerState.HANDSHAKING and pa.pending is not None


def test_a_wrong_key_gets_no_answer():
    a, b, pa, pb, clock, wall = make_pair()
    stranger = Engine(_key(), Tunables(), clock=clock, wall_clock=wall)
    p = stranger.add_peer(b.public_key, "b", endpoint=ADDR_B, protocol="wireguard")
    (init,) = sends(stranger.open(p.id))
    assert b.handle_datagram(init.data, ("10.0.0.9", 9000)) == []
    assert b.drops["unknown_key"] == 1


def test_a_key_configured_for_one_protocol_is_refused_in_the_other():
    # b knows a as a Phantom peer; a speaks WireGuard to it
    a, b, pa, pb, clock, wall = make_pair(proto_b="phantom")
    acts_a, acts_b, init, resp = handshake(a, b, pa, wall)
    assert resp is None and b.drops["wrong_protocol"] == 1


def test_replayed_wireguard_initiation_is_dropped():
    a, b, pa, pb, clock, wall = make_pair()
    (init,) = sends(a.open(pa.id))
    assert sends(b.handle_datagram(init.data, ADDR_A))
    assert b.handle_datagram(init.data, ADDR_A) == []
    assert b.drops["replayed_initiation"] == 1


def test_retransmit_uses_a_fresh_ephemeral_and_gives_up():
    t = Tunables(handshake_jitter=0.0, rekey_timeout=5.0, open_attempts=3)
    a, b, pa, pb, clock, wall = make_pair(tunables=t)
    (first,) = sends(a.open(pa.id))
    seen = {first.data[8:40]}
    for _ in range(2):
        clock.advance(5.01)
        wall.advance(5.01)
        (again,) = sends(a.tick({}))
        assert len(again.data) == 148 and again.data[8:40] not in seen
        seen.add(again.data[8:40])
    clock.advance(5.01)
    a.tick({})
    assert pa.state is PeerState.DEAD


def test_cookie_reply_under_load_then_mac2():
    t = Tunables(handshake_jitter=0.0, under_load_initiations=0)
    a, b, pa, pb, clock, wall = make_pair(tunables=t)
    (init,) = sends(a.open(pa.id))
    (reply,) = sends(b.handle_datagram(init.data, ADDR_A))
    assert len(reply.data) == 64 and reply.data[0] == 3 and b.drops["cookie_sent"] == 1
    assert wgw.CookieReply.unpack(reply.data).receiver_index == pa.pending.local_index
    assert a.handle_datagram(reply.data, ADDR_B) == []
    clock.advance(0.2)
    wall.advance(0.2)
    (retry,) = sends(a.tick({}))
    assert retry.data[-16:] != bytes(16)
    out = b.handle_datagram(retry.data, ADDR_A)
    assert len(sends(out)[0].data) == 92         # answered: mac2 was valid


def test_rekey_after_time_starts_a_wireguard_handshake():
    t = Tunables(handshake_jitter=0.0)
    a, b, pa, pb, clock, wall = make_pair(tunables=t)
    handshake(a, b, pa, wall)
    clock.advance(t.rekey_after_time + 0.1)
    wall.advance(t.rekey_after_time + 0.1)
    c = PeerCounters(last_tx=clock.t, last_data_tx=clock.t, last_rx=clock.t, last_data_rx=clock.t)
    out = a.tick({pa.id: c})
    (init,) = sends(out)
    assert len(init.data) == 148


def test_one_engine_with_a_phantom_peer_and_a_wireguard_peer():
    t = Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    hub = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(3))
    ph = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(4))
    wg = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(5))
    p_ph = hub.add_peer(ph.public_key, "ph", endpoint=("10.0.0.3", 9000))
    p_wg = hub.add_peer(wg.public_key, "wg", endpoint=("10.0.0.4", 51820), protocol="wireguard",
                        preshared_key=PSK)
    q_ph = ph.add_peer(hub.public_key, "hub", endpoint=ADDR_A)
    q_wg = wg.add_peer(hub.public_key, "hub", endpoint=ADDR_A, protocol="wireguard", preshared_key=PSK)
    # each side initiating in turn, interleaved on the one engine
    (i1,) = sends(hub.open(p_ph.id))
    wall.advance(0.01)
    (i2,) = sends(wg.open(q_wg.id))
    # Phantom's initiation offers its cipher suites (166 bytes) unless it
    # speaks secretbox only (164, the prototype's form); the response answers
    # in kind (109 / 108); WireGuard's sizes never change
    offers = hub.suites != (Suite.SECRETBOX,)
    assert len(i1.data) == (166 if offers else 164) and len(i2.data) == 148
    (r2,) = sends(hub.handle_datagram(i2.data, ("10.0.0.4", 51820)))
    (r1,) = sends(ph.handle_datagram(i1.data, ADDR_A))
    assert len(r1.data) == (109 if offers else 108) and len(r2.data) == 92
    out_hub = hub.handle_datagram(r1.data, ("10.0.0.3", 9000))
    out_wg = wg.handle_datagram(r2.data, ADDR_A)
    best = CipherKind.AEGIS256 if Suite.AEGIS256 in hub.suites else CipherKind.SECRETBOX
    assert of(out_hub, A.InstallKeypair)[0].keypair.cipher == best
    assert of(out_wg, A.InstallKeypair)[0].keypair.cipher == CipherKind.CHACHA20POLY1305
    assert p_ph.state is PeerState.ESTABLISHED and q_wg.state is PeerState.ESTABLISHED
    assert hub.drops == {} or not any(hub.drops.values())


def test_preshared_key_only_for_wireguard_peers():
    e = Engine(_key(), Tunables())
    with pytest.raises(ValueError, match="only a WireGuard peer"):
        e.add_peer(crypto.x25519_public(crypto.x25519_private()), preshared_key=PSK)
    with pytest.raises(ValueError, match="unknown protocol"):
        e.add_peer(crypto.x25519_public(crypto.x25519_private()), protocol="ipsec")


def test_engine_answers_a_sansio_wireguard_initiator():
    """The engine against the bare handshake module (as a wireguard-go would send it)."""
    clock, wall = Clock(), Clock(1.7e9)
    e = Engine(_key(), Tunables(), clock=clock, wall_clock=wall)
    cpriv = crypto.x25519_private()
    p = e.add_peer(crypto.x25519_public(cpriv), "c", protocol="wireguard", preshared_key=PSK)
    from phantom.protocols import tai64n
    msg, st = wh.create_initiation(cpriv, e.public_key, 42, tai64n.now(), PSK,
                                   WgCookieGenerator(e.public_key, clock))
    out = e.handle_datagram(msg, ("10.0.0.5", 51820))
    (resp,) = sends(out)
    keys = wh.consume_response(st, resp.data)
    (inst,) = of(out, A.InstallKeypair)
    assert inst.keypair.recv_key == keys.send_key and inst.keypair.remote_index == 42
    assert p.endpoint == ("10.0.0.5", 51820)
