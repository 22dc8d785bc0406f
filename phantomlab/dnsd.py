"""The network's name service (phantom.dns) as a process of its own, for
the lab: until phantomd runs it, the end-to-end tests start this one in a
namespace, query it with dig, glibc and hostile senders, and change its
names through its standard input the way the member set will.

    python -m phantomlab.dnsd --domain corp.phantom --listen 100.64.0.1 \\
        --ipv4-prefix 100.64.0.0/16 --ipv6-prefix fd12:3456:789a::/48 \\
        --names '{"n3": [["100.64.0.3"], ["fd12:3456:789a::3"]]}'

Control: one JSON object per line on stdin, one JSON answer per line on
stdout (the first line is ``{"ready": true, "endpoints": [...]}``):
``{"op": "set", "name": N, "ipv4": [...], "ipv6": [...]}``,
``{"op": "remove", "name": N}``, ``{"op": "rename", "old": O, "new": N}``,
``{"op": "stats"}`` (the server's stats() plus this process's CPU time).
EOF on stdin stops it.

:class:`Dnsd` starts it inside a namespace and talks to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Sequence

__all__ = ["Dnsd"]


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def _serve(args) -> None:
    from phantom.dns import DnsServer, NameTable, SourceLimiter, Zone

    table = NameTable()
    refused = table.replace({k: tuple(v) for k, v in json.loads(args.names).items()})
    zone = Zone(args.domain, table, ipv4_prefix=args.ipv4_prefix, ipv6_prefix=args.ipv6_prefix,
                nameserver=args.nameserver, ttl=args.ttl)
    server = DnsServer(zone, limiter=SourceLimiter(rate=args.rate, burst=args.burst),
                       tcp_idle=args.tcp_idle)
    await server.start(args.listen, port=args.port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True, "refused": refused,
         "endpoints": [[k, list(ep)] for k, ep in server.endpoints()]})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                req = json.loads(line)
                op = req["op"]
                if op == "set":
                    say({"ok": table.set(req["name"], req.get("ipv4", ()), req.get("ipv6", ()))})
                elif op == "remove":
                    say({"ok": table.remove(req["name"])})
                elif op == "rename":
                    say({"ok": table.rename(req["old"], req["new"])})
                elif op == "stats":
                    say({"ok": True, "stats": server.stats(), "cpu_seconds": _cpu_seconds()})
                else:
                    say({"ok": False, "error": "unknown op %r" % op})
            except (ValueError, KeyError, TypeError) as exc:
                say({"ok": False, "error": str(exc)})
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phantomlab.dnsd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--listen", action="append", required=True, help="an address (repeat)")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--ipv4-prefix")
    ap.add_argument("--ipv6-prefix")
    ap.add_argument("--nameserver", default="ns")
    ap.add_argument("--ttl", type=int, default=5)
    ap.add_argument("--names", default="{}", help='JSON {"name": [[ipv4...], [ipv6...]]}')
    ap.add_argument("--rate", type=float, default=100.0, help="queries/s per source")
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--tcp-idle", type=float, default=10.0)
    args = ap.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


class Dnsd:
    """``python -m phantomlab.dnsd`` inside namespace ``ns``: ``start()``,
    ``request({...})``, ``stats()``, ``alive()``, ``stop()``; stderr goes to
    ``log_path``.  Registered with the rig, so it is stopped at cleanup."""

    def __init__(self, ns, args: Sequence[str], log_path) -> None:
        from .namespaces import as_ns
        self.ns = as_ns(ns)
        self.args = [str(a) for a in args]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}

    def start(self, timeout: float = 30.0) -> "Dnsd":
        # 30 s, as a started phantomd has (phantomlab/daemons.py): under four
        # workers on a loaded machine dnsd's first line took more than 15 s
        # (two full runs on 2026-12-07 each lost one dnsd fixture so)
        from .namespaces import REGISTRY, RigError
        log = open(self.log_path, "ab")
        try:
            self.proc = self.ns.popen([sys.executable, "-m", "phantomlab.dnsd", *self.args],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0,
                                      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        finally:
            log.close()
        REGISTRY.add(self)
        self.ready = self._read(timeout)
        if not self.ready.get("ready"):
            raise RigError("dnsd did not start: %r (log %s)" % (self.ready, self.log_path))
        return self

    def _read(self, timeout: float) -> dict:
        import select
        from .namespaces import RigError
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RigError("dnsd: no answer in %ss (log %s)" % (timeout, self.log_path))
            r, _, _ = select.select([fd], [], [], left)
            if r:
                line = fd.readline()
                if not line:
                    raise RigError("dnsd exited (%s); log %s" % (self.proc.poll(), self.log_path))
                return json.loads(line)

    def request(self, obj: dict, timeout: float = 10.0) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(timeout)

    def stats(self) -> dict:
        return self.request({"op": "stats"})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        from .namespaces import REGISTRY
        REGISTRY.discard(self)
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()
            p.wait(5)
        except (subprocess.TimeoutExpired, OSError):
            p.kill()
            p.wait(5)
        if p.stdout:
            p.stdout.close()

    _rig_close = stop


if __name__ == "__main__":
    sys.exit(main())
