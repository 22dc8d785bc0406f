"""Endpoints as the rendezvous role passes them on, checked the same way by
the server (what a peer registers) and the client (what it is told): only
endpoints a peer can really sit at, without duplicates, and a bounded number."""

from __future__ import annotations

import base64
import ipaddress
from typing import Iterable

from .. import wire

MAX_LOCAL_ENDPOINTS = 4        # local endpoints a registration may carry (besides the reflexive one)
MAX_HINT_ENDPOINTS = MAX_LOCAL_ENDPOINTS + 1   # endpoints a client takes from one answer or punch request


def usable_endpoint(ep) -> bool:
    """An endpoint a peer may really sit at (not 0.0.0.0, multicast, broadcast, port 0)."""
    try:
        host, port = ep
        a = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        return False
    if not 0 < int(port) < 65536:
        return False
    if a.is_unspecified or a.is_multicast or (a.version == 4 and a == ipaddress.IPv4Address("255.255.255.255")):
        return False
    return True


def dedupe(eps: Iterable) -> tuple:
    """The usable endpoints of ``eps``, each once, in order, at most a message's worth."""
    out = []
    for ep in eps:
        ep = (str(ep[0]), int(ep[1]))
        if ep not in out and usable_endpoint(ep):
            out.append(ep)
    return tuple(out[:wire.MAX_CONTROL_ENDPOINTS])


def short_key(key: bytes) -> str:
    """The first characters of a key's base64, for the log."""
    return base64.b64encode(bytes(key)).decode()[:8]
