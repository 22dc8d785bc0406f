"""Which protocol a datagram on the shared UDP port speaks.

Phantom and WireGuard peers share one socket.  The first byte and the length
tell a handshake apart::

    type 1  164, 166 or 169..1192 bytes: Phantom initiation (an attachment
            makes it longer)                        148 bytes: WireGuard initiation
    type 2  108 or 109 bytes: Phantom response       92 bytes: WireGuard response
    type 3   64 bytes: cookie reply (both)  -- the receiver index decides
    type 4  transport data (both)           -- the receiver index decides

Cookie replies and transport data are addressed to one of *our* indexes,
and we know which protocol each index was handed out for, so ``protocol``
is ``None`` for them here and the index table answers.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Optional

from . import framing
from . import phantom as _ph
from . import wireguard as _wg
from .framing import MessageType, WireError


class Protocol(str, enum.Enum):
    PHANTOM = "phantom"
    WIREGUARD = "wireguard"


class Kind(NamedTuple):
    protocol: Optional[Protocol]    # None: decided by the receiver index
    mtype: MessageType


_HANDSHAKE_SIZES = {
    (MessageType.INITIATION, _ph.INITIATION_SIZE): Protocol.PHANTOM,
    (MessageType.INITIATION, _ph.INITIATION_OFFER_SIZE): Protocol.PHANTOM,
    (MessageType.INITIATION, _wg.INITIATION_SIZE): Protocol.WIREGUARD,
    (MessageType.RESPONSE, _ph.RESPONSE_SIZE): Protocol.PHANTOM,
    (MessageType.RESPONSE, _ph.RESPONSE_CHOICE_SIZE): Protocol.PHANTOM,
    (MessageType.RESPONSE, _wg.RESPONSE_SIZE): Protocol.WIREGUARD,
}
assert len({n for _, n in _HANDSHAKE_SIZES}) == len(_HANDSHAKE_SIZES)
# Phantom's initiations with an attachment: a range above every fixed size
_ATTACHED = (_ph.INITIATION_ATTACHED_MIN_SIZE, _ph.INITIATION_MAX_SIZE)
assert all(n < _ATTACHED[0] for _, n in _HANDSHAKE_SIZES)
assert _ph.COOKIE_REPLY_SIZE == _wg.COOKIE_REPLY_SIZE
# Cookie replies and transport data: either protocol's, told apart by the index.
_SHARED_SIZES = {MessageType.COOKIE_REPLY: (framing.COOKIE_REPLY_SIZE,)}
_SHARED_BOUNDS = {MessageType.TRANSPORT: (min(_ph.TRANSPORT_MIN_SIZE, _wg.TRANSPORT_MIN_SIZE),
                                          max(_ph.MAX_DATAGRAM_SIZE, _wg.MAX_DATAGRAM_SIZE))}


def classify(datagram) -> Kind:
    """(protocol, message type) of a datagram, or raise WireError for bad framing."""
    mtype = framing.header(datagram)
    if mtype is MessageType.TRANSPORT or mtype is MessageType.COOKIE_REPLY:
        return Kind(None, framing.check(datagram, _SHARED_SIZES, _SHARED_BOUNDS))
    if mtype in (MessageType.PEER_CONTROL, MessageType.RELAY, MessageType.RELAY_AEGIS):
        _ph.message_type(datagram)          # NAT traversal: Phantom only; its bounds or WireError
        return Kind(Protocol.PHANTOM, mtype)
    n = len(datagram)
    proto = _HANDSHAKE_SIZES.get((mtype, n))
    if proto is None and mtype is MessageType.INITIATION and _ATTACHED[0] <= n <= _ATTACHED[1]:
        proto = Protocol.PHANTOM
    if proto is None:
        raise WireError("%s of %d bytes is neither Phantom's (%s) nor WireGuard's (%d)" % (
            mtype.name.lower(), n, framing.sizes_text(_ph.EXPECTED_SIZES[mtype]),
            _wg.EXPECTED_SIZE[mtype]))
    return Kind(proto, mtype)


def is_control(datagram) -> bool:
    """True for a well-framed handshake or cookie message of either protocol."""
    try:
        return classify(datagram).mtype is not MessageType.TRANSPORT
    except WireError:
        return False
