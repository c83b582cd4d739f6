"""The storage contract both backends implement, and the values it exchanges.

A backend holds accounts and their keys, the records of every account (heads and history), each
device's durable watermark and pull anchor, photo blobs, the store's server id and generation.
Every mutating call returns only once its effect is durable (unless a fault mode says otherwise);
``commit`` applies a batch of changes with the semantics of ``server_stub.semantics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sidekick_testbed.protocol.messages import Assigned, Change, Conflict
from sidekick_testbed.protocol.records import Record
from sidekick_testbed.server_stub.faults import FaultSet

__all__ = [
    "AccountExists",
    "AnchorAhead",
    "AccountInfo",
    "BlobError",
    "BlobState",
    "CommitResult",
    "DeviceState",
    "PullPage",
    "Storage",
    "StorageError",
    "StoredVersion",
    "UnknownAccount",
]


class StorageError(Exception):
    """The store failed (I/O, corruption); nothing of the failed call is durable."""


class UnknownAccount(KeyError):
    """No account of that name."""

    def __str__(self) -> str:
        return f"no account named {self.args[0]!r}"


class AccountExists(ValueError):
    """An account of that name already exists."""


class AnchorAhead(ValueError):
    """A pull anchor above the account's current server version (answered with BAD_ANCHOR)."""


class BlobError(ValueError):
    """A blob chunk the store refuses; ``offset_mismatch`` tells a resumable refusal from a bad field."""

    def __init__(self, message: str, *, offset_mismatch: bool = False) -> None:
        super().__init__(message)
        self.offset_mismatch = offset_mismatch


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """An account as listed by the admin API and the CLI (never its key)."""

    account: str
    records: int
    devices: int
    server_version: int


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the server holds for one device of one account."""

    account: str
    device_id: bytes
    durable_lsn: int
    anchor: int
    generation: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    """Outcome of one committed batch: what DURABLE and CONFLICT report.

    ``assigned`` has one entry per change given, duplicates and no-ops included, in LSN order;
    ``conflicts`` one entry per conflicting change, in LSN order.
    """

    generation: int
    durable_lsn: int
    assigned: tuple[Assigned, ...]
    conflicts: tuple[Conflict, ...]


@dataclass(frozen=True, slots=True)
class PullPage:
    """Heads with a version above the pull's anchor, in version order; ``anchor`` to acknowledge."""

    records: tuple[Record, ...]
    anchor: int
    more: bool


@dataclass(frozen=True, slots=True)
class BlobState:
    """How much of a blob the store holds: bytes ``[0, have)`` of ``total`` (0/0 if unknown)."""

    have: int
    total: int


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One applied version, as kept in an account's history (for inspection and audits)."""

    record: Record
    device_id: bytes | None
    lsn: int | None


@runtime_checkable
class Storage(Protocol):
    """What the server needs from a store. All methods are coroutine functions except
    ``backup``/``restore`` (see each backend) and the attributes."""

    faults: FaultSet

    @property
    def server_id(self) -> bytes:
        """16-byte id of this store, stable across restarts and restores."""
        ...

    @property
    def generation(self) -> int:
        """Current generation: random, non-zero, new on creation and on every restore."""
        ...

    async def add_account(self, account: str, key: bytes) -> None:
        """Provision an account with its device key (``AccountExists`` if present)."""
        ...

    async def remove_account(self, account: str) -> None:
        """Delete an account with all its records, devices and blobs (``UnknownAccount``)."""
        ...

    async def list_accounts(self) -> list[AccountInfo]:
        """Every account, sorted by name."""
        ...

    async def account_key(self, account: str) -> bytes | None:
        """The account's key, or None if there is no such account."""
        ...

    async def device_state(self, account: str, device_id: bytes) -> DeviceState:
        """The device's durable watermark and recorded anchor, with the generation they belong to."""
        ...

    async def devices(self, account: str) -> list[DeviceState]:
        """Every device the account has seen."""
        ...

    async def commit(self, account: str, device_id: bytes, changes: Sequence[Change]) -> CommitResult:
        """Apply ``changes`` (increasing LSNs) atomically with the device's watermark; durable on return."""
        ...

    async def pull(self, account: str, anchor: int, limit: int) -> PullPage:
        """Up to ``limit`` heads with version > ``anchor`` in version order; ``AnchorAhead`` if the
        anchor is above the account's current server version."""
        ...

    async def server_version(self, account: str) -> int:
        """The account's current server version (0 if it has none)."""
        ...

    async def ack_pull(self, account: str, device_id: bytes, anchor: int) -> int:
        """Record the device's anchor as max(old, ``anchor``), durably; return it."""
        ...

    async def blob_state(self, account: str, blob_id: bytes) -> BlobState:
        """How many leading bytes of the blob the store holds."""
        ...

    async def write_blob(self, account: str, blob_id: bytes, offset: int, total: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` (must equal what is held); return the new ``have``."""
        ...

    async def read_blob(self, account: str, blob_id: bytes) -> bytes | None:
        """The complete blob, or None if it is absent or incomplete."""
        ...

    async def records(self, account: str) -> list[Record]:
        """The account's heads, in version order."""
        ...

    async def history(self, account: str) -> list[StoredVersion]:
        """Every version ever applied to the account, in version order."""
        ...

    def backup(self) -> Any:
        """A snapshot of the durable state (backend-specific value)."""
        ...

    def restore(self, snapshot: Any) -> int:
        """Replace the durable state with ``snapshot``; return the new generation."""
        ...

    async def aclose(self) -> None:
        """Finish pending work and release the store."""
        ...
