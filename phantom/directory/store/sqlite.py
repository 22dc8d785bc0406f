"""The embedded default store: one SQLite file, no other server needed.

Every method is a short synchronous SQLite transaction run on the event
loop.  A publish's reads and its write happen inside one ``BEGIN IMMEDIATE``
transaction with no await that suspends in between, so neither another
request of this process nor another process sharing the file (SQLite's
write lock) can interleave.  Changes are pushed to this process's watchers
only: front ends in other processes on the same file see new records on
their next read, not by push (use PostgreSQL for that).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from typing import Optional

from ..records import Record, canonical
from .base import LIST_LIMIT, Store, StoredRecord, Txn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    public_key     TEXT PRIMARY KEY,      -- standard base64
    name           TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    expires        INTEGER NOT NULL,
    revoked        INTEGER NOT NULL,
    endorsed_until INTEGER NOT NULL DEFAULT 0,   -- by a signer this directory trusts
    doc            TEXT NOT NULL,          -- the record JSON as served
    updated        REAL NOT NULL,
    source         TEXT NOT NULL DEFAULT ''  -- who wrote it last (quotas)
);
CREATE INDEX IF NOT EXISTS records_by_name ON records (name);
"""
# files made before quotas have no source column: added on open, then indexed
_INDEX_SOURCE = "CREATE INDEX IF NOT EXISTS records_by_source ON records (source)"

_COLUMNS = "public_key, name, seq, expires, revoked, endorsed_until, doc, source"


def _row(row) -> Optional[StoredRecord]:
    if row is None:
        return None
    return StoredRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], json.loads(row[6]),
                        row[7])


class _SqliteTxn(Txn):
    def __init__(self, store: "DirectoryStore"):
        self.s = store

    async def get(self, public_key: str) -> Optional[StoredRecord]:
        return self.s._get(public_key)

    async def holder(self, name: str, now: int, exclude: str) -> Optional[StoredRecord]:
        return self.s._by_name(name, now, exclude)

    async def put(self, rec: Record, stored: StoredRecord, now: float) -> None:
        self.s._db.execute(
            "INSERT INTO records (public_key, name, seq, expires, revoked, endorsed_until, doc, "
            "updated, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (public_key) DO "
            "UPDATE SET name = excluded.name, seq = excluded.seq, expires = excluded.expires, "
            "revoked = excluded.revoked, endorsed_until = excluded.endorsed_until, "
            "doc = excluded.doc, updated = excluded.updated, source = excluded.source",
            (stored.public_key, stored.name, stored.seq, stored.expires, int(stored.revoked),
             stored.endorsed_until, canonical(stored.doc).decode("ascii"), now, stored.source))

    async def held_by(self, source: str, now: int) -> int:
        return self.s._db.execute("SELECT COUNT(*) FROM records WHERE source = ?", (source,)).fetchone()[0]


class DirectoryStore(Store):
    """Records in one SQLite file (``:memory:`` for a throwaway one)."""

    kind = "sqlite"

    def __init__(self, path=":memory:"):
        super().__init__()
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=2000")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(records)")}
        if "source" not in columns:
            self._db.execute("ALTER TABLE records ADD COLUMN source TEXT NOT NULL DEFAULT ''")
        self._db.execute(_INDEX_SOURCE)

    def close(self) -> "_Done":
        """Close the file.  Synchronous (as it always was), and awaitable like
        every store's close: ``store.close()`` and ``await store.close()`` both work."""
        for q in list(self._watchers):
            self._drop_watcher(q)
        self._db.close()
        return _DONE

    # synchronous primitives
    def _get(self, public_key: str) -> Optional[StoredRecord]:
        return _row(self._db.execute("SELECT %s FROM records WHERE public_key = ?" % _COLUMNS,
                                     (public_key,)).fetchone())

    def _by_name(self, name: str, now: int, exclude: str = "") -> Optional[StoredRecord]:
        return _row(self._db.execute(
            "SELECT %s FROM records WHERE name = ? AND revoked = 0 AND expires > ? "
            "AND public_key != ? ORDER BY (endorsed_until > ?) DESC, seq DESC LIMIT 1"
            % _COLUMNS, (name, now, exclude, now)).fetchone())

    # the interface
    async def get(self, public_key: str) -> Optional[StoredRecord]:
        return self._get(public_key)

    async def by_name(self, name: str, now: int, exclude: str = "") -> Optional[StoredRecord]:
        return self._by_name(name, now, exclude)

    async def list(self, now: int, after: str = "", limit: int = LIST_LIMIT) -> list[StoredRecord]:
        rows = self._db.execute(
            "SELECT %s FROM records WHERE public_key > ? AND (revoked = 1 OR expires > ?) "
            "ORDER BY public_key LIMIT ?" % _COLUMNS, (after, now, limit)).fetchall()
        return [_row(r) for r in rows]

    @contextlib.asynccontextmanager
    async def _locked(self, key: str, name: str, source: str = ""):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTxn(self)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def purge(self, now: int) -> int:
        cur = self._db.execute("DELETE FROM records WHERE expires <= ?", (now,))
        return cur.rowcount

    async def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def network(self) -> "SqliteNetwork":
        """The network's tables in this file (``phantom directory serve --network``)."""
        return SqliteNetwork(self._db)


class _Done:
    def __await__(self):
        return iter(())


_DONE = _Done()
SqliteStore = DirectoryStore


# --- the network's tables (issue 20; store/ledger.py) ---------------------------------------------
class _SqliteQuery:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def one(self, sql: str, *args):
        return self.db.execute(sql, args).fetchone()

    def all(self, sql: str, *args) -> list:
        return self.db.execute(sql, args).fetchall()

    def run(self, sql: str, *args) -> int:
        from phantom.network.join import JoinError
        try:
            return self.db.execute(sql, args).rowcount
        except sqlite3.IntegrityError as exc:
            raise JoinError("conflict", "unique constraint: %s" % exc) from None


class SqliteNetwork:
    """The network's tables in this SQLite file.  A change runs in ``BEGIN
    IMMEDIATE`` (SQLite's write lock: one writer at a time, across processes
    sharing the file), synchronously, with no await inside; a unique violation
    rolls it back and it runs again (store/ledger.py)."""

    kind = "sqlite"

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self.retries = 0

    async def open(self, definition) -> "SqliteNetwork":
        from .ledger import SCHEMA, definition_check
        for stmt in SCHEMA:
            self._db.execute(stmt)
        await self.transact(lambda led: definition_check(led, definition))
        return self

    def _once(self, fn, begin: str):
        from .ledger import SqlLedger
        self._db.execute(begin)
        try:
            result = fn(SqlLedger(_SqliteQuery(self._db)))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    def transact_sync(self, fn):
        from .ledger import retrying
        return retrying(lambda: self._once(fn, "BEGIN IMMEDIATE"), on_retry=self._count)

    def _count(self, n: int) -> None:
        self.retries += 1

    async def transact(self, fn):
        """``fn(ledger)`` in one write transaction (retried on a unique violation)."""
        return self.transact_sync(fn)

    async def read(self, fn):
        """``fn(ledger)`` on one consistent snapshot, writing nothing."""
        return self._once(fn, "BEGIN")
