"""The hostile-datagram sender of tests/e2e/dataplane/test_blast.py: phantomlab/blaster.c,
compiled on first use with the C compiler the extension build needs.

Python would be too slow for 10^6 datagrams in seconds; the C sender builds
each datagram with a seeded xorshift generator and sends them with
sendmmsg(2) in batches of 512 on a blocking socket, optionally paced to a
rate.  Classes (drawn at random with weights 25/15/25/10/25):

random     random bytes of random length; half of them start with a valid
           header (type 1-4 and three zero bytes), and half of those (types
           1-3) have the exact size of their handshake type
truncated  a captured real packet (handshake or transport) cut short
bitflip    a captured real packet with 1-3 bits flipped
replay     a captured real packet sent again unchanged
forged     a transport packet with the receiver index of the live session,
           a random counter and a payload carrying a plaintext marker
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("blaster.c")
SLOT = 256


def build() -> Path:
    """The compiled sender (cached by source hash in the temp directory)."""
    src = SOURCE.read_bytes()
    out = Path(tempfile.gettempdir()) / ("phantom-blaster-%s" % hashlib.sha256(src).hexdigest()[:16])
    if not out.exists():
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise RuntimeError("no C compiler for phantomlab/blaster.c")
        tmp = out.with_suffix(".tmp%d" % os.getpid())
        subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], check=True)
        os.replace(tmp, out)
    return out


def write_templates(path: Path, handshakes: list[bytes], transports: list[bytes]) -> int:
    n = 0
    with open(path, "wb") as f:
        for kind, group in ((0, handshakes), (1, transports)):
            for p in group:
                if 0 < len(p) <= SLOT:
                    f.write(struct.pack("<HB", len(p), kind) + bytes(p))
                    n += 1
    return n


def blast(host, dest: tuple, count: int, rate: float, handshakes: list[bytes],
          transports: list[bytes], index: int, marker: bytes, workdir: Path, seed: int = 1) -> dict:
    """Run the sender in ``host``'s namespace; returns its JSON report."""
    binary = build()
    templates = workdir / "blast-templates.bin"
    assert write_templates(templates, handshakes, transports) > 0
    argv = [str(binary), dest[0], str(dest[1]), str(count), str(rate or 0), str(seed), str(index),
            marker.decode("ascii"), str(templates)]
    timeout = 120 + (count / rate if rate else count / 50_000)
    out = host.run(argv, timeout=timeout)
    return json.loads(out.stdout)
