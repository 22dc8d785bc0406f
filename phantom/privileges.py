"""Dropping root once the devices and sockets are open.

After :func:`drop_privileges` the process runs as an unprivileged user with
no supplementary groups, empty capability sets (the bounding set is emptied
while still root; a setuid from root to a non-root uid clears the others)
and PR_SET_NO_NEW_PRIVS, so no exec can regain them.  Everything that needs CAP_NET_ADMIN -- creating the TUN/TAP device,
its addresses and the routes for configured allowed IPs -- happens before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd

log = logging.getLogger("phantom.privileges")

PR_SET_NO_NEW_PRIVS = 38
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
DEFAULT_USER = "nobody"


class PrivilegeError(OSError):
    pass


def drop_privileges(user: str | None) -> tuple[int, int] | None:
    """Switch to ``user`` (default ``nobody``) when running as root.

    Returns the (uid, gid) switched to, or None when not root.
    """
    if os.geteuid() != 0:
        return None
    name = user or DEFAULT_USER
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError("no such user %r to drop privileges to (--user)" % name) from None
    if pw.pw_uid == 0:
        raise PrivilegeError("refusing to run as %r: it is uid 0" % name)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
    except OSError:
        last_cap = 40
    for cap in range(last_cap + 1):      # empty the bounding set too (needs CAP_SETPCAP: still root here)
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("could regain root after dropping privileges")
    log.info("dropped privileges to %s (uid %d, gid %d)", name, pw.pw_uid, pw.pw_gid)
    return pw.pw_uid, pw.pw_gid


def capability_sets(pid: int | str = "self") -> dict:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, as ints."""
    caps = {}
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("Cap"):
                k, v = line.split(":", 1)
                caps[k] = int(v.strip(), 16)
    return caps
