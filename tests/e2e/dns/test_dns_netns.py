"""The name service as real resolvers see it (issue 21, "Done means"):
the responder runs in namespace a on port 53 of its "tunnel" addresses
(100.64.0.1, fd12:3456:789a::1 on a's veth, standing in for the tunnel
device); the clients run in namespace b: ``dig`` (BIND's) for A, AAAA,
NXDOMAIN, REFUSED and a removal, and glibc's resolver (``getent``,
``ping``) through /etc/netns/<b>/resolv.conf written as docs/names.md
tells users (phantom.dns.resolv_conf)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from phantom.dns import resolv_conf
from phantomlab.dnsd import Dnsd

pytestmark = pytest.mark.netns

DOMAIN = "corp.phantom"
V4P, V6P = "100.64.0.0/16", "fd12:3456:789a::/48"
SERVER4, SERVER6 = "100.64.0.1", "fd12:3456:789a::1"
MEMBERS = {
    "n1": [["100.64.0.1"], ["fd12:3456:789a::1"]],        # the node serving (a)
    "n2": [["100.64.0.2"], ["fd12:3456:789a::2"]],
    "n3": [["100.64.0.3"], ["fd12:3456:789a::3"]],        # b
    "n4": [["100.64.0.4"], ["fd12:3456:789a::4"]],
}


@pytest.fixture
def named(two_hosts, tmp_path):
    """(dnsd in a, client host b)."""
    a, b = two_hosts.a, two_hosts.b
    for host, i in ((a, 1), (b, 3)):
        host.add_address("100.64.0.%d/16" % i)
        host.add_address("fd12:3456:789a::%d/48" % i)
    a.ns.wait_addresses_ready()
    b.ns.wait_addresses_ready()
    d = Dnsd(a, ["--domain", DOMAIN, "--listen", SERVER4, "--listen", SERVER6,
                 "--ipv4-prefix", V4P, "--ipv6-prefix", V6P, "--nameserver", "n1",
                 "--names", json.dumps(MEMBERS)], tmp_path / "dnsd.log").start()
    try:
        yield d, b
    finally:
        d.stop()
        assert "Traceback" not in d.log_text(), d.log_text()


def dig(host, name, rdtype="A", server=SERVER4, *extra):
    """dig from ``host``: (status, flags, [(owner, type, ttl, data)])."""
    cp = host.run(["dig", "@" + server, name, rdtype, "+time=2", "+tries=2", "+nocookie", *extra],
                  check=False, timeout=20)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    out = cp.stdout
    status = re.search(r"status: (\w+)", out).group(1)
    flags = re.search(r";; flags: ([a-z ]*);", out).group(1).split()
    answer = []
    m = re.search(r";; ANSWER SECTION:\n(.*?)\n\n", out, re.S)
    if m:
        for line in m.group(1).splitlines():
            owner, ttl, _cls, typ, data = line.split(None, 4)
            answer.append((owner, typ, int(ttl), data))
    return status, flags, answer


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed")
def test_dig_a_aaaa_nxdomain_refused_over_udp_and_tcp_and_both_families(named):
    _, b = named
    for server in (SERVER4, SERVER6):
        for extra in ((), ("+tcp",)):
            status, flags, ans = dig(b, "n3.corp.phantom", "A", server, *extra)
            assert status == "NOERROR" and "aa" in flags and "ra" not in flags
            assert ans == [("n3.corp.phantom.", "A", 5, "100.64.0.3")]
            status, _, ans = dig(b, "n3.corp.phantom", "AAAA", server, *extra)
            assert ans == [("n3.corp.phantom.", "AAAA", 5, "fd12:3456:789a::3")]
            status, flags, ans = dig(b, "n9.corp.phantom", "A", server, *extra)
            assert status == "NXDOMAIN" and "aa" in flags and ans == []
            status, flags, ans = dig(b, "example.com", "A", server, *extra)
            assert status == "REFUSED" and ans == [] and "ra" not in flags
    # the apex, and PTR
    _, _, ans = dig(b, "corp.phantom", "SOA")
    assert ans[0][1] == "SOA" and ans[0][3].startswith("n1.corp.phantom. hostmaster.corp.phantom.")
    _, _, ans = dig(b, "2.0.64.100.in-addr.arpa", "PTR")
    assert ans == [("2.0.64.100.in-addr.arpa.", "PTR", 5, "n2.corp.phantom.")]


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed")
def test_a_removal_and_a_rename_are_visible_within_5_seconds(named):
    d, b = named
    assert dig(b, "n2.corp.phantom")[2][0][3] == "100.64.0.2"
    t0 = time.monotonic()
    assert d.request({"op": "remove", "name": "n2"})["ok"]
    while dig(b, "n2.corp.phantom")[0] != "NXDOMAIN":
        assert time.monotonic() - t0 < 5.0, "n2 still answered 5 s after its removal"
        time.sleep(0.1)
    removal = time.monotonic() - t0
    t0 = time.monotonic()
    assert d.request({"op": "rename", "old": "n4", "new": "db"})["ok"]
    while dig(b, "n4.corp.phantom")[0] != "NXDOMAIN":
        assert time.monotonic() - t0 < 5.0
        time.sleep(0.1)
    assert dig(b, "db.corp.phantom")[2] == [("db.corp.phantom.", "A", 5, "100.64.0.4")]
    print("removal visible after %.3f s (dig), rename after %.3f s" % (removal, time.monotonic() - t0))
    # a bad name from the network is refused, counted, never served
    assert not d.request({"op": "set", "name": "evil_name", "ipv4": ["100.64.0.9"]})["ok"]
    assert dig(b, "evil_name.corp.phantom")[0] == "NXDOMAIN"
    assert d.stats()["stats"]["names"]["invalid_names"] == 1


@pytest.fixture
def glibc_resolv(named):
    """/etc/netns/<b>/resolv.conf, as docs/names.md says, removed afterwards."""
    _, b = named
    parent = Path("/etc/netns")
    etc = parent / b.ns.name                 # the namespace's name is this run's own
    made_parent = not parent.exists()
    etc.mkdir(parents=True, exist_ok=True)
    conf = etc / "resolv.conf"
    conf.write_text(resolv_conf([SERVER4], DOMAIN))
    try:
        yield named
    finally:
        conf.unlink(missing_ok=True)
        etc.rmdir()
        if made_parent:
            try:
                parent.rmdir()               # unless another run put its own there meanwhile
            except OSError:
                pass


def getent(host, *args):
    cp = host.run(["getent", *args], check=False, timeout=20)
    return cp.returncode, sorted({line.split()[0] for line in cp.stdout.splitlines()})


@pytest.mark.skipif(shutil.which("getent") is None or shutil.which("ping") is None,
                    reason="getent/ping not installed")
def test_glibc_resolves_members_through_resolv_conf(glibc_resolv):
    d, b = glibc_resolv
    # the file the user writes is the one glibc reads inside the namespace
    assert "nameserver 100.64.0.1" in b.run(["cat", "/etc/resolv.conf"]).stdout
    rc, addrs = getent(b, "ahosts", "n3.corp.phantom")
    assert rc == 0 and addrs == ["100.64.0.3", "fd12:3456:789a::3"]
    rc, addrs = getent(b, "ahosts", "n1")                        # the search domain
    assert rc == 0 and addrs == ["100.64.0.1", "fd12:3456:789a::1"]
    cp = b.run(["ping", "-4", "-c1", "-W2", "n1.corp.phantom"], check=False, timeout=20)
    assert cp.returncode == 0 and "100.64.0.1" in cp.stdout, cp.stdout + cp.stderr
    cp = b.run(["ping", "-6", "-c1", "-W2", "n1.corp.phantom"], check=False, timeout=20)
    assert cp.returncode == 0 and "fd12:3456:789a::1" in cp.stdout, cp.stdout + cp.stderr
    assert getent(b, "ahosts", "n9.corp.phantom")[0] == 2        # not found
    assert getent(b, "ahosts", "example.com")[0] == 2            # not resolved: REFUSED
    # a removal reaches glibc (no cache) at once, within 5 s at most
    t0 = time.monotonic()
    d.request({"op": "remove", "name": "n3"})
    while getent(b, "ahosts", "n3.corp.phantom")[0] == 0:
        assert time.monotonic() - t0 < 5.0
        time.sleep(0.1)
    s = d.stats()["stats"]
    assert s["responses"].get("NOERROR", 0) >= 4 and s["responses"].get("REFUSED", 0) >= 1
