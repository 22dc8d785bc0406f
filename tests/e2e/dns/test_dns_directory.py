"""Names of peers admitted from the key directory (issue 21 item 1: the
names come from what the daemon knows): n1 serves [dns] and has no
[[peer]]; n2 opens n1 by name through the directory, and n1 admits n2
through a trusted signer's endorsement.  n2.corp.phantom then answers on
n1 within 5 s, queried from n2 through the tunnel, on both data paths."""

from __future__ import annotations

import shutil
import sys
import time

import pytest

from phantom.control.keys import write_private_key
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, write_config

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed")]

DIR_PORT = 4568
DOMAIN = "corp.phantom"


def cli(host, *args, check=True):
    out = host.run([sys.executable, "-m", "phantom.cli", *args], check=False, timeout=30)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def dig_short(host, server, name, rdtype="A"):
    cp = host.run(["dig", "@" + server, name, rdtype, "+time=1", "+tries=1", "+short"], check=False, timeout=20)
    return cp.stdout.split()


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_peer_admitted_from_the_directory_gets_its_name(lan3, daemon_factory, tmp_path, datapath):
    a_host, b_host, c_host = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    url = "http://%s:%d" % (c_host.ip, DIR_PORT)
    signer_key = tmp_path / "signer.key"
    write_private_key(signer_key)
    signer = cli(c_host, "directory", "signer-key", "--private-key", str(signer_key)).stdout.strip()
    daemon_factory(c_host, ["directory", "serve", "--listen", c_host.ip, "--port", str(DIR_PORT),
                            "--db", str(tmp_path / "dir.sqlite")],
                   executable=[sys.executable, "-m", "phantom.cli"], http_port=DIR_PORT,
                   http_host=c_host.ip, name="directory")
    n1 = make_node(tmp_path, "n1", 1, a_host)
    n2 = make_node(tmp_path, "n2", 2, b_host)
    for n in (n1, n2):
        write_config(n, mode="tun", peers=[], tunables=FAST_TUNABLES,
                     extra={"directory": url, "name": n.name, "endpoints": ["%s:%d" % (n.host.ip, UDP_PORT)],
                            "trusted_signers": [signer]},
                     dns={"domain": DOMAIN} if n is n1 else None)
        start(daemon_factory, n, datapath)
    for n in (n1, n2):
        wait_for(lambda: cli(a_host, "directory", "lookup", n.name, "--directory", url,
                             check=False).returncode == 0, what="%s published" % n.name)
        cli(c_host, "directory", "endorse", "--directory", url, "--private-key", str(signer_key),
            "--public-key", n.pub, "--name", n.name)
    # before: n1 knows no peer, so n2 is not a name there (asked from n1's own namespace)
    assert dig_short(a_host, n1.tun4, "n2." + DOMAIN) == []
    assert dig_short(a_host, n1.tun4, "n1." + DOMAIN) == [n1.tun4]       # [interface] name
    code, body = n2.api("POST", "/open/n1", timeout=30)
    assert code == 200 and body["state"] == "established", body
    assert [p["name"] for p in n1.status()["peers"]] == ["n2"], "n1 admitted n2 through the endorsement"
    t0 = time.monotonic()
    wait_for(lambda: dig_short(b_host, n1.tun4, "n2." + DOMAIN) == [n2.tun4], timeout=5,
             what="n2.%s on n1" % DOMAIN)
    print("\n%s: n2's name answered %.2f s after the tunnel" % (datapath, time.monotonic() - t0))
    assert dig_short(b_host, n1.tun4, "n2." + DOMAIN, "AAAA") == [n2.tun6]
