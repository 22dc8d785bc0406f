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

# Each call's number on x86-64 and on aarch64, in that order.
_NUMBERS = {
    "socket": (41, 198), "socketpair": (53, 199), "ptrace": (101, 117), "personality": (135, 92),
    "pivot_root": (155, 41), "chroot": (161, 51), "acct": (163, 89), "mount": (165, 40),
    "umount2": (166, 39), "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142),
    "init_module": (175, 105), "delete_module": (176, 106), "quotactl": (179, 60),
    "kexec_load": (246, 104), "add_key": (248, 217), "request_key": (249, 218),
    "keyctl": (250, 219), "unshare": (272, 97), "perf_event_open": (298, 241),
    "open_by_handle_at": (304, 265), "setns": (308, 268), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "finit_module": (313, 273), "kexec_file_load": (320, 294),
    "bpf": (321, 280), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442),
}
SYSCALLS = {arch: {name: nrs[i] for name, nrs in _NUMBERS.items()}
            for i, arch in enumerate(("x86_64", "aarch64"))}

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
