"""Removals: signed by an admission key, refusing the certificates issued
before them, bounded in time."""

from __future__ import annotations

import pytest

from phantom.network import (FormatError, Reason, Refused, RemovalSet, SigningKey, make_removal,
                             revise, verify_certificate, verify_removal)
from phantom.network.canonical import b64, canonical

from .factory import DAY, NOW, Net, seed, x25519_key

NET = Net()


def test_a_removal_refuses_every_earlier_certificate_of_the_key_and_only_those():
    c = NET.cert("alice")
    removals = RemovalSet([verify_removal(NET.removal(c.key, now=NOW + 100).encode(),
                                          NET.definition, NOW + 100)])
    with pytest.raises(Refused) as info:
        verify_certificate(c.encode(), NET.definition, NOW + 200, removals=removals)
    assert info.value.reason == Reason.REMOVED
    assert str(info.value).startswith("removed by the network")
    # invited again later: a certificate issued after the removal is fine
    again = NET.cert("alice", key=c.key, now=NOW + 101)
    assert verify_certificate(again.encode(), NET.definition, NOW + 200, removals=removals)
    # another member is untouched
    assert verify_certificate(NET.cert("bob").encode(), NET.definition, NOW + 200,
                              removals=removals)


def test_a_removal_is_kept_until_the_last_certificate_it_refuses_has_expired():
    c = NET.cert("carol")
    r = NET.removal(c.key, now=NOW + 5)
    rs = RemovalSet([r])
    lifetime = NET.definition.cert_lifetime
    assert r.expires_at(NET.definition) == NOW + 5 + lifetime
    assert rs.prune(NET.definition, NOW + 5 + lifetime) == [] and len(rs) == 1
    # the longest-lived certificate it could refuse (nbf == removal time) dies then too
    assert c.not_after <= r.expires_at(NET.definition)
    assert rs.prune(NET.definition, NOW + 6 + lifetime) == [r] and len(rs) == 0


def test_the_set_keeps_the_latest_removal_per_key():
    key = x25519_key("dave")
    early, late = NET.removal(key, now=NOW), NET.removal(key, now=NOW + 50)
    rs = RemovalSet([late])
    assert rs.add(early) is False and rs.get(key) == late
    assert key in rs and rs.removes(NET.cert("dave", key=key, now=NOW + 40)) == late


@pytest.mark.parametrize("field,value,reason", [
    ("key", b64(x25519_key("other")), Reason.BAD_SIGNATURE),
    ("time", NOW - 1000, Reason.BAD_SIGNATURE),
    ("net", "a" * 32, Reason.WRONG_NETWORK),
    ("iss", b64(SigningKey(seed("thief")).public), Reason.UNKNOWN_ISSUER),
    ("v", 2, Reason.MALFORMED), ("time", -1, Reason.MALFORMED), ("key", "x", Reason.MALFORMED),
])
def test_bad_removals_are_refused(field, value, reason):
    doc = dict(NET.removal(x25519_key("erin")).doc, **{field: value})
    with pytest.raises(Refused) as info:
        verify_removal(canonical(doc), NET.definition, NOW)
    assert info.value.reason == reason


def test_a_future_dated_removal_is_refused():
    r = NET.removal(x25519_key("frank"), now=NOW + 3600)
    with pytest.raises(Refused) as info:
        verify_removal(r.doc, NET.definition, NOW)
    assert info.value.reason == Reason.NOT_YET_VALID


def test_removals_by_a_rotated_out_key_stop_counting():
    net = Net(tag="rot")
    r = net.removal(x25519_key("gina"))
    d2 = revise(net.definition, net.authority, NOW + 1, remove_admission=[net.admission.public])
    with pytest.raises(Refused) as info:
        verify_removal(r.doc, d2, NOW + 2)
    assert info.value.reason == Reason.UNKNOWN_ISSUER
    rs = RemovalSet([r])
    assert rs.discard_issuer_invalid(d2, NOW + 2) == [r] and len(rs) == 0


def test_only_a_listed_admission_key_may_sign_one():
    with pytest.raises(Refused):
        make_removal(NET.definition, SigningKey(seed("thief")), x25519_key("h"), NOW)
    for raw in (b"", b"{}", b"[1]", b"x" * 600):
        with pytest.raises(FormatError):
            verify_removal(raw, NET.definition, NOW)
