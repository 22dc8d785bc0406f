"""A shared store on PostgreSQL (asyncpg): any number of stateless front ends, one database.

``phantom directory serve --db postgresql://user@host/db`` runs a front end on
it; run as many as you like on one database.

Consistency: a publish is one transaction that first takes two transaction
advisory locks, on the key and on the name it claims (always in that order,
so two publishes cannot deadlock), then reads the key's row and the name's
holder, decides with the shared policy (store/base.py) and writes.  Two
publishes of one key, or two claims of one name, through any front ends,
are therefore serialised by the database: exactly one claimant of a free
name wins, whatever the timing.

Push: every write runs ``pg_notify('phantom_directory', key)`` inside its
transaction; PostgreSQL delivers it on commit to every front end's
``LISTEN`` connection, which reads the row and hands it to its watchers
(``POST /watch``), so a daemon watching through front end B hears of a
record published through front end A at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Optional

from phantom import logsetup

from ..records import Record, canonical
from .base import LIST_LIMIT, Store, StoredRecord, StoreUnavailable, Txn

log = logsetup.get_logger("directory")

CHANNEL = "phantom_directory"
COMMAND_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
POOL_SIZE = 10
RELISTEN_DELAY = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS phantom_records (
    public_key     TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    expires        BIGINT NOT NULL,
    revoked        BOOLEAN NOT NULL,
    endorsed_until BIGINT NOT NULL DEFAULT 0,
    doc            TEXT NOT NULL,
    updated        DOUBLE PRECISION NOT NULL,
    source         TEXT NOT NULL DEFAULT ''
);
ALTER TABLE phantom_records ADD COLUMN IF NOT EXISTS source TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS phantom_records_by_name ON phantom_records (name);
CREATE INDEX IF NOT EXISTS phantom_records_by_source ON phantom_records (source);
"""
_COLUMNS = "public_key, name, seq, expires, revoked, endorsed_until, doc, source"
_SCHEMA_LOCK = 0x70686e74          # an advisory lock id serialising schema creation


def _row(row) -> Optional[StoredRecord]:
    if row is None:
        return None
    return StoredRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], json.loads(row[6]),
                        row[7])


def _db_errors():
    import asyncpg
    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


class _PgTxn(Txn):
    def __init__(self, conn):
        self.c = conn

    async def get(self, public_key: str) -> Optional[StoredRecord]:
        return _row(await self.c.fetchrow("SELECT %s FROM phantom_records WHERE public_key = $1"
                                          % _COLUMNS, public_key))

    async def holder(self, name: str, now: int, exclude: str) -> Optional[StoredRecord]:
        return await _by_name(self.c, name, now, exclude)

    async def put(self, rec: Record, stored: StoredRecord, now: float) -> None:
        await self.c.execute(
            "INSERT INTO phantom_records (public_key, name, seq, expires, revoked, endorsed_until,"
            " doc, updated, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT "
            "(public_key) DO UPDATE SET name = excluded.name, seq = excluded.seq, "
            "expires = excluded.expires, revoked = excluded.revoked, "
            "endorsed_until = excluded.endorsed_until, doc = excluded.doc, "
            "updated = excluded.updated, source = excluded.source",
            stored.public_key, stored.name, stored.seq, stored.expires, stored.revoked,
            stored.endorsed_until, canonical(stored.doc).decode("ascii"), float(now),
            stored.source)
        await self.c.execute("SELECT pg_notify($1, $2)", CHANNEL, stored.public_key)

    async def held_by(self, source: str, now: int) -> int:
        return await self.c.fetchval("SELECT COUNT(*) FROM phantom_records WHERE source = $1",
                                     source)


async def _by_name(conn, name: str, now: int, exclude: str) -> Optional[StoredRecord]:
    return _row(await conn.fetchrow(
        "SELECT %s FROM phantom_records WHERE name = $1 AND NOT revoked AND expires > $2 "
        "AND public_key != $3 ORDER BY (endorsed_until > $2) DESC, seq DESC LIMIT 1"
        % _COLUMNS, name, now, exclude))


class PostgresStore(Store):
    """The directory's records in a PostgreSQL database shared by every front end."""

    kind = "postgresql"
    shared = True

    def __init__(self, dsn: str, *, pool_size: int = POOL_SIZE):
        super().__init__()
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool = None
        self._listener = None
        self._listen_task: Optional[asyncio.Task] = None
        self._fetches: set[asyncio.Task] = set()
        self._closing = False
        self._networks: list = []

    async def open(self) -> "PostgresStore":
        try:
            import asyncpg
        except ImportError:              # pragma: no cover - an optional dependency
            raise StoreUnavailable("the PostgreSQL store needs asyncpg "
                                   "(pip install 'phantom[postgres]')") from None
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, command_timeout=COMMAND_TIMEOUT,
                timeout=CONNECT_TIMEOUT)
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                    await conn.execute(_SCHEMA)
            await self._listen()
        except _db_errors() as exc:
            await self.close()
            raise StoreUnavailable("PostgreSQL at %s: %s" % (safe_dsn(self.dsn), exc)) from None
        self._listen_task = asyncio.ensure_future(self._keep_listening())
        return self

    async def close(self) -> None:
        self._closing = True
        for net in self._networks:
            net.close()
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listen_task
        for t in list(self._fetches):
            t.cancel()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2.0)
            self._listener = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5.0)
            self._pool = None
        await super().close()

    # LISTEN / NOTIFY
    async def _listen(self) -> None:
        import asyncpg
        self._listener = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
        await self._listener.add_listener(CHANNEL, self._on_notify)

    async def _keep_listening(self) -> None:
        """Reconnect the LISTEN connection when it drops; watchers are told to re-read."""
        while not self._closing:
            await asyncio.sleep(RELISTEN_DELAY)
            if self._listener is not None and not self._listener.is_closed():
                continue
            log.warning("the PostgreSQL LISTEN connection dropped; reconnecting")
            for q in list(self._watchers):
                self._drop_watcher(q)
            try:
                await self._listen()
            except _db_errors() as exc:
                log.warning("LISTEN reconnect failed: %s", exc)

    def _on_notify(self, conn, pid, channel, payload) -> None:
        if not isinstance(payload, str) or len(payload) > 64 or not self._watchers:
            return
        task = asyncio.ensure_future(self._fetch_and_deliver(payload))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch_and_deliver(self, key: str) -> None:
        try:
            stored = await self.get(key)
        except StoreUnavailable as exc:
            log.warning("reading %s after its NOTIFY failed: %s", key, exc)
            return
        if stored is not None:
            self.stats["notified"] += 1
            self._deliver(stored)

    def _notify_local(self, stored: StoredRecord) -> None:
        pass                             # every front end, this one too, hears it via NOTIFY

    # reads
    @contextlib.asynccontextmanager
    async def _conn(self, wait: float = COMMAND_TIMEOUT):
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL store is closed")
        try:
            async with self._pool.acquire(timeout=wait) as conn:
                yield conn
        except _db_errors() as exc:
            raise StoreUnavailable("PostgreSQL: %s" % (exc.__class__.__name__ + (
                ": %s" % exc if str(exc) else ""))) from None

    async def get(self, public_key: str) -> Optional[StoredRecord]:
        async with self._conn() as c:
            return await _PgTxn(c).get(public_key)

    async def by_name(self, name: str, now: int, exclude: str = "") -> Optional[StoredRecord]:
        async with self._conn() as c:
            return await _by_name(c, name, now, exclude)

    async def list(self, now: int, after: str = "", limit: int = LIST_LIMIT) -> list[StoredRecord]:
        async with self._conn() as c:
            rows = await c.fetch(
                "SELECT %s FROM phantom_records WHERE public_key > $1 AND (revoked OR "
                "expires > $2) ORDER BY public_key LIMIT $3" % _COLUMNS, after, now, limit)
        return [_row(r) for r in rows]

    def network(self) -> "PgNetwork":
        """The network's tables in this database (``phantom directory serve --network``)."""
        net = PgNetwork(self)
        self._networks.append(net)
        return net

    async def count(self) -> int:
        async with self._conn() as c:
            return await c.fetchval("SELECT COUNT(*) FROM phantom_records")

    async def purge(self, now: int) -> int:
        async with self._conn() as c:
            status = await c.execute("DELETE FROM phantom_records WHERE expires <= $1", now)
        return int(status.split()[-1])

    # writes
    @contextlib.asynccontextmanager
    async def _locked(self, key: str, name: str, source: str = ""):
        async with self._conn() as c:
            async with c.transaction():
                # always key, then name, then source: nobody holding a later lock waits
                # for an earlier one, so two publishes cannot deadlock
                for lock in ("key:" + key, "name:" + name) + (("source:" + source,)
                                                              if source else ()):
                    await c.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock)
                yield _PgTxn(c)


# --- the network's tables (issue 20; store/ledger.py) ---------------------------------------------
NETWORK_WAIT = 30.0                # a change may wait this long for the network's lock


def _numbered(sql: str) -> str:
    parts = sql.split("?")
    return parts[0] + "".join("$%d%s" % (i, p) for i, p in enumerate(parts[1:], 1))


class _PgQuery:
    """The ledger's synchronous queries, run from a worker thread on the event
    loop's connection (one statement at a time)."""

    def __init__(self, conn, loop):
        self.c = conn
        self.loop = loop

    def _call(self, coro):
        import asyncpg
        from phantom.network.join import JoinError
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result(NETWORK_WAIT)
        except (asyncpg.UniqueViolationError, asyncpg.SerializationError,
                asyncpg.DeadlockDetectedError) as exc:
            raise JoinError("conflict", "PostgreSQL: %s" % exc) from None

    def one(self, sql: str, *args):
        return self._call(self.c.fetchrow(_numbered(sql), *args))

    def all(self, sql: str, *args) -> list:
        return self._call(self.c.fetch(_numbered(sql), *args))

    def run(self, sql: str, *args) -> int:
        status = self._call(self.c.execute(_numbered(sql), *args))
        try:
            return int(status.split()[-1])
        except (ValueError, IndexError):
            return 0


class PgNetwork:
    """The network's tables in this database, shared by every front end.  A
    change locks the ``seq`` counter row first (FOR UPDATE): changes through
    all front ends happen one at a time and each reads the last one's commit
    (READ COMMITTED: each statement sees what was committed before it).  The
    sans-IO ledger runs in a worker thread; its queries run on the loop."""

    kind = "postgresql"

    def __init__(self, store: "PostgresStore"):
        self.store = store
        self.retries = 0
        import concurrent.futures
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=store.pool_size, thread_name_prefix="network-ledger")

    async def open(self, definition) -> "PgNetwork":
        from .ledger import SCHEMA, definition_check
        async with self.store._conn() as c:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                for stmt in SCHEMA:
                    await c.execute(stmt)
        await self.transact(lambda led: definition_check(led, definition))
        return self

    async def _once(self, fn, lock: bool):
        from .ledger import LOCK_SQL, SqlLedger
        loop = asyncio.get_running_loop()
        async with self.store._conn(NETWORK_WAIT) as c:
            async with c.transaction():
                if lock:
                    await c.execute(LOCK_SQL + " FOR UPDATE", timeout=NETWORK_WAIT)
                return await loop.run_in_executor(self._threads, fn,
                                                  SqlLedger(_PgQuery(c, loop)))

    async def transact(self, fn):
        """``fn(ledger)`` in one write transaction (retried on a conflict)."""
        from phantom.network.join import JoinError
        from .ledger import RETRIES
        for n in range(RETRIES):
            try:
                return await self._once(fn, True)
            except JoinError as exc:
                if exc.code != "conflict" or n == RETRIES - 1:
                    raise
                self.retries += 1

    async def read(self, fn):
        return await self._once(fn, False)

    def close(self) -> None:
        self._threads.shutdown(wait=False)


def safe_dsn(dsn: str) -> str:
    """The DSN without a password, for messages."""
    import urllib.parse
    try:
        u = urllib.parse.urlsplit(dsn)
        if u.password:
            netloc = u.netloc.replace(":" + u.password + "@", ":***@")
            return urllib.parse.urlunsplit(u._replace(netloc=netloc))
    except ValueError:
        return "(unparsable DSN)"
    return dsn
