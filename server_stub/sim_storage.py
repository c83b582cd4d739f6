"""In-memory store for simulations: deterministic, with volatile and durable state made explicit.

Every mutation is applied to the *volatile* state and then flushed to the *durable* state before
the call returns (a flush is the model of a committed transaction). ``crash()`` replaces the
volatile state with the durable one, so whatever was not flushed is gone. Fault modes change when
flushes happen (``ack-before-durable``), what a crash keeps (``lose-tail-on-crash``) and what a
restore does to the generation (``silent-rollback``). ``fail_next(n)`` makes the next ``n``
mutating calls fail with ``StorageError`` (a storage failure hook). Nothing here reads a clock.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.protocol.records import Record
from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.semantics import apply_changes
from sidekick_testbed.server_stub.storage import (
    AccountExists,
    AccountInfo,
    AnchorAhead,
    BlobError,
    BlobState,
    CommitResult,
    DeviceState,
    PullPage,
    StorageError,
    StoredVersion,
    UnknownAccount,
)

__all__ = ["SimSnapshot", "SimulatedStorage"]


@dataclass
class _Device:
    applied_lsn: int = 0
    anchor: int = 0


@dataclass
class _Blob:
    """Bytes held of a blob; ``packed``: ``data`` is the complete blob, zlib-compressed."""

    total: int
    data: bytes = b""
    packed: bool = False

    @property
    def held(self) -> int:
        """How many leading bytes are held."""
        return self.total if self.packed else len(self.data)

    def content(self) -> bytes:
        """The bytes held, uncompressed."""
        if not self.packed:
            return self.data
        if _unpacked[0] is self.data:
            return _unpacked[1]
        raw = zlib.decompress(self.data)
        _unpacked[:] = [self.data, raw]
        return raw


_unpacked: list[bytes] = [b"", b""]
"""The last packed blob read or packed, and its bytes: a blob is read right after it is complete
(the server checks its SHA-256, then sends it back in the pull), once unpacked instead of twice."""


@dataclass
class _Account:
    key: bytes
    version: int = 0
    heads: dict[bytes, Record] = field(default_factory=dict)
    history: list[StoredVersion] = field(default_factory=list)
    devices: dict[bytes, _Device] = field(default_factory=dict)
    blobs: dict[bytes, _Blob] = field(default_factory=dict)
    applied: dict[tuple[bytes, int], tuple[bytes, int]] = field(default_factory=dict)

    def copy(self) -> _Account:
        return _Account(
            self.key, self.version, dict(self.heads), list(self.history),
            {k: replace(v) for k, v in self.devices.items()},
            {k: replace(v) for k, v in self.blobs.items()}, dict(self.applied),
        )


@dataclass(frozen=True)
class SimSnapshot:
    """A backup of the simulated store's durable state."""

    accounts: tuple[tuple[str, _Account], ...]
    generation: int


class _AccountTx:
    """``semantics.Tx`` over one account of the volatile state."""

    def __init__(self, account: _Account) -> None:
        self.account = account

    def head(self, record_id: bytes) -> Record | None:
        return self.account.heads.get(record_id)

    def server_version(self) -> int:
        return self.account.version

    def put(self, record: Record, device_id: bytes | None, lsn: int | None) -> None:
        self.account.heads[record.record_id] = record
        self.account.history.append(StoredVersion(record, device_id, lsn))
        self.account.version = max(self.account.version, record.version)
        if device_id is not None and lsn is not None:
            self.account.applied[(device_id, lsn)] = (record.record_id, record.version)

    def applied_lsn(self, device_id: bytes) -> int:
        device = self.account.devices.get(device_id)
        return device.applied_lsn if device else 0

    def set_applied_lsn(self, device_id: bytes, lsn: int) -> None:
        self.account.devices.setdefault(device_id, _Device()).applied_lsn = lsn

    def applied_version(self, device_id: bytes, lsn: int) -> tuple[bytes, int] | None:
        return self.account.applied.get((device_id, lsn))


class SimulatedStorage:
    """The simulated backend (see the module docstring). ``rng`` draws the server id and generations."""

    def __init__(self, rng: random.Random, *, faults: FaultSet | None = None, pack_blobs: bool = False) -> None:
        self._rng = rng
        self.pack_blobs = pack_blobs
        """Keep each complete blob zlib-compressed when that halves it (memory only; for fleets)."""
        self.faults = faults if faults is not None else FaultSet()
        self._server_id = rng.randbytes(16)
        self._generation = self._new_generation()
        self._durable: dict[str, _Account] = {}
        self._volatile: dict[str, _Account] = {}
        self._dirty: set[str] = set()
        self._before_last_flush: dict[str, _Account | None] | None = None
        """The durable accounts the last flush replaced, as they were (None: absent): its undo log."""
        self._unflushed_ack = False
        self._fail_next = 0
        self.transactions = 0
        self.crashes = 0

    # ------------------------------------------------------------------ identity

    @property
    def server_id(self) -> bytes:
        """16-byte id of this store (kept across crashes and restores)."""
        return self._server_id

    @property
    def generation(self) -> int:
        """Current generation."""
        return self._generation

    def _new_generation(self) -> int:
        return self._rng.getrandbits(64) or 1

    # ------------------------------------------------------------------ volatile / durable model

    def _mutating(self) -> None:
        if self._fail_next > 0:
            self._fail_next -= 1
            raise StorageError("injected storage failure")
        if self._unflushed_ack:  # ack-before-durable: the previous batch is flushed only now
            self._flush()

    def _touch(self, account: str) -> _Account:
        try:
            acc = self._volatile[account]
        except KeyError:
            raise UnknownAccount(account) from None
        self._dirty.add(account)
        return acc

    def _flush(self) -> None:
        durable = self._durable
        self._before_last_flush = {name: durable.get(name) for name in self._dirty}
        for name in self._dirty:
            if name in self._volatile:
                self._durable[name] = self._volatile[name].copy()
            else:
                self._durable.pop(name, None)
        self._dirty.clear()
        self._unflushed_ack = False
        self.transactions += 1

    def crash(self) -> None:
        """Lose everything not durable (with ``lose-tail-on-crash``: the last flush too)."""
        self.crashes += 1
        if self.faults.on("lose-tail-on-crash") and self._before_last_flush is not None:
            for name, before in self._before_last_flush.items():  # undo the last flush
                if before is None:
                    self._durable.pop(name, None)
                else:
                    self._durable[name] = before
        self._before_last_flush = None
        self._volatile = {name: acc.copy() for name, acc in self._durable.items()}
        self._dirty.clear()
        self._unflushed_ack = False

    def fail_next(self, count: int = 1) -> None:
        """Make the next ``count`` mutating calls raise ``StorageError`` (nothing of them applied)."""
        self._fail_next += count

    @property
    def volatile_only(self) -> bool:
        """True if some applied change is not durable yet (only under ``ack-before-durable``)."""
        return self._unflushed_ack

    # ------------------------------------------------------------------ accounts

    async def add_account(self, account: str, key: bytes) -> None:
        """Provision an account."""
        if account in self._volatile:
            raise AccountExists(f"account {account!r} already exists")
        self._mutating()
        self._volatile[account] = _Account(bytes(key))
        self._dirty.add(account)
        self._flush()

    async def remove_account(self, account: str) -> None:
        """Delete an account and everything it holds."""
        if account not in self._volatile:
            raise UnknownAccount(account)
        self._mutating()
        del self._volatile[account]
        self._dirty.add(account)
        self._flush()

    async def list_accounts(self) -> list[AccountInfo]:
        """Every account, sorted by name."""
        return [
            AccountInfo(name, len(acc.heads), len(acc.devices), acc.version)
            for name, acc in sorted(self._volatile.items())
        ]

    async def account_key(self, account: str) -> bytes | None:
        """The account's key, or None."""
        acc = self._volatile.get(account)
        return acc.key if acc else None

    # ------------------------------------------------------------------ devices and changes

    def _account(self, account: str) -> _Account:
        try:
            return self._volatile[account]
        except KeyError:
            raise UnknownAccount(account) from None

    async def device_state(self, account: str, device_id: bytes) -> DeviceState:
        """Watermark and anchor of one device."""
        device = self._account(account).devices.get(device_id, _Device())
        return DeviceState(account, device_id, device.applied_lsn, device.anchor, self._generation)

    async def devices(self, account: str) -> list[DeviceState]:
        """Every device of the account."""
        return [
            DeviceState(account, dev_id, dev.applied_lsn, dev.anchor, self._generation)
            for dev_id, dev in sorted(self._account(account).devices.items())
        ]

    async def commit(self, account: str, device_id: bytes, changes: Sequence[Change]) -> CommitResult:
        """Apply and flush (under ``ack-before-durable`` the flush waits for the next mutation)."""
        self._mutating()
        acc = self._touch(account)
        applied = apply_changes(_AccountTx(acc), device_id, changes, self.faults)
        if self.faults.on("ack-before-durable"):
            self._unflushed_ack = True
        else:
            self._flush()
        return CommitResult(self._generation, applied.durable_lsn, applied.assigned, applied.conflicts)

    async def server_version(self, account: str) -> int:
        """The account's current server version."""
        return self._account(account).version

    async def pull(self, account: str, anchor: int, limit: int) -> PullPage:
        """Heads above ``anchor`` in version order, at most ``limit``."""
        acc = self._account(account)
        if anchor > acc.version:
            raise AnchorAhead(f"anchor {anchor} is above the server version {acc.version}")
        newer = [r for r in acc.heads.values() if r.version > anchor]
        newer.sort(key=lambda r: r.version, reverse=self.faults.on("reorder-versions"))
        page = newer[:max(0, limit)]
        more = len(newer) > len(page)
        if self.faults.on("reorder-versions"):
            page.sort(key=lambda r: r.version)
        new_anchor = page[-1].version if more and page else (acc.version if not more else anchor)
        return PullPage(tuple(page), new_anchor, more)

    async def ack_pull(self, account: str, device_id: bytes, anchor: int) -> int:
        """Record the device's anchor as max(old, anchor), durably."""
        self._mutating()
        acc = self._touch(account)
        device = acc.devices.setdefault(device_id, _Device())
        device.anchor = max(device.anchor, anchor)
        self._flush()
        return device.anchor

    # ------------------------------------------------------------------ blobs

    async def blob_state(self, account: str, blob_id: bytes) -> BlobState:
        """Bytes held of a blob."""
        blob = self._account(account).blobs.get(blob_id)
        return BlobState(blob.held, blob.total) if blob else BlobState(0, 0)

    async def write_blob(self, account: str, blob_id: bytes, offset: int, total: int, data: bytes) -> int:
        """Append a chunk at ``offset``; flushed like a commit."""
        acc = self._account(account)
        blob = acc.blobs.get(blob_id)
        have = blob.held if blob else 0
        if blob is not None and blob.total != total:
            raise BlobError(f"blob total {total} differs from the {blob.total} held")
        if offset != have:
            raise BlobError(f"chunk at offset {offset}, the server holds {have}", offset_mismatch=True)
        if offset + len(data) > total:
            raise BlobError(f"chunk ends at {offset + len(data)}, beyond total {total}")
        self._mutating()
        acc = self._touch(account)
        held = (blob.content() if blob else b"") + data
        packed = False
        if self.pack_blobs and len(held) == total and total >= 4096:
            small = zlib.compress(held, 1)
            if len(small) <= total // 2:
                _unpacked[:] = [small, held]
                held, packed = small, True
        acc.blobs[blob_id] = _Blob(total, held, packed)
        self._flush()
        return have + len(data)

    async def read_blob(self, account: str, blob_id: bytes) -> bytes | None:
        """The complete blob, or None."""
        blob = self._account(account).blobs.get(blob_id)
        if blob is None or blob.held != blob.total:
            return None
        return blob.content()

    # ------------------------------------------------------------------ inspection

    async def records(self, account: str) -> list[Record]:
        """Heads in version order."""
        return sorted(self._account(account).heads.values(), key=lambda r: r.version)

    async def history(self, account: str) -> list[StoredVersion]:
        """Every applied version in version order."""
        return list(self._account(account).history)

    def durable_records(self, account: str) -> list[Record]:
        """Heads of the durable state only (what survives a crash now)."""
        acc = self._durable.get(account)
        return sorted(acc.heads.values(), key=lambda r: r.version) if acc else []

    # ------------------------------------------------------------------ backup / restore

    def backup(self) -> SimSnapshot:
        """A snapshot of the durable state."""
        return SimSnapshot(
            tuple((name, acc.copy()) for name, acc in sorted(self._durable.items())), self._generation
        )

    def restore(self, snapshot: SimSnapshot) -> int:
        """Replace the state with ``snapshot`` under a new generation (``silent-rollback``: the old one)."""
        if not isinstance(snapshot, SimSnapshot):
            raise TypeError("SimulatedStorage.restore takes a SimSnapshot")
        self._durable = {name: acc.copy() for name, acc in snapshot.accounts}
        self._volatile = {name: acc.copy() for name, acc in snapshot.accounts}
        self._dirty.clear()
        self._unflushed_ack = False
        self._before_last_flush = None
        if not self.faults.on("silent-rollback"):
            self._generation = self._new_generation()
        return self._generation

    async def aclose(self) -> None:
        """Flush what is pending (nothing to release)."""
        if self._unflushed_ack:
            self._flush()
