"""A phantomd node of an end-to-end test: its key, config, API and peer
state, inside the rig's namespaces.

A :class:`Node` is one phantomd with its key, config and API.  Tests build
configs with :func:`phantomlab.templates.write_config` and start them with
the ``daemon_factory`` fixture, so every daemon is stopped (and its log
attached on failure) by the rig.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from phantom.keys import encode_key, public_key, write_private_key

from .daemons import READY_TIMEOUT
from .poll import POLL_INTERVAL
from .templates import HTTP_PORT, TUN4, TUN6, peer_entry, write_config

@dataclass
class Node:
    name: str
    index: int                      # host number: tunnel addresses end in it
    host: object                    # netns.Host
    keyfile: Path
    pub: str
    config: Path
    state_dir: Path
    daemon: object = None           # netns.DaemonProcess
    peers: list = field(default_factory=list)

    @property
    def tun4(self) -> str:
        return TUN4 % self.index

    @property
    def tun6(self) -> str:
        return TUN6 % self.index

    def api(self, method: str, path: str, body=None, timeout: float = 15.0):
        return self.daemon.api(method, path, body, timeout=timeout)

    def status(self) -> dict:
        code, body = self.api("GET", "/status")
        assert code == 200, body
        return body

    def peer(self, name: str) -> dict:
        for p in self.status()["peers"]:
            if p["name"] == name:
                return p
        raise KeyError(name)

    def wait_peer_state(self, name: str, states, timeout: float = 15.0) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            p = self.peer(name)
            if p["state"] in states:
                return p
            if time.monotonic() > deadline:
                raise AssertionError("%s: peer %s is %s, wanted %s" % (self.name, name, p["state"], states))
            time.sleep(POLL_INTERVAL)


def make_node(tmp_path: Path, name: str, index: int, host) -> Node:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    keyfile = d / "private.key"
    key = write_private_key(keyfile)
    return Node(name, index, host, keyfile, encode_key(public_key(key)), d / "phantom.toml", d / "state")


def start(daemon_factory, node: Node, datapath: str = "reference", wait: bool = True, args=(),
          env: Optional[dict] = None):
    """``env``: extra environment variables for this daemon (on top of ours)."""
    argv = ["--config", str(node.config)] + (["--fast"] if datapath == "fast" else []) + list(args)
    node.daemon = daemon_factory(node.host, argv, http_port=HTTP_PORT, name=node.name, wait=wait,
                                 token_file=node.state_dir / "token",
                                 env=None if env is None else {**os.environ, **env})
    if wait:
        node.host.ns.wait_addresses_ready()
    return node


def mesh(daemon_factory, tmp_path, hosts: list, *, mode: str = "tun", datapath: str = "reference",
         tunables: Optional[dict] = None, keepalive: float = 0, firewall: Optional[dict] = None,
         star: bool = False, start_daemons: bool = True, firewalls: Optional[dict] = None) -> list[Node]:
    """Nodes on ``hosts`` (index 1..n), each peered with every other (or, with
    ``star``, the first with all the rest).  ``firewall`` applies to every
    node; ``firewalls`` maps a node's index (1-based) to its own."""
    nodes = [make_node(tmp_path, "n%d" % (i + 1), i + 1, h) for i, h in enumerate(hosts)]
    for n in nodes:
        others = [o for o in nodes if o is not n]
        if star and n is not nodes[0]:
            others = [nodes[0]]
        write_config(n, mode=mode, peers=[peer_entry(o, mode=mode, keepalive=keepalive) for o in others],
                     tunables=tunables, firewall=(firewalls or {}).get(n.index, firewall))
    if start_daemons:
        start_all(daemon_factory, nodes, datapath)
    return nodes


def start_all(daemon_factory, nodes: list, datapath="reference") -> list:
    """:func:`start` for several nodes at once: every phantomd is started,
    then each is waited for, so their start-ups (a fresh interpreter and its
    privileged helper each) overlap instead of adding up.  ``datapath``: one
    for all, or a sequence with one per node."""
    datapaths = [datapath] * len(nodes) if isinstance(datapath, str) else list(datapath)
    for n, dp in zip(nodes, datapaths, strict=True):
        start(daemon_factory, n, dp, wait=False)
    for n in nodes:
        n.daemon.wait_ready(READY_TIMEOUT)
        n.host.ns.wait_addresses_ready()
    return nodes
