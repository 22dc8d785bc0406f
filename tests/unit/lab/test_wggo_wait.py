"""phantomlab.wggo.wait_listening: wireguard-go's control socket counts as
ready only once it accepts a connection.  Its file exists from bind() on,
and a stock `wg` that connects before listen() unlinks it as stale, so the
old wait (the file exists) let tests run `wg set` into that window."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from phantomlab.namespaces import RigError
from phantomlab.wggo import wait_listening

# bind, then listen only 0.4 s later (wireguard-go's window, made wide)
SLOW_SERVER = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sys.argv[1])
    time.sleep(0.4)
    s.listen(4)
    conn, _ = s.accept()
    time.sleep(5)
""")


def test_the_wait_ends_only_when_the_socket_listens(tmp_path):
    path = tmp_path / "wgx.sock"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(path)])
    try:
        wait_listening(path, proc, 5.0, "slow server")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))               # would be ECONNREFUSED between bind and listen
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_exits_first_is_an_error(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RigError, match=r"exited \(3\)"):
        wait_listening(tmp_path / "none.sock", proc, 5.0, "gone")
