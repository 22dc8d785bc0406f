"""The network's tables in a SQL store, and the join transaction's ledger over them.

One schema, the same SQL for SQLite and PostgreSQL (``?`` placeholders; the
PostgreSQL adaptor numbers them)::

    network_meta      k -> v: the network's fingerprint and its latest definition
    network_counters  serial (certificates), seq (the member stream), alloc4 (the
                      allocation cursor: every IPv4 address below it is held or freed)
    network_invites   id, used, doc (the invite record: the secret's hash, never the secret)
    network_members   key, name, ipv4 UNIQUE, ipv6 UNIQUE, removed, invite, cert;
                      name UNIQUE among current members (a partial index: removed IS NULL)
    network_adverts   key, doc: each member's latest signed advertisement of routes
                      and exit (issue 22, network/routes.py)
    network_events    seq, op, doc: the member stream (member, removed, policy, ...);
                      the policy in force is the last ``policy`` event's
    network_freed     ipv4 (an integer): addresses of deleted member rows below the
                      cursor, not given out again yet

A join allocates with point lookups on the unique address columns, the
cursor and the freed list (phantom/network/join.py ``_allocate``), and finds
lapsed removals through an index on ``removed``: its cost does not grow
with the number of members.

:class:`SqlLedger` is :class:`phantom.network.join.Ledger` over one open
transaction: :func:`phantom.network.join.join` and its siblings run on it
unchanged.  A store runs a change with :meth:`NetworkTables.transact`, which
first locks the ``seq`` counter row (PostgreSQL: ``SELECT ... FOR UPDATE``;
SQLite: ``BEGIN IMMEDIATE``), so the changes of every front end on one
database happen one after the other and each reads what the previous one
committed, and the stream's seq is in commit order (a reader of ``since=N``
never misses an event committed later with a lower seq).  The unique
constraints are the backstop: a violation (or PostgreSQL's serialization
failure or deadlock) rolls the transaction back and it runs again, up to
RETRIES times, then the caller gets ``JoinError("conflict")``.

Writes are checked against what the transaction read: an invite's ``used``
count must still be what it was (``UPDATE ... WHERE used = ?``), and a
member read as absent is INSERTed (a concurrent enrolment of the same key
is a unique violation, never an overwrite).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
from typing import Any, Callable, Optional

from phantom.network.canonical import b64, canonical
from phantom.network.certificate import parse_certificate
from phantom.network.invite import Invite, parse_invite
from phantom.network.join import JoinError, MemberRecord

RETRIES = 8
EVENTS_PAGE = 1000

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS network_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS network_counters (k TEXT PRIMARY KEY, v BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS network_invites (id TEXT PRIMARY KEY, created BIGINT NOT NULL,"
    " used BIGINT NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS network_members (key TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " ipv4 TEXT NOT NULL UNIQUE, ipv6 TEXT NOT NULL UNIQUE, removed BIGINT, invite TEXT NOT NULL,"
    " cert TEXT NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS network_members_current_name ON network_members (name)"
    " WHERE removed IS NULL",
    "CREATE INDEX IF NOT EXISTS network_members_by_name ON network_members (name)",
    "CREATE TABLE IF NOT EXISTS network_events (seq BIGINT PRIMARY KEY, op TEXT NOT NULL,"
    " doc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS network_events_by_op ON network_events (op, seq)",
    "CREATE INDEX IF NOT EXISTS network_members_by_removed ON network_members (removed)",
    "CREATE TABLE IF NOT EXISTS network_freed (ipv4 BIGINT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS network_adverts (key TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "INSERT INTO network_counters (k, v) VALUES ('serial', 0) ON CONFLICT (k) DO NOTHING",
    "INSERT INTO network_counters (k, v) VALUES ('seq', 0) ON CONFLICT (k) DO NOTHING",
)
LOCK_SQL = "SELECT v FROM network_counters WHERE k = 'seq'"

_MEMBER = "SELECT key, invite, removed, cert FROM network_members"


class Query:
    """What a ledger needs of a database connection, synchronously:
    ``one(sql, *args)`` -> a row or None, ``all(sql, *args)`` -> rows,
    ``run(sql, *args)`` -> rows changed.  A unique violation raises
    ``JoinError("conflict")``."""

    def one(self, sql: str, *args: Any) -> Optional[tuple]: ...
    def all(self, sql: str, *args: Any) -> list: ...
    def run(self, sql: str, *args: Any) -> int: ...


def _record(row) -> MemberRecord:
    return MemberRecord(parse_certificate(row[3]), row[1], None if row[2] is None else int(row[2]))


class SqlLedger:
    """:class:`phantom.network.join.Ledger` over one transaction (see the module doc)."""

    def __init__(self, q: Query):
        self.q = q
        self._used: dict = {}             # invite id -> used count as read (None: absent)
        self._present: dict = {}          # member key -> read as present?

    # invites
    def invite(self, invite_id: str) -> Optional[Invite]:
        row = self.q.one("SELECT doc FROM network_invites WHERE id = ?", invite_id)
        inv = None if row is None else parse_invite(row[0])
        self._used[invite_id] = None if inv is None else inv.used
        return inv

    def invites(self) -> list:
        return [parse_invite(r[0]) for r in
                self.q.all("SELECT doc FROM network_invites ORDER BY created, id")]

    def save_invite(self, invite: Invite) -> None:
        doc = canonical(invite.to_doc()).decode("ascii")
        if invite.id not in self._used:
            self.invite(invite.id)
        before = self._used[invite.id]
        if before is None:
            self.q.run("INSERT INTO network_invites (id, created, used, doc) VALUES (?, ?, ?, ?)",
                       invite.id, invite.created, invite.used, doc)
        elif self.q.run("UPDATE network_invites SET used = ?, doc = ? WHERE id = ? AND used = ?",
                        invite.used, doc, invite.id, before) != 1:
            raise JoinError("conflict", "invite %s changed under this transaction" % invite.id)
        self._used[invite.id] = invite.used

    # members
    def _seen(self, row) -> Optional[MemberRecord]:
        if row is None:
            return None
        self._present[row[0]] = True
        return _record(row)

    def member(self, key: bytes) -> Optional[MemberRecord]:
        k = b64(bytes(key))
        row = self.q.one(_MEMBER + " WHERE key = ?", k)
        if row is None:
            self._present[k] = False
        return self._seen(row)

    def member_named(self, name: str) -> Optional[MemberRecord]:
        """The current member called ``name``, else a removed one, else None."""
        return self._seen(self.q.one(
            _MEMBER + " WHERE name = ? ORDER BY (CASE WHEN removed IS NULL THEN 0 ELSE 1 END),"
            " key LIMIT 1", name))

    def members(self) -> list:
        return [self._seen(r) for r in self.q.all(_MEMBER + " ORDER BY key")]

    def addresses(self) -> list:
        """(key, IPv4, IPv6, removed) of every member row, from the columns:
        no certificate is parsed (a join reads these, whatever N is)."""
        v4, v6 = ipaddress.IPv4Address, ipaddress.IPv6Address       # inet_pton: strict, fast
        return [(base64.b64decode(k),
                 v4(int.from_bytes(socket.inet_pton(socket.AF_INET, a4), "big")),
                 v6(int.from_bytes(socket.inet_pton(socket.AF_INET6, a6), "big")),
                 None if r is None else int(r))
                for k, a4, a6, r in self.q.all("SELECT key, ipv4, ipv6, removed"
                                               " FROM network_members")]

    def holder(self, address) -> Optional[bytes]:
        """The key of the row holding ``address`` (its unique column's index)."""
        col = "ipv4" if address.version == 4 else "ipv6"
        row = self.q.one("SELECT key FROM network_members WHERE %s = ?" % col, str(address))
        return None if row is None else base64.b64decode(row[0])

    def lapsed(self, before: int) -> list:
        """(key, IPv4, IPv6) of the rows removed before ``before`` (indexed)."""
        return [(base64.b64decode(k), ipaddress.IPv4Address(a4), ipaddress.IPv6Address(a6))
                for k, a4, a6 in self.q.all("SELECT key, ipv4, ipv6 FROM network_members"
                                            " WHERE removed IS NOT NULL AND removed < ?",
                                            int(before))]

    def lowest_freed(self, first: int, last: int) -> Optional[int]:
        row = self.q.one("SELECT MIN(ipv4) FROM network_freed WHERE ipv4 >= ? AND ipv4 <= ?",
                         int(first), int(last))
        return None if row is None or row[0] is None else int(row[0])

    def alloc_cursor(self) -> Optional[int]:
        row = self.q.one("SELECT v FROM network_counters WHERE k = 'alloc4'")
        return None if row is None else int(row[0])

    def set_alloc_cursor(self, value: int) -> None:
        self.q.run("INSERT INTO network_counters (k, v) VALUES ('alloc4', ?) ON CONFLICT (k)"
                   " DO UPDATE SET v = excluded.v", int(value))

    def save_member(self, record: MemberRecord) -> None:
        k = b64(record.key)
        if k not in self._present:
            self.member(record.key)
        args = (record.name, str(record.cert.ipv4), str(record.cert.ipv6), record.removed,
                record.invite, canonical(record.cert.doc).decode("ascii"))
        if self._present[k]:
            self.q.run("UPDATE network_members SET name = ?, ipv4 = ?, ipv6 = ?, removed = ?,"
                       " invite = ?, cert = ? WHERE key = ?", *args, k)
        else:
            self.q.run("INSERT INTO network_members (name, ipv4, ipv6, removed, invite, cert, key)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)", *args, k)
            self._present[k] = True
        self.q.run("DELETE FROM network_freed WHERE ipv4 = ?", int(record.cert.ipv4))

    def delete_member(self, key: bytes) -> None:
        k = b64(bytes(key))
        row = self.q.one("SELECT ipv4 FROM network_members WHERE key = ?", k)
        self.q.run("DELETE FROM network_members WHERE key = ?", k)
        self._present[k] = False
        if row is not None:          # below the cursor: allocation finds it in the freed list
            self.q.run("INSERT INTO network_freed (ipv4) VALUES (?) ON CONFLICT (ipv4) DO NOTHING",
                       int(ipaddress.IPv4Address(row[0])))

    # advertisements (routes and exit, issue 22)
    def advert(self, key: bytes) -> Optional[dict]:
        row = self.q.one("SELECT doc FROM network_adverts WHERE key = ?", b64(bytes(key)))
        return None if row is None else json.loads(row[0])

    def adverts(self) -> dict:
        """member key -> its advertisement document."""
        return {base64.b64decode(k): json.loads(doc)
                for k, doc in self.q.all("SELECT key, doc FROM network_adverts")}

    def save_advert(self, key: bytes, doc: dict) -> None:
        self.q.run("INSERT INTO network_adverts (key, doc) VALUES (?, ?) ON CONFLICT (key) DO "
                   "UPDATE SET doc = excluded.doc", b64(bytes(key)), canonical(doc).decode("ascii"))

    # counters and the stream
    def _bump(self, which: str) -> int:
        self.q.run("UPDATE network_counters SET v = v + 1 WHERE k = ?", which)
        return int(self.q.one("SELECT v FROM network_counters WHERE k = ?", which)[0])

    def next_serial(self) -> int:
        return self._bump("serial")

    def append(self, event: dict) -> int:
        seq = self._bump("seq")
        self.q.run("INSERT INTO network_events (seq, op, doc) VALUES (?, ?, ?)", seq,
                   str(event.get("op", "")), canonical(event).decode("ascii"))
        return seq

    # reads for the routes
    def seq(self) -> int:
        return int(self.q.one("SELECT v FROM network_counters WHERE k = 'seq'")[0])

    def stream(self, since: int = 0, limit: int = EVENTS_PAGE) -> list:
        """The member stream's events after ``since`` (at most ``limit``), oldest first."""
        return [dict(json.loads(doc), seq=int(seq)) for seq, doc in self.q.all(
            "SELECT seq, doc FROM network_events WHERE seq > ? ORDER BY seq LIMIT ?",
            int(since), int(limit))]

    def policy_doc(self) -> Optional[dict]:
        """The last ``policy`` event's signed policy (the one in force), or None."""
        row = self.q.one("SELECT doc FROM network_events WHERE op = 'policy' ORDER BY seq DESC"
                         " LIMIT 1")
        return None if row is None else json.loads(row[0])["policy"]

    def removals(self) -> list:
        """Every removal event's removal document, oldest first."""
        return [json.loads(doc)["removal"] for (doc,) in self.q.all(
            "SELECT doc FROM network_events WHERE op = 'removed' ORDER BY seq")]

    def meta(self, k: str) -> Optional[str]:
        row = self.q.one("SELECT v FROM network_meta WHERE k = ?", k)
        return None if row is None else row[0]

    def set_meta(self, k: str, v: str) -> None:
        self.q.run("INSERT INTO network_meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE "
                   "SET v = excluded.v", k, v)


def retrying(attempt: Callable[[], Any], retries: int = RETRIES,
             on_retry: Optional[Callable[[int], None]] = None) -> Any:
    """Run ``attempt()`` (one whole transaction) again while it raises
    ``JoinError("conflict")``, at most ``retries`` times in all."""
    for n in range(retries):
        try:
            return attempt()
        except JoinError as exc:
            if exc.code != "conflict" or n == retries - 1:
                raise
            if on_retry is not None:
                on_retry(n)
    raise AssertionError("unreachable")


def definition_check(ledger: SqlLedger, definition: Any) -> None:
    """At a front end's start: the store holds this network (or none yet); a
    newer definition of it is recorded; an older one than the store's is refused."""
    from phantom.network.definition import parse_definition
    held = ledger.meta("network")
    if held is not None and held != definition.fingerprint:
        raise JoinError("wrong_network", "this directory store holds network %s, not %s (%s): "
                        "use another database" % (held, definition.fingerprint, definition.name))
    stored = ledger.meta("definition")
    if stored is not None:
        old = parse_definition(stored, definition.fingerprint)
        if old.seq > definition.seq:
            raise JoinError("stale", "the store holds definition seq %d of %s and this front "
                            "end's network.json is seq %d: copy the newer network.json and "
                            "admission.key here" % (old.seq, definition.name, definition.seq))
        if old.seq == definition.seq:
            return
    ledger.set_meta("network", definition.fingerprint)
    ledger.set_meta("definition", definition.encode().decode("ascii"))
