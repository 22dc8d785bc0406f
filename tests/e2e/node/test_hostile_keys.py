"""Hostile public keys: our own key as a peer, and small-order Curve25519
points, refused wherever a key enters (key text, config, POST /open, the
engine, directory records) with an error naming the key, before anything is
opened; and what an unknown key learns under load (a cookie, nothing more)."""

from __future__ import annotations

import base64

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.config import ConfigError, check_own_key, parse_daemon_args
from phantom.control.engine import Engine
from phantom.control.keys import KeyFormatError, decode_public_key
from phantomlab.netns import phantomd_command
from phantomlab.nodes import make_node, mesh
from phantomlab.templates import UDP_PORT, peer_entry, write_config

# Every small-order encoding libsodium knows, and each with the top bit set
# (X25519 ignores it, so those are the same points).
SMALL_ORDER = [bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",   # 0
    "0100000000000000000000000000000000000000000000000000000000000000",   # 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",   # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",   # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",   # p - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",   # p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",   # p + 1
)]
SMALL_ORDER += [k[:31] + bytes([k[31] | 0x80]) for k in SMALL_ORDER]
LOW_ORDER_IDS = ["zero", "one", "order8a", "order8b", "p-1", "p", "p+1"]
LOW_ORDER_IDS += [i + "|hibit" for i in LOW_ORDER_IDS]


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


# ---------------------------------------------------------------- unit level
@pytest.mark.parametrize("key", SMALL_ORDER, ids=LOW_ORDER_IDS)
def test_small_order_keys_are_refused_at_parse_time(key):
    assert crypto.is_small_order(key)
    with pytest.raises(KeyFormatError):
        decode_public_key(b64(key))


@pytest.mark.parametrize("key", SMALL_ORDER, ids=LOW_ORDER_IDS)
def test_libsodium_itself_refuses_every_listed_point(key):
    """The trial Diffie-Hellman would catch them even without the list."""
    with pytest.raises(crypto.CryptoError):
        crypto.x25519(crypto.x25519_private(), key)


def test_real_keys_are_not_small_order():
    for _ in range(200):
        pub = crypto.x25519_public(crypto.x25519_private())
        assert not crypto.is_small_order(pub)
        assert decode_public_key(b64(pub)) == pub


@pytest.mark.parametrize("key", SMALL_ORDER, ids=LOW_ORDER_IDS)
def test_engine_refuses_small_order_peers(key):
    e = Engine(bytearray(crypto.x25519_private()), Tunables())
    with pytest.raises(ValueError):
        e.add_peer(key, "bad")
    assert e.peers == {}


@pytest.mark.parametrize("key", SMALL_ORDER[1:], ids=LOW_ORDER_IDS[1:])
def test_config_refuses_small_order_peer_key(tmp_path, key):
    cfg = tmp_path / "phantom.toml"
    cfg.write_text('[interface]\nstate_dir = "%s"\n\n[[peer]]\npublic_key = "%s"\n' % (tmp_path, b64(key)))
    with pytest.raises(ConfigError) as err:
        parse_daemon_args(["--config", str(cfg)])
    assert err.value.key == "peer[0].public_key"
    assert "small-order" in str(err.value)


def test_config_refuses_our_own_key(tmp_path):
    priv = crypto.x25519_private()
    own = crypto.x25519_public(priv)
    other = crypto.x25519_public(crypto.x25519_private())
    cfg = tmp_path / "phantom.toml"
    cfg.write_text('[interface]\nstate_dir = "%s"\n\n[[peer]]\npublic_key = "%s"\n\n'
                   '[[peer]]\npublic_key = "%s"\n' % (tmp_path, b64(other), b64(own)))
    settings = parse_daemon_args(["--config", str(cfg)])
    with pytest.raises(ConfigError) as err:
        check_own_key(settings, own)
    assert err.value.key == "peer[1].public_key" and "own public key" in str(err.value)
    check_own_key(settings, crypto.x25519_public(crypto.x25519_private()))   # a stranger's: fine


def test_directory_record_with_small_order_key_is_refused():
    from phantom import directory as d
    signer = d.NodeSigner(bytearray(crypto.x25519_private()))
    good = d.make_record(signer, "evil", [], [], seq=1, expires=2 ** 40)
    d.parse_record(good, now=1.7e9)                       # the untouched record parses
    for key in SMALL_ORDER[1:]:
        doc = dict(good, public_key=b64(key))
        with pytest.raises(d.RecordError) as err:
            d.parse_record(doc, now=1.7e9)
        assert "small-order" in str(err.value)


def test_unknown_key_under_load_gets_a_cookie_reply_and_nothing_else():
    """What the README's security model says: under load a sender that knows
    our public key gets a cookie reply before its static key is decrypted;
    with a valid cookie its initiation is still dropped as unknown_key."""
    t = Tunables(handshake_jitter=0.0, under_load_initiations=0)
    b = Engine(bytearray(crypto.x25519_private()), t)
    stranger = Engine(bytearray(crypto.x25519_private()), t)
    p = stranger.add_peer(b.public_key, "b", endpoint=("10.0.0.2", 9000))
    addr = ("10.0.0.9", 9000)
    (init,) = [x for x in stranger.open(p.id) if isinstance(x, A.SendDatagram)]
    (reply,) = [x for x in b.handle_datagram(init.data, addr) if isinstance(x, A.SendDatagram)]
    assert reply.data[0] == 3, "a cookie reply"
    assert b.drops["unknown_key"] == 0, "the static key was not even decrypted"
    assert stranger.handle_datagram(reply.data, ("10.0.0.2", 9000)) == []
    p.pending = None
    (again,) = [x for x in stranger._send_initiation(p) if isinstance(x, A.SendDatagram)]
    assert b.handle_datagram(again.data, addr) == []
    assert b.drops["unknown_key"] == 1


# ------------------------------------------------------------------ end to end
def _run_phantomd(host, node, timeout=20):
    cp = host.run(phantomd_command() + ["--config", str(node.config)], check=False, timeout=timeout)
    return cp.returncode, cp.stderr if isinstance(cp.stderr, str) else cp.stderr.decode()


@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_own_key_in_config_exits_2_with_nothing_opened(two_hosts, tmp_path, datapath):
    a = make_node(tmp_path, "n1", 1, two_hosts.a)
    own = {"name": "me", "public_key": a.pub, "allowed_ips": ["10.99.0.9/32"]}
    write_config(a, mode="tun", peers=[own], extra={"device": "phown0"})
    argv = phantomd_command() + ["--config", str(a.config)] + (["--fast"] if datapath == "fast" else [])
    cp = two_hosts.a.run(argv, check=False, timeout=20)
    err = cp.stderr if isinstance(cp.stderr, str) else cp.stderr.decode()
    assert cp.returncode == 2, (cp.returncode, err)
    assert "peer[0].public_key" in err and "own public key" in err
    assert "Traceback" not in err
    assert two_hosts.a.run(["ip", "link", "show", "phown0"], check=False).returncode != 0, \
        "no device may be created"
    assert not (a.state_dir / "token").exists(), "no API token may be created"


@pytest.mark.netns
@pytest.mark.parametrize("key", SMALL_ORDER[1:7], ids=LOW_ORDER_IDS[1:7])
def test_small_order_key_in_config_exits_2(two_hosts, tmp_path, key):
    a = make_node(tmp_path, "n1", 1, two_hosts.a)
    write_config(a, mode="test", peers=[{"name": "evil", "public_key": b64(key)}])
    code, err = _run_phantomd(two_hosts.a, a)
    assert code == 2, (code, err)
    assert "peer[0].public_key" in err and "small-order" in err and "Traceback" not in err


@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_post_open_refuses_own_and_small_order_keys(two_hosts, daemon_factory, tmp_path, datapath):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], mode="test", datapath=datapath)
    before = [p["name"] for p in a.status()["peers"]]
    path = "/open/%s:%d" % (b.host.ip, UDP_PORT + 1)
    for key in [a.pub] + [b64(k) for k in SMALL_ORDER[1:]]:
        code, body = a.api("POST", path, {"public_key": key})
        assert code == 400, (key, code, body)
        assert "public_key" in body["error"], body
    assert [p["name"] for p in a.status()["peers"]] == before, "no peer may be left behind"
    # and the daemon is fine: the real peer still opens
    code, body = a.api("POST", "/open/n2", timeout=30)
    assert code == 200, body
