"""Drop accounting when the control plane falls behind (issue 10).

The fast path hands handshake messages to the control plane through a
bounded event queue (FP_EVENT_QUEUE).  A message that finds it full is
dropped -- and must be counted, as ``control_overflow``, so that the drop
counters account for every datagram (tests/e2e/dataplane/test_blast.py).  The reference
path hands them over synchronously and never overflows; the reason name is
the same on both paths (one Drop enum).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from phantom import wire
from phantom.constants import Tunables
from phantom.dataplane import fast
from phantom.dataplane.types import Drop, Mode
from tests.support.datapath import Recorder

_engine = pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")

QUEUE = 4096                 # FP_EVENT_QUEUE in phantom/fastpath/_engine.pxd


def _udp(blocking=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    s.bind(("127.0.0.1", 0))
    s.setblocking(blocking)
    return s


def test_drop_reasons_are_one_list_for_both_paths():
    assert Drop.CONTROL_OVERFLOW.name.lower() == "control_overflow"
    assert _engine.DROP_COUNT == len(Drop)


def test_fast_path_counts_handshake_messages_that_find_the_queue_full():
    async def main():
        udp, test, app, src = _udp(), _udp(), _udp(), _udp(blocking=True)
        events = Recorder()
        dp = fast.FastDataPath(Mode.TEST, udp, None, test, events=events,
                               tunables=Tunables(), test_deliver=app.getsockname())
        try:
            dp.add_peer(1, [])
            dp.set_test_peer(1)
            dp.start()
            n = QUEUE + 1000
            init = b"\x01\0\0\0" + os.urandom(wire.INITIATION_SIZE - 4)
            # The loop does not run while we send (no await): nothing drains the
            # queue, the worker thread fills it and must count the rest.
            for i in range(n):
                src.sendto(init, udp.getsockname())
                if i % 64 == 63:
                    time.sleep(0.002)        # let the worker keep up with the socket
            deadline = time.monotonic() + 10
            while dp.global_drops()["control_overflow"] < n - QUEUE and time.monotonic() < deadline:
                time.sleep(0.01)
            assert dp.global_drops()["control_overflow"] == n - QUEUE
            deadline = time.monotonic() + 10
            while len(events.control) < QUEUE and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(events.control) == QUEUE
            assert sum(dp.global_drops().values()) == n - QUEUE
            # drained: the next one gets through again
            src.sendto(init, udp.getsockname())
            deadline = time.monotonic() + 5
            while len(events.control) < QUEUE + 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(events.control) == QUEUE + 1
        finally:
            dp.close()
            for s in (udp, test, app, src):
                s.close()

    asyncio.run(asyncio.wait_for(main(), 60))
