"""Storage for hashsvc: small interfaces by consumer (SetStore, EntryStore,
ChangeFeed, ...; Store is their union), two implementations.

    store = open_store("sqlite:///hashsvc.db")           # embedded default
    store = open_store("postgresql://127.0.0.1/test")     # several replicas

The store is the source of truth; in-memory indexes follow it through
`changes_since`. It is the only place that knows SQL.
"""

from hashdb.model import (
    Change,
    ConsoleSession,
    EndpointState,
    EntryRecord,
    EventFailure,
    HashSetRecord,
    HistoryFilter,
    HistoryRecord,
    HistoryVerification,
    IndexedSignal,
    NewEntry,
    NewEvent,
    OutboxEvent,
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
    EventWriter,
    FloodStore,
    HistoryStore,
    HistoryWriter,
    OutboxStore,
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
    "ConsoleSession",
    "EndpointState",
    "EntryLookup",
    "EntryRecord",
    "EntryStore",
    "EventFailure",
    "EventWriter",
    "FloodStore",
    "HashSetRecord",
    "HistoryFilter",
    "HistoryRecord",
    "HistoryStore",
    "HistoryVerification",
    "HistoryWriter",
    "IndexedSignal",
    "NewEntry",
    "NewEvent",
    "OutboxEvent",
    "OutboxStore",
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
