"""The name service as phantomd runs it (phantom/dns/service.py): the
``[dns]`` section, the names feed from peers, the service on real loopback
sockets queried with dnspython's client, its /metrics families and
`phantom dns`'s text."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from types import SimpleNamespace

import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from phantom.control.config import settings_from_mapping
from phantom.control.errors import ConfigError
from phantom.control.metrics import make_registry, render
from phantom.dataplane.types import Mode
from phantom.dns.service import (DEFAULT_DOMAIN, DnsSettings, NameService, NameSync, parse_section,
                                 peer_entries)
from phantom.dns.names import NameTable
from phantom.dns.show import format_dns

ADDRS = [ipaddress.ip_interface("10.9.0.1/24"), ipaddress.ip_interface("fd09::1/64")]


def net(*xs):
    return [ipaddress.ip_network(x) for x in xs]


# -- [dns] ---------------------------------------------------------------------------------------
def test_a_dns_section_turns_the_service_on_with_defaults():
    s = settings_from_mapping({"interface": {"addresses": ["10.9.0.1/24"]}, "dns": {}})
    assert s.dns == DnsSettings(enabled=True)
    assert s.dns.domain == DEFAULT_DOMAIN and s.dns.port == 53 and s.dns.listen is None
    assert settings_from_mapping({}).dns is None
    s = settings_from_mapping({"dns": {"enabled": False, "domain": "Corp.Phantom.", "listen": "127.0.0.1",
                                       "resolved": True, "rate": 5, "ipv4_prefix": "10.9.0.7/24"}})
    assert (s.dns.enabled, s.dns.domain, s.dns.listen, s.dns.resolved, s.dns.rate, s.dns.ipv4_prefix) == \
        (False, "corp.phantom", ("127.0.0.1",), "yes", 5.0, "10.9.0.0/24")


@pytest.mark.parametrize("table, key", [
    ({"domain": "x..y"}, "dns.domain"), ({"domain": "in-addr.arpa"}, "dns.domain"),
    ({"domain": "k\u212a.phantom"}, "dns.domain"), ({"domain": 5}, "dns.domain"),
    ({"name": "bad_name"}, "dns.name"), ({"name": "-x"}, "dns.name"),
    ({"listen": ["10.0.0.1", "nope"]}, "dns.listen[1]"), ({"listen": []}, "dns.listen"),
    ({"port": 70000}, "dns.port"), ({"port": True}, "dns.port"), ({"ttl": 86400}, "dns.ttl"),
    ({"rate": 0}, "dns.rate"), ({"rate": float("nan")}, "dns.rate"), ({"burst": 0}, "dns.burst"),
    ({"tcp_idle": -1}, "dns.tcp_idle"), ({"enabled": "yes"}, "dns.enabled"),
    ({"resolved": "maybe"}, "dns.resolved"), ({"ipv4_prefix": "fd00::/8"}, "dns.ipv4_prefix"),
    ({"ipv6_prefix": "nope"}, "dns.ipv6_prefix"), ({"listn": "10.0.0.1"}, "dns.listn"),
])
def test_bad_dns_settings_are_refused_naming_the_key(table, key):
    with pytest.raises(ConfigError) as e:
        settings_from_mapping({"dns": table})
    assert e.value.key == key
    with pytest.raises(ConfigError):
        parse_section([1])


def test_without_a_tunnel_address_listen_must_be_given():
    with pytest.raises(ConfigError) as e:
        NameService(DnsSettings(enabled=True), None, [])
    assert e.value.key == "dns.listen"


# -- the feed --------------------------------------------------------------------------------------
def test_peer_entries_are_our_name_and_the_peers_host_addresses():
    e = peer_entries("N1", ADDRS, [("n2", net("10.9.0.2/32", "fd09::2/128")),
                                   ("router", net("10.9.0.3/32", "192.168.7.0/24")),
                                   ("subnet-only", net("192.168.8.0/24")),
                                   ("n1", net("10.9.0.66/32"))])             # takes our name: left out
    assert e == [("n1", [ipaddress.ip_address("10.9.0.1")], [ipaddress.ip_address("fd09::1")]),
                 ("n2", [ipaddress.ip_address("10.9.0.2")], [ipaddress.ip_address("fd09::2")]),
                 ("router", [ipaddress.ip_address("10.9.0.3")], [])]
    assert peer_entries(None, ADDRS, [("n2", net("10.9.0.2/32"))])[0][0] == "n2"


def test_sync_applies_only_differences_and_reports_a_bad_name_once(caplog):
    table = NameTable()
    sync = NameSync(table)
    snap = [("n2", ["10.9.0.2"], []), ("n3", ["10.9.0.3"], []), ("my_laptop", ["10.9.0.4"], [])]
    with caplog.at_level(logging.WARNING, logger="phantom.dns"):
        assert sync.sync(snap) == (["n2", "n3"], [])
        assert sync.sync(snap) == ([], [])                          # nothing changed: nothing done
    assert table.names() == ["n2", "n3"] and table.invalid_names == 1
    assert len([r for r in caplog.records if "my_laptop" in r.getMessage()]) == 1
    changed, removed = sync.sync([("n2", ["10.9.0.22"], []), ("n4", ["10.9.0.4"], [])])
    assert changed == ["n2", "n4"] and removed == ["n3"]
    assert table.lookup("n2").ipv4 == (ipaddress.ip_address("10.9.0.22"),) and "n3" not in table
    assert table.reverse(ipaddress.ip_address("10.9.0.3")) is None
    assert sync.sync([("N4", ["10.9.0.4"], [])]) == (["N4"], ["n2"])    # a new spelling: same name
    assert table.names() == ["n4"]


# -- the service on loopback ----------------------------------------------------------------------
def ask(port, name, rdtype="A", tcp=False, host="127.0.0.1", timeout=5):
    q = dns.message.make_query(name, rdtype)
    r = (dns.query.tcp if tcp else dns.query.udp)(q, host, port=port, timeout=timeout)
    return dns.rcode.to_text(r.rcode()), sorted(rd.to_text() for rrset in r.answer for rd in rrset)


def stub_daemon(names):
    return SimpleNamespace(s=SimpleNamespace(mode=Mode.TUN, fast=False), started=time.time(), dp=None,
                           engine=None, names=names)


def scrape_dns(daemon):
    text = render(make_registry(daemon, process=False)).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("phantom_dns"):
                out[(s.name, tuple(s.labels.values()))] = s.value
    return out


def test_the_service_answers_what_it_was_fed_and_counts_for_metrics():
    settings = DnsSettings(enabled=True, domain="corp.phantom", name="n1", listen=("127.0.0.1",),
                           port=0, rate=0.01, burst=4)
    svc = NameService(settings, None, ADDRS)
    assert svc.own_name == "n1"
    results = {}

    async def go():
        svc.bind()
        await svc.start()
        port = svc.server.endpoints()[0][1][1]
        svc.sync(peer_entries(svc.own_name, ADDRS, [("n2", net("10.9.0.2/32", "fd09::2/128"))]))
        loop = asyncio.get_running_loop()
        call = lambda *a, **k: loop.run_in_executor(None, lambda: ask(port, *a, **k))  # noqa: E731
        results["a"] = await call("n2.corp.phantom")
        results["aaaa_tcp"] = await call("n2.corp.phantom", "AAAA", tcp=True)
        svc.sync(peer_entries(svc.own_name, ADDRS, []))                    # n2 leaves
        results["gone"] = await call("n2.corp.phantom")
        results["outside"] = await call("example.com")
        # the burst (4) is spent and refills at 0.01/s: the next query is dropped unanswered
        try:
            await call("n1.corp.phantom", timeout=1)
        except dns.exception.Timeout:
            results["limited"] = True
        results["describe"] = svc.describe()
        results["metrics"] = scrape_dns(stub_daemon(svc))
        await svc.close()

    import dns.exception
    asyncio.run(go())
    assert results["a"] == ("NOERROR", ["10.9.0.2"])
    assert results["aaaa_tcp"] == ("NOERROR", ["fd09::2"])
    assert results["gone"] == ("NXDOMAIN", [])
    assert results["outside"] == ("REFUSED", [])
    assert results.get("limited")
    d = results["describe"]
    assert d["domain"] == "corp.phantom" and d["nameserver"] == "n1.corp.phantom"
    assert [n["fqdn"] for n in d["names"]] == ["n1.corp.phantom"]
    assert d["reverse_zones"] == ["0.9.10.in-addr.arpa", "0.0.0.0.0.0.0.0.0.0.0.0.9.0.d.f.ip6.arpa"]
    assert d["resolv_conf"].splitlines()[1:] == ["nameserver 127.0.0.1", "search corp.phantom"]
    m = results["metrics"]
    assert m[("phantom_dns_queries_total", ("udp",))] == 3 and m[("phantom_dns_queries_total", ("tcp",))] == 1
    assert m[("phantom_dns_responses_total", ("NXDOMAIN",))] == 1
    assert m[("phantom_dns_responses_total", ("REFUSED",))] == 1
    assert m[("phantom_dns_drops_total", ("rate_limited",))] >= 1
    assert m[("phantom_dns_names", ())] == 1
    text = format_dns(d)
    assert "n1.corp.phantom" in text and "rate_limited" in text and "REFUSED 1" in text
    assert format_dns(d, resolv_conf=True).endswith("search corp.phantom")
    assert "off" in format_dns({"enabled": False, "names": []})


def test_no_dns_no_families():
    assert scrape_dns(stub_daemon(None)) == {}


def test_split_dns_where_resolved_does_not_run(tmp_path):
    svc = NameService(DnsSettings(enabled=True, resolved="auto"), "n1", ADDRS)
    svc.register_split_dns("phtun0", run_dir=str(tmp_path / "absent"), netns_check=lambda: True)
    assert svc.split is None and svc.split_error is None
    with pytest.raises(OSError, match="systemd-resolved does not run"):
        NameService(DnsSettings(enabled=True, resolved="yes"), "n1", ADDRS).register_split_dns(
            "phtun0", run_dir=str(tmp_path / "absent"), netns_check=lambda: True)
    NameService(DnsSettings(enabled=True, resolved="no"), "n1", ADDRS).register_split_dns("phtun0")


@pytest.mark.parametrize("section, key", [("port = 70000", "dns.port"),
                                          ("domain = \"corp.phantom\"", "dns.listen")])
def test_phantomd_exits_2_on_a_bad_dns_section_before_opening_anything(tmp_path, section, key):
    import subprocess
    import sys
    conf = tmp_path / "phantom.toml"
    # test mode, no tunnel address: [dns] must say where to listen
    conf.write_text("[interface]\nmode = \"test\"\nstate_dir = \"%s\"\nhttp_port = 0\n"
                    "http_socket = \"%s\"\n\n[dns]\n%s\n" % (tmp_path / "state", tmp_path / "api.sock", section))
    cp = subprocess.run([sys.executable, "-m", "phantom.daemon", "--config", str(conf)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and "config error: %s" % key in cp.stderr, (cp.returncode, cp.stderr)


def test_every_dns_key_is_documented_and_in_the_example():
    import re
    from phantom.dns.service import KEYS
    from tests.support import REPO
    names_md = (REPO / "docs" / "names.md").read_text()
    example = (REPO / "examples" / "phantom.toml").read_text().split("\n[dns]\n", 1)[1].split("\n[", 1)[0]
    missing = [k for k in KEYS if "`%s`" % k not in names_md] + \
        ["example: " + k for k in KEYS if not re.search(r"^#? ?%s = " % k, example, re.M)]
    assert missing == []
    import tomllib
    s = parse_section(tomllib.loads("[dns]\n" + example)["dns"])
    assert s.enabled and s.domain == "corp.phantom"


def test_due_looks_once_a_second_and_snapshots_on_change_or_every_30_s():
    svc = NameService(DnsSettings(enabled=True), "n1", ADDRS)
    t0 = time.monotonic()
    assert svc.due((2, 2), now=t0)                     # first look
    svc.sync([])                                       # a snapshot at about t0
    assert not svc.due((3, 3), now=t0 + 0.5)           # not a second yet
    assert svc.due((3, 3), now=t0 + 1.0)               # changed
    assert not svc.due((3, 3), now=t0 + 2.0)           # unchanged
    assert svc.due((3, 4), now=t0 + 3.0)               # one left, one came: the highest id moved
    assert not svc.due((3, 4), now=t0 + 4.0)
    assert svc.due((3, 4), now=t0 + 31.0)              # 30 s without a snapshot


def test_split_dns_only_from_resolveds_network_namespace(tmp_path):
    from phantom.dns.resolved import in_init_netns
    assert in_init_netns(pid1_ns="/proc/self/ns/net")       # the same namespace file
    other = tmp_path / "ns"
    other.write_text("")
    assert not in_init_netns(own_ns=str(other))             # another inode: another namespace
    assert not in_init_netns(pid1_ns=str(tmp_path / "absent"))
    resolved_dir = tmp_path / "resolve"
    resolved_dir.mkdir()                                    # as if resolved ran
    svc = NameService(DnsSettings(enabled=True, resolved="auto"), "n1", ADDRS)
    svc.register_split_dns("phtun0", run_dir=str(resolved_dir), netns_check=lambda: False)
    assert svc.split is None and svc.split_error is None     # nothing run, nothing registered
    with pytest.raises(OSError, match="another network namespace"):
        NameService(DnsSettings(enabled=True, resolved="yes"), "n1", ADDRS).register_split_dns(
            "phtun0", run_dir=str(resolved_dir), netns_check=lambda: False)


def test_a_taken_port_is_a_clear_error():
    import socket
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        svc = NameService(DnsSettings(enabled=True, listen=("127.0.0.1",), port=port), "n1", ADDRS)
        with pytest.raises(OSError, match=r"dns: cannot serve on 127\.0\.0\.1 port %d" % port):
            svc.bind()
    finally:
        taken.close()
