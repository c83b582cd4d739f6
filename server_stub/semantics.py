"""How a batch of changes is applied: idempotence per (device, LSN) and the conflict policy.

One function, ``apply_changes``, runs inside a backend's transaction through the small ``Tx``
interface, so both backends share the exact rules of docs/PROTOCOL.md sections 10 and 13:

1. a change whose LSN is at or below the device's last applied LSN is a duplicate: not applied
   again, reported with the version it received when it was applied;
2. no head: the change becomes the head with the next server version;
3. same content as the head: a no-op, reported with the head's version;
4. base version equal to the head's: the change becomes the head with the next version;
5. otherwise a conflict: the change becomes the head (version V) and the overwritten head is kept
   as a conflict copy (version V + 1) named by ``conflict_copy_id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sidekick_testbed.protocol.messages import Assigned, Change, Conflict
from sidekick_testbed.protocol.records import Record
from sidekick_testbed.server_stub.faults import FaultSet

__all__ = ["Applied", "Tx", "apply_changes", "conflict_copy_id", "same_content"]


def conflict_copy_id(record_id: bytes, version: int, attempt: int = 0) -> bytes:
    """``SHA-256("conflict" || record_id || u64be(version) [|| u32be(attempt)])[:16]``, the spec's copy
    id; ``attempt`` > 0 only when the plain id is taken by another record (R-CONFLICT-8)."""
    suffix = attempt.to_bytes(4, "big") if attempt else b""
    return hashlib.sha256(b"conflict" + record_id + version.to_bytes(8, "big") + suffix).digest()[:16]


def _free_copy_id(tx: Tx, record_id: bytes, head: Record, *, overwrite: bool = False) -> tuple[bytes, bool]:
    """The copy id for ``head`` and whether the copy must still be written (R-CONFLICT-8); with
    ``overwrite`` (fault ``overwrite-taken-copy``) the plain id, whatever holds it."""
    attempt = 0
    while True:
        copy_id = conflict_copy_id(record_id, head.version, attempt)
        existing = tx.head(copy_id)
        if existing is None or overwrite:
            return copy_id, True
        if (existing.conflict_of == record_id and existing.kind == head.kind
                and existing.deleted == head.deleted and existing.body == head.body):
            return copy_id, False
        attempt += 1


def same_content(a: Record, b: Record) -> bool:
    """Same kind, deleted flag, ``conflict_of`` and body (every field)."""
    return a.kind == b.kind and a.deleted == b.deleted and a.conflict_of == b.conflict_of and a.body == b.body


class Tx(Protocol):
    """What ``apply_changes`` needs from a backend, inside one transaction of one account."""

    def head(self, record_id: bytes) -> Record | None: ...

    def server_version(self) -> int: ...

    def put(self, record: Record, device_id: bytes | None, lsn: int | None) -> None:
        """Store ``record`` (its version already assigned and above every other) as head and history."""
        ...

    def applied_lsn(self, device_id: bytes) -> int: ...

    def set_applied_lsn(self, device_id: bytes, lsn: int) -> None: ...

    def applied_version(self, device_id: bytes, lsn: int) -> tuple[bytes, int] | None:
        """(record id, version) that (device, lsn) received when it was applied, if known."""
        ...


@dataclass(frozen=True, slots=True)
class Applied:
    """What one batch did: the device's new watermark, one Assigned per change, the conflicts."""

    durable_lsn: int
    assigned: tuple[Assigned, ...]
    conflicts: tuple[Conflict, ...]


def apply_changes(tx: Tx, device_id: bytes, changes: Sequence[Change], faults: FaultSet) -> Applied:
    """Apply ``changes`` (increasing LSNs) for ``device_id``; see the module docstring."""
    watermark = tx.applied_lsn(device_id)
    version = tx.server_version()
    assigned: list[Assigned] = []
    conflicts: list[Conflict] = []
    for change in changes:
        record_id = change.record.record_id
        duplicate = change.lsn <= watermark
        if duplicate and not faults.on("duplicate-on-retransmit"):
            known = tx.applied_version(device_id, change.lsn)
            # R-DUR-6: a duplicate whose version is no longer known reports 0, never the head's
            # version (the device would then edit "up to date" and overwrite another edit).
            earlier = known[1] if known is not None and known[0] == record_id else 0
            assigned.append(Assigned(change.lsn, record_id, earlier))
            continue
        head = tx.head(record_id)
        if head is not None and not duplicate and same_content(head, change.record):
            assigned.append(Assigned(change.lsn, record_id, head.version))
        else:
            version += 1
            incoming = change.record
            tx.put(Record(record_id, version, incoming.deleted, incoming.body, incoming.conflict_of),
                   device_id, change.lsn)
            assigned.append(Assigned(change.lsn, record_id, version))
            if head is not None and change.base_version != head.version and not faults.on("forget-conflict-copy"):
                copy_id, write = _free_copy_id(tx, record_id, head, overwrite=faults.on("overwrite-taken-copy"))
                if write:
                    version += 1
                    tx.put(Record(copy_id, version, head.deleted, head.body, conflict_of=record_id), None, None)
                conflicts.append(Conflict(change.lsn, record_id, head.version, copy_id))
        watermark = max(watermark, change.lsn)
    tx.set_applied_lsn(device_id, watermark)
    return Applied(watermark, tuple(assigned), tuple(conflicts))
