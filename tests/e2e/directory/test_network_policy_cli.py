"""The network policy end to end over real processes on loopback (issue 21
item 3): ``phantom network init``, ``phantom directory serve --network DIR``
(a real front end on SQLite), ``phantom network policy set|show|test`` in
remote mode against it; a bad policy refused whole with its line and the
policy in force unchanged; the policy served, signed by the front end's
admission key, on the member stream.  (A daemon applying it needs the
member stream's follower: tests/contract/test_policy_datapath.py compiles
it into both data paths through the firewall's API.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from phantom.network import parse_definition
from phantom.network import policy as P

pytestmark = [pytest.mark.timeout(120)]

CLI = [sys.executable, "-m", "phantom.cli"]
POLICY = """\
default = "deny"

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "tcp"
ports = [22]
"""


def cli(*args, check=True):
    out = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True,
                         timeout=60)
    if check:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_policy_set_show_test_against_a_served_network(tmp_path):
    netdir = tmp_path / "corp"
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    cli("network", "init", "corp", "--dir", netdir, "--directory", url)
    netdir.chmod(0o755)                      # the server may switch to nobody after reading it
    server = subprocess.Popen(CLI + ["directory", "serve", "--listen", "127.0.0.1", "--port",
                                     str(port), "--db", str(tmp_path / "dir.sqlite"),
                                     "--network", str(netdir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(url + "/network")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the directory did not answer"
            time.sleep(0.2)
        remote = ["--dir", netdir, "--admin-token-file", netdir / "admin.token"]
        for name, groups in (("laptop1", "laptops"), ("srv1", "servers")):
            token = cli("network", "invite", "--groups", groups, *remote).stdout.strip()
            status = cli("join", token, "--name", name, "--state-dir", tmp_path / name,
                         "--config", tmp_path / (name + ".toml"), "--no-start", check=False)
            assert status.returncode == 0, status.stderr
        good, bad = tmp_path / "policy.toml", tmp_path / "bad.toml"
        good.write_text(POLICY)
        bad.write_text(POLICY.replace("ports = [22]", "ports = [22]\naction = \"allow\""))
        out = cli("network", "policy", "set", bad, *remote, check=False)
        assert out.returncode == 1
        assert out.stderr.startswith("error: policy rule 1 (line 8), action: ")
        assert get(url + "/network/policy")[0] == 404
        out = cli("network", "policy", "set", good, *remote)
        assert "policy seq 1 in force" in out.stdout
        status, doc = get(url + "/network/policy")
        definition = parse_definition((netdir / "network.json").read_bytes())
        p = P.verify_policy(doc, definition, time.time())
        assert p.seq == 1 and p.body == P.parse_policy_source(POLICY)
        status, page = get(url + "/network/members?since=0")
        assert [e["op"] for e in page["events"]] == ["member", "member", "policy"]
        out = cli("network", "policy", "show", *remote)
        assert "rule 1: from group:laptops to group:servers tcp 22" in out.stdout
        out = cli("network", "policy", "test", "laptop1", "srv1", "22", *remote)
        assert out.stdout.startswith("accept  (rule 1: ")
        out = cli("network", "policy", "test", "srv1", "laptop1", "22", *remote)
        assert out.stdout.startswith("drop  (default deny)")
        out = cli("network", "policy", "set", bad, *remote, check=False)
        assert out.returncode == 1 and get(url + "/network/policy")[1]["seq"] == 1
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
