"""Building blocks for end-to-end tests: keys, configs and phantomd nodes
inside the rig's network namespaces.

A :class:`Node` is one phantomd with its key, config and API.  Tests build
configs with :func:`node_config` and start them with the ``daemon_factory``
fixture, so every daemon is stopped (and its log attached on failure) by the
rig.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from phantom.control.keys import encode_key, public_key, write_private_key

TUN4 = "10.99.0.%d"
TUN6 = "fd99::%d"
UDP_PORT = 9000
HTTP_PORT = 4567
TEST_PORT = 8000

# Short timers so that failure scenarios resolve within seconds.
FAST_TUNABLES = {
    "rekey_timeout": 1.0,
    "keepalive_timeout": 2.0,
    "handshake_jitter": 0.1,
    "open_attempts": 3,
    "dead_retry_interval": 2.0,
    "rekey_attempt_time": 6.0,
    "timer_tick": 0.05,
}


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
            time.sleep(0.05)


def make_node(tmp_path: Path, name: str, index: int, host) -> Node:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    keyfile = d / "private.key"
    key = write_private_key(keyfile)
    return Node(name, index, host, keyfile, encode_key(public_key(key)), d / "phantom.toml", d / "state")


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(v)


def write_config(node: Node, *, mode: str, peers: list[dict], tunables: Optional[dict] = None,
                 firewall: Optional[dict] = None, ipv6: bool = True, extra: Optional[dict] = None) -> Path:
    iface = {
        "private_key_file": str(node.keyfile),
        "listen_port": UDP_PORT,
        "http_port": HTTP_PORT,
        "test_port": TEST_PORT,
        "mode": mode,
        "state_dir": str(node.state_dir),
        "log_level": "debug",
    }
    if mode in ("tun", "tap"):
        iface["device"] = "ph%s0" % mode
        iface["addresses"] = ["%s/24" % node.tun4] + (["%s/64" % node.tun6] if ipv6 else [])
    iface.update(extra or {})
    lines = ["[interface]"] + ["%s = %s" % (k, _toml(v)) for k, v in iface.items()]
    for p in peers:
        lines += ["", "[[peer]]"] + ["%s = %s" % (k, _toml(v)) for k, v in p.items()]
    if tunables:
        lines += ["", "[tunables]"] + ["%s = %s" % (k, _toml(v)) for k, v in tunables.items()]
    if firewall:
        lines += ["", "[firewall]"]
        for k, v in firewall.items():
            if k != "rule":
                lines.append("%s = %s" % (k, _toml(v)))
        for r in firewall.get("rule", []):
            lines += ["", "[[firewall.rule]]"] + ["%s = %s" % (k, _toml(v)) for k, v in r.items()]
    node.config.write_text("\n".join(lines) + "\n")
    return node.config


def peer_entry(node: Node, *, mode: str, endpoint: bool = True, keepalive: float = 0,
               allowed: Optional[list] = None, ipv6: bool = True) -> dict:
    entry = {"name": node.name, "public_key": node.pub}
    if endpoint:
        entry["endpoint"] = "%s:%d" % (node.host.ip, UDP_PORT)
    if mode == "tun":
        entry["allowed_ips"] = allowed if allowed is not None else \
            ["%s/32" % node.tun4] + (["%s/128" % node.tun6] if ipv6 else [])
    elif mode == "tap":
        entry["allowed_ips"] = allowed if allowed is not None else \
            ["%s/32" % node.tun4] + (["%s/128" % node.tun6] if ipv6 else [])
    if keepalive:
        entry["persistent_keepalive"] = keepalive
    return entry


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
        for n in nodes:
            start(daemon_factory, n, datapath)
    return nodes


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)
