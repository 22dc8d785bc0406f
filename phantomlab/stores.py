"""Test infrastructure for the directory backends: a throwaway PostgreSQL
cluster and a private libtorrent DHT swarm.

:class:`PgCluster` runs Debian's PostgreSQL (``initdb``/``pg_ctl`` from
/usr/lib/postgresql/*/bin) as an unprivileged user in a temporary
directory.  It listens on a Unix socket only (no TCP port at all): the
socket is a file, so front ends in any network namespace reach it.
``stop()`` (also on failure, via the context manager) stops the server
with ``-m immediate`` and removes the directory.

:class:`Swarm` starts N libtorrent DHT nodes on 127.0.0.1 inside this
process, each bootstrapped to the others and to nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

PG_USER_CANDIDATES = ("postgres", "nobody")
PG_PORT = 5432                      # only names the socket file: no TCP listener


def pg_bindir() -> Optional[str]:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    for d in reversed(dirs):
        if os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return d
    return None


def pg_missing() -> Optional[str]:
    if pg_bindir() is None:
        return "PostgreSQL server binaries not found (setup.sh installs Debian's postgresql)"
    if os.geteuid() != 0 and not _user():
        return "needs root (to run PostgreSQL as an unprivileged user)"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[postgres]')"
    return None


def _user() -> Optional[str]:
    for name in PG_USER_CANDIDATES:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


class PgCluster:
    """A PostgreSQL server of our own in a temporary directory."""

    def __init__(self, prefix: tuple = ()):
        self.prefix = list(prefix)            # e.g. ["ip", "netns", "exec", NAME]
        self.bindir = pg_bindir()
        self.user = _user()
        self.root = Path(tempfile.mkdtemp(prefix="phantom-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "server.log"
        self.started = False

    def _as_user(self, argv: list, timeout: float = 60.0):
        cmd = argv
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--"] + argv
        return subprocess.run(self.prefix + cmd, capture_output=True, text=True, timeout=timeout)

    def start(self) -> "PgCluster":
        self.sock.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o755)
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        out = self._as_user([os.path.join(self.bindir, "initdb"), "-D", str(self.data), "-A",
                             "trust", "-U", "phantom", "--no-sync", "-E", "UTF8",
                             "--no-instructions"])
        if out.returncode:
            raise RuntimeError("initdb failed: %s%s" % (out.stdout, out.stderr))
        opts = ("-c listen_addresses='' -k %s -p %d -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB"
                % (self.sock, PG_PORT))
        out = self._as_user([os.path.join(self.bindir, "pg_ctl"), "-D", str(self.data), "-l",
                             str(self.log), "-o", opts, "-w", "-t", "30", "start"], timeout=60)
        if out.returncode:
            raise RuntimeError("pg_ctl start failed: %s%s\n%s" % (out.stdout, out.stderr,
                                                                  self.log_tail()))
        self.started = True
        return self

    def dsn(self, db: str = "postgres") -> str:
        return "postgresql://phantom@/%s?host=%s&port=%d" % (db, self.sock, PG_PORT)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    async def new_database(self) -> str:
        """A fresh, empty database; its DSN."""
        import asyncpg
        name = "t_" + uuid.uuid4().hex[:12]
        conn = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await conn.execute("CREATE DATABASE %s" % name)
        finally:
            await conn.close()
        return self.dsn(name)

    def stop(self) -> None:
        try:
            if self.started:
                self._as_user([os.path.join(self.bindir, "pg_ctl"), "-D", str(self.data), "-m",
                               "immediate", "-w", "-t", "20", "stop"], timeout=30)
                self.started = False
        finally:
            pidfile = self.data / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, 9)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def dht_missing() -> Optional[str]:
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        return "libtorrent is not installed (pip install -e '.[dht]')"
    return None


class Swarm:
    """N libtorrent DHT nodes on 127.0.0.1 in this process, joined only to each other."""

    def __init__(self, n: int = 10, host: str = "127.0.0.1", base_port: int = 0):
        self.n = n
        self.host = host
        self.base_port = base_port
        self.nodes: list = []

    async def start(self, timeout: float = 20.0) -> "Swarm":
        from phantom.directory.store.dht import DhtNode
        for _ in range(self.n):
            port = self.base_port + len(self.nodes) if self.base_port else 0    # 0: any free port
            node = DhtNode("%s:%d" % (self.host, port), timeout=8.0)
            await node.start()
            self.nodes.append(node)
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.add_node(self.host, other.port)
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(n.wait_nodes(min(3, self.n - 1), max(1.0, deadline -
                                                                     time.monotonic()))
                               for n in self.nodes))
        return self

    @property
    def addresses(self) -> list:
        return [(self.host, n.port) for n in self.nodes]

    async def close(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nodes), return_exceptions=True)
        self.nodes = []
