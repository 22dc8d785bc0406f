"""`phantom` CLI against a live API server (aiohttp on localhost, in-memory controller)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.apidouble import FakeController
from phantom.cli import main as cli
from phantom.http.server import start as start_api
from phantom.node.app import create_app
from tests.support import REPO

TOKEN = "12" * 32
PUB = "3cVJ1x7RRpHcPtZOceZ1+T1f5Qji0l7waRMN/9d8XBk="


class LiveServer:
    """The API app served by a real event loop in a thread, on TCP and a Unix socket."""

    def __init__(self, tmp_path: Path):
        self.controller = FakeController()
        self.socket_path = tmp_path / "api.sock"
        self.token_file = tmp_path / "token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (TOKEN + "\n").encode())
        os.close(fd)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = self._sync(start_api(create_app(self.controller, TOKEN), "127.0.0.1", 0,
                                           unix_path=self.socket_path))
        self.port = next(a[1] for a in self.runner.addresses if isinstance(a, tuple))
        self.url = "http://127.0.0.1:%d" % self.port

    def _sync(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    def close(self):
        self._sync(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def server(tmp_path):
    srv = LiveServer(tmp_path)
    yield srv
    srv.close()


def phantom(server, capsys, *args, via_socket=False):
    where = ["--socket", str(server.socket_path)] if via_socket else ["--api", server.url]
    rc = cli.main([*where, "--token-file", str(server.token_file), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_open_then_peers_table_and_json(server, capsys):
    rc, out, err = phantom(server, capsys, "open", "192.0.2.7:9000", "--public-key", PUB,
                           "--name", "bob")
    assert rc == 0, err
    assert "opened:" in out and "bob" in out and "192.0.2.7:9000" in out
    rc, out, err = phantom(server, capsys, "peers")
    assert rc == 0, err
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "ENDPOINT", "ALLOWED"]
    assert row.split()[:5] == ["bob", "192.0.2.7:9000", "10.9.0.2/32", "-", "up"]
    assert "5.4 MiB" in row and "1.2 KiB" in row
    rc, out, _ = phantom(server, capsys, "peers", "--json")
    data = json.loads(out)
    assert data["peers"][0]["name"] == "bob" and data["peers"][0]["tx_bytes"] == 5678901


def test_open_with_groups_and_the_groups_column(server, capsys):
    rc, out, err = phantom(server, capsys, "open", "192.0.2.7:9000", "--public-key", PUB,
                           "--name", "bob", "--groups", "laptops,ops", "--groups", "ops")
    assert rc == 0, err
    assert server.controller.calls[-1][-1] == ("groups", ("laptops", "ops"))
    rc, out, err = phantom(server, capsys, "peers")
    header, row = out.splitlines()
    assert header.split()[:5] == ["NAME", "ENDPOINT", "ALLOWED", "IPS", "GROUPS"]
    assert row.split()[:4] == ["bob", "192.0.2.7:9000", "10.9.0.2/32", "laptops,ops"]
    # a bad group name is refused by the API, naming the key; nothing reached the daemon
    n = len(server.controller.calls)
    rc, out, err = phantom(server, capsys, "open", "192.0.2.8:9000", "--public-key", PUB,
                           "--groups", "Laptops")
    assert rc != 0 and "groups[0]" in err and "write 'laptops'" in err, err
    assert len(server.controller.calls) == n


def test_json_option_before_the_subcommand(server, capsys):
    rc, out, _ = phantom(server, capsys, "--json", "status")
    assert rc == 0 and json.loads(out)["listen_port"] == 9000


def test_status_as_a_table(server, capsys):
    rc, out, _ = phantom(server, capsys, "status")
    assert rc == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["listen_port:"] == "9000" and lines["fast:"] == "no" and lines["mode:"] == "test"


def test_close_and_errors_are_one_line(server, capsys):
    phantom(server, capsys, "open", "[fd00::7]:9000", "--public-key", PUB, "--name", "v6")
    rc, out, _ = phantom(server, capsys, "close", "v6")
    assert rc == 0 and "closed" in out
    rc, out, err = phantom(server, capsys, "close", "v6")
    assert rc == 1 and out == "" and err == "error: no such peer: v6\n"
    rc, _, err = phantom(server, capsys, "open", "1.2.3.4")
    assert rc == 1 and err.startswith("error: malformed endpoint") and err.count("\n") == 1


def test_open_by_name(server, capsys):
    rc, out, err = phantom(server, capsys, "open", "carol")
    assert rc == 0, err
    assert server.controller.calls[-1] == ("open", None, None, "carol")


def test_wrong_token_is_an_error(server, capsys, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("00" * 32)
    rc = cli.main(["--api", server.url, "--token-file", str(bad), "close", "x"])
    _, err = capsys.readouterr()
    assert rc == 1 and "token" in err and err.startswith("error: ")
    assert server.controller.calls == []


def test_missing_token_file_for_a_mutation(server, capsys, tmp_path):
    rc = cli.main(["--api", server.url, "--token-file", str(tmp_path / "none"), "close", "x"])
    _, err = capsys.readouterr()
    assert rc == 1 and "cannot read the API token" in err
    # Reads need no token.
    rc = cli.main(["--api", server.url, "--token-file", str(tmp_path / "none"), "status"])
    assert rc == 0


def test_unix_socket(server, capsys):
    rc, out, err = phantom(server, capsys, "open", "192.0.2.8:9000", "--public-key", PUB,
                           via_socket=True)
    assert rc == 0, err
    rc, out, _ = phantom(server, capsys, "peers", "--json", via_socket=True)
    assert json.loads(out)["peers"][0]["endpoint"] == "192.0.2.8:9000"


def test_firewall_set_from_toml_and_json_then_show(server, capsys, tmp_path):
    toml = tmp_path / "fw.toml"
    toml.write_text('[firewall]\n[[firewall.rules]]\naction = "drop"\nproto = "udp"\nport = 53\n')
    rc, out, err = phantom(server, capsys, "firewall", "set", str(toml))
    assert rc == 0, err
    assert server.controller.rules == {"rules": [{"action": "drop", "proto": "udp", "port": 53}]}
    rc, out, _ = phantom(server, capsys, "firewall", "show")
    header, row = out.splitlines()
    assert header.split() == ["ACTION", "PROTO", "PORT"] and row.split() == ["drop", "udp", "53"]
    js = tmp_path / "fw.json"
    js.write_text(json.dumps({"rules": []}))
    rc, _, _ = phantom(server, capsys, "firewall", "set", str(js))
    rc, out, _ = phantom(server, capsys, "firewall", "show", "--json")
    assert json.loads(out) == {"rules": []}
    js.write_text("{broken")
    rc, _, err = phantom(server, capsys, "firewall", "set", str(js))
    assert rc == 1 and "invalid JSON" in err


def test_firewall_show_lists_the_network_policy_and_its_hits(server, capsys):
    """GET /firewall from a real firewall slot with a real signed policy in force."""
    from phantom.dataplane.types import Mode
    from phantom.network import policy as P
    from phantom.node import policy as NP
    from phantom.node.firewall import FirewallSlot
    from tests.unit.network.factory import NOW, Net
    net = Net()
    slot = FirewallSlot(Mode.TUN, {}, {"bob": 7}, {"laptops": frozenset({7})}, ("servers",))
    NP.apply_policy(slot, P.sign_policy(P.parse_policy_source(
        'default = "deny"\n[[rule]]\nfrom = "group:laptops"\nto = "group:servers"\n'
        'proto = "tcp"\nports = [22, "80-81"]\n'), net.definition, net.admission, 2, NOW).doc,
        net.definition, NP.Identity("srv", bytes(32), ("servers",)), NOW)
    server.controller.rules = slot.describe()
    rc, out, _ = phantom(server, capsys, "firewall", "show")
    assert rc == 0
    lines = out.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("network policy: seq 2, default "
                                                               "deny (here: drop), signed by ")]
    assert at, out
    assert lines[at[0] + 1].split() == ["#", "FROM", "TO", "PROTO", "ACTION", "HERE", "HITS"]
    assert lines[at[0] + 2].split() == ["1", "group:laptops", "group:servers", "tcp", "22,80-81",
                                        "accept", "yes", "0"]


def test_connection_refused_is_explained(capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                    # nothing listens there now
    rc = cli.main(["--api", "http://127.0.0.1:%d" % port, "status"])
    _, err = capsys.readouterr()
    assert rc == 1 and "connection refused" in err and "is phantomd running" in err


def test_subprocess_client_against_the_live_server(server):
    env = dict(os.environ, PHANTOM_API=server.url, PHANTOM_TOKEN_FILE=str(server.token_file))
    proc = subprocess.run([sys.executable, "-m", "phantom.cli", "open", "192.0.2.9:9000",
                           "--public-key", PUB, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["endpoint"] == "192.0.2.9:9000"
    # The client does not pull in aiohttp (it must start fast).
    probe = subprocess.run([sys.executable, "-c", "import sys, phantom.cli; "
                            "sys.exit('aiohttp' in sys.modules)"], cwd=REPO, timeout=60)
    assert probe.returncode == 0


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.parametrize("command", sorted(cli.DELEGATED))
def test_delegated_commands(command, capsys):
    import importlib
    import importlib.util
    module = cli.DELEGATED[command]
    if importlib.util.find_spec(module) is None:
        assert cli.main([command, "--help"]) == 1
        assert "not available" in capsys.readouterr().err
    else:
        assert callable(importlib.import_module(module).main)


def test_open_with_allowed_ips(server, capsys):
    rc, _, err = phantom(server, capsys, "open", "192.0.2.11:9000", "--public-key", PUB,
                         "--allowed-ips", "10.9.0.11/32,fd09::11/128", "--allowed-ips", "10.70.0.0/16")
    assert rc == 0, err
    assert server.controller.calls[-1][-1] == ["10.9.0.11/32", "fd09::11/128", "10.70.0.0/16"]


def test_reload_prints_what_changed_and_errors_name_the_key(server, capsys):
    from phantom.errors import Invalid
    outcome = {"added": ["carol"], "removed": ["dave"], "changed": {"bob": ["endpoint"]},
               "unchanged": ["erin"], "firewall": True,
               "notes": ["interface.listen_port changed: needs a restart (not applied)"]}

    async def reload():
        return outcome
    server.controller.reload = reload
    rc, out, err = phantom(server, capsys, "reload")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[:5] == ["added:     carol", "removed:   dave", "changed:   bob (endpoint)",
                         "unchanged: erin", "firewall:  replaced"]
    assert lines[5].startswith("note: interface.listen_port changed")
    rc, out, _ = phantom(server, capsys, "reload", "--json")
    assert json.loads(out) == outcome

    async def refuse():
        raise Invalid("config not reloaded, nothing changed: peer[1].endpoint: bad port")
    server.controller.reload = refuse
    rc, out, err = phantom(server, capsys, "reload", via_socket=True)
    assert rc == 1 and err.strip() == \
        "error: config not reloaded, nothing changed: peer[1].endpoint: bad port"


def test_verify_is_a_subcommand():
    cp = subprocess.run([sys.executable, "-m", "phantom.cli", "verify", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=30,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert cp.returncode == 0 and "--send-to" in cp.stdout and "marker" in cp.stdout


def test_api_options_before_verify_go_to_verify(server, capsys):
    """`phantom --api URL --token-file F verify PEER`: the options before the
    word reach `phantom verify` as they reach every other subcommand, and
    PEER is its argument (it was "unrecognized arguments: PEER")."""
    status = server.controller.status

    def with_peers():
        st = status()
        st["peers"] = [{"name": "bob", "allowed_ips": ["10.9.0.2/32"]}]
        return st
    server.controller.status = with_peers
    rc = cli.main(["--api", server.url, "--token-file", str(server.token_file), "--timeout", "5",
                   "verify", "carol"])
    _, err = capsys.readouterr()
    # it asked the daemon at --api (not the default address) and looked for the peer
    assert rc == 2 and "no peer 'carol' (the daemon has: bob)" in err, err
    rc = cli.main(["--json", "demo", "--help"])
    _, err = capsys.readouterr()
    assert rc == 1 and "`phantom demo` does not talk to phantomd: --json" in err


def test_readme_quick_start_waits_before_it_pings():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Quick start across two namespaces", 1)[1].split("```sh", 1)[1].split("```")[0]
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    ping = next(i for i, line in enumerate(lines) if " ping " in line)
    waits = [i for i, line in enumerate(lines) if "phantom wait-ready" in line]
    assert len(waits) == 2 and all(i < ping for i in waits), block


STATUS = {
    "version": "0.1.0", "public_key": PUB, "mode": "tun", "data_path": "reference",
    "device": "phantom0", "device_up": True, "listen_port": 9000, "test_port": None, "uid": 65534,
    "uptime": 12.5, "ready": True, "healthy": True, "failure": None,
    "peers": [
        {"name": "bob", "public_key": "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw=",
         "protocol": "phantom", "endpoint": "10.201.0.2:9000", "allowed_ips": ["10.99.0.2/32"],
         "state": "established", "latest_handshake": 1.2, "rx_bytes": 580, "tx_bytes": 676,
         "drops": {}, "path": "direct"},
        {"name": "carol", "public_key": PUB, "protocol": "phantom", "endpoint": None,
         "allowed_ips": ["10.99.0.3/32", "fd99::3/128"], "state": "idle", "latest_handshake": None,
         "rx_bytes": 0, "tx_bytes": 0, "drops": {"no_endpoint": 1}, "path": "none"},
    ],
    "drops": {"malformed": 0, "no_route": 2, "no_endpoint": 1, "replay": 0},
    "handshake_drops": {"unknown_key": 3},
    "directory": None, "nat": None,
}


def test_status_prints_peers_as_a_table_and_explains_drops(server, capsys):
    import copy
    shown = copy.deepcopy(STATUS)
    server.controller.status = lambda: shown
    rc, out, err = phantom(server, capsys, "status")
    assert rc == 0, err
    lines = out.splitlines()
    # one line a peer, under the `phantom peers` header; no comma-joined blob of dicts
    head = lines.index("peers (2):")
    assert lines[head + 1].split()[:4] == ["NAME", "PATH", "ENDPOINT", "ALLOWED"]
    assert lines[head + 2].split()[:3] == ["bob", "direct", "10.201.0.2:9000"]
    assert lines[head + 3].split()[:4] == ["carol", "none", "-", "10.99.0.3/32,fd99::3/128"]
    assert "name=bob" not in out and "public_key=" not in out
    # the drops that happened, each with what it means; zero counts left out
    drops = lines.index("drops:")
    assert lines[drops + 1].split()[:2] == ["no_endpoint", "1"]
    assert lines[drops + 2].split()[:2] == ["no_route", "2"]
    assert "in no peer's allowed IPs" in lines[drops + 2]
    assert "malformed" not in out.split("drops:")[1].split("handshake drops")[0]
    assert "unknown_key  3  initiations from a key that is not one of our peers" in out
    assert "device_up:" in out and "healthy:" in out
    shown.update(drops={"no_route": 0}, handshake_drops={}, peers=[])
    rc, out, _ = phantom(server, capsys, "status")
    assert "drops: none" in out and "handshake drops: none" in out and "peers (0):\n  none" in out


def test_every_drop_reason_is_explained():
    """A reason `phantom status` cannot explain is what left users guessing."""
    import re
    from phantom.dataplane.types import Drop
    assert {d.name.lower() for d in Drop} <= set(cli.DROP_REASONS)
    engine = "".join(f.read_text() for f in (REPO / "phantom" / "control").glob("*.py"))
    counted = set(re.findall(r'self\.drops\["(\w+)"\]', engine))     # the engine and its parts
    assert counted and counted <= set(cli.HANDSHAKE_DROP_REASONS), counted - set(cli.HANDSHAKE_DROP_REASONS)


def test_wait_ready_waits_for_ready_and_the_device_and_stops_at_unhealthy(server, capsys):
    shown = {"ready": False, "healthy": True, "device": "phantom0", "device_up": False,
             "mode": "tun", "listen_port": 9000}
    server.controller.status = lambda: dict(shown)
    rc, _, err = phantom(server, capsys, "wait-ready", "--timeout", "0.3")
    assert rc == 1 and err.startswith("error: phantomd at %s is not ready after 0.3 s: it is still "
                                      "setting up" % server.url), err
    shown["ready"] = True
    rc, _, err = phantom(server, capsys, "wait-ready", "--timeout", "0.3")
    assert rc == 1 and err.rstrip().endswith("its device phantom0 is not up"), err
    shown["device_up"] = True
    rc, out, err = phantom(server, capsys, "wait-ready", "--timeout", "0.3")
    assert rc == 0 and out == "phantomd at %s is ready: tun device phantom0 up, udp port 9000\n" % server.url
    shown.update(healthy=False, failure="fast path worker phantom-fastpath-0 died: ...")
    t0 = time.monotonic()
    rc, _, err = phantom(server, capsys, "wait-ready", "--timeout", "30")
    assert rc == 1 and time.monotonic() - t0 < 10         # at once, not after the timeout
    assert err == "error: phantomd at %s is not healthy: fast path worker phantom-fastpath-0 " \
                  "died: ...\n" % server.url
