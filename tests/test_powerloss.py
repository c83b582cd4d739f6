"""Power loss at every flash operation: exhaustive over short workloads, sampled over long ones."""

from __future__ import annotations

import bisect
import random
from collections import Counter

import pytest

from sidekick_testbed.emulator.flash import Geometry
from sidekick_testbed.emulator.mutants import Mutants
from sidekick_testbed.emulator.store.powerloss import PowerLossRunner, parse_cut_id

TINY = Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=8)
"""So small that garbage collection runs inside short workloads."""


def run_all(runner: PowerLossRunner, seed: int, cuts: list[tuple[int, str]] | None = None) -> Counter[str]:
    tally: Counter[str] = Counter()
    for k, variant in cuts if cuts is not None else runner.cuts(seed):
        result = runner.run_cut(seed, k, variant)
        assert result.ok, f"{result.cut_id}: {result.problems}"
        tally[f"{variant}-{result.kind}"] += 1
        tally[result.outcome] += 1
    return tally


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_short_workloads(seed: int) -> None:
    runner = PowerLossRunner(n_ops=40, recovery_every=1)
    tally = run_all(runner, seed)
    assert tally["clean-program"] > 0 and tally["torn-program"] > 0 and tally["clean-read"] > 0
    assert tally["before"] > 0


def test_exhaustive_through_garbage_collection() -> None:
    runner = PowerLossRunner(geometry=TINY, n_ops=140, recovery_every=2)
    ref = runner.reference(7)
    stats = ref.stores[-1].stats()
    assert stats.gc_runs > 0 and stats.checkpoints > 0  # cuts land inside GC and checkpoints too
    tally = run_all(runner, 7)
    assert tally["torn-erase"] > 0 and tally["torn-program"] > 0


@pytest.mark.parametrize("seed", [100, 101])
def test_sampled_long_workloads(seed: int) -> None:
    runner = PowerLossRunner(n_ops=300)
    cuts = list(runner.cuts(seed))
    tally = run_all(runner, seed, random.Random(seed).sample(cuts, 150))
    assert tally["before"] + tally["after"] == 150


def test_every_cut_inside_a_sessions_receipts_keeps_all_of_them_or_none() -> None:
    runner = PowerLossRunner(n_ops=80, recovery_every=1)
    ref = runner.reference(11)
    receipts = {j for j, op in enumerate(ref.ops) if op.name == "record_receipts"}
    cuts = [(k, v) for k, v in runner.cuts(11) if bisect.bisect_left(ref.starts, k) - 1 in receipts]
    tally = run_all(runner, 11, cuts)  # "before" or "after" the whole operation, never between
    assert tally["torn-program"] > 0 and tally["before"] > 0


def test_a_cut_reruns_alone_from_its_id() -> None:
    runner = PowerLossRunner(n_ops=30)
    k, variant = [cut for cut in runner.cuts(3) if cut[1] == "torn"][5]
    first = runner.run_cut(3, k, variant)
    again = PowerLossRunner(n_ops=30).run_id(f"3:{k}:{variant}")
    assert again == first and again.cut_id == f"3:{k}:torn"


@pytest.mark.parametrize("bad", ["", "1:2", "a:1:torn", "1:2:sideways", "1:0:clean", "-1:3:clean"])
def test_malformed_cut_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_cut_id(bad)


def test_a_cut_outside_the_workload_is_refused() -> None:
    with pytest.raises(ValueError):
        PowerLossRunner(n_ops=5).run_id("0:999999:clean")


def test_the_runner_finds_the_gc_erase_before_commit_bug() -> None:
    runner = PowerLossRunner(geometry=TINY, n_ops=140, recovery_every=8,
                             mutants=Mutants(frozenset({"gc-erase-before-commit"})))
    failed = [r for r in (runner.run_cut(7, k, v) for k, v in runner.cuts(7)) if not r.ok]
    assert failed
    assert any("neither side" in p or "mount failed" in p for r in failed for p in r.problems)


def test_cuts_in_a_store_that_fills_up() -> None:
    """Writes refused with StoreFull change nothing, and cuts around them recover like any other."""
    five = Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=5)
    runner = PowerLossRunner(geometry=five, n_ops=150, blob_max=6000, recovery_every=2)
    assert runner.reference(3).refused > 0
    tally = run_all(runner, 3, random.Random(3).sample(list(runner.cuts(3)), 250))
    assert tally["torn-erase"] > 0
