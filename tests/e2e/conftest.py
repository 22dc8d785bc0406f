"""Fixtures shared by the end-to-end tiers."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def etc_netns():
    """/etc/netns/<ns>/resolv.conf files (what `ip netns exec` mounts over
    /etc/resolv.conf), removed afterwards."""
    made = []
    parent = Path("/etc/netns")
    made_parent = not parent.exists()

    def write(host, text):
        d = parent / host.ns.name                 # the namespace's name is this run's own
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(text)
        made.append(d)

    yield write
    for d in made:
        (d / "resolv.conf").unlink(missing_ok=True)
        d.rmdir()
    if made_parent:
        try:
            parent.rmdir()
        except OSError:
            pass


@pytest.fixture
def public_dir():
    """A directory the unprivileged daemon can read its config from (it
    re-reads the file after dropping to nobody; pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="phantom-public-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
