"""The helper's seccomp filter: the syscall numbers against the kernel
headers (when installed), the program's shape, and, in a child process,
that it does what it says (no IP socket, netlink and AF_UNIX still open,
a denied call fails with EPERM)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from phantom.privsep import seccomp

HEADERS = {"x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
           "aarch64": "/usr/include/asm-generic/unistd.h"}


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_syscall_numbers_match_the_kernel_headers(arch):
    path = Path(HEADERS[arch])
    if arch != seccomp.machine():
        pytest.skip("the installed headers are this machine's (%s)" % seccomp.machine())
    if not path.exists():
        pytest.skip("%s not installed" % path)
    nrs = {m.group(1): int(m.group(2)) for m in
           re.finditer(r"#define __NR_(\w+)\s+(\d+)", path.read_text())}
    wrong = {n: (v, nrs.get(n)) for n, v in seccomp.SYSCALLS[arch].items() if nrs.get(n) != v}
    assert wrong == {}


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_every_denied_call_has_a_number_and_the_jumps_stay_inside(arch):
    assert set(seccomp.DENIED) <= set(seccomp.SYSCALLS[arch])
    prog = seccomp.build(arch)
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code == 0x15 or code == 0x35:                        # conditional jumps
            assert i + 1 + max(jt, jf) < len(prog)
    assert prog[-1] == (0x06, 0, 0, seccomp.RET_ALLOW)


CHILD = r"""
import ctypes, errno, os, socket, sys
from phantom.privsep import seccomp
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                          # PR_SET_NO_NEW_PRIVS
assert seccomp.install()
out = []
for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET):
    try:
        socket.socket(fam, socket.SOCK_DGRAM).close(); out.append("open")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
r = libc.unshare(0x40000000)                                    # CLONE_NEWNET
out.append(errno.errorcode[ctypes.get_errno()] if r else "unshared")
print(" ".join(out))
"""


@pytest.mark.skipif(not seccomp.supported(), reason="no filter for this architecture")
def test_the_filter_in_a_child_process():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30,
                         cwd=str(Path(__file__).resolve().parents[3]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["EAFNOSUPPORT", "EAFNOSUPPORT", "EAFNOSUPPORT", "EPERM"]
