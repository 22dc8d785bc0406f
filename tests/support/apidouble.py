"""An in-memory controller for testing the HTTP API and the CLI without a daemon.

It implements the controller interface that :func:`phantom.node.app.create_app`
expects, with simple real semantics (a dict of peers, a firewall dict) and a
log of mutating calls, so that tests can assert that a refused request changed
nothing.  It is a test double of the daemon's controller, kept in a module of its
own (like wireguard-go's tun/tuntest), not a mock.
"""

from __future__ import annotations

import asyncio
import copy

from phantom.syntax import format_endpoint
from phantom.errors import Conflict, HandshakeTimeout, Invalid, NotFound

# A fixed, valid public key for the peer that the "config" knows by name.
KNOWN_KEY = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="


class FakeController:
    def __init__(self):
        self.peers_by_name: dict[str, dict] = {}
        # Peers the "config" knows by name (so `open NAME` works without a key).
        self.known = {"carol": {"public_key": KNOWN_KEY, "endpoint": "192.0.2.30:9000"}}
        self.rules: dict = {"rules": []}
        self.calls: list[tuple] = []          # mutating calls that reached the controller
        self.unreachable: set[str] = set()    # endpoints whose handshake "times out"

    # -- mutations ---------------------------------------------------------------
    async def open(self, endpoint, public_key, name, allowed_ips=None, groups=None):
        self.calls.append(("open", endpoint, public_key, name)
                          + ((allowed_ips,) if allowed_ips is not None else ())
                          + ((("groups", groups),) if groups is not None else ()))
        await asyncio.sleep(0)
        if endpoint is None:
            if name not in self.known:
                raise NotFound("no peer named %r in the config or the directory" % name)
            public_key = public_key or self.known[name]["public_key"]
            endpoint_text = self.known[name]["endpoint"]
        else:
            endpoint_text = format_endpoint(endpoint)
            if public_key is None:
                raise NotFound("no public key known for %s: pass public_key" % endpoint_text)
        if endpoint_text in self.unreachable:
            raise HandshakeTimeout("no handshake response from %s" % endpoint_text)
        name = name or "peer%d" % (len(self.peers_by_name) + 1)
        for other in self.peers_by_name.values():
            if other["public_key"] == public_key and other["name"] != name:
                raise Conflict("that key already belongs to peer %r" % other["name"])
        peer = {
            "name": name,
            "public_key": public_key,
            "endpoint": endpoint_text,
            "allowed_ips": allowed_ips or ["10.9.0.%d/32" % (len(self.peers_by_name) + 2)],
            "groups": list(groups or ()),
            "state": "up",
            "latest_handshake": 1.5,
            "rx_bytes": 1234,
            "tx_bytes": 5678901,
        }
        self.peers_by_name[name] = peer
        return {"opened": name, "endpoint": endpoint_text, "state": "up"}

    async def close(self, peer):
        self.calls.append(("close", peer))
        if peer not in self.peers_by_name:
            raise NotFound("no such peer: %s" % peer)
        del self.peers_by_name[peer]
        return {"closed": peer}

    async def set_firewall(self, rules):
        self.calls.append(("set_firewall", rules))
        if not isinstance(rules.get("rules"), list):
            raise Invalid("firewall: 'rules' must be a list")
        self.rules = copy.deepcopy(rules)
        return {"rules": len(rules["rules"]), "applied": True}

    # -- reads ---------------------------------------------------------------------
    def status(self):
        return {
            "version": "test",
            "public_key": "3cVJ1x7RRpHcPtZOceZ1+T1f5Qji0l7waRMN/9d8XBk=",
            "listen_port": 9000,
            "mode": "test",
            "fast": False,
            "peers": len(self.peers_by_name),
            "uptime": 12.0,
        }

    def peers(self):
        return list(self.peers_by_name.values())

    def firewall(self):
        return copy.deepcopy(self.rules)


class ExplodingController(FakeController):
    """Raises an unexpected exception, to test the API's generic 500."""

    def status(self):
        raise RuntimeError("boom: private detail that must not reach the client")
