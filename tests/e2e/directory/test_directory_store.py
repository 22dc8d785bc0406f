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
from phantom import directory as d
from phantom.directory import store as st
from phantom.http.statuses import status_of

from phantomlab.stores import Swarm, dht_missing

pytestmark = pytest.mark.timeout(90)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("dht", marks=pytest.mark.dht)]
T0 = 1_700_000_000.0


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
        from phantom.directory.store.postgres import PostgresStore
        s = await PostgresStore(await cluster.new_database()).open()
        try:
            yield s
        finally:
            await s.close()
    else:
        missing = dht_missing()
        if missing:
            pytest.skip(missing)
        from phantom.directory.store.dht import DhtStore
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


# --- revocations: final while kept, and kept a bounded time ------------------------------------------------
def test_revocation_is_final_and_its_storage_bounded(backend, request):
    """Issue 18 item 5: revocations skipped the max-ttl check and were never purged
    (100 with expires=1 still held after the purge).  Now a revocation is kept until
    its own expires, at most max_ttl, and never before the key's last record expired."""
    async def main():
        async with open_backend(backend, request) as s:
            k = Key()
            await publish(s, k, k.rec(seq=5, ttl=600))
            # the client signs revocations for a year: this directory keeps it max_ttl
            await publish(s, k, k.rec(seq=d.MAX_SEQ, ttl=365 * 86400, revoked=True,
                                      endpoints=()))
            for seq in (6, d.MAX_SEQ):
                with pytest.raises(st.KeyRevoked):
                    await publish(s, k, k.rec(seq=seq, name="alice2"))
            assert (await s.get(k.text)).revoked
            if not s.supports_list:
                assert await s.purge(int(T0) + 10 ** 7) == 0        # the DHT forgets by itself
                return
            bound = int(T0) + st.DEFAULT_MAX_TTL + st.CLOCK_SKEW
            assert (await s.get(k.text)).expires == bound
            assert await s.purge(bound - 1) == 0
            assert (await s.get(k.text)).revoked
            assert await s.purge(bound) == 1
            assert await s.get(k.text) is None

            # a revocation with expires=1 of a key whose record lives to T0+600: kept
            # until then (the record could be replayed before), and not a moment longer
            live, never = Key(), Key()
            await publish(s, live, live.rec("live", seq=1, ttl=600))
            await publish(s, live, dict(live.rec("live", seq=d.MAX_SEQ, revoked=True,
                                                 endpoints=(), ttl=1 - int(T0))))
            await publish(s, never, never.rec("never", seq=d.MAX_SEQ, revoked=True,
                                              endpoints=(), ttl=1 - int(T0)))
            assert await s.purge(int(T0) + 1) == 1                  # never's: nothing to outlive
            assert await s.get(never.text) is None
            with pytest.raises(st.KeyRevoked):
                await publish(s, live, live.rec("live", seq=2, ttl=600))
            assert await s.purge(int(T0) + 600) == 1
            assert await s.count() == 0
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


# --- issue 18: hostile third parties ---------------------------------------------------------------------------
def test_junk_endorsements_never_displace_a_ca_endorsement(backend, request):
    """Item 4: 16 endorsements by throwaway signers with expires = 2^62 evicted a CA's
    endorsement (the store kept the 16 latest), and re-endorsing was answered but
    dropped.  Now: one per signer, a bounded lifetime, no displacement, and every
    refusal is an error, never a silent drop."""
    async def main():
        async with open_backend(backend, request) as s:
            owner, ca = Key(), Key()
            junk = [Key() for _ in range(d.MAX_ENDORSEMENTS)]
            pub = owner.signer.public_key
            ca_end = d.make_endorsement(ca.signer, pub, "bob", int(T0) + 3600)
            if not s.supports_endorse:
                # the DHT holds only what the key's owner signed: nobody else adds anything
                await publish(s, owner, dict(owner.rec("bob", ttl=3600), endorsements=[ca_end]))
                for j in junk[:2]:
                    with pytest.raises(st.Unsupported):
                        await s.endorse(owner.text, d.make_endorsement(
                            j.signer, pub, "bob", 2 ** 62), T0)
                assert (await s.get(owner.text)).doc["endorsements"] == [ca_end]
                return
            await publish(s, owner, owner.rec("bob", ttl=3600))
            await s.endorse(owner.text, ca_end, T0)
            # the reported attack: 16 signers, expires 2^62 -- refused, not stored
            for j in junk:
                with pytest.raises(st.BadRecord, match="lives too long"):
                    await s.endorse(owner.text, d.make_endorsement(j.signer, pub, "bob", 2 ** 62),
                                    T0)
            assert (await s.get(owner.text)).doc["endorsements"] == [ca_end]
            # junk with an acceptable lifetime takes the free places, never the CA's
            for j in junk[:-1]:
                await s.endorse(owner.text, d.make_endorsement(j.signer, pub, "bob",
                                                               int(T0) + 7200), T0)
            with pytest.raises(st.EndorsementsFull) as err:
                await s.endorse(owner.text, d.make_endorsement(junk[-1].signer, pub, "bob",
                                                               int(T0) + 7200), T0)
            assert status_of(err.value) == 409
            held = (await s.get(owner.text)).doc["endorsements"]
            assert len(held) == d.MAX_ENDORSEMENTS and ca_end in held
            # the CA renews in its own place; an older one of its own cannot replace it
            renewed = d.make_endorsement(ca.signer, pub, "bob", int(T0) + 7000)
            stored = await s.endorse(owner.text, renewed, T0)
            assert renewed in stored.doc["endorsements"]
            assert ca_end not in stored.doc["endorsements"]
            with pytest.raises(st.StaleEndorsement):
                await s.endorse(owner.text, ca_end, T0)
            # the owner's next record keeps them all, the CA's included
            stored, _ = await publish(s, owner, owner.rec("bob", seq=2, ttl=3600))
            assert renewed in stored.doc["endorsements"]

            # with a trusted-signer list, other signers are refused and never stored
            owner2 = Key()
            trusted = [ca.signer.signing_key]
            await publish(s, owner2, owner2.rec("carol", ttl=3600), trusted=trusted)
            pub2 = owner2.signer.public_key
            for j in junk[:3]:
                with pytest.raises(st.UntrustedSigner):
                    await s.endorse(owner2.text, d.make_endorsement(j.signer, pub2, "carol",
                                                                    int(T0) + 60), T0,
                                    trusted=trusted)
            mine = d.make_endorsement(ca.signer, pub2, "carol", int(T0) + 3600)
            stored = await s.endorse(owner2.text, mine, T0, trusted=trusted)
            assert stored.doc["endorsements"] == [mine]
            assert stored.endorsed_until == int(T0) + 3600
            # ... and so is an untrusted one the owner carries itself
            with pytest.raises(st.UntrustedSigner):
                await publish(s, owner2, dict(owner2.rec("carol", seq=2, ttl=3600),
                                              endorsements=[d.make_endorsement(
                                                  junk[0].signer, pub2, "carol",
                                                  int(T0) + 60)]), trusted=trusted)
    run(main())


def test_a_record_naming_its_endorsers_takes_no_one_elses(backend, request):
    """Item 4, the gap left after one-per-signer: without --trusted-signer, anyone could
    fill a record's 16 free places before the CA endorsed it, and the CA then got 409.
    A record that names its endorsers (a signed field: the owner's choice) takes
    endorsements from them only: 403 for anyone else, nothing stored, and the CA's
    endorsement then succeeds.  On the DHT, where only the owner puts its item, the
    same rule holds on write and on read."""
    async def main():
        async with open_backend(backend, request) as s:
            owner, ca = Key(), Key()
            pub, ca_key = owner.signer.public_key, ca.signer.signing_key
            junk = [d.make_endorsement(Key().signer, pub, "bob", int(T0) + 3600)
                    for _ in range(d.MAX_ENDORSEMENTS)]
            ca_end = d.make_endorsement(ca.signer, pub, "bob", int(T0) + 3600)

            def rec(who=owner, seq=1, endorsers=(ca_key,), endorsements=(), name="bob"):
                doc = d.make_record(who.signer, name, ["192.0.2.1:9000"], ["10.9.0.1/32"],
                                    seq, int(T0) + 3600, endorsers=endorsers)
                return dict(doc, endorsements=list(endorsements))

            # the owner's own record cannot carry another signer's endorsement either
            with pytest.raises(st.NotAnEndorser) as err:
                await publish(s, owner, rec(endorsements=[ca_end, junk[0]]))
            assert status_of(err.value) == 403
            if not s.supports_endorse:
                stored, _ = await publish(s, owner, rec(endorsements=[ca_end]))
                assert stored.doc["endorsements"] == [ca_end]
                # an item the owner put itself (not through a store) with others'
                # endorsements: read back, only the endorsers it names count
                from phantom.directory.store.dht import bep44_secret, encode_item
                secret, item_key = bep44_secret(owner.signer)
                await s.node.put(secret, item_key,
                                 encode_item(rec(seq=2, endorsements=[junk[0], ca_end])))
                got = await s.get(owner.text)
                assert got.seq == 2 and len(got.doc["endorsements"]) == 2
                assert d.parse_record(got.doc, T0, trusted_signers=None).endorsed_by == {ca_key}
                return
            await publish(s, owner, rec())
            for end in junk:                     # the attack: 16 throwaway signers first
                with pytest.raises(st.NotAnEndorser) as err:
                    await s.endorse(owner.text, end, T0)
                assert status_of(err.value) == 403
            assert (await s.get(owner.text)).doc["endorsements"] == []
            stored = await s.endorse(owner.text, ca_end, T0)
            assert stored.doc["endorsements"] == [ca_end]
            assert d.parse_record(stored.doc, T0, trusted_signers=[ca_key]).endorsed_by == \
                {ca_key}

            # a record without the field takes anyone's (blockable, as documented); its
            # owner's next record naming the CA drops the junk, and the CA gets its place
            other = Key()
            pub2 = other.signer.public_key
            await publish(s, other, rec(other, endorsers=(), name="carol"))
            for _ in range(d.MAX_ENDORSEMENTS):
                await s.endorse(other.text, d.make_endorsement(Key().signer, pub2, "carol",
                                                               int(T0) + 3600), T0)
            ca_end2 = d.make_endorsement(ca.signer, pub2, "carol", int(T0) + 3600)
            with pytest.raises(st.EndorsementsFull):
                await s.endorse(other.text, ca_end2, T0)
            stored, _ = await publish(s, other, rec(other, seq=2, name="carol"))
            assert stored.doc["endorsements"] == []
            assert (await s.endorse(other.text, ca_end2, T0)).doc["endorsements"] == [ca_end2]
    run(main())


def test_one_source_cannot_grow_the_store_past_its_quota(backend, request):
    """Item 5: one client stored 106 records/s.  A source (the server passes the
    client's address) holds at most ``quota`` live rows; past it, 429.  The DHT has
    no sources to count: what bounds it is libtorrent's cap on the items one node
    keeps for others (MAX_ITEMS), whatever one sender puts."""
    async def main():
        if backend == "dht":
            await _dht_flood_is_bounded()
            return
        async with open_backend(backend, request) as s:
            quota, src = 5, "198.51.100.7"
            keys = [Key() for _ in range(quota + 3)]
            for i, k in enumerate(keys[:quota]):
                await publish(s, k, k.rec("n%d" % i), source=src, quota=quota)
            for i, k in enumerate(keys[quota:], quota):
                with pytest.raises(st.QuotaExceeded) as err:
                    await publish(s, k, k.rec("n%d" % i), source=src, quota=quota)
                assert status_of(err.value) == 429
            # nor through revocations of keys it never published
            with pytest.raises(st.QuotaExceeded):
                await publish(s, keys[-1], keys[-1].rec("x", seq=d.MAX_SEQ, revoked=True,
                                                        endpoints=()), source=src, quota=quota)
            assert await s.count() == quota
            # updates of its own records go on; another source is not affected
            await publish(s, keys[0], keys[0].rec("n0", seq=2), source=src, quota=quota)
            await publish(s, keys[quota], keys[quota].rec("other"), source="203.0.113.9",
                          quota=quota)
            assert await s.count() == quota + 1
            # expired records count until they are purged; then the source may publish again
            later = T0 + 601
            k = keys[quota + 1]
            with pytest.raises(st.QuotaExceeded):
                await publish(s, k, k.rec("again", now=later), now=later, source=src,
                              quota=quota)
            assert await s.purge(int(later)) == quota + 1
            await publish(s, k, k.rec("again", now=later), now=later, source=src, quota=quota)
            # a revocation that expired at once (expires=1) still counts until purged
            k = keys[quota + 2]
            for i in range(quota - 1):
                r = Key()
                await publish(s, r, r.rec("r%d" % i, seq=d.MAX_SEQ, revoked=True, endpoints=(),
                                          ttl=1 - int(T0)), now=later, source=src, quota=quota)
            with pytest.raises(st.QuotaExceeded):
                await publish(s, k, k.rec("last", now=later), now=later, source=src,
                              quota=quota)
    run(main())


async def _dht_flood_is_bounded():
    from phantom.directory.store.dht import DhtNode, bep44_secret
    cap = 12
    swarm = await Swarm(6).start()
    target = await DhtNode("127.0.0.1:0", [("127.0.0.1", swarm.nodes[0].port)], timeout=8.0,
                           max_items=cap).start()
    try:
        for n in swarm.nodes:
            n.add_node("127.0.0.1", target.port)
        await target.wait_nodes(3, 20)
        sender = swarm.nodes[1]                      # one source: one address and port
        owner = d.NodeSigner(bytearray(crypto.x25519_private()))
        secret, key = bep44_secret(owner)
        for i in range(4 * cap):                     # distinct items: one key, many salts
            await sender.put(secret, key, b"%d" % i, salt=b"flood-%d" % i)
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            target._ses.post_session_stats()
            await asyncio.sleep(0.3)
            if target.items >= cap:
                break
        assert target.items == cap, "the node keeps %d items, its cap is %d" % (target.items, cap)
        await asyncio.sleep(1.0)
        assert target.items <= cap
    finally:
        await target.close()
        await swarm.close()


def test_a_watcher_gets_its_heartbeat_while_other_keys_change(backend, request):
    """Item 14: the heartbeat timer restarted on every change of any key, so a
    watcher of an unchanged key on a busy directory got nothing.  The heartbeat is
    due whenever *this* watcher was sent nothing for ``heartbeat`` seconds."""
    async def main():
        async with open_backend(backend, request) as s:
            watched, busy = Key(), Key()
            await publish(s, watched, watched.rec("w", ttl=3600))
            loop = asyncio.get_running_loop()
            got = []

            async def follow():
                async for row in s.watch([watched.text], heartbeat=0.6, duration=30,
                                         clock=lambda: T0):
                    got.append((loop.time(), row))
            task = asyncio.ensure_future(follow())
            try:
                while not got:
                    await asyncio.sleep(0.05)
                assert got[0][1].public_key == watched.text        # its current record first
                start, seq = loop.time(), 0
                while loop.time() - start < 3.0:                   # another key changes 5x/s
                    seq += 1
                    await publish(s, busy, busy.rec("b", seq=seq, ttl=3600))
                    await asyncio.sleep(0.2)
                beats = [t for t, row in got if row is None and t >= start]
                assert len(beats) >= 2, "%d heartbeats in 3 s, one due every 0.6 s" % len(beats)
                assert all(row is None or row.public_key == watched.text for _, row in got)
                # and a change of the watched key still arrives
                n = len(got)
                await publish(s, watched, watched.rec("w", seq=2, ttl=3600))
                for _ in range(100):
                    if any(row is not None and row.seq == 2 for _, row in got[n:]):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the watched key's change did not arrive")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    run(main())
