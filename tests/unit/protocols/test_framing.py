"""The framing both protocols share (phantom/wire/framing.py), sans-IO.

* one rule for the reserved bytes: every parser of either protocol --
  ``message_type``, the demultiplexer and each message class's ``unpack``
  -- refuses a datagram whose reserved bytes are not zero (Phantom's
  ``unpack`` did not look at them before issue 19; WireGuard's did);
* WireGuard's ``message_type`` refuses Phantom's own types 5 and 6 with a
  WireError (it raised KeyError);
* the layouts are the prototype's byte for byte: the prototype's code (the
  commit before suites, from git) packs every message of both protocols to
  the same bytes as today's, and today's classes read what it sends.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from phantom import wire
from phantom.wire import demux, framing
from phantom.wire import wireguard as wgw
from tests.unit.protocols.test_suites import prototype  # noqa: F401  (the git fixture)

pytestmark = pytest.mark.timeout(120)


def _b(tag: int, n: int) -> bytes:
    return bytes((tag * 37 + i * 11) % 256 for i in range(n))


# (module, class, fields): one of each layout of both protocols, both Phantom sizes
MESSAGES = [
    ("wire", "Initiation", [0x01020304, _b(1, 32), _b(2, 48), _b(3, 44), _b(4, 16), _b(5, 16)]),
    ("wire", "Initiation", [7, _b(6, 32), _b(7, 48), _b(8, 46), _b(9, 16), _b(10, 16)]),
    ("wire", "Response", [0xA0B0C0D0, 0x11223344, _b(11, 32), _b(12, 32), _b(13, 16), _b(14, 16)]),
    ("wire", "Response", [1, 2, _b(15, 32), _b(16, 33), _b(17, 16), _b(18, 16)]),
    ("wire", "CookieReply", [0xFFFFFFFF, _b(19, 24), _b(20, 32)]),
    ("wg", "Initiation", [0x0BADF00D, _b(21, 32), _b(22, 48), _b(23, 28), _b(24, 16), _b(25, 16)]),
    ("wg", "Response", [5, 6, _b(26, 32), _b(27, 16), _b(28, 16), _b(29, 16)]),
    ("wg", "CookieReply", [9, _b(30, 24), _b(31, 32)]),
]
MODULES = {"wire": wire, "wg": wgw}
TYPES = {"Initiation": wire.MessageType.INITIATION, "Response": wire.MessageType.RESPONSE,
         "CookieReply": wire.MessageType.COOKIE_REPLY}


def _today(mod: str, cls: str, fields: list) -> bytes:
    return getattr(MODULES[mod], cls)(*fields).pack()


@pytest.mark.parametrize("mod,cls,fields", MESSAGES, ids=lambda v: v if isinstance(v, str) else None)
def test_every_parser_refuses_nonzero_reserved_bytes(mod, cls, fields):
    good = _today(mod, cls, fields)
    klass = getattr(MODULES[mod], cls)
    assert klass.unpack(good) == klass(*fields)
    assert MODULES[mod].message_type(good) is TYPES[cls]
    assert demux.classify(good).mtype is TYPES[cls]
    for pos in (1, 2, 3):
        for value in (1, 0x80, 0xFF):
            bad = bytearray(good)
            bad[pos] = value
            for parse in (klass.unpack, MODULES[mod].message_type, demux.classify):
                with pytest.raises(wire.WireError):
                    parse(bytes(bad))


def test_peer_control_and_transport_headers_follow_the_same_rule():
    nonce = wire.control_nonce(_b(40, 23))
    pc = wire.pack_peer_control(3, nonce, _b(41, wire.PEER_CONTROL_MIN_SIZE - wire.PEER_CONTROL_HEADER.size))
    assert wire.unpack_peer_control(pc)[0] == 3
    transport = wire.pack_transport_header(4, 5) + bytes(16)
    for good in (pc, transport):
        wire.message_type(good)
        for pos in (1, 2, 3):
            bad = bytearray(good)
            bad[pos] = 1
            with pytest.raises(wire.WireError, match="reserved"):
                wire.message_type(bytes(bad))
            with pytest.raises(wire.WireError):
                demux.classify(bytes(bad))
    bad = bytearray(pc)
    bad[2] = 1
    with pytest.raises(wire.WireError):
        wire.unpack_peer_control(bytes(bad))


@pytest.mark.parametrize("mtype", [wire.MessageType.PEER_CONTROL, wire.MessageType.RELAY,
                                   wire.MessageType.RELAY_AEGIS])
def test_wireguard_message_type_refuses_phantoms_own_types(mtype):
    datagram = bytes([mtype, 0, 0, 0]) + bytes(wire.PEER_CONTROL_MIN_SIZE)
    assert wire.message_type(datagram) is mtype             # Phantom's
    with pytest.raises(wgw.WireError, match="not a message of this protocol"):
        wgw.message_type(datagram)


def test_shared_layouts_are_one():
    assert wire.CookieReply is wgw.CookieReply is framing.CookieReply
    assert wire.MessageType is wgw.MessageType is framing.MessageType
    assert wire.pack_transport_header is wgw.pack_transport_header
    msg = _today("wire", "Initiation", MESSAGES[0][2])
    assert framing.mac1_region(msg) == msg[:-32] and framing.mac2_region(msg) == msg[:-16]
    assert framing.mac1_of(msg) == msg[-32:-16] and framing.mac2_of(msg) == msg[-16:]
    assert framing.with_macs(msg, _b(50, 16), _b(51, 16)) == msg[:-32] + _b(50, 16) + _b(51, 16)


def test_pack_refuses_a_wrong_size():
    fields = list(MESSAGES[0][2])
    fields[3] = _b(3, 45)                    # neither 44 nor 46 bytes of payload
    with pytest.raises(wire.WireError):
        wire.Initiation(*fields).pack()


# ---------------------------------------------------------------- the prototype's bytes
_DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from phantom import wire
from phantom.wire import wireguard as wg
mods = {"wire": wire, "wg": wg}
out = {"file": wire.__file__, "messages": []}
for mod, cls, fields in json.loads(sys.stdin.read()):
    fields = [bytes.fromhex(f) if isinstance(f, str) else f for f in fields]
    out["messages"].append(getattr(mods[mod], cls)(*fields).pack().hex())
out["transport"] = wire.pack_transport_header(0x01020304, 2 ** 64 - 2).hex()
out["control"] = wire.pack_peer_control(8, wire.control_nonce(bytes(range(23))), b"box").hex()
out["body"] = wire.encode_control(5, wire.Endpoints(bytes(range(32)), (("10.0.0.1", 51820), ("fd00::2", 1)), 7)).hex()
print(json.dumps(out))
"""


def test_the_layouts_are_the_prototypes_byte_for_byte(prototype):  # noqa: F811
    """The prototype's own wire module, in its own interpreter, packs every
    message to the bytes today's packs, and today's classes read them."""
    todo = [[m, c, [f.hex() if isinstance(f, bytes) else f for f in fields]]
            for m, c, fields in MESSAGES if len(_today(m, c, fields)) not in (166, 109)]
    cp = subprocess.run([sys.executable, "-c", _DRIVER, str(prototype)], input=json.dumps(todo),
                        capture_output=True, text=True, timeout=60, cwd=str(prototype))
    assert cp.returncode == 0, cp.stderr
    got = json.loads(cp.stdout)
    assert "prototype" in got["file"]                     # the old tree's package, not ours
    assert len(got["messages"]) == len(todo) == 6         # no suites in the prototype: 164 and 108 only
    for (mod, cls, fields), theirs in zip(todo, got["messages"]):
        fields = [bytes.fromhex(f) if isinstance(f, str) else f for f in fields]
        theirs = bytes.fromhex(theirs)
        assert theirs == _today(mod, cls, fields), (mod, cls)
        assert getattr(MODULES[mod], cls).unpack(theirs) == getattr(MODULES[mod], cls)(*fields)
    assert bytes.fromhex(got["transport"]) == wire.pack_transport_header(0x01020304, 2 ** 64 - 2)
    assert bytes.fromhex(got["control"]) == wire.pack_peer_control(8, wire.control_nonce(bytes(range(23))),
                                                                  b"box")
    assert bytes.fromhex(got["body"]) == wire.encode_control(
        5, wire.Endpoints(bytes(range(32)), (("10.0.0.1", 51820), ("fd00::2", 1)), 7))
