"""Storage for hashsvc: one narrow interface (Store), two implementations.

    store = open_store("sqlite:///hashsvc.db")           # embedded default
    store = open_store("postgresql://127.0.0.1/test")     # several replicas

The store is the source of truth; in-memory indexes follow it through
`changes_since`. It is the only place that knows SQL.
"""

from hashdb.model import (
    Change,
    EntryRecord,
    HashSetRecord,
    HistoryFilter,
    HistoryRecord,
    HistoryVerification,
    IndexedSignal,
    NewEntry,
    ReviewFilter,
    ReviewItem,
    Suppression,
    Thresholds,
    TokenRecord,
)
from hashdb.store import Store, open_store
from hashdb.urls import safe_url

__all__ = [
    "Change",
    "EntryRecord",
    "HashSetRecord",
    "HistoryFilter",
    "HistoryRecord",
    "HistoryVerification",
    "IndexedSignal",
    "NewEntry",
    "ReviewFilter",
    "ReviewItem",
    "Suppression",
    "Store",
    "Thresholds",
    "TokenRecord",
    "open_store",
    "safe_url",
]
