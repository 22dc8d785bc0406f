"""mac1 / mac2 / cookie replies, the per-source rate limiter and the load detector."""

from __future__ import annotations

import pytest

from phantom import crypto, wire
from phantom.constants import LABEL_COOKIE, LABEL_MAC1
from phantom.protocols import tai64n
from phantom.protocols.limits import LoadDetector, RateLimiter
from phantom.protocols.phantom.cookie import (CookieChecker, CookieGenerator, address_bytes, cookie_key, mac,
                                              mac1_key)
from phantom.protocols.phantom.handshake import (consume_initiation, create_initiation,
                                       create_response)

pytestmark = pytest.mark.timeout(60)

REFRESH = 120.0
SRC = ("192.0.2.7", 51820)
OTHER_SRC = ("192.0.2.8", 51820)


@pytest.fixture
def peers():
    i_priv, r_priv = crypto.x25519_private(), crypto.x25519_private()
    return i_priv, crypto.x25519_public(i_priv), r_priv, crypto.x25519_public(r_priv)


def initiation(peers, gen=None):
    i_priv, _, _, r_pub = peers
    msg, _ = create_initiation(i_priv, r_pub, 1234, tai64n.encode(1, 0), bytes(16), gen)
    return msg


def mac2_of(msg):
    return msg[-16:]


# --- mac1 -----------------------------------------------------------------------------
def test_mac1_definition(peers, clock):
    r_pub = peers[3]
    msg = CookieGenerator(r_pub, clock).add_macs(initiation(peers))
    key = crypto.blake2b(LABEL_MAC1 + r_pub, digest_size=32)
    assert key == mac1_key(r_pub)
    expected = crypto.blake2b(msg[:wire.INITIATION_MAC1_OFFSET], digest_size=16, key=key)
    assert msg[wire.INITIATION_MAC1_OFFSET:wire.INITIATION_MAC2_OFFSET] == expected
    assert mac2_of(msg) == bytes(16)      # no cookie yet


def test_mac1_valid_and_invalid(peers, clock):
    _, i_pub, _, r_pub = peers
    checker = CookieChecker(r_pub, clock)
    msg = CookieGenerator(r_pub, clock).add_macs(initiation(peers))
    assert checker.check_mac1(msg)
    # Any flipped byte before or inside mac1 breaks it.
    for pos in (0, 4, 8, 100, wire.INITIATION_MAC1_OFFSET - 1, wire.INITIATION_MAC1_OFFSET,
                wire.INITIATION_MAC2_OFFSET - 1):
        bad = bytearray(msg)
        bad[pos] ^= 1
        assert not checker.check_mac1(bytes(bad)), pos
    # mac2 is outside mac1's region.
    assert checker.check_mac1(wire.with_macs(msg, msg[-32:-16], b"\xaa" * 16))
    # Zero macs, a MAC for someone else, a runt.
    assert not checker.check_mac1(initiation(peers))
    assert not checker.check_mac1(CookieGenerator(i_pub, clock).add_macs(initiation(peers)))
    assert not checker.check_mac1(b"\x01\x00\x00\x00")


def test_mac1_on_response(peers, clock):
    i_priv, i_pub, r_priv, r_pub = peers
    info = consume_initiation(r_priv, initiation(peers))
    msg2, _ = create_response(info.state, 1, CookieGenerator(i_pub, clock))
    assert CookieChecker(i_pub, clock).check_mac1(msg2)
    assert not CookieChecker(r_pub, clock).check_mac1(msg2)


# --- cookies and mac2 --------------------------------------------------------------------
def test_mac2_only_after_cookie_reply(peers, clock):
    r_pub = peers[3]
    checker = CookieChecker(r_pub, clock)
    gen = CookieGenerator(r_pub, clock)
    msg = gen.add_macs(initiation(peers))
    assert checker.check_mac1(msg)
    assert not checker.check_mac2(msg, SRC)
    assert not gen.has_fresh_cookie

    reply = checker.create_reply(msg, 1234, SRC)
    assert len(reply) == wire.COOKIE_REPLY_SIZE
    assert wire.message_type(reply) is wire.MessageType.COOKIE_REPLY
    assert wire.CookieReply.unpack(reply).receiver_index == 1234
    assert gen.consume_reply(reply)
    assert gen.has_fresh_cookie

    retry = gen.add_macs(initiation(peers))
    assert mac2_of(retry) != bytes(16)
    assert checker.check_mac1(retry)
    assert checker.check_mac2(retry, SRC)
    # The cookie is bound to the source address (IP and port).
    assert not checker.check_mac2(retry, OTHER_SRC)
    assert not checker.check_mac2(retry, (SRC[0], SRC[1] + 1))
    # ... and mac2 covers mac1 and everything before it.
    bad = bytearray(retry)
    bad[wire.INITIATION_MAC1_OFFSET] ^= 1
    assert not checker.check_mac2(bytes(bad), SRC)


def test_cookie_definition(peers, clock):
    """cookie = MAC(R, ip || port), sealed with XChaCha20-Poly1305 under the cookie key."""
    r_pub = peers[3]
    checker = CookieChecker(r_pub, clock)
    msg = CookieGenerator(r_pub, clock).add_macs(initiation(peers))
    reply = wire.CookieReply.unpack(checker.create_reply(msg, 1, SRC))
    key = crypto.blake2b(LABEL_COOKIE + r_pub, digest_size=32)
    assert key == cookie_key(r_pub)
    cookie = crypto.xaead_decrypt(key, reply.nonce, msg[-32:-16], reply.encrypted_cookie)
    assert cookie == mac(bytes(checker._secret), address_bytes(SRC))
    assert address_bytes(SRC) == bytes([192, 0, 2, 7]) + (51820).to_bytes(2, "big")
    assert len(address_bytes(("2001:db8::1", 9000, 0, 0))) == 18
    # Fresh random nonce per reply.
    again = wire.CookieReply.unpack(checker.create_reply(msg, 1, SRC))
    assert again.nonce != reply.nonce


def test_cookie_expires_after_refresh_time(peers, clock):
    r_pub = peers[3]
    checker = CookieChecker(r_pub, clock, refresh_time=REFRESH)
    gen = CookieGenerator(r_pub, clock, refresh_time=REFRESH)
    assert gen.consume_reply(checker.create_reply(gen.add_macs(initiation(peers)), 1, SRC))

    clock.t += REFRESH - 1
    msg = gen.add_macs(initiation(peers))
    assert mac2_of(msg) != bytes(16) and checker.check_mac2(msg, SRC)

    clock.t += 1          # exactly refresh_time old: the generator stops using it
    msg = gen.add_macs(initiation(peers))
    assert not gen.has_fresh_cookie
    assert mac2_of(msg) == bytes(16)
    assert not checker.check_mac2(msg, SRC)


def test_checker_secret_rotates(peers, clock):
    r_pub = peers[3]
    checker = CookieChecker(r_pub, clock, refresh_time=REFRESH)
    gen = CookieGenerator(r_pub, clock, refresh_time=REFRESH * 10)   # a peer that keeps it longer
    assert gen.consume_reply(checker.create_reply(gen.add_macs(initiation(peers)), 1, SRC))
    old_secret = checker._secret
    clock.t += REFRESH + 1
    msg = gen.add_macs(initiation(peers))
    assert mac2_of(msg) != bytes(16)
    assert not checker.check_mac2(msg, SRC)          # secret is stale
    reply = checker.create_reply(msg, 1, SRC)        # rotates the secret
    assert not any(old_secret)                       # old secret zeroed
    assert not checker.check_mac2(msg, SRC)          # old cookie no longer valid
    assert gen.consume_reply(reply)
    assert checker.check_mac2(gen.add_macs(initiation(peers)), SRC)


def test_forged_cookie_reply_rejected(peers, clock):
    _, i_pub, _, r_pub = peers
    checker = CookieChecker(r_pub, clock)
    gen = CookieGenerator(r_pub, clock)
    msg = gen.add_macs(initiation(peers))
    reply = checker.create_reply(msg, 1, SRC)
    # Any flipped byte of nonce or ciphertext.
    for pos in range(8, wire.COOKIE_REPLY_SIZE):
        bad = bytearray(reply)
        bad[pos] ^= 1
        assert not gen.consume_reply(bytes(bad)), pos
    # Sealed by someone who is not the responder (another static key).
    assert not gen.consume_reply(CookieChecker(i_pub, clock).create_reply(msg, 1, SRC))
    # Answering a message we did not send (another mac1).
    other = CookieGenerator(r_pub, clock).add_macs(initiation(peers))
    assert not gen.consume_reply(checker.create_reply(other, 1, SRC))
    # Wrong size / type.
    assert not gen.consume_reply(reply[:-1])
    assert not gen.consume_reply(msg)
    assert not gen.has_fresh_cookie
    # The genuine one still works, once.
    assert gen.consume_reply(reply)
    assert not gen.consume_reply(reply)


def test_cookie_reply_before_any_message_rejected(peers, clock):
    r_pub = peers[3]
    checker = CookieChecker(r_pub, clock)
    msg = CookieGenerator(r_pub, clock).add_macs(initiation(peers))
    assert not CookieGenerator(r_pub, clock).consume_reply(checker.create_reply(msg, 1, SRC))


def test_cookie_reply_plaintext_not_on_wire(peers, clock):
    r_pub = peers[3]
    checker = CookieChecker(r_pub, clock)
    msg = CookieGenerator(r_pub, clock).add_macs(initiation(peers))
    reply = checker.create_reply(msg, 1, SRC)
    cookie = mac(bytes(checker._secret), address_bytes(SRC))
    assert cookie not in reply


# --- rate limiter ------------------------------------------------------------------------
def test_rate_limiter_burst_then_refill(clock):
    rl = RateLimiter(rate=10.0, burst=3, clock=clock, max_entries=16)
    assert [rl.allow(SRC) for _ in range(4)] == [True, True, True, False]
    assert rl.allow(OTHER_SRC)                       # other sources are independent
    clock.t += 0.05                                  # half a token
    assert not rl.allow(SRC)
    clock.t += 0.06                                  # a bit more than one token in total
    assert rl.allow(SRC)
    assert not rl.allow(SRC)
    clock.t += 10                                    # refills, but only up to the burst
    assert [rl.allow(SRC) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_keys_on_ip_not_port(clock):
    rl = RateLimiter(rate=1.0, burst=1, clock=clock, max_entries=16)
    assert rl.allow(("198.51.100.1", 1000))
    assert not rl.allow(("198.51.100.1", 2000))
    assert not rl.allow("198.51.100.1")
    assert rl.allow(("2001:db8::1", 1000, 0, 0))


def test_rate_limiter_bounded_entries_and_gc(clock):
    rl = RateLimiter(rate=10.0, burst=2, clock=clock, max_entries=8)
    for i in range(8):
        assert rl.allow(("10.0.0.%d" % i, 1))
    assert len(rl) == 8
    assert not rl.allow(("10.0.1.1", 1))             # table full of active sources: refused
    assert len(rl) == 8
    clock.t += 0.1                                   # not yet idle long enough (burst/rate = 0.2 s)
    assert not rl.allow(("10.0.1.1", 1))
    clock.t += 0.1
    assert rl.allow(("10.0.1.1", 1))                 # idle entries were forgotten
    assert len(rl) == 1
    # A flood of distinct sources never grows the table beyond max_entries.
    for i in range(1000):
        rl.allow(("10.1.%d.%d" % (i // 256, i % 256), 1))
        assert len(rl) <= 8


def test_rate_limiter_forgetting_is_lossless(clock):
    """A forgotten entry comes back full, exactly as it would have refilled."""
    rl = RateLimiter(rate=4.0, burst=2, clock=clock, max_entries=4)
    assert rl.allow(SRC) and rl.allow(SRC) and not rl.allow(SRC)
    clock.t += 0.5                                   # burst / rate
    assert rl.allow(OTHER_SRC)                       # triggers collection
    assert len(rl) == 1
    assert rl.allow(SRC) and rl.allow(SRC) and not rl.allow(SRC)


def test_rate_limiter_clock_step_back(clock):
    rl = RateLimiter(rate=1.0, burst=1, clock=clock, max_entries=4)
    assert rl.allow(SRC)
    clock.t -= 100
    assert not rl.allow(SRC)


def test_rate_limiter_arguments(clock):
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1, clock=clock)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0, clock=clock)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=1)


# --- load detector -----------------------------------------------------------------------
def test_load_detector(clock):
    ld = LoadDetector(threshold=5, clock=clock, hold=1.0)
    assert not any(ld.record() for _ in range(5))
    assert not ld.under_load
    assert ld.record()                               # the 6th within one second
    assert ld.under_load
    clock.t += 0.9
    assert ld.under_load
    clock.t += 0.2                                   # hold elapsed, new window
    assert not ld.under_load
    assert not ld.record()


# --- the whole flood-defence flow ---------------------------------------------------------
def test_under_load_flow(peers, clock):
    """Responder under load: cookie reply first, then the retry with mac2 is processed."""
    i_priv, i_pub, r_priv, r_pub = peers
    checker = CookieChecker(r_pub, clock)
    limiter = RateLimiter(rate=20, burst=5, clock=clock, max_entries=64)
    gen = CookieGenerator(r_pub, clock)

    def responder_receive(msg, src, under_load):
        if not checker.check_mac1(msg):
            return "drop"
        if under_load:
            if not checker.check_mac2(msg, src):
                return checker.create_reply(msg, wire.Initiation.unpack(msg).sender_index, src)
            if not limiter.allow(src):
                return "limited"
        return consume_initiation(r_priv, msg)

    first = gen.add_macs(initiation(peers))
    answer = responder_receive(first, SRC, under_load=True)
    assert isinstance(answer, bytes) and wire.message_type(answer) is wire.MessageType.COOKIE_REPLY
    assert gen.consume_reply(answer)
    retry, _ = create_initiation(i_priv, r_pub, 1234, tai64n.encode(2, 0), bytes(16), gen)
    info = responder_receive(retry, SRC, under_load=True)
    assert info.remote_static == i_pub
    # A spoofer at another address cannot reuse the cookie-bearing message.
    assert isinstance(responder_receive(retry, OTHER_SRC, under_load=True), bytes)
    # The same valid source is rate limited past its burst.
    results = [responder_receive(retry, SRC, under_load=True) for _ in range(10)]
    assert "limited" in results
    # Junk without mac1 is dropped before any cryptography.
    assert responder_receive(initiation(peers), SRC, under_load=False) == "drop"


def test_a_source_address_is_parsed_once_for_the_rate_limit_and_the_cookie(monkeypatch, clock):
    """Under a handshake load the same sources come back again and again:
    the rate limit's key and the cookie's address bytes come from one
    remembered parse per address (limits.packed_ip), with the same bytes as
    ipaddress gives, and a bad address is still a ValueError."""
    import ipaddress
    from phantom.protocols import limits
    calls = []
    real = ipaddress.ip_address
    monkeypatch.setattr(limits.ipaddress, "ip_address", lambda h: calls.append(h) or real(h))
    if hasattr(limits, "packed_ip"):
        limits.packed_ip.cache_clear()
    rl = RateLimiter(rate=1000, burst=1000, clock=clock)
    srcs = [("198.51.100.%d" % i, 40000 + i) for i in range(1, 6)] + [("2001:db8::7", 9000, 0, 0)]
    for _ in range(20):
        for src in srcs:
            assert rl.allow(src)
            assert address_bytes(src) == real(src[0]).packed + src[1].to_bytes(2, "big")
    assert sorted(calls) == sorted(s[0] for s in srcs), "one parse per address"
    with pytest.raises(ValueError):
        rl.allow(("not an address", 1))
