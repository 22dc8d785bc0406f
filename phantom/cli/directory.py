"""``phantom directory ...``: serve, publish, lookup, list, revoke, endorse, signer-key.

The parser takes its defaults from phantom/directory/defaults.py; the server
(aiohttp's web side) is imported only by ``serve`` and ``dht-node``, the client
(asyncio, aiohttp's client) only by the commands that ask a directory.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from typing import TYPE_CHECKING

from phantom import crypto, logsetup
from phantom.syntax import PEER_NAME
from phantom.errors import ConfigError, PhantomError
from phantom.keys import KeyFormatError

from phantom.directory.defaults import CLIENT_TIMEOUT, DEFAULT_DB, DEFAULT_MAX_TTL, DEFAULT_PORT, \
    DEFAULT_TTL, DHT_TIMEOUT, KEY_WRITES, MAX_HEARTBEAT, SOURCE_QUOTA, SOURCE_WATCHES, \
    SOURCE_WRITES, WATCH_HEARTBEAT, WATCHERS_MAX
from phantom.directory.records import KEY_SIZE, MAX_ENDORSERS, DirectoryError, b64, key_from_text, signing_key_of

if TYPE_CHECKING:
    from phantom.directory.client import DirectoryClient


# --- command line ---------------------------------------------------------------------------------
def _run(coro):
    import asyncio
    try:
        import uvloop
    except ImportError:              # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


def _signer_arg(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise argparse.ArgumentTypeError("%r is not base64" % text) from None
    if len(raw) != KEY_SIZE:
        raise argparse.ArgumentTypeError("a signer key is 32 bytes (44 base64 characters)")
    return raw


def _print(args, payload: dict) -> None:
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        from phantom.cli.main import format_kv
        print(format_kv(payload))


def _is_dht(args) -> bool:
    return args.directory.strip().lower() == "dht"


def client_timeout(args) -> float:
    """``--timeout``, or the default of the directory kind: 5 s for an HTTP
    directory, 10 s for a DHT lookup (a DHT publish waits up to 20 s)."""
    if args.timeout is not None:
        return args.timeout
    return DHT_TIMEOUT if _is_dht(args) else CLIENT_TIMEOUT


def make_client(args, private_key):
    """The client the options ask for (not started)."""
    trusted = getattr(args, "trusted_signer", None) or ()
    timeout = client_timeout(args)
    from phantom.directory.client import DhtDirectoryClient, DirectoryClient
    if _is_dht(args):
        if not args.bootstrap:
            raise ValueError("--directory dht needs --bootstrap IP:PORT (a node of the swarm)")
        return DhtDirectoryClient(private_key, listen="0.0.0.0:0", bootstrap=args.bootstrap,
                                  trusted_signers=trusted, timeout=timeout)
    return DirectoryClient(args.directory, private_key, trusted_signers=trusted,
                           timeout=timeout)


async def _with_client(args, private_key, action):
    client = make_client(args, private_key)
    if _is_dht(args):
        await client.start()
        try:
            await client.node.wait_nodes(1, client.timeout)
        except BaseException:
            await client.close()
            raise
    try:
        return await action(client)
    finally:
        client.wipe()
        await client.close()


def _load_key(path):
    from phantom.keys import load_private_key
    return load_private_key(path)


def cmd_serve(args) -> int:
    from phantom.directory.server import Limits, serve_forever
    from phantom.privileges import lock_down, resolve_user
    logsetup.setup_logging(args.log_level)
    pw = resolve_user(args.user)         # None unless root
    if pw is not None:
        lock_down()                      # single-threaded: before the loop and any thread exists
    limits = Limits(args.source_writes_per_minute, args.key_writes_per_minute,
                    args.source_quota, args.source_watches, args.max_watches)
    network = None
    if args.network is not None:
        from phantom.directory.network import NetworkService
        from phantom.network.errors import NetworkError
        try:
            network = NetworkService.load(args.network)     # read as root, before the drop
        except (NetworkError, OSError) as exc:
            print("error: --network %s: %s" % (args.network, exc), file=sys.stderr)
            return 1
    _run(serve_forever(args.listen, args.port, args.db, args.trusted_signer or (), args.max_ttl,
                       drop_to=pw, limits=limits, watch_heartbeat=args.watch_heartbeat,
                       network=network))
    return 0


async def dht_nodes_forever(listen: str, port: int, count: int, bootstrap, status_port: int) -> None:
    """Run ``count`` DHT nodes on listen:port.. (each joined to the others and to
    ``bootstrap``), with an optional HTTP /status, until SIGINT/SIGTERM."""
    import asyncio
    import signal
    from aiohttp import web
    from phantom.directory.server import start_server
    from phantom.directory.store.dht import DhtNode
    nodes = []
    runner = None
    try:
        for i in range(count):
            nodes.append(await DhtNode("%s:%d" % (listen, port + i if port else 0),
                                       bootstrap).start())
        host = "127.0.0.1" if listen in ("0.0.0.0", "::") else listen
        for n in nodes:
            for other in nodes:
                if other is not n:
                    n.add_node(host, other.port)
        if status_port:
            async def status(request):
                return web.json_response({"service": "phantom-dht-node", "nodes": [
                    {"port": n.port, "routing_nodes": n.nodes, "items": n.items,
                     "counters": dict(n.stats)} for n in nodes]})
            app = web.Application()
            app.router.add_get("/status", status)
            runner = await start_server(app, listen, status_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("dht-node: %d node(s) on %s ports %s" % (count, listen, ",".join(
            str(n.port) for n in nodes)), file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        for n in nodes:
            await n.close()


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _endpoint_arg(text: str):
    from phantom.syntax import parse_endpoint
    try:
        return parse_endpoint(text, "--bootstrap")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_dht_node(args) -> int:
    logsetup.setup_logging(args.log_level)
    if not 1 <= args.count <= 64:
        raise ValueError("--count must be 1..64")
    _run(dht_nodes_forever(args.listen, args.port, args.count, args.bootstrap or (),
                           args.status_port))
    return 0


def cmd_publish(args) -> int:
    key = _load_key(args.private_key)
    nets = [n.strip() for a in args.allowed_ips or () for n in a.split(",") if n.strip()]
    eps = [e.strip() for a in args.endpoint for e in a.split(",") if e.strip()]
    try:
        doc = _run(_with_client(args, key, lambda c: c.publish(
            args.name, eps, nets, args.ttl, protocol=args.protocol,
            endorsers=args.endorser or ())))
    finally:
        crypto.memzero(key)
    _print(args, doc if args.json else {k: v for k, v in doc.items() if k != "sig"})
    return 0


def cmd_lookup(args) -> int:
    target = args.target

    async def action(c: DirectoryClient):
        if PEER_NAME.match(target):          # a base64 key never matches: it ends with '='
            return await c.resolve_name(target)
        return await c.resolve_key(key_from_text(target))

    rec = _run(_with_client(args, None, action))
    if rec is None:
        raise DirectoryError("no valid record for %s" % target)
    _print(args, rec.summary())
    return 0


def cmd_list(args) -> int:
    recs = _run(_with_client(args, None, lambda c: c.list_records()))
    if args.json:
        print(json.dumps([r.summary() for r in recs], indent=2))
    else:
        from phantom.cli.main import format_table
        print(format_table([r.summary() for r in recs],
                           ("name", "endpoints", "allowed_ips", "revoked", "public_key")))
    return 0


def cmd_revoke(args) -> int:
    key = _load_key(args.private_key)
    try:
        doc = _run(_with_client(args, key, lambda c: c.revoke()))
    finally:
        crypto.memzero(key)
    _print(args, {"revoked": doc.get("public_key"), "name": doc.get("name")})
    return 0


def cmd_endorse(args) -> int:
    key = _load_key(args.private_key)
    target = key_from_text(args.public_key)
    try:
        doc = _run(_with_client(args, key, lambda c: c.endorse(target, args.name, args.ttl)))
    finally:
        crypto.memzero(key)
    _print(args, {"endorsed": doc.get("public_key"), "name": doc.get("name"),
                  "endorsements": len(doc.get("endorsements", []))})
    return 0


def cmd_signer_key(args) -> int:
    key = _load_key(args.private_key)
    try:
        print(b64(signing_key_of(key)))
    finally:
        crypto.memzero(key)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phantom directory",
                                description="The Phantom public-key directory and its client.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = sub.add_parser("serve", help="run the directory service")
    s.add_argument("--listen", default="127.0.0.1", metavar="ADDR", help="address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default %d)" % DEFAULT_PORT)
    s.add_argument("--db", default=DEFAULT_DB, metavar="PATH.sqlite|postgresql://...",
                   help="a SQLite file (default ./%s), or a PostgreSQL URL that any number of "
                        "front ends may share.  As root, a SQLite file is opened (and created) "
                        "before the switch to --user, so it may sit in a root-only directory and "
                        "keeps its owner; see --user" % DEFAULT_DB)
    s.add_argument("--user", metavar="NAME",
                   help="when started as root: the unprivileged user to switch to (default "
                        "nobody) once the db is open and the port bound (ports below 1024 work); "
                        "the capability bounding set is emptied and no_new_privs set first, for "
                        "every thread.  The server then uses the db only through the descriptors "
                        "opened as root: the file (and its -wal/-shm files, created with the db's "
                        "owner and mode) stays owned by root, the user needs no access to it, and "
                        "other processes running as that user cannot write to it.  The -wal/-shm files "
                        "may be left at exit; the next start recovers them.  Ignored when not "
                        "root (then the db must be writable by you, with its directory)")
    s.add_argument("--trusted-signer", type=_signer_arg, action="append", metavar="KEY",
                   help="Ed25519 key whose endorsements this directory keeps and ranks first "
                        "(repeatable; default: keep any valid endorsement)")
    s.add_argument("--max-ttl", type=int, default=DEFAULT_MAX_TTL, metavar="SECONDS",
                   help="refuse records and endorsements living longer, and keep a revocation "
                        "at most this long (default %d)" % DEFAULT_MAX_TTL)
    for flag, default, what in (        # the limits per source and per key: a count, 0 for none
            ("--source-writes-per-minute", SOURCE_WRITES,
             "publishes and endorsements one source (an IPv4 address, an IPv6 /64) may send per "
             "minute, in bursts of up to N; past it: 429 with Retry-After (default %d; 0: no limit)"),
            ("--key-writes-per-minute", KEY_WRITES,
             "updates of one key's record per minute, whoever sends them (default %d; 0: no limit)"),
            ("--source-quota", SOURCE_QUOTA,
             "live records (and kept revocations) one source may hold; a new one past it gets 429 "
             "(default %d; 0: no quota)"),
            ("--source-watches", SOURCE_WATCHES,
             "concurrent POST /watch streams per source; past it: 429, and clients poll "
             "(default %d; 0: no limit)")):
        s.add_argument(flag, type=_count_arg, default=default, metavar="N", help=what % default)
    s.add_argument("--watch-heartbeat", type=float, default=WATCH_HEARTBEAT, metavar="SECONDS",
                   help="a watch stream silent this long gets a {} line (default %g; at most "
                        "%g: clients redo a stream silent for 40 s)" % (WATCH_HEARTBEAT,
                                                                        MAX_HEARTBEAT))
    s.add_argument("--max-watches", type=_count_arg, default=WATCHERS_MAX, metavar="N",
                   help="concurrent watch streams of this front end; past it: 503, and clients "
                        "poll (default %d)" % WATCHERS_MAX)
    s.add_argument("--network", metavar="DIR",
                   help="serve this network too (an authority state directory from `phantom "
                   "network init`: network.json, admission.key, admin.token): joins, renewals, "
                   "the member stream and the admin API under /network (docs/network.md)")
    s.add_argument("--log-level", default="info", choices=logsetup.LEVELS)
    s.set_defaults(func=cmd_serve)

    def client_parser(name, help_text, key_help=None):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--directory", metavar="URL", default=os.environ.get("PHANTOM_DIRECTORY"),
                       required=os.environ.get("PHANTOM_DIRECTORY") is None,
                       help="the directory URL (several: comma-separated; \"dht\" for the "
                            "DHT) or $PHANTOM_DIRECTORY")
        if key_help:
            c.add_argument("--private-key", metavar="FILE", required=True, help=key_help)
        c.add_argument("--bootstrap", type=_endpoint_arg, action="append", metavar="IP:PORT",
                       help="with --directory dht: a DHT node to join through (repeatable)")
        c.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="give up after this (default %g s; with --directory dht %g s for "
                            "a lookup, and a publish waits up to 20 s)" % (CLIENT_TIMEOUT,
                                                                          DHT_TIMEOUT))
        c.add_argument("--json", action="store_true", help="print JSON")
        return c

    c = client_parser("publish", "sign and publish this node's record", "this node's key file")
    c.add_argument("--name", required=True)
    c.add_argument("--endpoint", action="append", required=True, metavar="IP:PORT",
                   help="where peers reach us (repeatable)")
    c.add_argument("--allowed-ips", action="append", metavar="CIDR[,CIDR]")
    c.add_argument("--ttl", type=int, default=DEFAULT_TTL, metavar="SECONDS")
    c.add_argument("--protocol", choices=("phantom", "wireguard"), default="phantom",
                   help="what the key speaks (wireguard: publish for a stock WireGuard peer, "
                        "with its key file)")
    c.add_argument("--endorser", type=_signer_arg, action="append", metavar="KEY",
                   help="an Ed25519 signer key (phantom directory signer-key) that may endorse "
                        "this record; repeatable, at most %d; when given, the directory refuses "
                        "(403) every other signer's endorsement" % MAX_ENDORSERS)
    c.set_defaults(func=cmd_publish)

    c = client_parser("lookup", "resolve a name or a public key, verifying the record")
    c.add_argument("target", help="a name or a base64 public key")
    c.add_argument("--trusted-signer", type=_signer_arg, action="append", metavar="KEY",
                   help="report endorsements by this Ed25519 key (repeatable)")
    c.set_defaults(func=cmd_lookup)

    c = client_parser("list", "list the verifiable records")
    c.set_defaults(func=cmd_list)

    c = client_parser("revoke", "revoke this node's key (final)", "the key file to revoke")
    c.set_defaults(func=cmd_revoke)

    c = client_parser("endorse", "endorse a key and name as a trusted signer",
                      "the signer's key file")
    c.add_argument("--public-key", required=True, metavar="KEY", help="the key to endorse")
    c.add_argument("--name", required=True, help="the name it must carry")
    c.add_argument("--ttl", type=int, default=30 * 86400, metavar="SECONDS")
    c.set_defaults(func=cmd_endorse)

    n = sub.add_parser("dht-node", help="run DHT nodes (libtorrent) that directory = \"dht\" "
                       "daemons can bootstrap from: a private swarm needs no public router")
    n.add_argument("--listen", default="0.0.0.0", metavar="ADDR")
    n.add_argument("--port", type=int, default=6881, help="UDP port of the first node (default "
                   "6881; node i uses port+i; 0 picks free ports)")
    n.add_argument("--count", type=int, default=1, help="nodes to run in this process (1..64)")
    n.add_argument("--bootstrap", type=_endpoint_arg, action="append", metavar="IP:PORT",
                   help="another DHT node to join through (repeatable; default: none)")
    n.add_argument("--status-port", type=int, default=0, metavar="PORT",
                   help="serve GET /status (routing-table sizes) on this TCP port")
    n.add_argument("--log-level", default="info", choices=logsetup.LEVELS)
    n.set_defaults(func=cmd_dht_node)

    k = sub.add_parser("signer-key", help="print the Ed25519 signer key of a key file "
                       "(what --trusted-signer and trusted_signers take)")
    k.add_argument("--private-key", metavar="FILE", required=True)
    k.set_defaults(func=cmd_signer_key)
    return p


def main(argv=None) -> int:
    from phantom.privileges import PrivilegeError
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (DirectoryError, ConfigError, KeyFormatError, ValueError, PhantomError,
            PrivilegeError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

