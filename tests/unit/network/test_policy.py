"""The network policy document (issue 21 item 3): the source (TOML/JSON)
refused whole naming the rule and the line, the signed canonical form
(domain-separated, forged/tampered/other network/unknown issuer refused, an
older seq refused), and the per-member compile (first match, groups,
members by name and key, protocols and ports)."""

from __future__ import annotations

import json

import pytest

from phantom.network import SigningKey
from phantom.network import policy as P
from phantom.network.canonical import b64, canonical
from phantom.network.errors import NetworkError, PolicyError, Reason, Refused
from phantom.network.keys import CERTIFICATE_DOMAIN, POLICY_DOMAIN, sign_document

from .factory import DAY, NOW, Net, seed, x25519_key

LAPTOPS_TO_SERVERS = """\
# laptops may reach servers on tcp/22 and icmp; nothing else
default = "deny"

[groups]
admins = ["member:alice", "key:%s"]

[[rule]]
from = ["group:laptops"]
to = "group:servers"
proto = "tcp"
ports = [22]
comment = "ssh"

[[rule]]
from = "group:laptops"
to = ["group:servers"]
proto = "icmp"

[[rule]]
from = ["group:admins"]
to = ["*"]
""" % b64(x25519_key("eve"))


def body(text=LAPTOPS_TO_SERVERS):
    return P.parse_policy_source(text)


def refused(text: str) -> str:
    with pytest.raises(PolicyError) as e:
        P.parse_policy_source(text)
    return str(e.value)


# --- the source ------------------------------------------------------------------------------------

def test_source_parses_to_canonical_rules():
    b = body()
    assert b.default == "deny"
    assert b.groups == (("admins", ("key:" + b64(x25519_key("eve")), "member:alice")),)
    ssh, icmp, admins = b.rules
    assert (ssh.sources, ssh.targets, ssh.proto, ssh.ports, ssh.action, ssh.comment) == (
        ("group:laptops",), ("group:servers",), "tcp", ((22, 22),), "accept", "ssh")
    assert icmp.protocols == frozenset({1, 58}) and icmp.ports == ()
    assert admins.protocols is None and admins.targets == ("*",)
    # the same policy in JSON is the same body
    as_json = json.dumps({"default": "deny", "groups": {"admins": list(b.groups[0][1])},
                          "rules": [r.to_doc() for r in b.rules]}, indent=1)
    assert P.parse_policy_source(as_json) == b


@pytest.mark.parametrize("line, replacement, where, words", [
    (11, "ports = [22, 70000]", "policy rule 1 (line 11), ports[1]", "70000 is out of range"),
    (9, 'to = "group:Servers"', "policy rule 1 (line 9), to[0]", "must be lowercase"),
    (10, 'proto = "sctpx"', "policy rule 1 (line 10), proto", "unknown protocol 'sctpx'"),
    (17, 'proto = "icmp"\nports = [7]', "policy rule 2 (line 18), ports", "ports need proto"),
    (21, 'to = ["nobody"]', "policy rule 3 (line 21), to[0]", "'nobody' is not a selector"),
    (2, 'default = "maybe"', "policy line 2, default", 'must be "deny" or "allow"'),
    (5, 'admins = ["*"]', "policy line 5, groups.admins[0]", "'*' is not a selector"),
])
def test_a_bad_rule_is_refused_whole_naming_the_rule_and_the_line(line, replacement, where,
                                                                  words):
    lines = LAPTOPS_TO_SERVERS.splitlines()
    lines[line - 1] = replacement
    got = refused("\n".join(lines) + "\n")
    assert got.startswith(where + ": "), got
    assert words in got, got


def test_json_errors_name_the_rule_and_the_line():
    text = ('{\n  "default": "deny",\n  "rules": [\n    {"from": "*", "to": "*"},\n'
            '    {"from": "*",\n     "to": "*",\n     "action": "maybe"}\n  ]\n}\n')
    assert refused(text) == ('policy rule 2 (line 7), action: must be "accept" or "drop", '
                             "not 'maybe'")
    assert "line 3" in refused('{"default": "deny",\n"rules": [\n  {"from": }]}')
    assert "integers" in refused('{"default": "deny", "rules": [{"from": "*", "to": "*", '
                                 '"ports": [1.5]}]}')
    assert "duplicate key" in refused('{"default": "deny", "default": "allow"}')


@pytest.mark.parametrize("text, words", [
    ('default = "deny"\n[[rule]]\nfrom = "*"\nto = "*"\nbogus = 1\n', "unknown field"),
    ('[[rule]]\nto = "*"\n', "from: missing"),
    ('[[rule]]\nfrom = []\nto = "*"\n', "non-empty"),
    ('[[rule]]\nfrom = ["*", "group:a"]\nto = "*"\n', "already means every member"),
    ('[[rule]]\nfrom = "key:AAAA"\nto = "*"\n', "32 bytes"),
    ('[[rule]]\nfrom = "key:%s"\nto = "*"\n' % b64(bytes(32)), "X25519"),
    ('[[rule]]\nfrom = "*"\nto = "*"\nports = ["20-10"]\n', "empty (low > high)"),
    ('[[rule]]\nfrom = "*"\nto = "*"\nproto = 256\n', "0-255"),
    ('[[rule]]\nfrom = "*"\nto = "*"\naction = "reject"\n', '"accept" or "drop"'),
    ('[[rule]]\nfrom = "*"\nto = "*"\ncomment = "a\\u202eb"\n', "U+202E"),
    ('[groups]\nx = ["group:y"]\n', "not a selector"),
    ('rules = []\nrule = []\n', "not both"),
    ('color = "blue"\n', "unknown setting"),
    ('', 'policy, default: missing: say what no rule matches gets'),
])
def test_bad_policies_are_refused(text, words):
    assert words in refused(text)


def test_bounds_are_enforced():
    many = 'default = "deny"\n' + '[[rule]]\nfrom = "*"\nto = "*"\n' * (P.MAX_RULES + 1)
    assert "at most %d" % P.MAX_RULES in refused(many)
    # sources x protocols x port ranges on one member is bounded
    srcs = json.dumps(["member:m%d" % i for i in range(P.MAX_SELECTORS)])
    ports = json.dumps([str(1000 + i) for i in range(P.MAX_PORT_RANGES)])
    rule = '[[rule]]\nfrom = %s\nto = "*"\nports = %s\n' % (srcs, ports)
    got = refused('default = "deny"\n' + rule * 3)
    assert got.startswith("policy rule 3 (line 10): ")
    assert "more than %d firewall rules" % P.MAX_EXPANSION in got
    assert "at most" in refused(b"x" * (P.MAX_SOURCE_SIZE + 1))
    assert "not UTF-8" in refused(b"default = '\xff'")
    assert "nested too deeply" in refused('{"a":' + '[' * 50000)
    assert "TOML" in refused("a = " + "[" * 50000)


# --- signing ---------------------------------------------------------------------------------------

def test_signed_policy_round_trips_and_verifies():
    net = Net()
    p = P.sign_policy(body(), net.definition, net.admission, 3, NOW)
    assert (p.seq, p.issuer, p.network) == (3, net.admission.public, net.definition.fingerprint)
    again = P.verify_policy(p.encode(), net.definition, NOW + 10)
    assert again.body == p.body and again.doc == p.doc
    assert P.verify_policy(json.loads(p.encode()), net.definition, NOW).seq == 3
    assert canonical(p.doc) == p.encode()


def _resign(doc: dict, key: SigningKey, domain=POLICY_DOMAIN) -> dict:
    return sign_document(key, domain, {k: v for k, v in doc.items() if k != "sig"})


def test_forged_tampered_and_foreign_policies_are_refused():
    net = Net()
    p = P.sign_policy(body(), net.definition, net.admission, 1, NOW)
    doc = json.loads(p.encode())
    tampered = dict(doc, default="allow")
    with pytest.raises(Refused) as e:
        P.verify_policy(tampered, net.definition, NOW)
    assert e.value.reason is Reason.BAD_SIGNATURE
    # signed by a key the network does not list
    stranger = SigningKey(seed("stranger"))
    forged = _resign(dict(doc, iss=b64(stranger.public)), stranger)
    with pytest.raises(Refused) as e:
        P.verify_policy(forged, net.definition, NOW)
    assert e.value.reason is Reason.UNKNOWN_ISSUER
    # the admission key's signature, but in another document's domain
    cross = _resign(doc, net.admission, CERTIFICATE_DOMAIN)
    with pytest.raises(Refused) as e:
        P.verify_policy(cross, net.definition, NOW)
    assert e.value.reason is Reason.BAD_SIGNATURE
    # another network's policy
    other = Net(tag="other")
    theirs = P.sign_policy(body(), other.definition, other.admission, 1, NOW)
    with pytest.raises(Refused) as e:
        P.verify_policy(theirs.doc, net.definition, NOW)
    assert e.value.reason is Reason.WRONG_NETWORK
    # the admission key expired
    with pytest.raises(Refused) as e:
        P.verify_policy(doc, net.definition, NOW + 400 * DAY)
    assert e.value.reason is Reason.ISSUER_EXPIRED


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("seq"), "lacks field"),
    (lambda d: d.update(seq=0), "seq"),
    (lambda d: d.update(v=2), "version"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d["rules"][0].update(ports=[22]), "canonical form"),
    (lambda d: d["rules"][0].update(proto="6"), "canonical form"),
    (lambda d: d["rules"][0].update(ports=["99999"]), "out of range"),
    (lambda d: d.update(groups={"admins": "member:alice"}), "canonical form"),
])
def test_malformed_signed_documents_are_refused_before_the_signature(mutate, words):
    net = Net()
    doc = json.loads(P.sign_policy(body(), net.definition, net.admission, 1, NOW).encode())
    mutate(doc)
    doc = _resign(doc, net.admission)         # a valid signature does not make it well-formed
    with pytest.raises(NetworkError) as e:
        P.verify_policy(doc, net.definition, NOW)
    assert words in str(e.value)
    with pytest.raises(NetworkError):
        P.verify_policy(b"{" * 40 + b"}" * 40, net.definition, NOW)
    with pytest.raises(NetworkError):
        P.verify_policy(b" " * (P.MAX_POLICY_SIZE + 1), net.definition, NOW)


def test_a_higher_seq_wins():
    net = Net()
    one = P.sign_policy(body(), net.definition, net.admission, 1, NOW)
    two = P.sign_policy(body(), net.definition, net.admission, 2, NOW)
    P.check_newer(None, one, net.definition)
    P.check_newer(one, two, net.definition)
    for old in (one, two):
        with pytest.raises(Refused) as e:
            P.check_newer(two, old, net.definition)
        assert e.value.reason is Reason.STALE


# --- compiling for one member ----------------------------------------------------------------------

def test_compile_first_match_groups_members_and_keys():
    net = Net()
    alice = net.cert("alice", groups=["laptops"])
    bob = net.cert("bob", groups=["laptops"])
    srv = net.cert("srv", groups=["servers"])
    eve = net.cert("eve")                            # in the policy group admins by key
    carol = net.cert("carol")
    p = P.sign_policy(body(), net.definition, net.admission, 1, NOW)
    on_srv = P.compile_inbound(p, srv)
    assert [r.index for r in on_srv.rules] == [0, 1, 2]
    assert on_srv.decide(bob, 6, 22) == ("accept", 0)
    assert on_srv.decide(bob, 6, 80) == ("drop", -1)
    assert on_srv.decide(bob, 1) == ("accept", 1) and on_srv.decide(bob, 58) == ("accept", 1)
    assert on_srv.decide(bob, 17, 22) == ("drop", -1)
    assert on_srv.decide(alice, 17, 53) == ("accept", 2)     # admins by name: rule 3
    assert on_srv.decide(eve, 6, 80) == ("accept", 2)        # admins by key
    assert on_srv.decide(carol, 6, 22) == ("drop", -1)
    # on a laptop only the "to *" rule applies
    on_bob = P.compile_inbound(p, bob)
    assert [r.index for r in on_bob.rules] == [2]
    assert on_bob.decide(srv, 6, 22) == ("drop", -1)
    assert on_bob.decide(alice, 6, 22) == ("accept", 2)
    assert P.decide(p, bob, srv, 6, 22) == ("accept", 0)
    assert P.referenced_groups(p.body) == {"laptops", "servers", "admins"}


def test_compile_drop_before_accept_and_default_allow():
    net = Net()
    a, b = net.cert("a", groups=["x"]), net.cert("b", groups=["x", "quarantine"])
    text = ('default = "allow"\n[[rule]]\nfrom = "group:quarantine"\nto = "*"\naction = "drop"\n'
            '[[rule]]\nfrom = "*"\nto = "member:a"\nproto = "udp"\nports = ["5000-5010", 53]\n'
            'action = "drop"\n')
    p = P.sign_policy(body(text), net.definition, net.admission, 1, NOW)
    on_a = P.compile_inbound(p, a)
    assert on_a.decide(b, 6, 22) == ("drop", 0)
    assert on_a.decide(a, 17, 5005) == ("drop", 1)
    assert on_a.decide(a, 17, 53) == ("drop", 1)
    assert on_a.decide(a, 17, 5011) == ("accept", -1)
    assert on_a.decide(a, 6, 5005) == ("accept", -1)
    assert P.compile_inbound(p, b).decide(a, 17, 5005) == ("accept", -1)
