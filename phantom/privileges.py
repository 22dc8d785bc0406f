"""Dropping root once the devices and sockets are open, in two steps.

The capability bounding set, the inheritable set, keepcaps and
``no_new_privs`` are **per thread**; a new thread copies them from the thread
that creates it.  Only the uid/gid change reaches threads that already exist
(glibc's setxid broadcast runs ``setresuid``/``setresgid``/``setgroups`` on
every thread).  So the drop is split:

1. :func:`lock_down`, while the process is provably single-threaded (it
   refuses otherwise, naming the threads): keepcaps off, the ambient and
   inheritable sets cleared, the bounding set emptied, ``PR_SET_NO_NEW_PRIVS``.
   The effective and permitted sets are untouched, so the process can still
   bind sockets and open files as root, but any exec from now on (and any
   thread created from now on) gets no capability back.  Helpers that need
   root (``ip``) must run before this step.
2. :func:`switch_user`, later, once the listeners are bound: no supplementary
   groups, ``setresgid``/``setresuid`` to ``--user`` (which, keepcaps being
   off, clears the permitted, effective and ambient sets of every thread),
   then :func:`verify_dropped` checks every task in ``/proc/self/task``
   and raises :class:`PrivilegeError` if one still holds anything.

:func:`drop_privileges` does both at once (for a process with one thread).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import pwd

log = logging.getLogger("phantom.privileges")

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
DEFAULT_USER = "nobody"
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")

CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(OSError):
    pass


# capget(2)/capset(2)'s header and data (two of them: capabilities 0-31, 32-63);
# the privileged helper's sandbox (privsep/sandbox.py) uses them too
class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _prctl(libc, option: int, arg: int, what: str) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise PrivilegeError(e, "prctl(%s) failed: %s" % (what, os.strerror(e)))


def resolve_user(user: str | None):
    """The passwd entry of ``user`` (default ``nobody``) to switch to, or None
    when not running as root (nothing to drop).  Refuses unknown users and uid 0."""
    if os.geteuid() != 0:
        return None
    name = user or DEFAULT_USER
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError("no such user %r to drop privileges to (--user)" % name) from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise PrivilegeError("refusing to run as %r: its uid or gid is 0" % name)
    return pw


def _python_names() -> dict:
    """native thread id -> Python thread name, for threads started from Python."""
    import threading
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def _thread_name(tid: int, comm: str, names: dict) -> str:
    py = names.get(tid)
    return comm if not py or py == comm else "%s, Python thread %r" % (comm, py)


def threads() -> dict:
    """tid -> thread name (kernel comm, and the Python name when there is one),
    for every task of this process."""
    names = _python_names()
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/comm" % tid) as f:
                out[int(tid)] = _thread_name(int(tid), f.read().strip(), names)
        except FileNotFoundError:      # exited meanwhile
            continue
    return out


def _describe(tasks: dict) -> str:
    return ", ".join("%d (%s)" % (tid, name) for tid, name in sorted(tasks.items()))


def lock_down() -> None:
    """Step 1, as root and single-threaded: nothing can regain a capability
    from now on, in this thread or any thread it creates.  Idempotent."""
    tasks = threads()
    if len(tasks) != 1:
        raise PrivilegeError(
            "cannot lock down privileges: the process already has %d threads (%s); the bounding "
            "set and no_new_privs are per thread, so every thread must be started after the "
            "lock-down" % (len(tasks), _describe(tasks)))
    libc = _libc()
    _prctl(libc, PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 \
            and ctypes.get_errno() != errno.EINVAL:           # EINVAL: kernel without ambient caps
        e = ctypes.get_errno()
        raise PrivilegeError(e, "prctl(PR_CAP_AMBIENT_CLEAR_ALL) failed: %s" % os.strerror(e))
    _clear_inheritable(libc)
    for cap in range(64):              # empty the bounding set (needs CAP_SETPCAP: still root here)
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            e = ctypes.get_errno()
            if e == errno.EINVAL:      # past the kernel's last capability
                break
            raise PrivilegeError(e, "prctl(PR_CAPBSET_DROP, %d) failed: %s" % (cap, os.strerror(e)))
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    mine = _task_status("thread-self", None)
    if int(mine["CapBnd"], 16) != 0 or mine["NoNewPrivs"] != "1":
        raise PrivilegeError("lock-down did not take: CapBnd %s, NoNewPrivs %s"
                             % (mine["CapBnd"], mine["NoNewPrivs"]))
    log.debug("locked down: bounding set empty, no_new_privs set")


def _clear_inheritable(libc) -> None:
    hdr = CapHeader(CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise PrivilegeError(e, "capget failed: %s" % os.strerror(e))
    if not (data[0].inheritable or data[1].inheritable):
        return
    data[0].inheritable = data[1].inheritable = 0
    if libc.capset(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise PrivilegeError(e, "capset (clearing the inheritable set) failed: %s" % os.strerror(e))


def switch_user(pw) -> tuple[int, int]:
    """Step 2: become ``pw`` (from :func:`resolve_user`) in every thread, then
    check every thread.  Call :func:`lock_down` first."""
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("could regain root after dropping privileges")
    verify_dropped(pw.pw_uid, pw.pw_gid)
    log.info("dropped privileges to %s (uid %d, gid %d)", pw.pw_name, pw.pw_uid, pw.pw_gid)
    return pw.pw_uid, pw.pw_gid


def drop_privileges(user: str | None) -> tuple[int, int] | None:
    """Both steps at once, for a single-threaded process.  Returns the
    (uid, gid) switched to, or None when not root."""
    pw = resolve_user(user)
    if pw is None:
        return None
    lock_down()
    return switch_user(pw)


def _task_status(pid, tid) -> dict:
    path = "/proc/thread-self/status" if pid == "thread-self" else "/proc/%s/task/%s/status" % (pid, tid)
    with open(path) as f:
        return dict((k, v.strip()) for k, v in (line.split(":", 1) for line in f if ":" in line))


def verify_dropped(uid: int, gid: int) -> None:
    """Every task in /proc/self/task: real/effective/saved/fs uid ``uid`` and
    gid ``gid``, no supplementary groups, all five capability sets zero,
    NoNewPrivs 1.  Raises PrivilegeError listing every thread that differs."""
    bad = []
    names = _python_names()
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        try:
            f = _task_status("self", tid)
        except FileNotFoundError:      # exited meanwhile
            continue
        problems = []
        if {int(x) for x in f["Uid"].split()} != {uid}:
            problems.append("Uid %s" % f["Uid"].split())
        if {int(x) for x in f["Gid"].split()} != {gid}:
            problems.append("Gid %s" % f["Gid"].split())
        if f.get("Groups", ""):
            problems.append("Groups %s" % f["Groups"])
        problems += ["%s %s" % (k, f[k]) for k in CAP_FIELDS if int(f[k], 16) != 0]
        if f.get("NoNewPrivs") != "1":
            problems.append("NoNewPrivs %s" % f.get("NoNewPrivs"))
        if problems:
            bad.append("thread %s (%s): %s" % (tid, _thread_name(int(tid), f.get("Name", "?"), names),
                                               ", ".join(problems)))
    if bad:
        raise PrivilegeError("privilege drop incomplete, refusing to run: " + "; ".join(bad))


def capability_sets(pid: int | str = "self") -> dict:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, as ints."""
    caps = {}
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("Cap"):
                k, v = line.split(":", 1)
                caps[k] = int(v.strip(), 16)
    return caps
