"""A fast-path worker that dies takes the daemon down, unhealthy, with a
non-zero exit status (systemd's Restart=on-failure then starts a new one):
it used to be logged only, while the daemon went on reporting itself
healthy with no data plane.

The worker is broken for real (tests/support/faults.py: its epoll descriptor
is replaced, so its next epoll_wait fails as a fatal error would make it);
nothing in phantom/ is replaced.  The same end to end, phantomd in a
namespace exiting with status 1: tests/e2e/node/test_health_e2e.py."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from phantom import crypto
from phantom.constants import Tunables
from phantom.node.config import Settings
from phantom.dataplane.types import Mode
from tests.support import faults


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def test_a_dead_worker_stops_the_daemon_and_reports_it_unhealthy():
    from phantom.node.daemon import Daemon

    d = Daemon(Settings(mode=Mode.TEST, fast=True, tunables=Tunables(timer_tick=0.02)),
               bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()

    async def main():
        d.build()
        d.dp.start()
        ticker = asyncio.get_running_loop().create_task(d.executor.run_ticker(d.shutdown))
        try:
            assert faults.break_workers([d.udp.fileno(), d.test_sock.fileno()]) == 1
            try:
                await asyncio.wait_for(d.shutdown.wait(), 10)
            except asyncio.TimeoutError:
                pytest.fail("the worker died and the daemon went on as if nothing happened")
            st = d.controller.status()
            assert st["healthy"] is False and st["ready"] is False
            assert st["failure"].startswith("fast path worker phantom-fastpath-0 died:")
            assert "EINVAL" in st["failure"]
            assert b"phantom_healthy 0.0" in d.controller.metrics()
            assert d.exit_code == 1 and d.dp.failure() == st["failure"]
        finally:
            d.shutdown.set()
            await ticker
            d.dp.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        d.udp.close()
        d.test_sock.close()


def test_a_worker_stopped_by_close_is_no_failure():
    from phantom.node.daemon import Daemon

    d = Daemon(Settings(mode=Mode.TEST, fast=True), bytearray(crypto.x25519_private()))
    d.udp, d.test_sock = _udp(), _udp()

    async def main():
        d.build()
        d.dp.start()
        await asyncio.sleep(0.05)
        assert d.controller.status()["healthy"] is True and b"phantom_healthy 1.0" in d.controller.metrics()
        # the daemon's own families are all there (the collector reads the daemon's parts)
        assert b"phantom_crypto_info{" in d.controller.metrics()
        d.dp.close()
        await asyncio.sleep(0.1)
        assert d.dp.failure() is None and d.failure is None and not d.shutdown.is_set()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        d.udp.close()
        d.test_sock.close()


def test_sd_notify_reaches_a_path_or_an_abstract_socket(tmp_path):
    from phantom.node import sdnotify
    assert sdnotify.from_environment({}) is None
    env = {"NOTIFY_SOCKET": "relative/path"}
    assert sdnotify.from_environment(env) is None and "NOTIFY_SOCKET" not in env
    for address, text in ((str(tmp_path / "n.sock"), str(tmp_path / "n.sock")),
                          ("\0phantom-test-%d" % os.getpid(), "@phantom-test-%d" % os.getpid())):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        listener.settimeout(5)
        try:
            env = {"NOTIFY_SOCKET": text}
            n = sdnotify.from_environment(env)
            assert n is not None and "NOTIFY_SOCKET" not in env   # no helper notifies in our name
            assert n.send("READY=1", "STATUS=ready") is True
            assert listener.recv(100) == b"READY=1\nSTATUS=ready"
            n.close()
        finally:
            listener.close()
    # nobody listening: no notifier, and no error
    assert sdnotify.from_environment({"NOTIFY_SOCKET": str(tmp_path / "none.sock")}) is None
