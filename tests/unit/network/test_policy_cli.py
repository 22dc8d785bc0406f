"""``phantom network policy show | set FILE | test SRC DST PORT`` (issue 21
item 3): on the authority state directory (local mode) and, with
--admin-token-file, on a directory serving the network over HTTP (remote
mode, a real localhost server).  A bad policy is refused whole naming the
line, and the policy in force stays."""

from __future__ import annotations

import asyncio
import json

from phantom.network import authority as A
from phantom.network import join as J
from phantom.network import parse_token

from .factory import NOW
from .test_cli import run
from .test_join import Node

POLICY = """\
# laptops may reach servers on tcp/22 and icmp; nothing else
default = "deny"

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "tcp"
ports = [22]
comment = "ssh"

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "icmp"
"""


def enrol(netdir, capsys, name, *groups):
    args = ["invite", "--dir", netdir] + (["--groups", ",".join(groups)] if groups else [])
    token = parse_token(run(capsys, *args)[1].strip())
    auth = A.AuthorityDir.open(netdir)
    node = Node(name)
    with auth.transaction() as ledger:
        return J.join(ledger, auth.definition, auth.admission, node.request(token, name=name),
                      NOW).certificate


def test_policy_set_show_and_test_on_the_authority_directory(tmp_path, capsys):
    netdir = tmp_path / "corp"
    assert run(capsys, "init", "corp", "--dir", netdir, "--directory",
               "https://dir.example.com")[0] == 0
    alice = enrol(netdir, capsys, "alice", "laptops")
    enrol(netdir, capsys, "srv", "servers")
    enrol(netdir, capsys, "printer")
    rc, out, err = run(capsys, "policy", "show", "--dir", netdir)
    assert rc == 0 and "no policy" in out
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(POLICY)
    bad.write_text(POLICY.replace('proto = "icmp"', 'proto = "icmp"\nports = [7]'))
    rc, out, err = run(capsys, "policy", "set", bad, "--dir", netdir)
    assert rc == 1 and err.startswith("error: policy rule 2 (line 15), ports: ports need proto")
    assert A.AuthorityDir.open(netdir).read_ledger().events[-1][1]["op"] == "member"
    rc, out, err = run(capsys, "policy", "set", good, "--dir", netdir)
    assert rc == 0 and "policy seq 1 in force: 2 rules, default deny" in out
    rc, out, err = run(capsys, "policy", "set", bad, "--dir", netdir)
    assert rc == 1
    rc, out, err = run(capsys, "policy", "show", "--dir", netdir)
    assert rc == 0 and out.splitlines()[0].startswith("policy seq 1, issued ")
    assert "rule 1: from group:laptops to group:servers tcp 22 (ssh)" in out
    assert "rule 2: from group:laptops to group:servers icmp" in out
    for flow, want in [(("alice", "srv", "22"), "accept  (rule 1: "),
                       (("alice", "srv", "22/tcp"), "accept  (rule 1: "),
                       (("alice", "srv", "icmp"), "accept  (rule 2: "),
                       (("alice", "srv", "80"), "drop  (default deny)"),
                       (("alice", "srv", "22/udp"), "drop  (default deny)"),
                       (("srv", "alice", "22"), "drop  (default deny)"),
                       (("printer", "srv", "icmp"), "drop  (default deny)"),
                       ((alice.doc["key"], "srv", "22"), "accept  (rule 1: ")]:
        rc, out, err = run(capsys, "policy", "test", *flow, "--dir", netdir)
        assert rc == 0 and out.startswith(want), (flow, out, err)
    rc, out, err = run(capsys, "policy", "test", "alice", "srv", "icmp", "--dir", netdir,
                       "--json")
    assert json.loads(out) == {"action": "accept", "rule": 2, "src": "alice", "dst": "srv",
                               "proto": 1, "port": None, "seq": 1}
    for args, words in [(("nobody", "srv", "22"), "'nobody' is not a current member"),
                        (("alice", "srv", "22/xyz"), "write PORT[/PROTO]"),
                        (("alice", "srv", "70000"), "0-65535"),
                        (("alice", "srv", "5/icmp"), "only TCP and UDP have ports"),
                        (("alice", "srv"), "policy test SRC DST")]:
        rc, out, err = run(capsys, "policy", "test", *args, "--dir", netdir)
        assert rc == 1 and words in err, (args, err)
    rc, out, err = run(capsys, "policy", "set", tmp_path / "missing.toml", "--dir", netdir)
    assert rc == 1 and "missing.toml" in err


def test_policy_commands_in_remote_mode_on_a_served_network(tmp_path, capsys):
    from tests.unit.directory.test_network_routes import ADMIN, Node as HttpNode, directory
    netdir = tmp_path / "corp"
    assert run(capsys, "init", "corp", "--dir", netdir)[0] == 0
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN + "\n")
    good, bad = tmp_path / "good.toml", tmp_path / "bad.json"
    good.write_text(POLICY)
    bad.write_text('{"default": "deny",\n "rules": [\n  {"from": "*",\n   "to": "grp:x"}]}')

    async def main():
        async with directory() as dr:
            remote = ["--dir", netdir, "--admin-token-file", token_file, "--directory", dr.url]
            for name, groups in (("alice", ["laptops"]), ("srv", ["servers"])):
                token, _ = await dr.invite(groups=groups)
                status, answer = await dr.call("POST", "/network/join",
                                               HttpNode().join_request(token, name))
                assert status == 200, answer

            def cli(*argv):
                return run(capsys, "policy", *argv, *remote)
            rc, out, err = await asyncio.to_thread(cli, "show")
            assert rc == 0 and "no policy" in out, err
            rc, out, err = await asyncio.to_thread(cli, "set", bad)
            assert rc == 1 and err.startswith("error: policy rule 1 (line 4), to[0]: 'grp:x'")
            rc, out, err = await asyncio.to_thread(cli, "set", good)
            assert rc == 0 and "policy seq 1 in force" in out, err
            status, doc = await dr.call("GET", "/network/policy")
            assert status == 200 and doc["seq"] == 1 and doc["iss"] != ""
            rc, out, err = await asyncio.to_thread(cli, "show")
            assert rc == 0 and "rule 1: from group:laptops" in out
            rc, out, err = await asyncio.to_thread(cli, "test", "alice", "srv", "22")
            assert rc == 0 and out.startswith("accept  (rule 1: "), (out, err)
            rc, out, err = await asyncio.to_thread(cli, "test", "srv", "alice", "icmp")
            assert rc == 0 and out.startswith("drop  (default deny)")
            # a wrong token: refused by the directory, nothing set
            token_file.write_text("not-the-admin-token-at-all-0000\n")
            rc, out, err = await asyncio.to_thread(cli, "set", good)
            assert rc == 1 and "refused" in err
            status, doc = await dr.call("GET", "/network/policy")
            assert doc["seq"] == 1
    asyncio.run(asyncio.wait_for(main(), 60))
