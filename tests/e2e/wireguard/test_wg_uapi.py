"""WireGuard's UAPI served by phantomd: the sans-IO request/answer code, and
stock `wg show` / `wg set` against a running phantomd (netns)."""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import shutil
import socket

import pytest

from phantom import crypto
from phantom.keys import encode_key
from phantom.node.uapi import (SOCKET_DIR, PeerView, UapiError, UapiServer, format_get, parse_set)
from phantomlab.nodes import make_node, start
from phantomlab.templates import UDP_PORT, write_config
from phantomlab.poll import wait_for
from phantomlab.wggo import WG_PORT, keypair

K1, K2 = bytes(range(32)), bytes(range(1, 33))


def test_parse_set_like_wg_sends_it():
    req = parse_set(["private_key=" + K1.hex(), "listen_port=51820", "replace_peers=true",
                     "public_key=" + K2.hex(), "preshared_key=" + K1.hex(), "endpoint=[fd00::1]:51820",
                     "persistent_keepalive_interval=25", "replace_allowed_ips=true",
                     "allowed_ip=10.0.0.2/32", "allowed_ip=fd00::2/128", "protocol_version=1",
                     "public_key=" + K1.hex(), "remove=true"])
    assert req.private_key == K1 and req.listen_port == 51820 and req.replace_peers
    a, b = req.peers
    assert a.public_key == K2 and a.preshared_key == K1 and a.endpoint == ("fd00::1", 51820)
    assert a.persistent_keepalive == 25 and a.replace_allowed_ips
    assert a.allowed_ips == [ipaddress.ip_network("10.0.0.2/32"), ipaddress.ip_network("fd00::2/128")]
    assert b.public_key == K1 and b.remove
    assert parse_set(["public_key=" + K2.hex(), "preshared_key=" + bytes(32).hex()]).peers[0].preshared_key == b""


@pytest.mark.parametrize("lines", [["bogus=1"], ["public_key=zz"], ["public_key=" + K1.hex(), "remove=yes"],
                                   ["listen_port=70000"], ["public_key=" + K1.hex(), "endpoint=host:1"],
                                   ["public_key=" + K1.hex(), "protocol_version=2"], ["nokey"]])
def test_parse_set_refuses_what_it_does_not_know(lines):
    with pytest.raises(UapiError) as e:
        parse_set(lines)
    assert e.value.code == errno.EINVAL


def test_format_get_and_the_errno_line():
    text = format_get(K1, 9000, [PeerView(K2, None, ("10.0.0.2", 51820), 1700000000.25, 5, 7, 25,
                                          ["10.0.0.2/32"])])
    assert text.splitlines() == [
        "private_key=" + K1.hex(), "listen_port=9000", "public_key=" + K2.hex(),
        "preshared_key=" + bytes(32).hex(), "protocol_version=1", "endpoint=10.0.0.2:51820",
        "last_handshake_time_sec=1700000000", "last_handshake_time_nsec=250000000", "tx_bytes=7",
        "rx_bytes=5", "persistent_keepalive_interval=25", "allowed_ip=10.0.0.2/32"]

    class Backend:
        def get(self):
            return "listen_port=1\n"

        def set(self, req):
            raise UapiError(errno.EPERM, "no")

    srv = UapiServer(Backend(), "x", directory="/nonexistent")
    assert srv.handle("get=1", []) == "listen_port=1\nerrno=0\n\n"
    assert srv.handle("set=1", ["listen_port=2"]) == "errno=-1\n\n"
    assert srv.handle("set=1", ["bogus=1"]) == "errno=-22\n\n"
    assert srv.handle("frob=1", []) == "errno=-22\n\n"


# ------------------------------------------------------------------ against the wg tool
UAPI_DEVICE = "phu%d" % (os.getpid() % 100000)


@pytest.fixture(autouse=True)
def _remove_the_uapi_socket():
    """phantomd makes its socket while root and cannot remove it once it runs
    as nobody (docs/wireguard.md): the test that started it does, after it."""
    yield
    SOCKET_DIR.joinpath(UAPI_DEVICE + ".sock").unlink(missing_ok=True)


def _uapi_node(tmp_path, host, peers):
    node = make_node(tmp_path, "ph", 1, host)
    dev = UAPI_DEVICE
    write_config(node, mode="tun", peers=peers, extra={"uapi": True, "device": dev})
    return node, dev


def _wg_show_interfaces_of(host, dev: str) -> list[str]:
    """`wg show interfaces` as it lists phantomd's device, touching no other socket.

    The stock tool connects to every socket in /var/run/wireguard and unlinks
    each one that refuses -- which another test's wireguard-go socket does
    between its bind() and listen().  So the tool runs in a mount namespace of
    its own whose /var/run/wireguard holds only a hard link to our socket."""
    private = SOCKET_DIR.parent / ("phantom-wgshow-%d" % os.getpid())
    private.mkdir(mode=0o700)
    try:
        os.link(SOCKET_DIR / (dev + ".sock"), private / (dev + ".sock"))
        script = 'mount --bind "$1" "$2" && exec wg show interfaces'
        out = host.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        "sh", str(private), str(SOCKET_DIR)]).stdout
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return out.split()


@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_wg_show_and_wg_set_work_against_phantomd(two_hosts, tmp_path, daemon_factory, wg_factory,
                                                  datapath):
    a, b = two_hosts.a, two_hosts.b
    node, dev = _uapi_node(tmp_path, a, [])                  # no peers in the file at all
    start(daemon_factory, node, datapath)
    wg_priv, wg_pub = keypair()
    wg = wg_factory(b, index=2, private=wg_priv)
    wg.set_peer(base64.b64decode(node.pub), allowed_ips=["10.99.0.1/32", "fd99::1/128"])
    # the stock tool configures phantomd's WireGuard peer
    psk = tmp_path / "psk"
    psk.write_text(encode_key(crypto.random_bytes(32)) + "\n")
    os.chmod(psk, 0o600)
    a.run(["wg", "set", dev, "peer", encode_key(wg_pub), "endpoint", "%s:%d" % (b.ip, WG_PORT),
           "allowed-ips", "%s/32,%s/128" % (wg.ip4, wg.ip6), "preshared-key", str(psk)])
    wg.set_peer(base64.b64decode(node.pub), preshared_key=base64.b64decode(psk.read_text()))
    assert a.ping(wg.ip4, timeout=10), "no tunnel to the peer added with wg set"
    assert a.ping(wg.ip6, timeout=5)
    show = a.run(["wg", "show", dev]).stdout
    assert "interface: %s" % dev in show and "public key: %s" % node.pub in show
    assert "listening port: %d" % UDP_PORT in show
    assert "peer: %s" % encode_key(wg_pub) in show and "preshared key: (hidden)" in show
    assert "endpoint: %s:%d" % (b.ip, WG_PORT) in show and "latest handshake:" in show
    assert "transfer:" in show and "allowed ips: %s/32, %s/128" % (wg.ip4, wg.ip6) in show
    # listed, and a socket of another test's that is not listening yet is left alone
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stranger_path = SOCKET_DIR / ("phx%d.sock" % (os.getpid() % 100000))
    try:
        stranger.bind(str(stranger_path))
        assert _wg_show_interfaces_of(a, dev) == [dev]
        assert stranger_path.exists(), "wg show interfaces removed another test's socket"
    finally:
        stranger.close()
        stranger_path.unlink(missing_ok=True)
    dump = a.run(["wg", "show", dev, "dump"]).stdout.splitlines()
    peer_row = dump[1].split("\t")
    assert peer_row[0] == encode_key(wg_pub) and int(peer_row[4]) > 0 and int(peer_row[5]) > 0
    code, peers = node.api("GET", "/peers")
    (p,) = peers if isinstance(peers, list) else peers["peers"]
    assert p["protocol"] == "wireguard" and p["state"] == "established"
    # keepalive and allowed IPs changed live; then the peer removed
    a.run(["wg", "set", dev, "peer", encode_key(wg_pub), "persistent-keepalive", "1"])
    assert "persistent keepalive: every 1 second" in a.run(["wg", "show", dev]).stdout
    a.run(["wg", "set", dev, "peer", encode_key(wg_pub), "allowed-ips", "%s/32" % wg.ip4])
    assert a.ping(wg.ip4, timeout=5) and not a.ping(wg.ip6, timeout=2)
    r = a.run(["wg", "set", dev, "listen-port", "1234"], check=False)
    assert r.returncode != 0                                  # refused, the daemon runs on
    a.run(["wg", "set", dev, "peer", encode_key(wg_pub), "remove"])
    assert "peer:" not in a.run(["wg", "show", dev]).stdout
    code, peers = node.api("GET", "/peers")
    assert (peers if isinstance(peers, list) else peers["peers"]) == []
    assert not a.ping(wg.ip4, timeout=2)
