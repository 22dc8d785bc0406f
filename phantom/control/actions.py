"""What the sans-IO control core asks its caller to do.

:class:`phantom.control.engine.Engine` never touches a socket or a data path;
it returns lists of these, and :mod:`phantom.node.executor` carries them out, in
order.

Invariant, keys before sends: within one list, every :class:`InstallKeypair`
comes before any :class:`SendDatagram` or :class:`SendKeepalive`.  A
handshake response (or the initiator's confirming keepalive) lets the peer
send on the new session at once; the keys must already be in the data path,
where the ``--fast`` worker reads concurrently, or the peer's first packets
are dropped as ``unknown_index`` (issue #10).  WireGuard installs the keypair
before the response leaves, too.  :func:`keys_before_sends` checks it
(``tests/test_engine.py``), and the daemon, should a list ever break it,
logs the bug and carries the installs out first (:func:`installs_first`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import wire
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
class SetRelayRoute:
    """NAT traversal: relay frames from ``relay_peer`` carrying ``relay_id``
    come from ``peer_id`` (the data path's inbound relay map)."""
    peer_id: int
    relay_peer: int
    relay_id: int


@dataclass(frozen=True)
class SetRelayPair:
    """On a relay: relay frames from ``src_peer`` tagged ``relay_id`` go to
    ``dest_peer`` (still tagged ``relay_id``); ``dest_peer`` None: no longer.
    Only pairs whose destination accepts the source are installed."""
    src_peer: int
    relay_id: int
    dest_peer: Optional[int]


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


@dataclass(frozen=True)
class HandshakeRefused:
    """The peer answered our initiation (which carried our membership) with
    an authenticated refusal: ``reason`` is a wire.Refusal.  The engine
    backs off before trying it again; the daemon logs it and fails a
    pending ``open`` with its sentence."""
    peer_id: int
    name: str
    reason: int

    @property
    def sentence(self) -> str:
        return wire.refusal_sentence(self.reason)


_SENDS = (SendDatagram, SendKeepalive)


def keys_before_sends(actions) -> bool:
    """True when no send precedes a key install in ``actions`` (see above)."""
    sent = False
    for act in actions:
        if isinstance(act, _SENDS):
            sent = True
        elif isinstance(act, InstallKeypair) and sent:
            return False
    return True


def installs_first(actions) -> list:
    """``actions`` with every InstallKeypair moved ahead of the first send,
    everything else in its order (what the daemon falls back to)."""
    out = list(actions)
    first_send = next((i for i, a in enumerate(out) if isinstance(a, _SENDS)), None)
    if first_send is None:
        return out
    head, tail = out[:first_send], out[first_send:]
    return head + [a for a in tail if isinstance(a, InstallKeypair)] + \
        [a for a in tail if not isinstance(a, InstallKeypair)]
