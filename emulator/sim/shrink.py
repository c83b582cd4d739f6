"""Shrink a failing run: fewer steps, accounts, devices and fault kinds, same seed, same invariant.

Greedy, like delta debugging on the run's options: each candidate is run whole; a candidate that
still breaks the same invariant becomes the new best, and the passes repeat until none helps or
the budget (runs, simulated worlds) is spent. The seed stays: the shrunk options plus the seed
replay exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from emulator.sim.nemesis import Swarm
from emulator.sim.world import RunResult, SimOptions, run_world, with_swarm

__all__ = ["shrink"]


def _candidates(options: SimOptions) -> Iterator[SimOptions]:
    steps = options.steps
    for smaller in sorted({0, steps // 4, steps // 2, (3 * steps) // 4, steps - 1}):
        if 0 <= smaller < steps:
            yield replace(options, steps=smaller)
    if options.accounts > 1:
        yield replace(options, accounts=options.accounts - 1)
    if options.devices > 1:
        yield replace(options, devices=options.devices - 1)
    swarm = options.swarm or Swarm()
    for kind in sorted(swarm.kinds):
        yield replace(options, swarm=swarm.without(kind))


def shrink(result: RunResult, *, max_runs: int = 60,
           on_run: Callable[[RunResult], None] | None = None) -> RunResult:
    """The smallest run found that breaks ``result``'s invariant (``result`` itself if none)."""
    if result.violation is None:
        raise ValueError("nothing to shrink: the run broke no invariant")
    invariant = result.violation.invariant
    best = result
    best_options = with_swarm(result)
    runs = 0
    improved = True
    while improved and runs < max_runs:
        improved = False
        for candidate in _candidates(best_options):
            if runs >= max_runs:
                break
            runs += 1
            attempt = run_world(result.seed, candidate)
            if on_run is not None:
                on_run(attempt)
            if attempt.violation is not None and attempt.violation.invariant == invariant:
                best, best_options = attempt, with_swarm(attempt)
                improved = True
                break
    return best
