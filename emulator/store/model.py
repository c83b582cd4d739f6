"""A plain in-memory model of the record store's semantics, and seeded store workloads.

``StoreModel`` implements the ``RecordStore`` API contract with dicts and nothing else: it is the
oracle the power-loss runner and the stateful tests compare the store against. ``make_workload``
draws a list of store operations from a seed, with arguments a sync client could plausibly pass.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sidekick_testbed.emulator.store.record_store import RecordStore
from sidekick_testbed.emulator.store.values import DeviceMeta, StoredVersion, SyncState
from sidekick_testbed.protocol.records import CalendarEvent, Contact, Note, Photo, Record, RecordBody, Todo

__all__ = ["StoreModel", "StoreOp", "apply_op", "compare", "make_workload", "random_body"]


class StoreModel:
    """The store's contract on dicts: heads by record id, blobs by id, device metadata."""

    def __init__(self, meta: DeviceMeta) -> None:
        self.meta = meta
        self.heads: dict[bytes, StoredVersion] = {}
        self.blobs: dict[bytes, bytes] = {}

    def copy(self) -> StoreModel:
        """An independent copy."""
        twin = StoreModel(self.meta)
        twin.heads = dict(self.heads)
        twin.blobs = dict(self.blobs)
        return twin

    def set_meta(self, **changes: Any) -> None:
        self.meta = replace(self.meta, **changes)

    def write_local(self, record_id: bytes, body: RecordBody, *, deleted: bool = False,
                    image: bytes | None = None) -> StoredVersion:
        head = self.heads.get(record_id)
        if image is not None and isinstance(body, Photo):
            self.blobs[body.blob_id] = bytes(image)
        base = head.record.version if head else 0
        version = StoredVersion(Record(record_id, 0, deleted, body), self.meta.next_lsn, base,
                                SyncState.DIRTY, 0)
        self.heads[record_id] = version
        self.meta = replace(self.meta, next_lsn=self.meta.next_lsn + 1)
        if deleted and isinstance(body, Photo) and head is not None and not head.record.deleted:
            self._drop_deleted_images({body.blob_id})
        return version

    def _drop_deleted_images(self, candidates: set[bytes]) -> None:
        """Of ``candidates``, drop the blobs a photo tombstone names and no live photo head names."""
        named = {(v.record.deleted, v.record.body.blob_id) for v in self.heads.values()
                 if isinstance(v.record.body, Photo)}
        for blob_id in candidates:
            if (True, blob_id) in named and (False, blob_id) not in named:
                self.blobs.pop(blob_id, None)

    def mark_pushed(self, through_lsn: int) -> None:
        for rid, v in self.heads.items():
            if v.state is SyncState.DIRTY and 0 < v.lsn <= through_lsn:
                self.heads[rid] = replace(v, state=SyncState.PUSHED)

    def mark_durable(self, generation: int, through_lsn: int,
                     assigned: Sequence[tuple[int, bytes, int]]) -> None:
        for lsn, rid, server_version in assigned:
            v = self.heads.get(rid)
            if v is not None and v.lsn == lsn and lsn > 0:
                self.heads[rid] = replace(v, record=replace(v.record, version=server_version))
        for rid, v in self.heads.items():
            if v.state is SyncState.PUSHED and 0 < v.lsn <= through_lsn:
                self.heads[rid] = replace(v, state=SyncState.DURABLE, generation=generation)

    def record_receipts(self, pushed_through: int, generation: int, durable_through: int,
                        assigned: Sequence[tuple[int, bytes, int]], durable_lsn: int) -> None:
        self.mark_pushed(pushed_through)
        self.mark_durable(generation, durable_through, assigned)
        if durable_lsn > self.meta.durable_lsn:
            self.set_meta(durable_lsn=durable_lsn)

    def apply_pulled(self, records: Sequence[Record], anchor: int) -> None:
        gen = self.meta.generation
        applied = False
        for record in records:
            head = self.heads.get(record.record_id)
            if head is not None and (head.state is not SyncState.DURABLE or head.generation != gen):
                continue
            self.heads[record.record_id] = StoredVersion(record, 0, record.version, SyncState.DURABLE, gen)
            applied = True
        if not applied and anchor == self.meta.anchor:
            return
        self.meta = replace(self.meta, anchor=anchor)
        self._drop_deleted_images({r.body.blob_id for r in records if isinstance(r.body, Photo)})

    def mark_all_dirty(self) -> None:
        lsn = self.meta.next_lsn
        for rid in sorted(self.heads, key=lambda r: (self.heads[r].lsn, r)):
            self.heads[rid] = replace(self.heads[rid], lsn=lsn, state=SyncState.DIRTY, generation=0)
            lsn += 1
        self.meta = replace(self.meta, next_lsn=lsn)

    def write_blob(self, blob_id: bytes, data: bytes) -> None:
        self.blobs[blob_id] = bytes(data)

    def records(self) -> list[StoredVersion]:
        return [self.heads[rid] for rid in sorted(self.heads)]

    def pending(self) -> list[StoredVersion]:
        heads = [v for v in self.heads.values() if v.state is not SyncState.DURABLE]
        return sorted(heads, key=lambda v: (v.lsn, v.record.record_id))

    def at_risk(self) -> list[StoredVersion]:
        gen = self.meta.generation
        heads = [v for v in self.heads.values() if v.state is not SyncState.DURABLE or v.generation != gen]
        return sorted(heads, key=lambda v: (v.lsn, v.record.record_id))


def compare(store: RecordStore, model: StoreModel) -> list[str]:
    """Differences between a store and the model (empty if they agree on everything)."""
    problems: list[str] = []
    if store.meta != model.meta:
        problems.append(f"meta: store {store.meta} != model {model.meta}")
    got = {v.record.record_id: v for v in store.records()}
    if got != model.heads:
        for rid in sorted(set(got) | set(model.heads)):
            if got.get(rid) != model.heads.get(rid):
                problems.append(f"record {rid.hex()}: store {got.get(rid)} != model {model.heads.get(rid)}")
    if store.pending() != model.pending():
        problems.append("pending() differs")
    if store.at_risk() != model.at_risk():
        problems.append("at_risk() differs")
    if store.blob_ids() != sorted(model.blobs):
        problems.append(f"blobs: store {len(store.blob_ids())} != model {len(model.blobs)}")
    else:
        for bid, data in model.blobs.items():
            if store.read_blob(bid) != data:
                problems.append(f"blob {bid.hex()} content differs")
    return problems


@dataclass(frozen=True, slots=True)
class StoreOp:
    """One store call: method name and arguments."""

    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        return f"{self.name}({len(self.args)} args)"


def apply_op(target: RecordStore | StoreModel, op: StoreOp) -> None:
    """Run one operation on a store or a model."""
    getattr(target, op.name)(*op.args, **dict(op.kwargs))


def random_body(rng: random.Random, size: int = 40) -> RecordBody:
    """A small record body of a random kind."""
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randint(0, size)))
    kind = rng.randrange(4)
    if kind == 0:
        return Contact(word[:20], tuple(f"+1555{rng.randrange(10**7):07d}" for _ in range(rng.randint(0, 2))))
    if kind == 1:
        start = rng.randrange(1_200_000_000, 1_300_000_000)
        return CalendarEvent(word[:30], start, start + rng.randrange(7200), word[30:])
    if kind == 2:
        return Todo(word, rng.random() < 0.3, rng.randrange(0, 1 << 31), rng.randrange(256))
    return Note(word[:16], word)


def make_workload(seed: int | str, n_ops: int, *, blob_max: int = 2500, ids: int = 12) -> list[StoreOp]:
    """``n_ops`` store operations drawn from ``seed``; each prefix is the same for any ``n_ops``."""
    rng = random.Random(f"workload/{seed}")
    model = StoreModel(DeviceMeta(b"\x5a" * 16, "alice", b"k" * 32, 1, b"", 0, 0, 0))
    record_ids = [rng.randbytes(16) for _ in range(ids)]
    server_version = 0
    generation = rng.randrange(1, 1 << 63)
    ops: list[StoreOp] = []
    choices = ["write"] * 40 + ["delete"] * 5 + ["push"] * 12 + ["durable"] * 12 + ["pull"] * 8 + \
        ["all_dirty"] * 3 + ["meta"] * 7 + ["blob"] * 4 + ["regress"] * 1 + ["receipts"] * 8
    for _ in range(n_ops):
        what = rng.choice(choices)
        if what == "write":
            op = StoreOp("write_local", (rng.choice(record_ids), random_body(rng)))
        elif what == "delete":
            rid = rng.choice(record_ids)
            head = model.heads.get(rid)
            body = head.record.body if head else random_body(rng, 8)
            op = StoreOp("write_local", (rid, body), (("deleted", True),))
        elif what == "push":
            op = StoreOp("mark_pushed", (rng.randint(0, model.meta.next_lsn),))
        elif what == "durable":
            pushed = [v for v in model.heads.values() if v.state is SyncState.PUSHED]
            through = max((v.lsn for v in pushed), default=0)
            through = rng.randint(0, through) if rng.random() < 0.3 else through
            assigned = []
            for v in sorted(pushed, key=lambda v: v.lsn):
                if v.lsn <= through:
                    server_version += 1
                    assigned.append((v.lsn, v.record.record_id, server_version))
            gen = model.meta.generation if rng.random() < 0.9 else generation
            op = StoreOp("mark_durable", (gen, through, tuple(assigned)))
        elif what == "receipts":  # a session's: some pushed, some of those durable, the watermark
            pushed_through = rng.randint(0, model.meta.next_lsn)
            durable_through = rng.randint(0, pushed_through)
            assigned = []
            for v in sorted(model.heads.values(), key=lambda v: v.lsn):
                if 0 < v.lsn <= durable_through and v.state is not SyncState.DURABLE and rng.random() < 0.9:
                    server_version += 1
                    assigned.append((v.lsn, v.record.record_id, server_version))
            gen = model.meta.generation if rng.random() < 0.9 else generation
            op = StoreOp("record_receipts", (pushed_through, gen, durable_through, tuple(assigned),
                                             rng.randint(0, durable_through)))
        elif what == "pull":
            records = []
            for _ in range(rng.randint(0, 3)):
                server_version += 1
                rid = rng.choice(record_ids)
                records.append(Record(rid, server_version, rng.random() < 0.1, random_body(rng)))
            op = StoreOp("apply_pulled", (tuple(records), server_version))
        elif what == "all_dirty":
            op = StoreOp("mark_all_dirty", ())
        elif what == "meta":
            op = StoreOp("set_meta", (), (("server_id", b"S" * 16), ("generation", generation),
                                          ("durable_lsn", rng.randint(0, model.meta.next_lsn))))
        elif what == "regress":
            generation = rng.randrange(1, 1 << 63)
            op = StoreOp("set_meta", (), (("generation", generation), ("anchor", 0)))
        else:
            op = StoreOp("write_blob", (rng.randbytes(16), rng.randbytes(rng.randint(0, blob_max))))
        apply_op(model, op)
        ops.append(op)
    return ops
