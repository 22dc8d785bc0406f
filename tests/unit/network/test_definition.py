"""The authority, the fingerprint and the network definition: signing,
verification, prefixes, rotation of admission keys, key files."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from phantom.network import (FormatError, Reason, Refused, SigningKey, fingerprint, is_newer,
                             load_key, make_definition, parse_definition, revise, save_key,
                             verify_certificate)
from phantom.network import definition as D
from phantom.network.canonical import b64, canonical

from .factory import DAY, NOW, Net, seed, x25519_key

NET = Net()


def test_fingerprint_is_blake2b_of_the_labelled_key_in_lowercase_base32():
    pk = NET.authority.public
    expected = base64.b32encode(hashlib.blake2b(b"phantom-network-authority-v1" + pk,
                                                digest_size=32).digest()[:20]).decode().lower()
    assert fingerprint(pk) == expected == NET.definition.fingerprint
    assert len(expected) == 32 and "=" not in expected


def test_a_definition_verifies_round_trips_and_pins_its_authority():
    d = NET.definition
    again = parse_definition(d.encode(), d.fingerprint)
    assert again == d and again.encode() == d.encode()
    assert again.domain == "corp.internal"
    assert [s.endpoint for s in again.relays] == ["relay.example.com:51821"]
    other = Net("corp", tag="impostor")           # same name, another authority
    with pytest.raises(Refused) as info:
        parse_definition(other.definition.encode(), d.fingerprint)
    assert info.value.reason == Reason.WRONG_AUTHORITY


@pytest.mark.parametrize("field,value", [
    ("ipv4", "100.88.0.0/16"), ("ipv6", "fd00:1:2::/48"), ("domain", "evil.internal"),
    ("seq", 99), ("cert_lifetime", 400 * DAY), ("directory", ["https://evil.example.com"]),
    ("admission", [{"expires": NOW + DAY, "key": b64(SigningKey(seed("thief")).public)}]),
    ("relays", []), ("name", "corp2"),
])
def test_a_tampered_definition_is_refused(field, value):
    doc = dict(NET.definition.doc, **{field: value})
    with pytest.raises(Refused) as info:
        parse_definition(canonical(doc), NET.definition.fingerprint)
    assert info.value.reason == Reason.BAD_SIGNATURE
    assert str(info.value).startswith("network definition signature does not verify")


def test_default_prefixes_are_random_inside_cgnat_and_ula():
    auth = SigningKey(seed("defaults"))
    seen4, seen6 = set(), set()
    for _ in range(8):
        d = make_definition(auth, "home", NOW)
        assert d.ipv4.prefixlen == 16 and d.ipv4.subnet_of(ipaddress.ip_network("100.64.0.0/10"))
        assert d.ipv6.prefixlen == 48 and d.ipv6.subnet_of(ipaddress.ip_network("fd00::/8"))
        seen4.add(d.ipv4)
        seen6.add(d.ipv6)
    assert len(seen6) == 8 and len(seen4) >= 2        # 40 random bits; 6 random bits


def test_random_prefixes_use_the_random_source():
    fixed = lambda n: bytes([0xFF] * n)               # noqa: E731
    assert str(D.random_ipv4_prefix(fixed)) == "100.127.0.0/16"
    assert str(D.random_ula_prefix(fixed)) == "fdff:ffff:ffff::/48"
    zero = lambda n: bytes(n)                          # noqa: E731
    assert str(D.random_ipv4_prefix(zero, 24)) == "100.64.0.0/24"


@pytest.mark.parametrize("kw,words", [
    ({"ipv4": "8.8.8.0/24"}, "not inside"), ({"ipv4": "127.0.0.0/8"}, "not inside"),
    ({"ipv4": "10.0.0.0/30"}, "prefix length"), ({"ipv4": "10.0.0.1/16"}, "host bits"),
    ({"ipv4": "fd00::/48"}, "IPv4"), ({"ipv6": "fd00::/64"}, "ULA /48"),
    ({"ipv6": "2001:db8::/48"}, "ULA /48"), ({"ipv6": "FD00:1:2::/48"}, "write"),
    ({"domain": "Corp.internal"}, "lowercase"), ({"domain": "corp.internal."}, "trailing"),
    ({"domain": "a" * 200}, "at most"), ({"domain": "co_rp.x"}, "'_'"),
    ({"directory": ["ftp://x"]}, "http or https"),
    ({"directory": ["https://user:pw@dir.example.com"]}, "no user"),
    ({"directory": ["https://dir.example.com/"]}, "trailing"),
    ({"directory": ["https://dir.example.com?a=1"]}, "query"),
    ({"directory": ["https://DIR.example.com"]}, "lowercase"),
    ({"directory": ["https://dir.example.com", "https://dir.example.com"]}, "twice"),
    ({"directory": ["https://d\u0456r.example.com"]}, "U+0456"),
    ({"rendezvous": [(x25519_key("a"), "1.2.3.4")]}, "port"),
    ({"rendezvous": [(x25519_key("a"), "01.2.3.4:5")]}, "bad IPv4"),
    ({"rendezvous": [(x25519_key("a"), "[fd00::1]:0")]}, "port"),
    ({"rendezvous": [(x25519_key("a"), "[FD00::1]:5")]}, "write"),
    ({"rendezvous": [(bytes(32), "1.2.3.4:5")]}, "X25519"),
    ({"relays": [(x25519_key("a"), "1.2.3.4:5"), (x25519_key("a"), "1.2.3.5:5")]}, "twice"),
    ({"admission": [(bytes(32), NOW)]}, "Ed25519"),
    ({"cert_lifetime": 10}, "cert_lifetime"), ({"name": "Corp"}, "lowercase"),
])
def test_bad_definition_values_are_refused_naming_the_field(kw, words):
    with pytest.raises(FormatError) as info:
        make_definition(SigningKey(seed("x")), kw.pop("name", "corp"), NOW, **kw)
    assert words in str(info.value), str(info.value)
    assert str(info.value).startswith("malformed network definition")


@pytest.mark.parametrize("raw", [b"", b"{}", b"[]", b"x" * (D.MAX_DEFINITION_SIZE + 1),
                                 b'{"v":1,"v":1}', b'{"v":1e3}'])
def test_hostile_definition_bytes_are_malformed(raw):
    with pytest.raises(FormatError):
        parse_definition(raw)


def test_rotation_replaces_the_admission_key_and_revokes_what_it_signed():
    net = Net(tag="rotate")
    old = net.cert("alice")
    new_key = SigningKey(seed("admission-2"))
    d2 = revise(net.definition, net.authority, NOW + 10, add_admission=[(new_key.public,
                                                                         NOW + 90 * DAY)],
                remove_admission=[net.admission.public])
    assert d2.seq == net.definition.seq + 1 and is_newer(net.definition, d2)
    assert not is_newer(d2, net.definition)
    assert parse_definition(d2.encode(), net.definition.fingerprint) == d2
    with pytest.raises(Refused) as info:          # the old key's certificates stop counting
        verify_certificate(old.encode(), d2, NOW + 20)
    assert info.value.reason == Reason.UNKNOWN_ISSUER
    net.definition = d2
    verify_certificate(net.cert("alice", admission=new_key, now=NOW + 20).encode(), d2, NOW + 20)


def test_revise_keeps_name_and_prefixes_and_needs_the_authority():
    with pytest.raises(ValueError, match="cannot change ipv4"):
        revise(NET.definition, NET.authority, NOW, ipv4="10.0.0.0/16")
    with pytest.raises(ValueError, match="not the authority"):
        revise(NET.definition, NET.admission, NOW, relays=[])
    d2 = revise(NET.definition, NET.authority, NOW + 5, relays=[], cert_lifetime=7 * DAY)
    assert d2.relays == () and d2.cert_lifetime == 7 * DAY and d2.ipv4 == NET.definition.ipv4
    assert [a.key for a in d2.admission] == [NET.admission.public]
    late = revise(NET.definition, NET.authority, NOW + 400 * DAY)     # expired keys drop out
    assert late.admission == ()


def test_is_newer_refuses_another_networks_definition():
    with pytest.raises(Refused) as info:
        is_newer(NET.definition, Net(tag="other").definition)
    assert info.value.reason == Reason.WRONG_AUTHORITY


def test_key_files_round_trip_and_are_private(tmp_path):
    key = SigningKey(seed("file"))
    path = tmp_path / "authority.key"
    save_key(path, key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path).public == key.public
    assert b64(key.seed) not in repr(key)
    for bad in (b"", b"phantom-network-key-v1\n", b"phantom-network-key-v1\n!!!!\n",
                b"phantom-network-key-v1\nAAAA\n", b"x" * 5000):
        path.write_bytes(bad)
        with pytest.raises(FormatError):
            load_key(path)


@settings(max_examples=40, deadline=None)
@given(prefix=st.integers(0, 255), lifetime=st.integers(D.MIN_CERT_LIFETIME, D.MAX_CERT_LIFETIME),
       seq=st.integers(1, 2 ** 40), name=st.from_regex(r"[a-z][a-z0-9]{0,15}", fullmatch=True))
def test_property_definitions_round_trip(prefix, lifetime, seq, name):
    d = make_definition(NET.authority, name, NOW, ipv4="10.%d.0.0/16" % prefix,
                        cert_lifetime=lifetime, seq=seq)
    assert parse_definition(d.encode(), NET.definition.fingerprint) == d


@settings(max_examples=60, deadline=None)
@given(pos=st.integers(0, len(NET.definition.encode()) - 1), bit=st.integers(0, 7))
def test_property_a_tampered_definition_byte_never_verifies(pos, bit):
    raw = bytearray(NET.definition.encode())
    raw[pos] ^= 1 << bit
    with pytest.raises(Refused):
        parse_definition(bytes(raw), NET.definition.fingerprint)
