#!/usr/bin/env python3
"""Fuzz target "firewall": the rule compiler, from arbitrary JSON / TOML rule
documents, and the compiled tables it hands both data paths.

Input: byte 0 = flags (bit 0: the document is TOML, else JSON; bit 1: the
packet goes out, else in; bits 2-3: the peer id of the packet), then the
document text up to the first NUL byte, then an IP packet.

Contract (phantom/dataplane/firewall/): ``parse_rules`` returns a RuleSet
or raises FirewallError -- for any JSON/TOML value, as PUT /firewall and the
config file hand it over; ``compile_rules`` never raises on a RuleSet that
``parse_rules`` made, and the Tables it builds decode; the rule set's
``to_obj`` form (what GET /firewall shows) parses back to the same tables;
the C classifier (``_testing.fw_decide``) decides the packet exactly as the
reference classifier does whenever it does not defer.  Rules may name groups
(``src_group``/``dst_group``): GROUPS is the peer table's group map, OWN this
node's groups; peer ids 0-3 cover members and non-members.
"""

import sys

import atheris

import common

with atheris.instrument_imports(include=["phantom", "ipaddress", "tomllib"]):   # not aiohttp & co.
    import json
    import tomllib

    from phantom.dataplane import firewall as fw

try:
    from phantom.fastpath import _testing
except ImportError:          # not built: the differential check is skipped
    _testing = None

ALLOWED = (fw.FirewallError,)
PEER_KEY = "q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0Vng="
PEERS = {"n2": 2, "n3": 3, PEER_KEY: 2}
GROUPS = {"laptops": {1, 2}, "servers": {3}, "admins": {0, 2, 3}}   # group -> peer ids
OWN = ("servers",)                                                    # this node's groups


def load_doc(flags: int, text: bytes):
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        if flags & 1:
            doc = tomllib.loads(s)
            return doc.get("firewall", doc)
        return json.loads(s)           # as aiohttp's request.json() does (NaN, Infinity too)
    except (ValueError, RecursionError):
        return None


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    text, _, pkt = data[1:].partition(b"\0")
    doc = load_doc(flags, text)
    if doc is None and text:
        return
    try:
        rs = fw.parse_rules(doc, PEERS, GROUPS, OWN)
    except ALLOWED:
        return
    tables = fw.compile_rules(rs)
    assert fw.Tables(tables.blob).nrules == len(rs.rules)
    # GET /firewall's form can be PUT back: same tables
    again = fw.compile_rules(fw.parse_rules(json.loads(json.dumps(rs.to_obj())), PEERS, GROUPS, OWN))
    assert again.blob == tables.blob, "to_obj() does not round-trip"
    direction = (flags >> 1) & 1
    peer = (flags >> 2) & 3
    ref = fw.classify(tables, direction, pkt, peer)
    if _testing is not None:
        action, rule, reason = _testing.fw_decide(tables.blob, direction, pkt, peer)
        if action != 3:      # 3: deferred to the Python classifier (fragments, stateful)
            assert (action, rule, reason) == (int(ref.action), ref.rule, int(ref.reason)), \
                "C classifier %r, reference %r for %s" % ((action, rule, reason), ref, pkt.hex())
    fwl = fw.Firewall(tables)
    fwl.classify(direction, pkt, peer, now=1.0)
    if ref.reject:
        fwl.reject_response(pkt, now=1.0)


if __name__ == "__main__":
    common.main(TestOneInput)
