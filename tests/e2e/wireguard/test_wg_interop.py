"""The sans-IO WireGuard handshake and cipher against a real wireguard-go.

No phantomd here: the test itself is the Phantom side.  It runs
:mod:`phantom.protocols.wireguard.handshake` and :mod:`phantom.dataplane.ciphers`
over a UDP socket in namespace a; Debian's wireguard-go runs in namespace b
with the kernel's network stack behind it, which answers the ICMP echoes we
seal.  Each side initiates in turn, with and without a preshared key; a wrong
preshared key and a wrong static key get no session; and our cookie reply
makes wireguard-go come back with a valid mac2.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from phantom import crypto
from phantom.protocols import tai64n
from phantom.protocols.phantom.handshake import HandshakeError
from phantom.protocols.wireguard import handshake as wh
from phantom.protocols.wireguard.cookie import WgCookieChecker, WgCookieGenerator
from phantom.dataplane.ciphers import CipherKind, inner_length, open_packet, seal_packet
from phantom.wire import wireguard as wgw

from phantomlab.packets import icmp_echo, parse_echo
from phantomlab.wggo import WG_PORT, keypair

pytestmark = pytest.mark.netns

OUR_PORT = 9000
CHACHA = CipherKind.CHACHA20POLY1305


def _recv(sock: socket.socket, timeout: float, want=None):
    """Next datagram (data, addr) for which ``want(data)`` holds, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            return None
        data, addr = sock.recvfrom(65536)
        if want is None or want(data):
            return data, addr


def _ours(two_hosts):
    s = two_hosts.a.udp_socket(bind=("0.0.0.0", OUR_PORT))
    return s


def _initiate(sock, wg, our_priv, psk=None, index=0x1234):
    """Our initiation to wireguard-go; (session keys or None, response bytes or None)."""
    gen = WgCookieGenerator(wg.public, time.monotonic)
    msg, st = wh.create_initiation(our_priv, wg.public, index, tai64n.now(), psk, gen)
    assert len(msg) == wgw.INITIATION_SIZE == 148
    sock.sendto(msg, (wg.host.ip, WG_PORT))
    got = _recv(sock, 3.0, lambda d: d[0] == 2)
    if got is None:
        return None, None
    resp, _ = got
    assert len(resp) == wgw.RESPONSE_SIZE == 92
    checker = WgCookieChecker(crypto.x25519_public(our_priv), time.monotonic)
    assert checker.check_mac1(resp), "wireguard-go's mac1 on its response to us"
    return wh.consume_response(st, resp), resp


def _echo_roundtrip(sock, wg, keys, src, dst, seq):
    req = icmp_echo(src, dst, 0x77, seq)
    dgram = seal_packet(CHACHA, keys.send_key, keys.remote_index, seq, req, mtu=1420)
    assert dgram[0] == 4 and len(dgram) % 16 == 0 and req not in dgram
    sock.sendto(dgram, (wg.host.ip, WG_PORT))
    got = _recv(sock, 3.0, lambda d: d[0] == 4 and len(d) > 32)
    assert got is not None, "no echo reply through wireguard-go (%s)" % wg.log_tail()
    opened = open_packet(CHACHA, keys.recv_key, got[0])
    assert opened is not None, "reply does not open with our receive key"
    index, _counter, plain = opened
    assert index == keys.local_index
    inner = plain[:inner_length(plain)]
    assert parse_echo(inner) == (dst, src, 0 if ":" not in src else 129, 0x77, seq)


@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
def test_we_initiate_and_ping_through_wireguard_go(two_hosts, wg_factory, with_psk):
    wg_priv, _ = keypair()
    our_priv, our_pub = keypair()
    psk = crypto.random_bytes(32) if with_psk else None
    wg = wg_factory(two_hosts.b, index=2, private=wg_priv)
    wg.set_peer(our_pub, allowed_ips=["10.99.0.1/32", "fd99::1/128"], preshared_key=psk)
    sock = _ours(two_hosts)
    try:
        keys, _ = _initiate(sock, wg, our_priv, psk)
        assert keys is not None, "wireguard-go did not answer (%s)" % wg.log_tail()
        _echo_roundtrip(sock, wg, keys, "10.99.0.1", wg.ip4, 1)
        _echo_roundtrip(sock, wg, keys, "fd99::1", wg.ip6, 2)
        assert wg.latest_handshake(our_pub) > 0
    finally:
        sock.close()


def test_wrong_preshared_key_gets_no_session(two_hosts, wg_factory):
    wg_priv, _ = keypair()
    our_priv, our_pub = keypair()
    wg = wg_factory(two_hosts.b, index=2, private=wg_priv)
    wg.set_peer(our_pub, allowed_ips=["10.99.0.1/32"], preshared_key=crypto.random_bytes(32))
    sock = _ours(two_hosts)
    try:
        # wireguard-go answers (it cannot tell), but the response does not verify.
        gen = WgCookieGenerator(wg.public, time.monotonic)
        msg, st = wh.create_initiation(our_priv, wg.public, 5, tai64n.now(), crypto.random_bytes(32), gen)
        sock.sendto(msg, (wg.host.ip, WG_PORT))
        got = _recv(sock, 3.0, lambda d: d[0] == 2)
        assert got is not None
        with pytest.raises(HandshakeError):
            wh.consume_response(st, got[0])
        # and without any preshared key either (after wireguard-go's 20 ms
        # per-peer initiation rate limit)
        time.sleep(0.1)
        msg, st = wh.create_initiation(our_priv, wg.public, 6, tai64n.now(), None, gen)
        sock.sendto(msg, (wg.host.ip, WG_PORT))
        got = _recv(sock, 3.0, lambda d: d[0] == 2)
        assert got is not None
        with pytest.raises(HandshakeError):
            wh.consume_response(st, got[0])
    finally:
        sock.close()
    assert wg.latest_handshake(our_pub) == 0


def test_unknown_static_key_gets_no_answer(two_hosts, wg_factory):
    wg_priv, _ = keypair()
    _, our_pub = keypair()
    stranger, _ = keypair()
    wg = wg_factory(two_hosts.b, index=2, private=wg_priv)
    wg.set_peer(our_pub, allowed_ips=["10.99.0.1/32"])
    sock = _ours(two_hosts)
    try:
        keys, resp = _initiate(sock, wg, stranger)
        assert keys is None and resp is None
    finally:
        sock.close()


@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
def test_wireguard_go_initiates_and_we_answer_its_pings(two_hosts, wg_factory, with_psk):
    wg_priv, wg_pub = keypair()
    our_priv, our_pub = keypair()
    psk = crypto.random_bytes(32) if with_psk else None
    wg = wg_factory(two_hosts.b, index=2, private=wg_priv)
    wg.set_peer(our_pub, allowed_ips=["10.99.0.1/32"], endpoint="%s:%d" % (two_hosts.a.ip, OUR_PORT),
                preshared_key=psk)
    sock = _ours(two_hosts)
    checker = WgCookieChecker(our_pub, time.monotonic)
    gen = WgCookieGenerator(wg_pub, time.monotonic)
    ping = two_hosts.b.popen(["ping", "-c", "3", "-i", "0.3", "-W", "2", "10.99.0.1"])
    try:
        got = _recv(sock, 5.0, lambda d: d[0] == 1)
        assert got is not None, "no initiation from wireguard-go (%s)" % wg.log_tail()
        init, addr = got
        assert len(init) == 148 and checker.check_mac1(init)
        assert init[-16:] == bytes(16), "no cookie was given, so mac2 is zero"
        info = wh.consume_initiation(our_priv, init)
        assert info.remote_static == wg_pub
        resp, keys = wh.create_response(info.state, 0xBEEF, psk, gen)
        assert len(resp) == 92
        sock.sendto(resp, addr)
        answered = 0
        deadline = time.monotonic() + 6
        while answered < 3 and time.monotonic() < deadline:
            got = _recv(sock, 2.0, lambda d: d[0] == 4)
            if got is None:
                break
            opened = open_packet(CHACHA, keys.recv_key, got[0])
            assert opened is not None and opened[0] == 0xBEEF
            plain = opened[2]
            if not plain:
                continue                       # a keepalive
            inner = plain[:inner_length(plain)]
            src, dst, t, ident, seq = parse_echo(inner)
            assert (src, dst, t) == (wg.ip4, "10.99.0.1", 8)
            reply = icmp_echo("10.99.0.1", wg.ip4, ident, seq, inner[28:], reply=True)
            sock.sendto(seal_packet(CHACHA, keys.send_key, keys.remote_index, answered, reply, 1420), addr)
            answered += 1
        assert answered == 3
        assert ping.wait(10) == 0, "ping in b did not get our replies"
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
        sock.close()


def test_our_cookie_reply_makes_wireguard_go_send_mac2(two_hosts, wg_factory):
    """Under load we answer with a cookie reply; wireguard-go's retry (after
    REKEY_TIMEOUT, 5 s) carries a mac2 that our checker accepts."""
    wg_priv, wg_pub = keypair()
    our_priv, our_pub = keypair()
    wg = wg_factory(two_hosts.b, index=2, private=wg_priv)
    wg.set_peer(our_pub, allowed_ips=["10.99.0.1/32"], endpoint="%s:%d" % (two_hosts.a.ip, OUR_PORT))
    sock = _ours(two_hosts)
    checker = WgCookieChecker(our_pub, time.monotonic)
    ping = two_hosts.b.popen(["ping", "-c", "10", "-i", "1", "-W", "1", "10.99.0.1"])
    try:
        got = _recv(sock, 5.0, lambda d: d[0] == 1)
        assert got is not None
        init, addr = got
        assert not checker.check_mac2(init, addr)
        sender = wgw.Initiation.unpack(init).sender_index
        reply = checker.create_reply(init, sender, addr)
        assert len(reply) == 64 and reply[0] == 3
        sock.sendto(reply, addr)
        got = _recv(sock, 8.0, lambda d: d[0] == 1)
        assert got is not None, "wireguard-go did not retry"
        retry, addr2 = got
        assert retry[-16:] != bytes(16)
        assert checker.check_mac1(retry) and checker.check_mac2(retry, addr2)
        # a mac2 is bound to the source address
        assert not checker.check_mac2(retry, (addr2[0], addr2[1] + 1))
    finally:
        ping.kill()
        ping.wait()
        sock.close()
