"""Shrink a failing run: fewer steps, accounts, devices and fault kinds, same seed, same invariant.

The failing run's fault phase becomes an explicit script (``SimOptions.script``: the steps that
ran, each with its own number, from which its random choices are drawn, so removing a step leaves
the others as they were). Then, like delta debugging: chunks of the script are removed (halves,
then quarters, ... then single steps), and accounts, devices and fault kinds are dropped; every
candidate is run whole, and one that still breaks the same invariant becomes the new best. The
passes repeat until none helps or the budget (runs, simulated worlds) is spent. The shrunk options
plus the seed replay exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from sidekick_testbed.emulator.sim.nemesis import Swarm
from sidekick_testbed.emulator.sim.options import RunResult, SimOptions, with_swarm
from sidekick_testbed.emulator.sim.world import run_world

__all__ = ["scripted", "shrink"]


def scripted(result: RunResult) -> SimOptions:
    """The run's options with its swarm and its fault-phase steps made explicit (it replays the same)."""
    return replace(with_swarm(result), script=tuple(result.steps), steps=len(result.steps))


def _without(options: SimOptions, start: int, stop: int) -> SimOptions:
    script = options.script or ()
    kept = script[:start] + script[stop:]
    return replace(options, script=kept, steps=len(kept))


def _chunks(options: SimOptions) -> Iterator[SimOptions]:
    """Scripts with one chunk removed: halves first, then ever smaller chunks down to one step."""
    size = len(options.script or ())
    parts = 2
    while size and parts <= 2 * size:
        chunk = max(1, -(-size // parts))
        for start in range(0, size, chunk):
            yield _without(options, start, start + chunk)
        if chunk == 1:
            break
        parts *= 2


def _others(options: SimOptions) -> Iterator[SimOptions]:
    if options.accounts > 1:
        yield replace(options, accounts=options.accounts - 1)
    if options.devices > 1:
        yield replace(options, devices=options.devices - 1)
    swarm = options.swarm or Swarm()
    for kind in sorted(swarm.kinds):
        yield replace(options, swarm=swarm.without(kind))


def shrink(result: RunResult, *, max_runs: int = 120,
           on_run: Callable[[RunResult], None] | None = None) -> RunResult:
    """The smallest run found that breaks ``result``'s invariant (``result`` itself if none)."""
    if result.violation is None:
        raise ValueError("nothing to shrink: the run broke no invariant")
    invariant = result.violation.invariant
    best = result
    best_options = scripted(result)
    runs = 0
    improved = True
    while improved and runs < max_runs:
        improved = False
        for candidates in (_chunks, _others):
            for candidate in candidates(best_options):
                if runs >= max_runs:
                    break
                runs += 1
                attempt = run_world(result.seed, candidate)
                if on_run is not None:
                    on_run(attempt)
                if attempt.violation is not None and attempt.violation.invariant == invariant:
                    best, best_options = attempt, replace(scripted(attempt), script=tuple(attempt.steps))
                    improved = True
                    break
            if improved:
                break
    return best
