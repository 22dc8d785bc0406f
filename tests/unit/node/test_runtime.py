"""phantom/runtime.py: the runtime record a root phantomd writes so that the
`phantom` client finds its token (a custom state_dir needs no --token-file),
and what the client believes of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phantom import runtime
from phantom.cli import main as cli


def info(port=4567, **kw):
    d = {"http_listen": "127.0.0.1", "http_port": port, "http_socket": None,
         "state_dir": "/etc/phantom/alice", "token_file": "/etc/phantom/alice/token",
         "config": "/etc/phantom/alice/phantom.toml", "mode": "tun", "device": "phantom0",
         "listen_port": 9000}
    d.update(kw)
    return d


@pytest.fixture
def rundir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return {"PHANTOM_RUNTIME_DIR": str(d)}, d


def test_default_directory():
    assert runtime.runtime_dir({}) == Path("/run/phantom")


def test_a_live_daemon_is_found_by_address_or_socket(rundir):
    env, d = rundir
    path = runtime.write_record(info(), env)
    assert path is not None and path.parent == d and oct(path.stat().st_mode & 0o777) == "0o644"
    rec = runtime.find_record("127.0.0.1", 4567, environ=env)
    assert rec["token_file"] == "/etc/phantom/alice/token" and rec["pid"] == os.getpid()
    assert runtime.find_record("localhost", 4567, environ=env)["pid"] == os.getpid()
    assert runtime.find_record("127.0.0.1", 4568, environ=env) is None
    sock = str(d / "api.sock")
    runtime.write_record(info(port=0, http_listen=None, http_socket=sock), env)
    assert runtime.find_record(socket_path=sock, environ=env)["http_socket"] == sock
    assert runtime.find_record(socket_path=str(d / "other.sock"), environ=env) is None
    # systemd's RuntimeDirectory=phantom/%i: records one level down are found too
    sub = d / "wg0"
    sub.mkdir(mode=0o755)
    runtime.write_record(info(port=4600), {"RUNTIME_DIRECTORY": str(sub)})
    assert runtime.find_record("127.0.0.1", 4600, environ=env) is not None


def test_records_of_dead_or_foreign_daemons_are_not_believed(rundir):
    env, d = rundir
    path = runtime.write_record(info(), env)
    rec = json.loads(path.read_text())
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = dict(rec, pid=int(gone.stdout))                 # that process has exited
    stale = d / "daemon-stale.json"
    stale.write_text(json.dumps(dead))
    stale.chmod(0o644)
    path.unlink()
    assert runtime.find_record("127.0.0.1", 4567, environ=env) is None
    # the next daemon that writes a record removes it
    runtime.write_record(info(port=4999), env)
    assert not stale.exists()
    # another network namespace: not ours
    path = runtime.write_record(info(), env)
    path.write_text(json.dumps(dict(rec, netns=(rec["netns"] or 0) + 1)))
    assert runtime.find_record("127.0.0.1", 4567, environ=env) is None
    # writable by others: not believed
    path.write_text(json.dumps(rec))
    assert runtime.find_record("127.0.0.1", 4567, environ=env) is not None
    path.chmod(0o666)
    assert runtime.find_record("127.0.0.1", 4567, environ=env) is None
    path.chmod(0o644)
    d.chmod(0o777)
    assert runtime.find_record("127.0.0.1", 4567, environ=env) is None
    d.chmod(0o755)
    if os.geteuid() == 0:                  # owned by another user (not root, not us)
        os.chown(path, 65534, 65534)
        assert runtime.find_record("127.0.0.1", 4567, environ=env) is None


def test_the_token_hint_names_the_right_way(tmp_path, monkeypatch, capsys):
    """No record, no --token-file: the hint says to pass --token-file with the
    daemon's state_dir (it said "run as the daemon's user or root", wrong for
    root).  With a record, the client reads the file the record names."""
    from tests.unit.cli.test_cli import LiveServer
    monkeypatch.setenv("PHANTOM_RUNTIME_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("PHANTOM_TOKEN_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    srv = LiveServer(tmp_path)
    try:
        rc = cli.main(["--api", srv.url, "close", "x"])
        err = capsys.readouterr().err
        assert rc == 1 and "run as the daemon's user or root" not in err
        assert "recorded where its token is" in err and "pass --token-file <state_dir>/token" in err
        # a record for this address (this process stands in for the daemon)
        env = {"PHANTOM_RUNTIME_DIR": str(tmp_path / "run")}
        (tmp_path / "run").mkdir(mode=0o755)
        runtime.write_record(info(port=srv.port, token_file=str(srv.token_file)), env)
        monkeypatch.setenv("PHANTOM_RUNTIME_DIR", env["PHANTOM_RUNTIME_DIR"])
        rc = cli.main(["--api", srv.url, "close", "x"])
        err = capsys.readouterr().err
        assert rc == 1 and err == "error: no such peer: x\n"       # authorised: the controller answered
        assert srv.controller.calls == [("close", "x")]
    finally:
        srv.close()
