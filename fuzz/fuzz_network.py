#!/usr/bin/env python3
"""Fuzz target "network": the network's documents (issue 20).

Input: byte 0 = flags, then the document.  Bits 0-2 pick the kind:
0 network definition, 1 member certificate, 2 invite token, 3 removal,
4 member-set event (applied to a set holding one corpus member; with bit 3 a
``network`` event's definition is re-signed by the authority), 5 join request
(the join transaction on a ledger holding one corpus invite), 6 renewal
request (on a ledger where the corpus node is a member), 7 network policy
(issue 21: with bit 4 a policy *source*, TOML or JSON, parsed, signed and
compiled into a member's firewall; else a signed policy document).  Bit 3
re-signs a JSON document with the corpus key of its kind (the authority for a
definition, the node key for a join request, the admission key otherwise),
so mutated fields get past the signature to the expiry, prefix, removal,
conflict, invite and allocation code.  Bit 4 checks a
certificate as presented by the corpus member's key (the handshake's case).

Contract (phantom/network/): every refusal is a NetworkError (FormatError,
Refused, InviteError); nothing else escapes.  A verified definition,
certificate or removal verifies again, from its own canonical bytes, to the
same object.  A token that parses is its own canonical encoding.  A member
set stays consistent: every active member owns its addresses and its name.
A policy source is a PolicyError or a policy that signs, verifies again to
the same body, and compiles for the corpus member into firewall tables
whose decisions equal the policy's own (InboundRules.decide) for a few
flows.  A join that succeeds issues a certificate that verifies for the requesting
key and consumes exactly one use of the invite; a renewal keeps the member's
name, addresses and ``since``; a refused one changes nothing.
"""

import logging
import sys

import atheris

import common

with atheris.instrument_imports(include=["phantom", "ipaddress", "json"]):
    from phantom import network as n
    from phantom.network import canonical as c
    from phantom.network import certificate as cert_mod, definition as def_mod, \
        removal as rem_mod
    from phantom.network import join as join_mod
    from phantom.network import policy as pol_mod
    from phantom.network.keys import (CERTIFICATE_DOMAIN, DEFINITION_DOMAIN, POLICY_DOMAIN,
                                      REMOVAL_DOMAIN)
    from phantom.dataplane import firewall as fw_mod
    from phantom.node import policy as node_policy

ALLOWED = (n.NetworkError,)
logging.disable(logging.CRITICAL)          # the member set logs each conflict: not per input
NOW = int(common.NOW)
AUTHORITY = n.SigningKey(common.NETWORK_AUTHORITY_SEED)
ADMISSION = n.SigningKey(common.NETWORK_ADMISSION_SEED)
DEFINITION = common.network_definition(n, AUTHORITY, ADMISSION)
MEMBER = common.network_member(n, DEFINITION, ADMISSION)
REMOVALS = n.RemovalSet([n.make_removal(DEFINITION, ADMISSION, bytes(range(150, 182)), NOW)])
INVITE = common.network_invite(n, DEFINITION)[1].to_doc()
NODE_KEY, NODE_SIGNING_KEY, NODE_SIGN = common.network_node()
NODE_CERT = n.issue_certificate(DEFINITION, ADMISSION, key=NODE_KEY, name="node",
                                ipv4="100.87.0.9", ipv6="fd3c:9a41:7e02::6457:9", serial=5,
                                now=NOW - 3600)
KINDS = 8
# the policy's member and its peers: the corpus member (servers, laptops) and two others
PEER_NAMES = {MEMBER.name: 1, c.b64(MEMBER.key): 1, "node": 2, c.b64(NODE_KEY): 2}
PEER_GROUPS = {g: frozenset({1}) for g in MEMBER.groups}
POLICY_FLOWS = [(6, 22), (6, 80), (17, 53), (1, None), (47, None)]


def resign(doc, kind):
    if not isinstance(doc, dict):
        return doc
    doc = {k: v for k, v in doc.items() if k != "sig"}
    if kind == 0:
        doc["authority"] = c.b64(AUTHORITY.public)
        key, domain = AUTHORITY, DEFINITION_DOMAIN
    else:
        doc["iss"] = c.b64(ADMISSION.public)
        key, domain = ADMISSION, {1: CERTIFICATE_DOMAIN, 7: POLICY_DOMAIN}.get(kind,
                                                                                REMOVAL_DOMAIN)
    try:
        doc["sig"] = c.b64(key.sign(domain, c.canonical(doc)))
    except (TypeError, ValueError):          # not JSON-serialisable: cannot be signed
        pass
    return doc


def resign_join(doc, domain=join_mod.JOIN_DOMAIN):
    if not isinstance(doc, dict):
        return doc
    doc = {k: v for k, v in doc.items() if k != "sig"}
    doc["key"] = c.b64(NODE_KEY)
    doc["signing_key"] = c.b64(NODE_SIGNING_KEY)
    try:
        doc["sig"] = c.b64(NODE_SIGN(domain + c.canonical(doc)))
    except (TypeError, ValueError):
        pass
    return doc


def check_join(doc):
    ledger = join_mod.MemoryLedger()
    ledger.save_invite(n.parse_invite(INVITE))
    before = c.canonical(ledger.to_doc())
    try:
        result = join_mod.join(ledger, DEFINITION, ADMISSION, doc, NOW)
    except ALLOWED:
        assert c.canonical(ledger.to_doc()) == before, "a refused join changed the ledger"
        raise
    cert = n.verify_certificate(result.certificate.encode(), DEFINITION, NOW,
                                key=c.bytes_field(doc["key"], "key", 32))
    assert ledger.invite(INVITE["id"]).used == 1 and ledger.member(cert.key).cert == cert
    assert ledger.stream() == [{"seq": 1, "op": "member", "cert": cert.doc}]


def check_renew(doc):
    ledger = join_mod.MemoryLedger()
    ledger.save_member(join_mod.MemberRecord(NODE_CERT, ""))
    before = c.canonical(ledger.to_doc())
    try:
        result = join_mod.renew(ledger, DEFINITION, ADMISSION, doc, NOW)
    except ALLOWED:
        assert c.canonical(ledger.to_doc()) == before, "a refused renewal changed the ledger"
        raise
    cert = n.verify_certificate(result.certificate.encode(), DEFINITION, NOW, key=NODE_KEY)
    assert (cert.name, cert.ipv4, cert.ipv6, cert.since) == (
        NODE_CERT.name, NODE_CERT.ipv4, NODE_CERT.ipv6, NODE_CERT.since)
    assert cert.serial != NODE_CERT.serial and ledger.member(NODE_KEY).cert == cert


def check_member_set(ms):
    for m in ms:
        assert ms.owner(m.cert.ipv4).key == m.key, "an active member does not own its IPv4"
        assert ms.owner(m.cert.ipv6).key == m.key, "an active member does not own its IPv6"
        assert ms.by_name(m.name).key == m.key, "an active member does not own its name"
    assert len(list(ms)) == len(ms)


def _packet(proto, port):
    l4 = (bytes([0x9c, 0x40]) + port.to_bytes(2, "big") + bytes(16)) if port is not None \
        else bytes([8, 0]) + bytes(6)
    return bytes([0x45, 0, 0, 20 + len(l4), 0, 1, 0, 0, 64, proto, 0, 0, 100, 87, 0, 9,
                  100, 87, 0, 1]) + l4


def check_policy_source(body):
    parsed = pol_mod.parse_policy_source(body)
    signed = pol_mod.sign_policy(parsed, DEFINITION, ADMISSION, 1, NOW)
    again = pol_mod.verify_policy(signed.encode(), DEFINITION, NOW)
    assert again.body == parsed, "a signed policy does not verify to the same body"
    assert len(signed.encode()) <= pol_mod.MAX_POLICY_SIZE
    inbound = pol_mod.compile_inbound(again, MEMBER)
    local = fw_mod.parse_rules({"stateful": False, "default_policy": "open"}, PEER_NAMES,
                               PEER_GROUPS, MEMBER.groups)
    merged = node_policy.merge({"stateful": False, "default_policy": "open"}, local, inbound,
                               PEER_NAMES)
    tables = fw_mod.compile_rules(fw_mod.parse_rules(merged.section, PEER_NAMES, PEER_GROUPS,
                                                     MEMBER.groups))
    node = pol_mod.Identity("node", NODE_KEY, ())
    for proto, port in POLICY_FLOWS:
        want = inbound.decide(node, proto, port)[0]
        got = fw_mod.classify(tables, 0, _packet(proto, port), 2)
        assert got.accept == (want == "accept"), ("the compiled policy decides otherwise",
                                                  proto, port, want, got)


def one(kind, flags, body):
    if kind == 2:
        text = body.decode("utf-8", "replace")
        token = n.parse_token(text)
        assert token.encode() == text.strip(), "a parsed token is not its canonical form"
        assert n.parse_token(token.encode(), token.network) == token
        return
    if kind == 7 and flags & 16:
        check_policy_source(body)
        return
    doc = c.strict_loads(body, 64 * 1024)
    if kind == 5:
        check_join(resign_join(doc) if flags & 8 else doc)
        return
    if kind == 6:
        check_renew(resign_join(doc, join_mod.RENEW_DOMAIN) if flags & 8 else doc)
        return
    if flags & 8 and kind != 4:              # an event's documents are re-signed below
        doc = resign(doc, kind)
    if kind == 0:
        d = n.parse_definition(doc)
        again = n.parse_definition(d.encode(), d.fingerprint)
        assert again == d, "a verified definition does not verify the same again"
        d.summary()
    elif kind == 1:
        key = MEMBER.key if flags & 16 else None
        cert = n.verify_certificate(doc, DEFINITION, NOW, removals=REMOVALS, key=key)
        again = n.verify_certificate(cert.encode(), DEFINITION, NOW, removals=REMOVALS)
        assert again == cert, "a verified certificate does not verify the same again"
        assert len(cert.encode()) <= cert_mod.MAX_CERT_SIZE
        assert all(a in cert.allowed_ips() for a in cert.addresses)
        cert.summary()
    elif kind == 7:
        p = pol_mod.verify_policy(doc, DEFINITION, NOW)
        assert pol_mod.parse_policy(p.encode()) == p, "a verified policy does not parse the same"
        pol_mod.compile_inbound(p, MEMBER)
        p.summary()
    elif kind == 3:
        r = n.verify_removal(doc, DEFINITION, NOW)
        assert rem_mod.parse_removal(r.encode()) == r
        r.summary()
    else:
        ms = n.MemberSet(DEFINITION, lambda: NOW)
        ms.apply({"seq": 1, "op": "member", "cert": MEMBER.doc})
        if isinstance(doc, dict) and isinstance(doc.get("cert"), dict) and flags & 8:
            doc = dict(doc, cert=resign(doc["cert"], 1))
        if isinstance(doc, dict) and isinstance(doc.get("definition"), dict) and flags & 8:
            doc = dict(doc, definition=resign(doc["definition"], 0))
        try:
            ms.apply(doc)
        finally:
            check_member_set(ms)
        ms.expire(NOW + def_mod.MAX_CERT_LIFETIME)
        check_member_set(ms)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    try:
        one(flags & 7, flags, data[1:])
    except ALLOWED:
        return


if __name__ == "__main__":
    common.main(TestOneInput)
