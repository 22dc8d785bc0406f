"""Microbenchmarks of the fast path (pytest-benchmark).

    .venv/bin/python -m pytest bench/bench_crypto.py \
        --benchmark-only --benchmark-group-by=group -q

Groups:
  seal+open-<size>   one seal and one open of a <size>-byte packet:
                       * ``cffi``: libsodium's crypto_secretbox_easy/open_easy
                         called directly through cffi (PyNaCl's libsodium) on
                         preallocated buffers -- the "raw libsodium" baseline;
                       * ``fastpath``: the fast path's in-place per-packet code
                         (header, counter nonce, seal and open in place), one
                         nogil call per round trip;
                       * ``c-loop-raw`` / ``c-loop-fastpath``: the same two,
                         timed inside C over many iterations (no Python call per
                         packet); the ratio of these two is the fast path's
                         own per-packet overhead.
  batch-loop         the worker's whole outbound pipeline: IP packets written
                     into a socketpair standing in for the TUN device, routed,
                     sealed, sent with sendmmsg to a UDP sink on loopback;
                     edge- vs level-triggered epoll.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import pytest

from phantom import crypto, wire

_fastpath = pytest.importorskip("phantom._fastpath")

SIZES = [64, 1400, 8192]
KEY = bytes(range(32))
OFFSET = wire.TRANSPORT_PAYLOAD_OFFSET


@pytest.mark.parametrize("size", SIZES)
def test_seal_open_cffi(benchmark, size):
    benchmark.group = "seal+open-%d" % size
    ffi, lib = crypto.ffi, crypto.lib
    m = ffi.new("unsigned char[]", size)
    c = ffi.new("unsigned char[]", size + 16)
    n = ffi.new("unsigned char[]", 24)
    k = ffi.new("unsigned char[]", KEY)
    seal, open_ = lib.crypto_secretbox_easy, lib.crypto_secretbox_open_easy

    def once():
        seal(c, m, size, n, k)
        return open_(m, c, size + 16, n, k)
    assert benchmark(once) == 0


@pytest.mark.parametrize("size", SIZES)
def test_seal_open_fastpath(benchmark, size):
    benchmark.group = "seal+open-%d" % size
    buf = bytearray(OFFSET + size)
    assert benchmark(_fastpath.seal_open_inplace, KEY, 1, buf, size)


@pytest.mark.parametrize("raw", [True, False], ids=["c-loop-raw", "c-loop-fastpath"])
@pytest.mark.parametrize("size", SIZES)
def test_seal_open_c_loop(benchmark, size, raw):
    """Per packet, timed in C: the pedantic result is seconds per 2000 round trips."""
    benchmark.group = "seal+open-%d" % size
    n = 2000
    elapsed = benchmark.pedantic(_fastpath.bench_seal_open, args=(size, n, raw),
                                 rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ns_per_packet"] = round(elapsed / n * 1e9, 1)


# ----------------------------------------------------------------- the batch loop
def _ipv4(dst: bytes, n: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, n, 0, 0, 64, 17, 0, bytes([10, 9, 0, 1]), dst)
    return hdr + bytes(n - len(hdr))


class _Loop:
    """One worker in TUN mode over a socketpair "device", sealing to a UDP sink."""

    def __init__(self, edge: bool, burst: int = 64):
        self.app, self.dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.app, self.dev):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.dev.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sink.bind(("127.0.0.1", 0))
        self.engine = _fastpath.Engine(_fastpath.MODE_IDS["tun"], self.udp.fileno(), burst=burst)
        self.engine.add_peer(1)
        self.engine.set_routes([(32, bytes(4), 0, 1)])
        host, port = self.sink.getsockname()
        self.engine.set_endpoint(1, struct.pack("=H", socket.AF_INET)
                                 + struct.pack("!H4s8x", port, socket.inet_aton(host)))
        self.engine.install_keypair(1, 7, 8, KEY, KEY, time.monotonic(), True)
        self.worker = _fastpath.Worker(self.engine, self.udp.fileno(), self.dev.fileno(), False,
                                       burst=burst, edge=edge)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def push(self, packets):
        """Write packets into the device, wait until all were sent; drain the sink."""
        target = self.engine.counters(1)["tx_packets"] + len(packets)
        drained = 0
        for p in packets:
            self.app.send(p)
        deadline = time.monotonic() + 10
        while self.engine.counters(1)["tx_packets"] + self.engine.global_drops()[13] < target:
            if time.monotonic() > deadline:
                raise RuntimeError("batch loop stalled")
            try:
                while True:
                    self.sink.recv(70000, socket.MSG_DONTWAIT)
                    drained += 1
            except BlockingIOError:
                pass
        return drained

    def close(self):
        self.worker.stop()
        self.thread.join(5)
        for s in (self.app, self.dev, self.udp, self.sink):
            s.close()


@pytest.mark.parametrize("edge", [True, False], ids=["edge-triggered", "level-triggered"])
@pytest.mark.parametrize("size", [64, 1400])
def test_batch_loop(benchmark, edge, size):
    """256 packets through the outbound pipeline per round (result: seconds per round)."""
    benchmark.group = "batch-loop-%d" % size
    loop = _Loop(edge)
    packets = [_ipv4(bytes([10, 9, 0, 2]), size)] * 256
    try:
        benchmark.pedantic(loop.push, args=(packets,), rounds=20, iterations=1, warmup_rounds=2)
        stats = loop.worker.stats()
        benchmark.extra_info.update(stats)
        benchmark.extra_info["packets_per_batch"] = round(
            stats["inner_packets"] / max(1, stats["inner_batches"]), 1)
    finally:
        loop.close()


# ----------------------------------------------------------- firewall classification
def _tcp_syn(dport: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    return ip + struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def _rules(n: int, kind: str):
    from phantom.dataplane.firewall import compile_rules, parse_rules
    if kind == "ports":
        rules = [{"direction": "in", "proto": "tcp", "dst_port": p, "action": "drop"}
                 for p in range(1, n + 1)]
    else:
        rules = [{"direction": "in", "proto": "tcp", "action": "drop",
                  "cidr": "192.168.%d.%d/32" % (i // 250, i % 250)} for i in range(n)]
    return compile_rules(parse_rules({"rule": rules}, {}))


@pytest.mark.parametrize("kind", ["ports", "cidrs"])
@pytest.mark.parametrize("n", [1, 10, 100])
def test_classify_c(benchmark, n, kind):
    """The fast path's C classifier on the compiled tables (same rule sets and
    packet as bench/bench_classify.py: an inbound TCP SYN no rule matches),
    timed in C over 100 000 packets; extra_info.ns_per_packet is the figure."""
    benchmark.group = "classify-%s" % kind
    tables = _rules(n, kind)
    pkt = _tcp_syn(8080)
    assert _fastpath.fw_decide(tables.blob, 0, pkt, 1) == (0, -1, 1)
    loops = 100000
    elapsed = benchmark.pedantic(_fastpath.fw_bench, args=(tables.blob, 0, pkt, 1, loops),
                                 rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ns_per_packet"] = round(elapsed / loops * 1e9, 1)
    benchmark.extra_info["rules"] = n
