"""phantomlab/memscan.py: the process memory scanner the relay tests rely on."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from phantomlab import memscan

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reads /proc/PID/mem of another process")

# A child that reads a needle from stdin (so it is in no argv or file), keeps
# it in a bytearray and in a page-aligned anonymous mapping straddling a page
# boundary, says "ready", and waits.
HOLDER = r"""
import ctypes, mmap, sys
needle = bytes.fromhex(sys.stdin.readline().strip())
kept = bytearray(needle[::-1])[::-1] if needle else bytearray()
m = mmap.mmap(-1, 2 * mmap.PAGESIZE)
off = mmap.PAGESIZE - len(needle) // 2
m[off:off + len(needle)] = needle
sys.stdout.write("ready %d\n" % (ctypes.addressof(ctypes.c_char.from_buffer(m)) + off))
sys.stdout.flush()
sys.stdin.readline()
"""


@pytest.fixture
def holder():
    procs = []

    def start(needle: bytes):
        p = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        p.stdin.write(needle.hex() + "\n")
        p.stdin.flush()
        line = p.stdout.readline().split()
        assert line[0] == "ready"
        return p, int(line[1])

    yield start
    for p in procs:
        p.kill()
        p.wait(5)


def test_parse_maps_and_eligibility():
    text = """\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 1234   /usr/bin/python3.12
55d0c0021000-55d0c0300000 r-xp 00021000 08:01 1234   /usr/bin/python3.12
55d0c0500000-55d0c0510000 rw-p 00500000 08:01 1234   /usr/bin/python3.12
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0      [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 ---p 00000000 00:00 0
7f0000200000-7f0000201000 rw-s 00000000 00:01 99     /memfd:ring (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0      [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0      [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""
    rs = memscan.parse_maps(text)
    assert len(rs) == 11
    assert rs[3].path == "[heap]" and rs[3].size == 0x1000000
    assert rs[4].path == ""
    assert [memscan.eligible(r) for r in rs] == [False, False, True, True, True, False, True, True,
                                                 False, True, False]


def test_finds_a_needle_held_by_another_process_across_a_chunk_boundary(holder, monkeypatch):
    needle = b"MEMSCAN-" + secrets.token_bytes(24)
    p, addr = holder(needle)
    res = memscan.scan(p.pid, needle)
    assert res.complete and res.found and res.regions > 0 and res.scanned > 0
    assert addr in [a for a, _ in res.hits]
    # page-sized chunks: the needle in the mmap straddles two of them
    monkeypatch.setattr(memscan, "CHUNK", 4096)
    res = memscan.scan(p.pid, needle)
    assert addr in [a for a, _ in res.hits]
    assert [r.pid for r in memscan.scan_tree(p.pid, needle) if r.found] == [p.pid]


def test_does_not_find_what_a_process_never_held(holder):
    p, _ = holder(b"")
    needle = b"MEMSCAN-" + secrets.token_bytes(24)
    res = memscan.scan(p.pid, needle)
    assert res.complete and not res.found and res.scanned > 1 << 20


def test_bounds_mark_the_scan_incomplete(holder):
    needle = b"MEMSCAN-" + secrets.token_bytes(24)
    p, _ = holder(b"")
    res = memscan.scan(p.pid, needle, max_bytes=1 << 16)
    assert not res.complete and res.scanned == 1 << 16
    res = memscan.scan(p.pid, needle, timeout=0)
    assert not res.complete
