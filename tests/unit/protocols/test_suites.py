"""Negotiated transport suites for Phantom sessions (issue 23, item 1), sans-IO.

* the wire forms: an initiation with a suites offer (166 bytes) or without
  (164, the prototype's), a response with the chosen suite (109) or without
  (108), told apart from each other and from WireGuard's by their sizes;
* every pair of capability sets, through two real engines: aegis256 +
  secretbox (AES hardware), secretbox only (pinned: sends the prototype's
  form), aegis256 only (pinned), and the prototype itself (no offer); a pair
  with no common suite gets no session and a counted drop;
* the prototype's own code (the commit before suites, from git) against
  today's engine: it initiates and answers, and the sessions are secretbox;
* downgrades: an active attacker (who knows both public keys and so can
  recompute mac1) who strips or edits the offer, or the choice, is refused;
  an offer someone substitutes cannot be answered, because the offer's
  ciphertext is in the handshake hash that the response's payload is
  authenticated under;
* crypto_kdf (the derived AEGIS-256 keys) equals the system libsodium's.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phantom import crypto, wire
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.protocols.phantom import handshake as hs
from phantom.protocols import registry as protocols
from phantom.protocols import tai64n
from phantom.protocols.phantom.cookie import CookieChecker, mac, mac1_key
from phantom.control.engine import Engine
from phantom.control.peer import PeerState
from phantom.dataplane.ciphers import CipherKind, KDF_CONTEXT, transport_keys
from phantom.wire import Suite, demux

AS = (Suite.AEGIS256, Suite.SECRETBOX)
S = (Suite.SECRETBOX,)
A_ = (Suite.AEGIS256,)
ADDR_I = ("10.0.0.1", 9000)
ADDR_R = ("10.0.0.2", 9000)
# the last commit before cipher suites: "today's code" for the mixed-version tests
PROTOTYPE_COMMIT = "ee7af31462224dc93836241ee5737d3e91f6e8f9"
REPO = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def _key():
    return bytearray(crypto.x25519_private())


def sends(actions):
    return [x for x in actions if isinstance(x, A.SendDatagram)]


def installs(actions):
    return [x.keypair for x in actions if isinstance(x, A.InstallKeypair)]


PRIVS = {}          # engine -> its private key (what a test needs to speak for it)


def engines(suites_i, suites_r):
    """An initiator and a responder engine with these suites, each knowing the other."""
    t = Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    ki = _key()
    i = Engine(ki, t, clock=clock, wall_clock=wall, rng=random.Random(1), suites=suites_i)
    PRIVS[id(i)] = bytes(ki)
    r = Engine(_key(), t, clock=clock, wall_clock=wall, rng=random.Random(2), suites=suites_r)
    pi = i.add_peer(r.public_key, "r", endpoint=ADDR_R)
    pr = r.add_peer(i.public_key, "i", endpoint=ADDR_I)
    return i, r, pi, pr, wall


def exchange(i, r, pi, wall):
    """i opens to r: (initiation bytes, response bytes or None, i's actions, r's actions)."""
    wall.advance(0.01)
    out_i = i.open(pi.id)
    (init,) = sends(out_i)
    out_r = r.handle_datagram(init.data, ADDR_I)
    resp = sends(out_r)
    out_i2 = i.handle_datagram(resp[0].data, ADDR_R) if resp else []
    return init.data, resp[0].data if resp else None, out_i + out_i2, out_r


# --------------------------------------------------------------------------- wire forms
def test_wire_sizes_and_demux():
    assert (wire.INITIATION_SIZE, wire.INITIATION_OFFER_SIZE) == (164, 166)
    assert (wire.RESPONSE_SIZE, wire.RESPONSE_CHOICE_SIZE) == (108, 109)
    for size, mtype in ((164, 1), (166, 1), (108, 2), (109, 2)):
        msg = bytes([mtype, 0, 0, 0]) + bytes(size - 4)
        assert demux.classify(msg) == demux.Kind(demux.Protocol.PHANTOM, wire.MessageType(mtype))
        assert wire.message_type(msg) is wire.MessageType(mtype)
    for size, mtype in ((165, 1), (167, 1), (107, 2), (110, 2)):
        with pytest.raises(wire.WireError):
            demux.classify(bytes([mtype, 0, 0, 0]) + bytes(size - 4))
    assert wire.suites_mask(AS) == 0b11 and wire.suites_of(0b11) == AS
    assert wire.suites_of(0b1000_0000_0000_0010) == (Suite.AEGIS256,)   # unknown bits ignored


def test_initiation_and_response_round_trip_through_pack_and_unpack():
    for suites, size in ((None, 164), (AS, 166), (S, 166), (A_, 166)):
        msg, st = hs.create_initiation(_key(), crypto.x25519_public(bytes(_key())), 7,
                                       bytes(12), bytes(16), suites=suites)
        assert len(msg) == size
        init = wire.Initiation.unpack(msg)
        assert init.pack() == msg and init.offers_suites == (suites is not None)
        assert st.offered == (None if suites is None else wire.suites_mask(suites))


# ------------------------------------------------------------------ capability matrix
# (initiator's suites, responder's suites) -> the session's suite, None: no session
MATRIX = [
    (AS, AS, Suite.AEGIS256),
    (AS, S, Suite.SECRETBOX),
    (S, AS, Suite.SECRETBOX),
    (S, S, Suite.SECRETBOX),
    (A_, AS, Suite.AEGIS256),
    (AS, A_, Suite.AEGIS256),
    (A_, A_, Suite.AEGIS256),
    (A_, S, None),
    (S, A_, None),
]


def _name(x):
    return "+".join(s.name.lower() for s in x)


@pytest.mark.parametrize("ours, theirs, expect", MATRIX,
                         ids=["%s>%s" % (_name(a), _name(b)) for a, b, _ in MATRIX])
def test_every_pair_of_capability_sets(ours, theirs, expect):
    i, r, pi, pr, wall = engines(ours, theirs)
    init, resp, out_i, out_r = exchange(i, r, pi, wall)
    # secretbox alone is sent in the prototype's form: an older responder reads it
    assert len(init) == (164 if ours == S else 166)
    if expect is None:
        assert resp is None and installs(out_r) == []
        assert r.drops["no_common_suite"] == 1 and pr.sessions == []
        assert pi.state is PeerState.HANDSHAKING
        return
    assert len(resp) == (108 if ours == S else 109)
    (kp_i,), (kp_r,) = installs(out_i), installs(out_r)
    cipher = CipherKind.AEGIS256 if expect is Suite.AEGIS256 else CipherKind.SECRETBOX
    assert kp_i.cipher == kp_r.cipher == cipher
    assert pi.cipher == pr.cipher == cipher
    assert bytes(kp_i.send_key) == bytes(kp_r.recv_key) and bytes(kp_i.recv_key) == bytes(kp_r.send_key)
    assert pi.state is PeerState.ESTABLISHED


def test_prototype_initiation_without_an_offer_gets_secretbox_and_is_remembered():
    """An initiation in the prototype's form (what today's code sends) gets a
    108-byte answer and a secretbox session.  Our own initiations to that
    peer then alternate: one with an offer (a peer upgraded since gets its
    best suite at once), one in its form (which the prototype reads)."""
    i, r, pi, pr, wall = engines(AS, AS)
    wall.advance(0.01)
    legacy, st = hs.create_initiation(PRIVS[id(i)], r.public_key, 99, tai64n.now(), bytes(16),
                                      pi.cookies, suites=None)
    out_r = r.handle_datagram(legacy, ADDR_I)
    (resp,) = sends(out_r)
    assert len(resp.data) == 108 and installs(out_r)[0].cipher == CipherKind.SECRETBOX
    assert hs.consume_response(st, resp.data).suite is Suite.SECRETBOX
    assert pr.suites_legacy
    # r initiates: first with an offer, which i (it reads offers) answers: aegis256
    wall.advance(0.01)
    r.close(pr.id)
    (o1,) = sends(r.open(pr.id))
    assert len(o1.data) == 166
    (a1,) = sends(i.handle_datagram(o1.data, ADDR_R))
    assert len(a1.data) == 109
    assert installs(r.handle_datagram(a1.data, ADDR_I))[0].cipher == CipherKind.AEGIS256
    assert not pr.suites_legacy                       # an answered offer clears it


def test_initiations_to_a_prototype_peer_alternate_offer_and_its_form():
    i, r, pi, pr, wall = engines(AS, AS)
    wall.advance(0.01)
    legacy, _ = hs.create_initiation(PRIVS[id(i)], r.public_key, 99, tai64n.now(), bytes(16),
                                     pi.cookies, suites=None)
    sends(r.handle_datagram(legacy, ADDR_I))
    assert pr.suites_legacy
    r.close(pr.id)
    sizes = []
    out = r.open(pr.id)
    for _ in range(4):                                # nobody answers: retries
        sizes += [len(x.data) for x in sends(out)]
        r.clock.advance(r.t.rekey_timeout + 0.01)
        out = r.tick({})
    assert sizes == [166, 164, 166, 164]
    # a peer that never sent an initiation without an offer never gets one
    i2, r2, pi2, pr2, wall2 = engines(AS, AS)
    out = r2.open(pr2.id)
    sizes = []
    for _ in range(4):
        sizes += [len(x.data) for x in sends(out)]
        r2.clock.advance(r2.t.rekey_timeout + 0.01)
        out = r2.tick({})
    assert sizes == [166] * 4


def test_responder_never_answers_a_legacy_initiation_with_anything_but_secretbox():
    priv_r = _key()
    msg, st = hs.create_initiation(_key(), crypto.x25519_public(bytes(priv_r)), 1, bytes(12), bytes(16))
    info = hs.consume_initiation(priv_r, msg)
    assert info.offered is None
    with pytest.raises(hs.HandshakeError, match="secretbox"):
        hs.create_response(info.state, 2, suite=Suite.AEGIS256)
    msg, st = hs.create_initiation(_key(), crypto.x25519_public(bytes(priv_r)), 1, bytes(12), bytes(16),
                                   suites=S)
    info = hs.consume_initiation(priv_r, msg)
    with pytest.raises(hs.HandshakeError, match="did not offer"):
        hs.create_response(info.state, 2, suite=Suite.AEGIS256)


# ---------------------------------------------------------------- today's code (git)
@pytest.fixture(scope="module")
def prototype(tmp_path_factory):
    """The phantom package as of PROTOTYPE_COMMIT (before suites), from git."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history (a checkout of the repository)")
    out = tmp_path_factory.mktemp("prototype")
    archive = subprocess.run([git, "-C", str(REPO), "archive", PROTOTYPE_COMMIT, "phantom"],
                             capture_output=True, timeout=60)
    if archive.returncode != 0:
        pytest.skip("commit %s not in this clone: %s" % (PROTOTYPE_COMMIT[:7], archive.stderr.decode()))
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True, timeout=60)
    assert not (out / "phantom" / "libcrypto.py").exists()          # really the old tree
    return out


_DRIVER = r"""
import base64, json, sys
sys.path.insert(0, sys.argv[1])
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
priv = bytearray(base64.b64decode(sys.argv[2]))
e = Engine(priv, Tunables(handshake_jitter=0.0))
peer = e.add_peer(base64.b64decode(sys.argv[3]), "new", endpoint=("10.0.0.1", 9000))
print(json.dumps({"pub": base64.b64encode(e.public_key).decode()}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "open":
        out = e.open(peer.id)
    elif cmd["op"] == "close":
        out = e.close(peer.id)
    else:
        out = e.handle_datagram(bytes.fromhex(cmd["data"]), tuple(cmd["addr"]))
    res = {"send": [a.data.hex() for a in out if isinstance(a, A.SendDatagram)],
           "install": [{"cipher": a.keypair.cipher, "send": bytes(a.keypair.send_key).hex(),
                        "recv": bytes(a.keypair.recv_key).hex()}
                       for a in out if isinstance(a, A.InstallKeypair)],
           "drops": dict(e.drops), "file": __import__("phantom").__file__}
    print(json.dumps(res), flush=True)
"""


class Prototype:
    """An engine of the prototype's code in its own interpreter, driven over a pipe."""

    def __init__(self, tree: Path, peer_pub: bytes):
        self.priv = _key()
        self.p = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, str(tree), base64.b64encode(bytes(self.priv)).decode(),
             base64.b64encode(peer_pub).decode()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(tree))
        self.public_key = base64.b64decode(json.loads(self.p.stdout.readline())["pub"])

    def call(self, **cmd) -> dict:
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


@pytest.fixture
def old_and_new(prototype):
    t = Tunables(handshake_jitter=0.0)
    new = Engine(_key(), t, clock=Clock())        # the wall clock is real: the old side's is too
    old = Prototype(prototype, new.public_key)
    peer = new.add_peer(old.public_key, "old", endpoint=ADDR_R)
    try:
        yield new, old, peer
    finally:
        old.close()


def test_the_prototype_initiates_to_us_and_gets_secretbox(old_and_new):
    new, old, peer = old_and_new
    got = old.call(op="open")
    assert "prototype" in got["file"]                 # the old tree's package, not ours
    (init,) = [bytes.fromhex(x) for x in got["send"]]
    assert len(init) == 164
    out = new.handle_datagram(init, ADDR_R)
    (resp,) = sends(out)
    (kp,) = installs(out)
    assert len(resp.data) == 108 and kp.cipher == CipherKind.SECRETBOX
    done = old.call(op="datagram", data=resp.data.hex(), addr=list(ADDR_I))
    (theirs,) = done["install"]
    assert theirs["cipher"] == CipherKind.SECRETBOX
    assert theirs["send"] == bytes(kp.recv_key).hex() and theirs["recv"] == bytes(kp.send_key).hex()
    assert peer.suites_legacy


def test_we_initiate_to_the_prototype_once_it_has_initiated(old_and_new):
    """Our initiation offers suites and the prototype drops it (it knows only
    164 bytes); once it has initiated to us, every second initiation of ours
    is in its form, and it answers that one."""
    new, old, peer = old_and_new
    (init,) = sends(new.open(peer.id))
    assert len(init.data) == 166
    got = old.call(op="datagram", data=init.data.hex(), addr=list(ADDR_I))
    assert got["send"] == [] and got["drops"].get("malformed") == 1
    # the old peer's own initiation teaches us; we answer it (secretbox) ...
    (oi,) = old.call(op="open")["send"]
    (resp,) = sends(new.handle_datagram(bytes.fromhex(oi), ADDR_R))
    old.call(op="datagram", data=resp.data.hex(), addr=list(ADDR_I))
    # ... and from then on: an offer (dropped), then its form (answered)
    new.close(peer.id)
    old.call(op="close")
    (init2,) = sends(new.open(peer.id))
    assert len(init2.data) == 166
    assert old.call(op="datagram", data=init2.data.hex(), addr=list(ADDR_I))["send"] == []
    new.clock.advance(new.t.rekey_timeout + 0.01)
    (init3,) = sends(new.tick({}))
    assert len(init3.data) == 164
    got = old.call(op="datagram", data=init3.data.hex(), addr=list(ADDR_I))
    (resp2,) = [bytes.fromhex(x) for x in got["send"]]
    assert len(resp2) == 108 and got["install"][0]["cipher"] == CipherKind.SECRETBOX
    (kp,) = installs(new.handle_datagram(resp2, ADDR_R))
    assert kp.cipher == CipherKind.SECRETBOX and peer.state is PeerState.ESTABLISHED


def test_pinned_to_secretbox_we_interoperate_with_the_prototype_from_the_start(prototype):
    new = Engine(_key(), Tunables(handshake_jitter=0.0), suites=S)
    old = Prototype(prototype, new.public_key)
    try:
        peer = new.add_peer(old.public_key, "old", endpoint=ADDR_R)
        (init,) = sends(new.open(peer.id))
        assert len(init.data) == 164
        got = old.call(op="datagram", data=init.data.hex(), addr=list(ADDR_I))
        (resp,) = [bytes.fromhex(x) for x in got["send"]]
        (kp,) = installs(new.handle_datagram(resp, ADDR_R))
        assert kp.cipher == CipherKind.SECRETBOX and peer.state is PeerState.ESTABLISHED
    finally:
        old.close()


# ------------------------------------------------------------------------- downgrades
def _remac(msg: bytes, receiver_pub: bytes) -> bytes:
    """What an on-path attacker can do: mac1 needs only the receiver's public key."""
    body = msg[:-2 * wire.MAC_SIZE]
    return body + mac(mac1_key(receiver_pub), body) + bytes(wire.MAC_SIZE)


def _editions(msg: bytes):
    """Every way to strip or change the offer in an initiation's encrypted payload."""
    init = wire.Initiation.unpack(msg)
    p = init.encrypted_payload
    body = len(p) - wire.AEAD_TAG_SIZE
    out = {}
    for bit in range(16):                             # the offer: its two ciphertext bytes
        q = bytearray(p)
        q[body - 2 + bit // 8] ^= 1 << (bit % 8)
        out["flip offer bit %d" % bit] = bytes(q)
    out["strip the offer"] = p[:body - 2] + p[body:]  # 164 bytes: the prototype's size
    out["strip the offer, keep the tag's end"] = p[:-2]
    return {k: wire.Initiation(init.sender_index, init.ephemeral, init.encrypted_static, v).pack()
            for k, v in out.items()}


def test_a_stripped_or_changed_offer_is_refused():
    i, r, pi, pr, wall = engines(AS, AS)
    wall.advance(0.01)
    (init,) = sends(i.open(pi.id))
    for what, forged in _editions(init.data).items():
        forged = _remac(forged, r.public_key)
        assert CookieChecker(r.public_key, Clock(), 120).check_mac1(forged), what   # the AEAD must refuse it
        before = r.drops["bad_handshake"]
        assert sends(r.handle_datagram(forged, ADDR_I)) == [], what
        assert r.drops["bad_handshake"] == before + 1, what
    assert pr.sessions == [] and r.drops["replayed_initiation"] == 0
    # the genuine one still works afterwards, with the best suite
    (resp,) = sends(r.handle_datagram(init.data, ADDR_I))
    assert installs(i.handle_datagram(resp.data, ADDR_R))[0].cipher == CipherKind.AEGIS256


def test_a_stripped_or_changed_choice_is_refused_and_the_genuine_response_still_completes():
    i, r, pi, pr, wall = engines(AS, AS)
    wall.advance(0.01)
    (init,) = sends(i.open(pi.id))
    (resp,) = sends(r.handle_datagram(init.data, ADDR_I))
    rs = wire.Response.unpack(resp.data)
    p = rs.encrypted_payload
    body = len(p) - wire.AEAD_TAG_SIZE
    forged = {"strip the choice": p[:body - 1] + p[body:]}
    for bit in range(8):
        q = bytearray(p)
        q[body - 1] ^= 1 << bit
        forged["flip choice bit %d" % bit] = bytes(q)
    for what, payload in forged.items():
        msg = _remac(wire.Response(rs.sender_index, rs.receiver_index, rs.ephemeral, payload).pack(),
                     i.public_key)
        before = i.drops["bad_handshake"]
        assert installs(i.handle_datagram(msg, ADDR_R)) == [], what
        assert i.drops["bad_handshake"] == before + 1 and pi.pending is not None, what
    (kp,) = installs(i.handle_datagram(resp.data, ADDR_R))
    assert kp.cipher == CipherKind.AEGIS256 and pi.state is PeerState.ESTABLISHED


def test_a_response_must_pick_a_suite_the_initiator_offered():
    """Even a responder holding the right keys (an authenticated one that
    misbehaves) cannot put the session on a suite the initiator did not offer."""
    priv_i, priv_r = _key(), _key()
    pub_r = crypto.x25519_public(bytes(priv_r))
    msg, st = hs.create_initiation(priv_i, pub_r, 1, bytes(12), bytes(16), suites=S)
    info = hs.consume_initiation(priv_r, msg)
    info.state.offered = wire.suites_mask(AS)        # the responder pretends aegis256 was offered
    resp, _ = hs.create_response(info.state, 2, suite=Suite.AEGIS256)
    with pytest.raises(hs.HandshakeError, match="did not offer"):
        hs.consume_response(st, resp)
    # and the form must match the initiation: an offer gets a choice, none gets none
    msg, st = hs.create_initiation(priv_i, pub_r, 3, bytes(12), bytes(16), suites=None)
    info = hs.consume_initiation(priv_r, msg)
    info.state.offered = wire.suites_mask(S)
    resp, _ = hs.create_response(info.state, 4, suite=Suite.SECRETBOX)
    assert len(resp) == 109
    with pytest.raises(hs.HandshakeError, match="carries a suite choice"):
        hs.consume_response(st, resp)


def test_the_offer_is_bound_into_the_handshake_hash():
    """Someone who substitutes another offer -- here the test itself, holding
    the initiator's keys, builds the same initiation with a different offer --
    gets a response the real initiator cannot open: the response's payload is
    authenticated under the hash that the offer's ciphertext went into."""
    priv_i, priv_r, eph = _key(), _key(), _key()
    pub_r = crypto.x25519_public(bytes(priv_r))
    real, st = hs.create_initiation(priv_i, pub_r, 1, bytes(12), bytes(16), suites=AS,
                                    ephemeral_private=eph)
    other, _ = hs.create_initiation(priv_i, pub_r, 1, bytes(12), bytes(16), suites=S,
                                    ephemeral_private=eph)
    assert real[:40] == other[:40] and real != other    # same ephemeral and static parts
    info = hs.consume_initiation(priv_r, other)
    resp, keys_r = hs.create_response(info.state, 2, suite=Suite.SECRETBOX)
    with pytest.raises(hs.HandshakeError, match="authentication"):
        hs.consume_response(st, resp)
    # while the genuine exchange agrees on the hash and the keys
    info = hs.consume_initiation(priv_r, real)
    resp, keys_r = hs.create_response(info.state, 2, suite=hs.choose_suite(AS, info.offered))
    keys_i = hs.consume_response(st, resp)
    assert keys_i.handshake_hash == keys_r.handshake_hash and keys_i.suite is Suite.AEGIS256
    assert bytes(keys_i.send_key) == bytes(keys_r.recv_key)


# ------------------------------------------------------------------------- key derivation
def _system_libsodium():
    name = ctypes.util.find_library("sodium")
    if name is None:
        pytest.skip("no system libsodium to compare crypto_kdf with")
    so = ctypes.CDLL(name)
    if so.sodium_init() < 0:
        pytest.skip("system libsodium does not initialise")
    return so


def test_kdf_is_libsodiums_crypto_kdf_derive_from_key():
    so = _system_libsodium()
    for _ in range(20):
        key, sid = os.urandom(32), random.getrandbits(64)
        ctx = os.urandom(8)
        out = ctypes.create_string_buffer(32)
        assert so.crypto_kdf_derive_from_key(out, ctypes.c_size_t(32), ctypes.c_uint64(sid), ctx, key) == 0
        assert bytes(crypto.kdf_derive(key, sid, ctx)) == out.raw


def test_aegis_keys_are_derived_and_distinct_from_the_session_keys():
    k1, k2 = bytearray(os.urandom(32)), bytearray(os.urandom(32))
    s, r = transport_keys(CipherKind.AEGIS256, k1, k2)
    assert bytes(s) == bytes(crypto.kdf_derive(k1, int(Suite.AEGIS256), KDF_CONTEXT))
    assert bytes(r) == bytes(crypto.kdf_derive(k2, int(Suite.AEGIS256), KDF_CONTEXT))
    assert bytes(s) != bytes(k1) and bytes(r) != bytes(k2)
    for kind in (CipherKind.SECRETBOX, CipherKind.CHACHA20POLY1305):
        assert transport_keys(kind, k1, k2) == (k1, k2)


# ------------------------------------------------------------------------- configuration
def test_default_suites_follow_libsodiums_aes_hardware_check():
    expect = AS if crypto.aes_hardware() else S
    assert protocols.default_suites() == expect
    assert protocols.configured_suites(None) == expect
    assert protocols.configured_suites(["secretbox", "aegis256"]) == AS   # order: best first
    assert protocols.configured_suites(["secretbox"]) == S
    f = crypto.cpu_features()
    assert crypto.aes_hardware() == bool((f["aesni"] and f["avx"]) or f["armcrypto"])


def test_cpu_features_read_the_same_as_libsodiums_functions_through_cffi():
    """crypto reads the sodium_runtime_has_* checks through ctypes, on first use
    (a cffi cdef at import costs every process pycparser): the same values as
    the functions declared to cffi and called from the same library."""
    import cffi
    from nacl import _sodium
    ffi = cffi.FFI()
    ffi.cdef("int sodium_runtime_has_aesni(void); int sodium_runtime_has_avx(void);"
             "int sodium_runtime_has_pclmul(void); int sodium_runtime_has_armcrypto(void);")
    rt = ffi.dlopen(_sodium.__file__)
    expect = {}
    for name in ("aesni", "avx", "pclmul", "armcrypto"):
        try:
            expect[name] = bool(getattr(rt, "sodium_runtime_has_" + name)())
        except AttributeError:           # not in this build: crypto reads it as False
            expect[name] = False
    assert crypto.cpu_features() == expect
    assert crypto.cpu_features() == expect          # (the second call: the cached library)


def test_a_peer_of_its_own_ciphers_gets_them_and_the_others_keep_the_interfaces():
    t = Tunables(handshake_jitter=0.0)
    clock, wall = Clock(), Clock(1.7e9)
    hub = Engine(_key(), t, clock=clock, wall_clock=wall, suites=AS)
    old, new = (Engine(_key(), t, clock=clock, wall_clock=wall, suites=AS) for _ in range(2))
    p_old = hub.add_peer(old.public_key, "old", endpoint=ADDR_R, suites=S)   # [[peer]] ciphers
    p_new = hub.add_peer(new.public_key, "new", endpoint=("10.0.0.3", 9000))
    for peer, other, addr in ((p_old, old, ADDR_R), (p_new, new, ("10.0.0.3", 9000))):
        other.add_peer(hub.public_key, "hub", endpoint=ADDR_I)
        wall.advance(0.01)
        (init,) = sends(hub.open(peer.id))
        assert len(init.data) == (164 if peer is p_old else 166)
        (resp,) = sends(other.handle_datagram(init.data, ADDR_I))
        (kp,) = installs(hub.handle_datagram(resp.data, addr))
        assert kp.cipher == (CipherKind.SECRETBOX if peer is p_old else CipherKind.AEGIS256)
    with pytest.raises(ValueError, match="only a Phantom peer"):
        hub.add_peer(crypto.x25519_public(bytes(_key())), protocol="wireguard", suites=S)


def _cfg(tmp_path, iface="", peer=""):
    from phantom.node.config import parse_daemon_args
    key = base64.b64encode(crypto.x25519_public(bytes(_key()))).decode()
    f = tmp_path / "p.toml"
    f.write_text('[interface]\n%s\n[[peer]]\nname = "b"\npublic_key = "%s"\n%s\n' % (iface, key, peer))
    return lambda *flags: parse_daemon_args(["--config", str(f), *flags])


def test_ciphers_settings_in_the_file_and_on_the_command_line(tmp_path):
    from phantom.errors import ConfigError
    s = _cfg(tmp_path)()
    assert s.ciphers is None and s.peers[0].ciphers is None
    s = _cfg(tmp_path, 'ciphers = ["secretbox", "AEGIS256"]', 'ciphers = ["secretbox"]')()
    assert s.ciphers == ["secretbox", "aegis256"] and s.peers[0].ciphers == ["secretbox"]
    assert _cfg(tmp_path)("--ciphers", "aegis256,secretbox").ciphers == ["aegis256", "secretbox"]
    bad = [('ciphers = []', "", "interface.ciphers", "empty"),
           ('ciphers = ["aes-gcm"]', "", "interface.ciphers[0]", "not a cipher"),
           ('ciphers = ["secretbox", "secretbox"]', "", "interface.ciphers[1]", "twice"),
           ('ciphers = "aegis256"', "", None, None),                      # one name: accepted
           ("", 'ciphers = ["secretbx"]', "peer[0].ciphers[0]", "did you mean 'secretbox'"),
           ("", 'protocol = "wireguard"\nciphers = ["secretbox"]', "peer[0].ciphers", "fixed")]
    for iface, peer, key, msg in bad:
        if key is None:
            assert _cfg(tmp_path, iface, peer)().ciphers == ["aegis256"]
            continue
        with pytest.raises(ConfigError) as e:
            _cfg(tmp_path, iface, peer)()
        assert e.value.key == key and msg in str(e.value), (iface, peer, str(e.value))
    with pytest.raises(ConfigError, match="--ciphers"):
        _cfg(tmp_path)("--ciphers", "rot13")
