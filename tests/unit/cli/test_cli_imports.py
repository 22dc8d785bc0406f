"""What a `phantom` command imports at start: the test suite runs hundreds of
them (`phantom network invite`, `phantom directory publish`, ...), so a
command must not pay for what it does not use.  Each command runs in its own
process (`python -X importtime -m phantom.cli ...`): this test process's own
imports would hide them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from phantom.network import cli as network_cli

# fresh interpreters, one per case (about 0.2-0.5 s each): the full suite, not the quick set
pytestmark = pytest.mark.slow

# Never at the start of a command that does not serve or ask anything:
# the directory's server (aiohttp's web side), its client (asyncio, aiohttp's
# client), the stdlib HTTP client (phantomd's API), pycparser (a cffi cdef).
HEAVY = ("aiohttp", "aiohttp.web", "phantom.directory.server", "phantom.directory.client",
         "asyncio", "http.client", "pycparser")


def imported(tmp_path, *args, rc=0) -> set:
    """The modules ``phantom ARGS`` imports (by -X importtime, which lists
    each module once, when it is first imported)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "phantom.cli", *map(str, args)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc, (args, proc.stdout, proc.stderr)
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", proc.stderr, re.M))
    assert "phantom.cli.main" in names, proc.stderr[-2000:]
    return names


@pytest.mark.parametrize("args", [
    ("network", "invite", "--help"),
    ("network", "init", "--help"),
    ("directory", "publish", "--help"),
    ("directory", "serve", "--help"),
    ("join", "--help"),
], ids=" ".join)
def test_help_imports_no_server_client_or_c_parser(tmp_path, args):
    names = imported(tmp_path, *args)
    # (join asks the directory with http.client: phantom/http/client.py)
    heavy = set(HEAVY) - ({"http.client"} if args[0] == "join" else set())
    assert not names & heavy, sorted(names & heavy)


def test_local_network_commands_import_no_http_or_c_parser(tmp_path, capsys):
    auth = tmp_path / "corp"
    assert network_cli.main(["init", "corp", "--dir", str(auth), "--directory",
                             "http://127.0.0.1:9"]) == 0
    capsys.readouterr()
    for args in (("network", "invite", "--dir", auth), ("network", "routes", "--dir", auth)):
        names = imported(tmp_path, *args)
        # nor the member set (and logging) that only a member daemon keeps
        assert not names & set(HEAVY + ("phantom.network.members",)), (args, sorted(
            names & set(HEAVY + ("phantom.network.members",))))


def test_signer_key_imports_no_server_client_or_c_parser(tmp_path):
    subprocess.run([sys.executable, "-m", "phantom.cli", "genkey", "--out", tmp_path / "k"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    names = imported(tmp_path, "directory", "signer-key", "--private-key", tmp_path / "k")
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_a_client_command_imports_no_server(tmp_path):
    """A lookup needs aiohttp's client, not its server (nor pycparser)."""
    names = imported(tmp_path, "directory", "lookup", "--directory", "http://127.0.0.1:9",
                     "--timeout", "2", "alice", rc=1)
    assert "phantom.directory.client" in names
    assert not names & {"aiohttp.web", "phantom.directory.server", "pycparser"}
