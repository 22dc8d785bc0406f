"""A small seccomp filter for the privileged helper (classic BPF, no library).

The helper keeps CAP_NET_ADMIN; this filter narrows what that process (and
the ``nft``/``resolvectl`` it runs, which inherit the filter) can reach in
the kernel besides its job:

* ``socket()`` only for ``AF_UNIX`` (D-Bus, its own socket pair) and
  ``AF_NETLINK`` (routes, rules, nftables); ``socketpair()`` only for
  ``AF_UNIX``: no IP socket, no packet socket (``EAFNOSUPPORT``);
* a deny list of calls the job never needs and that are kernel attack
  surface or would widen what a compromised helper could do (``EPERM``):
  ptrace and process_vm_*, mount and the new mount API, namespaces
  (unshare, setns), modules, kexec, bpf, perf_event_open, userfaultfd,
  io_uring, keyrings, open_by_handle_at, chroot/pivot_root, swap, reboot,
  acct, quotactl, personality;
* any other architecture's calls (i386 on x86-64) and x32 calls: killed.

x86-64 and aarch64 only (the numbers below come from the kernel headers;
tests/unit/privsep/test_seccomp.py checks them against
/usr/include when the headers are there); elsewhere the helper runs
without the filter and says so.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
AF_UNIX, AF_NETLINK = 1, 16

DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
          "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "userfaultfd",
          "keyctl", "add_key", "request_key", "mount", "umount2", "pivot_root", "swapon", "swapoff",
          "reboot", "setns", "unshare", "open_by_handle_at", "io_uring_setup", "io_uring_enter",
          "io_uring_register", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
          "mount_setattr", "chroot", "acct", "quotactl", "personality")

SYSCALLS = {
    "x86_64": {
        "socket": 41, "socketpair": 53, "ptrace": 101, "personality": 135, "pivot_root": 155,
        "chroot": 161, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
        "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179, "kexec_load": 246,
        "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
        "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
        "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442,
    },
    "aarch64": {
        "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51, "quotactl": 60, "acct": 89,
        "personality": 92, "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
        "ptrace": 117, "reboot": 142, "socket": 198, "socketpair": 199, "add_key": 217,
        "request_key": 218, "keyctl": 219, "swapon": 224, "swapoff": 225, "perf_event_open": 241,
        "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271,
        "finit_module": 273, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442,
    },
}

# classic BPF
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
X32_BIT = 0x40000000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16


def build(arch: str) -> list:
    """The filter for ``arch`` as (code, jt, jf, k) tuples."""
    nrs = SYSCALLS[arch]
    denied = [nrs[n] for n in DENIED]
    # Layout: [arch check][nr checks ...][ALLOW][DENY][KILL][socket check][socketpair check]
    # (classic BPF jumps forward only: each check ends in its own returns)
    prog: list = []
    head = 3 + (1 if arch == "x86_64" else 0)
    checks = len(denied) + 2
    allow_at = head + checks
    deny_at = allow_at + 1
    kill_at = deny_at + 1
    sock_at = kill_at + 1
    pair_at = sock_at + 5

    def jump(here: int, target: int) -> int:
        off = target - here - 1
        assert 0 <= off < 256, (here, target)
        return off

    prog.append((_LD_W_ABS, 0, 0, _OFF_ARCH))
    prog.append((_JEQ_K, 0, jump(1, kill_at), AUDIT_ARCH[arch]))
    prog.append((_LD_W_ABS, 0, 0, _OFF_NR))
    if arch == "x86_64":
        prog.append((_JGE_K, jump(3, kill_at), 0, X32_BIT))
    for nr in denied:
        i = len(prog)
        prog.append((_JEQ_K, jump(i, deny_at), 0, nr))
    i = len(prog)
    prog.append((_JEQ_K, jump(i, sock_at), 0, nrs["socket"]))
    i = len(prog)
    prog.append((_JEQ_K, jump(i, pair_at), 0, nrs["socketpair"]))
    assert len(prog) == allow_at
    prog.append((_RET_K, 0, 0, RET_ALLOW))
    prog.append((_RET_K, 0, 0, RET_ERRNO | errno.EPERM))
    prog.append((_RET_K, 0, 0, RET_KILL_PROCESS))
    assert len(prog) == sock_at                       # socket(): AF_UNIX, AF_NETLINK
    prog.append((_LD_W_ABS, 0, 0, _OFF_ARG0))
    prog.append((_JEQ_K, 2, 0, AF_UNIX))
    prog.append((_JEQ_K, 1, 0, AF_NETLINK))
    prog.append((_RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT))
    prog.append((_RET_K, 0, 0, RET_ALLOW))
    assert len(prog) == pair_at                       # socketpair(): AF_UNIX
    prog.append((_LD_W_ABS, 0, 0, _OFF_ARG0))
    prog.append((_JEQ_K, 1, 0, AF_UNIX))
    prog.append((_RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT))
    prog.append((_RET_K, 0, 0, RET_ALLOW))
    return prog


def machine() -> str:
    return platform.machine()


def supported() -> bool:
    return machine() in SYSCALLS and struct.calcsize("P") == 8


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def install() -> bool:
    """Install the filter on the calling thread (no_new_privs must be set);
    False when this architecture has none.  OSError when the kernel refuses."""
    if not supported():
        return False
    prog = build(machine())
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p).value)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(PR_SET_SECCOMP): %s" % errno.errorcode.get(e, e))
    return True
