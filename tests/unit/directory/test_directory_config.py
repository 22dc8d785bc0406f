"""The daemon config's directory keys: one URL, several, "dht" with its bootstrap
nodes and port, and endpoints = "auto"."""

from __future__ import annotations

import base64

import pytest

from phantom.control.config import parse_daemon_args
from phantom.control.errors import ConfigError
from phantom.directory.client import parse_urls


def settings(tmp_path, body: str):
    key = tmp_path / "k"
    key.write_text("")
    cfg = tmp_path / "phantom.toml"
    cfg.write_text("[interface]\nprivate_key_file = \"k\"\n" + body)
    return parse_daemon_args(["--config", str(cfg)])


def test_one_url_stays_a_string_several_become_a_list(tmp_path):
    assert settings(tmp_path, 'directory = "http://10.0.0.1:4568/"\n').directory == \
        "http://10.0.0.1:4568"
    s = settings(tmp_path, 'directory = ["http://10.0.0.1:4568", "http://10.0.0.2:4568/", '
                           '"http://10.0.0.1:4568"]\n')
    assert s.directory == ["http://10.0.0.1:4568", "http://10.0.0.2:4568"]
    s = settings(tmp_path, 'directory = "http://10.0.0.1:4568, https://d.example"\n')
    assert s.directory == ["http://10.0.0.1:4568", "https://d.example"]
    assert parse_urls(s.directory) == s.directory
    assert parse_urls("http://a:1,http://b:2") == ["http://a:1", "http://b:2"]


def test_dht_with_bootstrap_nodes_port_and_auto_endpoints(tmp_path):
    s = settings(tmp_path, 'directory = "dht"\ndht_bootstrap = ["192.0.2.10:6881", '
                           '"[2001:db8::1]:6881"]\ndht_port = 7000\nendpoints = "auto"\n')
    assert s.directory == "dht"
    assert s.dht_bootstrap == [("192.0.2.10", 6881), ("2001:db8::1", 6881)]
    assert s.dht_port == 7000 and s.endpoints_auto and s.endpoints == []
    s = settings(tmp_path, 'endpoints = ["auto", "192.0.2.1:9000"]\n')
    assert s.endpoints_auto and s.endpoints == [("192.0.2.1", 9000)]


@pytest.mark.parametrize("body, where", [
    ('directory = []\n', "interface.directory"),
    ('directory = ["http://ok:1", "ftp://x"]\n', "interface.directory[1]"),
    ('directory = 5\n', "interface.directory"),
    ('dht_bootstrap = ["nope"]\n', "interface.dht_bootstrap[0]"),
    ('dht_bootstrap = "192.0.2.1:6881"\n', "interface.dht_bootstrap"),
    ('dht_port = 70000\n', "interface.dht_port"),
    ('dht_port = true\n', "interface.dht_port"),
    ('endpoints = "sometimes"\n', "interface.endpoints"),
    ('endorsers = "x"\n', "interface.endorsers"),
    ('endorsers = ["%s", "nope"]\n' % ("A" * 43 + "="), "interface.endorsers[1]"),
    ('endorsers = [%s]\n' % ", ".join(['"%s"' % ("A" * 43 + "=")] * 17), "interface.endorsers"),
    ('name = "n"\ntrusted_signers = [%s]\n' % ", ".join(['"%s"' % ("A" * 43 + "=")] * 17),
     "interface.endorsers"),
])
def test_bad_directory_settings_name_the_key(tmp_path, body, where):
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, body)
    assert where in str(err.value)


def test_the_flag_takes_several_urls_or_dht(tmp_path):
    key = tmp_path / "k"
    key.write_text("")
    s = parse_daemon_args(["--private-key", str(key), "--directory",
                           "http://10.0.0.1:4568,http://10.0.0.2:4568"])
    assert s.directory == ["http://10.0.0.1:4568", "http://10.0.0.2:4568"]
    assert parse_daemon_args(["--private-key", str(key), "--directory", "dht"]).directory == "dht"


def test_our_record_names_our_trusted_signers_as_endorsers_unless_told_otherwise(tmp_path):
    ca, other = "A" * 43 + "=", "B" * 43 + "="
    s = settings(tmp_path, 'trusted_signers = ["%s"]\n' % ca)
    assert s.endorsers is None and s.published_endorsers == [bytes(32)]
    s = settings(tmp_path, 'trusted_signers = ["%s"]\nendorsers = ["%s"]\n' % (ca, other))
    assert s.published_endorsers == [base64.b64decode(other)]
    s = settings(tmp_path, 'trusted_signers = ["%s"]\nendorsers = []\n' % ca)
    assert s.published_endorsers == []                    # anyone may: the record has no field
    assert settings(tmp_path, "").published_endorsers == []
