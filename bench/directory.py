"""Directory backends side by side: lookup latency (p50/p99) and publishes per second.

    .venv/bin/python bench/directory.py [--lookups N] [--publishes N] [--json FILE]

In one run, on this machine only (loopback, a Unix socket, an in-process swarm):

* sqlite:   one front end (aiohttp, in this process) over a SQLite file;
* postgres: two front ends on one database of a PostgreSQL cluster of our own
            (initdb/pg_ctl in a temporary directory, as phantomlab/stores.py);
            lookups ask both at once (a two-URL client), publishes alternate;
* dht:      a private swarm of 10 libtorrent nodes on 127.0.0.1, bootstrapped to
            each other only; lookups and publishes go through random nodes.

A lookup is ``DirectoryClient.resolve_key(key, fresh=True)``: the request, the
answer and the client's full verification (Ed25519 binding and signature), no
cache.  A publish is one pre-signed record stored: for the servers one PUT
(the server verifies it, checks seq and the name claim in a transaction and
writes it), for the DHT ``DhtStore.publish`` (a get for the current seq, then
libtorrent's BEP 44 put).  Publishes run 16 at a time (DHT: 8).  The servers run
without the per-source limits (every request comes from one address).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phantom import crypto  # noqa: E402
from phantom import directory as d  # noqa: E402
from phantom.directory.server import Limits  # noqa: E402

# every request comes from 127.0.0.1: the per-source limits (docs/directory.md) would
# answer 429 after a minute's worth; this measures the store and the server's work
UNLIMITED = Limits.unlimited()


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def records(n, now):
    out = []
    for i in range(n):
        signer = d.NodeSigner(bytearray(crypto.x25519_private()))
        out.append((signer, d.make_record(signer, "node-%d" % i, ["192.0.2.%d:9000" % (i % 250 + 1)],
                                          [], 1, int(now) + 3600)))
    return out


async def put_all(urls, recs, concurrency=16):
    import aiohttp
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:
        async def one(i, signer, doc):
            async with sem:
                url = urls[i % len(urls)] + "/records/" + d.b64url(signer.public_key)
                async with s.put(url, data=d.canonical(doc),
                                 headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status not in (200, 201):
                        raise RuntimeError("publish answered %d" % r.status)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, s_, doc) for i, (s_, doc) in enumerate(recs)))
        return len(recs) / (time.perf_counter() - t0)


async def lookups(client_for, keys, n):
    lat = []
    for i in range(n):
        client = client_for(i)
        key = random.choice(keys)
        t0 = time.perf_counter()
        rec = await client.resolve_key(key, fresh=True)
        lat.append((time.perf_counter() - t0) * 1000)
        if rec is None:
            raise RuntimeError("a published record was not found")
    return lat


async def bench_http(urls, n_lookups, n_publishes, warm=None):
    now = time.time()
    recs = records(n_publishes, now)
    rate = await put_all(urls, recs)
    keys = [s.public_key for s, _ in recs]
    async with d.DirectoryClient(urls) as client:
        await lookups(lambda i: client, keys, 20)                 # warm the connections
        lat = await lookups(lambda i: client, keys, n_lookups)
    return lat, rate


async def run_sqlite(args):
    with tempfile.TemporaryDirectory() as tmp:
        store = d.DirectoryStore(os.path.join(tmp, "dir.sqlite"))
        runner = await d.start_server(d.create_app(store, limits=UNLIMITED), "127.0.0.1", 0)
        try:
            url = "http://127.0.0.1:%d" % runner.addresses[0][1]
            return await bench_http([url], args.lookups, args.publishes)
        finally:
            await runner.cleanup()
            await store.close()


async def run_postgres(args):
    from phantomlab.stores import PgCluster, pg_missing
    from phantom.directory.store.postgres import PostgresStore
    missing = pg_missing()
    if missing:
        raise RuntimeError(missing)
    with PgCluster() as pg:
        dsn = await pg.new_database()
        stores, runners = [], []
        try:
            for _ in range(2):
                store = await PostgresStore(dsn).open()
                stores.append(store)
                runners.append(await d.start_server(d.create_app(store, limits=UNLIMITED), "127.0.0.1", 0))
            urls = ["http://127.0.0.1:%d" % r.addresses[0][1] for r in runners]
            return await bench_http(urls, args.lookups, args.publishes)
        finally:
            for r in runners:
                await r.cleanup()
            for s in stores:
                await s.close()


async def run_dht(args):
    from phantomlab.stores import Swarm
    from phantom.directory.client import DhtDirectoryClient
    from phantom.directory.store.dht import DhtStore
    swarm = await Swarm(10).start()
    try:
        now = time.time()
        recs = records(max(10, args.publishes // 4), now)
        sem = asyncio.Semaphore(8)
        stores = [DhtStore(n) for n in swarm.nodes]

        async def one(i, signer, doc):
            async with sem:
                await stores[i % len(stores)].publish(doc, now, signer=signer)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, s, doc) for i, (s, doc) in enumerate(recs)))
        rate = len(recs) / (time.perf_counter() - t0)
        clients = [DhtDirectoryClient(None, node=n) for n in swarm.nodes]
        keys = [s.public_key for s, _ in recs]
        lat = await lookups(lambda i: clients[(i * 7 + 3) % len(clients)], keys,
                            max(20, args.lookups // 2))
        return lat, rate
    finally:
        await swarm.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lookups", type=int, default=1000)
    p.add_argument("--publishes", type=int, default=400)
    p.add_argument("--only", choices=("sqlite", "postgres", "dht"), action="append")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    results = {}
    for name, fn in (("sqlite", run_sqlite), ("postgres", run_postgres), ("dht", run_dht)):
        if args.only and name not in args.only:
            continue
        try:
            lat, rate = asyncio.run(asyncio.wait_for(fn(args), 300))
        except Exception as exc:                  # one backend missing: say so, go on
            results[name] = {"error": "%s: %s" % (exc.__class__.__name__, exc)}
            continue
        results[name] = {"lookups": len(lat), "p50_ms": round(statistics.median(lat), 3),
                         "p99_ms": round(pct(lat, 99), 3), "max_ms": round(max(lat), 3),
                         "publishes_per_s": round(rate, 1)}
    label = {"sqlite": "SQLite, one front end", "postgres": "PostgreSQL, two front ends",
             "dht": "DHT, 10 libtorrent nodes"}
    print("| backend | lookups | p50 | p99 | publishes/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        if "error" in r:
            print("| %s | %s |" % (label[name], r["error"]))
        else:
            print("| %s | %d | %.2f ms | %.2f ms | %.0f |" % (
                label[name], r["lookups"], r["p50_ms"], r["p99_ms"], r["publishes_per_s"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
