"""member_dns (phantom/node/dns.py): a member serves its network's domain
without a [dns] section; an explicit [dns] wins key by key."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

from phantom.dns.service import DnsSettings, parse_section
from phantom.node.dns import member_dns

MEMBER = SimpleNamespace(
    definition=SimpleNamespace(domain="corp.internal", ipv4=ipaddress.ip_network("100.100.0.0/16"),
                               ipv6=ipaddress.ip_network("fd00:1::/48")),
    cert=SimpleNamespace(name="n1"))


def test_no_network_no_section_no_service():
    assert member_dns(SimpleNamespace(dns=None), None) is None
    assert member_dns(SimpleNamespace(dns=parse_section({"enabled": False})), None) is None
    s = parse_section({"domain": "x.test"})
    assert member_dns(SimpleNamespace(dns=s), None) is s


def test_a_member_serves_its_networks_domain_without_a_section():
    s = member_dns(SimpleNamespace(dns=None), MEMBER)
    assert isinstance(s, DnsSettings) and s.enabled
    assert (s.domain, s.name, s.ipv4_prefix, s.ipv6_prefix) == \
        ("corp.internal", "n1", "100.100.0.0/16", "fd00:1::/48")


def test_an_explicit_section_wins_key_by_key():
    s = member_dns(SimpleNamespace(dns=parse_section({"domain": "other.test", "ttl": 30})), MEMBER)
    assert (s.domain, s.name, s.ttl) == ("other.test", "n1", 30)
    s = member_dns(SimpleNamespace(dns=parse_section({"name": "gw", "port": 5353})), MEMBER)
    assert (s.domain, s.name, s.port) == ("corp.internal", "gw", 5353)
    assert member_dns(SimpleNamespace(dns=parse_section({"enabled": False})), MEMBER) is None


def test_an_exit_node_keeps_port_53_for_its_clients_unless_a_section_says_otherwise():
    assert member_dns(SimpleNamespace(dns=None, exit_node=True), MEMBER) is None
    s = member_dns(SimpleNamespace(dns=parse_section({"listen": ["100.100.0.1"], "port": 5353}),
                                   exit_node=True), MEMBER)
    assert (s.domain, s.port) == ("corp.internal", 5353)
