"""NAT traversal in the node: :class:`phantom.nat.traversal.Traversal`
(rendezvous roles, the path table, relay pairs; sans-IO) made from the
config and hung on the executor as an observer of the engine's actions.

It learns every installed, confirmed, retired and cleared keypair and every
verified endpoint from the actions as they are carried out, takes the
peer-control datagrams (wire type PEER_CONTROL), asks rendezvous nodes when
traffic waits for a peer, and runs its own timers on the executor's tick.
"""

from __future__ import annotations

import socket

from .. import wire
from ..control import actions as A
from .executor import Observer


class NatObserver(Observer):
    message_types = frozenset((int(wire.MessageType.PEER_CONTROL),))

    def __init__(self, traversal):
        self.traversal = traversal

    def observe(self, act) -> list:
        t = self.traversal
        if isinstance(act, A.InstallKeypair):
            t.keypair_installed(act.keypair, act.confirmed)
        elif isinstance(act, A.RetireKeypair):
            return t.keypair_retired(act.local_index)
        elif isinstance(act, A.ClearKeys):
            return t.keys_cleared(act.peer_id)
        elif isinstance(act, A.SetEndpoint):
            t.endpoint_set(act.peer_id, act.addr)
        return []

    def datagram(self, data: bytes, addr: tuple) -> list:
        return self.traversal.handle_datagram(data, addr)

    def handshake_needed(self, peer_id: int) -> list:
        return self.traversal.handshake_needed(peer_id)

    def keypair_confirmed(self, peer_id: int, local_index: int) -> None:
        self.traversal.keypair_confirmed(peer_id, local_index)

    def tick(self) -> list:
        return self.traversal.tick()


def local_endpoints(udp, configured) -> "callable":
    """Our own (LAN) endpoints, for peers behind the same NAT, as a function
    of a rendezvous node's endpoint: the address the kernel picks toward it
    (with our UDP port), then [interface] endpoints (``configured``)."""
    def endpoints(toward) -> list:
        out = []
        try:
            fam = socket.AF_INET6 if ":" in toward[0] else socket.AF_INET
            with socket.socket(fam, socket.SOCK_DGRAM) as probe:
                probe.connect(tuple(toward[:2]))
                out.append((probe.getsockname()[0], udp.getsockname()[1]))
        except OSError:
            pass
        return out + [tuple(ep) for ep in configured]
    return endpoints


def attach(daemon) -> None:
    """NAT traversal when the config asks for it (a rendezvous role, or
    [[peer]] rendezvous nodes): ``daemon.nat`` and its observer."""
    s, dp = daemon.s, daemon.dp
    servers = [pc.public_key for pc in s.peers if pc.rendezvous]
    membership = getattr(daemon, "membership", None)
    if membership is not None:           # a network's rendezvous nodes (its definition)
        servers += [k for k in membership.server_keys() if k not in servers]
    if not (s.rendezvous or servers):
        return
    from ..nat.traversal import Traversal
    # both data paths can be relayed and relay for others (the DataPath contract)
    daemon.nat = Traversal(daemon.engine, serve=s.rendezvous, servers=servers,
                           relay=s.relay, relay_capable=True, registration_ttl=daemon.t.registration_ttl,
                           local_endpoints=local_endpoints(daemon.udp, s.endpoints))
    daemon.executor.observers.append(NatObserver(daemon.nat))
    if s.relay:
        dp.set_relay(True)
