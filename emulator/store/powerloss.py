"""Power-loss runner: cut the power at every flash operation of a store workload and check recovery.

For a workload (``make_workload(seed, n)``) a reference run executes every operation on a store and
on the plain ``StoreModel`` and checks they agree; it keeps, before each operation, a flash
snapshot, a copy of the store object and a digest of the store's logical content.

A cut ``seed:k:variant`` restores the snapshot before the operation that contains flash operation
``k``, arms the cut (``clean``, or ``torn``: torn program / torn erase), runs the operation into
``PowerLoss`` and checks:

1. the flash mounts;
2. the mounted content (every record with its exact body and sync state, the metadata, the blobs)
   equals the reference either wholly before or wholly after the interrupted operation;
3. the store keeps working: a new write commits and survives a remount;
4. a second cut, at a random operation of the recovery (mount + that write), again leaves a store
   that mounts and shows the recovery write wholly present or wholly absent.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from sidekick_testbed.emulator.flash import FlashSnapshot, Geometry, NandFlash, PowerLoss
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.emulator.store.model import StoreModel, StoreOp, apply_op, compare, make_workload
from sidekick_testbed.emulator.store.reading import PageCache
from sidekick_testbed.emulator.store.record_store import RecordStore
from sidekick_testbed.emulator.store.values import StoreFull
from sidekick_testbed.protocol.records import Note

__all__ = ["CutResult", "PowerLossRunner", "RUNNER_GEOMETRY", "parse_cut_id"]

RUNNER_GEOMETRY = Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=8)
"""A small chip (8 blocks of 16 half-KiB pages): every cut is cheap and GC runs often."""
PROBE_ID = b"\xfe" * 16
DEVICE_ID = b"\x5a" * 16


class ReferenceMismatch(AssertionError):
    """The store disagreed with the model in the uninterrupted reference run."""


@dataclass(frozen=True, slots=True)
class CutResult:
    """Outcome of one cut."""

    cut_id: str
    kind: str
    """Flash operation the cut hit: read, program, erase."""
    outcome: str
    """before / after (which side of the interrupted operation the store came back on), or failed."""
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True if every check passed."""
        return not self.problems


@dataclass(slots=True)
class _Reference:
    seed: int
    ops: list[StoreOp]
    starts: list[int] = field(default_factory=list)
    """starts[j] = flash operations done before workload operation j (its ops are starts[j]+1..ends[j])."""
    ends: list[int] = field(default_factory=list)
    snaps: list[FlashSnapshot] = field(default_factory=list)
    stores: list[RecordStore] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    """digests[j] = content before operation j; digests[j + 1] = after it."""
    refused: int = 0
    """Operations the store refused with StoreFull (they must change nothing)."""
    kinds: list[str] = field(default_factory=list)
    """kinds[k - 1] = kind of flash operation k."""


def parse_cut_id(text: str) -> tuple[int, int, str]:
    """(seed, k, variant) from ``seed:k:variant``; ValueError if malformed."""
    parts = text.split(":")
    if len(parts) != 3 or parts[2] not in ("clean", "torn"):
        raise ValueError(f"bad cut id {text!r}: expected SEED:K:clean|torn")
    try:
        seed, k = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"bad cut id {text!r}: SEED and K are integers") from None
    if k < 1 or seed < 0:
        raise ValueError(f"bad cut id {text!r}: K >= 1, SEED >= 0")
    return seed, k, parts[2]


class PowerLossRunner:
    """Runs power cuts over store workloads on a small flash geometry."""

    def __init__(self, *, geometry: Geometry = RUNNER_GEOMETRY, n_ops: int = 200,
                 recovery_every: int = 4, blob_max: int = 2500, mutants: Mutants = NO_MUTANTS) -> None:
        """``recovery_every``: run the remount and second-cut checks (3 and 4) on every n-th cut
        (1 = all; they are the costly part). The recovery write itself is checked on every cut."""
        if recovery_every < 1:
            raise ValueError("recovery_every must be >= 1")
        self.geometry = geometry
        self.n_ops = n_ops
        self.recovery_every = recovery_every
        self.mutants = mutants
        self.blob_max = blob_max
        self.cache = PageCache(max_pages=50_000)
        self._refs: dict[int, _Reference] = {}

    # ------------------------------------------------------------------ reference run

    def reference(self, seed: int) -> _Reference:
        """Run the workload of ``seed`` uninterrupted (cached); ReferenceMismatch if the store and
        the model disagree after any operation."""
        ref = self._refs.get(seed)
        if ref is not None:
            return ref
        flash = NandFlash(self.geometry, rng=random.Random(f"flash/{seed}"))
        flash.op_trace = []
        store = RecordStore.format(flash, device_id=DEVICE_ID, account="alice", key=b"k" * 32,
                                   page_cache=self.cache, mutants=self.mutants)
        model = StoreModel(store.meta)
        ref = _Reference(seed, make_workload(seed, self.n_ops, blob_max=self.blob_max))
        ref.digests.append(store.digest())
        for j, op in enumerate(ref.ops):
            ref.starts.append(flash.ops)
            ref.snaps.append(flash.snapshot())
            ref.stores.append(store.clone())
            try:
                apply_op(store, op)
            except StoreFull:
                ref.refused += 1  # refused whole: nothing changed, the model skips it too
            else:
                apply_op(model, op)
            ref.ends.append(flash.ops)
            problems = compare(store, model)
            if problems:
                raise ReferenceMismatch(f"seed {seed} op {j} {op.name}: " + "; ".join(problems[:3]))
            ref.digests.append(store.digest())
        ref.kinds = flash.op_trace
        flash.op_trace = None
        self._refs[seed] = ref
        return ref

    def forget(self, seed: int) -> None:
        """Drop the cached reference run of ``seed`` (its snapshots) to free memory."""
        self._refs.pop(seed, None)

    def cuts(self, seed: int) -> Iterator[tuple[int, str]]:
        """Every (k, variant) of the workload: each read once (a cut there is clean), each program
        and erase clean and torn."""
        ref = self.reference(seed)
        for start, end in zip(ref.starts, ref.ends, strict=True):
            for k in range(start + 1, end + 1):
                yield k, "clean"
                if ref.kinds[k - 1] != "read":
                    yield k, "torn"

    def cut_count(self, seed: int) -> int:
        """How many cuts ``cuts(seed)`` yields."""
        ref = self.reference(seed)
        total = 0
        for start, end in zip(ref.starts, ref.ends, strict=True):
            total += (end - start) + sum(1 for kind in ref.kinds[start:end] if kind != "read")
        return total

    # ------------------------------------------------------------------ one cut

    def run_id(self, cut_id: str) -> CutResult:
        """Run one cut given as ``seed:k:variant``."""
        seed, k, variant = parse_cut_id(cut_id)
        ref = self.reference(seed)
        j = bisect.bisect_left(ref.starts, k) - 1
        if j < 0 or k > ref.ends[j]:
            raise ValueError(f"cut {cut_id}: flash operation {k} is not inside a workload operation "
                             f"of seed {seed} ({self.n_ops} operations)")
        return self.run_cut(seed, k, variant)

    def run_cut(self, seed: int, k: int, variant: str) -> CutResult:
        """Cut the power at flash operation ``k`` of workload ``seed`` and check recovery."""
        ref = self.reference(seed)
        cut_id = f"{seed}:{k}:{variant}"
        j = bisect.bisect_left(ref.starts, k) - 1
        op = ref.ops[j]
        store = ref.stores[j].clone()
        flash = store.flash
        flash.restore(ref.snaps[j])
        flash.arm_power_cut(k, variant)
        kind = ref.kinds[k - 1]
        try:
            apply_op(store, op)
        except PowerLoss as exc:
            kind = exc.kind
        except StoreFull:
            flash.disarm_power_cut()
            return CutResult(cut_id, kind, "failed", (f"operation {j} ({op.name}) was refused before op {k}",))
        else:
            flash.disarm_power_cut()
            return CutResult(cut_id, kind, "failed", (f"operation {j} ({op.name}) finished without reaching op {k}",))
        before, after = ref.digests[j], ref.digests[j + 1]
        problems: list[str] = []
        full = (2 * k + (variant == "torn")) % self.recovery_every == 0
        cut_state = flash.snapshot() if full else None
        mounted, outcome = self._check_mount(flash, (before, after), problems, f"after cut in op {j} ({op.name})")
        if mounted is None:
            return CutResult(cut_id, kind, "failed", tuple(problems))
        recovered = (before, after)[outcome == "after"]
        start = flash.ops
        probed = self._probe(mounted, problems, digest=full)
        probe_ops = flash.ops - start
        if probed is None:
            return CutResult(cut_id, kind, "failed", tuple(problems))
        if cut_state is not None:
            self._check_recovery(flash, cut_id, cut_state, start, probe_ops, recovered, probed, problems)
        return CutResult(cut_id, kind, outcome if not problems else "failed", tuple(problems))

    def _check_recovery(self, flash: NandFlash, cut_id: str, cut_state: FlashSnapshot, start: int,
                        probe_ops: int, recovered: bytes, probed: bytes, problems: list[str]) -> None:
        """Checks 3 (remount keeps the recovery write) and 4 (a second cut during recovery)."""
        again, _ = self._check_mount(flash, (probed,), problems, "remount after the recovery write")
        if again is not None:
            rng = random.Random(cut_id)
            flash.restore(cut_state)
            k2 = flash.ops + rng.randint(1, max(1, probe_ops + (start - cut_state.ops)))
            flash.arm_power_cut(k2, rng.choice(("clean", "torn")))
            try:
                second = RecordStore.mount(flash, page_cache=self.cache, mutants=self.mutants)
                self._probe(second, problems, digest=False)
            except PowerLoss:
                pass
            except Exception as exc:  # a failure before the cut is a finding
                problems.append(f"recovery failed before the second cut: {exc}")
            flash.disarm_power_cut()
            self._check_mount(flash, (recovered, probed), problems, "after a second cut during recovery")

    def _check_mount(self, flash: NandFlash, allowed: tuple[bytes, ...], problems: list[str],
                     when: str) -> tuple[RecordStore | None, str]:
        try:
            store = RecordStore.mount(flash, page_cache=self.cache, mutants=self.mutants)
            digest = store.digest()
        except Exception as exc:  # any failure to mount is a finding, never a crash of the run
            problems.append(f"mount failed {when}: {type(exc).__name__}: {exc}")
            return None, "failed"
        if digest not in allowed:
            problems.append(f"content {when} matches neither side of the interrupted operation")
            return None, "failed"
        return store, ("before", "after")[allowed.index(digest)] if len(allowed) == 2 else "ok"

    def _probe(self, store: RecordStore, problems: list[str], *, digest: bool) -> bytes | None:
        """Write a record after recovery and read it back (if the store is full and refuses it,
        a metadata change instead); the content digest if asked, else b""."""
        try:
            try:
                store.write_local(PROBE_ID, Note("probe", "recovery write"))
            except StoreFull:
                anchor = store.meta.anchor + 1
                try:
                    store.set_meta(anchor=anchor)
                except StoreFull:
                    pass  # a full store refuses writes, whole (the caller's digest checks nothing changed)
                else:
                    if store.meta.anchor != anchor:
                        problems.append("recovery metadata write not visible")
                        return None
            else:
                got = store.get(PROBE_ID)
                if got is None or got.record.body != Note("probe", "recovery write"):
                    problems.append("recovery write not readable back")
                    return None
            return store.digest() if digest else b""
        except PowerLoss:
            raise
        except Exception as exc:  # any failure after recovery is a finding
            problems.append(f"store unusable after recovery: {type(exc).__name__}: {exc}")
            return None
