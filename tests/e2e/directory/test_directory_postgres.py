"""The directory on PostgreSQL: stateless front ends sharing one database.

A real PostgreSQL server of our own (phantomlab/stores.py) on a Unix
socket; front ends are in-process aiohttp servers on 127.0.0.1.  The
end-to-end test with daemons in namespaces is test_directory_ha_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest

from phantom import crypto
from phantom import directory as d
from phantom.directory.store.postgres import PostgresStore


pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def run(coro, timeout: float = 90.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def newkey() -> bytearray:
    return bytearray(crypto.x25519_private())


class FrontEnd:
    """One stateless directory front end on a database."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.store = None
        self.runner = None
        self.url = None

    async def start(self) -> "FrontEnd":
        self.store = await PostgresStore(self.dsn).open()
        self.runner = await d.start_server(d.create_app(self.store), "127.0.0.1", 0)
        self.url = "http://127.0.0.1:%d" % self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.store is not None:
            await self.store.close()
            self.store = None


@contextlib.asynccontextmanager
async def front_ends(pg, n: int = 2):
    dsn = await pg.new_database()
    fes = []
    try:
        for _ in range(n):
            fes.append(await FrontEnd(dsn).start())
        yield fes
    finally:
        for fe in fes:
            await fe.stop()


def test_publish_through_one_front_end_resolve_through_the_other(pg):
    async def main():
        async with front_ends(pg) as (one, two):
            async with d.DirectoryClient(one.url, newkey()) as alice, \
                    d.DirectoryClient(two.url) as reader:
                await alice.publish("alice", ["192.0.2.1:9000"], ["10.9.0.1/32"], 600)
                by_name = await reader.resolve_name("alice")
                assert by_name is not None and by_name.public_key == alice.public_key
                by_key = await reader.resolve_key(alice.public_key)
                assert by_key.endpoints == (("192.0.2.1", 9000),)
                assert [r.name for r in await reader.list_records()] == ["alice"]
                # an update through one is what the other serves next
                await alice.publish("alice", ["192.0.2.2:9000"], ["10.9.0.1/32"], 600)
                fresh = await reader.resolve_key(alice.public_key, fresh=True)
                assert fresh.endpoints == (("192.0.2.2", 9000),)
            async with aiohttp.ClientSession() as s:
                async with s.get(two.url + "/status") as r:
                    body = await r.json()
            assert body["store"] == "postgresql" and body["records"] == 1
    run(main())


def test_fifty_concurrent_claims_of_one_name_exactly_one_wins(pg):
    async def main():
        async with front_ends(pg) as fes:
            keys = [newkey() for _ in range(50)]
            docs = []
            now = time.time()
            for k in keys:
                signer = d.NodeSigner(k)
                docs.append((signer.public_key, d.make_record(
                    signer, "contested", ["192.0.2.1:9000"], [], 1, int(now) + 600)))
            async with aiohttp.ClientSession() as s:
                async def claim(i, pub, doc):
                    url = fes[i % 2].url + "/records/" + d.b64url(pub)
                    async with s.put(url, data=d.canonical(doc),
                                     headers={"Content-Type": "application/json"}) as r:
                        return r.status, await r.json()
                start = asyncio.Event()

                async def racer(i, pub, doc):
                    await start.wait()
                    return await claim(i, pub, doc)
                tasks = [asyncio.ensure_future(racer(i, p, doc)) for i, (p, doc) in enumerate(docs)]
                await asyncio.sleep(0.05)
                start.set()
                results = await asyncio.gather(*tasks)
            statuses = sorted(st for st, _ in results)
            assert statuses.count(201) == 1, statuses
            assert statuses.count(409) == 49, statuses
            assert all("held by another key" in b["error"] for st, b in results if st == 409)
            winner = next(b for st, b in results if st == 201)
            for fe in fes:
                async with d.DirectoryClient(fe.url) as reader:
                    rec = await reader.resolve_name("contested")
                    assert rec.key_text == winner["public_key"]
            assert await fes[0].store.count() == 1
    run(main())


def test_a_record_published_through_one_front_end_is_pushed_by_the_other(pg):
    """LISTEN/NOTIFY: a watch on front end two hears of a publish through front end one."""
    async def main():
        async with front_ends(pg) as (one, two):
            async with d.DirectoryClient(one.url, newkey()) as bob, \
                    d.DirectoryClient(two.url) as watcher:
                await bob.publish("bob", ["192.0.2.1:9000"], [], 600)
                seen = []
                got = asyncio.Event()

                def on_change(rec):
                    seen.append((rec.seq, rec.endpoints))
                    got.set()
                task = asyncio.ensure_future(watcher.watch([bob.public_key], on_change))
                try:
                    await asyncio.wait_for(got.wait(), 10)       # the current record first
                    got.clear()
                    t0 = time.monotonic()
                    await bob.publish("bob", ["192.0.2.7:9000"], [], 600)
                    await asyncio.wait_for(got.wait(), 5)
                    pushed_after = time.monotonic() - t0
                finally:
                    task.cancel()
                assert seen[-1][1] == (("192.0.2.7", 9000),)
                assert pushed_after < 2.0, pushed_after
                assert two.store.stats["notified"] >= 1
    run(main())


def test_client_with_two_front_ends_survives_one_dying(pg):
    async def main():
        async with front_ends(pg) as (one, two):
            urls = [one.url, two.url]
            async with d.DirectoryClient(urls, newkey(), refresh=0) as alice, \
                    d.DirectoryClient(urls, refresh=0, negative_ttl=0) as reader:
                await alice.publish("alice", ["192.0.2.1:9000"], [], 600)
                assert (await reader.resolve_name("alice")).public_key == alice.public_key
                await one.stop()                               # front end one dies
                t0 = time.monotonic()
                assert (await reader.resolve_name("alice")).public_key == alice.public_key
                assert time.monotonic() - t0 < 2.0
                stored = await alice.publish("alice", ["192.0.2.3:9000"], [], 600)
                assert stored["endpoints"] == ["192.0.2.3:9000"]
                rec = await reader.resolve_key(alice.public_key)
                assert rec.endpoints == (("192.0.2.3", 9000),)
                assert reader.stats["stale_served"] == 0       # answered, not from the cache
                await two.stop()                               # both gone: a clear error
                with pytest.raises(d.DirectoryUnavailable, match="unreachable"):
                    await reader.resolve_name("nobody")
    run(main())


def test_front_end_without_its_database_answers_503_not_500(pg):
    async def main():
        async with front_ends(pg, 1) as (one,):
            await one.store._pool.close()
            async with aiohttp.ClientSession() as s:
                async with s.get(one.url + "/names/alice") as r:
                    assert r.status == 503
                    assert "error" in await r.json()
    run(main())
