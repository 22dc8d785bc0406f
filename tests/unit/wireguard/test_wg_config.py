"""WireGuard peers in phantom.toml, and `phantom wg import/export/genpsk`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from phantom import crypto
from phantom.cli import main as cli
from phantom.node import config
from phantom.errors import ConfigError
from phantom.keys import encode_key, write_private_key, public_key
from phantom.protocols.wireguard import wgquick
from phantom.protocols.wireguard.keys import decode_preshared_key, genpsk, load_preshared_key

PUB = encode_key(crypto.x25519_public(crypto.x25519_private()))
PUB2 = encode_key(crypto.x25519_public(crypto.x25519_private()))


def _settings(tmp_path, text: str, argv=()):
    path = tmp_path / "phantom.toml"
    path.write_text(text)
    return config.parse_daemon_args(["--config", str(path), *argv])


def _psk_file(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(genpsk() + "\n")
    return path


def test_protocol_defaults_to_phantom_and_takes_wireguard(tmp_path):
    _psk_file(tmp_path / "bob.psk")
    s = _settings(tmp_path, f'''[interface]
mode = "tun"
[[peer]]
name = "alice"
public_key = "{PUB}"
[[peer]]
name = "bob"
protocol = "wireguard"
public_key = "{PUB2}"
preshared_key_file = "bob.psk"
''')
    assert s.peers[0].protocol == "phantom" and s.peers[0].preshared_key_file is None
    assert s.peers[1].protocol == "wireguard"
    assert s.peers[1].preshared_key_file == tmp_path / "bob.psk"      # relative to the file
    assert len(load_preshared_key(s.peers[1].preshared_key_file)) == 32


@pytest.mark.parametrize("peer,key,problem", [
    ('protocol = "wg"', "peer[0].protocol", "not a protocol"),
    ('protocol = 1', "peer[0].protocol", "must be a string"),
    ('preshared_key_file = "x.psk"', "peer[0].preshared_key_file", "only a WireGuard peer"),
    ('protocol = "wireguard"\npresharedkey = "x"', "peer[0].presharedkey", "unknown key"),
])
def test_bad_protocol_settings_name_the_key(tmp_path, peer, key, problem):
    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, f'[interface]\nmode = "tun"\n[[peer]]\npublic_key = "{PUB}"\n{peer}\n')
    assert e.value.key == key and problem in str(e.value)


def test_wireguard_peer_needs_tun_mode(tmp_path):
    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, f'[interface]\nmode = "test"\n[[peer]]\nprotocol = "wireguard"\n'
                            f'public_key = "{PUB}"\n')
    assert e.value.key == "peer[0].protocol" and "tun" in str(e.value)


def test_preshared_key_file_is_checked_like_a_private_key(tmp_path):
    p = _psk_file(tmp_path / "k.psk")
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        load_preshared_key(p)
    with pytest.raises(ConfigError, match="no such file"):
        load_preshared_key(tmp_path / "missing.psk")
    (tmp_path / "bad.psk").write_text("not base64\n")
    os.chmod(tmp_path / "bad.psk", 0o600)
    with pytest.raises(ConfigError, match="base64"):
        load_preshared_key(tmp_path / "bad.psk")
    assert len(decode_preshared_key(genpsk())) == 32


WG0 = """[Interface]
PrivateKey = {priv}
Address = 10.7.0.1/24, fd07::1/64
ListenPort = 51820
MTU = 1400
DNS = 1.1.1.1
PostUp = iptables -A FORWARD -i %i -j ACCEPT

[Peer]
# Name = laptop
PublicKey = {pub1}
PresharedKey = {psk}
AllowedIPs = 10.7.0.2/32, fd07::2/128
Endpoint = 192.0.2.5:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {pub2}
AllowedIPs = 10.7.0.3/24
Endpoint = vpn.example.org:51820
"""


def _wg0(tmp_path):
    priv = crypto.x25519_private()
    psk = genpsk()
    text = WG0.format(priv=encode_key(priv), pub1=PUB, pub2=PUB2, psk=psk)
    path = tmp_path / "wg0.conf"
    path.write_text(text)
    return path, priv, psk


def test_import_writes_a_phantom_toml_that_loads(tmp_path, capsys):
    src, priv, psk = _wg0(tmp_path)
    out = tmp_path / "out" / "phantom.toml"
    out.parent.mkdir()
    assert cli.main(["wg", "import", str(src), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "DNS" in err and "never run" in err and "host bits" in err
    assert "vpn.example.org" not in err              # a host-name endpoint is kept, not dropped
    s = config.parse_daemon_args(["--config", str(out)])
    assert s.device == "wg0" and s.listen_port == 51820 and s.mtu == 1400
    assert [str(a) for a in s.addresses] == ["10.7.0.1/24", "fd07::1/64"]
    assert s.mode.value == "tun"
    laptop, other = s.peers
    assert (laptop.name, laptop.protocol, laptop.public_key_b64) == ("laptop", "wireguard", PUB)
    assert laptop.endpoint == ("192.0.2.5", 51820) and laptop.persistent_keepalive == 25
    assert [str(n) for n in laptop.allowed_ips] == ["10.7.0.2/32", "fd07::2/128"]
    assert encode_key(load_preshared_key(laptop.preshared_key_file)) == psk
    assert other.protocol == "wireguard" and other.endpoint is None and other.preshared_key_file is None
    assert other.endpoint_name == ("vpn.example.org", 51820)
    assert [str(n) for n in other.allowed_ips] == ["10.7.0.0/24"]
    key_file = s.private_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(laptop.preshared_key_file.stat().st_mode) == 0o600
    assert encode_key(priv) not in out.read_text() and psk not in out.read_text()
    # never clobbers without --force
    assert cli.main(["wg", "import", str(src), "--out", str(out)]) == 1


def test_import_refuses_an_existing_output(tmp_path):
    src, _, _ = _wg0(tmp_path)
    out = tmp_path / "phantom.toml"
    out.write_text("# mine\n")
    assert cli.main(["wg", "import", str(src), "--out", str(out)]) == 1
    assert out.read_text() == "# mine\n"


@pytest.mark.parametrize("text,problem", [
    ("[Interface]\nListenPort = 1\n", "no PrivateKey"),
    ("[Interface]\nPrivateKey = abc\n", "line 2"),
    ("[Interface]\nPrivateKey = %s\n[Peer]\nAllowedIPs = 10.0.0.1/32\n", "no PublicKey"),
    ("[Interface]\nPrivateKey = %s\nBogus = 1\n", "unknown [Interface] key"),
    ("[Wat]\n", "unknown section"),
])
def test_import_errors_name_the_line(text, problem):
    if "%s" in text:
        text = text % encode_key(crypto.x25519_private())
    with pytest.raises(wgquick.WgConfError, match=problem.replace("[", r"\[")):
        wgquick.parse_wg_quick(text)


def test_export_is_the_reverse_of_import(tmp_path, capsys):
    src, priv, psk = _wg0(tmp_path)
    out = tmp_path / "phantom.toml"
    assert cli.main(["wg", "import", str(src), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["wg", "export", "--config", str(out)]) == 0
    text = capsys.readouterr().out
    back = wgquick.parse_wg_quick(text)
    assert bytes(back.private_key) == priv and back.listen_port == 51820 and back.mtu == 1400
    assert [str(a) for a in back.addresses] == ["10.7.0.1/24", "fd07::1/64"]
    assert [encode_key(p.public_key) for p in back.peers] == [PUB, PUB2]
    assert back.peers[0].name == "laptop" and encode_key(back.peers[0].preshared_key) == psk
    assert back.peers[0].endpoint == ("192.0.2.5", 51820) and back.peers[0].persistent_keepalive == 25


def test_export_for_a_peer_points_it_at_us(tmp_path, capsys):
    our_key = write_private_key(tmp_path / "me.key")
    peer_key = tmp_path / "peer.key"
    peer_priv = write_private_key(peer_key)
    _psk_file(tmp_path / "p.psk")
    cfg = tmp_path / "phantom.toml"
    cfg.write_text(f'''[interface]
private_key_file = "me.key"
mode = "tun"
addresses = ["10.8.0.1/24", "fd08::1/64"]
endpoints = ["198.51.100.1:9000"]
[[peer]]
name = "phone"
protocol = "wireguard"
public_key = "{encode_key(public_key(peer_priv))}"
allowed_ips = ["10.8.0.5/32", "fd08::5/128"]
preshared_key_file = "p.psk"
[[peer]]
name = "node"
public_key = "{PUB}"
''')
    assert cli.main(["wg", "export", "--config", str(cfg), "phone", "--peer-private-key", str(peer_key)]) == 0
    conf = wgquick.parse_wg_quick(capsys.readouterr().out)
    assert bytes(conf.private_key) == bytes(peer_priv)
    assert [str(a) for a in conf.addresses] == ["10.8.0.5/24", "fd08::5/64"]
    (us,) = conf.peers
    assert us.public_key == public_key(our_key)
    assert bytes(us.preshared_key) == bytes(load_preshared_key(tmp_path / "p.psk"))
    assert [str(n) for n in us.allowed_ips] == ["10.8.0.0/24", "fd08::/64"]
    assert us.endpoint == ("198.51.100.1", 9000)
    # a Phantom peer cannot be exported; a placeholder key without --peer-private-key
    assert cli.main(["wg", "export", "--config", str(cfg), "node"]) == 1
    capsys.readouterr()
    assert cli.main(["wg", "export", "--config", str(cfg), "phone"]) == 0
    res = capsys.readouterr()
    assert "REPLACE_WITH_PHONE_PRIVATE_KEY" in res.out and "private key" in res.err


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_wg_tools_accept_what_we_export(tmp_path, capsys):
    """`wg-quick strip` + `wg` parse our export (wg's own parser, no device needed)."""
    src, _, _ = _wg0(tmp_path)
    out = tmp_path / "phantom.toml"
    assert cli.main(["wg", "import", str(src), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["wg", "export", "--config", str(out)]) == 0
    text = capsys.readouterr().out
    exported = tmp_path / "wgx.conf"
    exported.write_text(text)
    if shutil.which("wg-quick"):
        r = subprocess.run(["wg-quick", "strip", str(exported)], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        assert "PrivateKey" in r.stdout and "Address" not in r.stdout


def test_genpsk_prints_a_key(capsys):
    assert cli.main(["wg", "genpsk"]) == 0
    assert len(decode_preshared_key(capsys.readouterr().out)) == 32


# --- reload (phantom reload / SIGHUP) with WireGuard peers ---------------------------------------
def test_reload_adds_changes_and_switches_protocols(tmp_path):
    from tests.unit.node.test_reload import Node, doc, peer, run, crypto_key
    p1, p2 = _psk_file(tmp_path / "one.psk"), _psk_file(tmp_path / "two.psk")
    d = Node(doc(peer("b"), peer("c")))
    out = run(d, doc(peer("b", protocol="wireguard", preshared_key_file=str(p1)), peer("c"),
                     peer("d", protocol="wireguard")))
    assert out["added"] == ["b", "d"] and out["removed"] == ["b"]          # b: another protocol
    b = d.engine.peer_by_key(crypto_key("b"))
    assert b.protocol == "wireguard" and bytes(b.preshared_key) == bytes(load_preshared_key(p1))
    assert d.engine.peer_by_key(crypto_key("d")).protocol == "wireguard"
    assert d.engine.peer_by_key(crypto_key("c")).protocol == "phantom"
    out = run(d, doc(peer("b", protocol="wireguard", preshared_key_file=str(p2)), peer("c"),
                     peer("d", protocol="wireguard")))
    assert out["changed"] == {"b": ["preshared_key"]} and out["added"] == []
    assert bytes(d.engine.peer_by_key(crypto_key("b")).preshared_key) == bytes(load_preshared_key(p2))
    out = run(d, doc(peer("b", protocol="wireguard"), peer("c"), peer("d", protocol="wireguard")))
    assert out["changed"] == {"b": ["preshared_key"]}
    assert d.engine.peer_by_key(crypto_key("b")).preshared_key is None


def test_reload_refuses_a_bad_preshared_key_file_and_changes_nothing(tmp_path):
    from tests.unit.node.test_reload import Node, doc, peer, crypto_key
    d = Node(doc(peer("b", protocol="wireguard")))
    bad = tmp_path / "open.psk"
    bad.write_text(genpsk() + "\n")
    os.chmod(bad, 0o644)
    with pytest.raises(ConfigError) as e:
        d.plan(config.settings_from_mapping(doc(peer("b", protocol="wireguard",
                                                    preshared_key_file=str(bad)))))
    assert e.value.key == "peer[0].preshared_key_file"
    assert d.engine.peer_by_key(crypto_key("b")).preshared_key is None


def test_phantomd_exits_2_naming_a_bad_preshared_key_file(tmp_path, capsys):
    from phantom.node import main
    write_private_key(tmp_path / "me.key")
    bad = tmp_path / "open.psk"
    bad.write_text(genpsk() + "\n")
    os.chmod(bad, 0o644)
    cfg = tmp_path / "phantom.toml"
    cfg.write_text(f'''[interface]
private_key_file = "me.key"
mode = "tun"
state_dir = "{tmp_path / 'state'}"
[[peer]]
protocol = "wireguard"
public_key = "{PUB}"
preshared_key_file = "open.psk"
''')
    assert main.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "peer[0].preshared_key_file" in err and "0644" in err


# --- directory records that say which protocol a key speaks --------------------------------------
def test_directory_record_carries_the_protocol_signed():
    from phantom.directory.records import NodeSigner, RecordError, make_record, parse_record
    priv = crypto.x25519_private()
    signer = NodeSigner(bytearray(priv))
    plain_doc = make_record(signer, "node", ["192.0.2.1:9000"], [], 1, 2 ** 31 - 1)
    assert "protocol" not in plain_doc                       # old records unchanged
    assert parse_record(plain_doc, 0).protocol == "phantom"
    doc = make_record(signer, "phone", ["192.0.2.5:51820"], ["10.8.0.5/32"], 2, 2 ** 31 - 1,
                      protocol="wireguard")
    rec = parse_record(doc, 0)
    assert rec.protocol == "wireguard" and rec.summary()["protocol"] == "wireguard"
    forged = dict(doc, protocol="phantom")                   # the field is signed
    with pytest.raises(RecordError, match="signature"):
        parse_record(forged, 0)
    with pytest.raises(RecordError, match="protocol"):
        parse_record(dict(doc, protocol="ipsec"), 0)
    with pytest.raises(RecordError):
        make_record(signer, "x", [], [], 3, 2 ** 31 - 1, protocol="ipsec")
