"""Scan a live process's memory for a byte string (root: /proc/PID/mem).

Used to prove that a relay never holds a relayed tunnel payload in
plaintext.  Scanned: every readable mapping that is anonymous ([heap],
[stack], [anon:...], unnamed) or writable (a file's .data/.bss, memfds);
skipped: [vvar]/[vsyscall]/[vvar_vclock], unreadable mappings and
file-backed read-only ones (code, rodata: they hold what is on disk).  A
region that fails to read (EIO: guard pages, device memory) is counted in
``failed`` and skipped; the scan is bounded in bytes and in time and says
when it was cut short (``complete``), so a caller can refuse a partial scan.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

CHUNK = 1 << 20
SKIP_NAMES = {"[vvar]", "[vsyscall]", "[vvar_vclock]"}


@dataclass
class Region:
    start: int
    end: int
    perms: str
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class ScanResult:
    pid: int
    hits: list = field(default_factory=list)       # (address, mapping path)
    regions: int = 0                               # mappings scanned
    skipped: int = 0                               # mappings not eligible
    failed: int = 0                                # mappings (or parts) unreadable
    scanned: int = 0                               # bytes read
    complete: bool = True                          # False: a bound cut the scan short

    @property
    def found(self) -> bool:
        return bool(self.hits)


def parse_maps(text: str) -> list[Region]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        out.append(Region(int(lo, 16), int(hi, 16), parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def eligible(r: Region) -> bool:
    if "r" not in r.perms or r.path in SKIP_NAMES:
        return False
    anonymous = r.path == "" or r.path.startswith("[")
    return anonymous or "w" in r.perms


def scan(pid: int, needle: bytes, *, max_bytes: int = 4 << 30, timeout: float = 60.0,
         max_hits: int = 16) -> ScanResult:
    """Find ``needle`` in process ``pid``'s eligible mappings."""
    if not needle:
        raise ValueError("empty needle")
    res = ScanResult(pid)
    with open("/proc/%d/maps" % pid) as f:
        regions = parse_maps(f.read())
    deadline = time.monotonic() + timeout
    keep = len(needle) - 1                          # overlap: a match across a chunk boundary
    fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
    try:
        for r in regions:
            if not eligible(r):
                res.skipped += 1
                continue
            res.regions += 1
            tail = b""
            addr = r.start
            while addr < r.end:
                if res.scanned >= max_bytes or time.monotonic() > deadline:
                    res.complete = False
                    return res
                n = min(CHUNK, r.end - addr, max_bytes - res.scanned)
                try:
                    data = os.pread(fd, n, addr)
                except OSError:                     # EIO/EFAULT: skip the rest of this region
                    res.failed += 1
                    break
                if not data:
                    res.failed += 1
                    break
                res.scanned += len(data)
                buf = tail + data
                i = buf.find(needle)
                while i >= 0:
                    res.hits.append((addr - len(tail) + i, r.path))
                    if len(res.hits) >= max_hits:
                        return res
                    i = buf.find(needle, i + 1)
                tail = buf[-keep:] if keep else b""
                addr += len(data)
    finally:
        os.close(fd)
    return res


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (via /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tids:
            try:
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def scan_tree(pid: int, needle: bytes, **kw) -> list[ScanResult]:
    """scan() ``pid`` and its descendants."""
    out = []
    for p in descendants(pid):
        try:
            out.append(scan(p, needle, **kw))
        except FileNotFoundError:                   # exited meanwhile
            pass
    return out
