#!/usr/bin/env python3
"""Fuzz target "handshake": the responder (Engine.handle_datagram,
handshake.consume_initiation) and the initiator's response/cookie handling,
with real key pairs.

The first input byte picks a mode (low 3 bits) and whether the engine is
under load (bit 3: cookies demanded, mac2 and the rate limiter in play):

0  raw: the rest is one datagram for ``Engine.handle_datagram``;
1  mac1-fixed: the rest, if it has a handshake size, gets a valid mac1 for
   the responder's key (so mutated bodies pass the cheap check and reach the
   Noise code); also fed to ``consume_initiation`` directly;
2  structured initiation: a *genuine* initiation built from fuzzer-chosen
   key (known peer or stranger), index, TAI64N timestamp, client nonce and
   ephemeral key, optionally with one byte replaced (mac1 recomputed), sent
   twice (the second is a replay);
3  response: the engine opens a handshake to its peer; the peer answers with
   a genuine response (fuzzer-chosen index), optionally with one byte replaced
   (mac1 recomputed);
4  cookie reply: the rest, with its receiver index pointed at the engine's
   pending handshake, as a cookie reply;
5  attached initiation (issue 20): a genuine initiation with a
   fuzzer-chosen attachment (1..1024 bytes) from the known peer or a
   stranger, optionally mutated, to an engine whose ``admit_unknown``
   admits a stranger whose attachment starts with b"member:" and refuses
   any other with fuzzer-chosen words; the answer goes back to the
   initiator.

Contract: ``handle_datagram`` never raises and counts exactly one handshake
drop per datagram unless it accepted it (keys installed, or a cookie taken);
``consume_initiation``/``consume_response`` raise only HandshakeError; a
replayed initiation is never answered; an accepted genuine initiation yields
a response that the initiator accepts, with matching transport keys.
Mode 5: nothing sent is larger than the initiation; a refusal goes only to
a stranger the admission refused, and the initiator reads it as
HandshakeRefused; an admitted stranger's response gives the initiator
matching keys.
"""

import random
import sys

import atheris

import common

with atheris.instrument_imports(include=["phantom"]):   # our code only, not aiohttp & co.
    from phantom import crypto, wire
    from phantom.constants import DEFAULT_TUNABLES
    from phantom.control import actions as A
    from phantom.protocols import tai64n
    from phantom.protocols.phantom import cookie
    from phantom.protocols.phantom import handshake as hs
    from phantom.control.engine import Engine

ALLOWED = (hs.HandshakeError,)

R_PUB = crypto.x25519_public(common.RESPONDER_PRIV)
I_PUB = crypto.x25519_public(common.INITIATOR_PRIV)
S_PUB = crypto.x25519_public(common.STRANGER_PRIV)
MAC1_KEY = cookie.mac1_key(R_PUB)
LOADED = DEFAULT_TUNABLES.__class__(**{**DEFAULT_TUNABLES.__dict__, "under_load_initiations": 0})


def with_mac1(msg: bytes) -> bytes:
    msg = bytes(msg)
    if len(msg) < 2 * wire.MAC_SIZE:
        return msg
    return wire.with_macs(msg, cookie.mac(MAC1_KEY, wire.mac1_region(msg)), msg[-wire.MAC_SIZE:])


def make_engine(loaded: bool):
    counter = iter(range(1000, 10 ** 9))
    e = Engine(bytearray(common.RESPONDER_PRIV), LOADED if loaded else DEFAULT_TUNABLES,
               clock=lambda: 100.0, wall_clock=lambda: common.NOW, rng=random.Random(0),
               index_source=lambda: next(counter))
    peer = e.add_peer(I_PUB, name="i", endpoint=common.PEER_ADDR)
    return e, peer


def feed(e: Engine, data: bytes) -> list:
    """One datagram; checks the accounting contract."""
    before = sum(e.drops.values())
    out = e.handle_datagram(data, common.PEER_ADDR)
    delta = sum(e.drops.values()) - before
    installed = any(isinstance(a, A.InstallKeypair) for a in out)
    if installed:
        assert delta == 0, "accepted and counted as a drop"
    elif delta == 0:
        assert len(data) == wire.COOKIE_REPLY_SIZE and data[0] == wire.MessageType.COOKIE_REPLY, \
            "datagram neither accepted nor counted: %r -> %r" % (data[:8], out)
    else:
        assert delta == 1, "one datagram counted %d times" % delta
    return out


def mutate(fdp, msg: bytes) -> bytes:
    if not fdp.ConsumeBool():
        return msg
    pos = fdp.ConsumeIntInRange(0, len(msg) - 1)
    b = bytearray(msg)
    b[pos] = fdp.ConsumeInt(1) & 0xFF
    return with_mac1(bytes(b))


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, loaded = data[0] & 7, bool(data[0] & 8)
    body = data[1:]
    e, peer = make_engine(loaded)
    if mode == 0:
        feed(e, body)
    elif mode == 1:
        if len(body) in wire.INITIATION_SIZES or len(body) in wire.RESPONSE_SIZES:
            body = with_mac1(body)
        feed(e, body)
        try:
            info = hs.consume_initiation(common.RESPONDER_PRIV, body)
        except ALLOWED:
            return
        info.state.clear()
    elif mode == 2:
        fdp = atheris.FuzzedDataProvider(body)
        priv = common.STRANGER_PRIV if fdp.ConsumeBool() else common.INITIATOR_PRIV
        index = fdp.ConsumeIntInRange(0, 2 ** 32 - 1)
        ts = fdp.ConsumeBytes(12).ljust(12, b"\0")
        nonce = fdp.ConsumeBytes(16).ljust(16, b"\0")
        eph = fdp.ConsumeBytes(32) if fdp.ConsumeBool() else None
        try:
            msg, ist = hs.create_initiation(priv, R_PUB, index, ts, nonce,
                                            ephemeral_private=eph if eph and len(eph) == 32 else None)
        except ALLOWED:
            return          # e.g. an ephemeral key that gives an all-zero DH
        msg = mutate(fdp, with_mac1(msg))
        out = feed(e, msg)
        sends = [a for a in out if isinstance(a, A.SendDatagram)]
        accepted = any(isinstance(a, A.InstallKeypair) for a in out)
        if accepted:
            assert priv == common.INITIATOR_PRIV, "an initiation from an unknown key was answered"
            try:
                tai64n.decode(ts)
            except tai64n.TimestampError:
                raise AssertionError("an invalid timestamp was accepted")
            kp = next(a for a in out if isinstance(a, A.InstallKeypair)).keypair
            resp = next(a.data for a in sends if a.data[0] == wire.MessageType.RESPONSE)
            # the sender index is outside the Noise message (only mac1 covers
            # it, as in WireGuard): the answer goes to the index as received
            sent_index = wire.Initiation.unpack(msg).sender_index
            assert kp.remote_index == sent_index
            if sent_index == index:
                keys = hs.consume_response(ist, resp)          # must not raise
                assert keys.send_key == kp.recv_key and keys.recv_key == kp.send_key
                assert keys.remote_index == kp.local_index
        again = feed(e, msg)
        assert not any(isinstance(a, A.InstallKeypair) for a in again), "a replay was accepted"
    elif mode == 3:
        fdp = atheris.FuzzedDataProvider(body)
        init = [a for a in e.open(peer.id) if isinstance(a, A.SendDatagram)][0].data
        info = hs.consume_initiation(common.INITIATOR_PRIV, init)      # the peer's side
        assert info.remote_static == R_PUB
        msg, _keys = hs.create_response(info.state, fdp.ConsumeIntInRange(0, 2 ** 32 - 1))
        # the response goes to the engine: mac1 under the engine's key
        msg = with_mac1(msg)
        msg = mutate(fdp, msg)
        out = feed(e, msg)
        if any(isinstance(a, A.InstallKeypair) for a in out):
            assert msg[8:12] == init[4:8], "a response to another index was accepted"
    elif mode == 4:
        init = [a for a in e.open(peer.id) if isinstance(a, A.SendDatagram)][0].data
        reply = bytearray(body[:wire.COOKIE_REPLY_SIZE].ljust(wire.COOKIE_REPLY_SIZE, b"\0"))
        reply[0:4] = b"\x03\0\0\0"
        reply[4:8] = init[4:8]
        feed(e, bytes(reply))
    elif mode == 5:
        attached(e, body)


def attached(e: Engine, body: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(body)
    stranger = fdp.ConsumeBool()
    priv = common.STRANGER_PRIV if stranger else common.INITIATOR_PRIV
    words = fdp.ConsumeUnicodeNoSurrogates(40)
    attachment = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, wire.MAX_ATTACHMENT_SIZE))
    if not attachment:
        return
    calls = []

    def admit(key, att, addr):
        calls.append(key)
        assert key == S_PUB and att == attachment, "admission asked about another key or attachment"
        if att.startswith(b"member:"):
            e.add_peer(key, name="s", dynamic=True, exclusive=True)
            return None
        return words
    e.admit_unknown = admit
    ts = tai64n.encode(int(common.NOW) - 10, 0)
    msg, ist = hs.create_initiation(priv, R_PUB, 77, ts, bytes(16), suites=(wire.Suite.SECRETBOX,),
                                    attachment=attachment)
    mutated = mutate(fdp, with_mac1(msg))
    out = feed(e, mutated)
    sends = [a.data for a in out if isinstance(a, A.SendDatagram)]
    assert all(len(d) <= len(mutated) for d in sends), "an answer larger than the initiation"
    if not stranger:
        assert not calls, "a known key's initiation went to the admission"
    if mutated != with_mac1(msg) or not sends:
        return
    (answer,) = sends
    if answer[0] == wire.MessageType.COOKIE_REPLY:
        return                                  # under load: a cookie first
    try:
        keys = hs.consume_response(ist, answer)
    except hs.HandshakeRefused as refused:
        assert stranger and not attachment.startswith(b"member:"), "refused an admitted key"
        assert refused.reason is wire.refusal_of(words)
        return
    kp = next(a for a in out if isinstance(a, A.InstallKeypair)).keypair
    assert keys.send_key == kp.recv_key, "answered with keys that do not match"


if __name__ == "__main__":
    common.main(TestOneInput)
