"""The network's tables in the SQLite store (store/ledger.py): the join
transaction of phantom/network/join.py run on real SQLite rows, the unique
constraints, the retry on a conflict, and interleaved writers on one file.
(PostgreSQL: tests/e2e/directory/test_network_join.py.)"""

from __future__ import annotations

import asyncio
import threading

import pytest

from phantom import crypto
from phantom.directory.records import NodeSigner
from phantom.directory.store.sqlite import DirectoryStore
from phantom.network import create_invite
from phantom.network import join as J
from phantom.network.errors import InviteError

from ..network.factory import NOW, Net

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def request(token, name=None, now=NOW):
    signer = NodeSigner(bytearray(crypto.x25519_private()))
    try:
        return J.make_join_request(token, signer.public_key, signer.signing_key, signer.sign,
                                   now, name=name)
    finally:
        signer.wipe()


def opened(net: Net, path=":memory:"):
    store = DirectoryStore(path)
    tables = run(store.network().open(net.definition))
    return store, tables


def invite(net: Net, tables, uses=1, name=None, groups=()):
    token, record = create_invite(net.definition, NOW, uses=uses, name=name, groups=groups)
    tables.transact_sync(lambda led: J.add_invite(led, record))
    return token


def do_join(net, tables, req):
    return tables.transact_sync(lambda led: J.join(led, net.definition, net.admission, req, NOW))


def rows(tables):
    return run(tables.read(lambda led: (led.members(), led.invites(), led.stream(0))))


def test_a_join_writes_the_invite_the_member_and_one_event_in_one_transaction():
    net = Net()
    store, tables = opened(net)
    token = invite(net, tables, uses=2)
    r = do_join(net, tables, request(token, "laptop"))
    members, invites, events = rows(tables)
    assert [m.name for m in members] == ["laptop"] and str(r.certificate.ipv4) == "100.87.0.1"
    assert invites[0].used == 1 and [e["seq"] for e in events] == [1]
    assert events[0]["op"] == "member" and events[0]["cert"] == r.certificate.doc
    # a refused join (the name is taken) leaves every row as it was
    with pytest.raises(J.JoinError) as exc:
        do_join(net, tables, request(token, "laptop"))
    assert exc.value.code == "name_taken"
    assert rows(tables) == (members, invites, events)
    store.close()


def test_the_unique_constraints_refuse_a_second_holder_of_an_address_or_a_current_name():
    net = Net()
    store, tables = opened(net)
    a, b = net.cert("a"), net.cert("b")
    tables.transact_sync(lambda led: led.save_member(J.MemberRecord(a, "")))
    clash = net.cert("c", ipv4=a.ipv4)                      # another key, a's address
    with pytest.raises(J.JoinError) as exc:
        tables.transact_sync(lambda led: led.save_member(J.MemberRecord(clash, "")))
    assert exc.value.code == "conflict"
    same_name = net.cert("a", key=b.key, ipv4="100.87.0.9")
    with pytest.raises(J.JoinError):
        tables.transact_sync(lambda led: led.save_member(J.MemberRecord(same_name, "")))
    # removed, its name is free at once (the unique index covers current members only)
    tables.transact_sync(lambda led: J.remove(led, net.definition, net.admission, "a", NOW))
    tables.transact_sync(lambda led: led.save_member(J.MemberRecord(same_name, "")))
    members = run(tables.read(lambda led: led.members()))
    assert sorted((m.name, m.removed is not None) for m in members) == [("a", False), ("a", True)]
    assert tables.retries >= 2                               # each conflict was retried, then raised
    store.close()


class StaleMembers:
    """The ledger of a front end whose read of the members missed one committed
    just before (what two front ends without a lock would do)."""

    def __init__(self, led, hide):
        self.led, self.hide, self.first = led, hide, True

    def __getattr__(self, name):
        return getattr(self.led, name)

    def members(self):
        return [m for m in self.led.members() if m.name != self.hide]

    def _hidden(self):
        return {m.key for m in self.led.members() if m.name == self.hide}

    def addresses(self):
        return [a for a in self.led.addresses() if a[0] not in self._hidden()]

    # what a join reads to allocate: the holder of an address, and the cursor
    # as it was before the hidden member's join moved it
    def holder(self, address):
        held = self.led.holder(address)
        return None if held in self._hidden() else held

    def alloc_cursor(self):
        return None


def test_a_stale_read_hits_the_unique_constraint_and_the_retry_allocates_the_next_address():
    net = Net()
    store, tables = opened(net)
    token = invite(net, tables, uses=5)
    first = do_join(net, tables, request(token, "one")).certificate
    attempts = []

    def stale_once(led):
        attempts.append(1)
        view = StaleMembers(led, "one") if len(attempts) == 1 else led
        return J.join(view, net.definition, net.admission, request(token, "two"), NOW)

    second = tables.transact_sync(stale_once).certificate
    assert len(attempts) == 2 and tables.retries == 1
    assert first.ipv4 != second.ipv4 and str(second.ipv4) == "100.87.0.2"
    members, invites, events = rows(tables)
    assert len(members) == 2 and invites[0].used == 2 and [e["seq"] for e in events] == [1, 2]
    store.close()


def test_an_invite_used_meanwhile_is_not_used_twice():
    """This transaction read the invite unused; another front end's join used
    it up before this one wrote (what a store without the lock would let
    happen): the write finds ``used`` changed, the retry reads it used up and
    refuses; one member, one use."""
    net = Net()
    store, tables = opened(net)
    token = invite(net, tables, uses=1)
    before = run(tables.read(lambda led: led.invite(token.id)))      # used 0
    do_join(net, tables, request(token, "first"))                     # the other front end's
    attempts = []

    def raced(led):
        attempts.append(1)
        if len(attempts) == 1:                  # the first attempt read before that commit
            def stale(invite_id):
                led._used[invite_id] = before.used
                return before
            led.invite = stale
        return J.join(led, net.definition, net.admission, request(token, "late"), NOW)

    with pytest.raises(InviteError) as exc:
        tables.transact_sync(raced)
    assert exc.value.code == "used" and len(attempts) == 2
    members, invites, _ = rows(tables)
    assert [m.name for m in members] == ["first"] and invites[0].used == 1
    store.close()


def test_fifty_joins_from_two_connections_on_one_file_in_two_threads(tmp_path):
    net = Net()
    path = tmp_path / "dir.sqlite"
    s1, t1 = opened(net, path)
    s2, t2 = opened(net, path)
    tokens = [invite(net, t1, uses=3) for _ in range(20)]     # 60 uses for 50 joins
    results, errors = [], []
    lock = threading.Lock()

    def worker(tables, offset):
        for i in range(25):
            token = tokens[(offset + i) % len(tokens)]
            try:
                r = do_join(net, tables, request(token, "m%d" % (offset + i)))
                with lock:
                    results.append(r.certificate)
            except Exception as exc:                       # collected, asserted below
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t, off)) for t, off in ((t1, 0), (t2, 25))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert errors == []
    assert len({c.ipv4 for c in results}) == 50 and len({c.ipv6 for c in results}) == 50
    assert len({c.name for c in results}) == 50 and len({c.serial for c in results}) == 50
    members, invites, events = rows(t1)
    assert len(members) == 50 and all(i.used <= i.uses for i in invites)
    assert sum(i.used for i in invites) == 50
    assert [e["seq"] for e in events] == list(range(1, 51))
    s1.close()
    s2.close()


def test_a_store_holds_one_network_and_refuses_an_older_definition(tmp_path):
    net, other = Net(), Net(tag="other")
    path = tmp_path / "dir.sqlite"
    store, _ = opened(net, path)
    with pytest.raises(J.JoinError) as exc:
        run(DirectoryStore(path).network().open(other.definition))
    assert exc.value.code == "wrong_network" and "holds network" in str(exc.value)
    from phantom.network import revise
    newer = revise(net.definition, net.authority, NOW + 10, cert_lifetime=20 * 86400)
    run(DirectoryStore(path).network().open(newer))
    with pytest.raises(J.JoinError) as exc:
        run(DirectoryStore(path).network().open(net.definition))
    assert exc.value.code == "stale"
    store.close()


def test_a_join_parses_no_other_members_certificate_and_keeps_removed_addresses(monkeypatch):
    """The join transaction allocates from the address columns: it parses no
    stored certificate, so its cost does not grow with N parsed certificates
    (bench/network_scale.py measured 68 ms of directory CPU per join at 1,000
    members and linear growth before).  A removed member's addresses stay
    taken until its removal lapses, then its row is forgotten."""
    from phantom.directory.store import ledger as L
    net = Net(lifetime=3600)
    store, tables = opened(net)
    certs = [net.cert("m%d" % i) for i in range(40)]

    def fill(led):
        for c in certs:
            led.next_serial()
            led.save_member(J.MemberRecord(c, ""))
    tables.transact_sync(fill)
    tables.transact_sync(lambda led: J.remove(led, net.definition, net.admission, "m0", NOW))
    parsed = []
    real = L.parse_certificate
    monkeypatch.setattr(L, "parse_certificate", lambda raw: parsed.append(1) or real(raw))
    token = invite(net, tables, uses=2)
    r = do_join(net, tables, request(token, "new"))
    assert len(parsed) <= 1, "a join parsed %d stored certificates" % len(parsed)
    assert str(r.certificate.ipv4) == "100.87.0.41"       # m0's .1 is still held (removed)
    # past the removal's lapse (now + lifetime), m0's row goes and its address is free
    later = NOW + 3600 + 10
    req = request(token, "later", now=later)
    r2 = tables.transact_sync(lambda led: J.join(led, net.definition, net.admission, req, later))
    assert str(r2.certificate.ipv4) == "100.87.0.1"
    assert "m0" not in {m.name for m in rows(tables)[0]}
    store.close()


class CountingQuery:
    """A ledger's database connection that counts the rows each read returns."""

    def __init__(self, q):
        self.q, self.rows = q, 0

    def one(self, sql, *args):
        row = self.q.one(sql, *args)
        self.rows += row is not None
        return row

    def all(self, sql, *args):
        rows = self.q.all(sql, *args)
        self.rows += len(rows)
        return rows

    def run(self, sql, *args):
        return self.q.run(sql, *args)


def rows_read_by_a_join(n: int) -> tuple:
    """Rows a join reads with ``n`` members in the store (one removed, not
    lapsed yet), after one join has set the allocation cursor."""
    net = Net(lifetime=3600)
    store, tables = opened(net)
    certs = [net.cert("m%d" % i) for i in range(n)]

    def fill(led):
        for c in certs:
            led.next_serial()
            led.save_member(J.MemberRecord(c, ""))
    tables.transact_sync(fill)
    tables.transact_sync(lambda led: J.remove(led, net.definition, net.admission, "m3", NOW))
    token = invite(net, tables, uses=2)
    first = do_join(net, tables, request(token, "first")).certificate     # sets the cursor once
    counted = []

    def counted_join(led):
        led.q = CountingQuery(led.q)
        counted.append(led.q)
        return J.join(led, net.definition, net.admission, request(token, "second"), NOW)
    second = tables.transact_sync(counted_join).certificate
    store.close()
    return counted[-1].rows, str(first.ipv4), str(second.ipv4)


def test_a_join_reads_as_many_rows_with_2000_members_as_with_20():
    """Allocation is flat in N (bench/network_scale.py measured 52 ms of
    directory CPU per join at 10,000 members, 8 ms at 1,000, before): point
    lookups on the unique address columns, the store's cursor and freed
    list, the lapsed removals by index; never every member's row."""
    small, big = rows_read_by_a_join(20), rows_read_by_a_join(2000)
    assert small[1:] == ("100.87.0.21", "100.87.0.22")
    assert big[1:] == ("100.87.7.209", "100.87.7.210")        # 2001st and 2002nd hosts
    assert small[0] == big[0] and big[0] < 20, (small, big)


def test_allocation_stays_the_lowest_free_address_through_removals_and_lapses():
    """The cursor and the freed list give exactly what reading every row
    gave: the lowest host address no current (or not yet lapsed) member
    holds, on SQLite and on the in-memory ledger alike."""
    import random
    from phantom.network.allocate import allocate
    rnd = random.Random(7)
    net = Net(lifetime=3600)
    store, tables = opened(net)
    mem = J.MemoryLedger()
    token, record = create_invite(net.definition, NOW, uses=10 ** 6)
    tables.transact_sync(lambda led: J.add_invite(led, record))
    J.add_invite(mem, record)
    now, names = NOW, []
    for step in range(160):
        now += rnd.choice([1, 1, 1, 1200])
        if names and rnd.random() < 0.3:
            gone = names.pop(rnd.randrange(len(names)))
            tables.transact_sync(lambda led: J.remove(led, net.definition, net.admission, gone, now))
            J.remove(mem, net.definition, net.admission, gone, now)
            continue
        # what the old code allocated: the lowest address over every unlapsed row
        held = [m for m in mem.members() if not J.lapsed(m, net.definition, now)]
        want = allocate(net.definition, [m.cert.ipv4 for m in held], [m.cert.ipv6 for m in held])
        name = "n%d" % step
        req = request(token, name, now=now)
        got = tables.transact_sync(lambda led: J.join(led, net.definition, net.admission, req,
                                                      now)).certificate
        got_mem = J.join(mem, net.definition, net.admission, req, now).certificate
        assert (got.ipv4, got.ipv6) == want == (got_mem.ipv4, got_mem.ipv6), step
        names.append(name)
    store.close()
