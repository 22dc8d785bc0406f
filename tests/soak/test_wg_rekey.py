"""wireguard-go's own rekey after REKEY_AFTER_TIME (120 s), against both data
paths at once (moved from tests/e2e/wireguard/test_wg_e2e.py).

One wireguard-go on b with two peers: phantomd on a (reference data path)
and phantomd on c (``--fast``), on one bridge (10.204.0.1-3; tunnel
10.99.0.1 a, .2 wireguard-go, .3 c).  wireguard-go initiates to both, and a
ping every 0.2 s from b to each runs for 140 s, across each peer's rekey.
The run happens once (a module fixture, both cases in one xdist group); each
data path's case then checks its own peer: a new handshake, (almost) no ping
lost, the peer established with at least two sessions.
"""

from __future__ import annotations

import base64
import subprocess

import pytest

from phantomlab import netns
from phantomlab.nodes import make_node
from phantomlab.templates import HTTP_PORT, UDP_PORT, write_config
from phantomlab.wggo import WgDevice, keypair, missing
from phantom.keys import encode_key

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.wireguard_go,
              pytest.mark.xdist_group("wg_rekey"), pytest.mark.timeout(400)]

DATAPATHS = ["reference", "fast"]
INDEX = {"reference": 1, "fast": 3}        # tunnel addresses 10.99.0.<index>; wireguard-go is .2


def _ph_pub(node) -> bytes:
    return base64.b64decode(node.pub)


def _peer(node, name="wg"):
    code, body = node.api("GET", "/peers")
    assert code == 200
    for p in body if isinstance(body, list) else body["peers"]:
        if p["name"] == name:
            return p
    raise AssertionError("no peer %s" % name)


@pytest.fixture(scope="module")
def rekey_run(tmp_path_factory):
    """The 140-second run, once for both data paths: {datapath: result}."""
    why = netns.requirements_missing() or missing()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("wg-rekey")
    daemons, wg = [], None
    with netns.lan(3) as lan:
        hosts = {"reference": lan.hosts["a"], "fast": lan.hosts["c"]}
        try:
            wg_priv, wg_pub = keypair()
            wg = WgDevice(lan.hosts["b"], tmp, index=2, private=wg_priv)
            nodes = {}
            for dp in DATAPATHS:
                node = make_node(tmp, "ph-" + dp, INDEX[dp], hosts[dp])
                entry = {"name": "wg", "protocol": "wireguard", "public_key": encode_key(wg_pub),
                         "allowed_ips": ["%s/32" % wg.ip4, "%s/128" % wg.ip6]}
                write_config(node, mode="tun", peers=[entry])
                wg.set_peer(_ph_pub(node), allowed_ips=["%s/32" % node.tun4, "%s/128" % node.tun6],
                            endpoint="%s:%d" % (hosts[dp].ip, UDP_PORT))
                argv = ["--config", str(node.config)] + (["--fast"] if dp == "fast" else [])
                node.daemon = netns.DaemonProcess(hosts[dp], argv, http_port=HTTP_PORT, name=node.name,
                                                  log_path=tmp / ("%s.log" % node.name),
                                                  token_file=node.state_dir / "token")
                daemons.append(node.daemon)
                node.daemon.start()
                nodes[dp] = node
            for node in nodes.values():
                node.daemon.wait_ready(10.0)
                node.host.ns.wait_addresses_ready()
            results = {}
            for dp, node in nodes.items():
                up = lan.hosts["b"].ping(node.tun4, timeout=10)
                results[dp] = {"up": up, "first": wg.latest_handshake(_ph_pub(node)) if up else 0}
            pings = {dp: lan.hosts["b"].popen(["ping", "-q", "-i", "0.2", "-w", "140", node.tun4],
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for dp, node in nodes.items() if results[dp]["up"]}
            for dp, ping in pings.items():
                results[dp]["out"], _ = ping.communicate(timeout=170)
            for dp, node in nodes.items():
                results[dp]["second"] = wg.latest_handshake(_ph_pub(node))
                results[dp]["peer"] = _peer(node)
                results[dp]["log"] = node.daemon.log_tail(40)
            results["wg_log"] = wg.log_tail()
            yield results
        finally:
            for d in reversed(daemons):
                d.stop()
            if wg is not None:
                wg.stop()


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_rekey_after_wireguards_120_seconds_without_a_stall(rekey_run, datapath):
    """wireguard-go initiates and rekeys on its own REKEY_AFTER_TIME (120 s);
    a ping every 0.2 s across the rekey loses (almost) nothing."""
    r = rekey_run[datapath]
    assert r["up"], "no ping through the tunnel (%s)\n%s" % (rekey_run["wg_log"], r["log"])
    first, second, out = r["first"], r["second"], r["out"]
    assert second > first, "no new handshake in 140 s\n%s" % r["log"]
    stats = [line for line in out.splitlines() if "packets transmitted" in line][0]
    sent, received = int(stats.split()[0]), int(stats.split()[3])
    assert sent > 600 and sent - received <= 2, stats
    p = r["peer"]
    assert p["state"] == "established" and p["sessions"] >= 2
