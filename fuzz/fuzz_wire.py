#!/usr/bin/env python3
"""Fuzz target "wire": the datagram framing and every message layout.

Contract (phantom/wire/phantom.py over phantom/wire/framing.py): ``message_type``
accepts a datagram or raises WireError; each ``unpack`` accepts exactly
what ``message_type`` calls its type (its own type and sizes, zero reserved
bytes: one framing rule) or raises WireError, and what it accepts packs back
to the same bytes; the transport
header of anything ``message_type`` calls TRANSPORT unpacks and re-packs to
the same 16 bytes; a peer-control datagram (type 5) unpacks unless its nonce
is outside the control domain and re-packs to the same bytes; a peer-control
body decodes or raises WireError and re-encodes to the same bytes.  The receiver's mac1/mac2 checks (cookie.CookieChecker)
return a bool for any input.  The inner-packet parsers of
phantom/dataplane/packet.py "never raise on any input".
"""

import sys

import atheris

import common

with atheris.instrument_imports(include=["phantom"]):   # our code only, not aiohttp & co.
    from phantom import wire
    from phantom.protocols.phantom import cookie
    from phantom.dataplane import packet

ALLOWED = (wire.WireError,)

_CHECKER = cookie.CookieChecker(bytes(32), lambda: common.NOW)
_UNPACKERS = {
    wire.MessageType.INITIATION: wire.Initiation,
    wire.MessageType.RESPONSE: wire.Response,
    wire.MessageType.COOKIE_REPLY: wire.CookieReply,
}

def TestOneInput(data: bytes) -> None:
    try:
        mtype = wire.message_type(data)
    except ALLOWED:
        mtype = None
    for mt, cls in _UNPACKERS.items():
        try:
            msg = cls.unpack(data)
        except ALLOWED:
            assert mtype is not mt, "message_type accepted a %s that unpack refused" % mt.name
            continue
        # one framing rule: unpack and message_type agree (reserved bytes included)
        assert mtype is mt and len(data) in wire.EXPECTED_SIZES[mt], "unpack took what message_type did not"
        assert msg.pack() == bytes(data), "%s does not round-trip" % mt.name
        if hasattr(msg, "noise_message"):
            noise_offset = wire.INITIATION_NOISE_OFFSET if mt is wire.MessageType.INITIATION \
                else wire.RESPONSE_NOISE_OFFSET
            assert len(msg.noise_message) == len(data) - 2 * wire.MAC_SIZE - noise_offset
    if mtype is wire.MessageType.TRANSPORT:
        idx, ctr = wire.unpack_transport_header(data)
        assert wire.pack_transport_header(idx, ctr) == bytes(data[:wire.TRANSPORT_HEADER_SIZE])
        assert wire.TRANSPORT_MIN_SIZE <= len(data) <= wire.MAX_DATAGRAM_SIZE
        assert wire.transport_nonce(ctr)[:8] == data[8:16]
    elif mtype is wire.MessageType.RELAY:
        assert wire.RELAY_MIN_SIZE <= len(data) <= wire.MAX_DATAGRAM_SIZE
    elif mtype is wire.MessageType.RELAY_AEGIS:
        assert wire.RELAY_AEGIS_MIN_SIZE <= len(data) <= wire.MAX_DATAGRAM_SIZE
    elif mtype is wire.MessageType.PEER_CONTROL:
        assert wire.PEER_CONTROL_MIN_SIZE <= len(data) <= wire.PEER_CONTROL_MAX_SIZE
        try:
            idx, nonce, box = wire.unpack_peer_control(data)
        except ALLOWED:
            assert data[wire.PEER_CONTROL_HEADER.size - 1] != 1   # only the nonce domain refuses
        else:
            assert wire.pack_peer_control(idx, nonce, box) == bytes(data)
    elif mtype is not None:
        assert len(data) in wire.EXPECTED_SIZES[mtype]
    # a peer-control body (what the control plane decrypted) decodes or raises WireError,
    # and what decodes encodes back to the same bytes
    try:
        seq, msg = wire.decode_control(data)
    except ALLOWED:
        pass
    else:
        assert wire.encode_control(seq, msg) == bytes(data), "peer control body does not round-trip"
    # mac checks answer a bool for any bytes
    assert _CHECKER.check_mac1(data) in (True, False)
    assert _CHECKER.check_mac2(data, common.PEER_ADDR) in (True, False)
    # the decrypted-payload parsers never raise
    payload = data[wire.TRANSPORT_PAYLOAD_OFFSET:] if mtype is wire.MessageType.TRANSPORT else data
    packet.ip_src(payload)
    packet.ip_dst(payload)
    packet.parse_ip(payload)
    eth = packet.parse_ether(payload)
    packet.parse_arp(payload)
    packet.arp_sender_ip(payload)
    if eth is not None:
        packet.parse_ip(payload, eth.payload_offset)
        packet.parse_arp(payload, eth.payload_offset)
    packet.icmp_unreachable(payload)
    packet.tcp_rst_for(payload)


if __name__ == "__main__":
    common.main(TestOneInput)
