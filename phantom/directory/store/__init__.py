"""Directory stores, one module per backend, behind one interface (base.py).

  sqlite.py    DirectoryStore: one SQLite file, the embedded default
  postgres.py  PostgresStore: one database shared by any number of front ends
  dht.py       DhtStore: BEP 44 mutable items on the mainline DHT (libtorrent)
"""

from .base import (  # noqa: F401
    CLOCK_SKEW, DEFAULT_MAX_TTL, LIST_LIMIT, BadRecord, EndorsementsFull, ForgedRecord,
    Forbidden, Gone, KeyRevoked, NameTaken, NoRecord, NotAnEndorser, QuotaExceeded,
    StaleEndorsement, StaleSeq, Store, StoredRecord, StoreUnavailable, TooManyRequests,
    Unsupported, UntrustedSigner)
from .sqlite import DirectoryStore, SqliteStore  # noqa: F401


def open_store(spec) -> Store:
    """A store (not yet opened) from ``--db``: a SQLite path, or a postgresql:// URL."""
    text = str(spec)
    if text.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore
        return PostgresStore(text)
    return DirectoryStore(text)
