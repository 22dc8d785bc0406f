"""Tests of the network-namespace rig itself (phantomlab/netns.py, conftest.py).

The quick ones (pcap reader, CI gate) need nothing; the rest are netns-marked.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from phantomlab import netns
from tests.support import REPO as _REPO

# A stand-in daemon for testing DaemonProcess, started exactly like phantomd
# would be: argv PORT DELAY [EXITCODE].  It prints, waits DELAY seconds (so
# readiness really has to be polled), then serves GET /status -> 200 JSON and
# echoes POSTs; with EXITCODE it prints a message and exits instead.
STANDIN = textwrap.dedent(r"""
    import http.server, json, os, sys, time
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    print(f"standin pid {os.getpid()} starting", flush=True)
    if len(sys.argv) > 3:
        print("standin: boom, bad config", flush=True)
        sys.exit(int(sys.argv[3]))
    time.sleep(delay)
    class H(http.server.BaseHTTPRequestHandler):
        def reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_GET(self):
            if self.path == "/status":
                self.reply(200, {"pid": os.getpid()})
            else:
                self.reply(404, {"error": "no such path"})
        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            self.reply(201, {"auth": self.headers.get("Authorization"),
                             "got": json.loads(self.rfile.read(n) or b"null")})
        def log_message(self, fmt, *args):
            print("standin:", fmt % args, flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
""")
STANDIN_CMD = [sys.executable, "-c", STANDIN]


# ---------------------------------------------------------------------------
# Quick tests (no root)
# ---------------------------------------------------------------------------

def _pcap(records, linktype=1, order="<"):
    out = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for ts, data in records:
        out += struct.pack(order + "IIII", int(ts), int(ts % 1 * 1e6), len(data), len(data)) + data
    return out


def _eth_udp4(src, dst, sport, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst)) + udp
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip


def test_read_pcap_both_byte_orders_and_truncation():
    frame = _eth_udp4("10.0.0.1", "10.0.0.2", 1111, 2222, b"hello")
    for order in "<>":
        data = _pcap([(1.5, frame), (2.25, b"\x00" * 20)], order=order)
        pkts = netns.read_pcap(data)
        assert [round(p.ts, 2) for p in pkts] == [1.5, 2.25]
        assert pkts[0].udp() == netns.UdpDatagram("10.0.0.1", 1111, "10.0.0.2", 2222, b"hello")
        assert pkts[1].udp() is None
        assert len(netns.read_pcap(data[:-5])) == 1      # half-written last record
    with pytest.raises(netns.RigError):
        netns.read_pcap(b"\x00" * 40)


def test_gate_decision_fails_in_ci_and_skips_elsewhere():
    assert netns.gate_decision(None, {"CI": "true"}) == "run"
    assert netns.gate_decision("needs root", {}) == "skip"
    assert netns.gate_decision("needs root", {"CI": "false"}) == "skip"
    assert netns.gate_decision("needs root", {"CI": "true"}) == "fail"
    assert netns.gate_decision("needs root", {"CI": "1"}) == "fail"


def test_names_fit_interface_limits():
    prefix = netns.unique_prefix()
    assert prefix.startswith(netns.run_prefix()) and prefix.startswith("phx")
    assert len(f"{prefix}-sw") < 64


# ---------------------------------------------------------------------------
# netns tests
# ---------------------------------------------------------------------------

@pytest.mark.netns
@pytest.mark.timeout(60)
def test_two_hosts_ping_v4_v6(two_hosts):
    a, b = two_hosts.a, two_hosts.b
    assert (a.ip, b.ip, a.ip6, b.ip6) == ("10.201.0.1", "10.201.0.2", "fd01:201::1", "fd01:201::2")
    assert a.ping(b.ip) and b.ping(a.ip)
    assert a.ping(b.ip6) and b.ping(a.ip6)
    assert not a.ping("10.201.0.99", timeout=0.4)       # nobody there: ping can fail
    assert set(two_hosts.namespaces[i].name for i in range(2)) <= set(netns.list_netns())


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_lan3_all_pairs_reachable(lan3):
    hosts = lan3.host_list
    assert [h.ip for h in hosts] == ["10.204.0.1", "10.204.0.2", "10.204.0.3"]
    for src in hosts:
        for dst in hosts:
            if src is not dst:
                assert src.ping(dst.ip), (src, dst)
    assert hosts[0].ping(hosts[2].ip6) and hosts[2].ping(hosts[1].ip6)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_nat_masquerades_and_conntrack_timeout(nat_topo):
    a, b, r = nat_topo.a, nat_topo.b, nat_topo.r
    srv = b.udp_socket(bind=(b.ip, 7000))
    cli = a.udp_socket(bind=(a.ip, 0))
    srv.settimeout(3)
    cli.settimeout(3)
    try:
        cli.sendto(b"through the nat", (b.ip, 7000))
        data, (src, sport) = srv.recvfrom(100)
        assert data == b"through the nat"
        assert src == r.wan_ip                          # b sees the router, not a
        srv.sendto(b"reply", (src, sport))              # the mapping carries the reply back
        assert cli.recvfrom(100)[0] == b"reply"
        with pytest.raises(OSError):                    # b has no route to the private net
            srv.sendto(b"direct", (a.ip, 7000))

        # NAT rebinding: the router's public address changes, b sees the new one
        assert r.rebind("10.203.0.11") == "10.203.0.1" and r.wan_ip == "10.203.0.11"
        cli.sendto(b"rebound", (b.ip, 7000))
        data, (src, sport) = srv.recvfrom(100)
        assert (data, src) == (b"rebound", "10.203.0.11")

        # a short conntrack timeout really expires the mapping
        r.set_udp_timeout(1)
        assert r.udp_timeouts() == (1, 1)
        r.flush_conntrack()
        assert r.conntrack_entries() == []
        cli.sendto(b"again", (b.ip, 7000))
        _, (src, sport) = srv.recvfrom(100)
        assert r.conntrack_entries()
        deadline = time.monotonic() + 10
        while r.conntrack_entries():
            assert time.monotonic() < deadline, "conntrack entry never expired"
            time.sleep(0.1)
        srv.sendto(b"too late", (src, sport))
        cli.settimeout(0.5)
        with pytest.raises(socket.timeout):
            cli.recvfrom(100)
    finally:
        srv.close()
        cli.close()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_socket_in_and_http_against_standin(two_hosts):
    a, b = two_hosts.a, two_hosts.b
    # a socket made for namespace a lives there: it can bind a's address, not b's
    s = netns.socket_in(a.name, socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.ip, 0))
    s.close()
    s = b.udp_socket()
    with pytest.raises(OSError):
        s.bind((a.ip, 0))
    s.close()

    proc = a.popen(STANDIN_CMD + ["4567", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = a.http("GET", "/status")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert status == 200 and body == {"pid": proc.pid}
        assert a.http("GET", "/nope") == (404, {"error": "no such path"})
        status, body = a.http("POST", "/open/10.201.0.2:9000", token="s3cret", json_body={"k": 1})
        assert status == 201 and body == {"auth": "Bearer s3cret", "got": {"k": 1}}
        with pytest.raises(ConnectionRefusedError):    # b's loopback is another world
            b.http("GET", "/status")
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_daemon_process_ready_kill_restart(two_hosts, daemon_factory):
    d = daemon_factory(two_hosts.a, ["4568", "0.3"], http_port=4568, executable=STANDIN_CMD,
                       name="standin")
    assert d.running
    assert d.api("GET", "/status") == (200, {"pid": d.pid})
    first = d.pid

    assert d.kill() == -signal.SIGKILL
    assert not d.running
    with pytest.raises(ConnectionRefusedError):
        d.api("GET", "/status")

    d.restart()
    assert d.running and d.pid != first
    assert d.api("GET", "/status") == (200, {"pid": d.pid})
    log = d.log()
    assert log.count("=== start #") == 2 and f"standin pid {d.pid} starting" in log

    assert d.terminate() == -signal.SIGTERM
    assert d.pid not in two_hosts.a.ns.pids()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_wait_ready_fails_fast_with_log_tail(two_hosts, daemon_factory):
    t0 = time.monotonic()
    with pytest.raises(netns.DaemonExited) as err:
        daemon_factory(two_hosts.a, ["4567", "0", "2"], executable=STANDIN_CMD, timeout=30)
    assert time.monotonic() - t0 < 10                   # not the 30 s timeout
    assert "code 2" in str(err.value) and "boom, bad config" in str(err.value)

    d = daemon_factory(two_hosts.b, ["4567", "30"], executable=STANDIN_CMD, wait=False)
    with pytest.raises(netns.RigError, match="not ready after 0.5s"):
        d.wait_ready(0.5)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_cleanup_after_failing_block():
    with pytest.raises(ZeroDivisionError):
        with netns.two_hosts() as topo:
            names = [ns.name for ns in topo.namespaces]
            sleeper = topo.a.popen(["sleep", "60"])
            d = netns.DaemonProcess(topo.b, ["4567", "0"], executable=STANDIN_CMD)
            d.start()
            1 / 0
    present = netns.list_netns()
    assert not any(n in present for n in names)
    assert sleeper.wait(5) == -signal.SIGKILL           # killed by the namespace delete
    assert d.proc.wait(5) is not None
    d.stop()


SIGNAL_CHILD = textwrap.dedent("""
    import signal, sys, time
    from phantomlab import netns
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if our parent ignores it
    netns.install_signal_handlers()
    topo = netns.TwoHosts()
    topo.build()
    topo.a.popen(["sleep", "60"])
    print(" ".join(ns.name for ns in topo.namespaces), flush=True)
    time.sleep(60)
""")


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cleans_up_a_killed_run(sig):
    child = subprocess.Popen([sys.executable, "-c", SIGNAL_CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=os.getcwd(),
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        names = child.stdout.readline().split()
        assert len(names) == 2 and all(n.startswith(f"phx{child.pid}x") for n in names)
        assert set(names) <= set(netns.list_netns())
        child.send_signal(sig)
        child.wait(15)
        assert not set(names) & set(netns.list_netns())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        netns.sweep_stale()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_sweep_removes_only_dead_runs():
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    # A family of its own: every session's start-up sweeps the default family,
    # and a concurrent run (another xdist worker, another engineer) would remove
    # this deliberately stale namespace before our own sweep could.
    family = "phq"
    stale = netns.Namespace(f"{family}{dead.pid}x1-stale")
    live = netns.Namespace(f"{family}{alive.pid}x1-live")
    foreign = netns.Namespace(f"zz{os.getpid()}-notours")
    try:
        squatter = stale.popen(["sleep", "60"])
        removed = netns.sweep_stale(family)
        present = netns.list_netns()
        assert f"netns {stale.name}" in removed and stale.name not in present
        assert squatter.wait(5) == -signal.SIGKILL
        assert live.name in present and foreign.name in present
    finally:
        alive.kill()
        alive.wait()
        for ns in (stale, live, foreign):
            ns.delete()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_cut_restore_and_change_address(two_hosts):
    a, b = two_hosts.a, two_hosts.b
    a.cut()
    assert not a.ping(b.ip, timeout=0.4) and not a.ping(b.ip6, timeout=0.4)
    a.restore()
    assert a.ping(b.ip) and a.ping(b.ip6)

    # roaming: b moves to a new address; its traffic now comes from there
    srv = a.udp_socket(bind=(a.ip, 7001))
    cli = b.udp_socket()
    srv.settimeout(3)
    try:
        cli.sendto(b"before", (a.ip, 7001))
        assert srv.recvfrom(100)[1][0] == "10.201.0.2"
        assert b.change_address("10.201.0.12") == "10.201.0.2"
        assert b.ip == "10.201.0.12" and "10.201.0.2/24" not in b.addresses()
        cli.sendto(b"after", (a.ip, 7001))
        assert srv.recvfrom(100)[1][0] == "10.201.0.12"
        assert a.ping("10.201.0.12") and not a.ping("10.201.0.2", timeout=0.4)
    finally:
        srv.close()
        cli.close()


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_sniffer_sees_marker_and_honours_filter(two_hosts, sniffer):
    a, b = two_hosts.a, two_hosts.b
    marker = b"PHANTOM-MARKER-" + os.urandom(4).hex().encode()
    sn = sniffer(b, "eth0", "udp and port 7777")
    rx = b.udp_socket(bind=(b.ip, 7777))
    rx2 = b.udp_socket(bind=(b.ip, 7778))
    tx = a.udp_socket()
    rx.settimeout(3)
    rx2.settimeout(3)
    try:
        tx.sendto(b"xx" + marker + b"yy", (b.ip, 7777))
        tx.sendto(b"other " + marker, (b.ip, 7778))     # filtered out by the BPF
        assert rx.recv(100) == b"xx" + marker + b"yy"
        assert rx2.recv(100) == b"other " + marker
    finally:
        rx.close(), rx2.close(), tx.close()
    pkts = sn.stop()
    hits = sn.find(marker)
    assert len(hits) == 1 and len(pkts) == 1
    u = hits[0].udp()
    assert (u.src, u.dst, u.dport, u.payload) == (a.ip, b.ip, 7777, b"xx" + marker + b"yy")
    assert sn.find(b"PHANTOM-MARKER-never-sent") == []


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_sniffer_context_manager_v6(two_hosts, tmp_path):
    a, b = two_hosts.a, two_hosts.b
    with netns.Sniffer(a, "eth0", "udp", path=tmp_path / "v6.pcap") as sn:
        tx = a.udp_socket(socket.AF_INET6)
        tx.sendto(b"six", (b.ip6, 9999))
        tx.close()
        assert sn.wait_for(lambda pkts: any(p.udp() and p.udp().payload == b"six" for p in pkts))
    assert [(u.src, u.dst, u.payload) for u in sn.udp()] == [(a.ip6, b.ip6, b"six")]


# ---------------------------------------------------------------------------
# The conftest wiring, checked from an inner pytest run in a subprocess
# (own process, own registry, own signal handlers).
# ---------------------------------------------------------------------------

REPO = str(_REPO)
CONFTEST = os.path.join(REPO, "tests", "conftest.py")


@pytest.fixture
def inner_suite():
    """Write test files next to a copy of our conftest; run pytest on them."""
    import shutil
    import tempfile
    root = tempfile.mkdtemp(prefix="phantom-inner-")
    os.chmod(root, 0o755)
    shutil.copy(CONFTEST, os.path.join(root, "conftest.py"))

    def run(source, env=None, as_user=None, args=()):
        with open(os.path.join(root, "test_inner.py"), "w") as f:
            f.write(textwrap.dedent(source))
        # Only the plugins the inner run uses: autoloading every installed one
        # (schemathesis, hypothesis, benchmark, ...) costs ~3 s of CPU a run.
        plugins = ["-p", "xdist.plugin"] if "-n" in args else []
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, "-rs",
                *args, root]
        if as_user is not None:
            argv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups"] + argv
        full_env = {k: v for k, v in os.environ.items() if k != "CI"}
        full_env.update(PYTHONPATH=REPO, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **(env or {}))
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=full_env, cwd=root)

    yield run, root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_failing_test_gets_daemon_logs_and_leaves_nothing(inner_suite):
    run, root = inner_suite
    cp = run(f"""
        import sys
        from phantomlab import netns
        STANDIN = {STANDIN!r}
        def test_fails(two_hosts, daemon_factory, sniffer):
            open({os.path.join(root, "prefix")!r}, "w").write(netns.run_prefix())
            daemon_factory(two_hosts.a, ["4567", "0"], executable=[sys.executable, "-c", STANDIN],
                           name="standin-a")
            sniffer(two_hosts.b, "eth0")
            assert False, "deliberate failure"
    """)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out
    assert "deliberate failure" in out
    assert "daemon log standin-a" in out and "standin pid" in out
    prefix = open(os.path.join(root, "prefix")).read()
    assert prefix.startswith("phx") and not netns.leftovers(prefix)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_a_leak_in_an_xdist_worker_fails_the_run(inner_suite):
    """Under pytest-xdist each worker checks its own names at session end; a
    worker's exit status does not reach the controller, so the leak must be
    handed over and fail the whole run, naming the worker and the namespace
    (which the worker's forced cleanup has removed)."""
    run, root = inner_suite
    cp = run(f"""
        from phantomlab import netns
        def test_leaks():
            ns = netns.Namespace(netns.unique_prefix() + "-leak")
            open({os.path.join(root, "leaked")!r}, "w").write(ns.name)
        def test_clean(two_hosts):
            pass
    """, args=["-n", "2"])
    out = cp.stdout + cp.stderr
    name = open(os.path.join(root, "leaked")).read()
    assert cp.returncode == 1, out
    assert "2 passed" in out
    assert "netns rig: left behind" in out and name in out and "[gw" in out, out
    assert name not in netns.list_netns()


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_netns_tests_skip_without_root_but_fail_under_ci(inner_suite):
    run, _ = inner_suite
    source = """
        import pytest
        @pytest.mark.netns
        def test_needs_root():
            pass
    """
    cp = run(source, as_user=65534)
    assert cp.returncode == 0 and "1 skipped" in cp.stdout and "needs root" in cp.stdout, cp.stdout
    cp = run(source, env={"CI": "true"}, as_user=65534)
    assert cp.returncode == 1 and "CI is set" in cp.stdout and "needs root" in cp.stdout, cp.stdout
    cp = run(source, env={"CI": "true"})                 # as root: it runs
    assert cp.returncode == 0 and "1 passed" in cp.stdout, cp.stdout
