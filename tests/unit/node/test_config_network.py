"""The ``[network]`` section `phantom join` writes: parsed and checked like
every section (phantomd acts on it: phantom/node/membership.py), and rewritten in place by
a second join (phantom/cli/join.py's write_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phantom.cli.join import network_section, write_config
from phantom.errors import ConfigError
from phantom.node.config import config_warnings, read_config_file, settings_from_mapping

FP = "njk6pu4vrs4quitt77sxfemsjkjn757n"


def load(path: Path):
    return settings_from_mapping(read_config_file(path), path.parent)


def test_join_writes_a_section_the_daemon_parses_and_a_second_join_replaces_it(tmp_path):
    config = tmp_path / "phantom.toml"
    config.write_text('[interface]\nlisten_port = 9000\n\n[network]\nnetwork = "old"\n\n'
                      '[[peer]]\nname = "bob"\npublic_key = '
                      '"B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="\n')
    write_config(config, network_section(FP, "corp", ["http://10.0.0.1:4568"],
                                         tmp_path / "network"), None)
    s = load(config)
    assert s.network.network == FP and s.network.name == "corp"
    assert s.network.directory == ("http://10.0.0.1:4568",)
    assert s.network.state == tmp_path / "network" and s.listen_port == 9000
    assert [p.name for p in s.peers] == ["bob"]
    assert not any("network" in w for w in config_warnings(s))    # phantomd acts on it now
    text = config.read_text()
    assert text.count("[network]") == 1 and '"old"' not in text


@pytest.mark.parametrize("body,key", [
    ('network = "%s"\nname = "corp"\ndirectory = ["http://d"]\nstate = "s"\nextra = 1' % FP,
     "network.extra"),
    ('network = "NOTAFP"\nname = "corp"\ndirectory = ["http://d"]\nstate = "s"',
     "network.network"),
    ('network = "%s"\nname = "Corp!"\ndirectory = ["http://d"]\nstate = "s"' % FP,
     "network.name"),
    ('network = "%s"\nname = "corp"\ndirectory = []\nstate = "s"' % FP, "network.directory"),
    ('network = "%s"\nname = "corp"\ndirectory = ["ftp://d"]\nstate = "s"' % FP,
     "network.directory[0]"),
    ('network = "%s"\nname = "corp"\ndirectory = ["http://d"]' % FP, "network.state"),
])
def test_a_bad_network_section_names_its_key(tmp_path, body, key):
    config = tmp_path / "phantom.toml"
    config.write_text("[network]\n" + body + "\n")
    with pytest.raises(ConfigError) as exc:
        load(config)
    assert exc.value.key == key
