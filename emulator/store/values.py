"""What the record store hands out and raises: ``StoredVersion`` with its ``SyncState``, ``DeviceMeta``,
``StoreStats``, the ``StoreError`` family, and the store's write limits."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sidekick_testbed.protocol.records import Record

__all__ = [
    "DeviceMeta",
    "InvalidRecord",
    "RESERVE_BLOCKS",
    "STATES",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreStats",
    "StoredVersion",
    "SyncState",
    "U64",
    "UnknownBlob",
]

RESERVE_BLOCKS = 2
"""Free blocks kept back from user writes so that GC can always make progress."""
U64 = (1 << 64) - 1
"""The largest generation the store keeps."""


class StoreError(Exception):
    """Base of the store's errors."""


class StoreFull(StoreError):
    """Not enough free flash for this write, even after garbage collection. Nothing was changed."""


class StoreCorrupt(StoreError):
    """The flash holds no mountable store (blank, foreign or damaged beyond recovery)."""


class UnknownBlob(StoreError, KeyError):
    """No blob with that id in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown blob"


class InvalidRecord(StoreError, ValueError):
    """A record or metadata value that cannot be stored (does not encode)."""


class SyncState(enum.Enum):
    """Sync state of a stored version."""

    DIRTY = 0
    """Local edit not yet acknowledged by the server."""
    PUSHED = 1
    """PUSH_ACK seen: the server received it, not durable."""
    DURABLE = 2
    """The server confirmed it durable (in ``StoredVersion.generation``)."""


STATES = tuple(SyncState)
"""``SyncState`` by stored value."""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One record version on the device, with its sync state."""

    record: Record
    lsn: int
    base_version: int
    state: SyncState
    generation: int


@dataclass(frozen=True, slots=True)
class DeviceMeta:
    """Device identity and sync bookkeeping, persisted with every change."""

    device_id: bytes
    account: str
    key: bytes
    next_lsn: int
    server_id: bytes
    generation: int
    durable_lsn: int
    anchor: int
    server_anchor: int = 0
    """The highest anchor the server confirmed holding for this device (HELLO_OK, or a PONG after
    PULL_ACK); the regression check compares against it, since a PULL_ACK may be lost."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A summary of the store and the flash under it."""

    blocks: int
    bad_blocks: int
    free_blocks: int
    used_blocks: int
    free_bytes: int
    records: int
    blobs: int
    blob_pages: int
    by_kind: dict[str, int]
    by_state: dict[str, int]
    at_risk: int
    seq: int
    pages_written: int
    gc_pages_written: int
    erases: int
    gc_runs: int
    checkpoints: int
