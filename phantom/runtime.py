"""Where a running phantomd can be found: its runtime record.

A phantomd started as root writes, before it drops its privileges, one small
JSON file describing itself to ``/run/phantom`` (``$PHANTOM_RUNTIME_DIR``
overrides it; under systemd, ``$RUNTIME_DIRECTORY``, e.g.
``/run/phantom/wg0``): its pid and the kernel's start time of that process,
its network namespace, where its API listens (address and port, Unix
socket), its state directory and token file, its config file, device and
UDP port.  Nothing secret: the token stays in its 0600 file.

The ``phantom`` client looks for the record of the daemon it is about to
talk to (in its own network namespace, listening on the ``--api`` address or
the ``--socket`` path, and still the very process that wrote it) and reads
the token from the file the record names, so a daemon with its own
``state_dir`` needs no ``--token-file``.  A record is believed only when root
(or the client's own user) owns it and its directories and nobody else may
write them; a stale one (its process gone) is ignored, and removed by the
next daemon that writes a record there.  The daemon cannot remove its own
record at exit (it no longer has the privileges): the liveness check makes
that harmless.

Standard library only: the client imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Optional

RUN_DIR = Path("/run/phantom")
PREFIX = "daemon-"
VERSION = 1


def runtime_dir(environ=None) -> Path:
    """Where records are written and looked for."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("PHANTOM_RUNTIME_DIR") or RUN_DIR)


def netns_id(pid: str | int = "self") -> Optional[int]:
    """The network namespace of ``pid`` (its inode number), None if unknown."""
    try:
        return os.stat("/proc/%s/ns/net" % pid).st_ino
    except OSError:
        return None


def start_time(pid: str | int = "self") -> Optional[int]:
    """The kernel's start time of process ``pid`` (clock ticks after boot):
    with the pid, it names one process for good (pids are reused)."""
    try:
        with open("/proc/%s/stat" % pid, "rb") as f:
            text = f.read().decode("ascii", "replace")
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _name(netns: Optional[int], http_port: int, http_socket: Optional[str]) -> str:
    where = ("%d" % http_port if http_port else
             "sock-" + hashlib.sha256(str(http_socket).encode()).hexdigest()[:16])
    return "%s%s-%s.json" % (PREFIX, netns or 0, where)


def _alive(rec: dict) -> bool:
    pid = rec.get("pid")
    return isinstance(pid, int) and pid > 0 and start_time(pid) == rec.get("start_time")


def write_record(info: dict, environ=None) -> Optional[Path]:
    """Write this process's record (``info``: the API address, state dir, ...)
    atomically, mode 0644; remove the records of daemons that are gone.
    Returns the path, or None when it cannot be written (not root, say)."""
    environ = os.environ if environ is None else environ
    directory = Path(environ.get("PHANTOM_RUNTIME_DIR") or
                     environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or RUN_DIR)
    rec = dict(info, version=VERSION, pid=os.getpid(), start_time=start_time(), netns=netns_id())
    path = directory / _name(rec["netns"], rec.get("http_port") or 0, rec.get("http_socket"))
    tmp = path.with_name(".%s.%d.tmp" % (path.name, os.getpid()))
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        for old in directory.glob(PREFIX + "*.json"):
            try:
                if old != path and not _alive(json.loads(old.read_text())):
                    old.unlink()
            except (OSError, ValueError, AttributeError):
                continue
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return None
    return path


def _trusted(path: Path, top: Path) -> bool:
    """Owned by root (or by us) and writable by no one else: the file and
    every directory from ``top`` down to it."""
    me = os.geteuid()
    p = path
    while True:
        try:
            st = os.lstat(p)
        except OSError:
            return False
        if st.st_uid not in (0, me) or st.st_mode & 0o022 or stat.S_ISLNK(st.st_mode):
            return False
        if p == top or p == p.parent:
            return True
        p = p.parent


def _candidates(top: Path):
    try:
        entries = list(top.iterdir())
    except OSError:
        return
    for e in sorted(entries):
        if e.name.startswith(PREFIX) and e.name.endswith(".json"):
            yield e
        elif e.is_dir() and not e.is_symlink():       # systemd's RuntimeDirectory=phantom/%i
            try:
                yield from sorted(x for x in e.iterdir()
                                  if x.name.startswith(PREFIX) and x.name.endswith(".json"))
            except OSError:
                continue


_LOOPBACK = {"localhost": ("127.0.0.1", "::1")}


def find_record(host: Optional[str] = None, port: Optional[int] = None,
                socket_path: Optional[str] = None, environ=None) -> Optional[dict]:
    """The record of the live phantomd in our network namespace whose API is
    ``host:port`` (or the Unix socket ``socket_path``); None if there is none."""
    top = runtime_dir(environ)
    here = netns_id()
    want_sock = os.path.realpath(socket_path) if socket_path else None
    hosts = _LOOPBACK.get(host or "", (host,))
    for path in _candidates(top):
        if not _trusted(path, top):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("netns") != here or not _alive(rec):
            continue
        if want_sock is not None:
            if rec.get("http_socket") and os.path.realpath(rec["http_socket"]) == want_sock:
                return rec
        elif rec.get("http_port") == port and (rec.get("http_listen") in hosts or
                                               rec.get("http_listen") in ("0.0.0.0", "::")):
            return rec
    return None
