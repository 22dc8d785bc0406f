"""The answering core of the name service: one query in wire form in, one
response in wire form out (or nothing), no I/O.  dnspython parses and
renders every message; nothing here reads or writes DNS wire format by hand.

What is answered, for the network's domain D (``corp.phantom``):

* ``NAME.D`` A / AAAA: the member's addresses from the :class:`NameSource`
  (looked up per query, so a change is visible to the next query); ANY
  gives both.  Other types: no data (NOERROR, SOA in authority).
* ``D`` SOA and NS (so resolvers accept the zone); other types: no data.
* any other name under D (unknown member, deeper name, a label that is not
  a valid member name): NXDOMAIN with the SOA in authority.
* the network's reverse zones, when the prefixes are given: PTR for a
  member's address; NXDOMAIN for a free address in the prefix.
* anything else: REFUSED.  Never recursion; RA is always clear.

Answers are authoritative (AA) with a short TTL (5 s by default), and the
SOA's minimum is the same, so a removed name disappears from caches
within that time.  Not a query (QR set), shorter than a header or longer
than ``max_query``: dropped and counted.  Another opcode: NOTIMP.  Not
exactly one question, any answer or authority record, more than two
additional records (OPT, TSIG), or bytes dnspython refuses: FORMERR, with
the query's id and no sections.  EDNS version > 0: BADVERS.
Zone transfers, other classes: REFUSED.  Over UDP a response larger than
the client's EDNS payload (512 without EDNS, at most ``udp_payload``) is
cut to its question with TC set, so the client retries over TCP.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from typing import Callable

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.reversename
import dns.rrset
import dns.wire

from .names import DEFAULT_TTL, Addresses, NameSource, normalize_domain, normalize_label

__all__ = ["Zone", "DEFAULT_TTL", "DEFAULT_UDP_PAYLOAD", "MAX_QUERY"]

DEFAULT_UDP_PAYLOAD = 1232  # the DNS flag day 2020 value: no IP fragmentation
# A stub resolver's query is < 300 bytes (a 255-byte name, an OPT record with
# a cookie, padded to 128-byte blocks: <= 384).  The cap bounds the parse:
# dnspython spends ~8 us per EDNS option, so a 4 KB query of empty options
# would cost ~10 ms; at 512 bytes the worst query costs ~1 ms.
MAX_QUERY = 512
HEADER = 12

IN = dns.rdataclass.IN
A, AAAA, PTR, SOA, NS, ANY = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.PTR,
                              dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.ANY)
REFUSED_TYPES = frozenset((dns.rdatatype.AXFR, dns.rdatatype.IXFR))
PARSE_ERRORS = (dns.exception.DNSException, ValueError, TypeError, IndexError, KeyError,
                UnicodeError, OverflowError, AttributeError)


class _ReverseZone:
    """One reverse zone: the prefix of the network and its origin in
    in-addr.arpa / ip6.arpa, cut at the octet (v4) or nibble (v6) boundary."""

    def __init__(self, prefix: str) -> None:
        net = ipaddress.ip_network(prefix, strict=True)
        self.network = net
        if net.version == 4:
            if net.prefixlen < 8:
                raise ValueError("ipv4 prefix %s: /8 or longer needed for a reverse zone" % prefix)
            keep = net.prefixlen // 8
            octets = str(net.network_address).split(".")[:keep]
            self.origin = dns.name.from_text(".".join(reversed(octets)) + ".in-addr.arpa.")
        else:
            if net.prefixlen < 4:
                raise ValueError("ipv6 prefix %s: /4 or longer needed for a reverse zone" % prefix)
            keep = net.prefixlen // 4
            nibbles = net.network_address.exploded.replace(":", "")[:keep]
            self.origin = dns.name.from_text(".".join(reversed(nibbles)) + ".ip6.arpa.")
        # labels below the origin in a full address name
        self.depth = (4 if net.version == 4 else 32) - (len(self.origin.labels) - 3)


class Zone:
    """The network's zone.  ``respond(wire, tcp=...)`` answers one query.

    ``domain``: the network's domain (``corp.phantom``).  ``names``: the
    :class:`NameSource` (the member set).  ``ipv4_prefix``/``ipv6_prefix``:
    the network's prefixes; when given, A/AAAA answers hold only addresses
    inside them (others are left out and counted) and PTR is answered for
    their reverse zones.  ``nameserver``: the label the NS and SOA name
    (the daemon passes its own member name, so it resolves).
    """

    def __init__(self, domain: str, names: NameSource, *, ipv4_prefix: str | None = None,
                 ipv6_prefix: str | None = None, ttl: int = DEFAULT_TTL,
                 negative_ttl: int | None = None, nameserver: str = "ns",
                 udp_payload: int = DEFAULT_UDP_PAYLOAD, max_query: int = MAX_QUERY,
                 serial: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.domain = normalize_domain(domain)
        self.origin = dns.name.from_text(self.domain + ".")
        self.names = names
        ns_label = normalize_label(nameserver)
        if ns_label is None:
            raise ValueError("nameserver %r is not a DNS label" % (nameserver,))
        if not (0 <= ttl <= 86400):
            raise ValueError("ttl must be 0..86400 seconds")
        self.ttl = int(ttl)
        self.negative_ttl = int(self.ttl if negative_ttl is None else negative_ttl)
        if not (0 <= self.negative_ttl <= 86400):
            raise ValueError("negative_ttl must be 0..86400 seconds")
        if not (512 <= udp_payload <= 65535):
            raise ValueError("udp_payload must be 512..65535")
        self.udp_payload = int(udp_payload)
        if not (HEADER <= max_query <= 65535):
            raise ValueError("max_query must be 12..65535")
        self.max_query = int(max_query)
        self.reverse_zones: list[_ReverseZone] = []
        self.networks = {}
        for prefix, version in ((ipv4_prefix, 4), (ipv6_prefix, 6)):
            if prefix is None:
                continue
            rz = _ReverseZone(prefix)
            if rz.network.version != version:
                raise ValueError("%s is not an IPv%d prefix" % (prefix, version))
            self.reverse_zones.append(rz)
            self.networks[version] = rz.network
        self.serial = int(clock()) & 0xFFFFFFFF if serial is None else serial & 0xFFFFFFFF
        self.ns_name = dns.name.Name((ns_label.encode(),)) + self.origin
        self._apex = {z.origin: self._apex_rrsets(z.origin) for z in self.reverse_zones}
        self._apex[self.origin] = self._apex_rrsets(self.origin)
        self.counters: Counter = Counter()

    # -- building blocks -------------------------------------------------------
    def _apex_rrsets(self, origin: dns.name.Name) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
        soa = dns.rrset.RRset(origin, IN, SOA)
        soa.update_ttl(self.negative_ttl)       # RFC 2308: negative TTL = min(SOA TTL, minimum)
        soa.add(dns.rdtypes.ANY.SOA.SOA(
            IN, SOA, self.ns_name, dns.name.Name((b"hostmaster",)) + self.origin,
            self.serial, 3600, 600, 86400, self.negative_ttl))
        ns = dns.rrset.RRset(origin, IN, NS)
        ns.update_ttl(self.ttl)
        ns.add(dns.rdtypes.ANY.NS.NS(IN, NS, self.ns_name))
        return soa, ns

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def stats(self) -> dict:
        """Counters: ``queries``, ``responses`` by rcode, ``truncated``,
        ``drops`` by reason, and the bad data from the name source that was
        left out of answers."""
        c = self.counters
        return {
            "queries": c["queries"],
            "queries_udp": c["queries_udp"],
            "queries_tcp": c["queries_tcp"],
            "responses": {k[9:]: v for k, v in sorted(c.items()) if k.startswith("response.")},
            "truncated": c["truncated"],
            "drops": {k[5:]: v for k, v in sorted(c.items()) if k.startswith("drop.")},
            "invalid_member_names": c["invalid_member_names"],
            "addresses_outside_network": c["addresses_outside_network"],
        }

    # -- the entry point ---------------------------------------------------------
    def respond(self, wire: bytes, *, tcp: bool = False) -> bytes | None:
        """The response to ``wire`` (one query, without TCP's length
        prefix), or None when it is dropped.  Never raises on any input."""
        c = self.counters
        c["queries"] += 1
        c["queries_tcp" if tcp else "queries_udp"] += 1
        if len(wire) < HEADER:
            c["drop.short"] += 1
            return None
        if len(wire) > self.max_query:
            c["drop.oversized"] += 1
            return None
        qid, flags, qdcount, ancount, nscount, arcount = dns.wire.Parser(wire).get_struct("!HHHHHH")
        if flags & dns.flags.QR:
            c["drop.not_a_query"] += 1         # never answer a response: no loops
            return None
        if dns.opcode.from_flags(flags) != dns.opcode.QUERY:
            return self._header_only(qid, flags, dns.rcode.NOTIMP, tcp)
        # A standard query has one question, no answer or authority records
        # and at most OPT and TSIG as additional records (RFC 9619; unbound
        # checks the same).  Checked before parsing, so no query makes
        # dnspython parse hundreds of records: the parse stays small.
        if qdcount != 1 or ancount or nscount or arcount > 2:
            return self._header_only(qid, flags, dns.rcode.FORMERR, tcp)
        try:
            query = dns.message.from_wire(wire)
        except PARSE_ERRORS:
            return self._header_only(qid, flags, dns.rcode.FORMERR, tcp)
        response = dns.message.make_response(query, recursion_available=False,
                                             our_payload=self.udp_payload)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return self._render(query, response, tcp)
        self._answer(query.question[0], response)
        return self._render(query, response, tcp)

    # -- answering -----------------------------------------------------------------
    def _answer(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        qname, qtype, qclass = question.name, question.rdtype, question.rdclass
        if qtype == dns.rdatatype.OPT or qtype in (dns.rdatatype.TSIG, dns.rdatatype.TKEY):
            response.set_rcode(dns.rcode.FORMERR)
            return
        if qclass != IN or qtype in REFUSED_TYPES:
            response.set_rcode(dns.rcode.REFUSED)
            return
        if dns.rdatatype.is_metatype(qtype) and qtype != ANY:
            response.set_rcode(dns.rcode.NOTIMP)
            return
        if qname.is_subdomain(self.origin):
            self._forward(qname, qtype, response)
            return
        for rz in self.reverse_zones:
            if qname.is_subdomain(rz.origin):
                self._reverse(rz, qname, qtype, response)
                return
        response.set_rcode(dns.rcode.REFUSED)

    def _authoritative(self, response: dns.message.Message) -> None:
        response.flags |= dns.flags.AA

    def _apex_answer(self, origin, qname, qtype, response) -> None:
        soa, ns = self._apex[origin]
        self._authoritative(response)
        if qtype in (SOA, ANY):
            response.answer.append(self._owned(soa, qname, self.negative_ttl))
        if qtype in (NS, ANY):
            response.answer.append(self._owned(ns, qname, self.ttl))
        if not response.answer:
            response.authority.append(soa)        # no data

    @staticmethod
    def _owned(rrset: dns.rrset.RRset, qname: dns.name.Name, ttl: int) -> dns.rrset.RRset:
        """``rrset`` under the query's own spelling of the name (0x20)."""
        out = dns.rrset.RRset(qname, rrset.rdclass, rrset.rdtype)
        out.update_ttl(ttl)
        for rd in rrset:
            out.add(rd)
        return out

    def _negative(self, origin, response, nxdomain: bool) -> None:
        self._authoritative(response)
        if nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._apex[origin][0])

    def _forward(self, qname: dns.name.Name, qtype: int, response) -> None:
        depth = len(qname.labels) - len(self.origin.labels)
        if depth == 0:
            self._apex_answer(self.origin, qname, qtype, response)
            return
        entry = None
        if depth == 1:
            try:
                label = normalize_label(qname.labels[0].decode("ascii"))
            except UnicodeDecodeError:
                label = None
            if label is not None:
                entry = self.names.lookup(label)
        if entry is None:
            self._negative(self.origin, response, nxdomain=True)
            return
        rrsets = self._address_rrsets(qname, entry, qtype)
        self._authoritative(response)
        if rrsets:
            response.answer.extend(rrsets)
        else:
            response.authority.append(self._apex[self.origin][0])

    def _address_rrsets(self, qname, entry: Addresses, qtype: int) -> list[dns.rrset.RRset]:
        out = []
        for rdtype, version, addrs, cls in ((A, 4, entry.ipv4, dns.rdtypes.IN.A.A),
                                            (AAAA, 6, entry.ipv6, dns.rdtypes.IN.AAAA.AAAA)):
            if qtype not in (rdtype, ANY) or not addrs:
                continue
            rrset = dns.rrset.RRset(qname, IN, rdtype)
            rrset.update_ttl(self.ttl)
            net = self.networks.get(version)
            for a in addrs:
                if getattr(a, "version", None) != version or (net is not None and a not in net):
                    self._count("addresses_outside_network")
                    continue
                rrset.add(cls(IN, rdtype, str(a)))
            if rrset:
                out.append(rrset)
        return out

    def _reverse(self, rz: _ReverseZone, qname: dns.name.Name, qtype: int, response) -> None:
        depth = len(qname.labels) - len(rz.origin.labels)
        if depth == 0:
            self._apex_answer(rz.origin, qname, qtype, response)
            return
        if depth != rz.depth:                      # a partial address: no data
            self._authoritative(response)
            response.authority.append(self._apex[rz.origin][0])
            return
        try:
            address = ipaddress.ip_address(dns.reversename.to_address(qname))
        except PARSE_ERRORS:
            self._negative(rz.origin, response, nxdomain=True)
            return
        if address not in rz.network or dns.reversename.from_address(str(address)) != qname:
            # outside the network's prefix (under a wider origin), or not the
            # canonical spelling of the address (leading zeros and the like)
            self._negative(rz.origin, response, nxdomain=True)
            return
        name = self.names.reverse(address)
        if name is None:
            self._negative(rz.origin, response, nxdomain=True)
            return
        label = normalize_label(name)
        if label is None:
            self._count("invalid_member_names")       # never served
            self._negative(rz.origin, response, nxdomain=True)
            return
        self._authoritative(response)
        if qtype in (PTR, ANY):
            rrset = dns.rrset.RRset(qname, IN, PTR)
            rrset.update_ttl(self.ttl)
            rrset.add(dns.rdtypes.ANY.PTR.PTR(IN, PTR, dns.name.Name((label.encode(),)) + self.origin))
            response.answer.append(rrset)
        else:
            response.authority.append(self._apex[rz.origin][0])

    # -- rendering -----------------------------------------------------------------
    def _limit(self, query: dns.message.Message | None, tcp: bool) -> int:
        if tcp:
            return 65535
        if query is None or query.edns < 0:
            return 512
        return max(512, min(query.payload, self.udp_payload))

    def _render(self, query, response: dns.message.Message, tcp: bool) -> bytes:
        limit = self._limit(query, tcp)
        try:
            out = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # cut to the question, TC set: the client asks again over TCP
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC
            out = response.to_wire(max_size=limit)
            self._count("truncated")
        self._count("response." + dns.rcode.to_text(response.rcode()))
        return out

    def _header_only(self, qid: int, flags: int, rcode: int, tcp: bool) -> bytes:
        """A response with the query's id, opcode and RD, no sections: for
        queries dnspython could not parse and opcodes we do not serve."""
        response = dns.message.Message(id=qid)
        response.flags = dns.flags.QR | (flags & dns.flags.RD)
        response.set_opcode(dns.opcode.from_flags(flags))
        response.set_rcode(rcode)
        return self._render(None, response, tcp)
