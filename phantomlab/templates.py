"""phantomd config files for lab nodes: the tunnel and port plan, short
timers for failure scenarios, ``[interface]``/``[[peer]]``/``[tunables]``/
``[firewall]`` written as TOML, and peer entries.

A node is anything with ``name``, ``index``, ``keyfile``, ``pub``,
``config``, ``state_dir`` and ``host`` (see phantomlab.nodes.Node).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

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


def write_config(node, *, mode: str, peers: list[dict], tunables: Optional[dict] = None,
                 firewall: Optional[dict] = None, ipv6: bool = True, extra: Optional[dict] = None,
                 dns: Optional[dict] = None) -> Path:
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
    if dns is not None:
        lines += ["", "[dns]"] + ["%s = %s" % (k, _toml(v)) for k, v in dns.items()]
    node.config.write_text("\n".join(lines) + "\n")
    return node.config


def peer_entry(node, *, mode: str, endpoint: bool = True, keepalive: float = 0,
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
