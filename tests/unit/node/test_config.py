"""phantomd's configuration: the TOML file, its validation, and flag overrides."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phantom.constants import DEFAULT_MTU, Tunables
from phantom.node.config import (Settings, default_state_dir, load_settings, build_daemon_parser,
                                 parse_daemon_args)
from phantom.syntax import format_endpoint, parse_endpoint
from phantom.errors import ConfigError
from phantom.dataplane.types import Mode
from tests.support import REPO

KEY_A = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="
KEY_B = "3cVJ1x7RRpHcPtZOceZ1+T1f5Qji0l7waRMN/9d8XBk="

GOOD = f"""
[interface]
private_key_file = "keys/private.key"
listen_port = 9100
http_port = 4600
http_listen = "127.0.0.1"
http_socket = "/run/phantom/api.sock"
test_port = 8100
test_deliver = "127.0.0.1:8101"
mode = "tun"
device = "ph0"
addresses = ["10.9.0.1/24", "fd09::1/64"]
mtu = 1420
state_dir = "state"
fast = true
log_level = "debug"
directory = "http://127.0.0.1:7000/"

[[peer]]
name = "bob"
public_key = "{KEY_A}"
endpoint = "192.0.2.7:9000"
allowed_ips = ["10.9.0.2/32", "10.20.0.0/16"]
persistent_keepalive = 25

[[peer]]
name = "carol"
public_key = "{KEY_B}"
endpoint = "[fd00::3]:9000"
allowed_ips = ["10.9.0.0/24", "fd09::3/128"]

[firewall]
default = "accept"

[tunables]
rekey_timeout = 1
open_attempts = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phantom.toml"
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path, text, *flags) -> Settings:
    return parse_daemon_args(["--config", str(write(tmp_path, text)), *flags])


def error_of(tmp_path, text, *flags) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, *flags)
    return info.value


def test_good_file_parses_to_typed_values(tmp_path):
    s = load(tmp_path, GOOD)
    assert s.config_path == tmp_path / "phantom.toml"
    assert s.private_key_file == tmp_path / "keys" / "private.key"   # relative to the file
    assert s.private_key_explicit
    assert (s.listen_port, s.http_port, s.test_port) == (9100, 4600, 8100)
    assert s.test_deliver == ("127.0.0.1", 8101)
    assert s.http_socket == Path("/run/phantom/api.sock")
    assert s.mode is Mode.TUN and s.device == "ph0" and s.fast and s.log_level == "debug"
    assert s.addresses == [ipaddress.ip_interface("10.9.0.1/24"), ipaddress.ip_interface("fd09::1/64")]
    assert s.state_dir == tmp_path / "state" and s.token_file == tmp_path / "state" / "token"
    assert s.directory == "http://127.0.0.1:7000"
    assert s.firewall == {"default": "accept"}
    assert s.tunables.rekey_timeout == 1.0 and isinstance(s.tunables.rekey_timeout, float)
    assert s.tunables.open_attempts == 3
    assert s.tunables.keepalive_timeout == Tunables().keepalive_timeout
    bob, carol = s.peers
    assert bob.name == "bob" and len(bob.public_key) == 32 and bob.public_key_b64 == KEY_A
    assert bob.endpoint == ("192.0.2.7", 9000) and bob.persistent_keepalive == 25
    assert bob.allowed_ips == [ipaddress.ip_network("10.9.0.2/32"), ipaddress.ip_network("10.20.0.0/16")]
    assert carol.endpoint == ("fd00::3", 9000) and carol.persistent_keepalive == 0
    assert s.peer("carol") is carol and s.peer("nobody") is None


def test_registration_ttl_is_a_tunable_longer_than_the_renewal_interval(tmp_path):
    s = load(tmp_path, "[tunables]\nregistration_ttl = 8\n")
    assert s.tunables.registration_ttl == 8.0 and isinstance(s.tunables.registration_ttl, float)
    assert Tunables().registration_ttl == 20.0
    assert "renew" in error_of(tmp_path, "[tunables]\nregistration_ttl = 4.5\n").problem


def test_example_config_is_valid():
    s = parse_daemon_args(["--config", str(REPO / "examples" / "phantom.toml")])
    assert s.peers and s.addresses


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = parse_daemon_args([])
    assert (s.http_port, s.listen_port, s.test_port) == (4567, 9000, 8000)
    assert s.http_listen == "127.0.0.1" and s.mtu == DEFAULT_MTU and s.mode is Mode.TEST
    assert s.state_dir == default_state_dir()
    assert s.private_key_file == s.state_dir / "private.key" and not s.private_key_explicit
    assert s.peers == [] and s.firewall == {} and s.tunables == Tunables()


def test_flags_override_the_file(tmp_path):
    s = load(tmp_path, GOOD, "-p", "5000", "-u", "0", "-t", "8200", "--mode", "tap",
             "--device", "tap7", "--address", "10.50.0.1/24", "--address", "10.51.0.1/24",
             "--private-key", str(tmp_path / "other.key"), "--log-level", "WARNING",
             "--state-dir", str(tmp_path / "s2"), "--http-listen", "::1",
             "--http-socket", str(tmp_path / "api.sock"), "--directory", "https://dir.example:8443",
             "--mtu", "1300")
    assert (s.http_port, s.listen_port, s.test_port) == (5000, 0, 8200)
    assert s.mode is Mode.TAP and s.device == "tap7"
    assert [str(a) for a in s.addresses] == ["10.50.0.1/24", "10.51.0.1/24"]
    assert s.private_key_file == tmp_path / "other.key"
    assert s.log_level == "warning" and s.state_dir == tmp_path / "s2"
    assert s.http_listen == "::1" and s.http_socket == tmp_path / "api.sock"
    assert s.directory == "https://dir.example:8443" and s.mtu == 1300
    # What no flag touched keeps the file's value.
    assert s.fast and [p.name for p in s.peers] == ["bob", "carol"]


def test_load_settings_accepts_a_namespace(tmp_path):
    args = build_daemon_parser().parse_args(["--config", str(write(tmp_path, GOOD)), "--fast"])
    assert load_settings(args).fast


@pytest.mark.parametrize("snippet,key", [
    ("[interface]\nlisten_prot = 9000\n", "interface.listen_prot"),
    ("[interfaces]\n", "interfaces"),
    ("[interface]\nhttp_port = 70000\n", "interface.http_port"),
    ("[interface]\nhttp_port = 70000\n", "interface.http_port"),
    ("[interface]\nlisten_port = -1\n", "interface.listen_port"),
    ("[interface]\ntest_port = \"x\"\n", "interface.test_port"),
    ("[interface]\nmtu = 500\n", "interface.mtu"),
    ("[interface]\nmtu = 70000\n", "interface.mtu"),
    ("[interface]\nmtu = 1200\naddresses = [\"fd00::1/64\"]\n", "interface.mtu"),
    # "²" is a digit to str.isdigit() but not to int(): a ConfigError, not a ValueError
    ("[interface]\nmtu = \"\u00b2\"\n", "interface.mtu"),
    ("[interface]\nlisten_port = \"\u00b2\"\n", "interface.listen_port"),
    ("[interface]\ntest_port = \"\u2466\"\n", "interface.test_port"),
    ("[interface]\nmode = \"tunnel\"\n", "interface.mode"),
    ("[interface]\ndevice = \"a-very-long-device-name\"\n", "interface.device"),
    ("[interface]\naddresses = [\"10.0.0.1/24\", \"10.0.0.300/24\"]\n", "interface.addresses[1]"),
    ("[interface]\naddresses = [\"10.0.0.1\"]\n", "interface.addresses[0]"),
    ("[interface]\naddresses = \"10.0.0.1/24\"\n", "interface.addresses"),
    ("[interface]\nfast = \"yes\"\n", "interface.fast"),
    ("[interface]\nkill_switch = 1\n", "interface.kill_switch"),
    ("[interface]\nmode = \"tap\"\nexit_node = true\n", "interface.exit_node"),
    ("[[peer]]\npublic_key = \"%s\"\nallow_exit = true\n" % KEY_A, "peer[0].allow_exit"),
    ("[interface]\nexit_node = true\n[[peer]]\npublic_key = \"%s\"\nallow_exit = \"y\"\n" % KEY_A,
     "peer[0].allow_exit"),
    ("[interface]\nmode = \"tap\"\nkill_switch = true\n", "interface.kill_switch"),
    ("[interface]\nmode = \"tap\"\n[[peer]]\npublic_key = \"%s\"\nexit_node = true\n" % KEY_A,
     "peer[0].exit_node"),
    ("[interface]\nmode = \"tun\"\n[[peer]]\npublic_key = \"%s\"\nexit_node = \"yes\"\n" % KEY_A,
     "peer[0].exit_node"),
    ("[interface]\nmode = \"tun\"\nexit_dns_upstream = [\"192.0.2.53\"]\n", "interface.exit_dns_upstream"),
    ("[interface]\nmode = \"tun\"\nexit_node = true\nexit_dns_upstream = \"192.0.2.53\"\n",
     "interface.exit_dns_upstream"),
    ("[interface]\nmode = \"tun\"\nexit_node = true\nexit_dns_upstream = [\"dns.example\"]\n",
     "interface.exit_dns_upstream[0]"),
    ("[interface]\nmode = \"tun\"\nexit_node = true\nexit_dns_upstream = []\n", "interface.exit_dns_upstream"),
    ("[interface]\nmode = \"tun\"\nadvertise_routes = \"192.168.50.0/24\"\n", "interface.advertise_routes"),
    ("[interface]\nmode = \"tap\"\nadvertise_routes = [\"192.168.50.0/24\"]\n", "interface.advertise_routes"),
    ("[interface]\nmode = \"tun\"\n[[peer]]\npublic_key = \"%s\"\nallow_routes = true\n" % KEY_A,
     "peer[0].allow_routes"),
    ("[interface]\nmode = \"tun\"\n[[peer]]\npublic_key = \"%s\"\nroutes = [\"0.0.0.0/0\"]\n" % KEY_A,
     "peer[0].routes[0]"),
    ("[interface]\nmode = \"tun\"\n[[peer]]\npublic_key = \"%s\"\nallowed_ips = [\"10.1.0.0/24\"]\n"
     "routes = [\"10.1.0.0/24\"]\n" % KEY_A, "peer[0].routes[0]"),
    ("[interface]\nmode = \"tun\"\naddresses = [\"10.99.0.1/24\"]\n[[peer]]\npublic_key = \"%s\"\n"
     "routes = [\"10.99.0.128/25\"]\n" % KEY_A, "peer[0].routes[0]"),
    ("[interface]\nmode = \"tun\"\n[[peer]]\npublic_key = \"%s\"\nroutes = [\"192.168.50.0/24\"]\n"
     "[[peer]]\npublic_key = \"%s\"\nallowed_ips = [\"192.168.50.7/32\"]\n" % (KEY_A, KEY_B), "peer[0].routes[0]"),
    ("[interface]\nlog_level = \"loud\"\n", "interface.log_level"),
    ("[interface]\nuser = \"no-such-user-phantom-test\"\n", "interface.user"),
    ("[interface]\nhttp_listen = \"localhost\"\n", "interface.http_listen"),
    ("[interface]\ndirectory = \"ftp://x\"\n", "interface.directory"),
    ("[interface]\ntest_deliver = \"127.0.0.1\"\n", "interface.test_deliver"),
    ("[interface]\nstate_dir = 5\n", "interface.state_dir"),
    ("[peer]\npublic_key = \"%s\"\n" % KEY_A, "peer"),
    ("[[peer]]\nname = \"x\"\n", "peer[0].public_key"),
    ("[[peer]]\npublic_key = \"abc\"\n", "peer[0].public_key"),
    ("[[peer]]\npublic_key = \"%s\"\nname = \"bad name\"\n" % KEY_A, "peer[0].name"),
    ("[[peer]]\npublic_key = \"%s\"\nendpont = \"1.2.3.4:5\"\n" % KEY_A, "peer[0].endpont"),
    ("[[peer]]\npublic_key = \"%s\"\nendpoint = \"1.2.3.4\"\n" % KEY_A, "peer[0].endpoint"),
    ("[[peer]]\npublic_key = \"%s\"\nendpoint = \"fd00::1:9000\"\n" % KEY_A, "peer[0].endpoint"),
    ("[[peer]]\npublic_key = \"%s\"\nendpoint = \"host_name.example:9000\"\n" % KEY_A, "peer[0].endpoint"),
    ("[[peer]]\npublic_key = \"%s\"\nendpoint = \"1.2.3.4.5:9000\"\n" % KEY_A, "peer[0].endpoint"),
    ("[[peer]]\npublic_key = \"%s\"\nendpoint = \"vpn.example.com\"\n" % KEY_A, "peer[0].endpoint"),
    ("[[peer]]\npublic_key = \"%s\"\nendpoint = \"vpn.example.com:51820\"\nrendezvous = true\n" % KEY_A,
     "peer[0].rendezvous"),
    ("[[peer]]\npublic_key = \"%s\"\nendpoint = \"1.2.3.4:0\"\n" % KEY_A, "peer[0].endpoint"),
    ("[[peer]]\npublic_key = \"%s\"\npersistent_keepalive = -5\n" % KEY_A,
     "peer[0].persistent_keepalive"),
    ("[[peer]]\npublic_key = \"%s\"\nallowed_ips = [\"10.0.0.1/24\"]\n" % KEY_A,
     "peer[0].allowed_ips[0]"),
    ("[[peer]]\npublic_key = \"%s\"\nallowed_ips = [\"10.0.0.0/24\", \"10.0.0.0/24\"]\n" % KEY_A,
     "peer[0].allowed_ips[1]"),
    ("[[peer]]\nname = \"a\"\npublic_key = \"%s\"\n[[peer]]\nname = \"a\"\npublic_key = \"%s\"\n"
     % (KEY_A, KEY_B), "peer[1].name"),
    ("[[peer]]\nname = \"a\"\npublic_key = \"%s\"\n[[peer]]\nname = \"b\"\npublic_key = \"%s\"\n"
     % (KEY_A, KEY_A), "peer[1].public_key"),
    ("[[peer]]\nname = \"a\"\npublic_key = \"%s\"\nallowed_ips = [\"10.1.0.0/16\"]\n"
     "[[peer]]\nname = \"b\"\npublic_key = \"%s\"\nallowed_ips = [\"10.2.0.0/16\", \"10.1.0.0/16\"]\n"
     % (KEY_A, KEY_B), "peer[1].allowed_ips[1]"),
    ("[firewall]\n[tunables]\nrekey_timout = 1\n", "tunables.rekey_timout"),
    ("[tunables]\nopen_attempts = 1.5\n", "tunables.open_attempts"),
    ("[tunables]\nrekey_timeout = -1\n", "tunables.rekey_timeout"),
    ("[tunables]\nregistration_ttl = 5\n", "tunables.registration_ttl"),
    ("firewall = 3\n", "firewall"),
])
def test_every_error_names_its_key(tmp_path, snippet, key):
    err = error_of(tmp_path, snippet)
    assert err.key == key, str(err)
    assert err.problem and str(err).startswith(key + ": ")


def test_typo_suggests_the_right_key(tmp_path):
    err = error_of(tmp_path, "[interface]\nlisten_prot = 9000\n")
    assert "did you mean 'listen_port'" in err.problem


def test_overlapping_prefixes_on_two_peers_are_allowed(tmp_path):
    s = load(tmp_path, f"""
        [[peer]]
        name = "a"
        public_key = "{KEY_A}"
        allowed_ips = ["10.0.0.0/8", "::/0"]
        [[peer]]
        name = "b"
        public_key = "{KEY_B}"
        allowed_ips = ["10.1.0.0/16", "fd00::/8"]
        """)
    assert [len(p.allowed_ips) for p in s.peers] == [2, 2]


def test_default_peer_name_comes_from_the_key(tmp_path):
    s = load(tmp_path, f'[[peer]]\npublic_key = "{KEY_A}"\n')
    assert s.peers[0].name.startswith("peer-") and len(s.peers[0].name) == 13


@pytest.mark.parametrize("flags,key", [
    (["-p", "65536"], "--http-port"),
    (["-u", "65536"], "--udp-port"),
    (["-t", "x"], "--test-port"),
    (["--mode", "l2"], "--mode"),
    (["--address", "nonsense"], "--address"),
    (["--mtu", "100"], "--mtu"),
    (["--address", "fd00::1/64", "--mtu", "1279"], "--mtu"),
    (["--log-level", "chatty"], "--log-level"),
    (["--http-listen", "0.0.0.0.0"], "--http-listen"),
    (["--directory", "nope"], "--directory"),
    (["--config", "/nonexistent/phantom.toml"], "--config"),
])
def test_flag_errors_name_the_flag(flags, key):
    with pytest.raises(ConfigError) as info:
        parse_daemon_args(flags)
    assert info.value.key == key


def test_invalid_toml_names_the_file(tmp_path):
    err = error_of(tmp_path, "[interface\nmtu = 1\n")
    assert err.key.endswith("phantom.toml") and "invalid TOML" in err.problem


@pytest.mark.parametrize("text,expected", [
    ("192.0.2.1:9000", ("192.0.2.1", 9000)),
    ("[fd00::1]:1", ("fd00::1", 1)),
    ("[FD00:0::1]:65535", ("fd00::1", 65535)),
    (" 10.0.0.1:80 ", ("10.0.0.1", 80)),
])
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text) == expected
    assert parse_endpoint(format_endpoint(expected)) == expected


@pytest.mark.parametrize("text", ["", "1.2.3.4", "1.2.3.4:", "1.2.3.4:x", "1.2.3.4:99999",
                                  "[fd00::1]", "[fd00::1]9000", "fd00::1:9000", "0.0.0.0:9000",
                                  "224.0.0.1:9000", "a.b:1", "1.2.3.4:+5", "1.2.3.4:٣"])
def test_parse_endpoint_rejects(text):
    with pytest.raises(ConfigError):
        parse_endpoint(text)


def test_argparse_errors_exit_2():
    proc = subprocess.run([sys.executable, "-c",
                           "from phantom.node.config import parse_daemon_args; "
                           "parse_daemon_args(['--no-such-flag'])"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr


def test_state_dir_default_depends_on_euid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_state_dir() == tmp_path / ".phantom"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/phantom")


def test_default_peer_names_never_collide(tmp_path):
    """Keys that share their first 4 bytes get longer default names, and an
    explicit name that equals a default is never taken twice."""
    import base64
    k1 = bytes([7] * 4) + bytes(range(1, 29))
    k2 = bytes([7] * 4) + bytes(range(2, 30))
    k3 = bytes([9] * 32)
    keys = [base64.b64encode(k).decode() for k in (k1, k2, k3)]
    text = "".join('[[peer]]\npublic_key = "%s"\n' % k for k in keys)
    text += '[[peer]]\nname = "peer-%s"\npublic_key = "%s"\n' % (k3[:4].hex(), KEY_A)
    s = load(tmp_path, text)
    names = [p.name for p in s.peers]
    assert len(set(names)) == 4, names
    assert names[0] == "peer-" + k1[:5].hex() and names[1] == "peer-" + k2[:5].hex()
    assert names[2] == "peer-" + k3[:5].hex(), "the explicit name keeps peer-09090909"
    assert names == [p.name for p in load(tmp_path, text).peers], "deterministic"


def test_ten_thousand_unnamed_peers_load(tmp_path):
    import base64
    import os
    text = "".join('[[peer]]\npublic_key = "%s"\n' % base64.b64encode(os.urandom(32)).decode()
                   for _ in range(10000))
    s = load(tmp_path, text)
    assert len({p.name for p in s.peers}) == 10000


def test_every_key_is_documented_and_in_the_example():
    """docs/usage.md's tables and examples/phantom.toml ("every key, with its
    meaning") name every [interface] and [[peer]] key the parser accepts."""
    import re
    from phantom.node.config import INTERFACE_KEYS, PEER_KEYS
    usage = (REPO / "docs" / "usage.md").read_text()
    example = (REPO / "examples" / "phantom.toml").read_text()
    iface_table = usage.split("### `[interface]`")[1].split("###")[0]
    peer_table = usage.split("### `[[peer]]`")[1].split("###")[0]
    iface_part, peer_part = example.split("\n[[peer]]\n", 1)
    missing = []
    for keys, table, part, where in ((INTERFACE_KEYS, iface_table, iface_part, "[interface]"),
                                     (PEER_KEYS, peer_table, peer_part, "[[peer]]")):
        for key in keys:
            if "| `%s` |" % key not in table:
                missing.append("docs/usage.md %s: %s" % (where, key))
            if not re.search(r"^#? ?%s = " % re.escape(key), part, re.M):
                missing.append("examples/phantom.toml %s: %s" % (where, key))
    assert missing == []
    # "auto" endpoints are explained in both
    assert '"auto"' in iface_table and 'endpoints = "auto"' in example


def test_addresses_without_a_mode_mean_a_tun_device(tmp_path):
    """A newcomer's config with addresses and no mode used to start in test
    mode and ignore the addresses: addresses now mean tun mode."""
    from phantom.node import reload
    text = '[interface]\naddresses = ["10.9.0.1/24"]\n'
    s = load(tmp_path, text)
    assert s.mode is Mode.TUN
    from phantom.node.config import config_warnings
    assert not s.mode_explicit and config_warnings(s) == []
    # the reload's parse agrees (no "mode changed: needs a restart" on every reload)
    assert reload.read(write(tmp_path, text)).mode is Mode.TUN
    # --address alone, no file: the same
    assert parse_daemon_args(["--address", "10.9.0.1/24"]).mode is Mode.TUN
    # no addresses: test mode stays the default
    assert load(tmp_path, "[interface]\nlisten_port = 9100\n").mode is Mode.TEST
    # a mode given (file or flag) wins, and test mode with addresses is named at start
    for s in (load(tmp_path, '[interface]\nmode = "test"\naddresses = ["10.9.0.1/24"]\n'),
              load(tmp_path, text, "--mode", "test")):
        assert s.mode is Mode.TEST
        (warning,) = config_warnings(s)
        assert warning.startswith("interface.addresses: mode = \"test\" opens no device") and \
            "10.9.0.1/24" in warning
    assert load(tmp_path, '[interface]\nmode = "tap"\naddresses = ["10.9.0.1/24"]\n').mode is Mode.TAP


def test_subnet_routes_join_allowed_ips_and_a_full_tunnel_is_no_overlap(tmp_path):
    """A peer's routes (a subnet router's LAN) are routed to it like its
    allowed IPs; another peer's 0.0.0.0/0 (a full tunnel) does not refuse
    them: the longer prefix wins, as meant."""
    import ipaddress
    text = ('[interface]\nmode = "tun"\naddresses = ["10.99.0.1/24"]\n'
            '[[peer]]\nname = "router"\npublic_key = "%s"\nallowed_ips = ["10.99.0.2/32"]\n'
            'routes = ["192.168.50.0/24"]\n'
            '[[peer]]\nname = "exit"\npublic_key = "%s"\nallowed_ips = ["0.0.0.0/0"]\n' % (KEY_A, KEY_B))
    s = load(tmp_path, text)
    router = s.peers[0]
    assert router.routes == [ipaddress.ip_network("192.168.50.0/24")]
    assert router.allowed_ips == [ipaddress.ip_network("10.99.0.2/32"), ipaddress.ip_network("192.168.50.0/24")]
