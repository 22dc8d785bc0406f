"""Invite tokens and invite records: format, parsing errors, redemption."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings, strategies as st

from phantom.network import InviteError, create_invite, hash_secret, parse_invite, parse_token
from phantom.network import invite as I
from phantom.network.canonical import b64, b64url, canonical

from .factory import DAY, NOW, Net

NET = Net()
OTHER = Net(tag="other")


def counter_random():
    state = {"n": 0}

    def random_bytes(n):
        state["n"] += 1
        return bytes((state["n"] + i) % 256 for i in range(n))
    return random_bytes


def test_a_token_carries_directories_network_id_and_secret_and_round_trips():
    token, record = create_invite(NET.definition, NOW, groups=["laptops"], uses=3, ttl=DAY)
    text = token.encode()
    assert text.startswith("phantom1.") and len(text) < 300
    assert all(c.isalnum() or c in "-_." for c in text)          # one word for a shell
    back = parse_token(text, NET.definition.fingerprint)
    assert back == token and back.directory == ("https://dir.example.com",)
    assert back.network == NET.definition.fingerprint and len(back.secret) == 32
    inner = json.loads(base64.urlsafe_b64decode(text[9:] + "=" * (-len(text[9:]) % 4)))
    assert set(inner) == {"v", "dir", "net", "id", "secret"}
    assert b64(token.secret) not in str(token) and b64(token.secret) not in repr(token)


def test_the_record_keeps_only_a_hash_of_the_secret():
    token, record = create_invite(NET.definition, NOW)
    doc = record.to_doc()
    stored = canonical(doc)
    assert b64(token.secret).encode() not in stored and token.secret not in stored
    assert record.secret_hash == hash_secret(token.secret) != token.secret
    assert parse_invite(stored) == record
    assert "secret_hash" not in record.summary(NOW)


def test_redemption_counts_uses_and_refuses_used_expired_revoked_and_wrong_secrets():
    token, rec = create_invite(NET.definition, NOW, uses=2, ttl=3600)
    rec = rec.redeem(token.secret, NOW)
    rec = rec.redeem(token.secret, NOW + 1)
    assert rec.used == 2 and rec.status(NOW) == "used"
    with pytest.raises(InviteError) as info:
        rec.redeem(token.secret, NOW + 2)
    assert info.value.code == "used" and "used up" in str(info.value)

    token, rec = create_invite(NET.definition, NOW, ttl=3600)
    with pytest.raises(InviteError) as info:
        rec.redeem(token.secret, NOW + 3600)
    assert info.value.code == "expired" and str(info.value) == "invite expired"
    with pytest.raises(InviteError) as info:
        rec.revoke().redeem(token.secret, NOW)
    assert info.value.code == "revoked"
    wrong = bytes(32)
    for state in (rec, rec.revoke(), rec.redeem(token.secret, NOW)):   # no state leaks
        with pytest.raises(InviteError) as info:
            state.redeem(wrong, NOW)
        assert info.value.code == "invalid" and str(info.value) == "invite not valid"
    done = rec.redeem(token.secret, NOW)
    with pytest.raises(InviteError) as info:
        done.redeem(token.secret, NOW)
    assert str(info.value) == "invite already used"


def test_invite_options_are_checked_when_it_is_made():
    with pytest.raises(InviteError):
        create_invite(NET.definition, NOW, name="alice", uses=2)
    with pytest.raises(InviteError):
        create_invite(NET.definition, NOW, uses=0)
    with pytest.raises(InviteError):
        create_invite(NET.definition, NOW, ttl=10)
    with pytest.raises(ValueError, match="use fewer or shorter groups"):
        create_invite(NET.definition, NOW, groups=["g%d" % i + "x" * 28 for i in range(8)])
    with pytest.raises(ValueError, match="lowercase"):
        create_invite(NET.definition, NOW, name="Alice")
    token, rec = create_invite(NET.definition, NOW, name="alice", groups=["b", "a", "a"])
    assert rec.name == "alice" and rec.groups == ("a", "b")


def valid_text():
    return create_invite(NET.definition, NOW, random_bytes=counter_random())[0].encode()


@pytest.mark.parametrize("text,code,words", [
    ("", "malformed", "starts with 'phantom1.'"),
    ("hello world", "malformed", "starts with"),
    ("phantom2.abc", "malformed", "version 'phantom2' is not supported"),
    ("phantom1.", "malformed", "truncated"),
    ("phantom1.@@@", "malformed", "contains '@'"),
    ("phantom1.ab cd", "malformed", "contains ' '"),
    ("phantom1." + "A" * 3000, "too_long", "at most 2048"),
    ("phantom1." + b64url(b"not json"), "malformed", "damaged"),
    ("phantom1." + b64url(b'{"v":1}'), "malformed", "damaged"),
    ("phantom1." + b64url(b'{"v":1,"v":1}'), "malformed", "duplicate"),
    (None, "malformed", "text"),
])
def test_garbage_tokens_get_clear_errors(text, code, words):
    with pytest.raises(InviteError) as info:
        parse_token(text)
    assert info.value.code == code and words in str(info.value), str(info.value)


def test_a_truncated_token_is_always_refused():
    text = valid_text()
    for cut in range(len("phantom1."), len(text)):
        with pytest.raises(InviteError) as info:
            parse_token(text[:cut])
        assert info.value.code == "malformed"
        assert "truncated" in str(info.value) or "damaged" in str(info.value) \
            or "contains" in str(info.value), (cut, str(info.value))


def test_a_token_for_another_network():
    text = create_invite(OTHER.definition, NOW)[0].encode()
    with pytest.raises(InviteError) as info:
        parse_token(text, NET.definition.fingerprint)
    assert info.value.code == "wrong_network"
    assert OTHER.definition.fingerprint in str(info.value)


def test_whitespace_around_a_pasted_token_is_fine_inside_it_is_not():
    text = valid_text()
    assert parse_token("  %s\n" % text).encode() == text
    with pytest.raises(InviteError):
        parse_token(text[:20] + "\n" + text[20:])


@pytest.mark.parametrize("field,value", [
    ("dir", []), ("dir", ["ftp://x"]), ("net", "A" * 32), ("id", "short"),
    ("secret", b64(bytes(31))), ("v", 2), ("extra", 1),
])
def test_bad_token_fields(field, value):
    doc = {"v": 1, "dir": ["https://dir.example.com"], "net": NET.definition.fingerprint,
           "id": "a" * 16, "secret": b64(bytes(32))}
    doc[field] = value
    with pytest.raises(InviteError) as info:
        parse_token(I.PREFIX + b64url(canonical(doc)))
    assert info.value.code == "malformed"


def test_a_damaged_record_is_refused():
    _, rec = create_invite(NET.definition, NOW)
    doc = rec.to_doc()
    for field, value in (("used", 5), ("uses", 0), ("secret_hash", "x"), ("name", "A")):
        with pytest.raises(ValueError):
            parse_invite(dict(doc, **{field: value}))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_property_any_text_parses_or_gets_an_invite_error(text):
    try:
        parse_token(text)
    except InviteError:
        pass


@settings(max_examples=100, deadline=None)
@given(pos=st.integers(0, 300), ch=st.characters())
def test_property_a_changed_character_is_refused_or_the_same_token(pos, ch):
    text = valid_text()
    pos = pos % len(text)
    bad = text[:pos] + ch + text[pos + 1:]
    try:
        t = parse_token(bad)
    except InviteError:
        return
    assert t.encode() == bad.strip()          # canonical: a change that parses is a real token
