"""The data-path harness: two data paths in one process, in test-port mode,
joined by real loopback UDP sockets; keys are installed by hand, as the
control plane would.  Used by the contract tests (tests/contract/), which run
every case on both data paths."""

from __future__ import annotations

import asyncio
import socket
import time

from phantom.constants import Tunables
from phantom.dataplane.types import Mode


class Recorder:
    """DataPathEvents that remembers every call (the control plane's side)."""

    def __init__(self):
        self.control = []
        self.needed = []
        self.confirmed = []

    def control_packet(self, data, addr):
        self.control.append((data, addr))

    def handshake_needed(self, peer_id):
        self.needed.append(peer_id)

    def keypair_confirmed(self, peer_id, local_index):
        self.confirmed.append((peer_id, local_index))


def udp_socket(host="127.0.0.1", timeout=None, buffers=4 << 20):
    """A UDP socket bound to ``host`` on a free port: non-blocking without a
    ``timeout``; send and receive buffers with room for 64 KiB datagrams in flight."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if buffers:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, buffers)
    s.bind((host, 0))
    if timeout is None:
        s.setblocking(False)
    else:
        s.settimeout(timeout)
    return s


def datapath_class(impl):
    """The data path class of ``impl``: "reference" or "fast"."""
    if impl == "fast":
        from phantom.dataplane.fast import FastDataPath
        return FastDataPath
    from phantom.dataplane.reference import ReferenceDataPath
    return ReferenceDataPath


class Node:
    """One data path in test mode with its sockets and a local "app" socket."""

    def __init__(self, impl, tunables=None, mtu=1420):
        self.udp = udp_socket()
        self.test = udp_socket()
        self.app = udp_socket(timeout=2.0)
        self.events = Recorder()
        self.dp = datapath_class(impl)(Mode.TEST, self.udp, None, self.test, events=self.events,
                                       tunables=tunables or Tunables(),
                                       test_deliver=self.app.getsockname(), mtu=mtu)
        self.impl = impl

    @property
    def addr(self):
        return self.udp.getsockname()

    def send_app(self, payload: bytes):
        self.app.sendto(payload, self.test.getsockname())

    def recv_app(self, timeout=2.0):
        self.app.settimeout(timeout)
        return self.app.recvfrom(70000)[0]

    def close(self):
        self.dp.close()
        for s in (self.udp, self.test, self.app):
            s.close()


async def pair(impl_a, impl_b, tunables=None, mtu=1420):
    """Two started nodes peered with each other: peer 1 at a is b, peer 2 at b is a."""
    a, b = Node(impl_a, tunables, mtu), Node(impl_b, tunables, mtu)
    a.dp.add_peer(1, [])
    b.dp.add_peer(2, [])
    a.dp.set_test_peer(1)
    b.dp.set_test_peer(2)
    a.dp.set_endpoint(1, b.addr)
    b.dp.set_endpoint(2, a.addr)
    a.dp.start()
    b.dp.start()
    return a, b


async def until(cond, timeout=3.0):
    """Poll ``cond`` on the running loop until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        await asyncio.sleep(0.005)


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))
