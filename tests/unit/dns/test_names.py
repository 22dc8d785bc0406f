"""Member names as input: the label rules, the domain, and the name table
(phantom/dns/names.py)."""

from __future__ import annotations

import ipaddress

import pytest

from phantom.dns import MAX_ADDRESSES, NameTable, normalize_domain, normalize_label, valid_label

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.mark.parametrize("name", ["n3", "N3", "a", "0", "web-1", "xn--bcher-kva", "a" * 63, "9lives"])
def test_valid_labels(name):
    assert valid_label(name)
    assert normalize_label(name) == name.lower()


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a.b", "a b", "a" * 64, "ñ3", "n3\n", "n3.",
                                  "\x00", None, 3, b"n3", "ｎ3",
                                  "\u212a3"])      # KELVIN SIGN lowercases to an ASCII "k"
def test_invalid_labels(name):
    assert not valid_label(name)
    assert normalize_label(name) is None


def test_domain_is_normalised_and_checked():
    assert normalize_domain("Corp.Phantom.") == "corp.phantom"
    assert normalize_domain("phantom") == "phantom"
    for bad in ("", ".", "corp..phantom", "corp_x.phantom", "-corp.phantom", "10.in-addr.arpa",
                "arpa", "a" * 64 + ".phantom", "corp.\u212aphantom", ("a" * 60 + ".") * 4 + "x"):
        with pytest.raises(ValueError):
            normalize_domain(bad)


def test_set_lookup_reverse_remove():
    t = NameTable()
    assert t.set("N3", ["100.64.0.3"], ["fd00::3"])
    e = t.lookup("n3")
    assert e.ipv4 == (V4("100.64.0.3"),) and e.ipv6 == (V6("fd00::3"),)
    assert t.lookup("N3") is None                       # keys are lower case; the zone lowercases
    assert "N3" in t and len(t) == 1 and t.names() == ["n3"]
    assert t.reverse(V4("100.64.0.3")) == "n3" and t.reverse(V6("fd00::3")) == "n3"
    assert t.remove("n3") and t.lookup("n3") is None
    assert t.reverse(V4("100.64.0.3")) is None and t.reverse(V6("fd00::3")) is None
    assert not t.remove("n3")


def test_a_change_replaces_addresses_and_their_reverse_entries():
    t = NameTable()
    t.set("n3", ["100.64.0.3"], [])
    t.set("n3", ["100.64.0.9"], ["fd00::9"])
    assert t.lookup("n3").ipv4 == (V4("100.64.0.9"),)
    assert t.reverse(V4("100.64.0.3")) is None
    assert t.reverse(V4("100.64.0.9")) == "n3"


def test_rename_moves_the_addresses_and_the_old_name_stops_at_once():
    t = NameTable({"n3": (["100.64.0.3"], ["fd00::3"])})
    assert t.rename("n3", "db")
    assert t.lookup("n3") is None
    assert t.lookup("db").ipv4 == (V4("100.64.0.3"),)
    assert t.reverse(V6("fd00::3")) == "db"
    assert not t.rename("nobody", "x")


def test_rename_to_a_bad_name_removes_the_old_one_and_counts():
    t = NameTable({"n3": (["100.64.0.3"], [])})
    assert not t.rename("n3", "bad_name")
    assert t.lookup("n3") is None and len(t) == 0
    assert t.reverse(V4("100.64.0.3")) is None
    assert t.stats()["invalid_names"] == 1


@pytest.mark.parametrize("v4,v6", [
    (["fd00::1"], []),                 # wrong family
    ([], ["100.64.0.1"]),
    (["100.64.0.300"], []),
    (["100.64.0.1/32"], []),
    ([None], []),
    (["100.64.0.%d" % i for i in range(MAX_ADDRESSES + 1)], []),
])
def test_bad_addresses_are_refused_whole_and_counted(v4, v6):
    t = NameTable({"n3": (["100.64.0.3"], [])})
    assert not t.set("n3", v4, v6)
    assert t.lookup("n3").ipv4 == (V4("100.64.0.3"),)      # the old entry stays
    assert t.stats() == {"names": 1, "invalid_names": 0, "invalid_addresses": 1}


def test_bad_names_are_refused_and_counted_never_stored():
    t = NameTable()
    refused = t.replace({"ok": (["100.64.0.1"], []), "bad_one": (["100.64.0.2"], []),
                         "also.bad": (["100.64.0.3"], []), "x" * 64: ([], [])})
    assert refused == 3
    assert t.names() == ["ok"]
    assert t.reverse(V4("100.64.0.2")) is None
    assert t.stats()["invalid_names"] == 3


def test_replace_is_a_snapshot():
    t = NameTable({"a": (["100.64.0.1"], []), "b": (["100.64.0.2"], [])})
    t.replace({"c": (["100.64.0.3"], [])})
    assert t.names() == ["c"] and t.reverse(V4("100.64.0.1")) is None


def test_duplicate_addresses_are_kept_once():
    t = NameTable()
    t.set("n1", ["100.64.0.1", "100.64.0.1"], [])
    assert t.lookup("n1").ipv4 == (V4("100.64.0.1"),)


def test_an_address_moved_to_another_name_keeps_its_new_owner():
    t = NameTable()
    t.set("a", ["100.64.0.1"], [])
    t.set("b", ["100.64.0.1"], [])          # the network re-used it
    t.remove("a")
    assert t.reverse(V4("100.64.0.1")) == "b"
