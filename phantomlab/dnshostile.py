"""Hostile DNS queries for the name service's tests (tests/e2e/dns) and
the fuzz seeds: random bytes, truncations and bit flips of real queries,
compression loops and pointer chains, oversized messages, many questions,
and well-formed queries with every odd field (opcodes, classes, meta
types, EDNS versions, QR set, names in and out of the domain).

Well-formed queries are made with dnspython; the malformed ones are byte
surgery on those (or a 12-byte header plus crafted bytes), which is the
point: no library would send them.
"""

from __future__ import annotations

import random
import struct
from typing import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rdataclass
import dns.rdatatype

__all__ = ["KINDS", "hostile_queries", "valid_query", "header"]

KINDS = ("random", "truncated", "bitflip", "compression", "oversized", "questions", "odd")
WEIGHTS = (20, 15, 15, 15, 5, 10, 20)
QTYPES = ("A", "AAAA", "ANY", "SOA", "NS", "PTR", "MX", "TXT", "AXFR", "IXFR", "OPT", "TSIG",
          "MAILB", "CNAME", "SRV", "HTTPS", "TYPE65280")


def header(qid: int, flags: int = 0, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def _name(rng: random.Random, domain: str) -> str:
    r = rng.random()
    label = rng.choice(["n1", "n2", "n3", "N3", "n9", "x" * rng.randrange(1, 64), "bad_label", "a-b",
                        "-x", "db"])
    if r < 0.5:
        return "%s.%s" % (label, domain)
    if r < 0.6:
        return domain
    if r < 0.7:
        return "%s.%s.%s" % (label, label, domain)
    if r < 0.8:
        return "%d.%d.64.100.in-addr.arpa" % (rng.randrange(256), rng.randrange(256))
    return rng.choice(["example.com", "phantom", "x" + domain, ".", "localhost", "version.bind",
                       "%s.evil.example" % label])


def valid_query(rng: random.Random, domain: str) -> bytes:
    q = dns.message.make_query(_name(rng, domain), rng.choice(QTYPES),
                               use_edns=rng.choice([None, None, 0, 0, 1]),
                               payload=rng.choice([512, 1232, 4096, 65535]))
    q.id = rng.randrange(65536)
    return q.to_wire()


def _odd(rng: random.Random, domain: str) -> bytes:
    q = dns.message.make_query(_name(rng, domain), rng.choice(QTYPES),
                               rdclass=rng.choice(["IN", "IN", "IN", "CH", "HS", "ANY", "NONE"]),
                               use_edns=rng.choice([None, 0, 1, 255]),
                               payload=rng.randrange(0, 65536))
    q.id = rng.randrange(65536)
    r = rng.random()
    if r < 0.2:
        q.set_opcode(rng.choice([1, 2, 3, 4, 5, 6, 15]))
    elif r < 0.3:
        q.flags |= dns.flags.QR
    elif r < 0.4:
        q.flags |= rng.choice([dns.flags.TC, dns.flags.AA, dns.flags.RA, dns.flags.AD, dns.flags.CD])
    elif r < 0.5:
        q.question = []
    elif r < 0.6:
        q.question = q.question * rng.randrange(2, 5)
    elif r < 0.7 and q.edns >= 0:
        q.use_edns(0, options=[dns.edns.GenericOption(rng.randrange(65536), rng.randbytes(rng.randrange(40)))])
    return q.to_wire(max_size=65535)


def _compression(rng: random.Random) -> bytes:
    qid = rng.randrange(65536)
    k = rng.randrange(6)
    if k == 0:      # the question's name is a pointer to itself
        return header(qid) + b"\xc0\x0c\x00\x01\x00\x01"
    if k == 1:      # a label, then a pointer back to that label: a loop
        return header(qid) + b"\x01a\xc0\x0c\x00\x01\x00\x01"
    if k == 2:      # a pointer forward, into the type/class
        return header(qid) + b"\xc0\x0e\x00\x01\x00\x01"
    if k == 3:      # two names pointing at each other (question + an answer owner)
        return header(qid, an=1) + b"\x01a\xc0\x12\x00\x01\x00\x01" + b"\x01b\xc0\x0c" + \
            b"\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04"
    if k == 4:      # a long chain: each record's owner = a label + a pointer to the previous one
        n = rng.randrange(2, 200)
        body = b"\x01a\x00\x00\x01\x00\x01"
        prev = 12
        rrs = b""
        for _ in range(n):
            here = 12 + len(body) + len(rrs)
            rrs += b"\x01b" + struct.pack("!H", 0xC000 | prev) + b"\x00\x01\x00\x01\x00\x00\x00\x05\x00\x00"
            prev = here
        return header(qid, an=n) + body + rrs
    # reserved label types (0x40, 0x80) and a pointer past the end
    return header(qid) + rng.choice([b"\x41a", b"\x81a", b"\xc0\xff", b"\xff\xff"]) + b"\x00\x01\x00\x01"


def _oversized(rng: random.Random, domain: str) -> bytes:
    size = rng.randrange(600, 9000)
    q = dns.message.make_query("n3." + domain, "A", use_edns=0,
                               options=[dns.edns.GenericOption(65001, b"\0" * (size - 40))])
    return q.to_wire(max_size=65535)


def _questions(rng: random.Random) -> bytes:
    n = rng.randrange(2, 80)           # 70 fit in 512 bytes; more are oversized
    qd = rng.choice([n, n, 65535, 0])
    return header(rng.randrange(65536), qd=qd) + b"\x01a\x00\x00\x01\x00\x01" * n


def hostile_queries(rng: random.Random, domain: str, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` (kind, message) pairs drawn with fixed weights from :data:`KINDS`."""
    for _ in range(count):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        if kind == "random":
            yield kind, rng.randbytes(rng.randrange(0, 600))
        elif kind == "truncated":
            w = valid_query(rng, domain)
            yield kind, w[:rng.randrange(len(w))]
        elif kind == "bitflip":
            w = bytearray(valid_query(rng, domain))
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(w) * 8)
                w[i // 8] ^= 1 << (i % 8)
            yield kind, bytes(w)
        elif kind == "compression":
            yield kind, _compression(rng)
        elif kind == "oversized":
            yield kind, _oversized(rng, domain)
        elif kind == "questions":
            yield kind, _questions(rng)
        else:
            yield kind, _odd(rng, domain)
