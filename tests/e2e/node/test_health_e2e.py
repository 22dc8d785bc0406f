"""A fast-path worker that dies takes phantomd down (moved from
tests/unit/node/test_health.py, the one case there that needs root): started
in a namespace through tests/support/faultd.py, phantomd --fast in tun mode
exits with status 1 naming the failure, so that systemd's Restart=on-failure
restarts it."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from phantomlab.nodes import make_node
from phantomlab.templates import peer_entry, write_config
from tests.support import REPO


@pytest.mark.netns
def test_a_daemon_whose_worker_died_exits_with_status_1(two_hosts, daemon_factory, tmp_path):
    """End to end: phantomd --fast in tun mode, started through tests/support/faultd.py
    (phantomd plus a SIGUSR2 hook that breaks its workers), exits with status
    1 naming the failure, so that systemd's Restart=on-failure restarts it."""
    a, b = two_hosts.a, two_hosts.b
    na, nb = make_node(tmp_path, "n1", 1, a), make_node(tmp_path, "n2", 2, b)
    write_config(na, mode="tun", peers=[peer_entry(nb, mode="tun")])
    d = daemon_factory(a, ["--config", str(na.config), "--fast"], name="n1",
                       executable=[sys.executable, str(REPO / "tests" / "support" / "faultd.py")],
                       token_file=na.state_dir / "token")
    assert d.api("GET", "/status").body.get("healthy", True) is True
    os.killpg(d.pid, signal.SIGUSR2)
    seen = []
    deadline = time.monotonic() + 20
    while d.running and time.monotonic() < deadline:
        try:
            code, body = d.api("GET", "/status", timeout=1.0)
            if code == 200:
                seen.append(body.get("healthy"))
        except OSError:
            pass                       # shutting down: the API is gone
        time.sleep(0.02)
    assert not d.running, "the worker died and the daemon went on: %s" % d.log_tail()
    assert d.returncode == 1, d.log_tail()
    log = d.log_path.read_text()
    assert "faultd: broke 1 fast-path worker(s)" in log
    assert "the data plane stopped: fast path worker phantom-fastpath-0 died" in log
    # once unhealthy, never healthy again before the exit
    if False in seen:
        assert True not in seen[seen.index(False):]
