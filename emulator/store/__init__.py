"""The handset's record store: a log-structured, crash-safe store on a ``NandFlash`` (docs/FLASH.md).

``record_store`` holds the store, ``format`` its on-flash layout, ``model`` its reference model and
``powerloss`` the power-loss runner; this module re-exports the store's public names.
"""

from sidekick_testbed.emulator.store.record_store import (
    DeviceMeta,
    InvalidRecord,
    PageCache,
    RecordStore,
    StoreCorrupt,
    StoredVersion,
    StoreError,
    StoreFull,
    StoreStats,
    SyncState,
    UnknownBlob,
)

__all__ = [
    "DeviceMeta",
    "InvalidRecord",
    "PageCache",
    "RecordStore",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreStats",
    "StoredVersion",
    "SyncState",
    "UnknownBlob",
]
