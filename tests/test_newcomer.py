"""The README's newcomer path, end to end in namespaces: what a new user
hit when following the quick start (issue 18, "Newcomer frictions").

* the quick start pasted as a block pinged before the daemons had their
  devices: `phantom wait-ready` now waits for that (and phantomd tells
  systemd READY=1 through $NOTIFY_SOCKET);
* a config with addresses and no mode started in test mode;
* a second daemon failed with "[Errno 98] Address already in use";
* with a custom state_dir the CLI looked for the token in /var/lib/phantom;
* `phantom status` printed the peers as one blob and unexplained drops.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunnelkit import make_node, peer_entry, write_config

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent


def phantom_cli(host, *args, timeout=60.0, env=None):
    """`phantom ARGS` inside ``host``'s namespace, as a user runs it."""
    return subprocess.run(host.ns.exec_prefix + [sys.executable, "-m", "phantom.cli", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ if env is None else env, PYTHONPATH=str(REPO)))


def newcomer_config(node, peer, *, mode=None):
    """The quick start's config: addresses, a state_dir of its own, and (as a
    newcomer writes it) no mode."""
    write_config(node, mode="tun", peers=[peer_entry(peer, mode="tun", ipv6=False)], ipv6=False)
    text = node.config.read_text()
    text = re.sub(r'^mode = "tun"\n', "" if mode is None else 'mode = "%s"\n' % mode, text, flags=re.M)
    node.config.write_text(text)
    return node.config


def test_wait_ready_then_the_first_ping_goes_through(two_hosts, daemon_factory, tmp_path):
    """The quick start as a block: both daemons started in the background,
    then `phantom wait-ready`, then the ping: it must not find the device
    missing.  The configs give addresses and no mode: tun mode."""
    a, b = two_hosts.a, two_hosts.b
    na, nb = make_node(tmp_path, "alice", 1, a), make_node(tmp_path, "bob", 2, b)
    newcomer_config(na, nb)
    newcomer_config(nb, na)
    assert "mode" not in na.config.read_text()
    for n in (na, nb):
        n.daemon = daemon_factory(n.host, ["--config", str(n.config)], name=n.name, wait=False,
                                  token_file=n.state_dir / "token")
    for n in (na, nb):
        cp = phantom_cli(n.host, "wait-ready", "--timeout", "30")
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.startswith("phantomd at http://127.0.0.1:4567 is ready: tun device phtun0 up"), \
            cp.stdout
    # right after wait-ready: the device is up with its address, and the ping works
    assert "%s/24" % na.tun4 in a.ns.addresses("phtun0")
    assert a.ns.link_state("phtun0") in ("UP", "UNKNOWN")
    ping = a.run(["ping", "-c", "1", "-W", "5", nb.tun4], check=False, timeout=15)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    st = na.status()
    assert st["mode"] == "tun" and st["ready"] is True and st["device_up"] is True
    # `phantom status`: the peers as a table, one line a peer; the drops explained
    a.run(["ping", "-c", "1", "-W", "1", "10.99.0.77"], check=False, timeout=15)   # nobody's address
    cp = phantom_cli(a, "status")
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    head = lines.index("peers (1):")
    assert lines[head + 1].split()[:3] == ["NAME", "PATH", "ENDPOINT"]
    assert lines[head + 2].split()[:3] == ["bob", "direct", "%s:9000" % b.ip]
    no_route = [line for line in lines if line.split()[:1] == ["no_route"]]
    assert len(no_route) == 1 and no_route[0].split()[1] == "1", cp.stdout
    assert "in no peer's allowed IPs" in no_route[0]


def test_wait_ready_gives_up_naming_why(two_hosts, tmp_path):
    cp = phantom_cli(two_hosts.a, "wait-ready", "--timeout", "1")
    assert cp.returncode == 1
    assert cp.stderr.startswith("error: phantomd at http://127.0.0.1:4567 is not ready after 1 s: "
                                "cannot connect"), cp.stderr



def _recv_notifications(sock, until: str, timeout: float):
    """Datagrams on ``sock`` (with the sender's credentials) until one holds
    ``until`` or ``timeout`` passes: [(pid, {VAR: value})]."""
    import struct
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            break
        pid = None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", cdata[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        out.append((pid, fields))
        if until in data.decode().splitlines():
            return out
    raise AssertionError("no %r within %g s; got %r" % (until, timeout, out))


def test_phantomd_tells_systemd_when_it_is_ready(two_hosts, daemon_factory, tmp_path):
    """Type=notify: with $NOTIFY_SOCKET (a datagram socket this test listens
    on, as systemd does), phantomd sends READY=1 once its API answers and its
    device is up, and STOPPING=1 when it stops."""
    a, b = two_hosts.a, two_hosts.b
    na, nb = make_node(tmp_path, "alice", 1, a), make_node(tmp_path, "bob", 2, b)
    newcomer_config(na, nb, mode="tun")
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(str(path))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        d = daemon_factory(a, ["--config", str(na.config)], name="alice", wait=False,
                           env=dict(os.environ, NOTIFY_SOCKET=str(path)))
        got = _recv_notifications(listener, "READY=1", 30)
        # at READY=1, and before anything else happens: the API answers, ready,
        # and the device is up with its address
        st = d.api("GET", "/status").body
        assert st["ready"] is True and st["device"] == "phtun0" and st["device_up"] is True
        assert "%s/24" % na.tun4 in a.ns.addresses("phtun0")
        pid, fields = got[-1]
        assert pid == d.pid                       # NotifyAccess=main: from the main process
        assert fields["STATUS"].startswith("ready: tun device phtun0, udp port 9000")
        d.terminate()
        got = _recv_notifications(listener, "STOPPING=1", 15)
        assert d.returncode == 0
    finally:
        listener.close()


def test_a_second_daemon_names_the_port_in_use(two_hosts, daemon_factory, tmp_path):
    """A second phantomd in the same namespace used to exit with "[Errno 98]
    Address already in use": it now says which port."""
    a, b = two_hosts.a, two_hosts.b
    na, nb = make_node(tmp_path, "alice", 1, a), make_node(tmp_path, "bob", 2, b)
    write_config(na, mode="test", peers=[peer_entry(nb, mode="test")])
    daemon_factory(a, ["--config", str(na.config)], name="first")
    cases = [([], "phantomd: udp port 9000 is in use (another phantomd, or another program, has it)"),
             (["-t", "8100"], "phantomd: udp port 9000 is in use"),
             (["-u", "9001", "-t", "8100"],
              "phantomd: API port 4567 on 127.0.0.1 is in use (another phantomd, or another program, "
              "has it): stop it, or choose another port with http_port or --http-port"),
             (["-u", "9001"], "phantomd: test port 8000 on 127.0.0.1 is in use")]
    for i, (flags, message) in enumerate(cases):
        d = daemon_factory(a, ["--config", str(na.config), *flags], name="second%d" % i, wait=False)
        assert d.proc.wait(timeout=30) == 1, d.log_tail()
        log = d.log_path.read_text()
        assert message in log, log
        assert "Errno" not in log


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_an_idle_tunnel_counts_no_drops(two_hosts, daemon_factory, tmp_path, datapath):
    """An idle tunnel showed `drops.no_route: 2`: the kernel's IPv6 router
    solicitations to ff02::2 from the TUN device's link-local address (one at
    once, then after about 4 s, and on with back-off).  The device now gets no
    link-local address, so the kernel sends nothing of its own into it."""
    a, b = two_hosts.a, two_hosts.b
    na, nb = make_node(tmp_path, "alice", 1, a), make_node(tmp_path, "bob", 2, b)
    write_config(na, mode="tun", peers=[peer_entry(nb, mode="tun")])
    d = daemon_factory(a, ["--config", str(na.config)] + (["--fast"] if datapath == "fast" else []),
                       name="alice", token_file=na.state_dir / "token")
    time.sleep(6.0)                   # past the kernel's first two solicitations
    st = d.api("GET", "/status").body
    assert {k: v for k, v in st["drops"].items() if v} == {}
    assert not [x for x in a.ns.addresses("phtun0") if x.startswith("fe80:")]
    # the configured addresses are there, IPv6 too, and nothing left through the device
    assert "%s/24" % na.tun4 in a.ns.addresses("phtun0") and "%s/64" % na.tun6 in a.ns.addresses("phtun0")
    stats = json.loads(a.ns.ip("-s", "-j", "link", "show", "phtun0").stdout)[0]["stats64"]
    assert stats["tx"]["packets"] == 0, stats


def test_the_cli_finds_the_token_of_a_daemon_with_its_own_state_dir(two_hosts, daemon_factory, tmp_path):
    """With state_dir set in the config the CLI looked for the token in
    /var/lib/phantom.  Each daemon (both on 127.0.0.1:4567, in their own
    namespaces) records where its token is; `phantom firewall set` and
    `phantom close` need no --token-file, over TCP and over the Unix socket."""
    a, b = two_hosts.a, two_hosts.b
    na, nb = make_node(tmp_path, "alice", 1, a), make_node(tmp_path, "bob", 2, b)
    sock = tmp_path / "bob-api.sock"
    write_config(na, mode="test", peers=[peer_entry(nb, mode="test")])
    write_config(nb, mode="test", peers=[peer_entry(na, mode="test")], extra={"http_socket": str(sock)})
    for n in (na, nb):
        n.daemon = daemon_factory(n.host, ["--config", str(n.config)], name=n.name,
                                  token_file=n.state_dir / "token")
        assert n.state_dir != Path("/var/lib/phantom")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"direction": "in", "action": "drop", "proto": "udp", "dst_port": 7}]}))
    for n, where in ((na, []), (nb, []), (nb, ["--socket", str(sock)])):
        cp = phantom_cli(n.host, *where, "firewall", "set", str(rules))
        assert cp.returncode == 0, cp.stderr
        assert n.daemon.api("GET", "/firewall").body["rules"][0]["dst_port"] == 7
        cp = phantom_cli(n.host, *where, "close", "nobody")
        assert cp.returncode == 1 and cp.stderr.startswith("error: no peer 'nobody'"), cp.stderr
