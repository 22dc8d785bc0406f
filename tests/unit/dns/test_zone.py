"""The answering core (phantom/dns/zone.py), sans-IO: queries made and
responses read with dnspython's message objects."""

from __future__ import annotations

import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest

from phantom.dns import NameTable, Zone

DOMAIN = "corp.phantom"
V4P, V6P = "100.64.0.0/16", "fd12:3456:789a::/48"


@pytest.fixture
def table():
    return NameTable({
        "n1": (["100.64.0.1"], ["fd12:3456:789a::1"]),
        "n2": (["100.64.0.2"], ["fd12:3456:789a::2"]),
        "n3": (["100.64.0.3"], ["fd12:3456:789a::3"]),
        "v4only": (["100.64.0.4"], []),
    })


@pytest.fixture
def zone(table):
    return Zone(DOMAIN, table, ipv4_prefix=V4P, ipv6_prefix=V6P, nameserver="n1")


def ask(zone, name, rdtype="A", *, tcp=False, rdclass="IN", **kw):
    q = dns.message.make_query(name, rdtype, rdclass, **kw)
    wire = zone.respond(q.to_wire(), tcp=tcp)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id and r.flags & dns.flags.QR
    assert not r.flags & dns.flags.RA, "never a recursive resolver"
    return r


def rcode(r):
    return dns.rcode.to_text(r.rcode())


def answers(r):
    return sorted((rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype), rr.ttl, rd.to_text())
                  for rr in r.answer for rd in rr)


# -- what is answered -----------------------------------------------------------------

def test_a_and_aaaa_of_a_member(zone):
    r = ask(zone, "n3.corp.phantom", "A")
    assert rcode(r) == "NOERROR" and r.flags & dns.flags.AA
    assert answers(r) == [("n3.corp.phantom.", "A", 5, "100.64.0.3")]
    r = ask(zone, "n3.corp.phantom", "AAAA")
    assert answers(r) == [("n3.corp.phantom.", "AAAA", 5, "fd12:3456:789a::3")]
    r = ask(zone, "n3.corp.phantom", "ANY")
    assert [a[1] for a in answers(r)] == ["A", "AAAA"]


def test_names_are_case_insensitive_and_the_query_spelling_is_kept(zone):
    r = ask(zone, "N3.CoRp.PhAnToM", "A")
    assert rcode(r) == "NOERROR"
    assert r.answer[0].name.to_text() == "N3.CoRp.PhAnToM."        # 0x20 resolvers check this
    assert r.question[0].name.to_text() == "N3.CoRp.PhAnToM."


def test_unknown_member_is_nxdomain_with_the_soa_for_negative_caching(zone):
    r = ask(zone, "n9.corp.phantom")
    assert rcode(r) == "NXDOMAIN" and r.flags & dns.flags.AA and not r.answer
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "corp.phantom."
    assert soa.ttl <= 5 and soa[0].minimum <= 5                # RFC 2308: cached for <= 5 s


@pytest.mark.parametrize("name", ["a.n3.corp.phantom", "bad_label.corp.phantom", "-x.corp.phantom",
                                  "x" * 63 + ".y.corp.phantom", r"\200\201.corp.phantom"])
def test_other_names_inside_the_domain_are_nxdomain(zone, name):
    r = ask(zone, name)
    assert rcode(r) == "NXDOMAIN" and not r.answer


@pytest.mark.parametrize("name", ["example.com", "phantom", "xcorp.phantom", "corp.phantom.evil",
                                  ".", "n3.corp.phantom.com", "localhost", "1.0.0.10.in-addr.arpa"])
def test_names_outside_the_domain_are_refused(zone, name):
    for rdtype in ("A", "AAAA", "NS", "ANY", "PTR"):
        r = ask(zone, name, rdtype)
        assert rcode(r) == "REFUSED" and not r.answer and not r.authority
        assert not r.flags & dns.flags.AA


def test_no_recursion_even_when_desired(zone):
    q = dns.message.make_query("example.com", "A")
    assert q.flags & dns.flags.RD
    r = dns.message.from_wire(zone.respond(q.to_wire()))
    assert rcode(r) == "REFUSED" and r.flags & dns.flags.RD and not r.flags & dns.flags.RA


def test_apex_soa_and_ns(zone):
    r = ask(zone, "corp.phantom", "SOA")
    (soa,) = r.answer
    assert soa[0].mname.to_text() == "n1.corp.phantom." and soa[0].rname.to_text() == "hostmaster.corp.phantom."
    r = ask(zone, "corp.phantom", "NS")
    assert answers(r) == [("corp.phantom.", "NS", 5, "n1.corp.phantom.")]
    r = ask(zone, "corp.phantom", "A")                         # no data at the apex
    assert rcode(r) == "NOERROR" and not r.answer and r.authority[0].rdtype == dns.rdatatype.SOA


def test_other_types_of_a_member_are_no_data(zone):
    for rdtype in ("MX", "TXT", "CNAME", "SRV", "HTTPS"):
        r = ask(zone, "n3.corp.phantom", rdtype)
        assert rcode(r) == "NOERROR" and not r.answer
        assert r.authority[0].rdtype == dns.rdatatype.SOA and r.flags & dns.flags.AA
    r = ask(zone, "v4only.corp.phantom", "AAAA")
    assert rcode(r) == "NOERROR" and not r.answer


def test_changes_are_visible_to_the_next_query(zone, table):
    assert answers(ask(zone, "n3.corp.phantom"))[0][3] == "100.64.0.3"
    table.remove("n3")
    assert rcode(ask(zone, "n3.corp.phantom")) == "NXDOMAIN"
    table.set("n3", ["100.64.0.33"], [])
    assert answers(ask(zone, "n3.corp.phantom"))[0][3] == "100.64.0.33"
    table.rename("n3", "db")
    assert rcode(ask(zone, "n3.corp.phantom")) == "NXDOMAIN"
    assert answers(ask(zone, "db.corp.phantom"))[0][3] == "100.64.0.33"


# -- names from the network are input ------------------------------------------------

class HostileSource:
    """A name source that returns what a buggy or hostile member set might."""

    def __init__(self):
        self.looked_up = []

    def lookup(self, name):
        self.looked_up.append(name)
        from phantom.dns import Addresses
        return Addresses((ipaddress.IPv4Address("100.64.0.7"), ipaddress.IPv4Address("8.8.8.8")),
                         (ipaddress.IPv6Address("2001:db8::1"),))

    def reverse(self, address):
        return {"100.64.0.7": "evil.name.with.dots", "100.64.0.8": "ok-name",
                "100.64.0.9": "a" * 64}.get(str(address))


def test_addresses_outside_the_network_are_never_served():
    z = Zone(DOMAIN, HostileSource(), ipv4_prefix=V4P, ipv6_prefix=V6P)
    r = ask(z, "x.corp.phantom", "ANY")
    assert answers(r) == [("x.corp.phantom.", "A", 5, "100.64.0.7")]
    assert z.stats()["addresses_outside_network"] == 2


def test_only_valid_labels_are_looked_up():
    src = HostileSource()
    z = Zone(DOMAIN, src, ipv4_prefix=V4P)
    for name in ("bad_x.corp.phantom", r"\000.corp.phantom", "a.b.corp.phantom"):
        assert rcode(ask(z, name)) == "NXDOMAIN"
    ask(z, "GOOD.corp.phantom")
    assert src.looked_up == ["good"]


def test_an_invalid_member_name_is_never_served_in_ptr_and_is_counted():
    z = Zone(DOMAIN, HostileSource(), ipv4_prefix=V4P)
    for addr in ("100.64.0.7", "100.64.0.9"):
        r = ask(z, dns.reversename.from_address(addr), "PTR")
        assert rcode(r) == "NXDOMAIN" and not r.answer
    assert z.stats()["invalid_member_names"] == 2
    r = ask(z, dns.reversename.from_address("100.64.0.8"), "PTR")
    assert answers(r) == [("8.0.64.100.in-addr.arpa.", "PTR", 5, "ok-name.corp.phantom.")]


# -- PTR ---------------------------------------------------------------------------------

def test_ptr_for_members_in_both_reverse_zones(zone, table):
    r = ask(zone, dns.reversename.from_address("100.64.0.2"), "PTR")
    assert answers(r)[0][3] == "n2.corp.phantom." and r.flags & dns.flags.AA
    r = ask(zone, dns.reversename.from_address("fd12:3456:789a::3"), "PTR")
    assert answers(r)[0][3] == "n3.corp.phantom."
    r = ask(zone, dns.reversename.from_address("100.64.9.9"), "PTR")          # free address
    assert rcode(r) == "NXDOMAIN" and r.authority[0].name.to_text() == "64.100.in-addr.arpa."
    table.remove("n2")
    assert rcode(ask(zone, dns.reversename.from_address("100.64.0.2"), "PTR")) == "NXDOMAIN"


def test_reverse_zone_apex_and_what_is_not_ours(zone):
    r = ask(zone, "64.100.in-addr.arpa", "SOA")
    assert answers(r)[0][1] == "SOA"
    r = ask(zone, "a.9.8.7.6.5.4.3.2.1.d.f.ip6.arpa", "NS")
    assert answers(r)[0][3] == "n1.corp.phantom."
    assert rcode(ask(zone, dns.reversename.from_address("100.65.0.1"), "PTR")) == "REFUSED"
    assert rcode(ask(zone, dns.reversename.from_address("fd12:3456:789b::1"), "PTR")) == "REFUSED"
    # leading zeros: not the canonical name of any address
    assert rcode(ask(zone, "02.0.64.100.in-addr.arpa", "PTR")) == "NXDOMAIN"
    # a partial address under the zone: no data, not NXDOMAIN (RFC 8020)
    r = ask(zone, "0.64.100.in-addr.arpa", "PTR")
    assert rcode(r) == "NOERROR" and not r.answer


def test_a_wider_v4_prefix_cuts_its_reverse_zone_at_the_octet():
    z = Zone(DOMAIN, NameTable({"n1": (["100.64.0.1"], [])}), ipv4_prefix="100.64.0.0/10")
    assert [rz.origin.to_text() for rz in z.reverse_zones] == ["100.in-addr.arpa."]
    assert answers(ask(z, dns.reversename.from_address("100.64.0.1"), "PTR"))[0][3] == "n1.corp.phantom."
    # inside 100/8 but outside 100.64/10: nothing there
    assert rcode(ask(z, dns.reversename.from_address("100.200.0.1"), "PTR")) == "NXDOMAIN"


def test_no_prefixes_no_reverse_zones(table):
    z = Zone(DOMAIN, table)
    assert rcode(ask(z, dns.reversename.from_address("100.64.0.1"), "PTR")) == "REFUSED"


# -- what is not a standard query ------------------------------------------------------

def test_other_opcodes_are_notimp(zone):
    for op in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS, dns.opcode.IQUERY, 3, 15):
        q = dns.message.make_query("n3.corp.phantom", "A")
        q.set_opcode(op)
        r = dns.message.from_wire(zone.respond(q.to_wire()))
        assert rcode(r) == "NOTIMP" and r.opcode() == op and r.id == q.id and not r.answer


def test_not_exactly_one_question_is_formerr(zone):
    q = dns.message.make_query("n3.corp.phantom", "A")
    q.question = []
    r = dns.message.from_wire(zone.respond(q.to_wire()))
    assert rcode(r) == "FORMERR" and not r.answer
    q = dns.message.make_query("n3.corp.phantom", "A")
    q.question.append(dns.message.make_query("n2.corp.phantom", "A").question[0])
    r = dns.message.from_wire(zone.respond(q.to_wire()))
    assert rcode(r) == "FORMERR" and not r.answer and not r.question


def test_records_in_a_query_are_formerr_before_any_parsing(zone):
    # a query carries no answer or authority records and at most OPT and
    # TSIG as additional ones (RFC 9619); refused from the header counts,
    # so no query makes dnspython parse a pile of records
    import dns.rrset
    rr = dns.rrset.from_text("n3.corp.phantom.", 5, "IN", "A", "100.64.0.9")
    for section in ("answer", "authority"):
        q = dns.message.make_query("n3.corp.phantom", "A")
        getattr(q, section).append(rr)
        r = dns.message.from_wire(zone.respond(q.to_wire()))
        assert rcode(r) == "FORMERR" and r.id == q.id and not r.answer and not r.question, section
    q = dns.message.make_query("n3.corp.phantom", "A")
    wire = bytearray(q.to_wire())
    wire[11] = 3                                   # three additional records claimed
    r = dns.message.from_wire(zone.respond(bytes(wire)))
    assert rcode(r) == "FORMERR" and r.id == q.id


def test_garbage_after_a_header_is_formerr_with_the_id(zone):
    q = dns.message.make_query("n3.corp.phantom", "A")
    wire = q.to_wire()
    for bad in (wire[:-3], wire + b"trailing", wire[:12] + b"\xc0\x0c\x00\x01\x00\x01",
                wire[:12] + b"\x3f" + b"a" * 10):
        r = dns.message.from_wire(zone.respond(bad))
        assert rcode(r) == "FORMERR" and r.id == q.id and not r.answer


def test_a_compression_loop_is_formerr(zone):
    # one question whose name is a pointer to itself (offset 12)
    wire = bytes.fromhex("abcd00000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01"
    r = dns.message.from_wire(zone.respond(wire))
    assert rcode(r) == "FORMERR" and r.id == 0xabcd


def test_responses_short_and_oversized_messages_are_dropped_and_counted(zone):
    q = dns.message.make_query("n3.corp.phantom", "A")
    q.flags |= dns.flags.QR
    assert zone.respond(q.to_wire()) is None
    assert zone.respond(b"\x00" * 11) is None
    assert zone.respond(b"") is None
    big = dns.message.make_query("n3.corp.phantom", "A", use_edns=0,
                                 options=[dns.edns.GenericOption(65001, b"x" * 5000)])
    assert zone.respond(big.to_wire(max_size=65535), tcp=True) is None
    s = zone.stats()
    assert s["drops"] == {"not_a_query": 1, "short": 2, "oversized": 1}
    assert s["queries"] == 4 and s["responses"] == {}


def test_edns_version_above_0_is_badvers(zone):
    q = dns.message.make_query("n3.corp.phantom", "A", use_edns=1)
    r = dns.message.from_wire(zone.respond(q.to_wire()))
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0 and not r.answer


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(zone, rdtype):
    r = ask(zone, "corp.phantom", rdtype, tcp=True)
    assert rcode(r) == "REFUSED" and not r.answer


def test_other_classes_and_meta_types(zone):
    assert rcode(ask(zone, "n3.corp.phantom", "A", rdclass="CH")) == "REFUSED"
    assert rcode(ask(zone, "version.bind", "TXT", rdclass="CH")) == "REFUSED"
    assert rcode(ask(zone, "n3.corp.phantom", "OPT")) == "FORMERR"
    assert rcode(ask(zone, "n3.corp.phantom", "MAILB")) == "NOTIMP"


# -- sizes: EDNS payload and truncation -------------------------------------------------

@pytest.fixture
def big_zone():
    t = NameTable({"many": (["100.64.1.%d" % i for i in range(1, 17)],
                            ["fd12:3456:789a::%x" % i for i in range(1, 17)])})
    return Zone(DOMAIN, t, ipv4_prefix=V4P, ipv6_prefix=V6P)


def test_udp_without_edns_is_512_bytes_then_tc(big_zone):
    q = dns.message.make_query("many.corp.phantom", "ANY")
    wire = big_zone.respond(q.to_wire())
    assert len(wire) <= 512
    r = dns.message.from_wire(wire, raise_on_truncation=False)
    assert r.flags & dns.flags.TC and not r.answer and r.question
    assert big_zone.stats()["truncated"] == 1


def test_edns_payload_is_respected(big_zone):
    q = dns.message.make_query("many.corp.phantom", "ANY", use_edns=0, payload=4096)
    wire = big_zone.respond(q.to_wire())
    r = dns.message.from_wire(wire)
    assert not r.flags & dns.flags.TC and len(answers(r)) == 32 and 512 < len(wire) <= 1232
    assert r.edns == 0 and r.payload == 1232                      # what we advertise
    q = dns.message.make_query("many.corp.phantom", "ANY", use_edns=0, payload=600)
    wire = big_zone.respond(q.to_wire())
    assert len(wire) <= 600 and dns.message.from_wire(wire, raise_on_truncation=False).flags & dns.flags.TC


def test_our_udp_payload_caps_the_clients(big_zone):
    z = Zone(DOMAIN, big_zone.names, ipv4_prefix=V4P, ipv6_prefix=V6P, udp_payload=512)
    q = dns.message.make_query("many.corp.phantom", "ANY", use_edns=0, payload=4096)
    wire = z.respond(q.to_wire())
    assert len(wire) <= 512 and dns.message.from_wire(wire, raise_on_truncation=False).flags & dns.flags.TC


def test_tcp_gets_the_whole_answer(big_zone):
    q = dns.message.make_query("many.corp.phantom", "ANY")
    r = dns.message.from_wire(big_zone.respond(q.to_wire(), tcp=True))
    assert not r.flags & dns.flags.TC and len(answers(r)) == 32


# -- counters ----------------------------------------------------------------------------

def test_counters_by_rcode_and_transport(zone):
    ask(zone, "n3.corp.phantom")
    ask(zone, "n9.corp.phantom", tcp=True)
    ask(zone, "example.com")
    s = zone.stats()
    assert s["queries"] == 3 and s["queries_udp"] == 2 and s["queries_tcp"] == 1
    assert s["responses"] == {"NOERROR": 1, "NXDOMAIN": 1, "REFUSED": 1}


@pytest.mark.parametrize("kw", [{"ttl": -1}, {"ttl": 10 ** 6}, {"nameserver": "a.b"},
                                {"udp_payload": 100}, {"max_query": 5},
                                {"ipv4_prefix": "fd00::/48"}, {"ipv6_prefix": "100.64.0.0/16"},
                                {"ipv4_prefix": "100.64.0.1/16"}, {"ipv4_prefix": "0.0.0.0/0"}])
def test_bad_zone_settings_are_refused(table, kw):
    with pytest.raises(ValueError):
        Zone(DOMAIN, table, **kw)
