"""Member certificates: issue, encode, verify; every refusal its own reason
and sentence; the size bound; hostile inputs; round trips and tampering
under hypothesis."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from phantom.network import (MAX_CERT_SIZE, FormatError, Reason, Refused, RemovalSet,
                             SigningKey, check_budget, parse_certificate, verify_certificate)
from phantom.network import certificate as C
from phantom.network.canonical import SEQ_MAX, TIME_MAX, b64, canonical

from .factory import DAY, NOW, Net, seed, x25519_key

NET = Net()


def refusal(raw, net=NET, now=NOW, **kw) -> Refused:
    with pytest.raises(Refused) as info:
        verify_certificate(raw, net.definition, now, **kw)
    return info.value


def resign(doc: dict, key: SigningKey) -> dict:
    doc = {k: v for k, v in doc.items() if k != "sig"}
    doc["sig"] = b64(key.sign(C.CERTIFICATE_DOMAIN, canonical(doc)))
    return doc


# --- the good path -----------------------------------------------------------------------------

def test_an_issued_certificate_verifies_and_round_trips_through_its_bytes():
    c = NET.cert("alice", groups=["servers", "laptops"])
    again = verify_certificate(c.encode(), NET.definition, NOW)
    assert again == c and again.encode() == c.encode()
    assert again.groups == ("laptops", "servers")           # sorted, canonical
    assert again.network == NET.definition.fingerprint
    assert again.ipv4 in NET.definition.ipv4 and again.ipv6 in NET.definition.ipv6
    assert again.allowed_ips() == (ipaddress.ip_network(c.ipv4), ipaddress.ip_network(c.ipv6))
    assert again.not_after - again.not_before == NET.definition.cert_lifetime
    assert verify_certificate(c.doc, NET.definition, NOW, key=c.key) == c


def test_a_certificate_never_outlives_its_admission_key():
    net = Net(tag="short", admission_expires=NOW + 2 * DAY)
    c = net.cert("bob")
    assert c.not_after == NOW + 2 * DAY


def test_routes_and_exit_are_carried_and_allowed():
    c = NET.cert("router", routes=["192.168.10.0/24", "2001:db8:5::/48"], exit=True)
    c = verify_certificate(c.encode(), NET.definition, NOW)
    assert [str(r) for r in c.routes] == ["192.168.10.0/24", "2001:db8:5::/48"]
    assert c.exit is True
    assert ipaddress.ip_network("192.168.10.0/24") in c.allowed_ips()


# --- every refusal, its reason and its sentence ---------------------------------------------------

def test_expired():
    c = NET.cert("carol")
    e = refusal(c.encode(), now=c.not_after)
    assert e.reason == Reason.EXPIRED and str(e).startswith("certificate expired")
    verify_certificate(c.encode(), NET.definition, c.not_after - 1)      # one second before: fine


def test_not_yet_valid_beyond_the_clock_skew():
    c = NET.cert("dave", now=NOW + 1000)
    e = refusal(c.encode(), now=NOW + 1000 - C.MAX_SKEW - 1)
    assert e.reason == Reason.NOT_YET_VALID and str(e).startswith("certificate not yet valid")
    verify_certificate(c.encode(), NET.definition, NOW + 1000 - C.MAX_SKEW)   # within the skew


def test_wrong_network_says_not_a_member():
    other = Net("lab", tag="other")
    c = other.cert("eve")
    e = refusal(c.encode())
    assert e.reason == Reason.WRONG_NETWORK
    assert str(e).startswith("not a member of corp")


def test_unknown_issuer():
    stranger = SigningKey(seed("stranger"))
    doc = dict(NET.cert("frank").doc)
    doc["iss"] = b64(stranger.public)
    e = refusal(resign(doc, stranger))
    assert e.reason == Reason.UNKNOWN_ISSUER
    assert str(e).startswith("certificate signed by a key that corp does not list")


def test_expired_issuer():
    net = Net(tag="exp", admission_expires=NOW + DAY)
    c = net.cert("grace")
    e = refusal(c.encode(), net=net, now=NOW + DAY)
    assert e.reason == Reason.ISSUER_EXPIRED
    assert "expired admission key" in str(e)


@pytest.mark.parametrize("field,value", [
    ("name", "mallory"), ("ip4", "100.87.0.99"), ("ip6", "fd3c:9a41:7e02::99"),
    ("groups", ["admins"]), ("exit", True), ("routes", ["10.9.0.0/16"]), ("serial", 999),
    ("exp", NOW + 29 * DAY), ("nbf", NOW + 1), ("since", NOW - 100),
    ("key", b64(x25519_key("someone-else"))),
])
def test_a_tampered_field_is_a_bad_signature(field, value):
    doc = dict(NET.cert("heidi").doc)
    doc[field] = value
    e = refusal(doc)
    assert e.reason == Reason.BAD_SIGNATURE, e
    assert str(e) == "certificate signature does not verify (forged or tampered)"


def test_addresses_outside_the_prefixes():
    doc = dict(NET.cert("ivan").doc)
    for field, value in (("ip4", "10.1.2.3"), ("ip4", "100.87.0.0"), ("ip4", "100.87.255.255"),
                         ("ip6", "fd00::1"), ("ip6", "fd3c:9a41:7e02::")):
        bad = dict(doc, **{field: value})
        e = refusal(resign(bad, NET.admission))
        assert e.reason == Reason.OUTSIDE_PREFIX, (field, value, e)
        assert str(e).startswith("certificate addresses are outside corp's prefixes")
    with pytest.raises(Refused) as info:         # and the issuer refuses to make one
        NET.cert("ivan2", ipv4="10.0.0.1", ipv6="fd3c:9a41:7e02::1")
    assert info.value.reason == Reason.OUTSIDE_PREFIX


def test_a_route_into_the_network_prefixes_is_refused():
    doc = dict(NET.cert("judy").doc)
    for route in ("100.87.0.0/24", "100.0.0.0/8", "fd3c:9a41:7e02:1::/64"):
        e = refusal(resign(dict(doc, routes=[route]), NET.admission))
        assert e.reason == Reason.BAD_ROUTE, route
        assert "overlap corp's own prefixes" in str(e)


def test_a_lifetime_longer_than_the_network_allows():
    doc = dict(NET.cert("ken").doc)
    doc["exp"] = doc["nbf"] + NET.definition.cert_lifetime + 1
    e = refusal(resign(doc, NET.admission))
    assert e.reason == Reason.LIFETIME


def test_removed_by_the_network():
    c = NET.cert("leo")
    removals = RemovalSet([NET.removal(c.key, now=NOW + 10)])
    e = refusal(c.encode(), now=NOW + 20, removals=removals)
    assert e.reason == Reason.REMOVED and str(e).startswith("removed by the network")


def test_a_certificate_presented_by_another_key():
    c = NET.cert("mike")
    e = refusal(c.encode(), key=x25519_key("not-mike"))
    assert e.reason == Reason.WRONG_KEY


def test_every_reason_is_distinct_and_has_a_sentence():
    from phantom.network.errors import headline
    # NOT_MEMBER (no certificate) and WRONG_NETWORK (another network's) read
    # the same to a user, "not a member of corp"; every other sentence differs
    sentences = {headline(r, "certificate", "corp") for r in Reason if r != Reason.NOT_MEMBER}
    assert len(sentences) == len(Reason) - 1
    assert headline(Reason.NOT_MEMBER, "certificate", "corp") == "not a member of corp"
    assert len({int(r) for r in Reason}) == len(Reason)


# --- malformed and hostile ---------------------------------------------------------------------

def malformed(raw) -> FormatError:
    with pytest.raises(FormatError) as info:
        verify_certificate(raw, NET.definition, NOW)
    assert info.value.reason == Reason.MALFORMED
    assert str(info.value).startswith("malformed certificate")
    return info.value


@pytest.mark.parametrize("raw", [
    b"", b"garbage", b"[]", b"null", b"1", b"\xff\xfe", b'{"v":1}', b"{" * 10000,
    b"x" * 100000, b'{"v":1.0}', b'{"v":NaN}', b'{"v":1,"v":1}',
])
def test_garbage_is_malformed(raw):
    malformed(raw)


def test_duplicate_keys_are_refused_even_with_a_valid_signature():
    c = NET.cert("nina")
    text = c.encode().decode()
    doubled = text[:-1] + ',"name":"nina"}'
    e = malformed(doubled.encode())
    assert "duplicate key" in str(e)


@pytest.mark.parametrize("field,value,words", [
    ("v", 2, "version"), ("v", True, "version"), ("serial", "1", "integer"),
    ("serial", 0, "integer"), ("serial", SEQ_MAX + 1, "integer"), ("exit", 1, "true or false"),
    ("nbf", -1, "integer"), ("exp", TIME_MAX + 1, "integer"), ("key", "AAAA", "base64"),
    ("key", b64(bytes(32)), "X25519"), ("groups", "admins", "list"),
    ("groups", ["b", "a"], "sorted"), ("groups", ["a", "a"], "sorted"),
    ("groups", ["g%d" % i for i in range(C.MAX_GROUPS + 1)], "items"),
    ("routes", ["0.0.0.0/0"], "exit flag"), ("routes", ["127.0.0.0/8"], "never routed"),
    ("routes", ["10.0.0.1/8"], "host bits"), ("routes", ["10.1.0.0/16", "10.0.0.0/8"], "sorted"),
    ("routes", ["10.0.0.0/8", "10.1.0.0/16"], "overlap"),
    ("ip4", "100.87.0.010", "not an IP address"), ("ip4", "fd00::1", "IPv4"),
    ("ip6", "FD3C:9A41:7E02::1", "write"), ("net", "X" * 32, "fingerprint"),
    ("name", "Alice", "lowercase"), ("since", NOW + 1, "nbf"), ("exp", NOW, "after nbf"),
])
def test_bad_fields_are_named(field, value, words):
    doc = dict(NET.cert("olga").doc, **{field: value})
    e = malformed(doc)
    assert words in str(e), str(e)


def test_unknown_and_missing_fields():
    doc = dict(NET.cert("pat").doc)
    assert "unknown field" in str(malformed(dict(doc, extra=1)))
    del doc["groups"]
    assert "lacks field" in str(malformed(doc))


@pytest.mark.parametrize("name,words", [
    ("", "empty"), ("a" * 64, "at most 63"), ("-alice", "start or end"), ("alice-", "start or end"),
    ("al_ice", "'_'"), ("al.ice", "'.'"), ("xn--80ak6aa92e", "IDNA"), ("ab--cd", "IDNA"),
    ("1234", "all digits"), ("ALICE", "lowercase"), ("al ice", "U+0020"),
    ("\u0430lice", "U+0430 (CYRILLIC SMALL LETTER A)"),         # a Cyrillic 'a'
    ("alice\u200b", "U+200B (ZERO WIDTH SPACE)"),
    ("\u202eecila", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("ａlice", "U+FF41 (FULLWIDTH LATIN SMALL LETTER A)"),
    ("alice\x00", "U+0000"), ("é", "U+00E9"),
])
def test_unicode_tricks_and_bad_names_are_refused_naming_the_character(name, words):
    with pytest.raises(FormatError) as info:
        NET.cert(name)
    assert words in str(info.value), str(info.value)


def test_a_non_json_object_from_a_peer_is_malformed_not_a_crash():
    for raw in ([], "text", 3, None, {"v": 1, "net": None}):
        with pytest.raises(FormatError):
            verify_certificate(raw if not isinstance(raw, (list, int, type(None)))
                               else json.dumps(raw).encode(), NET.definition, NOW)


# --- the size bound ------------------------------------------------------------------------------

def longest_certificate(groups, routes):
    """Every fixed field at its longest: a 63-character name, 14- and
    39-character addresses, a 16-digit serial, 11-digit times, exit true."""
    start = TIME_MAX - 400 * DAY - 1
    net = Net(tag="big", ipv4="10.0.0.0/8", ipv6="fdff:ffff:ffff::/48", lifetime=400 * DAY,
              now=start, admission_expires=TIME_MAX)
    net.serial = SEQ_MAX - 1
    return net.cert("a" * 63, ipv4="10.255.255.254", ipv6="fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                    groups=groups, routes=routes, exit=True, since=start)


def test_the_longest_certificate_fits_the_stated_bound():
    assert MAX_CERT_SIZE == 640
    base = longest_certificate((), ())
    assert len(base.encode()) <= C._size("a" * 63, (), (), True) <= 530
    assert C.GROUP_ROUTE_BUDGET >= 100           # room for a few groups or routes
    groups = []                                  # 32-character groups until the budget is spent
    while len(groups) < C.MAX_GROUPS:
        try:
            check_budget("a" * 63, groups + ["%02d" % len(groups) + "g" * 30], exit=True)
        except FormatError:
            break
        groups.append("%02d" % len(groups) + "g" * 30)
    assert len(groups) >= 3
    c = longest_certificate(groups, ())
    assert len(c.encode()) <= MAX_CERT_SIZE
    assert parse_certificate(c.encode()) == c    # and it still parses (the bound is not hit)
    routes = ["2001:db8:%x::/48" % i for i in range(C.MAX_ROUTES)]
    check_budget("a" * 63, (), routes, exit=True)    # four IPv6 routes fit too
    assert len(longest_certificate((), routes).encode()) <= MAX_CERT_SIZE


def test_issuing_over_the_bound_is_refused_clearly_and_check_budget_says_so_first():
    groups = ["g%d" % i + "x" * 29 for i in range(C.MAX_GROUPS)]
    with pytest.raises(FormatError) as info:
        check_budget("a" * 63, groups)
    assert "use fewer or shorter groups" in str(info.value)
    with pytest.raises(FormatError) as info:
        NET.cert("toolong", groups=groups)
    assert "at most %d" % MAX_CERT_SIZE in str(info.value)
    assert check_budget("alice", ["laptops", "servers"]) <= MAX_CERT_SIZE


def test_a_typical_certificate_is_small():
    c = NET.cert("laptop-7", groups=["laptops", "staff"])
    assert len(c.encode()) <= 450, len(c.encode())


def test_parse_refuses_more_than_the_bound_before_parsing_json():
    c = NET.cert("quinn")
    padded = c.encode()[:-1] + b"," + b" " * MAX_CERT_SIZE + b"}"
    e = malformed(padded)
    assert "at most %d" % MAX_CERT_SIZE in str(e)


# --- properties ----------------------------------------------------------------------------------

label = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True).filter(
    lambda s: s[2:4] != "--")
groups_st = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True), max_size=3,
                     unique=True)
prop = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@prop
@given(name=label, groups=groups_st, host=st.integers(1, 65534), exit=st.booleans(),
       lifetime=st.integers(60, 30 * DAY), dt=st.integers(0, 10 * DAY))
def test_property_issue_encode_decode_round_trip(name, groups, host, exit, lifetime, dt):
    v4 = ipaddress.IPv4Address(int(NET.definition.ipv4.network_address) + host)
    c = NET.cert(name, ipv4=v4, groups=groups, exit=exit, lifetime=lifetime, now=NOW + dt)
    raw = c.encode()
    assert len(raw) <= MAX_CERT_SIZE
    back = verify_certificate(raw, NET.definition, NOW + dt)
    assert back == c and back.encode() == raw


TAMPER_CERT = NET.cert("tamper", groups=["laptops"], routes=["192.168.7.0/24"])


@prop
@given(pos=st.integers(0, len(TAMPER_CERT.encode()) - 1), bit=st.integers(0, 7))
def test_property_a_tampered_byte_never_verifies(pos, bit):
    raw = bytearray(TAMPER_CERT.encode())
    raw[pos] ^= 1 << bit
    with pytest.raises(Refused):
        verify_certificate(bytes(raw), NET.definition, NOW)


@prop
@given(pos=st.integers(0, len(TAMPER_CERT.encode())), junk=st.binary(min_size=1, max_size=4))
@example(pos=0, junk=b"\t")
def test_property_an_inserted_or_cut_byte_never_verifies(pos, junk):
    raw = TAMPER_CERT.encode()
    for bad in (raw[:pos] + junk + raw[pos:], raw[:pos] + raw[pos + len(junk):]):
        if bad == raw:
            continue        # (whitespace between tokens is refused too: one certificate, one spelling)
        with pytest.raises(Refused):
            verify_certificate(bad, NET.definition, NOW)


def test_a_certificate_spelt_another_way_is_refused():
    """Found by the property test above: a leading tab (or any whitespace
    between tokens) parsed to the same object and verified.  One certificate,
    one encoding."""
    raw = TAMPER_CERT.encode()
    for bad in (b"\t" + raw, raw + b" ", raw.replace(b'":', b'": ', 1), b" " + raw):
        with pytest.raises(Refused):
            verify_certificate(bad, NET.definition, NOW)
    assert verify_certificate(raw, NET.definition, NOW)
