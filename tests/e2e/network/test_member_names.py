"""MagicDNS for members (issue 21 item 1): a member daemon answers DNS for
its network's domain on its tunnel addresses without a ``[dns]`` section,
the names being the members' certificate names; a removed member's name is
gone within 5 s.  Real ``phantom network init``, ``directory serve
--network``, ``join --no-start``, ``phantomd`` and ``dig`` in namespaces,
both data paths."""

from __future__ import annotations

import shutil
import time

import pytest

from phantomlab.poll import wait_for

from ..dns.test_dns_phantomd import dig
from .test_member_mesh import all_reach, cli

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("dig") is None,
                                 reason="dig (bind9-dnsutils) not installed")]

DOMAIN = "corp.internal"            # `network init corp`'s default domain


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_members_answer_each_others_names(corp, datapath, etc_netns, public_dir):
    a, b, c = corp.hosts
    auth = corp.auth
    members = corp.join((b, "n1", "fleet", public_dir),     # reloaded below, as nobody
                        (c, "n2", "fleet"), (a, "n3", "fleet"))
    n1, n2, n3 = members
    for m in members:
        assert "[dns]" not in m.config.read_text()        # nothing but what join wrote
    corp.start(members, datapath)
    all_reach(members, 10.0, "the mesh")
    # the member peers carry the certificates' names
    assert n1.peer_names() == ["n2", "n3"]
    # n1 asks n3 (another member, through the tunnel) for n2: its A and AAAA
    fqdn = "n2." + DOMAIN

    def answers():
        return dig(n1.host, n3.ipv4, fqdn, "A"), dig(n1.host, n3.ipv4, fqdn, "AAAA")

    wait_for(lambda: answers() == (("NOERROR", [n2.ipv4]), ("NOERROR", [n2.ipv6])), timeout=5,
             what="n3 answers n2's A and AAAA")
    # n1 (over IPv6) and its own name: the members were started together, so n1
    # may learn n3 a moment after n3 learnt n2 (names follow within 5 s)
    wait_for(lambda: dig(n2.host, n1.ipv6, "n3." + DOMAIN, "A") == ("NOERROR", [n3.ipv4]),
             timeout=5, what="n1 answers n3's A over IPv6")
    assert dig(n2.host, n1.ipv4, "n1." + DOMAIN, "AAAA") == ("NOERROR", [n1.ipv6])  # its own
    assert dig(n1.host, n3.ipv4, "nobody." + DOMAIN, "A")[0] == "NXDOMAIN"
    assert dig(n1.host, n3.ipv4, "example.com", "A")[0] == "REFUSED"       # never an open resolver
    assert dig(n1.host, n3.ipv4, fqdn, "A", "+tcp") == ("NOERROR", [n2.ipv4])
    # GET /dns says what it serves
    code, shown = n3.api("GET", "/dns")
    assert code == 200 and shown["domain"] == DOMAIN, shown
    assert sorted(x["name"] for x in shown["names"]) == ["n1", "n2", "n3"]

    # `phantom network members --here`: n1's own view, with what only a member knows
    import json
    rows = json.loads(cli(n1.host, "network", "members", "--here", "--json").stdout)
    assert [r["name"] for r in rows] == ["n1", "n2", "n3"], rows
    assert [r["ipv4"] for r in rows] == [n1.ipv4, n2.ipv4, n3.ipv4], rows
    assert [r["online"] for r in rows] == ["self", "yes", "yes"], rows
    assert all(r["path"] == "direct" and r["last_handshake"] for r in rows[1:]), rows
    table = cli(n1.host, "network", "members", "--here").stdout
    assert "ONLINE" in table and "PATH" in table and "n2" in table, table

    # `phantom reload` of the config `phantom join` wrote works after the privilege
    # drop (phantomd re-reads it as nobody): readable config, traversable state dir
    assert n1.config.stat().st_mode & 0o777 == 0o644
    code, body = n1.api("POST", "/reload")
    assert code == 200, body

    # glibc on n1 through resolv.conf as docs/names.md says (the lines `phantom dns
    # --resolv-conf` prints): `ping n2` by the search domain reaches n2
    resolv = cli(n1.host, "--token-file", n1.state / "token", "dns", "--resolv-conf").stdout
    assert "nameserver %s" % n1.ipv4 in resolv and "search %s" % DOMAIN in resolv, resolv
    etc_netns(n1.host, resolv)
    cp = n1.host.run(["ping", "-4", "-c1", "-W3", "n2"], check=False, timeout=20)
    assert cp.returncode == 0 and n2.ipv4 in cp.stdout, cp.stdout + cp.stderr

    # the network removes n2: its name is gone from n3's answers within 5 s
    cli(a, "network", "remove", "n2", "--dir", auth, "--admin-token-file", auth / "admin.token")
    t0 = time.monotonic()
    # each member follows the member stream on its own: both n3's and n1's answers
    wait_for(lambda: dig(n1.host, n3.ipv4, fqdn, "A")[0] == "NXDOMAIN"
             and dig(n3.host, n1.ipv4, fqdn, "AAAA")[0] == "NXDOMAIN", timeout=5,
             what="n2's name gone at n3 and n1")
    print("\n%s: n2's name gone %.2f s after the removal" % (datapath, time.monotonic() - t0))
    assert dig(n1.host, n3.ipv4, fqdn, "AAAA")[0] == "NXDOMAIN"
    for m in members:
        assert "Traceback" not in m.daemon.log()
