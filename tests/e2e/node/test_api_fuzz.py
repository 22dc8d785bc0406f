"""Schemathesis against a live phantomd (issue 7): every operation of the
daemon's own OpenAPI description, with and without the token, with generated
bodies and paths.  No 5xx, no crash.

The daemon runs in a namespace of its own that has nothing but loopback, so
the endpoints schemathesis makes up for POST /open go nowhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phantomlab import netns
from phantomlab.nodes import make_node, start
from phantomlab.templates import write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TUNABLES = {"rekey_timeout": 0.2, "handshake_jitter": 0.0, "open_attempts": 1}


def _st() -> str:
    exe = Path(sys.executable).parent / "st"
    return str(exe) if exe.exists() else (shutil.which("st") or "st")


def test_schemathesis_finds_no_server_error(daemon_factory, tmp_path):
    ns = netns.Namespace(netns.unique_prefix() + "-api")
    try:
        class Host:        # the rig's Host shape, for phantomlab.nodes
            pass
        host = Host()
        host.ns = ns
        host.ip = "127.0.0.1"
        node = make_node(tmp_path, "n1", 1, host)
        other = make_node(tmp_path, "n2", 2, host)
        write_config(node, mode="test", peers=[{"name": "n2", "public_key": other.pub,
                                                "endpoint": "127.0.0.1:9999"}], tunables=TUNABLES)
        node.daemon = daemon_factory(ns, ["--config", str(node.config)], name="n1",
                                     token_file=node.state_dir / "token")
        token = node.daemon.token
        cmd = [_st(), "run", "http://127.0.0.1:4567/openapi.json",
               "--checks", "not_a_server_error",
               "-H", "Authorization: Bearer %s" % token,
               "-n", "50", "--request-timeout", "10", "--no-color"]
        out = ns.run(cmd, check=False, timeout=600)
        report = out.stdout + out.stderr
        assert out.returncode == 0, report[-4000:]
        assert node.daemon.running, "the daemon survived"
        code, body = ns.http("GET", "/status")
        assert code == 200
    finally:
        ns.delete()
