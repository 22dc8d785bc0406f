"""The privileged helper's request validator, driven with hostile requests
(sans-IO: phantom.privsep.protocol and nftspec, the journal's replay, and
Helper.handle(), whose refusals never reach the kernel)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from phantom.privsep import journal as J
from phantom.privsep import nftspec
from phantom.privsep.helper import Helper
from phantom.privsep.protocol import (KILLSWITCH_TABLE, MAX_MESSAGE, Allowlist, Refused,
                                      encode_request, journal_entry_allowed, nft_table_name,
                                      parse_request, table_for_port)

ALLOW = Allowlist.for_device("phtun0", 7, "tun", 51820, ["10.99.0.1/24", "fd99::1/64"], "/tmp/state")


def req(op, **fields):
    return json.dumps(dict(fields, id=1, op=op)).encode()


def refused(data, reason, allow=ALLOW, truncated=False):
    with pytest.raises(Refused) as exc:
        parse_request(data, allow, truncated)
    assert exc.value.reason == reason, (exc.value.reason, exc.value.detail)
    return exc.value.detail


# --- what the daemon legitimately asks --------------------------------------------------------------
def test_the_daemons_own_requests_pass():
    r = parse_request(encode_request(3, "route_add", prefix="0.0.0.0/0", table=ALLOW.table), ALLOW)
    assert (r.id, r.op, r.args["net"], r.args["table"]) == (3, "route_add", ipaddress.ip_network("0.0.0.0/0"), 51820)
    r = parse_request(encode_request(4, "route_add", prefix="fd00:1::/48"), ALLOW)
    assert r.args["table"] == 254
    r = parse_request(encode_request(5, "rule_add", family=4, priority=5181, table=51820, fwmark=51820,
                                     invert=True), ALLOW)
    assert r.args["invert"] and r.args["fwmark"] == 51820
    r = parse_request(encode_request(6, "rule_add", family=6, priority=5180, table="main",
                                     suppress_prefixlength=0), ALLOW)
    assert r.args["table"] == 254 and r.args["suppress_prefixlength"] == 0
    r = parse_request(encode_request(7, "nft_replace", name=KILLSWITCH_TABLE, table={
        "chains": [{"name": "out", "type": "filter", "hook": "output"}],
        "rules": [{"chain": "out", "match": [{"field": "oifname", "value": "lo"}], "verdict": "accept"}]}),
        ALLOW)
    assert r.args["name"] == "phantom-killswitch"
    assert parse_request(req("nft_delete"), ALLOW).args["name"] == "phantom-phtun0"
    assert parse_request(req("shutdown"), ALLOW).op == "shutdown"


def test_table_and_names():
    assert table_for_port(51821) == 51821 and table_for_port(254) == 51820 and table_for_port(0) == 51820
    assert nft_table_name("phtun0") == "phantom-phtun0"
    assert nft_table_name("a-b") != nft_table_name("a_b")
    assert ALLOW.nft_tables == ("phantom-phtun0", "phantom-killswitch")


# --- outside the allowlist --------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [
    {"prefix": "0.0.0.0/0", "dev": "eth0"},                 # another device
    {"prefix": "0.0.0.0/0", "table": 255},                  # the local table
    {"prefix": "0.0.0.0/0", "table": 100},                  # someone else's table
    {"prefix": "0.0.0.0/0", "table": 253},
    {"prefix": "10.0.0.0/8", "table": 51821},
])
def test_routes_only_through_our_device_in_our_tables(fields):
    refused(req("route_add", **fields), "not_allowed")
    refused(req("route_del", **fields), "not_allowed")


def test_no_route_into_a_tap_device():
    tap = Allowlist.for_device("phtap0", 8, "tap", 51820, ["10.99.0.1/24"], "/tmp/state")
    refused(req("route_add", prefix="10.0.0.0/8"), "not_allowed", tap)


@pytest.mark.parametrize("fields", [
    {"family": 4, "priority": 0, "table": 51820},                                # before the local table
    {"family": 4, "priority": 32766, "table": 51820},                            # main's own priority
    {"family": 4, "priority": 5181, "table": 100},                               # not our table
    {"family": 4, "priority": 5181, "table": "main"},                            # main without suppress
    {"family": 4, "priority": 5181, "table": 51820, "fwmark": 1, "invert": True},  # not our mark
    {"family": 4, "priority": 5180, "table": 51820, "suppress_prefixlength": 0},  # suppress is for main
    {"family": 4, "priority": 5181, "table": 255},
])
def test_rules_only_with_our_priorities_tables_and_mark(fields):
    refused(req("rule_add", **fields), "not_allowed")


@pytest.mark.parametrize("fields", [
    {"name": "filter"}, {"name": "phantom-other0"}, {"name": "phantom-killswitch", "family": "ip"},
    {"family": "bridge"}, {"name": "firewalld"},
])
def test_nft_only_our_tables(fields):
    refused(req("nft_delete", **fields), "not_allowed")
    spec = {"chains": [{"name": "out", "type": "filter", "hook": "output"}]}
    refused(req("nft_replace", table=spec, **fields), "not_allowed")


def test_addresses_and_dns_only_ours():
    refused(req("addr_add", address="192.168.1.5/24"), "not_allowed")
    refused(req("resolved_register", dns=["8.8.8.8"]), "not_allowed")
    refused(req("resolved_register", dns=["10.99.0.53"], domains=["~."]), "not_allowed")
    refused(req("resolved_register", dns=["10.99.0.53"], domains=["~."], default_route=False), "not_allowed")
    refused(req("resolved_register", dns=["8.8.8.8"], domains=["~."], default_route=True), "not_allowed")
    refused(req("resolved_register", dns=["10.99.0.53"], domains=["~."], default_route=1), "bad_value")


def test_an_exit_in_use_may_take_every_dns_query_to_its_tunnel_address():
    """`phantom exit use`: the exit's tunnel address as the device's DNS
    server for every name (~.) and resolved's default route, nothing wider."""
    r = parse_request(req("resolved_register", dns=["10.99.0.2", "fd99::2"], domains=["~."], default_route=True),
                      ALLOW)
    assert r.args == {"dns": [ipaddress.ip_address("10.99.0.2"), ipaddress.ip_address("fd99::2")],
                      "domains": ["~."], "default_route": True}
    refused(req("resolved_register", dns=["10.99.0.2"], domains=["."], default_route=True), "not_allowed")


# --- malformed ------------------------------------------------------------------------------------
@pytest.mark.parametrize("data,reason", [
    (b"", "malformed"),
    (b"\xff\xfe{}", "malformed"),
    (b"[1, 2]", "malformed"),
    (b'{"id": 1, "id": 2, "op": "status"}', "malformed"),                # duplicate key
    (b'{"id": NaN, "op": "status"}', "malformed"),
    (b'{"id": 1e400, "op": "status"}', "malformed"),
    (b'{"id": true, "op": "status"}', "malformed"),
    (b'{"id": -1, "op": "status"}', "malformed"),
    (b'{"id": 9007199254740993, "op": "status"}', "malformed"),
    (b'{"op": "status"}', "malformed"),
    (b"[" * 100000 + b"]" * 100000, "oversized"),
    (b'{"id": 1, "op": ' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed"),
    (b'{"id": 1, "op": "reboot"}', "unknown_op"),
    (b'{"id": 1, "op": "op_status"}', "unknown_op"),
    (b'{"id": 1, "op": ["status"]}', "unknown_op"),
    (b'{"id": 1, "op": "__init__"}', "unknown_op"),
    (b'{"id": 1, "op": "status", "x": 1}', "unknown_field"),
    (b'{"id": 1, "op": "route_add", "prefix": "10.0.0.1/8"}', "bad_value"),   # host bits
    (b'{"id": 1, "op": "route_add", "prefix": "10.0.0.0/33"}', "bad_value"),
    (b'{"id": 1, "op": "route_add", "prefix": 167772160}', "bad_value"),
    (b'{"id": 1, "op": "route_add", "prefix": "0.0.0.0/0", "table": true}', "bad_value"),
    (b'{"id": 1, "op": "route_add", "prefix": "0.0.0.0/0", "table": 1.5}', "bad_value"),
    (b'{"id": 1, "op": "route_add"}', "malformed"),
    (b'{"id": 1, "op": "rule_add", "family": 5, "priority": 5180, "table": "main"}', "bad_value"),
    (b'{"id": 1, "op": "rule_add", "family": 4, "priority": 5181, "table": 51820, "invert": 1,'
     b' "fwmark": 51820}', "bad_value"),
    (b'{"id": 1, "op": "rule_add", "family": 4, "priority": 5181, "table": 51820, "invert": true}',
     "bad_value"),                                                                  # invert without a mark
    (b'{"id": 1, "op": "rule_add", "family": 4, "priority": 5180, "table": "main",'
     b' "suppress_prefixlength": 33}', "bad_value"),
    (b'{"id": 1, "op": "forwarding", "family": 4, "enabled": "yes"}', "bad_value"),
])
def test_malformed_requests_are_refused_with_a_reason(data, reason):
    refused(data, reason)


def test_oversized_and_truncated():
    refused(b" " * (MAX_MESSAGE + 1), "oversized")
    refused(req("status"), "oversized", truncated=True)


@pytest.mark.parametrize("table", [
    {"chains": []},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}], "sets": []},
    {"chains": [{"name": "Out; flush ruleset", "type": "filter", "hook": "output"}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "egress"}]},
    {"chains": [{"name": "out", "type": "nat", "hook": "forward"}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output", "priority": -1000}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}] * 2},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "out", "verdict": "jump"}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "out", "verdict": "masquerade"}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "nope", "verdict": "drop"}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "out", "verdict": "drop", "match": [{"field": "dport", "value": 53}]}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "out", "verdict": "drop", "match": [{"field": "payload", "value": "x"}]}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "out", "verdict": "drop", "match": [{"field": "daddr",
                                                              "value": ["10.0.0.0/8", "fd00::/8"]}]}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "out", "verdict": "drop", "match": [{"field": "oifname", "value": "a\"b"}]}]},
    {"chains": [{"name": "out", "type": "filter", "hook": "output"}],
     "rules": [{"chain": "out", "verdict": "drop"}] * 300},
])
def test_hostile_nft_tables_are_refused(table):
    with pytest.raises(Refused):
        parse_request(req("nft_replace", table=table), ALLOW)


def test_nft_batch_writes_only_the_named_table():
    spec = nftspec.validate({"chains": [{"name": "out", "type": "filter", "hook": "output"}],
                             "rules": [{"chain": "out", "match": [{"field": "mark", "value": 51820}],
                                        "verdict": "accept"}]}, ALLOW)
    batch = nftspec.to_nft(spec, KILLSWITCH_TABLE)["nftables"]
    seen = set()
    for cmd in batch:
        (verb, obj), = cmd.items()
        (kind, body), = obj.items()
        seen.add((body["family"], body["name"] if kind == "table" else body["table"]))
    assert seen == {("inet", KILLSWITCH_TABLE)}


@pytest.mark.parametrize("start", [
    [], {"v": 2}, {"v": 1, "device": "x" * 16, "ifindex": 1, "mode": "tun", "table": 5, "fwmark": 5,
                  "priorities": [1], "addresses": [], "journal": "/j"},
    dict(ALLOW.to_json(), table=254), dict(ALLOW.to_json(), table=255), dict(ALLOW.to_json(), journal="rel/j"),
    dict(ALLOW.to_json(), device="../x"), dict(ALLOW.to_json(), uid=-1), dict(ALLOW.to_json(), extra=1),
])
def test_hostile_start_messages(start):
    with pytest.raises(Refused):
        Allowlist.from_json(start)


def test_the_start_message_round_trips():
    assert Allowlist.from_json(json.loads(json.dumps(ALLOW.to_json()))) == ALLOW


# --- the helper's dispatch: every message gets an answer, refusals are counted ------------------------
def test_helper_answers_every_hostile_message_and_counts_refusals(tmp_path):
    h = Helper(ALLOW, None, J.Journal.open(str(tmp_path / "j")))     # refusals never reach the kernel
    bad = [b"", b"\x00" * 10, b"{", req("reboot"), req("route_add", prefix="0.0.0.0/0", dev="eth0"),
           req("nft_delete", name="filter"), req("route_del", prefix="10.0.0.0/8"),
           req("rule_del", family=4, priority=5181, table=51820, fwmark=51820, invert=True)]
    for data in bad:
        reply = json.loads(h.handle(data))
        assert reply["ok"] is False and reply["refused"], reply
    assert h.counters["refused"] == len(bad)
    assert h.refused["not_allowed"] == 4 and h.refused["unknown_op"] == 1
    assert json.loads(h.handle(req("status")))["ok"] is True


# --- the journal ----------------------------------------------------------------------------------
def test_journal_replay_skips_torn_lines_and_removed_entries():
    a, b = {"nft": "phantom-killswitch"}, {"route": {"prefix": "0.0.0.0/0", "table": 51820, "ifindex": 7}}
    text = "\n".join(json.dumps(x) for x in [{"+": a}, {"+": b}, {"-": a}, {"x": 1}, [1]]) + '\n{"+": {"nft'
    assert J.replay(text) == [b]


@pytest.mark.parametrize("entry,ok", [
    ({"nft": "phantom-phtun0"}, True),
    ({"nft": "phantom-killswitch"}, True),
    ({"nft": "filter"}, False),                                       # a forged line: someone else's table
    ({"nft": ["phantom-killswitch"]}, False),
    ({"link": {"ifindex": 2, "was_up": False}}, False),               # another device: never set down
    ({"link": {"ifindex": 7, "was_up": False}}, True),
    ({"addr": {"address": "192.168.1.1/24", "ifindex": 7}}, False),
    ({"rule": {"family": 4, "priority": 0, "table": 255, "fwmark": None, "invert": False,
               "suppress_prefixlength": None}}, False),
    ({"rule": {"family": 4, "priority": 5181, "table": 51821, "fwmark": 51821, "invert": True,
               "suppress_prefixlength": None}}, True),                # an earlier run's port: still ours
    ({"route": {"prefix": "0.0.0.0/0", "table": 255, "ifindex": 3}}, False),
    ({"forwarding": {"family": 4, "previous": "0; rm -rf /"}}, False),
    ({"route": {"prefix": "0.0.0.0/0", "table": 51820, "ifindex": 3}, "x": 1}, False),
])
def test_recovery_undoes_only_what_the_allowlist_permits(entry, ok):
    assert journal_entry_allowed(entry, ALLOW) is ok


# --- the tables the daemon writes pass the helper's own validator ---------------------------------
def test_the_daemons_tables_pass_the_validator():
    from phantom.privsep.exitnode import exit_table
    from phantom.privsep.routes import killswitch_table
    for name, table in [(KILLSWITCH_TABLE, killswitch_table("phtun0", 51820, (4, 6))),
                        (KILLSWITCH_TABLE, killswitch_table("phtun0", 51820, (4,))),
                        (None, exit_table("phtun0", ["10.99.0.1/32", "fd99::1/128", "10.50.0.0/16"])),
                        (None, exit_table("phtun0", []))]:
        fields = {"table": table, **({"name": name} if name else {})}
        r = parse_request(json.dumps(dict(fields, id=1, op="nft_replace")).encode(), ALLOW)
        assert r.args["name"] == (name or "phantom-phtun0")
    spec = nftspec.validate(exit_table("phtun0", ["10.99.0.1/32"]), ALLOW)
    masq = [r for r in spec["rules"] if r["verdict"] == "masquerade"]
    assert len(masq) == 1 and masq[0]["match"][0]["op"] == "!="
