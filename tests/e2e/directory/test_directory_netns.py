"""The directory server and its CLI across two namespaces (moved from
tests/unit/directory/test_directory.py, the one test there that needs root):
publish, look up by name and by key, revoke."""

from __future__ import annotations

import json
import sys

import pytest

from phantom import crypto
from phantom import directory as d
from phantom.control.keys import write_private_key


# --- end to end, in namespaces -----------------------------------------------------------------------
@pytest.mark.netns
def test_directory_across_namespaces(two_hosts, daemon_factory, tmp_path):
    a, b = two_hosts.a, two_hosts.b
    server = daemon_factory(a, ["serve", "--listen", a.ip, "--port", "4568",
                                "--db", str(tmp_path / "dir.sqlite")],
                            executable=[sys.executable, "-m", "phantom.control.directory"],
                            http_host=a.ip, http_port=4568, name="directory", wait=False)
    server.wait_ready(15.0)
    key_file = tmp_path / "bob.key"
    key = write_private_key(key_file)
    pub = d.b64(crypto.x25519_public(bytes(key)))
    url = "http://%s:4568" % a.ip
    cmd = [sys.executable, "-m", "phantom.control.directory"]
    out = b.run(cmd + ["publish", "--directory", url, "--private-key", str(key_file),
                       "--name", "bob", "--endpoint", "%s:9000" % b.ip,
                       "--allowed-ips", "10.9.0.2/32", "--json"], check=False, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["public_key"] == pub
    for target in ("bob", pub):
        out = b.run(cmd + ["lookup", "--directory", url, target, "--json"], check=False,
                    timeout=30)
        assert out.returncode == 0, out.stderr
        found = json.loads(out.stdout)
        assert found["public_key"] == pub and found["endpoints"] == ["%s:9000" % b.ip]
        assert found["allowed_ips"] == ["10.9.0.2/32"]
    # the server's view from its own namespace: the record is stored as signed
    status, body = a.http("GET", "/records", port=4568, host=a.ip)
    assert status == 200 and [r["name"] for r in body["records"]] == ["bob"]
    out = b.run(cmd + ["revoke", "--directory", url, "--private-key", str(key_file)],
                check=False, timeout=30)
    assert out.returncode == 0, out.stderr
    out = b.run(cmd + ["lookup", "--directory", url, "bob"], check=False, timeout=30)
    assert out.returncode == 1 and "no valid record" in out.stderr
    assert "revoked" in server.log()
