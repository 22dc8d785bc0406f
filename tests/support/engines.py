"""Helpers for the sans-IO engine tests: keys, action filters, a handshake
delivered by hand between two engines."""

from __future__ import annotations

from phantom import crypto
from phantom.control import actions as A

ADDR_A = ("10.0.0.1", 9000)
ADDR_B = ("10.0.0.2", 9000)


def private_key() -> bytearray:
    return bytearray(crypto.x25519_private())


def sends(actions):
    return [x for x in actions if isinstance(x, A.SendDatagram)]


def of(actions, kind):
    return [x for x in actions if isinstance(x, kind)]


def handshake(a, b, pa, wall, addr_a=ADDR_A, addr_b=ADDR_B):
    """a opens to b; deliver every datagram; return (actions at a, actions at b)."""
    wall.advance(0.01)
    out_a = a.open(pa.id)
    (init,) = sends(out_a)
    out_b = b.handle_datagram(init.data, addr_a)
    (resp,) = sends(out_b)
    out_a2 = a.handle_datagram(resp.data, addr_b)
    return out_a + out_a2, out_b
