"""phantomd's preload (phantom/node/startup.py): what it imports before the
privilege drop.  dnspython (~0.1 s of CPU per start) is imported and warmed
up only by a daemon that may run it after the drop -- one that serves names
(a ``[dns]`` section, a network member) or an exit node (its clients' DNS
forwarder); a plain daemon with peers does not load it, and what such a
daemon may still do later with DNS (a reload reading ``[dns]``, `phantom
exit use` registering the exit's DNS with systemd-resolved) imports no
module that preload did not.

Each case runs in a fresh interpreter (the real Daemon over a real config,
then the real preload), so the test process's own imports cannot hide an
import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.support import REPO

# fresh interpreters, one per case (about 0.2-0.5 s each): the full suite, not the quick set
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import base64, json, sys, tempfile, time
    from pathlib import Path
    from phantom import crypto
    from phantom.node import startup
    from phantom.node.config import settings_from_mapping
    from phantom.node.daemon import Daemon
    import phantom.dns.service as service

    warmed = []
    real_warm_up = service.warm_up
    service.warm_up = lambda: (warmed.append(True), real_warm_up())[1]
    out = []
    for case in sys.argv[1:]:
        key = bytearray(crypto.x25519_private())
        iface = {"mode": "tun", "name": "me", "addresses": ["10.9.0.1/24", "fd09::1/64"]}
        peer = {"name": "b", "public_key": base64.b64encode(crypto.x25519_public(crypto.x25519_private())).decode(),
                "allowed_ips": ["10.9.0.2/32"]}
        doc = {"interface": iface, "peer": [peer]}
        if case == "dns section":
            doc["dns"] = {}
        elif case == "dns section off":
            doc["dns"] = {"enabled": False}
        elif case == "exit node":
            iface["exit_node"] = True
            peer["allow_exit"] = True
        elif case == "exit client":               # a peer offers exit: `phantom exit use b`
            peer["exit_node"] = True
        elif case == "network member":            # MagicDNS: names without a [dns] section
            from tests.unit.network.factory import Net, seed
            net = Net(now=int(time.time()) - 60)
            state = Path(tempfile.mkdtemp())
            (state / "definition.json").write_bytes(net.definition.encode() + b"\\n")
            (state / "certificate.json").write_bytes(net.cert("me").encode())
            doc["network"] = {"network": net.definition.fingerprint, "name": net.definition.name,
                              "directory": ["http://127.0.0.1:9"], "state": str(state)}
            key = bytearray(seed("x25519:me"))
        else:
            assert case == "plain", case
        d = Daemon(settings_from_mapping(doc), key)
        del warmed[:]
        startup.preload(dns=startup.needs_dns(d))
        loaded = set(sys.modules)
        # what a running daemon may still do with DNS: a reload reads [dns];
        # `phantom exit use` registers the exit's DNS (exits.py)
        settings_from_mapping({"interface": {"addresses": ["10.9.0.1/24"]}, "dns": {"ttl": 9}})
        from phantom.dns.resolved import in_init_netns, resolved_running
        in_init_netns(), resolved_running()
        crypto.cpu_features(), crypto.aes_hardware()      # /status's "crypto" (ctypes, first use)
        out.append({"case": case, "needs": startup.needs_dns(d), "warmed": bool(warmed),
                    "dnspython": sorted(m for m in loaded if m.split(".")[0] == "dns"),
                    "later": sorted(set(sys.modules) - loaded)})
    print(json.dumps(out))
""")


def preload_in_fresh_process(*cases: str) -> list:
    cp = subprocess.run([sys.executable, "-c", SCRIPT, *cases], capture_output=True, text=True,
                        timeout=120, cwd=str(REPO))
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.strip().splitlines()[-1])


def test_a_daemon_that_serves_no_dns_does_not_load_dnspython():
    # one interpreter for the three: none of them may load dnspython at all
    for r in preload_in_fresh_process("plain", "exit client", "dns section off"):
        assert (r["case"], r["needs"], r["warmed"], r["dnspython"]) == (r["case"], False, False, [])
        assert r["later"] == [], r          # a reload's [dns], `phantom exit use`: preloaded


@pytest.mark.parametrize("case", ["dns section", "network member", "exit node"])
def test_a_daemon_that_may_serve_or_forward_dns_warms_dnspython_up(case):
    [r] = preload_in_fresh_process(case)
    assert (r["needs"], r["warmed"]) == (True, True), r
    assert {"dns.message", "dns.rdtypes.IN.A", "dns.rdtypes.ANY.SOA"} <= set(r["dnspython"]), r
    assert r["later"] == [], r
