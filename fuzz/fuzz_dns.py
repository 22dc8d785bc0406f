#!/usr/bin/env python3
"""Fuzz target "dns": the name service's answering core, with dnspython's
parser underneath it (both instrumented).

Input: byte 0 = flags (bit 0: the query came over TCP; bit 1: force the
header counts of a standard query, qd=1 an=0 ns=0 ar<=2, so mutated bodies
get past the header check into dnspython's parser; bit 2: answer from a
hostile name source that returns bad names and addresses outside the
network), then the query as it came off the wire.

Contract (phantom/dns/zone.py): ``Zone.respond`` never raises, for any
input; it returns None only for a message shorter than a header, longer
than ``max_query`` or with QR set; otherwise a response that dnspython
parses, with the query's id, QR set and RA clear, no larger than the
transport allows (512 without EDNS over UDP, at most the zone's 1232 with
it, 65535 over TCP), whose records are all A/AAAA/SOA/NS/PTR under the
network's domain or its reverse zones, with no answer unless NOERROR.
"""

import ipaddress
import sys

import atheris

import common

with atheris.instrument_imports(include=["phantom", "dns", "ipaddress"]):
    import dns.flags
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdatatype
    from phantom.dns import Addresses, NameTable, Zone

ALLOWED = ()             # nothing may escape respond()

DOMAIN = "corp.phantom"
V4P, V6P = "100.64.0.0/16", "fd12:3456:789a::/48"
TABLE = NameTable({
    "n1": (["100.64.0.1"], ["fd12:3456:789a::1"]),
    "n3": (["100.64.0.3"], ["fd12:3456:789a::3"]),
    "many": (["100.64.1.%d" % i for i in range(1, 17)], ["fd12:3456:789a::%x" % i for i in range(1, 17)]),
})


class Hostile:
    def lookup(self, name):
        return Addresses((ipaddress.IPv4Address("100.64.0.7"), ipaddress.IPv4Address("8.8.8.8")),
                         (ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("fd12:3456:789a::7")))

    def reverse(self, address):
        return {4: "bad_name", 6: "x" * 64}[address.version] if int(address) % 2 else "ok"


ZONES = (Zone(DOMAIN, TABLE, ipv4_prefix=V4P, ipv6_prefix=V6P, nameserver="n1", serial=1),
         Zone(DOMAIN, Hostile(), ipv4_prefix=V4P, ipv6_prefix=V6P, nameserver="n1", serial=1))
ORIGINS = [dns.name.from_text(z) for z in (DOMAIN, "64.100.in-addr.arpa", "a.9.8.7.6.5.4.3.2.1.d.f.ip6.arpa")]
TYPES = {dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.PTR}


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    flags, wire = data[0], bytearray(data[1:])
    tcp = bool(flags & 1)
    if flags & 2 and len(wire) >= 12:
        wire[4:12] = b"\x00\x01\x00\x00\x00\x00\x00" + bytes([wire[11] % 3])
    wire = bytes(wire)
    hostile = (flags >> 2) & 1
    zone = ZONES[hostile]
    served = {b"ok"} if hostile else {n.encode() for n in TABLE.names()}
    out = zone.respond(wire, tcp=tcp)
    if out is None:
        assert len(wire) < 12 or len(wire) > zone.max_query or wire[2] & 0x80, "dropped a query silently"
        return
    assert len(wire) >= 12 and not wire[2] & 0x80
    limit = 65535 if tcp else 1232
    try:
        q = dns.message.from_wire(wire)
        if not tcp:
            limit = 512 if q.edns < 0 else max(512, min(q.payload, 1232))
    except Exception:
        if not tcp:
            limit = 512
    assert len(out) <= limit, "response of %d bytes over a limit of %d" % (len(out), limit)
    r = dns.message.from_wire(out, raise_on_truncation=False)
    assert r.id == int.from_bytes(wire[:2], "big")
    assert r.flags & dns.flags.QR and not r.flags & dns.flags.RA
    for section in (r.answer, r.authority):
        for rrset in section:
            assert rrset.rdtype in TYPES, rrset
            assert any(rrset.name.is_subdomain(o) for o in ORIGINS), rrset
            if rrset.rdtype == dns.rdatatype.PTR:
                for rd in rrset:
                    assert rd.target.is_subdomain(ORIGINS[0]) and rd.target.labels[0] in served, rd
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                for rd in rrset:
                    a = ipaddress.ip_address(rd.address)
                    assert a in ipaddress.ip_network(V4P if a.version == 4 else V6P), rd
    if r.rcode() != dns.rcode.NOERROR:
        assert not r.answer


if __name__ == "__main__":
    common.main(TestOneInput)
