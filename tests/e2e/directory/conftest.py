"""Fixtures shared by the directory's end-to-end tests."""

from __future__ import annotations

import pytest

from phantomlab.stores import PgCluster, pg_missing


@pytest.fixture(scope="module")
def pg():
    """A throw-away PostgreSQL cluster (initdb, pg_ctl) for one test module,
    removed after it; skipped, saying why, where PostgreSQL is not installed."""
    missing = pg_missing()
    if missing:
        pytest.skip(missing)
    with PgCluster() as cluster:
        yield cluster
