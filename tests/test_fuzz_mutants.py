"""The fuzzer catches every planted bug (device mutants and server fault modes) within a small
budget, through the real campaign runner; each is caught by the invariant that describes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.sim.runner import Budget, Campaign, run_campaign
from emulator.sim.signatures import MUTANT_SIGNATURES
from emulator.sim.world import ALL_MUTANTS, SimOptions

# mutant -> (first seed of the campaign, runs in the budget, fault kinds or None for all)
CAUGHT: dict[str, tuple[int, int, frozenset[str] | None]] = {
    "mark-clean-on-push-ack": (1, 2, None),
    "restore-from-server-on-reboot": (1, 2, None),
    "delete-local-missing-on-server": (7, 2, None),
    "pull-ack-before-flash": (1, 2, None),
    "gc-erase-before-commit": (41, 2, frozenset({"power-cut"})),
    "skip-crc-check": (1, 2, None),
    "ignore-generation-change": (8, 2, None),
    "keep-anchor-after-restore": (24, 2, None),
    "ack-before-durable": (12, 2, None),
    "silent-rollback": (7, 2, None),
    "duplicate-on-retransmit": (1, 2, None),
    "ignore-pull-ack": (7, 2, None),
    "lose-tail-on-crash": (12, 2, None),
    "wrong-watermark": (27, 2, None),
    "reorder-versions": (3, 2, None),
    "forget-conflict-copy": (2, 2, None),
}


def test_every_mutant_has_a_budget() -> None:
    assert set(CAUGHT) == set(ALL_MUTANTS) == set(MUTANT_SIGNATURES)


@pytest.mark.parametrize("mutant", sorted(CAUGHT))
def test_mutant_is_caught(mutant: str, tmp_path: Path) -> None:
    start, runs, faults = CAUGHT[mutant]
    options = SimOptions(mutant=mutant) if faults is None else SimOptions(mutant=mutant, faults=faults)
    result = run_campaign(Campaign(options, Budget(runs=runs), start=start, out=tmp_path, shrink_runs=0))
    assert result.failures, f"{mutant} not caught in {runs} run(s) from seed {start}"
    failure = result.failures[0]
    assert failure.what in MUTANT_SIGNATURES[mutant], failure.text
    assert Path(failure.trace).exists()


@pytest.mark.parametrize("mutant, start", [("ack-before-durable", 12), ("wrong-watermark", 27)])
def test_the_same_seeds_are_clean_without_the_mutant(mutant: str, start: int, tmp_path: Path) -> None:
    """The detection is the mutant's doing: the correct system passes the very same seeds."""
    result = run_campaign(Campaign(SimOptions(), Budget(runs=1), start=start, out=tmp_path, shrink_runs=0))
    assert not result.failures and result.runs == 1
