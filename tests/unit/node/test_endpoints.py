"""Endpoints given as DNS names (phantom/node/endpoints.py, phantom/syntax.py):
the re-resolve schedule, sans-IO with an injected clock, and the config's
validation of a name.  The lookups themselves, by glibc inside a namespace,
are in tests/e2e/node/test_hostname_endpoints.py."""

from __future__ import annotations

import pytest

from phantom.constants import Tunables
from phantom.errors import ConfigError
from phantom.node import config
from phantom.node.endpoints import ResolveSchedule
from phantom.syntax import is_ip_literal, parse_peer_endpoint

KEY = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="
T = Tunables()                                   # 30 s interval, 135 s stale, as reresolve-dns.sh
NEVER = float("-inf")


def schedule(clock):
    return ResolveSchedule(T, clock)


def due(s, last_handshake=lambda pid: NEVER):
    return [n.peer_id for n in s.take_due(last_handshake)]


# ---------------------------------------------------------------- the schedule
def test_a_new_name_is_looked_up_at_once_and_only_once_at_a_time(clock):
    s = schedule(clock)
    s.track(1, b"k" * 32, "vpn.example.com", 51820)
    assert due(s) == [1]
    assert due(s) == []                          # under way: no second lookup of it
    clock.advance(100)
    assert due(s) == []                          # still under way (a bounded lookup ends it)


def test_an_answered_name_is_looked_up_again_only_while_the_peer_is_stale(clock):
    s = schedule(clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    due(s)
    assert s.answered(n, [("192.0.2.1", 51820)], None) == ("192.0.2.1", 51820)
    handshake = {"t": clock()}                  # a handshake just now
    last = lambda pid: handshake["t"]           # noqa: E731
    for _ in range(10):                         # fresh handshakes: never looked up again
        clock.advance(T.reresolve_interval)
        handshake["t"] = clock() - 10
        assert due(s, last) == []
    handshake["t"] = clock()
    # the handshakes stop: once the last is older than 135 s, every 30 s
    clock.advance(T.reresolve_after - 1)
    assert due(s, last) == []
    clock.advance(2)
    assert due(s, last) == [1]
    s.answered(n, [("192.0.2.1", 51820)], ("192.0.2.1", 51820))
    clock.advance(T.reresolve_interval - 1)
    assert due(s, last) == []
    clock.advance(1)
    assert due(s, last) == [1]


def test_a_peer_that_never_had_a_handshake_is_looked_up_every_interval(clock):
    s = schedule(clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    due(s)
    s.answered(n, [("192.0.2.1", 51820)], None)
    clock.advance(T.reresolve_interval - 0.5)
    assert due(s) == []
    clock.advance(0.5)
    assert due(s) == [1]


def test_a_name_that_does_not_resolve_is_retried_with_backoff_up_to_the_interval(clock):
    s = schedule(clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    gaps = []
    for _ in range(8):
        assert due(s) == [1]
        s.failed(n, "Name or service not known")
        t0 = clock()
        while not due(s):
            clock.advance(0.25)
        gaps.append(clock() - t0)
        s.names[1].in_flight = False             # (the next round takes it again)
        s.names[1].tried_at = NEVER
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert s.unresolved() == 1 and n.error == "Name or service not known"


def test_a_failure_is_news_once_and_again_when_the_reason_changes(clock):
    s = schedule(clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    assert s.failed(n, "Name or service not known") is True
    assert s.failed(n, "Name or service not known") is False
    assert s.failed(n, "no answer within 5s") is True
    s.answered(n, [("192.0.2.1", 51820)], None)
    assert s.failed(n, "no answer within 5s") is True
    assert s.counters == {"lookups": 5, "failures": 4, "moves": 1}


def test_handshakes_that_gave_up_force_a_lookup_at_most_once_a_second(clock):
    s = schedule(clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    due(s)
    s.answered(n, [("192.0.2.1", 51820)], None)
    fresh = lambda pid: clock()                 # noqa: E731  (the stale rule alone would wait)
    clock.advance(0.2)
    s.gave_up(1)
    assert due(s, fresh) == []                   # within a second of the last lookup
    clock.advance(0.8)
    assert due(s, fresh) == [1]
    s.answered(n, [("192.0.2.1", 51820)], ("192.0.2.1", 51820))
    clock.advance(5)
    assert due(s, fresh) == []                   # forced once, not from then on
    s.gave_up(99)                                # not a name's peer: nothing


def test_an_answer_moves_the_endpoint_only_when_the_address_in_use_is_not_in_it(clock):
    s = schedule(clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    a, b, c = ("192.0.2.1", 51820), ("192.0.2.2", 51820), ("2001:db8::1", 51820)
    assert s.answered(n, [a, c], None) == a
    assert s.answered(n, [b, a], a) is None      # the peer may have roamed within the name
    assert s.answered(n, [b, c], a) == b         # the server moved
    assert s.answered(n, [], b) is None
    assert s.counters["moves"] == 2
    d = s.describe(1)
    assert d["name"] == "vpn.example.com:51820" and d["error"] is None and d["addresses"] == []
    assert s.describe(2) is None


def test_track_keeps_a_name_and_replaces_a_changed_one(clock):
    s = schedule(clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    due(s)
    s.answered(n, [("192.0.2.1", 51820)], None)
    assert s.track(1, b"k" * 32, "vpn.example.com", 51820) is n
    m = s.track(1, b"k" * 32, "other.example.com", 51820)
    assert m is not n and due(s) == [1]          # a changed name is looked up at once
    s.forget(1)
    assert due(s) == [] and s.describe(1) is None


# ---------------------------------------------------------- config and syntax
@pytest.mark.parametrize("text,want", [
    ("vpn.example.com:51820", ("vpn.example.com", 51820)),
    ("VPN.Example.COM.:51820", ("vpn.example.com", 51820)),
    ("server:9000", ("server", 9000)),
    ("xn--bcher-kva.example:1", ("xn--bcher-kva.example", 1)),
    ("192.0.2.7:9000", ("192.0.2.7", 9000)),
    ("[2001:db8::7]:9000", ("2001:db8::7", 9000)),
])
def test_an_endpoint_is_an_ip_literal_or_a_dns_name(text, want):
    assert parse_peer_endpoint(text) == want
    assert is_ip_literal(want[0]) is (text[0] in "1[")


@pytest.mark.parametrize("text,problem", [
    ("vpn_1.example.com:51820", "neither an IP address nor a DNS name"),
    ("-vpn.example.com:51820", "neither an IP address nor a DNS name"),
    ("vpn..example.com:51820", "neither an IP address nor a DNS name"),
    ("1.2.3.4.5:51820", "neither an IP address nor a DNS name"),
    ("10.0.0:51820", "neither an IP address nor a DNS name"),
    ("%s.example:1" % ("a" * 64), "neither an IP address nor a DNS name"),
    ("%s:1" % ".".join(["abcdefgh"] * 29), "at most 253"),
    ("bücher.example:1", "xn--"),
    ("vpn.example.com", "no port"),
    ("vpn.example.com:0", "outside 1..65535"),
    ("vpn.example.com:http", "not a number"),
    ("[vpn.example.com]:1", "not an IP address"),
])
def test_a_bad_name_is_a_clear_error_naming_the_key(tmp_path, text, problem):
    path = tmp_path / "p.toml"
    path.write_text('[[peer]]\npublic_key = "%s"\nendpoint = "%s"\n' % (KEY, text))
    with pytest.raises(ConfigError) as info:
        config.parse_daemon_args(["--config", str(path)])
    assert info.value.key == "peer[0].endpoint" and problem in info.value.problem


def test_a_configured_name_is_kept_apart_from_the_address(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[peer]]\npublic_key = "%s"\nendpoint = "vpn.example.com:51820"\n'
                    'persistent_keepalive = 25\n' % KEY)
    s = config.parse_daemon_args(["--config", str(path)])
    pc = s.peers[0]
    assert pc.endpoint is None and pc.endpoint_name == ("vpn.example.com", 51820)
    assert pc.endpoint_text == "vpn.example.com:51820"


def test_a_peer_going_dead_forces_a_lookup_of_its_name(clock):
    """The resolver observes the executor's actions: a StateChanged to dead
    (its handshake attempts gave up) makes its name due at once."""
    from types import SimpleNamespace

    from phantom.control import actions as A
    from phantom.node.endpoints import EndpointResolver
    r = EndpointResolver(SimpleNamespace(t=T))
    r.schedule = s = ResolveSchedule(T, clock)
    n = s.track(1, b"k" * 32, "vpn.example.com", 51820)
    due(s)
    s.answered(n, [("192.0.2.1", 51820)], None)
    clock.advance(5)
    fresh = lambda pid: clock()                 # noqa: E731
    assert r.observe(A.StateChanged(1, "stale", "idle", "closed")) == [] and due(s, fresh) == []
    assert r.observe(A.StateChanged(1, "stale", "dead", "handshake gave up")) == []
    assert due(s, fresh) == [1]


def test_text_shaped_like_a_key_is_never_a_host_name():
    """A private key pasted where an endpoint goes must not be sent to the DNS
    resolver (nor repeated in the error): every form keys are written in."""
    import base64
    import os

    from phantom.errors import ConfigError
    from phantom.syntax import hostname_problem, looks_like_key, parse_peer_endpoint
    raw = os.urandom(32)
    b64 = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    for form in (b64, b64.rstrip("="), url, url.rstrip("="), raw.hex(), raw.hex().upper()):
        assert looks_like_key(form), form
    host = url.rstrip("=").replace("_", "a")          # a 43-character label DNS would accept
    assert looks_like_key(host) and hostname_problem(host) is not None
    with pytest.raises(ConfigError) as exc:
        parse_peer_endpoint(host + ":9000")
    assert host not in str(exc.value) and host.lower() not in str(exc.value)
    for name in ("vpn.example.com", "a" * 42, "server-1.lab.test", "x" * 63):
        assert not looks_like_key(name) and hostname_problem(name) is None, name
