"""The network policy in PostgreSQL (issue 21 item 3): two front ends'
network tables on one real database (phantomlab/stores.py) set policies
concurrently; every set gets its own seq (no two policies with one seq, the
one in force is the last), each is one event of the member stream in commit
order, and a set that fails leaves nothing behind.  (SQLite and the HTTP
routes: tests/unit/directory/test_network_policy.py.)"""

from __future__ import annotations

import asyncio

import pytest

from phantom.directory.store.postgres import PostgresStore
from phantom.network import join as J
from phantom.network import policy as P
from tests.unit.network.factory import NOW, Net

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

SOURCE = 'default = "deny"\n[[rule]]\nfrom = "group:laptops"\nto = "group:servers"\n' \
         'proto = "tcp"\nports = [%d]\n'


def run(coro, timeout: float = 90.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_concurrent_policy_sets_on_two_front_ends_get_distinct_seqs(pg):
    net = Net()

    async def main():
        dsn = await pg.new_database()
        stores = [await PostgresStore(dsn).open() for _ in range(2)]
        try:
            tables = [await s.network().open(net.definition) for s in stores]

            async def set_one(i):
                body = P.parse_policy_source(SOURCE % (1000 + i))
                return await tables[i % 2].transact(lambda led: J.set_policy(
                    led, net.definition, net.admission, body, NOW + i))

            results = await asyncio.gather(*(set_one(i) for i in range(20)))
            seqs = sorted(p.seq for p, _ in results)
            assert seqs == list(range(1, 21))
            events = sorted(e for _, e in results)
            assert events == list(range(1, 21))
            # policy seq order is event order (both taken under the seq row's lock)
            assert all((p.seq == e) for p, e in results)
            held, stream = await tables[0].read(lambda led: (J.current_policy(led),
                                                             led.stream(0)))
            assert held.seq == 20 and [e["op"] for e in stream] == ["policy"] * 20
            P.verify_policy(held.doc, net.definition, NOW)
            assert held.doc == stream[-1]["policy"]

            def crash(led):
                J.set_policy(led, net.definition, net.admission, held.body, NOW)
                raise RuntimeError("after the append")
            with pytest.raises(RuntimeError):
                await tables[1].transact(crash)
            assert (await tables[0].read(J.current_policy)).seq == 20
            assert await tables[1].read(lambda led: led.seq()) == 20
        finally:
            for s in stores:
                await s.close()
    run(main())
