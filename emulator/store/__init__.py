"""The handset's record store: a log-structured, crash-safe store on a ``NandFlash`` (docs/FLASH.md).

Its rooms, each importing only those above it:

- ``values``: what the store hands out and raises (``StoredVersion``, ``SyncState``, ``DeviceMeta``,
  ``StoreStats``, ``StoreError`` and its kinds);
- ``format``: the on-flash layout (page header, entries, locations) and the value codecs;
- ``reading``: reading and parsing pages (``PageReader``, ``PageCache``);
- ``index``: where every entry lies, live bytes per block;
- ``log``: committing transactions, block bookkeeping;
- ``checkpoint``: index checkpoints, written and read back;
- ``gc``: garbage collection and retiring failed blocks;
- ``mount``: scanning the chip and replaying the log;
- ``record_store``: ``RecordStore``, the public face over those parts;
- ``model`` and ``powerloss``: the store's reference model and the power-loss runner that checks
  the store against it at every flash operation.

This module re-exports the public names of ``values``, ``reading`` and ``record_store``.
"""

from sidekick_testbed.emulator.store.reading import PageCache
from sidekick_testbed.emulator.store.record_store import RecordStore
from sidekick_testbed.emulator.store.values import (
    DeviceMeta,
    InvalidRecord,
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
