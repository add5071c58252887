"""Storage for hashsvc: small interfaces by consumer (SetStore, EntryStore,
ChangeFeed, ...; Store is their union), two implementations.

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
from hashdb.store import (
    BulkStore,
    ChangeFeed,
    EntryLookup,
    EntryStore,
    ExchangeStore,
    FloodStore,
    HistoryStore,
    HistoryWriter,
    ReviewStore,
    SetLookup,
    SetStore,
    Store,
    SuppressionLookup,
    TokenStore,
    open_store,
)
from hashdb.urls import safe_url

__all__ = [
    "BulkStore",
    "Change",
    "ChangeFeed",
    "EntryLookup",
    "EntryRecord",
    "EntryStore",
    "ExchangeStore",
    "FloodStore",
    "HashSetRecord",
    "HistoryFilter",
    "HistoryRecord",
    "HistoryStore",
    "HistoryVerification",
    "HistoryWriter",
    "IndexedSignal",
    "NewEntry",
    "ReviewFilter",
    "ReviewItem",
    "ReviewStore",
    "SetLookup",
    "SetStore",
    "Store",
    "Suppression",
    "SuppressionLookup",
    "Thresholds",
    "TokenRecord",
    "TokenStore",
    "open_store",
    "safe_url",
]
