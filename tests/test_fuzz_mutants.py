"""The fuzzer catches every planted bug (device mutants and server fault modes) from the same three
start seeds, chosen for none of them: campaign K of 3 runs seeds K, K+3, K+6, ... (shard K/3 of the
seeds from 1, so the three never share a seed) within a budget of runs. Each is caught by the
invariant that describes it (its signature); a violation of another kind on the way must be the
mutant's doing: the correct system runs that seed clean.

The failing traces once found are kept (``tests/fuzz_regressions/``, shrunk) and replayed."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from sidekick_testbed.emulator.sim.options import ALL_MUTANTS, SimOptions
from sidekick_testbed.emulator.sim.runner import seeds
from sidekick_testbed.emulator.sim.signatures import MUTANT_SIGNATURES
from sidekick_testbed.emulator.sim.trace import load_trace, replay
from sidekick_testbed.emulator.sim.world import run_world

STARTS = (1, 2, 3)
RUNS = 100
"""Runs each start may take (the slowest mutant needs most; the table in docs/FUZZING.md)."""
REGRESSIONS = Path(__file__).with_name("fuzz_regressions")


def test_every_mutant_has_a_signature() -> None:
    assert set(ALL_MUTANTS) == set(MUTANT_SIGNATURES)


def first_catch(mutant: str, start: int, runs: int = RUNS) -> tuple[int, int] | None:
    """(runs taken, seed) of the first run from ``start`` whose violation is the mutant's signature."""
    for taken, seed in enumerate(seeds(1, (start, 3)), 1):
        if taken > runs:
            return None
        result = run_world(seed, SimOptions(mutant=mutant))
        if result.violation is None:
            continue
        if result.violation.what in MUTANT_SIGNATURES[mutant]:
            return taken, seed
        clean = run_world(seed, SimOptions())
        assert clean.violation is None, f"seed {seed} fails without the mutant too: {clean.violation}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("mutant", sorted(ALL_MUTANTS))
def test_mutant_is_caught_from_every_start(mutant: str, start: int) -> None:
    assert first_catch(mutant, start) is not None, f"{mutant} not caught in {RUNS} runs from start {start}"


@pytest.mark.parametrize("trace", sorted(REGRESSIONS.glob("*.json")), ids=lambda p: p.stem)
def test_a_failure_once_found_replays(trace: Path) -> None:
    recorded = load_trace(trace)
    mutant = recorded["options"]["mutant"]
    again = replay(recorded)
    assert again.result.violation is not None, f"{trace.name} no longer fails"
    assert again.result.violation.what in MUTANT_SIGNATURES[mutant], again.result.violation.text
    assert len(again.result.steps) <= 20


def test_every_mutant_has_a_regression_trace() -> None:
    kept = {json.loads(path.read_text())["options"]["mutant"] for path in REGRESSIONS.glob("*.json")}
    assert kept == set(ALL_MUTANTS)


def write_regressions(names: Sequence[str] = ()) -> None:
    """Find each mutant (or the ``names`` given) from start 1, shrink the failure and keep its trace
    (``python -m tests.test_fuzz_mutants [NAME...]``): run it again when a change of the world makes
    one stop failing. A failure the shrinker cannot bring to 20 steps gives way to the next one found."""
    from sidekick_testbed.emulator.sim.shrink import shrink  # noqa: PLC0415
    from sidekick_testbed.emulator.sim.trace import to_trace, write_trace  # noqa: PLC0415

    REGRESSIONS.mkdir(exist_ok=True)
    for mutant in sorted(names or ALL_MUTANTS):
        kept = None
        for seed in itertools.islice(seeds(1, (0, 1)), 400):
            result = run_world(seed, SimOptions(mutant=mutant))
            if result.violation is None or result.violation.what not in MUTANT_SIGNATURES[mutant]:
                continue
            small = shrink(result)
            if small.violation is not None and small.violation.what in MUTANT_SIGNATURES[mutant] \
                    and len(small.steps) <= 20:
                kept = seed, result, small
                break
        assert kept is not None, f"{mutant}: no failure shrunk to 20 steps in 400 runs"
        seed, result, small = kept
        write_trace(REGRESSIONS / f"{mutant}.json",
                    to_trace(small, note=f"{mutant}: found at seed {seed}, shrunk to {len(small.steps)} steps"))
        print(mutant, seed, len(result.steps), "->", len(small.steps), small.violation and small.violation.what)


if __name__ == "__main__":
    write_regressions(sys.argv[1:])
