"""A network that forms itself (issue 20 item 4): real ``phantom network
init``, ``phantom directory serve --network``, ``phantom join`` and
``phantomd`` in namespaces, on both data paths, and no ``phantom open``
anywhere.

The issue's scenario runs on phantomlab's internet of homes: five nodes
join (two behind MASQUERADE NAT routers, one behind a per-destination NAT
that needs the network's relay, two on the internet) and mesh by
themselves; a sixth joins later and is reached by all; a renewal; a removed
member loses every tunnel within 5 s; each member restarted while the
directory is down reconnects from its cache.  The other tests use a few
hosts on one bridge.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from phantomlab import netns
from phantomlab.poll import wait_for
from phantomlab.templates import HTTP_PORT

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]

CLI = [sys.executable, "-m", "phantom.cli"]
DIR_PORT = 4568


def cli(host, *args, check=True, timeout=60):
    out = host.run(CLI + [str(a) for a in args], check=False, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


class Member:
    def __init__(self, name, host, state, joined):
        self.name, self.host, self.state = name, host, state
        self.ipv4, self.ipv6, self.key = joined["ipv4"], joined["ipv6"], joined["key"]
        self.config = state / "phantom.toml"
        self.daemon = None

    def api(self, method, path, body=None, timeout=15.0):
        return self.daemon.api(method, path, body, timeout=timeout)

    def status(self):
        code, body = self.api("GET", "/status")
        assert code == 200, body
        return body

    def peer_names(self):
        return sorted(p["name"] for p in self.status()["peers"])


def serve_directory(daemon_factory, host, auth, db):
    return daemon_factory(host, ["directory", "serve", "--listen", host.ip, "--port",
                                 str(DIR_PORT), "--db", str(db), "--network", str(auth),
                                 "--source-writes-per-minute", "0"],
                          executable=CLI, http_port=DIR_PORT, http_host=host.ip,
                          name="directory", timeout=30)


def network_on(daemon_factory, host, tmp_path, *init_args):
    """The network every member test starts from (the ``corp`` fixture, in
    conftest.py, on lan3's host a): ``phantom network init corp``
    (100.100.0.0/16, the directory on ``host``, ``init_args`` added) and
    ``directory serve --network`` on ``host``: (the authority directory, the
    directory's URL, its daemon)."""
    url = "http://%s:%d" % (host.ip, DIR_PORT)
    auth = tmp_path / "authority"
    out = subprocess.run(CLI + ["network", "init", "corp", "--dir", str(auth), "--ipv4",
                                "100.100.0.0/16", "--directory", url, *init_args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return auth, url, serve_directory(daemon_factory, host, auth, tmp_path / "dir.sqlite")


def invite(admin_host, auth, name, groups="fleet"):
    return cli(admin_host, "network", "invite", "--name", name, *(["--groups", groups] if groups
                                                                   else []),
               "--dir", auth, "--admin-token-file", auth / "admin.token").stdout.strip()


def join(admin_host, auth, host, name, tmp_path, url, groups="fleet"):
    token = invite(admin_host, auth, name, groups)
    state = tmp_path / name
    out = cli(host, "join", token, "--state-dir", state, "--json", "--no-start")
    return Member(name, host, state, json.loads(out.stdout))


def start(daemon_factory, m, datapath):
    argv = ["--config", str(m.config)] + (["--fast"] if datapath == "fast" else [])
    m.daemon = daemon_factory(m.host, argv, http_port=HTTP_PORT, name=m.name, timeout=30,
                              token_file=m.state / "token")
    m.host.ns.wait_addresses_ready()
    return m


def start_all(daemon_factory, members, datapath):
    """:func:`start` for several members at once: every phantomd is started,
    then each is waited for (their start-ups overlap instead of adding up)."""
    for m in members:
        argv = ["--config", str(m.config)] + (["--fast"] if datapath == "fast" else [])
        m.daemon = daemon_factory(m.host, argv, http_port=HTTP_PORT, name=m.name, wait=False,
                                  token_file=m.state / "token")
    for m in members:
        m.daemon.wait_ready(30)
        m.host.ns.wait_addresses_ready()
    return members


def join_all(admin_host, auth, specs, tmp_path, url):
    """:func:`join` for several members: the invites at once (the authority's
    lock orders them), then the joins one after another, in order, so each
    member gets the same addresses as with :func:`join` in turn; ``specs`` is
    ``[(host, name, groups), ...]`` or ``[(host, name, groups, state_parent), ...]``."""
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        tokens = list(pool.map(lambda spec: invite(admin_host, auth, spec[1], spec[2]), specs))
    members = []
    for spec, token in zip(specs, tokens):
        host, name = spec[:2]
        state = (spec[3] if len(spec) > 3 else tmp_path) / name
        out = cli(host, "join", token, "--state-dir", state, "--json", "--no-start")
        members.append(Member(name, host, state, json.loads(out.stdout)))
    return members


def pings(pairs, timeout=1.0):
    """The pairs (src, dst) whose ping of dst's IPv4 address failed (in parallel)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        ok = list(pool.map(lambda p: p[0].host.ping(p[1].ipv4, timeout=timeout), pairs))
    return [(s.name, d.name) for (s, d), good in zip(pairs, ok) if not good]


def all_reach(members, deadline_s, what, among=None):
    """Every ordered pair pings within ``deadline_s``; returns the seconds it took."""
    pairs = [(s, d) for s in members for d in (among or members) if s is not d]
    t0 = time.monotonic()
    left = list(pairs)
    while True:
        failed = pings(left)
        left = [(s, d) for s, d in left if (s.name, d.name) in failed]
        if not left:
            return time.monotonic() - t0
        if time.monotonic() - t0 > deadline_s:
            raise AssertionError("%s: no answer after %.1f s for %s" % (
                what, time.monotonic() - t0, [(s.name, d.name) for s, d in left]))


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_the_issues_network_joins_behind_nats_grows_removes_and_survives_restarts(
        daemon_factory, tmp_path, datapath):
    """The issue's scenario ("done means", first two bullets): an admin runs
    ``network init``; five nodes join with tokens -- two in homes behind
    MASQUERADE NAT routers, one behind a per-destination NAT (it needs the
    relay), two on the internet -- and within 10 s of the last one every
    member pings every other member's address both ways; then a sixth node
    joins and every member reaches it within 5 s.  Nothing is edited on the
    members and nothing is opened: per node, ``join --no-start`` and
    ``phantomd``.  The definition's rendezvous (a member on the internet
    whose config says ``rendezvous``/``relay``) and the directory run on the
    internet host.  Then (the issue's third and fifth bullets): a renewal; a
    removed member loses every tunnel within 5 s; each member restarted in
    turn with the directory stopped reconnects by itself (the relayed one
    too: its cached entry must not hold the relay path as an endpoint)."""
    from phantom.keys import encode_key, public_key, write_private_key
    with netns.internet(homes=3, random_fully=(3,), public=3) as net:
        rv_host = net.rv
        rv_state = tmp_path / "hub"
        rv_state.mkdir(mode=0o700)
        rv_pub = encode_key(public_key(write_private_key(rv_state / "private.key")))
        auth, url, directory = network_on(daemon_factory, rv_host, tmp_path, "--rendezvous",
                                          "%s@%s:9000" % (rv_pub, rv_host.ip))
        hub = join(rv_host, auth, rv_host, "hub", tmp_path, url)
        text = hub.config.read_text()
        hub.config.write_text(text.replace('mode = "tun"\n',
                                           'mode = "tun"\nrendezvous = true\nrelay = true\n', 1))
        start(daemon_factory, hub, datapath)
        # a, b: MASQUERADE homes; c: per-destination (random-fully); p1, p2: no NAT
        where = [net["a"], net["b"], net["c"], net["p1"], net["p2"]]
        nodes = join_all(rv_host, auth, [(h, "n%d" % i, "fleet") for i, h in enumerate(where, 1)],
                         tmp_path, url)
        joined = time.monotonic()
        start_all(daemon_factory, nodes, datapath)
        took = all_reach(nodes, 10.0, "five members, two MASQUERADE homes, one per-destination")
        print("\n%s: 5 members (3 behind NATs), all 20 directions answered %.2f s after the "
              "last start, %.2f s after the last join" % (datapath, took,
                                                          time.monotonic() - joined))
        assert nodes[0].host.ping(nodes[2].ipv6, timeout=3), "IPv6 through the relay"
        assert nodes[2].host.ping(nodes[3].ipv6, timeout=3)

        def path(m, other):
            return {p["name"]: p.get("path") for p in m.status()["peers"]}[other.name]
        # the per-destination NAT needs the relay to a NAT'd home; the two MASQUERADE
        # homes punch through (under load a slow punch may go through the relay first:
        # relayed paths probe for a direct one)
        assert path(nodes[0], nodes[2]) == "relayed via rendezvous"
        wait_for(lambda: path(nodes[0], nodes[1]) == "direct" == path(nodes[1], nodes[0]),
                 timeout=20, what="a direct path between the two MASQUERADE homes")

        # a sixth node joins later: every member reaches it within 5 s, nothing edited
        late = start(daemon_factory, join(rv_host, auth, net["p3"], "n6", tmp_path, url),
                     datapath)
        took = all_reach(nodes, 5.0, "the sixth member", among=[late])
        took2 = all_reach([late], 5.0, "the sixth member's own pings", among=nodes)
        print("%s: n6 reached by all 5 within %.2f s, reached them in %.2f s"
              % (datapath, took, took2))
        members = nodes + [late]

        # renewal (the daemon does it at 2/3 of the lifetime; the API asks now): a newer
        # certificate, kept in the cache, used after the restart below; the mesh carries on
        first = members[0].status()["network"]["certificate_serial"]
        code, body = members[0].api("POST", "/network/renew")
        assert code == 200 and body["serial"] > first, body
        assert members[0].status()["network"]["certificate_serial"] == body["serial"]
        assert (members[0].state / "network" / "cache" / "certificate.json").exists()
        assert all_reach(members[:3], 5.0, "after the renewal") < 5.0

        # a removed member loses every tunnel within 5 s
        gone = members[4]
        cli(rv_host, "network", "remove", gone.name, "--dir", auth, "--admin-token-file",
            auth / "admin.token")
        t0 = time.monotonic()
        others = [m for m in members if m is not gone]
        wait_for(lambda: all(gone.name not in m.peer_names() for m in others), timeout=5,
                 what="%s's peer entry gone everywhere" % gone.name)
        print("%s: the removed member's peer gone everywhere %.2f s after the removal"
              % (datapath, time.monotonic() - t0))
        assert pings([(gone, m) for m in others]) == [(gone.name, m.name) for m in others]
        assert pings([(m, gone) for m in others]) == [(m.name, gone.name) for m in others]
        members = others

        # each member restarted in turn, the directory stopped meanwhile (the
        # rendezvous keeps running): its tunnels come back by themselves
        directory.stop()
        for m in members:
            m.daemon.stop()
            start(daemon_factory, m, datapath)
            # the members from the cache (and the hub, under its rendezvous peer name)
            assert set(m.peer_names()) - {"rendezvous"} == {o.name for o in members if o is not m}
            took = all_reach([m], 10.0, "%s restarted without the directory" % m.name,
                             among=members)
            all_reach(members, 10.0, "the others to %s" % m.name, among=[m])
            print("%s: %s back %.2f s after its restart, the directory down"
                  % (datapath, m.name, took))
            assert m.status()["network"]["directory_ok"] is False
            if m is members[0]:          # the renewed certificate, from the cache
                assert m.status()["network"]["certificate_serial"] == body["serial"]
        # the directory returns: the stream resumes from the cached seq
        directory = serve_directory(daemon_factory, rv_host, auth, tmp_path / "dir.sqlite")
        wait_for(lambda: all(m.status()["network"]["directory_ok"] for m in members),
                 timeout=10, what="every member follows the directory again")
        for m in members + [gone]:
            assert m.daemon.running and "Traceback" not in m.daemon.log()


def test_join_starts_phantomd_and_the_new_member_meshes(corp, daemon_factory, tmp_path):
    """`phantom join TOKEN` alone (no --no-start): the daemon runs and reaches
    a member started before, both ways; the daemon it started is stopped here."""
    import os
    import signal
    a, b, c = corp.hosts
    auth, url = corp.auth, corp.url
    first = start(daemon_factory, join(a, auth, b, "first", tmp_path, url), "reference")
    state = tmp_path / "second"
    out = cli(c, "join", invite(a, auth, "second"), "--state-dir", state, "--json")
    joined = json.loads(out.stdout)
    pid = joined["daemon"]["pid"]
    try:
        second = Member("second", c, state, joined)
        assert joined["daemon"]["log"] == str(state / "phantomd.log")
        all_reach([first, second], 10.0, "a member whose phantomd join started")
        code, status = c.http("GET", "/status", port=HTTP_PORT, host="127.0.0.1")
        assert code == 200 and status["network"]["name"] == "second", status
        # joining again on that machine: no second daemon, a clear word
        out = cli(c, "join", invite(a, auth, "third"), "--state-dir", state, check=False)
        assert out.returncode == 1 and "already a member" in out.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in (state / "phantomd.log").read_text()


SERVER_RULES = """
[firewall]
default_in = "drop"

[[firewall.rule]]
direction = "in"
src_group = "laptops"
dst_group = "servers"
proto = "icmp"
action = "accept"
"""


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_certificate_groups_drive_the_firewall(corp, datapath):
    """Groups come from the certificates, on both sides: a server (its own
    certificate says "servers") lets in ICMP from members whose certificate
    says "laptops" and from nobody else."""
    a, b, c = corp.hosts
    srv, lap, guest = corp.join((b, "srv", "servers"), (c, "lap", "laptops"), (a, "guest", None))
    with open(srv.config, "a") as f:
        f.write(SERVER_RULES)
    corp.start((srv, lap, guest), datapath)
    all_reach([lap], 10.0, "a laptop to the server", among=[srv])
    all_reach([guest], 10.0, "the guest to the laptop", among=[lap])
    assert pings([(guest, srv)], timeout=2.0) == [("guest", "srv")], "no group: dropped"
    code, fw = srv.api("GET", "/firewall")
    assert code == 200 and fw.get("warnings", []) == [], fw     # "servers" is ours: no warning


POLICY_LAPTOPS_TO_SERVERS = """\
default = "deny"

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "tcp"
ports = [22]

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "icmp"
"""

POLICY_OPEN = """\
default = "allow"
"""


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_the_network_policy_reaches_every_member(corp, tmp_path, datapath):
    """Issue 21 item 3 on running members: ``phantom network policy set``
    on the admin's side; within 5 s every member compiles its inbound rules
    from it (a guest without the laptops group loses the server, the
    laptop keeps it); a newer policy replaces it in place; a server
    restarted while the directory is down enforces the cached policy."""
    a, b, c = corp.hosts
    auth, directory = corp.auth, corp.directory
    srv, lap, guest = corp.join((b, "srv", "servers"), (c, "lap", "laptops"), (a, "guest", None))
    corp.start((srv, lap, guest), datapath)
    all_reach([lap, guest], 10.0, "no policy yet", among=[srv])
    remote = ["--dir", auth, "--admin-token-file", auth / "admin.token"]

    def policy(text, name):
        path = tmp_path / name
        path.write_text(text)
        return cli(a, "network", "policy", "set", path, *remote).stdout

    assert "policy seq 1 in force" in policy(POLICY_LAPTOPS_TO_SERVERS, "p1.toml")
    t0 = time.monotonic()
    wait_for(lambda: pings([(guest, srv)]) == [("guest", "srv")], timeout=5.0,
             what="the guest refused by the server under the policy")
    print("\n%s: policy in force on the server %.2f s after set" % (datapath, time.monotonic() - t0))
    assert pings([(lap, srv)], timeout=2.0) == [], "laptops -> servers icmp: accepted"
    code, fw = srv.api("GET", "/firewall")
    assert code == 200 and fw["policy"]["seq"] == 1, fw
    # "laptops may reach servers on tcp/22 and icmp; nothing else": tcp/22 passes,
    # tcp/8080 is dropped and counted on the receiver, and nothing re-handshook
    listeners = []
    for port in (22, 8080):
        sock = srv.host.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((srv.ipv4, port))
        sock.listen(8)
        listeners.append(sock)
    try:
        def connects(src, port):
            try:
                src.host.ns.tcp_connect(srv.ipv4, port, timeout=2.0).close()
                return True
            except OSError:
                return False
        handshakes = [p["last_handshake"] for p in srv.status()["peers"] if p["name"] == "lap"]
        dropped = fw["drops"].get("default", 0)
        assert connects(lap, 22), "laptops -> servers tcp/22: accepted"
        assert not connects(lap, 8080), "laptops -> servers tcp/8080: nothing else"
        assert not connects(guest, 22), "no group: dropped"
        wait_for(lambda: srv.api("GET", "/firewall")[1]["drops"].get("default", 0) >= dropped + 2,
                 timeout=5.0, what="the refused flows counted on the server")
    finally:
        for sock in listeners:
            sock.close()
    # a bad policy is refused whole; the one in force stays
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY_LAPTOPS_TO_SERVERS.replace("ports = [22]", "ports = [70000]"))
    out = cli(a, "network", "policy", "set", bad, *remote, check=False)
    assert out.returncode == 1 and "line" in out.stderr, out.stderr
    assert srv.api("GET", "/firewall")[1]["policy"]["seq"] == 1
    assert policy(POLICY_OPEN, "p2.toml").count("seq 2") == 1
    all_reach([guest], 5.0, "the open policy (seq 2) in force", among=[srv])
    assert [p["last_handshake"] for p in srv.status()["peers"] if p["name"] == "lap"] == \
        handshakes, "a policy change takes effect without a new handshake"
    assert policy(POLICY_LAPTOPS_TO_SERVERS, "p3.toml").count("seq 3") == 1
    wait_for(lambda: pings([(guest, srv)]) == [("guest", "srv")], timeout=5.0,
             what="seq 3 in force")
    # the server restarts while the directory is down: the cached policy holds
    directory.stop()
    srv.daemon.stop()
    srv.daemon.start().wait_ready(30)
    srv.host.ns.wait_addresses_ready()
    # the laptop notices the restart as WireGuard does (no reply to data for
    # 15 s, then a new handshake): the restarted server does not initiate here
    all_reach([lap], 30.0, "the laptop back at the restarted server", among=[srv])
    assert pings([(guest, srv)], timeout=2.0) == [("guest", "srv")], "the cached policy holds"
    code, fw = srv.api("GET", "/firewall")
    assert code == 200 and fw["policy"]["seq"] == 3, fw


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_members_record_cannot_take_another_members_traffic(corp, datapath):
    """Issue 20, "done means": a member whose own signed directory record
    claims another member's address and the whole network prefix gets none
    of that traffic.  x publishes such a record with its real key; o's pings
    of v still reach v, and x's device sees none of them (capture); o keeps
    x's allowed IPs exactly x's certificate's addresses."""
    from phantomlab.capture import Sniffer
    a, b, c = corp.hosts
    url = corp.url
    v, x, o = corp.join((b, "v", "fleet"), (c, "x", "fleet"), (a, "o", "fleet"))
    corp.start((v, x, o), datapath)
    all_reach([v, x, o], 10.0, "the first mesh")
    port = x.status()["listen_port"]
    cli(c, "directory", "publish", "--directory", url, "--private-key", x.state / "private.key",
        "--name", "x", "--endpoint", "%s:%d" % (c.ip, port),
        "--allowed-ips", "%s/32,100.100.0.0/16" % v.ipv4)
    time.sleep(3.0)                      # the members' directory links see the record (watch)
    with Sniffer(c, "phantom0", "icmp and host %s" % v.ipv4) as sniff:
        assert pings([(o, v)] * 5, timeout=2.0) == [], "o still reaches v"
        time.sleep(0.5)
        taken = sniff.stop()
    assert taken == [], "x's device saw %d packets for v" % len(taken)
    code, peers = o.api("GET", "/peers")
    assert code == 200, peers
    px = [p for p in peers["peers"] if p["name"] == "x"]
    assert px and sorted(px[0]["allowed_ips"]) == sorted(["%s/32" % x.ipv4, "%s/128" % x.ipv6]), px
