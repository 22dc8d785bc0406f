"""A client with several directories: asked at once, the highest valid seq kept,
forged, replayed and hung answers survived, a publish that reaches one is enough."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiohttp import web

from phantom import crypto
from phantom import directory as d

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def honest():
    store = d.DirectoryStore(":memory:")
    runner = await d.start_server(d.create_app(store), "127.0.0.1", 0)
    try:
        yield "http://127.0.0.1:%d" % runner.addresses[0][1]
    finally:
        await runner.cleanup()
        await store.close()


@contextlib.asynccontextmanager
async def hostile(answer):
    """A directory whose GET /records/{key} answers ``answer()`` (a doc, or a coroutine)."""
    async def get(request):
        doc = answer()
        if asyncio.iscoroutine(doc):
            doc = await doc
        return web.json_response(doc)

    async def put(request):
        return web.json_response({"error": "down for maintenance"}, status=503)
    app = web.Application()
    app.router.add_get("/records/{k}", get)
    app.router.add_put("/records/{k}", put)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield "http://127.0.0.1:%d" % runner.addresses[0][1]
    finally:
        await runner.cleanup()


def test_the_highest_valid_seq_wins_over_forged_and_replayed_answers():
    async def main():
        key = bytearray(crypto.x25519_private())
        signer = d.NodeSigner(key)
        now = time.time()
        old = d.make_record(signer, "alice", ["192.0.2.1:9000"], [], 1, int(now) + 600)
        holder = {}
        async with honest() as good, hostile(lambda: holder["doc"]) as bad:
            async with d.DirectoryClient(good, key) as owner:
                current = await owner.publish("alice", ["192.0.2.2:9000"], [], 600)
            async with d.DirectoryClient([bad, good], refresh=0) as reader:
                holder["doc"] = old                                  # a replay
                rec = await reader.resolve_key(signer.public_key)
                assert rec.seq == current["seq"] and rec.endpoints == (("192.0.2.2", 9000),)
                forged = dict(current, endpoints=["192.0.2.66:9000"], seq=current["seq"] + 5)
                holder["doc"] = forged                                # higher seq, bad signature
                rec = await reader.resolve_key(signer.public_key, fresh=True)
                assert rec.endpoints == (("192.0.2.2", 9000),)
                assert reader.stats["rejected"] == 1
    run(main())


def test_a_hung_directory_costs_a_moment_and_a_publish_that_reaches_one_is_enough():
    async def main():
        key = bytearray(crypto.x25519_private())

        async def hang():
            await asyncio.sleep(30)
        async with honest() as good, hostile(hang) as stuck:
            async with d.DirectoryClient([stuck, good], key, timeout=5) as owner:
                stored = await owner.publish("alice", ["192.0.2.2:9000"], [], 600)  # 503 + 201
                assert stored["endpoints"] == ["192.0.2.2:9000"]
                t0 = time.monotonic()
                rec = await owner.resolve_key(owner.public_key, fresh=True)
                assert rec is not None and time.monotonic() - t0 < 2.0
    run(main())
