"""`phantom verify` (phantomlab/verify.py): the randomness test on its own, then
end to end: "no plaintext" on a working tunnel, and a deliberately
unencrypted UDP relay caught."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from phantom import crypto
from phantomlab.verify import classify, looks_random
from phantomlab.nodes import mesh
from phantomlab.templates import UDP_PORT
from tests.support import REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO))


# --- the randomness test -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [16, 32, 64, 200, 1400])
def test_random_bytes_look_random(n):
    assert sum(bool(looks_random(crypto.random_bytes(n))) for _ in range(200)) >= 198


@pytest.mark.parametrize("text", [
    b"PHANTOM-VERIFY-" + b"0123456789abcdef" * 2,
    b"GET / HTTP/1.1\r\nHost: example\r\nUser-Agent: curl/8\r\n\r\n" * 4,
    bytes(64), bytes(range(64)) * 20,
    b"The quick brown fox jumps over the lazy dog. " * 30,
])
def test_plaintext_does_not_look_random(text):
    assert looks_random(text) is False


def test_short_payloads_are_not_judged():
    assert looks_random(b"abc") is None


def test_classify_takes_the_ciphertext_of_each_message_type():
    body = crypto.random_bytes(60)
    kind, part = classify(b"\x04\0\0\0" + bytes(12) + body)
    assert kind == "transport" and part == body
    assert classify(b"\x01\0\0\0" + bytes(144))[0] == "handshake"
    assert classify(b"\x01\0\0\0" + bytes(10))[0] == "other"       # wrong size
    assert classify(b"hello, world")[0] == "other"


# --- end to end ---------------------------------------------------------------------------------
def verify(host, *args, timeout=40):
    cmd = [sys.executable, "-m", "phantom.cli", "verify", *args]
    return host.run(["env", "PYTHONPATH=" + ENV["PYTHONPATH"], *cmd], check=False, timeout=timeout)


@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_verify_reports_no_plaintext_on_a_working_tunnel(two_hosts, daemon_factory, tmp_path,
                                                         datapath):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath)
    assert a.host.ns.ping(b.tun4, timeout=10)
    cp = verify(a.host, "n2", "--seconds", "2", "--count", "40")
    print(cp.stdout, cp.stderr)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "plaintext: none" in cp.stdout and "verdict: no plaintext" in cp.stdout
    assert "transport" in cp.stdout
    cp = verify(a.host, "n2", "--seconds", "2", "--count", "40", "--json")
    import json
    r = json.loads(cp.stdout)
    assert r["verdict"] == "no plaintext" and r["plaintext_frames"] == 0
    assert r["kinds"].get("transport", 0) >= 20 and r["random_share"] >= 0.95, r


RELAY = textwrap.dedent("""
    import socket, sys, time
    inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); inner.bind(("127.0.0.1", 7777))
    outer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); outer.bind(("0.0.0.0", %d))
    print("ready", flush=True)
    inner.settimeout(30)
    while True:
        data, _ = inner.recvfrom(65535)
        outer.sendto(data, (sys.argv[1], %d))     # a 'tunnel' that forgot to encrypt
""" % (UDP_PORT, UDP_PORT))


@pytest.mark.netns
def test_verify_catches_an_unencrypted_udp_stream(two_hosts):
    relay = two_hosts.a.ns.popen([sys.executable, "-c", RELAY, two_hosts.b.ip],
                                 stdout=__import__("subprocess").PIPE, text=True)
    try:
        assert relay.stdout.readline().strip() == "ready"
        cp = verify(two_hosts.a, "--listen-port", str(UDP_PORT), "--send-to", "127.0.0.1:7777",
                    "--seconds", "1.5", "--count", "20", "--interface", "eth0")
        print(cp.stdout, cp.stderr)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "PLAINTEXT: the marker crossed the wire in" in cp.stdout
        assert "verdict: plaintext" in cp.stdout
        assert "random-looking payloads: 0 of 20" in cp.stdout
    finally:
        relay.kill()
        relay.wait(5)


@pytest.mark.netns
def test_verify_without_traffic_is_inconclusive_not_a_pass(two_hosts):
    cp = verify(two_hosts.a, "--listen-port", str(UDP_PORT), "--send-to", "127.0.0.1:7777",
                "--seconds", "0.5", "--count", "3", "--interface", "eth0")
    assert cp.returncode == 3, cp.stdout + cp.stderr
    assert "inconclusive" in cp.stdout


@pytest.mark.netns
def test_verify_in_test_mode_sends_through_the_test_port(two_hosts, daemon_factory, tmp_path):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], mode="test")
    cp = verify(a.host, "n2", "--seconds", "1.5", "--count", "20", "--json")
    import json
    r = json.loads(cp.stdout)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert r["sent_to"] == "127.0.0.1:8000" and r["verdict"] == "no plaintext"
    assert r["kinds"].get("transport", 0) >= 20 and r["random_share"] >= 0.95
