"""One store test suite, run against every backend: SQLite, PostgreSQL and the DHT.

PostgreSQL is a real server of our own (phantomlab/stores.py: initdb and
pg_ctl as an unprivileged user, Unix socket only, removed at the end); each
test gets a fresh database.  The DHT is a private swarm of 10 libtorrent
nodes on 127.0.0.1 in this process, bootstrapped only to each other.

Where a backend cannot do something (the DHT keeps no names, cannot list,
and carries only what the key's owner signed), the test checks that it says
so with ``Unsupported`` instead of silently doing something else.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from phantom import crypto
from phantom.control import directory as d
from phantom.control.directory import store as st

from phantomlab.stores import PgCluster, Swarm, dht_missing, pg_missing

pytestmark = pytest.mark.timeout(90)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("dht", marks=pytest.mark.dht)]
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def pg():
    missing = pg_missing()
    if missing:
        pytest.skip(missing)
    with PgCluster() as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def open_backend(kind: str, request):
    if kind == "sqlite":
        s = d.DirectoryStore(":memory:")
        try:
            yield s
        finally:
            await s.close()
    elif kind == "postgres":
        cluster = request.getfixturevalue("pg")
        from phantom.control.directory.store.postgres import PostgresStore
        s = await PostgresStore(await cluster.new_database()).open()
        try:
            yield s
        finally:
            await s.close()
    else:
        missing = dht_missing()
        if missing:
            pytest.skip(missing)
        from phantom.control.directory.store.dht import DhtStore
        swarm = await Swarm(10).start()
        s = DhtStore(swarm.nodes[0])
        try:
            yield s
        finally:
            await s.close()
            await swarm.close()


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Key:
    """A node key with its signer; ``rec()`` makes signed records."""

    def __init__(self):
        self.private = bytearray(crypto.x25519_private())
        self.signer = d.NodeSigner(self.private)
        self.text = d.b64(self.signer.public_key)

    def rec(self, name="alice", seq=1, ttl=600, now=T0, endpoints=("192.0.2.1:9000",),
            revoked=False):
        return d.make_record(self.signer, name, list(endpoints), ["10.9.0.1/32"], seq,
                             int(now) + ttl, revoked=revoked)


async def publish(s, owner: Key, doc, now=T0, **kw):
    if s.needs_signer:
        kw.setdefault("signer", owner.signer)
    return await s.publish(doc, now, **kw)


def resign(doc: dict, signer: d.NodeSigner) -> dict:
    doc = dict(doc)
    doc["sig"] = d.b64(signer.sign(d.record_signed_bytes(doc)))
    return doc


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


# --- verify on write ----------------------------------------------------------------------------------
def test_verify_on_write(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            k, other = Key(), Key()
            forged = resign(k.rec(endpoints=("192.0.2.66:9000",)), other.signer)
            with pytest.raises(st.ForgedRecord):
                await publish(s, k, forged)
            bound_wrong = dict(k.rec(), signing_key=d.b64(other.signer.signing_key))
            with pytest.raises(st.ForgedRecord):
                await publish(s, k, resign(bound_wrong, other.signer))
            with pytest.raises(st.BadRecord, match="expired"):
                await publish(s, k, k.rec(ttl=-1))
            with pytest.raises(st.BadRecord, match="too long"):
                await publish(s, k, k.rec(ttl=10 ** 8))
            with pytest.raises(st.BadRecord):
                await publish(s, k, dict(k.rec(), extra=1))
            with pytest.raises(st.BadRecord):
                await publish(s, k, k.rec(), key=other.text)     # the path names another key
            assert await s.get(k.text) is None
            stored, created = await publish(s, k, k.rec())
            assert created and stored.seq == 1 and stored.doc["endpoints"] == ["192.0.2.1:9000"]
            got = await s.get(k.text)
            assert got is not None and got.doc["sig"] == stored.doc["sig"]
            d.parse_record(got.doc, T0)                         # served as signed
    run(main())


# --- per-key highest seq wins ---------------------------------------------------------------------------
def test_highest_seq_wins_and_republish_is_idempotent(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            k = Key()
            first = k.rec(seq=10)
            assert (await publish(s, k, first))[1] is True
            again, created = await publish(s, k, first)
            assert not created and again.seq == 10                # the same record: idempotent
            for seq in (9, 10):
                with pytest.raises(st.StaleSeq) as err:
                    await publish(s, k, k.rec(seq=seq, endpoints=("192.0.2.9:9000",)))
                assert err.value.held == 10 and "stale seq" in str(err.value.message)
            stored, created = await publish(s, k, k.rec(seq=11, endpoints=("192.0.2.2:9000",)))
            assert not created and stored.seq == 11
            got = await s.get(k.text)
            assert got.seq == 11 and got.doc["endpoints"] == ["192.0.2.2:9000"]
    run(main())


# --- revocations forever ----------------------------------------------------------------------------------
def test_revocation_is_final(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            k = Key()
            await publish(s, k, k.rec(seq=5))
            await publish(s, k, k.rec(seq=d.MAX_SEQ, ttl=86400, revoked=True, endpoints=()))
            for seq in (6, d.MAX_SEQ):
                with pytest.raises(st.KeyRevoked):
                    await publish(s, k, k.rec(seq=seq, name="alice2"))
            assert (await s.get(k.text)).revoked
            # purging, long after every expiry, keeps the revocation
            assert await s.purge(int(T0) + 10 ** 7) == 0
            assert (await s.get(k.text)).revoked
    run(main())


# --- name claims ------------------------------------------------------------------------------------------
def test_name_claims(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            a, b, c = Key(), Key(), Key()
            await publish(s, a, a.rec("alice"))
            if not s.supports_names:
                # names are never taken from the DHT: a second key may say "alice",
                # and nobody can look anyone up by name there
                await publish(s, b, b.rec("alice"))
                with pytest.raises(st.Unsupported):
                    await s.by_name("alice", int(T0))
                return
            with pytest.raises(st.NameTaken):
                await publish(s, b, b.rec("alice"))
            assert (await s.by_name("alice", int(T0))).public_key == a.text
            # a's update under the same name is fine; a renamed record frees the name
            await publish(s, a, a.rec("alice", seq=2))
            await publish(s, a, a.rec("alice-renamed", seq=3))
            await publish(s, b, b.rec("alice"))
            assert (await s.by_name("alice", int(T0))).public_key == b.text
            # once b's claim expires, c may take the name
            later = T0 + 601
            await publish(s, c, c.rec("alice", now=later), now=later)
            assert (await s.by_name("alice", int(later))).public_key == c.text
    run(main())


def test_endorsed_claim_displaces_an_unendorsed_one(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            ca, squatter, owner = Key(), Key(), Key()
            trusted = [ca.signer.signing_key]
            await publish(s, squatter, squatter.rec("bob"), trusted=trusted)
            end = d.make_endorsement(ca.signer, owner.signer.public_key, "bob", int(T0) + 3600)
            doc = dict(owner.rec("bob"), endorsements=[end])
            if not s.supports_endorse:
                stored, _ = await publish(s, owner, doc, trusted=trusted)
                assert stored.doc["endorsements"] == [end]       # the owner may carry it
                with pytest.raises(st.Unsupported):
                    await s.endorse(owner.text, end, T0, trusted=trusted)
                return
            stored, _ = await publish(s, owner, doc, trusted=trusted)
            assert stored.endorsed_until == int(T0) + 3600
            assert (await s.by_name("bob", int(T0))).public_key == owner.text
            # an endorsement added afterwards by a third party is merged, one per signer
            other_ca = Key()
            with pytest.raises(st.UntrustedSigner):
                await s.endorse(owner.text, d.make_endorsement(
                    other_ca.signer, owner.signer.public_key, "bob", int(T0) + 99), T0,
                    trusted=trusted)
            newer = d.make_endorsement(ca.signer, owner.signer.public_key, "bob", int(T0) + 7200)
            stored = await s.endorse(owner.text, newer, T0, trusted=trusted)
            assert stored.doc["endorsements"] == [newer]
            with pytest.raises(st.NoRecord):
                await s.endorse(Key().text, newer, T0, trusted=trusted)
    run(main())


# --- expiry -------------------------------------------------------------------------------------------------
def test_expiry(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            k = Key()
            await publish(s, k, k.rec(ttl=100))
            after = int(T0) + 101
            got = await s.get(k.text)                  # get returns it; callers check expiry
            assert got is not None and got.expires <= after
            with pytest.raises(d.RecordError, match="expired"):
                d.parse_record(got.doc, after)
            if s.supports_names:
                assert await s.by_name("alice", after) is None
                assert await s.list(after) == []
                assert await s.purge(after) == 1
                assert await s.get(k.text) is None
            else:
                assert await s.purge(after) == 0        # the DHT forgets by itself
    run(main())


# --- paging ----------------------------------------------------------------------------------------------------
def test_paging(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            keys = [Key() for _ in range(7)]
            if not s.supports_list:
                with pytest.raises(st.Unsupported):
                    await s.list(int(T0))
                with pytest.raises(st.Unsupported):
                    await s.count()
                return
            for i, k in enumerate(keys):
                await publish(s, k, k.rec("n%d" % i))
            seen, after = [], ""
            while True:
                page = await s.list(int(T0), after, 3)
                seen += [r.public_key for r in page]
                if len(page) < 3:
                    break
                after = page[-1].public_key
            assert seen == sorted(k.text for k in keys)
            assert await s.count() == 7
    run(main())


# --- changes are pushed to watchers ---------------------------------------------------------------------------
def test_changes_reach_subscribers(backend, request):
    async def main():
        async with open_backend(backend, request) as s:
            k = Key()
            q = s.subscribe()
            try:
                await publish(s, k, k.rec(seq=1))
                # PostgreSQL: through NOTIFY; SQLite and the DHT: this process's writes
                # (the DHT pushes nothing from other nodes: DHT clients poll)
                item = await asyncio.wait_for(q.get(), 5)
                assert item.public_key == k.text and item.seq == 1
            finally:
                s.unsubscribe(q)
    run(main())
