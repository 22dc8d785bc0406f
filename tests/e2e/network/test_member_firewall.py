"""Config without surprises (issue 20 item 6) on running members, both data
paths: a member whose ``[firewall]`` drops ICMP from the member ``n3``
starts before n3 exists (a warning naming the rule and its line; GET
/firewall shows the rule waiting); once n3 joins, n3's pings are dropped
and counted by that rule while another member's pass (the rules were
recompiled in place when n3 came through the peer door); the config
survives a restart; n3 removed, the rule waits again.  Real ``phantom
network init``, ``directory serve --network``, ``join --no-start`` and
``phantomd`` in namespaces."""

from __future__ import annotations

import pytest

from phantomlab.poll import wait_for

from .test_member_mesh import all_reach, cli, join, pings, start

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(240)]

RULES = """
[firewall]

[[firewall.rule]]
direction = "in"
peer = "n3"
proto = "icmp"
action = "drop"
comment = "n3 may not ping us"
"""


def rule(m):
    code, fw = m.api("GET", "/firewall")
    assert code == 200, fw
    return fw["rules"][0], fw


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_a_rule_naming_a_member_not_known_yet_waits_for_it(corp, daemon_factory, tmp_path,
                                                           datapath):
    a, b, c = corp.hosts
    auth, url = corp.auth, corp.url
    srv = join(a, auth, b, "srv", tmp_path, url)
    with open(srv.config, "a") as f:
        f.write(RULES)
    line = srv.config.read_text().splitlines().index("[[firewall.rule]]") + 1
    n2 = join(a, auth, a, "n2", tmp_path, url)
    for m in (srv, n2):
        start(daemon_factory, m, datapath)      # on the old code: "unknown peer 'n3'", exit 2
    r, fw = rule(srv)
    assert r["waiting"] == "for peer n3" and r["peer"] == "n3", r
    assert any("no peer is called 'n3' (yet)" in w for w in fw["warnings"]), fw
    wanted = "firewall.rule[0].peer: no peer is called 'n3' (yet)"
    assert "%s line %d)" % (srv.config, line) in next(
        ln for ln in srv.daemon.log().splitlines() if wanted in ln)
    out = cli(b, "firewall", "show", "--token-file", srv.state / "token")
    assert "for peer n3" in out.stdout, out.stdout
    all_reach([n2], 10.0, "n2 to srv before n3 exists", among=[srv])

    # n3 joins: srv admits it through the peer door, the rule comes into force
    n3 = start(daemon_factory, join(a, auth, c, "n3", tmp_path, url), datapath)
    all_reach([n3], 10.0, "n3 to n2", among=[n2])
    wait_for(lambda: "waiting" not in rule(srv)[0], timeout=10, what="the rule in force on srv")
    assert pings([(n3, srv)] * 3, timeout=1.0) == [("n3", "srv")] * 3, "n3's pings dropped"
    assert rule(srv)[0]["hits"] >= 3
    assert pings([(n2, srv)]) == [], "another member's pings pass"
    assert [p["last_handshake"] for p in srv.status()["peers"] if p["name"] == "n3"][0], \
        "the tunnel is up: the firewall dropped the pings, not the handshake"
    warned = [ln for ln in srv.daemon.log().splitlines() if wanted in ln]
    assert len(warned) == 1, warned                   # once, not at every recompile

    # the config survives a restart; the cached n3 is known again
    srv.daemon.stop()
    start(daemon_factory, srv, datapath)
    wait_for(lambda: "waiting" not in rule(srv)[0], timeout=10, what="the rule after a restart")
    # the restarted srv handshakes on its first packet (its peers wait 15 s for a
    # dead session, as WireGuard does); n3's echo reply is dropped by the rule too
    all_reach([srv], 10.0, "the restarted srv to n2", among=[n2])
    all_reach([n2], 10.0, "n2 to the restarted srv", among=[srv])
    assert pings([(srv, n3)], timeout=2.0) == [("srv", "n3")]
    assert pings([(n3, srv)] * 2, timeout=1.0) == [("n3", "srv")] * 2
    wait_for(lambda: rule(srv)[0]["hits"] >= 2, timeout=5, what="n3's icmp dropped by the rule")

    # n3 removed from the network: the rule waits for it again
    cli(a, "network", "remove", "n3", "--dir", auth, "--admin-token-file", auth / "admin.token")
    wait_for(lambda: rule(srv)[0].get("waiting") == "for peer n3", timeout=10,
             what="the rule waiting again after n3's removal")
    assert pings([(n2, srv)]) == []
    assert srv.daemon.running and "Traceback" not in srv.daemon.log()
