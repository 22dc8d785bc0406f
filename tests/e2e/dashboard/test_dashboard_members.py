"""Identity in the surfaces (issue 21 item 4, issue 20 item 5): on a real
member of a real network (``network init``, ``directory serve --network``,
``join --no-start``, ``phantomd`` in namespaces, both data paths):
``phantom peers`` and GET /peers name the members with their groups,
/metrics labels the per-peer series with the member's name and exports its
groups and our membership, and the dashboard, in a real headless chromium,
shows this node's name, addresses and network and a members table that
loses a removed member within 5 s."""

from __future__ import annotations

import pytest

from phantomlab import browser
from phantomlab.poll import wait_for

from ..network.test_member_mesh import all_reach, cli, join_all, network_on, start_all
from .test_dashboard_browser import shot, text_of

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(300),
              pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]


@pytest.fixture
def driver(tmp_path):
    profile = tmp_path / "chromium"
    profile.mkdir()
    d = browser.make_driver(profile)
    yield d
    d.quit()


def metric_samples(member):
    from prometheus_client.parser import text_string_to_metric_families
    code, text = member.api("GET", "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def member_rows(driver):
    """{name: {cell class: text}} of the members table, read in one script call."""
    return driver.execute_script("""
        const out = {};
        for (const tr of document.querySelectorAll('#members tbody tr[data-member]')) {
          const row = {};
          for (const td of tr.querySelectorAll('td[class]')) row[td.className] = td.innerText.trim();
          out[tr.dataset.member] = row;
        }
        return out;""")


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_members_names_and_groups_in_cli_api_metrics_and_dashboard(lan3, daemon_factory, tmp_path,
                                                                   driver, datapath):
    a, b, c = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    auth, url, _ = network_on(daemon_factory, a, tmp_path)
    members = join_all(a, auth, [(b, "n1", "laptops"), (c, "n2", "servers,db"), (a, "n3", None)],
                       tmp_path, url)
    n1, n2, n3 = members
    start_all(daemon_factory, members, datapath)
    all_reach(members, 10.0, "the mesh")

    # GET /peers and `phantom peers`: the certificates' names and groups
    code, peers = n1.api("GET", "/peers")
    assert code == 200
    by_name = {p["name"]: p for p in peers["peers"]}
    assert sorted(by_name) == ["n2", "n3"]
    assert by_name["n2"]["groups"] == ["db", "servers"] and by_name["n2"]["member"] is True
    assert by_name["n3"]["groups"] == [] and by_name["n2"]["certificate_expires"] > 0
    text = cli(n1.host, "peers", "--token-file", n1.state / "token").stdout
    line = next(x for x in text.splitlines() if x.split()[:1] == ["n2"])
    assert "db,servers" in line.replace(", ", ","), text

    # /metrics: per-peer series named after the member, its groups, our membership
    m = metric_samples(n1)
    assert m[("phantom_peer_rx_bytes_total", (("peer", "n2"),))] > 0
    assert m[("phantom_peer_group", (("group", "servers"), ("peer", "n2")))] == 1
    assert m[("phantom_peer_group", (("group", "db"), ("peer", "n2")))] == 1
    assert not any(k[0] == "phantom_peer_group" and ("peer", "n3") in k[1] for k in m)
    assert m[("phantom_network_info", (("domain", "corp.internal"), ("name", "n1"),
                                       ("network", "corp")))] == 1
    assert m[("phantom_network_members", ())] == 3

    # the dashboard: our identity and the members table
    proxy = browser.NetnsProxy(n1.host.ns.name)
    try:
        driver.get(proxy.url)
        wait_for(lambda: sorted(member_rows(driver)) == ["n1", "n2", "n3"], timeout=10,
                 what="three members in the page")
        ident = text_of(driver, "#identity")
        assert "n1.corp.internal" in ident and n1.ipv4 in ident and n1.ipv6 in ident, ident
        assert "network corp" in ident and "laptops" in ident, ident
        wait_for(lambda: all(r["online"] == "yes" for r in member_rows(driver).values()),
                 timeout=10, what="every member online in the page")
        rows = member_rows(driver)
        assert rows["n2"]["addresses"] == "%s, %s" % (n2.ipv4, n2.ipv6), rows
        assert rows["n2"]["groups"] == "db, servers" and rows["n3"]["groups"] == "-", rows
        assert rows["n2"]["path"] == "direct" and rows["n2"]["expires"].endswith("Z"), rows
        assert rows["n1"]["name"] == "n1 (this node)" and rows["n1"]["groups"] == "laptops", rows
        assert text_of(driver, '#peers tr[data-peer="n2"] .groups') == "db, servers"
        assert browser.console_errors(driver) == []
        shot(driver, "members-" + datapath)

        # a removed member leaves the table within 5 s
        cli(a, "network", "remove", "n3", "--dir", auth, "--admin-token-file",
            auth / "admin.token")
        wait_for(lambda: sorted(member_rows(driver)) == ["n1", "n2"], timeout=5,
                 what="n3 gone from the members table")
    finally:
        proxy.close()
    for x in members:
        assert "Traceback" not in x.daemon.log()
