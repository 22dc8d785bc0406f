"""What the sans-IO control core asks its caller to do.

:class:`phantom.control.engine.Engine` never touches a socket or a data path;
it returns lists of these, and :mod:`phantom.daemon` carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..dataplane.types import Keypair


@dataclass(frozen=True)
class SendDatagram:
    """Send a handshake or cookie message to ``addr`` ((host, port))."""
    data: bytes
    addr: tuple


@dataclass(frozen=True)
class InstallKeypair:
    keypair: Keypair
    confirmed: bool


@dataclass(frozen=True)
class RetireKeypair:
    local_index: int


@dataclass(frozen=True)
class ClearKeys:
    peer_id: int


@dataclass(frozen=True)
class SetEndpoint:
    peer_id: int
    addr: Optional[tuple]


@dataclass(frozen=True)
class SendKeepalive:
    peer_id: int


@dataclass(frozen=True)
class StateChanged:
    peer_id: int
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class UnknownKey:
    """A valid initiation from a key we do not know (only reported when the
    caller asked for it, e.g. to look for a trusted endorsement)."""
    public_key: bytes
    addr: tuple
