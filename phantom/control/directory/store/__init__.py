"""Directory stores, one module per backend."""

from .base import LIST_LIMIT, StoredRecord
from .sqlite import DirectoryStore

__all__ = ["LIST_LIMIT", "StoredRecord", "DirectoryStore"]
