"""POST /watch on the embedded (SQLite) directory: the stream's format, its
bounds, and a client following a record with it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from phantom import crypto
from phantom.control import directory as d
from phantom.control.directory import server

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def serve(store=None):
    store = store or d.DirectoryStore(":memory:")
    runner = await d.start_server(d.create_app(store), "127.0.0.1", 0)
    return runner, "http://127.0.0.1:%d" % runner.addresses[0][1]


def test_watch_streams_the_current_record_then_changes_then_heartbeats(monkeypatch):
    monkeypatch.setattr(server, "WATCH_HEARTBEAT", 0.3)
    monkeypatch.setattr(server, "WATCH_MAX", 2.0)

    async def main():
        runner, url = await serve()
        try:
            async with d.DirectoryClient(url, bytearray(crypto.x25519_private())) as owner:
                await owner.publish("alice", ["192.0.2.1:9000"], [], 600)
                other = crypto.x25519_public(crypto.x25519_private())
                async with aiohttp.ClientSession() as s:
                    async with s.post(url + "/watch", json={"keys": [
                            d.b64(owner.public_key), d.b64url(other)]}) as r:
                        assert r.status == 200
                        assert r.headers["Content-Type"].startswith("application/x-ndjson")
                        first = json.loads(await r.content.readline())
                        assert first["endpoints"] == ["192.0.2.1:9000"]
                        await owner.publish("alice", ["192.0.2.2:9000"], [], 600)
                        second = json.loads(await r.content.readline())
                        assert second["endpoints"] == ["192.0.2.2:9000"]
                        assert json.loads(await r.content.readline()) == {}   # heartbeat
                        rest = await asyncio.wait_for(r.content.read(), 5)       # ends by itself
                        assert all(json.loads(x) == {} for x in rest.splitlines() if x)
        finally:
            await runner.cleanup()
    run(main())


def test_watch_refuses_bad_bodies_with_400():
    async def main():
        runner, url = await serve()
        try:
            async with aiohttp.ClientSession() as s:
                for body in (b"", b"[]", b'{"keys": []}', b'{"keys": "x"}', b'{"keys": [1]}',
                             b'{"keys": ["not a key"]}', b'{"keys": ["AAAA"], "more": 1}',
                             json.dumps({"keys": ["x"] * (server.WATCH_KEYS + 1)}).encode()):
                    async with s.post(url + "/watch", data=body,
                                      headers={"Content-Type": "application/json"}) as r:
                        assert r.status == 400, (body[:40], r.status)
                        assert "error" in await r.json()
        finally:
            await runner.cleanup()
    run(main())


def test_client_watch_follows_a_record_and_ignores_forged_lines():
    async def main():
        runner, url = await serve()
        try:
            async with d.DirectoryClient(url, bytearray(crypto.x25519_private())) as owner, \
                    d.DirectoryClient(url) as watcher:
                await owner.publish("bob", ["192.0.2.1:9000"], [], 600)
                seen = []
                event = asyncio.Event()

                def on_change(rec):
                    seen.append(rec.endpoints)
                    event.set()
                task = asyncio.ensure_future(watcher.watch([owner.public_key], on_change))
                try:
                    await asyncio.wait_for(event.wait(), 5)
                    event.clear()
                    await owner.publish("bob", ["192.0.2.9:9000"], [], 600)
                    await asyncio.wait_for(event.wait(), 5)
                finally:
                    task.cancel()
                assert seen == [(("192.0.2.1", 9000),), (("192.0.2.9", 9000),)]
                # a forged line (as a hostile directory might send) is a counted drop
                doc = dict(owner._cache[owner.public_key].record.doc,
                           endpoints=["192.0.2.66:9000"])
                watcher._on_watched(doc, frozenset([owner.public_key]), on_change)
                assert watcher.stats["rejected"] == 1 and len(seen) == 2
        finally:
            await runner.cleanup()
    run(main())
