"""Test-only faults for the fast path's workers (tests/ is never installed).

A worker's loop fails only when ``epoll_wait`` does, which a running daemon
never provokes.  :func:`break_workers` makes that real failure happen: it
finds the epoll instances that watch the given descriptors (the workers' own:
``/proc/self/fdinfo`` lists each epoll's watched descriptors as ``tfd:``
lines; a process may read its own even after it dropped privileges), puts
/dev/null in their place with ``dup2``, and wakes the workers with a datagram
to their UDP socket: the worker's next ``epoll_wait`` fails with EINVAL, so
``Worker.run`` raises as it would on any fatal error.  Nothing in phantom/
is changed or replaced.

It runs inside the process that owns the workers: the in-process tests call
it directly; :mod:`faultd` (a phantomd launcher) calls it on SIGUSR2.
"""

from __future__ import annotations

import os
import re
import socket
import stat


def epolls_watching(fds) -> list[int]:
    """This process's epoll descriptors whose watch list includes all of ``fds``."""
    want = set(fds)
    out = []
    for name in os.listdir("/proc/self/fdinfo"):
        try:
            with open("/proc/self/fdinfo/%s" % name) as f:
                text = f.read()
        except OSError:
            continue
        watched = {int(m) for m in re.findall(r"^tfd:\s*(\d+)", text, re.M)}
        if watched and want <= watched:
            out.append(int(name))
    return out


def watched(epfd: int) -> set[int]:
    with open("/proc/self/fdinfo/%d" % epfd) as f:
        return {int(m) for m in re.findall(r"^tfd:\s*(\d+)", f.read(), re.M)}


def udp_port(fd: int):
    """The local port of ``fd`` when it is a UDP socket, else None."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if s.type != socket.SOCK_DGRAM or s.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return s.getsockname()[1]
    finally:
        s.close()


def break_workers(fds) -> int:
    """Break every worker whose epoll watches all of ``fds``; returns how many."""
    epolls = epolls_watching(fds)
    ports = {p for ep in epolls for fd in watched(ep) for p in [udp_port(fd)] if p}
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for ep in epolls:
            os.dup2(null, ep)
    finally:
        os.close(null)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in ports:
            s.sendto(b"wake up", ("127.0.0.1", port))
    return len(epolls)


def tun_fds() -> list[int]:
    """This process's descriptors of /dev/net/tun (its TUN/TAP devices)."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/%s" % name) == "/dev/net/tun":
                out.append(int(name))
        except OSError:
            continue
    return out
