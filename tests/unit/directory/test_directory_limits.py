"""Per-source limits of the directory service (issue 18 items 4 and 5), over HTTP
on a real localhost socket: rate limits and quotas answered 429 with Retry-After,
endorsements refused (never silently dropped), counters on /status.

Two sources on one machine: any 127/8 address is loopback, so a client bound to
127.0.0.2 is another source than one on 127.0.0.1, as far as the directory knows.
The store-level rules are tested on all three backends in test_directory_store.py.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from phantom import crypto
from phantom import directory as d
from phantom.directory import server
from phantom.directory.server import Limits, RateLimiter

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def newkey() -> bytearray:
    return bytearray(crypto.x25519_private())


@contextlib.asynccontextmanager
async def directory(limits: Limits, trusted=(), clock=lambda: T0):
    store = d.DirectoryStore(":memory:")
    app = d.create_app(store, clock=clock, trusted_signers=trusted, limits=limits)
    runner = await d.start_server(app, "127.0.0.1", 0)
    try:
        yield "http://127.0.0.1:%d" % runner.addresses[0][1]
    finally:
        await runner.cleanup()
        store.close()


def session_from(ip: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))


def record(key=None, name="n", seq=1, ttl=600):
    signer = d.NodeSigner(key or newkey())
    try:
        return d.make_record(signer, name, ["192.0.2.1:9000"], [], seq, int(T0) + ttl)
    finally:
        signer.wipe()


async def put(s: aiohttp.ClientSession, url: str, doc: dict):
    path = "/records/" + d.b64url(d.key_from_text(doc["public_key"]))
    async with s.put(url + path, data=d.canonical(doc),
                     headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


def test_the_source_and_key_rate_limits_answer_429_with_retry_after():
    async def main():
        async with directory(Limits(source_writes_per_minute=5, key_writes_per_minute=0,
                                    source_quota=0)) as url:
            async with session_from("127.0.0.1") as a, session_from("127.0.0.2") as b:
                for i in range(5):
                    assert (await put(a, url, record(name="a%d" % i)))[0] == 201
                status, body, retry = await put(a, url, record(name="a5"))
                assert status == 429, body
                assert 1 <= int(retry) <= 13 and body["retry_after"] == int(retry)
                assert "127.0.0.1" in body["error"]
                assert (await put(b, url, record(name="b0")))[0] == 201   # another source
        async with directory(Limits(source_writes_per_minute=0, key_writes_per_minute=3,
                                    source_quota=0)) as url:
            key = newkey()
            async with session_from("127.0.0.1") as a, session_from("127.0.0.2") as b:
                for seq in (1, 2, 3):
                    assert (await put(a, url, record(key, seq=seq)))[0] in (200, 201)
                # the key's own bound, whoever sends: 429
                status, body, retry = await put(b, url, record(key, seq=4))
                assert status == 429 and int(retry) >= 1, body
                assert (await put(b, url, record(name="other")))[0] == 201
    run(main())


def test_one_source_cannot_grow_the_directory_past_its_quota():
    """Item 5 over HTTP: 429 past the quota; /status shows the store bounded and
    the refusals counted."""
    async def main():
        async with directory(Limits(source_writes_per_minute=0, key_writes_per_minute=0,
                                    source_quota=4)) as url:
            async with session_from("127.0.0.1") as a, session_from("127.0.0.2") as b:
                codes = [(await put(a, url, record(name="a%d" % i)))[0] for i in range(10)]
                assert codes == [201] * 4 + [429] * 6, codes
                assert (await put(b, url, record(name="b")))[0] == 201
                async with a.get(url + "/status") as r:
                    status = await r.json()
                assert status["records"] == 5
                assert status["counters"]["limited"] == 6
                assert status["limits"]["source_quota"] == 4
    run(main())


def test_endorsements_are_refused_not_dropped():
    """Item 4 over HTTP: the reported junk (expires 2^62) is 400; past 16 a new
    signer gets 409; an untrusted signer 403; the client raises on each."""
    async def main():
        ca_key, owner_key = newkey(), newkey()
        ca = d.signing_key_of(ca_key)
        async with directory(Limits.unlimited()) as url:
            async with d.DirectoryClient(url, owner_key, lambda: T0) as owner, \
                    d.DirectoryClient(url, ca_key, lambda: T0) as ca_client:
                await owner.publish("bob", ["192.0.2.1:9000"], [], 600)
                stored = await ca_client.endorse(owner.public_key, "bob", 3600)
                assert len(stored["endorsements"]) == 1
                # re-endorsing is answered 200 because it is stored (the client checks)
                again = await ca_client.endorse(owner.public_key, "bob", 3600)
                assert len(again["endorsements"]) == 1 and again["endorsements"] != \
                    stored["endorsements"]
                junk = [d.DirectoryClient(url, newkey(), lambda: T0) for _ in range(16)]
                try:
                    with pytest.raises(d.DirectoryRejected) as err:
                        await junk[0].endorse(owner.public_key, "bob", 2 ** 62 - int(T0))
                    assert err.value.status == 400 and "too long" in err.value.message
                    for j in junk[:15]:
                        await j.endorse(owner.public_key, "bob", 3600)
                    with pytest.raises(d.DirectoryRejected) as err:
                        await junk[15].endorse(owner.public_key, "bob", 3600)
                    assert err.value.status == 409
                finally:
                    for j in junk:
                        await j.close()
                async with d.DirectoryClient(url, None, lambda: T0,
                                             trusted_signers=[ca]) as reader:
                    rec = await reader.resolve_key(owner.public_key)
                    assert rec.endorsed_by == {ca}
        async with directory(Limits.unlimited(), trusted=[ca]) as url:
            async with d.DirectoryClient(url, owner_key, lambda: T0) as owner, \
                    d.DirectoryClient(url, newkey(), lambda: T0) as rogue:
                await owner.publish("bob", ["192.0.2.1:9000"], [], 600)
                with pytest.raises(d.DirectoryRejected) as err:
                    await rogue.endorse(owner.public_key, "bob", 3600)
                assert err.value.status == 403 and "not trusted" in err.value.message
    run(main())


def test_a_publisher_told_429_waits_what_it_was_told():
    async def main():
        async with directory(Limits(source_writes_per_minute=1, key_writes_per_minute=0,
                                    source_quota=0)) as url:
            async with d.DirectoryClient(url, newkey(), lambda: T0) as c:
                await c.publish("c", ["192.0.2.1:9000"], [], 600)
                with pytest.raises(d.DirectoryRejected) as err:
                    await c.publish("c", ["192.0.2.2:9000"], [], 600)
                assert err.value.status == 429 and err.value.retry_after >= 30
    run(main())


def test_rate_limiter_memory_is_bounded():
    now = [0.0]
    lim = RateLimiter(2, max_keys=100, clock=lambda: now[0])
    for i in range(1000):
        lim.take("s%d" % i)
        assert len(lim._buckets) <= 100
    assert lim.take("x") == 0.0 and lim.take("x") == 0.0
    assert lim.take("x") == pytest.approx(30.0)          # 2 a minute: the next in 30 s
    now[0] += 30.0
    assert lim.take("x") == 0.0
    assert RateLimiter(0).take("any") == 0.0              # 0: no limit


def test_sources_are_addresses_and_ipv6_slash_64s():
    class Req:
        def __init__(self, remote):
            self.remote = remote
    assert server.source_of(Req("192.0.2.7")) == "192.0.2.7"
    assert server.source_of(Req("::ffff:192.0.2.7")) == "192.0.2.7"
    assert server.source_of(Req("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert server.source_of(Req("2001:db8:1:2:bbbb::9")) == "2001:db8:1:2::/64"
    assert server.source_of(Req("fe80::1%eth0")) == "fe80::/64"
    assert server.source_of(Req(None)) == "local"
