"""What the privileged helper keeps, and how it sheds the rest.

Started as root by phantomd (before phantomd's own lock-down), the helper:

1. empties its capability bounding set except ``CAP_NET_ADMIN`` (root still
   holds ``CAP_SETPCAP`` here);
2. with ``PR_SET_KEEPCAPS``, drops its supplementary groups and switches to
   the daemon's ``--user`` (uid and gid, default ``nobody``): it owns no
   root file any more, so file permissions stop it like any other user;
3. sets its permitted, effective and inheritable sets to ``CAP_NET_ADMIN``
   alone and raises it in the ambient set, so the two programs it runs
   (``nft``, ``resolvectl``, by absolute path, with a fixed environment)
   get that one capability and nothing else; keepcaps off again;
4. ``PR_SET_NO_NEW_PRIVS`` (no setuid or file capability can add anything
   on exec), ``PR_SET_DUMPABLE`` 0 (the daemon, although the same uid,
   cannot ptrace it or read its memory through /proc), and the seccomp
   filter of :mod:`phantom.privsep.seccomp`;
5. checks the result in ``/proc/self/status`` and refuses to run otherwise.

A helper started by a daemon that is not root (a daemon given
``CAP_NET_ADMIN`` by its service manager, say) keeps its uid and narrows
what it has the same way, as far as it can without ``CAP_SETPCAP``.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..privileges import CAPABILITY_VERSION_3, CapData, CapHeader
from .protocol import CAP_NET_ADMIN
from . import seccomp

PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
NET_ADMIN_MASK = 1 << CAP_NET_ADMIN


class SandboxError(OSError):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int, what: str, arg3: int = 0, ok=()) -> int:
    r = _libc.prctl(option, arg, arg3, 0, 0)
    if r < 0:
        e = ctypes.get_errno()
        if e in ok:
            return r
        raise SandboxError(e, "prctl(%s): %s" % (what, os.strerror(e)))
    return r


def _capget() -> tuple:
    hdr, data = CapHeader(CAPABILITY_VERSION_3, 0), (CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise SandboxError(e, "capget: %s" % os.strerror(e))
    join = lambda f: getattr(data[0], f) | (getattr(data[1], f) << 32)   # noqa: E731
    return join("effective"), join("permitted"), join("inheritable")


def _capset(eff: int, prm: int, inh: int) -> None:
    hdr, data = CapHeader(CAPABILITY_VERSION_3, 0), (CapData * 2)()
    for i in (0, 1):
        data[i].effective = (eff >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (prm >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inh >> (32 * i)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise SandboxError(e, "capset: %s" % os.strerror(e))


def status() -> dict:
    with open("/proc/self/status") as f:
        return dict((k, v.strip()) for k, v in (line.split(":", 1) for line in f if ":" in line))


def confine(uid, gid) -> dict:
    """Steps 1-5 of the module's text; returns what /proc/self/status says
    afterwards (Cap*, Uid, Gid, NoNewPrivs, Seccomp).  SandboxError when a
    step fails or the result is not what it should be."""
    root = os.geteuid() == 0
    _eff, prm, _inh = _capget()
    keep = NET_ADMIN_MASK & prm
    if root or prm & (1 << 8):                        # CAP_SETPCAP: empty the bounding set but one
        for cap in range(64):
            if cap == CAP_NET_ADMIN:
                continue
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                e = ctypes.get_errno()
                if e == errno.EINVAL:                 # past the kernel's last capability
                    break
                raise SandboxError(e, "prctl(PR_CAPBSET_DROP, %d): %s" % (cap, os.strerror(e)))
    if root and uid is not None:
        _prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    _capset(keep, keep, keep)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL", ok=(errno.EINVAL,))
    if keep:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, "PR_CAP_AMBIENT_RAISE", CAP_NET_ADMIN, ok=(errno.EINVAL,))
    _prctl(PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    filtered = seccomp.install()
    st = status()
    problems = []
    for k in ("CapPrm", "CapEff", "CapInh"):
        if int(st[k], 16) != keep:
            problems.append("%s %s" % (k, st[k]))
    if int(st["CapAmb"], 16) & ~NET_ADMIN_MASK:
        problems.append("CapAmb %s" % st["CapAmb"])
    if root and int(st["CapBnd"], 16) != NET_ADMIN_MASK:
        problems.append("CapBnd %s" % st["CapBnd"])
    if root and uid is not None:
        if {int(x) for x in st["Uid"].split()} != {uid} or {int(x) for x in st["Gid"].split()} != {gid}:
            problems.append("Uid %s Gid %s" % (st["Uid"], st["Gid"]))
        if st.get("Groups", ""):
            problems.append("Groups %s" % st["Groups"])
    if st.get("NoNewPrivs") != "1":
        problems.append("NoNewPrivs %s" % st.get("NoNewPrivs"))
    if filtered and st.get("Seccomp") != "2":
        problems.append("Seccomp %s" % st.get("Seccomp"))
    if problems:
        raise SandboxError("the privileged helper did not confine itself: " + ", ".join(problems))
    return {k: st.get(k) for k in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                                   "NoNewPrivs", "Seccomp")}
