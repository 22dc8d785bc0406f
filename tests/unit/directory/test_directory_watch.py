"""POST /watch on the embedded (SQLite) directory: the stream's format, its
bounds, and a client following a record with it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from phantom import crypto
from phantom import directory as d
from phantom.directory import server

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


# --- issue 18: a busy directory, one greedy host ------------------------------------------------------
async def serve_with(limits, clock=None):
    store = d.DirectoryStore(":memory:")
    kw = {"clock": clock} if clock else {}
    runner = await d.start_server(d.create_app(store, limits=limits, **kw), "127.0.0.1", 0)
    return runner, "http://127.0.0.1:%d" % runner.addresses[0][1]


def session_from(ip: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``ip`` (any 127/8 address is loopback):
    another source, as far as the directory's per-source limits go."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))


async def read_lines(resp, into: list, loop) -> None:
    while True:
        line = await resp.content.readline()
        if not line:
            return
        into.append((loop.time(), json.loads(line)))


@pytest.mark.slow          # watches a busy directory for 3 s of wall time
def test_heartbeat_reaches_the_watcher_of_an_unchanged_key_on_a_busy_directory(monkeypatch):
    """Item 14: with a change every 4 s somewhere, a stream watching an unchanged key
    got no heartbeat in 19 s: the 15 s timer restarted on every change of any key."""
    monkeypatch.setattr(server, "WATCH_HEARTBEAT", 0.6)

    async def main():
        runner, url = await serve()                # the default limits
        loop = asyncio.get_running_loop()
        busy = [d.DirectoryClient(url, bytearray(crypto.x25519_private())) for _ in range(5)]
        try:
            async with d.DirectoryClient(url, bytearray(crypto.x25519_private())) as quiet, \
                    aiohttp.ClientSession() as s:
                await quiet.publish("quiet", ["192.0.2.1:9000"], [], 600)
                lines = []
                async with s.post(url + "/watch", json={"keys": [d.b64(quiet.public_key)]}) as r:
                    reader = asyncio.ensure_future(read_lines(r, lines, loop))
                    try:
                        start, i = loop.time(), 0
                        while loop.time() - start < 3.0:      # other keys change 5x/s
                            i += 1
                            await busy[i % 5].publish("busy%d" % (i % 5),
                                                      ["192.0.2.2:%d" % (9000 + i)], [], 600)
                            await asyncio.sleep(0.2)
                        beats = [t for t, doc in lines if doc == {} and t >= start]
                        assert len(beats) >= 2, lines
                        assert all(doc == {} or doc["name"] == "quiet" for _, doc in lines)
                    finally:
                        reader.cancel()
        finally:
            for c in busy:
                await c.close()
            await runner.cleanup()
    run(main())


def test_one_host_cannot_take_the_watch_slots_and_its_slots_free_when_it_leaves(monkeypatch):
    """Item 7: 1,024 streams from one host exhausted the directory (503), and the
    slots stayed taken ~15 s after the host left.  Now a source holds at most
    ``source_watches`` (429 past it, with Retry-After), others are served, and a
    stream whose client is gone frees its slot within WATCH_GONE_CHECK."""
    monkeypatch.setattr(server, "WATCH_HEARTBEAT", 0.5)
    limits = server.Limits(0, 0, 0, source_watches=4, max_watches=6)

    async def main():
        runner, url = await serve_with(limits)
        loop = asyncio.get_running_loop()
        try:
            async with d.DirectoryClient(url, bytearray(crypto.x25519_private())) as owner:
                await owner.publish("owner", ["192.0.2.1:9000"], [], 600)
                body = {"keys": [d.b64(owner.public_key)]}
                greedy = session_from("127.0.0.1")
                held = []
                try:
                    for _ in range(4):
                        r = await greedy.post(url + "/watch", json=body)
                        assert r.status == 200
                        held.append(r)
                    r = await greedy.post(url + "/watch", json=body)
                    assert r.status == 429, r.status
                    assert int(r.headers["Retry-After"]) >= 1
                    assert "watch" in (await r.json())["error"]
                    r.release()
                    # another host is served: its current record, heartbeats and changes
                    async with session_from("127.0.0.2") as other:
                        async with other.post(url + "/watch", json=body) as r:
                            assert r.status == 200
                            lines = []
                            reader = asyncio.ensure_future(read_lines(r, lines, loop))
                            try:
                                await owner.publish("owner", ["192.0.2.9:9000"], [], 600)
                                for _ in range(60):
                                    if any(doc == {} for _, doc in lines) and any(
                                            doc.get("endpoints") == ["192.0.2.9:9000"]
                                            for _, doc in lines):
                                        break
                                    await asyncio.sleep(0.05)
                                else:
                                    raise AssertionError(lines)
                            finally:
                                reader.cancel()
                    # the greedy host leaves: its slots are free again within a second or so
                    for r in held:
                        r.close()
                    await greedy.close()
                    t0 = loop.time()
                    async with session_from("127.0.0.1") as back:
                        while True:
                            async with back.post(url + "/watch", json=body) as r:
                                if r.status == 200:
                                    break
                            assert loop.time() - t0 < 3.0, "slots still held after 3 s"
                            await asyncio.sleep(0.1)
                    # the front end's own bound: 503, with Retry-After
                    sessions = [session_from("127.0.0.%d" % i) for i in range(3, 10)]
                    try:
                        codes = []
                        for sess in sessions:
                            r = await sess.post(url + "/watch", json=body)
                            codes.append(r.status)
                            if r.status != 200:
                                assert "Retry-After" in r.headers
                        assert codes.count(503) >= 1 and codes.count(200) <= 6, codes
                    finally:
                        for sess in sessions:
                            await sess.close()
                finally:
                    if not greedy.closed:
                        await greedy.close()
        finally:
            await runner.cleanup()
    run(main())


@pytest.mark.parametrize("refusal", [503, 429])
def test_a_client_refused_a_watch_polls_instead(refusal, monkeypatch):
    """Item 7: on 503 the client only backed off (up to 30 s) and never polled:
    a moved peer went unnoticed.  Now it polls while the directory refuses it."""
    if refusal == 503:
        monkeypatch.setattr(server, "WATCHERS_MAX", 0)       # every stream slot taken

    async def main():
        if refusal == 503:
            runner, url = await serve()
        else:
            runner, url = await serve_with(server.Limits(source_watches=1))
        try:
            async with d.DirectoryClient(url, bytearray(crypto.x25519_private())) as owner, \
                    d.DirectoryClient(url) as watcher, \
                    aiohttp.ClientSession() as hog:
                watcher.poll = 0.2                   # (seconds between polls)
                await owner.publish("owner", ["192.0.2.1:9000"], [], 600)
                hold = None
                if refusal == 429:                   # this host's one slot is taken
                    hold = await hog.post(url + "/watch", json={"keys": [d.b64(owner.public_key)]})
                    assert hold.status == 200
                seen = []
                event = asyncio.Event()

                def on_change(rec):
                    seen.append(rec.endpoints)
                    event.set()
                task = asyncio.ensure_future(watcher.watch([owner.public_key], on_change))
                try:
                    await asyncio.wait_for(event.wait(), 5)
                    event.clear()
                    await owner.publish("owner", ["192.0.2.9:9000"], [], 600)
                    await asyncio.wait_for(event.wait(), 5)
                finally:
                    task.cancel()
                    if hold is not None:
                        hold.close()
                assert seen[-1] == (("192.0.2.9", 9000),)
                assert watcher.stats["watch_refused"] >= 1 and watcher.stats["watch_polling"] >= 1
        finally:
            await runner.cleanup()
    run(main())
