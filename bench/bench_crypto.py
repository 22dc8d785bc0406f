"""Microbenchmarks of the fast path (pytest-benchmark), and the transport
ciphers' table (a plain script).

    .venv/bin/python -m pytest bench/bench_crypto.py \
        --benchmark-only --benchmark-group-by=group -q
    .venv/bin/python bench/bench_crypto.py --runs 7      # the ciphers table (markdown)

The table: every transport cipher's seal+open round trip per 64, 1,400 and
8,192 bytes, timed in C without the GIL by the fast path's own per-packet
functions (``_testing.bench_cipher``: header, nonce from the counter, in
place): secretbox and AEGIS-256 (Phantom's suites) and ChaCha20-Poly1305
(WireGuard's) from libsodium and from OpenSSL's libcrypto; the median of
``--runs`` runs (min and max beside it), the load average before and after.

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
  cipher-<size>      each transport cipher (secretbox, aegis256, ChaCha20-
                     Poly1305 from libsodium and from OpenSSL), 2000 seal+open
                     round trips timed in C (extra_info.ns_per_packet).
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

_engine = pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")
_testing = pytest.importorskip("phantom.fastpath._testing", reason="phantom.fastpath._testing is not built")

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
    assert benchmark(_testing.seal_open_inplace, KEY, 1, buf, size)


@pytest.mark.parametrize("raw", [True, False], ids=["c-loop-raw", "c-loop-fastpath"])
@pytest.mark.parametrize("size", SIZES)
def test_seal_open_c_loop(benchmark, size, raw):
    """Per packet, timed in C: the pedantic result is seconds per 2000 round trips."""
    benchmark.group = "seal+open-%d" % size
    n = 2000
    elapsed = benchmark.pedantic(_testing.bench_seal_open, args=(size, n, raw),
                                 rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ns_per_packet"] = round(elapsed / n * 1e9, 1)


@pytest.mark.parametrize("name", _testing.BENCH_CIPHERS)
@pytest.mark.parametrize("size", SIZES)
def test_cipher_c_loop(benchmark, size, name):
    """One transport cipher, per packet, timed in C: seconds per 2000 round trips."""
    if name.endswith("openssl") and not _engine.chacha_openssl_ready():
        pytest.skip("no libcrypto.so.3")
    benchmark.group = "cipher-%d" % size
    n = 2000
    elapsed = benchmark.pedantic(_testing.bench_cipher, args=(name, size, n),
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
        self.engine = _engine.Forwarder(_engine.MODE_IDS["tun"], self.udp.fileno(), burst=burst)
        self.engine.add_peer(1)
        self.engine.set_routes([(32, bytes(4), 0, 1)])
        host, port = self.sink.getsockname()
        self.engine.set_endpoint(1, struct.pack("=H", socket.AF_INET)
                                 + struct.pack("!H4s8x", port, socket.inet_aton(host)))
        self.engine.install_keypair(1, 7, 8, KEY, KEY, time.monotonic(), True)
        self.worker = _engine.Worker(self.engine, self.udp.fileno(), self.dev.fileno(), False,
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
    assert _testing.fw_decide(tables.blob, 0, pkt, 1) == (0, -1, 1)
    loops = 100000
    elapsed = benchmark.pedantic(_testing.fw_bench, args=(tables.blob, 0, pkt, 1, loops),
                                 rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ns_per_packet"] = round(elapsed / loops * 1e9, 1)
    benchmark.extra_info["rules"] = n


# ------------------------------------------------------------------ the ciphers table
def cipher_table(runs: int = 7, sizes=(64, 1400, 8192), budget: float = 0.05) -> dict:
    """{(name, size): [ns per seal+open, one per run]}: each run times as many
    round trips as fit in about ``budget`` seconds, the ciphers interleaved
    so that a load change hits them all alike."""
    names = [n for n in _testing.BENCH_CIPHERS
             if not n.endswith("openssl") or _engine.chacha_openssl_ready()]
    iters = {}
    for name in names:
        for size in sizes:
            t = _testing.bench_cipher(name, size, 200) / 200
            iters[(name, size)] = max(200, int(budget / max(t, 1e-9)))
    out = {k: [] for k in iters}
    for _ in range(runs):
        for name in names:
            for size in sizes:
                n = iters[(name, size)]
                out[(name, size)].append(_testing.bench_cipher(name, size, n) / n * 1e9)
    return out


def _median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def main(argv=None) -> int:
    import argparse
    import platform
    import sys

    from phantom import crypto as _c, libcrypto
    from phantom.dataplane import ciphers

    ap = argparse.ArgumentParser(description="seal+open per packet for every transport cipher")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", default="64,1400,8192")
    args = ap.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    load0 = os.getloadavg()
    res = cipher_table(args.runs, sizes)
    load1 = os.getloadavg()
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    label = {"secretbox": "secretbox (XSalsa20-Poly1305, libsodium)",
             "aegis256": "AEGIS-256 (libsodium)",
             "chacha20poly1305-libsodium": "ChaCha20-Poly1305, libsodium",
             "chacha20poly1305-openssl": "ChaCha20-Poly1305, OpenSSL libcrypto"}
    print("`.venv/bin/python bench/bench_crypto.py --runs %d --sizes %s`" % (args.runs, args.sizes))
    print()
    print("%s; %d cores; %s; AES hardware (libsodium): %s; load average %.2f before, %.2f after"
          % (cpu or platform.processor(), os.cpu_count() or 0, libcrypto.version() or "no libcrypto",
             "yes" if _c.aes_hardware() else "no", load0[0], load1[0]))
    print()
    head = "| cipher | " + " | ".join("%d B" % s for s in sizes) + " |"
    print(head)
    print("|---|" + "---:|" * len(sizes))
    names = sorted({n for n, _ in res}, key=_testing.BENCH_CIPHERS.index)
    for name in names:
        cells = []
        for size in sizes:
            xs = res[(name, size)]
            med = _median(xs)
            cells.append("%s ns (%.0f-%.0f), %.2f GB/s" % (format(round(med), ","), min(xs), max(xs),
                                                             2 * size / med))
        print("| %s | %s |" % (label.get(name, name), " | ".join(cells)))
    print()
    print("seal+open of one packet, in place, in C without the GIL; median of %d runs (min-max); "
          "GB/s counts the bytes sealed and opened." % args.runs)
    pol = ciphers.decide_chacha()
    print("Start-up choice for WireGuard peers here: %s (%s)." % (pol.implementation, pol.decided_by))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
