"""The emulated handset: a flash chip, the record store on it, user operations, sync, power.

Boot is a mount of the store on the flash. A power cut (``power_cut()``, or ``PowerLoss`` raised by
the flash inside a store call) leaves the handset off until ``reboot()``, which mounts the same
flash again. The one rule lives in the sync client and the store: a local version is dropped only
after the server confirmed it DURABLE in its current generation; ``factory_reset`` refuses while
any version is not.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import trio

from sidekick_testbed.emulator.flash import NandFlash, PowerLoss
from sidekick_testbed.emulator.handset.sync_client import (
    DEFAULT_TIMEOUT,
    SyncError,
    SyncFailed,
    SyncReport,
    run_sync,
)
from sidekick_testbed.emulator.handset.transport import Connector
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.emulator.store import RecordStore, StoredVersion, SyncState
from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME
from sidekick_testbed.protocol.messages import Message
from sidekick_testbed.protocol.records import BLOB_ID_LEN, RECORD_ID_LEN, Photo, RecordBody

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "Handset",
    "HandsetError",
    "PoweredOff",
    "SyncObserver",
    "UnknownRecord",
    "UnsyncedData",
]

log = logging.getLogger("sidekick.handset")
_T = TypeVar("_T")

BACKOFF_BASE = 0.5
"""Seconds before the first retry; doubled per attempt, with jitter."""
BACKOFF_CAP = 30.0
"""Longest wait between two attempts, in seconds."""


class SyncObserver(Protocol):
    """Optional hooks for a simulation's ledger and traces."""

    def on_message(self, handset: Handset, direction: str, message: Message) -> None: ...

    def on_regression(self, handset: Handset, reason: str) -> None: ...


class HandsetError(Exception):
    """A user-level operation on the handset was refused."""


class PoweredOff(HandsetError):
    """The handset has no power (after a power cut, before ``reboot()``)."""


class UnknownRecord(HandsetError, KeyError):
    """No live record with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown record"


class UnsyncedData(HandsetError):
    """``factory_reset`` refused: these versions are not durable in the server's current generation."""

    def __init__(self, at_risk: Sequence[StoredVersion]) -> None:
        self.at_risk = list(at_risk)
        kinds = Counter(v.record.kind.name.lower() for v in self.at_risk)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        super().__init__(
            f"factory reset refused: {len(self.at_risk)} version(s) not durable on the server "
            f"({summary}); sync first, or force it and lose them"
        )


class Handset:
    """One emulated handset. Construction boots it (mounts the store on ``flash``)."""

    def __init__(self, flash: NandFlash, *, rng: random.Random, mutants: Mutants = NO_MUTANTS,
                 name: str = "", observer: SyncObserver | None = None) -> None:
        self.flash = flash
        self.rng = rng
        self.mutants = mutants
        self.name = name
        self.observer = observer
        self.timeout = DEFAULT_TIMEOUT
        self.max_frame = DEFAULT_MAX_FRAME
        self._store: RecordStore | None = None
        self._sync_scope: trio.CancelScope | None = None
        self._boot()

    @classmethod
    def create(cls, flash: NandFlash, *, device_id: bytes, account: str, key: bytes,
               rng: random.Random, mutants: Mutants = NO_MUTANTS, name: str = "",
               observer: SyncObserver | None = None) -> Handset:
        """Format ``flash`` as a new handset of ``account`` and boot it."""
        _format(flash, device_id=device_id, account=account, key=key, mutants=mutants)
        return cls(flash, rng=rng, mutants=mutants, name=name, observer=observer)

    # ------------------------------------------------------------------ power

    @property
    def powered(self) -> bool:
        """True while the handset is on."""
        return self._store is not None and not self._store.dead

    @property
    def store(self) -> RecordStore:
        """The mounted record store; PoweredOff while the power is off."""
        if self._store is None or self._store.dead:  # a PowerLoss inside a store call: off at once
            raise PoweredOff(f"{self.name or 'handset'} is off (power cut); reboot() it")
        return self._store

    def _boot(self) -> None:
        store = _mount(self.flash, self.mutants)
        if self.mutants.on("restore-from-server-on-reboot"):
            # 2009 firmware: the local copy is a cache of the server; start empty and pull it all.
            meta = store.meta
            store = _format(self.flash, device_id=meta.device_id, account=meta.account, key=meta.key,
                            mutants=self.mutants)
            store.set_meta(next_lsn=meta.next_lsn)
        self._store = store

    def power_cut(self) -> None:
        """Cut the power now: RAM is gone, the flash keeps what it had; a running sync stops."""
        self._store = None
        if self._sync_scope is not None:
            self._sync_scope.cancel()

    def reboot(self) -> None:
        """Power on (again) and mount the same flash."""
        self._store = None
        self._boot()

    def _lost_power(self) -> None:
        self._store = None

    # ------------------------------------------------------------------ user operations

    def add(self, body: RecordBody) -> bytes:
        """Create a record; returns its new id."""
        record_id = self.rng.randbytes(RECORD_ID_LEN)
        self._guard(lambda: self.store.write_local(record_id, body))
        return record_id

    def edit(self, record_id: bytes, body: RecordBody) -> None:
        """Replace the body of a live record (same kind)."""

        def edit() -> None:
            head = self._live(record_id)
            if type(head.record.body) is not type(body):
                raise HandsetError(f"record {record_id.hex()} is a {head.record.kind.name.lower()}, "
                                   f"not a {body.KIND.name.lower()}")
            self.store.write_local(record_id, body)

        self._guard(edit)

    def delete(self, record_id: bytes) -> None:
        """Delete a live record (a tombstone version that syncs like any other)."""

        def delete() -> None:
            head = self._live(record_id)
            self.store.write_local(record_id, head.record.body, deleted=True)

        self._guard(delete)

    def take_photo(self, caption: str, data: bytes, content_type: str = "image/jpeg") -> bytes:
        """Store the image bytes and the photo record in one commit (a photo refused as full, or cut
        by a power loss, leaves no image behind); returns the record id."""
        blob_id = self.rng.randbytes(BLOB_ID_LEN)
        body = Photo(caption, blob_id, len(data), hashlib.sha256(data).digest(), content_type)
        record_id = self.rng.randbytes(RECORD_ID_LEN)
        self._guard(lambda: self.store.write_local(record_id, body, image=data))
        return record_id

    def live_records(self) -> list[StoredVersion]:
        """Heads that are not tombstones."""
        return [v for v in self._guard(self.store.records) if not v.record.deleted]

    def _live(self, record_id: bytes) -> StoredVersion:
        head = self.store.get(record_id)
        if head is None or head.record.deleted:
            raise UnknownRecord(f"no record {record_id.hex()} on this handset")
        return head

    def _guard(self, operation: Callable[[], _T]) -> _T:
        try:
            return operation()
        except PowerLoss:
            self._lost_power()
            raise

    # ------------------------------------------------------------------ sync

    async def sync_once(self, connect: Connector) -> SyncReport:
        """One sync attempt (no retry). Raises SyncError, PowerLoss or PoweredOff."""
        self.store  # noqa: B018 - raises PoweredOff while off
        with trio.CancelScope() as scope:
            self._sync_scope = scope
            try:
                return await run_sync(self, connect, timeout=self.timeout, max_frame=self.max_frame)
            except PowerLoss:
                self._lost_power()
                raise
            finally:
                self._sync_scope = None
        raise PoweredOff(f"{self.name or 'handset'}: power cut during sync")

    async def sync(self, connect: Connector, *, attempts: int = 5) -> SyncReport:
        """Sync, retrying retryable failures with exponential backoff and jitter (Trio clock,
        the handset's rng). Raises SyncFailed after ``attempts`` tries, or the first
        non-retryable error, PowerLoss or PoweredOff."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        last: SyncError | None = None
        for attempt in range(attempts):
            if attempt:
                await trio.sleep(self.backoff(attempt))
            try:
                report = await self.sync_once(connect)
            except SyncError as exc:
                if not exc.retryable:
                    raise
                log.info("%s: sync attempt %d failed: %s", self.name or "handset", attempt + 1, exc)
                last = exc
                continue
            report.attempts = attempt + 1
            return report
        assert last is not None
        raise SyncFailed(attempts, last) from last

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): exponential, jittered."""
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1))
        return float(delay * (0.5 + self.rng.random()))

    def on_sync_message(self, direction: str, message: Message) -> None:
        """The sync client's hook (``SyncDevice``): pass the message to the observer."""
        if self.observer is not None:
            self.observer.on_message(self, direction, message)

    def on_sync_regression(self, reason: str) -> None:
        """The sync client's hook (``SyncDevice``): pass the regression to the observer."""
        if self.observer is not None:
            self.observer.on_regression(self, reason)

    # ------------------------------------------------------------------ reset

    def factory_reset(self, *, force: bool = False) -> None:
        """Wipe the user's data. Refuses (UnsyncedData) while any version is not durable in the
        server's current generation, unless ``force``, which logs every version it destroys."""
        store = self.store
        at_risk = store.at_risk()
        if at_risk and not force:
            raise UnsyncedData(at_risk)
        if at_risk:
            log.warning("%s: FORCED FACTORY RESET destroys %d version(s) the server never confirmed "
                        "durable:", self.name or "handset", len(at_risk))
            for version in at_risk:
                log.warning("  lost: %s %s (%s)", version.record.kind.name.lower(),
                            version.record.record_id.hex(), version.state.name)
        meta = store.meta
        self._store = None
        store = self._guard(lambda: _format(self.flash, device_id=meta.device_id, account=meta.account,
                                            key=meta.key, mutants=self.mutants))
        self._guard(lambda: store.set_meta(next_lsn=meta.next_lsn))
        self._store = store

    # ------------------------------------------------------------------ summaries

    def status(self) -> dict[str, object]:
        """Per kind: total, deleted, dirty, pushed (not durable), durable (in the trusted
        generation), at risk; and the server identity the store trusts."""
        return self._guard(self._status)

    def _status(self) -> dict[str, object]:
        store = self.store
        meta = store.meta
        kinds: dict[str, Counter[str]] = {}
        for version in store.records():
            counts = kinds.setdefault(version.record.kind.name.lower(), Counter())
            counts["deleted" if version.record.deleted else "total"] += 1
            durable = version.state is SyncState.DURABLE and version.generation == meta.generation
            if durable:
                counts["durable"] += 1
            elif version.state is SyncState.PUSHED:
                counts["pushed_not_durable"] += 1
            else:
                counts["dirty"] += 1
        fields = ("total", "deleted", "dirty", "pushed_not_durable", "durable")
        return {
            "device_id": meta.device_id.hex(),
            "account": meta.account,
            "server_id": meta.server_id.hex() if meta.server_id else None,
            "generation": meta.generation if meta.server_id else None,
            "durable_lsn": meta.durable_lsn,
            "anchor": meta.anchor,
            "next_lsn": meta.next_lsn,
            "kinds": {kind: {f: counts.get(f, 0) for f in fields} for kind, counts in sorted(kinds.items())},
            "at_risk": len(store.at_risk()),
        }


def _mount(flash: NandFlash, mutants: Mutants) -> RecordStore:
    return RecordStore.mount(flash, mutants=mutants)


def _format(flash: NandFlash, *, device_id: bytes, account: str, key: bytes, mutants: Mutants) -> RecordStore:
    return RecordStore.format(flash, device_id=device_id, account=account, key=key, mutants=mutants)
