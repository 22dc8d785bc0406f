"""Trust and hardening, end to end (issue 7 parts that the tunnel needs now):
privilege drop, no answer to unknown keys, token-guarded mutations,
private keys never exposed."""

from __future__ import annotations

import base64

import pytest

from phantom.privileges import capability_sets
from phantomlab.nodes import make_node, mesh, start
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, peer_entry, write_config

pytestmark = pytest.mark.netns


def test_daemon_runs_unprivileged_with_no_capabilities(two_hosts, daemon_factory, tmp_path):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b])
    pid = a.daemon.pid
    with open("/proc/%d/status" % pid) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    uids = [int(x) for x in fields["Uid"].split()]
    gids = [int(x) for x in fields["Gid"].split()]
    assert all(u != 0 for u in uids), uids
    assert all(g != 0 for g in gids), gids
    caps = capability_sets(pid)
    assert caps == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}, caps
    assert fields["NoNewPrivs"].strip() == "1"
    assert a.status()["uid"] == uids[0]
    # and it still works: the device was opened before the drop
    assert a.host.ns.ping(b.tun4, timeout=10)


def test_unknown_key_gets_no_reply(two_hosts, daemon_factory, tmp_path, sniffer):
    b = make_node(tmp_path, "n2", 2, two_hosts.b)
    stranger = make_node(tmp_path, "n1", 1, two_hosts.a)
    write_config(b, mode="test", peers=[])                          # b trusts nobody
    write_config(stranger, mode="test", peers=[peer_entry(b, mode="test")], tunables=FAST_TUNABLES)
    start(daemon_factory, b)
    start(daemon_factory, stranger)
    cap = sniffer(two_hosts.a, "eth0", "udp")
    code, body = stranger.api("POST", "/open/%s:%d" % (b.host.ip, UDP_PORT), timeout=30)
    assert code == 504, body
    packets = cap.stop()
    from_b = [u for u in cap.udp() if u.src == b.host.ip]
    to_b = [u for u in cap.udp() if u.dst == b.host.ip]
    assert len(to_b) >= 3 and from_b == [], "no answer at all: not even an error"
    assert b.status()["handshake_drops"]["unknown_key"] >= 3
    assert packets


def test_mutations_need_the_token_and_change_nothing_without_it(two_hosts, daemon_factory, tmp_path):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], mode="test")
    before = a.status()["peers"]
    ns = a.host.ns
    for token in (None, "wrong-token", a.daemon.token + "x"):
        for method, path, body in (("POST", "/open/%s:%d" % (b.host.ip, UDP_PORT), None),
                                   ("POST", "/close/n2", None),
                                   ("PUT", "/firewall", {"rule": []})):
            code, reply = ns.http(method, path, token=token, json_body=body)
            assert code == 401, (method, path, code, reply)
            assert "error" in reply
    code, reply = ns.http("GET", "/open/%s:%d" % (b.host.ip, UDP_PORT), token=a.daemon.token)
    assert code == 405, "a state-changing GET is refused even with the token"
    after = a.status()["peers"]
    assert [p["state"] for p in after] == [p["state"] for p in before] == ["idle"]


def test_private_key_never_leaves_the_daemon(two_hosts, daemon_factory, tmp_path):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], mode="test")
    code, body = a.api("POST", "/open/%s:%d" % (b.host.ip, UDP_PORT))
    assert code == 200
    secret = base64.b64decode(a.keyfile.read_text().strip())
    texts = [str(a.status()), str(a.api("GET", "/peers")[1]), a.daemon.log()]
    for t in texts:
        assert base64.b64encode(secret).decode() not in t
        assert secret.hex() not in t


def test_api_on_a_unix_socket_only(two_hosts, daemon_factory, tmp_path):
    import os
    import stat
    import sys
    import time
    node = make_node(tmp_path, "n1", 1, two_hosts.a)
    sock = tmp_path / "phantom.sock"
    write_config(node, mode="test", peers=[], extra={"http_port": 0, "http_socket": str(sock)})
    start(daemon_factory, node, wait=False)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline and node.daemon.running, node.daemon.log_tail()
        time.sleep(0.05)
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    cli = [sys.executable, "-m", "phantom.cli", "--socket", str(sock), "--json"]
    deadline = time.monotonic() + 10
    while True:
        out = node.host.run(cli + ["status"], check=False)
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out.returncode == 0, out.stderr
    assert '"mode": "test"' in out.stdout
    # nothing listens on TCP
    import socket as _s
    with pytest.raises(OSError):
        node.host.ns.tcp_connect("127.0.0.1", 4567, timeout=1).close()
    # a mutation over the socket still needs the token
    import http.client
    conn = http.client.HTTPConnection("localhost", timeout=5)
    conn.sock = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
    conn.sock.connect(str(sock))
    conn.request("POST", "/close/x", headers={"Host": "localhost"})
    assert conn.getresponse().status == 401
    conn.close()
