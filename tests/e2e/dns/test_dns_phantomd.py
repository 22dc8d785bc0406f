"""phantomd's own name service (issue 21 item 1), both data paths: three
nodes in a mesh, n1 with a ``[dns]`` section.  From n2's namespace, through
the tunnel to n1's tunnel address: ``dig`` answers A and AAAA for the
nodes (UDP and TCP, over IPv4 and IPv6), NXDOMAIN for a non-member,
REFUSED outside the domain; ``phantom dns`` and /metrics show the names
and the counters; removing n3 from n1's config and ``phantom reload``
makes n3.corp.phantom NXDOMAIN within 5 s, `phantom open` brings it back
and `phantom close` removes it again, a rename in the config moves the
answer to the new name, each within 5 s;
glibc (getent, ping) resolves through /etc/netns/<ns>/resolv.conf written
as docs/names.md says."""

from __future__ import annotations

import json
import shutil
import sys
import time

import dns.reversename
import pytest

from phantomlab.nodes import make_node, start
from phantomlab.templates import peer_entry, write_config
from tests.support import REPO

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed")]

DOMAIN = "corp.phantom"


def dig(host, server, name, rdtype="A", *extra):
    """(status, [answer data]) of ``dig @server name rdtype`` run in ``host``."""
    cp = host.run(["dig", "@" + server, name, rdtype, "+time=2", "+tries=2", "+nocookie", *extra],
                  check=False, timeout=20)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    status = cp.stdout.split("status: ", 1)[1].split(",", 1)[0]
    short = host.run(["dig", "@" + server, name, rdtype, "+time=2", "+tries=2", "+short", *extra],
                     check=False, timeout=20).stdout.split()
    return status, short


def cli(node, *args):
    cp = node.host.run(["env", "PYTHONPATH=" + str(REPO), sys.executable, "-m", "phantom.cli", *args,
                        "--token-file", str(node.state_dir / "token")], check=False, timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return cp.stdout


def metrics(node) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    code, text = node.api("GET", "/metrics")
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("phantom_dns_"):
                out[(s.name, tuple(sorted(s.labels.values())))] = s.value
    return out


def within(seconds, check, what):
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < seconds, "%s: not within %g s" % (what, seconds)
        time.sleep(0.1)
    return time.monotonic() - t0


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_phantomd_answers_its_peers_names_on_its_tunnel_address(lan3, daemon_factory, tmp_path,
                                                                public_dir, etc_netns, datapath):
    n1, n2, n3 = [make_node(tmp_path, "n%d" % (i + 1), i + 1, h) for i, h in enumerate(lan3.host_list)]
    dns_section = {"domain": DOMAIN, "name": "n1"}
    n1.config = public_dir / "n1.toml"

    def configure_n1(peers):
        write_config(n1, mode="tun", peers=[peer_entry(p, mode="tun") for p in peers], dns=dns_section)
        n1.config.chmod(0o644)

    configure_n1([n2, n3])
    write_config(n2, mode="tun", peers=[peer_entry(n1, mode="tun"), peer_entry(n3, mode="tun")])
    write_config(n3, mode="tun", peers=[peer_entry(n1, mode="tun"), peer_entry(n2, mode="tun")])
    for n in (n1, n2, n3):
        start(daemon_factory, n, datapath)
    client = n2.host                       # a peer's namespace: queries go through the tunnel

    for server in (n1.tun4, n1.tun6):
        for extra in ((), ("+tcp",)):
            assert dig(client, server, "n3." + DOMAIN, "A", *extra) == ("NOERROR", [n3.tun4])
            assert dig(client, server, "n3." + DOMAIN, "AAAA", *extra) == ("NOERROR", [n3.tun6])
    assert dig(client, n1.tun4, "N2." + DOMAIN) == ("NOERROR", [n2.tun4])
    assert dig(client, n1.tun4, "n1." + DOMAIN, "AAAA") == ("NOERROR", [n1.tun6])     # itself
    assert dig(client, n1.tun4, "n9." + DOMAIN)[0] == "NXDOMAIN"                      # not a member
    for addr in (n3.tun4, n3.tun6):                                                    # reverse
        assert dig(client, n1.tun4, dns.reversename.from_address(addr).to_text(), "PTR") == \
            ("NOERROR", ["n3.%s." % DOMAIN])
    assert dig(client, n1.tun4, "example.com")[0] == "REFUSED"                         # not ours
    assert dig(client, n1.tun4, "example.com", "A", "+tcp")[0] == "REFUSED"
    assert "ra" not in client.run(["dig", "@" + n1.tun4, "n3." + DOMAIN], timeout=20).stdout.split(
        "flags:", 1)[1].split(";", 1)[0].split()                                      # no recursion

    # what the daemon says it serves: the CLI (GET /dns) and /metrics
    shown = json.loads(cli(n1, "dns", "--json"))
    assert shown["domain"] == DOMAIN and {n["name"] for n in shown["names"]} == {"n1", "n2", "n3"}
    assert {(e["transport"], e["address"], e["port"]) for e in shown["listen"]} == {
        (t, a, 53) for t in ("udp", "tcp") for a in (n1.tun4, n1.tun6)}
    text = cli(n1, "names")
    assert "n3.%s" % DOMAIN in text and n3.tun4 in text
    m = metrics(n1)
    assert m[("phantom_dns_responses_total", ("NXDOMAIN",))] >= 1
    assert m[("phantom_dns_responses_total", ("REFUSED",))] >= 2
    assert m[("phantom_dns_queries_total", ("tcp",))] >= 4
    assert m[("phantom_dns_queries_total", ("udp",))] >= 6
    assert m[("phantom_dns_drops_total", ("rate_limited",))] == 0
    assert m[("phantom_dns_names", ())] == 3

    # glibc through resolv.conf, as docs/names.md says (the text `phantom dns --resolv-conf` prints)
    resolv = cli(n1, "dns", "--resolv-conf")
    assert "nameserver %s" % n1.tun4 in resolv and "search %s" % DOMAIN in resolv
    etc_netns(n2.host, resolv)
    cp = client.run(["getent", "ahosts", "n3." + DOMAIN], check=False, timeout=20)
    assert cp.returncode == 0 and {l.split()[0] for l in cp.stdout.splitlines()} == {n3.tun4, n3.tun6}
    cp = client.run(["ping", "-4", "-c1", "-W3", "n3"], check=False, timeout=20)      # the search domain
    assert cp.returncode == 0 and n3.tun4 in cp.stdout, cp.stdout + cp.stderr
    assert client.run(["getent", "ahosts", "n9." + DOMAIN], check=False, timeout=20).returncode == 2

    # n3 leaves n1's config: gone from the answers within 5 s of the reload
    configure_n1([n2])
    r = json.loads(cli(n1, "reload", "--json"))
    assert r["removed"] == ["n3"], r
    took = within(5.0, lambda: dig(client, n1.tun4, "n3." + DOMAIN)[0] == "NXDOMAIN", "n3 removed")
    assert client.run(["getent", "ahosts", "n3." + DOMAIN], check=False, timeout=20).returncode == 2
    assert dig(client, n1.tun4, "n2." + DOMAIN) == ("NOERROR", [n2.tun4])
    # back through the API (`phantom open`: a peer added at run time), gone again with `phantom close`
    ep = peer_entry(n3, mode="tun")
    opened = json.loads(cli(n1, "open", ep["endpoint"], "--public-key", n3.pub, "--name", "n3",
                            "--allowed-ips", ",".join(ep["allowed_ips"]), "--json"))
    assert opened["state"] == "established", opened
    within(5.0, lambda: dig(client, n1.tun4, "n3." + DOMAIN, "AAAA") == ("NOERROR", [n3.tun6]), "n3 opened")
    cli(n1, "close", "n3")
    within(5.0, lambda: dig(client, n1.tun4, "n3." + DOMAIN)[0] == "NXDOMAIN", "n3 closed")
    # a rename in the config: the new name answers, the old one is gone, within 5 s
    n2_renamed = dict(peer_entry(n2, mode="tun"), name="web")
    write_config(n1, mode="tun", peers=[n2_renamed], dns=dns_section)
    assert json.loads(cli(n1, "reload", "--json"))["changed"] == {"web": ["name"]}
    within(5.0, lambda: dig(client, n1.tun4, "web." + DOMAIN) == ("NOERROR", [n2.tun4]), "web")
    assert dig(client, n1.tun4, "n2." + DOMAIN)[0] == "NXDOMAIN"
    print("\n%s: n3 gone %.2f s after the reload" % (datapath, took))
    log = n1.daemon.log()
    assert "Traceback" not in log and "DNS for corp.phantom on" in log, log[-3000:]
