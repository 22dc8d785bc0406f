"""The key directory with real daemons (issue 7): peers found by name, keys
admitted through a trusted signer's endorsement, tunnels that outlive the
directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phantom.keys import write_private_key
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, HTTP_PORT, UDP_PORT, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DIR_PORT = 4568


def cli(host, *args, check=True):
    out = host.run([sys.executable, "-m", "phantom.cli", *args], check=False, timeout=30)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_open_by_name_through_the_directory_with_endorsements(lan3, daemon_factory, tmp_path):
    a_host, b_host, c_host = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    url = "http://%s:%d" % (c_host.ip, DIR_PORT)
    signer_key = tmp_path / "signer.key"
    write_private_key(signer_key)
    signer = cli(c_host, "directory", "signer-key", "--private-key", str(signer_key)).stdout.strip()
    directory = daemon_factory(c_host, ["directory", "serve", "--listen", c_host.ip, "--port", str(DIR_PORT),
                                        "--db", str(tmp_path / "dir.sqlite")],
                               executable=[sys.executable, "-m", "phantom.cli"], http_port=DIR_PORT,
                               http_host=c_host.ip, name="directory")
    a = make_node(tmp_path, "n1", 1, a_host)
    b = make_node(tmp_path, "n2", 2, b_host)
    for n in (a, b):
        write_config(n, mode="tun", peers=[], tunables=FAST_TUNABLES,
                     extra={"directory": url, "name": n.name, "endpoints": ["%s:%d" % (n.host.ip, UDP_PORT)],
                            "trusted_signers": [signer]})
        start(daemon_factory, n)
    for n in (a, b):
        wait_for(lambda: cli(a_host, "directory", "lookup", n.name, "--directory", url,
                             check=False).returncode == 0, what="%s published" % n.name)
    # a key nobody vouches for is not let in
    code, body = a.api("POST", "/open/n2", timeout=30)
    assert code == 504, body
    assert b.status()["handshake_drops"]["unknown_key"] >= 1
    for n in (a, b):
        cli(c_host, "directory", "endorse", "--directory", url, "--private-key", str(signer_key),
            "--public-key", n.pub, "--name", n.name)
    code, body = a.api("POST", "/open/n2", timeout=30)
    assert code == 200 and body["state"] == "established", body
    assert body["allowed_ips"] == ["10.99.0.2/32", "fd99::2/128"]
    assert a.host.ns.ping(b.tun4, timeout=5)
    assert [p["name"] for p in b.status()["peers"]] == ["n1"], "b admitted a through the endorsement"
    # the directory goes away; the tunnel stays
    directory.kill()
    assert a.host.ns.ping(b.tun4, timeout=5)
    code, body = a.api("POST", "/open/n2")
    assert code == 200 and body.get("already_established")
