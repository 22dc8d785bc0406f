"""Connection tracking on its own: keys, per-protocol timeouts, TCP states, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from phantom.dataplane.conntrack import (
    NO_ID, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ConnTrack, PacketInfo, Timeouts,
)

L, R = 0x0A000001, 0x0A000002          # 10.0.0.1 (local), 10.0.0.2 (remote)


def out(proto=17, sport=1000, dport=53, flags=0, peer=1, fam=4, src=L, dst=R):
    return PacketInfo(peer, fam, proto, src, dst, sport, dport, flags)


def back(proto=17, sport=53, dport=1000, flags=0, peer=1, fam=4, src=R, dst=L):
    return PacketInfo(peer, fam, proto, src, dst, sport, dport, flags)


T = Timeouts(tcp_new=5, tcp_established=100, tcp_closing=10, udp=3, udp_stream=20,
             icmp=4, other=7)


def test_udp_reply_and_timeouts():
    ct = ConnTrack(16, T)
    assert not ct.is_reply(back(), now=0)
    assert ct.track_outbound(out(), now=0)
    assert not ct.is_reply(back(), now=3.0)            # udp timeout 3 s, no reply yet
    assert ct.track_outbound(out(), now=3.0)           # re-created
    assert ct.is_reply(back(), now=5.9)                # -> stream, 20 s
    assert ct.is_reply(back(), now=25.0)
    assert not ct.is_reply(back(), now=45.1)
    assert ct.stats["created"] == 2


def test_key_includes_peer_family_ports_and_direction():
    ct = ConnTrack(16, T)
    ct.track_outbound(out(), now=0)
    assert not ct.is_reply(back(peer=2), now=0)
    assert not ct.is_reply(back(fam=6), now=0)
    assert not ct.is_reply(back(sport=54), now=0)
    assert not ct.is_reply(back(dport=1001), now=0)
    assert not ct.is_reply(back(src=R + 1), now=0)
    assert not ct.is_reply(back(proto=6, flags=TCP_ACK), now=0)
    # the outbound packet itself seen inbound is not a reply
    assert not ct.is_reply(PacketInfo(1, 4, 17, L, R, 1000, 53), now=0)
    assert ct.is_reply(back(), now=0)


def test_tcp_states():
    ct = ConnTrack(16, T)
    ct.track_outbound(out(6, 40000, 80, TCP_SYN), now=0)
    assert not ct.is_reply(back(6, 80, 40000, TCP_SYN), now=1)      # bare SYN never a reply
    assert ct.is_reply(back(6, 80, 40000, TCP_SYN | TCP_ACK), now=1)  # -> established
    assert ct.is_reply(back(6, 80, 40000, TCP_ACK), now=100.5)
    ct.track_outbound(out(6, 40000, 80, TCP_FIN | TCP_ACK), now=101)   # -> closing
    assert ct.is_reply(back(6, 80, 40000, TCP_ACK), now=110.5)
    assert not ct.is_reply(back(6, 80, 40000, TCP_ACK), now=121)
    # new connection on the same ports after close
    ct.track_outbound(out(6, 40000, 80, TCP_SYN), now=200)
    assert ct.is_reply(back(6, 80, 40000, TCP_SYN | TCP_ACK), now=201)
    assert ct.is_reply(back(6, 80, 40000, TCP_RST), now=202)             # -> closing
    assert not ct.is_reply(back(6, 80, 40000, TCP_ACK), now=213)


def test_tcp_syn_sent_times_out_fast_and_loose_pickup():
    ct = ConnTrack(16, T)
    ct.track_outbound(out(6, 1, 2, TCP_SYN), now=0)
    assert not ct.is_reply(back(6, 2, 1, TCP_SYN | TCP_ACK), now=5.5)
    # mid-stream outbound ACK picks the flow up again
    ct.track_outbound(out(6, 1, 2, TCP_ACK), now=6)
    assert ct.is_reply(back(6, 2, 1, TCP_ACK), now=7)


def test_icmp_echo_by_id():
    ct = ConnTrack(16, T)
    req = PacketInfo(1, 4, 1, L, R, 42, NO_ID)
    reply = PacketInfo(1, 4, 1, R, L, NO_ID, 42)
    inbound_req = PacketInfo(1, 4, 1, R, L, 42, NO_ID)
    assert ct.track_outbound(req, now=0)
    assert ct.is_reply(reply, now=1)
    assert not ct.is_reply(PacketInfo(1, 4, 1, R, L, NO_ID, 43), now=1)
    assert not ct.is_reply(inbound_req, now=1)
    assert not ct.is_reply(reply, now=5.1)
    # an outbound echo reply or other ICMP starts nothing
    assert not ct.track_outbound(PacketInfo(1, 4, 1, L, R, NO_ID, 42), now=0)
    assert not ct.track_outbound(PacketInfo(1, 4, 1, L, R, -2, -2), now=0)


def test_related_icmp_error():
    ct = ConnTrack(16, T)
    ct.track_outbound(out(), now=0)
    quoted = PacketInfo(1, 4, 17, L, R, 1000, 53)
    err = PacketInfo(1, 4, 1, R + 7, L, -2, -2, related=quoted)    # from a router
    assert ct.is_reply(err, now=1)
    # the quoted packet must have come from us (the error's destination)
    err2 = PacketInfo(1, 4, 1, R, L + 1, -2, -2, related=quoted)
    assert not ct.is_reply(err2, now=1)
    assert not ct.is_reply(PacketInfo(1, 4, 1, R, L, -2, -2,
                                      related=PacketInfo(1, 4, 17, L, R, 1000, 54)), now=1)
    assert ct.stats["related"] == 1


def test_other_protocols_by_address_pair():
    ct = ConnTrack(16, T)
    ct.track_outbound(PacketInfo(1, 4, 47, L, R), now=0)
    assert ct.is_reply(PacketInfo(1, 4, 47, R, L), now=6)
    assert not ct.is_reply(PacketInfo(1, 4, 47, R, L), now=13.1)


def test_bounded_evicts_expired_then_refuses():
    ct = ConnTrack(3, T, sweep_interval=1.0)
    for p in (1, 2, 3):
        assert ct.track_outbound(out(sport=p), now=0)
    assert not ct.track_outbound(out(sport=4), now=0.5)          # full, nothing expired
    assert ct.stats["conntrack_full"] == 1 and len(ct) == 3
    # existing flows are refreshed, never evicted early
    assert ct.track_outbound(out(sport=1), now=2.9)
    assert ct.is_reply(back(dport=2), now=2.9)
    # at 4.0, flow 3 has expired: swept, and the new flow fits
    assert ct.track_outbound(out(sport=4), now=4.0)
    assert len(ct) == 3 and ct.stats["expired"] >= 1
    assert not ct.is_reply(back(dport=3), now=4.0)


def test_full_table_sweeps_at_most_once_per_interval():
    ct = ConnTrack(2, T, sweep_interval=10.0)
    ct.track_outbound(out(sport=1), now=0)
    ct.track_outbound(out(sport=2), now=0)
    assert not ct.track_outbound(out(sport=3), now=0.0)       # sweeps (nothing expired)
    assert not ct.track_outbound(out(sport=3), now=5.0)       # expired, but no sweep yet
    assert ct.track_outbound(out(sport=3), now=10.0)
    assert ct.stats["conntrack_full"] == 2


def test_expire_and_configure():
    ct = ConnTrack(8, T)
    ct.track_outbound(out(sport=1), now=0)
    ct.track_outbound(out(6, 2, 3, TCP_SYN), now=0)
    assert ct.expire(now=4) == 1 and len(ct) == 1
    ct.configure(1, Timeouts())
    assert not ct.track_outbound(out(sport=9), now=4)
    with pytest.raises(ValueError):
        ConnTrack(0)
    with pytest.raises(ValueError):
        Timeouts.from_mapping({"udp": 0})
    assert Timeouts.from_mapping({"udp": 5}).udp == 5.0
    snap = ct.snapshot()
    assert snap["entries"] == 1 and snap["max_entries"] == 1


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["out", "in"]), st.integers(0, 5),
                              st.floats(0, 10)), max_size=60),
       cap=st.integers(1, 4))
def test_bounded_and_replies_within_timeout(ops, cap):
    """Never more than ``cap`` entries; a flow tracked at t (not refused) is a
    reply at any time before t + udp timeout."""
    ct = ConnTrack(cap, T, sweep_interval=0.0)
    now = 0.0
    tracked = {}
    for kind, port, dt in ops:
        now += dt
        if kind == "out":
            if ct.track_outbound(out(sport=port), now=now):
                tracked[port] = now
        else:
            got = ct.is_reply(back(dport=port), now=now)
            if port in tracked and now < tracked[port] + T.udp:
                assert got
            if got:
                tracked[port] = max(tracked[port], now)
            elif port in tracked and now >= tracked[port] + T.udp:
                del tracked[port]
        assert len(ct) <= cap
