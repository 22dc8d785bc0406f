"""Issue #10, item 1: the privilege drop reaches EVERY thread.

The capability bounding set and no_new_privs are per-thread; only the uid
change (glibc's setxid broadcast) reaches every thread.  A thread that
existed before the bounding set was emptied (a libuv worker started by a
getaddrinfo during API start-up, say) would keep the full bounding set and
NoNewPrivs 0, and could regain root by exec'ing a setuid binary.  Each test
starts one kind of daemon, makes it spawn its worker threads (API calls,
tunnels, directory lookups), then reads /proc/PID/task/*/status of every
thread.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phantomlab.nodes import make_node, mesh, start
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, peer_entry, write_config
from tests.support import REPO

DIR_PORT = 4568
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


# --- reading /proc -------------------------------------------------------------------------------
def thread_status(pid: int) -> dict:
    """tid -> the fields of /proc/PID/task/TID/status (threads that exit meanwhile are skipped)."""
    out = {}
    for tid in sorted(os.listdir("/proc/%d/task" % pid), key=int):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                out[int(tid)] = dict((k, v.strip()) for k, v in
                                     (line.split(":", 1) for line in f if ":" in line))
        except FileNotFoundError:
            continue
    assert out, "no threads readable for pid %d" % pid
    return out


def assert_every_thread_dropped(pid: int, min_threads: int = 2) -> dict:
    """Every thread: uid/gid non-zero, all five capability sets zero, NoNewPrivs 1.

    ``min_threads`` makes sure the check is not vacuous: the daemon must have
    worker threads besides its main thread by now."""
    threads = thread_status(pid)
    assert len(threads) >= min_threads, (
        "expected worker threads in pid %d, found only %s" % (pid, [t["Name"] for t in threads.values()]))
    bad = []
    for tid, f in threads.items():
        uids = [int(x) for x in f["Uid"].split()]
        gids = [int(x) for x in f["Gid"].split()]
        caps = {k: int(f[k], 16) for k in CAP_FIELDS}
        problems = []
        if any(u == 0 for u in uids):
            problems.append("Uid %s" % uids)
        if any(g == 0 for g in gids):
            problems.append("Gid %s" % gids)
        problems += ["%s %016x" % (k, v) for k, v in caps.items() if v != 0]
        if f["NoNewPrivs"] != "1":
            problems.append("NoNewPrivs %s" % f["NoNewPrivs"])
        if f.get("Groups", ""):
            problems.append("Groups %s" % f["Groups"])
        if problems:
            bad.append("thread %d (%s): %s" % (tid, f["Name"], ", ".join(problems)))
    assert not bad, "threads that kept privileges:\n  " + "\n  ".join(bad)
    return threads


def thread_names(threads: dict) -> list:
    return sorted(t["Name"] for t in threads.values())


def _answers(sock) -> bool:
    """GET /status on the socket answers 200 (not yet: the socket file exists
    from bind() a moment before the daemon listens, CI saw ECONNREFUSED)."""
    try:
        return unix_http(sock, "GET", "/status")[0] == 200
    except OSError:
        return False


def unix_http(path: Path, method: str, url: str, token=None, body=None, timeout: float = 30.0):
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.settimeout(timeout)
    conn.sock.connect(str(path))
    headers = {"Host": "localhost"}
    data = None
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, url, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return resp.status, (json.loads(raw) if raw else {})


def cli(host, *args, check=True):
    out = host.run([sys.executable, "-m", "phantom.cli", *args], check=False, timeout=30)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


# --- daemons in namespaces -----------------------------------------------------------------------
@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_tun_daemon_every_thread_dropped(two_hosts, daemon_factory, tmp_path, datapath):
    """TUN mode, API on TCP: after a tunnel is up and the API was used."""
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath)
    code, body = a.api("POST", "/open/n2", timeout=30)
    assert code == 200 and body["state"] == "established", body
    assert a.host.ns.ping(b.tun4, timeout=10)
    for n in (a, b):
        n.status()
        threads = assert_every_thread_dropped(n.daemon.pid)
        if datapath == "fast":       # the fast path's worker (its comm is the process name) besides main
            assert sum(1 for name in thread_names(threads) if name != "libuv-worker") >= 2, \
                thread_names(threads)
        assert n.status()["uid"] != 0


@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_test_port_mode_every_thread_dropped(two_hosts, daemon_factory, tmp_path, datapath):
    """Test-port mode (API on TCP): open over the API, push a datagram through."""
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], mode="test", datapath=datapath,
                tunables=FAST_TUNABLES)
    code, body = a.api("POST", "/open/%s:%d" % (b.host.ip, UDP_PORT), timeout=30)
    assert code == 200 and body["state"] == "established", body
    with a.host.udp_socket() as s:
        s.sendto(b"hello", ("127.0.0.1", 8000))
    for n in (a, b):
        assert_every_thread_dropped(n.daemon.pid)


@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_api_on_a_unix_socket_only_every_thread_dropped(two_hosts, daemon_factory, tmp_path, datapath):
    """http_port 0, API on a Unix socket only.  Without a TCP listener nothing
    resolves at start-up, so the daemon also uses a directory by host name
    (``localhost``): its lookups start libuv workers after the drop."""
    directory = _directory_server(daemon_factory, two_hosts.a, tmp_path / "dir.sqlite", listen="127.0.0.1")
    a = make_node(tmp_path, "n1", 1, two_hosts.a)
    b = make_node(tmp_path, "n2", 2, two_hosts.b)
    sock = tmp_path / "phantom.sock"
    write_config(a, mode="test", peers=[peer_entry(b, mode="test")], tunables=FAST_TUNABLES,
                 extra={"http_port": 0, "http_socket": str(sock), "name": "n1",
                        "endpoints": ["%s:%d" % (a.host.ip, UDP_PORT)]})
    write_config(b, mode="test", peers=[peer_entry(a, mode="test")], tunables=FAST_TUNABLES)
    start(daemon_factory, b)
    start(daemon_factory, a, datapath, wait=False, args=["--directory", "http://localhost:%d" % DIR_PORT])
    wait_for(lambda: sock.exists() or not a.daemon.running, what="the API socket")
    assert a.daemon.running, a.daemon.log_tail()
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    token_file = a.state_dir / "token"
    wait_for(lambda: token_file.exists(), what="the token file")
    wait_for(lambda: _answers(sock), what="the API on the socket")
    code, body = unix_http(sock, "POST", "/open/n2", token=token_file.read_text().strip())
    assert code == 200 and body["state"] == "established", body
    with pytest.raises(OSError):
        a.host.ns.tcp_connect("127.0.0.1", 4567, timeout=1).close()
    wait_for(lambda: cli(two_hosts.a, "directory", "lookup", "n1", "--directory",
                         "http://127.0.0.1:%d" % DIR_PORT, check=False).returncode == 0,
             timeout=15, what="n1 published")
    threads = assert_every_thread_dropped(a.daemon.pid)
    uid = unix_http(sock, "GET", "/status")[1]["uid"]
    assert {int(t["Uid"].split()[0]) for t in threads.values()} == {uid}
    assert_every_thread_dropped(directory.pid)


def _directory_server(daemon_factory, host, db: Path, name="directory", listen=None):
    listen = listen or host.ip
    return daemon_factory(host, ["directory", "serve", "--listen", listen, "--port", str(DIR_PORT),
                                 "--db", str(db)],
                          executable=[sys.executable, "-m", "phantom.cli"], http_port=DIR_PORT,
                          http_host=listen, name=name)


@pytest.mark.netns
@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_directory_client_and_server_every_thread_dropped(two_hosts, daemon_factory, tmp_path, datapath):
    """A daemon with --directory publishing to, and resolving from, a running
    ``phantom directory serve``; both processes are checked.  The db lives in
    a directory only root may enter (pytest's tmp_path) and keeps working."""
    url = "http://%s:%d" % (two_hosts.b.ip, DIR_PORT)
    db = tmp_path / "dir" / "dir.sqlite"
    db.parent.mkdir(mode=0o700)
    directory = _directory_server(daemon_factory, two_hosts.b, db)
    a = make_node(tmp_path, "n1", 1, two_hosts.a)
    write_config(a, mode="tun", peers=[], tunables=FAST_TUNABLES,
                 extra={"name": a.name, "endpoints": ["%s:%d" % (a.host.ip, UDP_PORT)]})
    start(daemon_factory, a, datapath, args=["--directory", url])
    wait_for(lambda: cli(two_hosts.a, "directory", "lookup", "n1", "--directory", url,
                         check=False).returncode == 0, timeout=15, what="n1 published")
    code, body = a.api("POST", "/open/nobody-here", timeout=30)     # a resolve through the directory
    assert code == 404, (code, body)
    assert_every_thread_dropped(a.daemon.pid)
    assert_every_thread_dropped(directory.pid)
    assert os.stat(db).st_uid == 0, "the db keeps its owner: the server writes through root's descriptor"
    # the records survive a restart of the (unprivileged) server: the db was written
    directory.restart(sig=signal.SIGTERM)
    out = cli(two_hosts.a, "directory", "lookup", "n1", "--directory", url, "--json")
    assert json.loads(out.stdout)["name"] == "n1"
    assert_every_thread_dropped(directory.pid, min_threads=1)


# --- the primitives, in a throw-away root subprocess ----------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _run_as_root_child(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=30, env=env)


@needs_root
def test_lock_down_refuses_a_process_with_threads():
    out = _run_as_root_child("""
        import threading, time
        from phantom.privileges import lock_down, PrivilegeError
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="early-bird", daemon=True)
        t.start()
        try:
            lock_down()
        except PrivilegeError as exc:
            print("REFUSED", exc)
        else:
            print("LOCKED")
    """)
    assert "REFUSED" in out.stdout, out.stdout + out.stderr
    assert "early-bird" in out.stdout, "the error names the threads: " + out.stdout


@needs_root
def test_lock_down_then_switch_reaches_threads_started_in_between():
    out = _run_as_root_child("""
        import threading, os
        from phantom.privileges import lock_down, switch_user, resolve_user
        pw = resolve_user(None)
        lock_down()
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="late-worker", daemon=True)
        t.start()
        print("SWITCHED", switch_user(pw))
        ev.set()
    """)
    assert "SWITCHED" in out.stdout, out.stdout + out.stderr


@needs_root
def test_verify_catches_a_thread_that_kept_its_bounding_set():
    """The old order (a thread first, then the drop) must fail start-up loudly."""
    out = _run_as_root_child("""
        import ctypes, os, threading
        from phantom import privileges as P
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="stale-worker", daemon=True)
        t.start()
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in range(64):
            libc.prctl(P.PR_CAPBSET_DROP, cap, 0, 0, 0)   # main thread only
        libc.prctl(P.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
        try:
            P.verify_dropped(65534, 65534)
        except P.PrivilegeError as exc:
            print("CAUGHT", exc)
        else:
            print("MISSED")
    """)
    assert "CAUGHT" in out.stdout and "stale-worker" in out.stdout, out.stdout + out.stderr
