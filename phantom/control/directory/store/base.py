"""What every directory store holds: one stored record per public key."""

from __future__ import annotations

from dataclasses import dataclass

LIST_LIMIT = 500


@dataclass
class StoredRecord:
    public_key: str
    name: str
    seq: int
    expires: int
    revoked: bool
    endorsed_until: int
    doc: dict
