"""The privileged helper as a process, in a namespace (docs/routes.md): hostile
requests over its real socket change nothing in the kernel, allowed ones do;
killed with SIGKILL, it leaves routes, a rule and an nftables table that the
next helper removes from its journal -- but not a forged journal line naming
someone else's table."""

from __future__ import annotations

import json
import pwd
import signal

import pytest

from phantom.privsep import PrivError, spawn
from phantom.privsep.protocol import MAX_MESSAGE, Allowlist

pytestmark = [pytest.mark.netns]

KILLSWITCH = {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
              "rules": [{"chain": "out", "match": [{"field": "daddr", "value": "192.0.2.0/24"}],
                         "verdict": "drop"}]}


def state(host) -> str:
    return "\n".join(host.run(c).stdout for c in (["ip", "-4", "rule"], ["ip", "-6", "rule"],
                                                   ["ip", "-4", "route", "show", "table", "all"],
                                                   ["ip", "-6", "route", "show", "table", "all"],
                                                   ["nft", "list", "ruleset"]))


def raw(client, data: bytes) -> dict:
    client.sock.send(data)
    return json.loads(client.sock.recv(65536))


def test_the_helper_refuses_hostile_requests_and_recovers_its_leftovers(two_hosts, tmp_path):
    a = two_hosts.a
    a.ns.ip("tuntap", "add", "phx0", "mode", "tun")              # persistent: it outlives the helper
    a.run(["nft", "add", "table", "inet", "filter"])              # someone else's table
    ifindex = int(a.run(["cat", "/sys/class/net/phx0/ifindex"]).stdout)
    nobody = pwd.getpwnam("nobody")
    allow = Allowlist.for_device("phx0", ifindex, "tun", 9000, ["10.98.0.1/24"], tmp_path / "state",
                                 nobody.pw_uid, nobody.pw_gid)
    before = state(a)
    client = spawn(allow, prefix=a.ns.exec_prefix)
    try:
        hostile = [("route_add", {"prefix": "10.50.0.0/16", "dev": "eth0"}),
                   ("route_add", {"prefix": "10.50.0.0/16", "table": 255}),
                   ("rule_add", {"family": 4, "priority": 0, "table": 9000}),
                   ("rule_add", {"family": 4, "priority": 5181, "table": "main"}),
                   ("rule_add", {"family": 4, "priority": 5181, "table": 9000, "fwmark": 1, "invert": True}),
                   ("nft_delete", {"name": "filter"}),
                   ("nft_replace", {"name": "filter", "table": KILLSWITCH}),
                   ("addr_add", {"address": "10.201.0.77/24"}),
                   ("route_del", {"prefix": "10.201.0.0/24"})]
        for op, fields in hostile:
            with pytest.raises(PrivError) as exc:
                client.request(op, **fields)
            assert exc.value.refused in ("not_allowed", "bad_value"), (op, fields, exc.value)
        assert raw(client, b"{" * 10)["refused"] == "malformed"
        assert raw(client, b" " * (MAX_MESSAGE + 100))["refused"] == "oversized"
        assert raw(client, b'{"id": 9, "op": "route_add", "prefix": "10.0.0.0/8", "x": 1}')["refused"] \
            == "unknown_field"
        assert state(a) == before, "a refused request changed the kernel"
        st = client.status()
        assert st["counters"]["refused"] == len(hostile) + 3 and st["counters"]["ok"] == 0

        client.link_up()
        client.add_route("10.50.0.0/16")
        client.add_route("0.0.0.0/0", table=allow.table)
        client.add_rule(4, 5181, allow.table, fwmark=allow.fwmark, invert=True)
        client.nft_replace(KILLSWITCH, name="phantom-killswitch")
        assert "proto 112" in a.run(["ip", "route", "show", "10.50.0.0/16"]).stdout
        assert "5181:" in a.run(["ip", "rule"]).stdout
        assert "phantom-killswitch" in a.run(["nft", "list", "tables"]).stdout

        client.proc.send_signal(signal.SIGKILL)
        client.proc.wait(5)
    finally:
        client.close()
    left = state(a)
    assert "5181:" in left and "10.50.0.0/16" in left and "phantom-killswitch" in left
    with open(allow.journal, "a") as f:                            # a compromised daemon's line
        f.write(json.dumps({"+": {"nft": "filter"}}) + "\n")

    again = spawn(allow, prefix=a.ns.exec_prefix)
    try:
        done = again.ready["recovered"]
        assert "nftables table inet phantom-killswitch" in done and "route 10.50.0.0/16" in done, done
        assert not [d for d in done if "filter" in d], done
        assert "table inet filter" in a.run(["nft", "list", "tables"]).stdout
    finally:
        again.close()
    assert state(a) == before
