"""`phantom wg import` of the files issue 22 tried: a road-warrior wg-quick
file (a host-name endpoint, DNS, Table, PostUp/PostDown), a bad --out, and a
peer the result could never connect with.  The imported road-warrior
tunnel against wireguard-go is tests/e2e/node/test_hostname_endpoints.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phantom import crypto
from phantom.cli import main as cli
from phantom.keys import encode_key
from phantom.node import config
from phantom.protocols.wireguard import wgquick

SERVER_PUB = encode_key(crypto.x25519_public(crypto.x25519_private()))

# What a VPN provider or a self-hosted server hands a laptop.
ROAD_WARRIOR = """[Interface]
PrivateKey = {priv}
Address = 10.66.66.2/32, fd42:42:42::2/128
DNS = 10.66.66.1, fd42:42:42::1, corp.example
Table = auto
PostUp = iptables -I OUTPUT ! -o %i -m mark ! --mark $(wg show %i fwmark) -j REJECT
PostUp = echo up
PostDown = iptables -D OUTPUT ! -o %i -m mark ! --mark $(wg show %i fwmark) -j REJECT

[Peer]
PublicKey = {server}
PresharedKey = {psk}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = vpn.example.com:51820
PersistentKeepalive = 25
"""


def _write(tmp_path, text, name="wg0.conf"):
    path = tmp_path / name
    path.write_text(text.format(priv=encode_key(crypto.x25519_private()), server=SERVER_PUB,
                                psk=encode_key(crypto.random_bytes(32))))
    return path


def test_road_warrior_keeps_its_host_name_endpoint_and_says_what_is_left_out(tmp_path, capsys):
    src = _write(tmp_path, ROAD_WARRIOR)
    out = tmp_path / "phantom.toml"
    assert cli.main(["wg", "import", str(src), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    s = config.parse_daemon_args(["--config", str(out)])
    (server,) = s.peers
    assert server.endpoint_name == ("vpn.example.com", 51820) and server.endpoint is None
    assert server.persistent_keepalive == 25 and server.preshared_key_file is not None
    assert [str(n) for n in server.allowed_ips] == ["0.0.0.0/0", "::/0"]
    assert 'endpoint = "vpn.example.com:51820"' in out.read_text()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    # DNS: what to run instead, with the servers and the search domain
    (dns,) = [w for w in warnings if "DNS" in w]
    assert "resolvectl dns wg0 10.66.66.1 fd42:42:42::1" in dns
    assert "resolvectl domain wg0 corp.example" in dns
    # the hooks: never run, said once for all three lines
    (hooks,) = [w for w in warnings if "PostUp" in w or "PostDown" in w]
    assert "PostUp/PostDown" in hooks and "never run" in hooks and "lines 6, 7, 8" in hooks
    assert not any("Table" in w for w in warnings)        # auto: what phantomd does anyway
    assert "Traceback" not in err and "error" not in err
    assert "# not imported: DNS" in out.read_text()
    # and back: the export keeps the name too
    assert cli.main(["wg", "export", "--config", str(out)]) == 0
    assert "Endpoint = vpn.example.com:51820" in capsys.readouterr().out


@pytest.mark.parametrize("table,said", [("off", "cannot be turned off"), ("1234", "main table")])
def test_table_other_than_auto_is_said(tmp_path, capsys, table, said):
    src = _write(tmp_path, ROAD_WARRIOR.replace("Table = auto", "Table = %s" % table))
    assert cli.main(["wg", "import", str(src), "--out", str(tmp_path / "p.toml")]) == 0
    (w,) = [line for line in capsys.readouterr().err.splitlines() if "Table" in line]
    assert said in w


def test_out_in_a_directory_that_does_not_exist_is_a_usage_error(tmp_path):
    src = _write(tmp_path, ROAD_WARRIOR)
    missing = tmp_path / "nope" / "deeper" / "phantom.toml"
    r = subprocess.run([sys.executable, "-m", "phantom.cli", "wg", "import", str(src), "--out",
                        str(missing)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "does not exist" in r.stderr and str(missing.parent) in r.stderr
    assert not (tmp_path / "nope").exists()               # and nothing written anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wg0.conf"]
    r = subprocess.run([sys.executable, "-m", "phantom.cli", "wg", "import", str(src), "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr


def test_a_peer_nobody_can_reach_fails_the_import_naming_it(tmp_path, capsys):
    """No Endpoint for the peer and no ListenPort for us: wg-quick would
    start a tunnel that never comes up; the import says so and exits 1."""
    src = _write(tmp_path, ROAD_WARRIOR.replace("Endpoint = vpn.example.com:51820\n", "")
                 .replace("PublicKey = {server}", "# Name = server\nPublicKey = {server}"))
    assert cli.main(["wg", "import", str(src), "--out", str(tmp_path / "p.toml")]) == 1
    err = capsys.readouterr().err
    assert "peer server can never connect" in err and "ListenPort" in err


def test_a_server_whose_peers_have_no_endpoint_is_fine(tmp_path, capsys):
    """A server's road warriors have no Endpoint: they contact its ListenPort."""
    text = ROAD_WARRIOR.replace("Endpoint = vpn.example.com:51820\n", "").replace(
        "[Interface]\n", "[Interface]\nListenPort = 51820\n")
    src = _write(tmp_path, text)
    assert cli.main(["wg", "import", str(src), "--out", str(tmp_path / "p.toml")]) == 0
    assert "can never connect" not in capsys.readouterr().err


def test_a_malformed_endpoint_names_its_line():
    text = ROAD_WARRIOR.format(priv=encode_key(crypto.x25519_private()), server=SERVER_PUB,
                               psk=encode_key(bytes(32))).replace("vpn.example.com", "vpn_x.example.com")
    with pytest.raises(wgquick.WgConfError, match=r"\[Peer\] at line 10.*Endpoint.*DNS name"):
        wgquick.parse_wg_quick(text)
