"""Flat address allocation in PostgreSQL (issue 20: a join must not read
every member): two front ends' network tables on one real database
(phantomlab/stores.py) take turns at joins, removals and lapses, and every
join gets exactly the address the old rule gave (the lowest host address no
current or not-yet-lapsed member holds), through the store's cursor, freed
list and lapsed-removal index -- the SQL that SQLite runs in
tests/unit/directory/test_network_ledger.py, on PostgreSQL."""

from __future__ import annotations

import asyncio
import random

import pytest

from phantom import crypto
from phantom.directory.records import NodeSigner
from phantom.directory.store.postgres import PostgresStore
from phantom.network import allocate, create_invite
from phantom.network import join as J
from tests.unit.directory.test_network_ledger import CountingQuery
from tests.unit.network.factory import NOW, Net

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def request(token, name, now):
    signer = NodeSigner(bytearray(crypto.x25519_private()))
    try:
        return J.make_join_request(token, signer.public_key, signer.signing_key, signer.sign,
                                   now, name=name)
    finally:
        signer.wipe()


def test_two_front_ends_allocate_the_lowest_free_address_through_removals_and_lapses(pg):
    net = Net(lifetime=3600)
    rnd = random.Random(11)

    async def main():
        dsn = await pg.new_database()
        stores = [await PostgresStore(dsn).open() for _ in range(2)]
        try:
            tables = [await s.network().open(net.definition) for s in stores]
            mem = J.MemoryLedger()                       # the same history, the old rule
            token, record = create_invite(net.definition, NOW, uses=10 ** 6)
            await tables[0].transact(lambda led: J.add_invite(led, record))
            J.add_invite(mem, record)
            now, names = NOW, []
            for step in range(80):
                front = tables[step % 2]
                now += rnd.choice([1, 1, 1, 1200])
                if names and rnd.random() < 0.3:
                    gone = names.pop(rnd.randrange(len(names)))
                    await front.transact(lambda led: J.remove(led, net.definition,
                                                              net.admission, gone, now))
                    J.remove(mem, net.definition, net.admission, gone, now)
                    continue
                held = [m for m in mem.members() if not J.lapsed(m, net.definition, now)]
                want = allocate(net.definition, [m.cert.ipv4 for m in held],
                                [m.cert.ipv6 for m in held])
                name = "n%d" % step
                req = request(token, name, now)
                got = (await front.transact(lambda led: J.join(
                    led, net.definition, net.admission, req, now))).certificate
                J.join(mem, net.definition, net.admission, req, now)
                assert (got.ipv4, got.ipv6) == want, step
                names.append(name)
            members = await tables[1].read(lambda led: led.members())
            assert len({m.cert.ipv4 for m in members}) == len(members)
            # and a join reads a few rows, not every member's (the old rule read them all)
            counted = []

            def counted_join(led):
                led.q = CountingQuery(led.q)
                counted.append(led.q)
                return J.join(led, net.definition, net.admission, request(token, "last", now),
                              now)
            await tables[0].transact(counted_join)
            assert len(members) >= 30 and counted[-1].rows < 20, (len(members), counted[-1].rows)
        finally:
            for s in stores:
                await s.close()
    asyncio.run(asyncio.wait_for(main(), 150))
