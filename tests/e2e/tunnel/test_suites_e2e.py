"""Negotiated transport suites end to end (issue 23, item 1): real phantomd
processes in network namespaces, on both data paths.

* two daemons with the default ciphers negotiate the best suite both offer
  (aegis256 on a CPU with AES instructions, else secretbox) and carry ping
  (IPv4 and IPv6) and a short iperf3; the capture shows the 166/109-byte
  handshake, AEGIS-256's 48-byte overhead per packet and no plaintext;
  /peers, /status and /metrics say which suite;
* one daemon pinned to secretbox (``[interface] ciphers``) and one not
  negotiate secretbox, whichever initiates;
* a daemon of the prototype's code (the commit before suites, from git)
  and today's: secretbox, once the old one has initiated, or at once when
  today's names ``ciphers = ["secretbox"]`` for that peer.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import time

import pytest

from phantom import crypto
from phantomlab.nodes import make_node, start_all
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, HTTP_PORT, peer_entry, write_config

from tests.unit.protocols.test_suites import PROTOTYPE_COMMIT, REPO, prototype  # noqa: F401  (the git fixture)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

BEST = "aegis256" if crypto.aes_hardware() else "secretbox"
MARKER = b"SUITES-PLAINTEXT-" + crypto.random_bytes(8).hex().encode()
PAIRS = [("reference", "reference"), ("fast", "fast"), ("fast", "reference")]


def pair(tmp_path, daemon_factory, hosts, datapaths, *, ciphers=(None, None), peer_ciphers=(None, None),
         start_b=True, tunables=(None, None)):
    a = make_node(tmp_path, "n1", 1, hosts.a)
    b = make_node(tmp_path, "n2", 2, hosts.b)
    for me, other, ci, pci, tun in ((a, b, ciphers[0], peer_ciphers[0], tunables[0]),
                                    (b, a, ciphers[1], peer_ciphers[1], tunables[1])):
        entry = peer_entry(other, mode="tun")
        if pci is not None:
            entry["ciphers"] = pci
        write_config(me, mode="tun", peers=[entry], extra={"ciphers": ci} if ci is not None else None,
                     tunables=tun)
    # together: their start-ups overlap
    start_all(daemon_factory, [a, b] if start_b else [a], datapaths[:2] if start_b else datapaths[:1])
    return a, b


def iperf(client, server):
    srv = server.host.popen(["iperf3", "-s", "-B", server.tun4, "-p", "5231"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            # what is checked is > 1 MB carried: 8 MiB as fast as they go (-n),
            # not a fixed time (-t), which carried 100 MB and more
            out = client.host.run(["iperf3", "-c", server.tun4, "-p", "5231", "-n", str(8 << 20), "-J"],
                                  check=False, timeout=30)
            try:
                res = json.loads(out.stdout)
            except ValueError:
                res = {"error": "no JSON"}
            if (out.returncode == 0 and "error" not in res) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "error" not in res, out.stdout + out.stderr
        return res["end"]["sum_received"]["bytes"]
    finally:
        srv.kill()
        srv.wait(5)


def send_marked(src, dst, size=100, count=3, port=7231):
    s = src.host.ns.udp_socket()
    try:
        for _ in range(count):
            s.sendto((MARKER * (size // len(MARKER) + 1))[:size], (dst.tun4, port))
    finally:
        s.close()


def tunnel_datagrams(cap):
    return [u.payload for u in cap.udp() if u.sport == 9000 or u.dport == 9000]


_HEAD = struct.Struct("<B3sIQ")     # a transport packet: type 4, 3 reserved zero bytes, index, counter


def transport_packets_of_size(d: bytes, size: int) -> int:
    """How many ``size``-byte transport packets the captured datagram ``d``
    carries: 1 for one such packet, k for a UDP GSO message of the fast path
    whose run is k of them (equal segments; the run's last packet may be
    shorter, so a smaller packet sent at the same moment may end it), 0 for
    anything else.  Every segment must be a transport header for the first's
    receiver index with the next counter, so a larger packet whose ciphertext
    happens to fill a multiple of ``size`` does not count."""
    if len(d) < size:
        return 0
    kind, reserved, index, counter = _HEAD.unpack_from(d)
    full, tail = divmod(len(d), size)
    for i in range(full + (1 if tail >= _HEAD.size else 0)):
        k, r, idx, ctr = _HEAD.unpack_from(d, i * size)
        if (k, r, idx, ctr) != (4, b"\0\0\0", index, counter + i):
            return 0
    if 0 < tail < _HEAD.size:
        return 0
    return full


@pytest.mark.parametrize("dp_a,dp_b", PAIRS)
def test_default_daemons_negotiate_the_best_suite(two_hosts, daemon_factory, tmp_path, sniffer, dp_a, dp_b):
    cap = sniffer(two_hosts.a, "eth0", "udp port 9000")
    a, b = pair(tmp_path, daemon_factory, two_hosts, (dp_a, dp_b))
    assert a.host.ns.ping(b.tun4, timeout=10), "a -> b"
    assert b.host.ns.ping(a.tun4, timeout=5) and a.host.ns.ping(b.tun6, timeout=5)
    send_marked(a, b, size=100)
    assert iperf(a, b) > 1_000_000
    for me, other in ((a, b), (b, a)):
        p = me.peer(other.name)
        assert p["cipher"] == BEST and p["state"] == "established", p
        st = me.status()["crypto"]
        assert st["phantom_suites"][0] == BEST and st["aes_hardware"] == crypto.aes_hardware()
    code, text = a.daemon.api("GET", "/metrics")
    assert code == 200 and 'phantom_peer_cipher{cipher="%s",peer="n2"} 1.0' % BEST in text
    assert 'phantom_crypto_info{chacha20poly1305=' in text
    # the CLI's table has the column
    out = a.host.run([sys.executable, "-m", "phantom.cli", "--token-file", str(a.state_dir / "token"),
                      "peers"], timeout=30).stdout
    header, row = (re.split(r"\s{2,}", line) for line in out.splitlines()[:2])
    assert row[header.index("CIPHER")] == BEST, out
    cap.stop()
    assert cap.find(MARKER) == []
    dgrams = tunnel_datagrams(cap)
    sizes = {len(d) for d in dgrams if d[0] in (1, 2)}
    offer = BEST == "aegis256"
    assert sizes <= ({166, 109} if offer else {164, 108}) and len(sizes) == 2, sizes
    # the marked datagrams: 128-byte IPv4 packets, sealed (the fast path may
    # send them as one UDP GSO super-packet, which the capture sees whole,
    # and a shorter packet sent at the same moment may end that run)
    size = 128 + (48 if offer else 32)
    assert sum(transport_packets_of_size(d, size) for d in dgrams) >= 3


@pytest.mark.parametrize("initiator", ["pinned", "default"])
@pytest.mark.parametrize("dp_a,dp_b", PAIRS)
def test_one_side_pinned_to_secretbox_gets_secretbox(two_hosts, daemon_factory, tmp_path, sniffer,
                                                     dp_a, dp_b, initiator):
    cap = sniffer(two_hosts.a, "eth0", "udp port 9000 and less 400")
    a, b = pair(tmp_path, daemon_factory, two_hosts, (dp_a, dp_b), ciphers=(["secretbox"], None))
    first, second = (a, b) if initiator == "pinned" else (b, a)
    assert first.host.ns.ping(second.tun4, timeout=10)
    assert second.host.ns.ping(first.tun4, timeout=5)
    assert iperf(first, second) > 1_000_000
    assert a.peer("n2")["cipher"] == b.peer("n1")["cipher"] == "secretbox"
    assert a.status()["crypto"]["phantom_suites"] == ["secretbox"]
    assert a.status()["crypto"]["suites_configured"] is True
    cap.stop()
    hs = sorted(len(d) for d in tunnel_datagrams(cap) if d[0] in (1, 2))
    # pinned: the prototype's form (164) answered by 108; unpinned: an offer
    # (166) answered with the choice (109)
    assert hs[:2] == ([108, 164] if initiator == "pinned" else [109, 166]), hs


# ---------------------------------------------------------------- the prototype's daemon
def start_prototype(daemon_factory, node, tree):
    code = ("import sys; sys.path.insert(0, %r); import phantom; "
            "assert phantom.__file__.startswith(%r), phantom.__file__; "
            "from phantom.daemon import main; sys.exit(main())" % (str(tree), str(tree)))
    node.daemon = daemon_factory(node.host, ["--config", str(node.config)], http_port=HTTP_PORT,
                                 name=node.name + "-prototype", executable=[sys.executable, "-c", code],
                                 token_file=node.state_dir / "token", cwd=str(tree))
    node.host.ns.wait_addresses_ready()
    return node


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_the_prototypes_daemon_and_todays(two_hosts, daemon_factory, tmp_path, prototype, datapath):  # noqa: F811
    # today's daemon with the short timers (rekey_timeout 1 s, keepalive 2 s):
    # after the old one's restart it finds its session unanswered and
    # alternates the two initiation forms within seconds, not the defaults'
    # 15 s + 5 s per form (the old daemon keeps its defaults)
    a, b = pair(tmp_path, daemon_factory, two_hosts, (datapath, None), start_b=False,
                tunables=(FAST_TUNABLES, None))
    start_prototype(daemon_factory, b, prototype)
    assert "cipher" not in b.peer("n1")                      # really the old daemon
    # the old daemon initiates: its 164-byte initiation gets a 108-byte answer
    assert b.host.ns.ping(a.tun4, timeout=10), "old -> new"
    assert a.host.ns.ping(b.tun4, timeout=5), "new -> old"
    assert a.peer("n2")["cipher"] == "secretbox"
    assert iperf(a, b) > 1_000_000
    # today's daemon initiates after a restart of the old one: every second
    # initiation is in the old form, so it gets through
    b.daemon.stop()
    start_prototype(daemon_factory, b, prototype)
    assert wait_for(lambda: a.host.ns.ping(b.tun4, timeout=2), timeout=40, what="new -> restarted old")
    assert a.peer("n2")["cipher"] == "secretbox"


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_peer_pinned_to_secretbox_reaches_the_prototype_first(two_hosts, daemon_factory, tmp_path,
                                                               prototype, datapath):  # noqa: F811
    a, b = pair(tmp_path, daemon_factory, two_hosts, (datapath, None), peer_ciphers=(["secretbox"], None),
                start_b=False)
    start_prototype(daemon_factory, b, prototype)
    assert a.host.ns.ping(b.tun4, timeout=10), "new (peer pinned) -> old, first"
    assert b.host.ns.ping(a.tun4, timeout=5)
    assert a.peer("n2")["cipher"] == "secretbox"
