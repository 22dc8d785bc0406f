"""Routes and exits in PostgreSQL (issue 22): the advertisements table and
the approvals on two front ends sharing one real database
(phantomlab/stores.py): an advertisement stored through one is what the
other approves from, the reissued certificate is one ``member`` event, a
withdrawal narrows it, a replay is refused.  (SQLite and HTTP:
tests/unit/directory/test_network_advertise.py.)"""

from __future__ import annotations

import ipaddress

import pytest

from phantom.directory.store.postgres import PostgresStore
from phantom.network import join as J
from phantom.network import routes as RT
from phantom.network.invite import create_invite
from tests.e2e.directory.test_network_policy_pg import run
from tests.unit.network.factory import NOW, Net
from tests.unit.network.test_join import Node

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def test_advertise_on_one_front_end_approve_on_the_other(pg):
    net = Net()
    node = Node("pg-router")

    def adv(routes, exit, now):
        return RT.make_advertisement(net.definition.fingerprint, node.key,
                                     node.signer.signing_key, node.signer.sign, routes, exit, now)

    async def main():
        dsn = await pg.new_database()
        stores = [await PostgresStore(dsn).open() for _ in range(2)]
        try:
            one, two = [await s.network().open(net.definition) for s in stores]
            token, record = create_invite(net.definition, NOW, name="r")
            await one.transact(lambda led: J.add_invite(led, record))
            await one.transact(lambda led: J.join(led, net.definition, net.admission,
                                                  node.request(token, name="r"), NOW))
            await two.transact(lambda led: RT.advertise(
                led, net.definition, net.admission, adv(["192.168.50.0/24"], True, NOW), NOW))
            result = await one.transact(lambda led: RT.approve(
                led, net.definition, net.admission, "r", now=NOW + 1))
            c = result.certificate
            assert c.routes == (ipaddress.ip_network("192.168.50.0/24"),) and c.exit
            rows = await two.read(lambda led: RT.listing(led.members(), led.adverts(),
                                                         net.definition))
            assert rows[0]["approved"] == ["192.168.50.0/24"] and rows[0]["exit"]
            stream = await two.read(lambda led: led.stream(0))
            assert stream[-1]["op"] == "member" and stream[-1]["cert"] == c.doc
            # withdrawn through the other front end: narrowed in the same transaction
            _, narrowed = await two.transact(lambda led: RT.advertise(
                led, net.definition, net.admission, adv([], True, NOW + 2), NOW + 2))
            assert narrowed.certificate.routes == () and narrowed.certificate.exit
            with pytest.raises(J.JoinError) as e:                 # a replay of the older one
                await one.transact(lambda led: RT.advertise(
                    led, net.definition, net.admission, adv(["192.168.50.0/24"], True, NOW),
                    NOW + 3))
            assert e.value.code == "stale"
            held = await one.read(lambda led: led.advert(node.key))
            assert held["routes"] == [] and held["time"] == NOW + 2
        finally:
            for s in stores:
                await s.close()
    run(main())
