"""The embedded default store: one SQLite file."""

from __future__ import annotations

import json
import sqlite3
from typing import Optional

from ..records import Record, canonical
from .base import LIST_LIMIT, StoredRecord

# --- the store (SQLite) -----------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    public_key     TEXT PRIMARY KEY,      -- standard base64
    name           TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    expires        INTEGER NOT NULL,
    revoked        INTEGER NOT NULL,
    endorsed_until INTEGER NOT NULL DEFAULT 0,   -- by a signer this directory trusts
    doc            TEXT NOT NULL,          -- the record JSON as served
    updated        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_name ON records (name);
"""


class DirectoryStore:
    """Records in one SQLite file; every method is a short synchronous transaction.

    The server calls it from the event loop without awaiting in between a
    check and the write that depends on it, so requests cannot interleave.
    """

    def __init__(self, path=":memory:"):
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=2000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _row(row) -> Optional[StoredRecord]:
        if row is None:
            return None
        return StoredRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], json.loads(row[6]))

    _COLUMNS = "public_key, name, seq, expires, revoked, endorsed_until, doc"

    def get(self, public_key: str) -> Optional[StoredRecord]:
        return self._row(self._db.execute("SELECT %s FROM records WHERE public_key = ?"
                                          % self._COLUMNS, (public_key,)).fetchone())

    def by_name(self, name: str, now: int, exclude: str = "") -> Optional[StoredRecord]:
        """The live record holding ``name``: endorsed claims first, then the newest."""
        return self._row(self._db.execute(
            "SELECT %s FROM records WHERE name = ? AND revoked = 0 AND expires > ? "
            "AND public_key != ? ORDER BY (endorsed_until > ?) DESC, seq DESC LIMIT 1"
            % self._COLUMNS, (name, now, exclude, now)).fetchone())

    def list(self, now: int, after: str = "", limit: int = LIST_LIMIT) -> list[StoredRecord]:
        rows = self._db.execute(
            "SELECT %s FROM records WHERE public_key > ? AND (revoked = 1 OR expires > ?) "
            "ORDER BY public_key LIMIT ?" % self._COLUMNS, (after, now, limit)).fetchall()
        return [self._row(r) for r in rows]

    def put(self, rec: Record, doc: dict, endorsed_until: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO records (public_key, name, seq, expires, revoked, endorsed_until, doc, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (public_key) DO UPDATE SET "
            "name = excluded.name, seq = excluded.seq, expires = excluded.expires, "
            "revoked = excluded.revoked, endorsed_until = excluded.endorsed_until, "
            "doc = excluded.doc, updated = excluded.updated",
            (rec.key_text, rec.name, rec.seq, rec.expires, int(rec.revoked), endorsed_until,
             canonical(doc).decode("ascii"), now))

    def purge(self, now: int) -> int:
        """Delete expired records (revocations are kept: they must never be undone)."""
        cur = self._db.execute("DELETE FROM records WHERE revoked = 0 AND expires <= ?", (now,))
        return cur.rowcount

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

