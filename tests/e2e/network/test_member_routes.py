"""Subnet routes and exits in a network (issue 22 items 3-4): a member
advertises them (``[interface] advertise_routes`` / ``exit_node``), the admin
approves them (``phantom network routes approve``), every member follows
the member stream, with no edit of its own.  Real ``network init``,
``directory serve --network``, ``join``, ``phantomd`` (both data paths) and
ping/tcpdump in namespaces.

One LAN: the directory on a; members r (the router and exit), m1, m2; host
e is both the LAN host behind r (192.168.50.2, routing the network's
prefix back through r) and the "internet" host (198.51.100.9, reached only
through r, which masquerades).  The router withdraws its route by reload at
the end: gone at both members within 5 s."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time

import pytest

from phantomlab import netns
from phantomlab.poll import wait_for

from ..dns.test_dns_phantomd import dig
from ..routes.test_exit_node import sources_to
from .test_member_mesh import all_reach, cli, join, network_on, start

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(300)]

LAN, R_LAN, HOST = "192.168.50.0/24", "192.168.50.1", "192.168.50.2"
NET4 = "100.100.0.0/16"                  # network_on's prefix
R_OUT, INTERNET = "198.51.100.1", "198.51.100.9"
NAME, NAME_ADDR = "www.lab.example", "198.51.100.80"     # the internet host's dnsmasq answers it


def reaches(member, addr, timeout=1.0) -> bool:
    return member.host.ping(addr, timeout=timeout)


def routes_listing(admin, auth):
    out = cli(admin, "network", "routes", "--json", "--dir", auth,
              "--admin-token-file", auth / "admin.token")
    return {r["name"]: r for r in json.loads(out.stdout)}


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_advertised_routes_and_exit_work_for_every_member_once_approved(
        daemon_factory, sniffer, tmp_path, datapath, public_dir):
    for tool in ("dnsmasq", "dig"):
        if shutil.which(tool) is None:
            pytest.fail("%s is not installed: run setup.sh" % tool)
    with netns.lan(5) as topo, contextlib.ExitStack() as stack:     # the stack ends first
        a, b, c, d, e = (topo.hosts[n] for n in "abcde")
        b.ns.ip("addr", "add", R_LAN + "/24", "dev", "eth0")
        b.ns.ip("addr", "add", R_OUT + "/24", "dev", "eth0")
        e.ns.ip("addr", "add", HOST + "/24", "dev", "eth0")
        e.ns.ip("addr", "add", INTERNET + "/24", "dev", "eth0")
        e.ns.ip("route", "add", NET4, "via", R_LAN)       # the LAN routes the network back via r
        log = tmp_path / "dnsmasq.log"
        dnsmasq = e.ns.popen(["dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-resolv",
                              "--no-hosts", "--bind-interfaces", "--listen-address=" + INTERNET,
                              "--port=53", "--host-record=%s,%s" % (NAME, NAME_ADDR),
                              "--pid-file", "--log-queries", "--log-facility=-"],
                             stdout=open(log, "w"), stderr=subprocess.STDOUT)
        stack.callback(lambda: (dnsmasq.terminate(), dnsmasq.wait(timeout=10)))
        auth, url, _ = network_on(daemon_factory, a, tmp_path)
        r = join(a, auth, b, "r", public_dir, url)      # reloaded below, as nobody
        m1 = join(a, auth, c, "m1", tmp_path, url)
        m2 = join(a, auth, d, "m2", tmp_path, url)
        # r advertises its LAN and itself as exit: two keys in [interface], nothing else
        text = r.config.read_text()
        r.config.write_text(text.replace("[interface]\n", '[interface]\nadvertise_routes = ["%s"]'
                                         '\nexit_node = true\nexit_dns_upstream = ["%s"]\n'
                                         % (LAN, INTERNET), 1))
        members = [r, m1, m2]
        for m in members:
            start(daemon_factory, m, datapath)
        all_reach(members, 10.0, "the mesh")

        # advertised, not approved: listed as pending, nobody routes it
        wait_for(lambda: routes_listing(a, auth).get("r", {}).get("pending") ==
                 [LAN, "exit"], timeout=10, what="r's advertisement at the directory")
        assert not reaches(m1, HOST) and not reaches(m2, HOST), \
            "an unapproved advertisement gave a route"
        assert m1.api("GET", "/exit")[1]["offered"] == []
        assert m1.host.run(["ip", "route", "show", LAN]).stdout == ""

        # the admin approves the route: both other members reach the LAN host, no edits
        cli(a, "network", "routes", "approve", "r", LAN, "--dir", auth,
            "--admin-token-file", auth / "admin.token")
        t0 = time.monotonic()
        cap = sniffer(e, "eth0", "icmp", name="lan")
        wait_for(lambda: reaches(m1, HOST) and reaches(m2, HOST), timeout=10,
                 what="the LAN host from m1 and m2")
        print("\n%s: LAN host reached from both members %.2f s after the approval"
              % (datapath, time.monotonic() - t0))
        assert sources_to(cap.stop(), HOST) >= {m1.ipv4, m2.ipv4}, "not routed as it is"
        row = routes_listing(a, auth)["r"]
        assert row["approved"] == [LAN] and row["primary"] == [LAN] and row["pending"] == ["exit"]
        st = m1.status()["network"]["routes"]
        assert st["members"] == [{"name": "r", "exit": False, "approved": [LAN],
                                  "primary": [LAN], "standby": []}], st
        assert "dev ph" in m1.host.run(["ip", "route", "show", LAN]).stdout

        # an approval wider than the advertisement is refused
        bad = cli(a, "network", "routes", "approve", "r", "192.168.0.0/16", "--dir", auth,
                  "--admin-token-file", auth / "admin.token", check=False)
        assert bad.returncode == 1 and "never wider" in bad.stderr, bad.stderr

        # revoked: gone from every member within 5 s
        cli(a, "network", "routes", "revoke", "r", LAN, "--dir", auth,
            "--admin-token-file", auth / "admin.token")
        t0 = time.monotonic()
        wait_for(lambda: not reaches(m1, HOST, 0.5) and not reaches(m2, HOST, 0.5), timeout=5,
                 what="the revoked route gone at m1 and m2")
        took = time.monotonic() - t0
        wait_for(lambda: m2.host.run(["ip", "route", "show", LAN]).stdout == "", timeout=5 - took,
                 what="the kernel route gone")
        print("%s: revoked route gone at both members %.2f s after the revoke"
              % (datapath, time.monotonic() - t0))

        # the exit: approved, then picked with `phantom exit use r` on m1
        assert not reaches(m1, INTERNET)
        wait_for(lambda: dnsmasq.poll() is None and "started" in log.read_text(), timeout=10,
                 what="dnsmasq")
        assert dig(m1.host, r.ipv4, NAME)[0] == "REFUSED", "an unapproved exit's DNS answered"
        refused = cli(m1.host, "--token-file", m1.state / "token", "exit", "use", "r",
                      check=False)
        assert refused.returncode != 0, "an unapproved exit was usable"
        cli(a, "network", "routes", "approve", "r", "--exit", "--dir", auth,
            "--admin-token-file", auth / "admin.token")
        wait_for(lambda: m1.api("GET", "/exit")[1]["offered"] == ["r"], timeout=5,
                 what="r offered as exit at m1")
        cli(m1.host, "--token-file", m1.state / "token", "exit", "use", "r")
        cap = sniffer(e, "eth0", "icmp", name="internet")
        wait_for(lambda: reaches(m1, INTERNET), timeout=10, what="the internet host via r")
        assert sources_to(cap.stop(), INTERNET) == {R_OUT}, "the exit did not masquerade"
        # its DNS forwarder answers the members now (to its own upstream)
        assert dig(m1.host, r.ipv4, NAME) == ("NOERROR", [NAME_ADDR])
        assert not reaches(m2, INTERNET), "a member that did not pick the exit got a route"
        # the exit approval revoked: m1's exit is turned off, its traffic stops
        cli(a, "network", "routes", "revoke", "r", "--exit", "--dir", auth,
            "--admin-token-file", auth / "admin.token")
        wait_for(lambda: not reaches(m1, INTERNET, 0.5), timeout=5, what="the revoked exit gone")

        # approved again, then withdrawn by the router (its config, `phantom reload`):
        # the directory narrows the certificate, every member drops it within 5 s
        cli(a, "network", "routes", "approve", "r", LAN, "--dir", auth,
            "--admin-token-file", auth / "admin.token")
        wait_for(lambda: reaches(m1, HOST) and reaches(m2, HOST), timeout=10,
                 what="the LAN host again")
        r.config.write_text(r.config.read_text().replace('advertise_routes = ["%s"]\n' % LAN, ""))
        code, body = r.api("POST", "/reload")
        assert code == 200, body
        t0 = time.monotonic()
        wait_for(lambda: not reaches(m1, HOST, 0.5) and not reaches(m2, HOST, 0.5), timeout=5,
                 what="the withdrawn route gone at m1 and m2")
        print("%s: withdrawn route gone at both members %.2f s after the router's reload"
              % (datapath, time.monotonic() - t0))
        row = routes_listing(a, auth)["r"]
        assert row["advertised"] == [] and row["approved"] == [], row
        all_reach(members, 10.0, "the mesh after it all")
        for m in members:
            assert "Traceback" not in m.daemon.log()


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_two_members_advertising_one_lan_the_earlier_is_primary_the_other_takes_over(
        daemon_factory, sniffer, tmp_path, datapath):
    """r1 (joined first) and r2 both advertise the LAN and both are
    approved: every member routes it through r1 (r2 is a standby, shown as
    such); r1's approval revoked, r2 takes over within 5 s (the LAN's gateway
    follows, as with any two routers on one LAN)."""
    with netns.lan(5) as topo:
        a, b, c, d, e = (topo.hosts[n] for n in "abcde")
        b.ns.ip("addr", "add", R_LAN + "/24", "dev", "eth0")
        c.ns.ip("addr", "add", "192.168.50.3/24", "dev", "eth0")
        e.ns.ip("addr", "add", HOST + "/24", "dev", "eth0")
        e.ns.ip("route", "add", NET4, "via", R_LAN)
        auth, url, _ = network_on(daemon_factory, a, tmp_path)
        r1 = join(a, auth, b, "r1", tmp_path, url)
        time.sleep(1.1)                                  # joined a second later: `since` orders them
        r2 = join(a, auth, c, "r2", tmp_path, url)
        m1 = join(a, auth, d, "m1", tmp_path, url)
        for r in (r1, r2):
            r.config.write_text(r.config.read_text().replace(
                "[interface]\n", '[interface]\nadvertise_routes = ["%s"]\n' % LAN, 1))
        members = [r1, r2, m1]
        for m in members:
            start(daemon_factory, m, datapath)
        all_reach(members, 10.0, "the mesh")
        wait_for(lambda: all(routes_listing(a, auth).get(n, {}).get("advertised") == [LAN]
                             for n in ("r1", "r2")), timeout=10, what="both advertisements")
        for n in ("r2", "r1"):                          # approved in the other order
            cli(a, "network", "routes", "approve", n, "--dir", auth,
                "--admin-token-file", auth / "admin.token")
        rows = routes_listing(a, auth)
        assert rows["r1"]["primary"] == [LAN] and rows["r2"]["primary"] == []
        assert rows["r2"]["standby"] == [{"prefix": LAN, "behind": "r1"}]
        table = cli(a, "network", "routes", "--dir", auth, "--admin-token-file",
                    auth / "admin.token").stdout
        assert "%s (standby behind r1)" % LAN in table, table
        cap = sniffer(b, "eth0", "icmp", name="r1-lan")
        wait_for(lambda: reaches(m1, HOST), timeout=10, what="the LAN host through r1")
        assert sources_to(cap.stop(), HOST) == {m1.ipv4}, "not through r1"
        shown = {r["name"]: r for r in m1.status()["network"]["routes"]["members"]}
        assert shown["r1"]["primary"] == [LAN] and \
            shown["r2"]["standby"] == [{"prefix": LAN, "behind": "r1"}], shown

        cli(a, "network", "routes", "revoke", "r1", "--dir", auth,
            "--admin-token-file", auth / "admin.token")
        t0 = time.monotonic()
        e.ns.ip("route", "replace", NET4, "via", "192.168.50.3")     # the LAN's gateway follows
        cap = sniffer(c, "eth0", "icmp", name="r2-lan")
        wait_for(lambda: reaches(m1, HOST, 0.5), timeout=5, what="the LAN host through r2")
        print("\n%s: r2 took the LAN over %.2f s after r1's revoke"
              % (datapath, time.monotonic() - t0))
        assert sources_to(cap.stop(), HOST) == {m1.ipv4}, "not through r2"
        rows = routes_listing(a, auth)
        assert rows["r2"]["primary"] == [LAN] and rows["r2"]["standby"] == []
        for m in members:
            assert "Traceback" not in m.daemon.log()
