"""The seed-driven campaign: run seeds until the budget is spent or an invariant breaks.

Seeds are numbered from ``start``: the i-th seed of shard K of N is ``start + i * N + (K - 1)``,
so shards never repeat each other's seeds. An executor (``emulator.executor``: this process,
``jobs`` local processes or a Dask cluster) runs a shard's seeds in order, a few ahead of the
results taken, and the totals count the seeds in order: the same seeds give the same summary
wherever they run. The first failing seed's trace is shrunk where it ran; the caller writes both
traces, and the runs under way then stop.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.executor import Executor, Report, open_executor
from sidekick_testbed.emulator.sim.options import RunResult, SimOptions
from sidekick_testbed.emulator.sim.shrink import shrink
from sidekick_testbed.emulator.sim.trace import to_trace, write_trace
from sidekick_testbed.emulator.sim.world import run_world

__all__ = ["Budget", "Campaign", "CampaignResult", "Failure", "RunSummary", "is_interrupt", "parse_budget", "run_campaign",
           "seeds"]


@dataclass(frozen=True)
class Budget:
    """How long a campaign runs: wall seconds or a number of runs (one of them)."""

    seconds: float | None = None
    runs: int | None = None

    def __str__(self) -> str:
        return f"{self.seconds:g}s" if self.seconds is not None else f"{self.runs}-runs"


def parse_budget(text: str) -> Budget:
    """``60s``, ``2m``, ``1h``, ``500-runs``, ``500runs`` or ``500`` (runs); ValueError otherwise."""
    value = text.strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)", value)
    if match:
        number = float(match.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
        if number <= 0:
            raise ValueError("a budget must be positive")
        return Budget(seconds=number)
    match = re.fullmatch(r"(\d+)(?:\s*-?\s*runs?)?", value)
    if match:
        runs = int(match.group(1))
        if runs <= 0:
            raise ValueError("a budget must be positive")
        return Budget(runs=runs)
    raise ValueError(f"bad budget {text!r}: expected e.g. 60s, 5m or 200-runs")


def seeds(start: int, shard: tuple[int, int] = (1, 1), job: int = 0, jobs: int = 1) -> Iterator[int]:
    """The seeds of shard ``(K, N)`` taken by worker ``job`` of ``jobs``, in order."""
    k, n = shard
    index = job
    while True:
        yield start + index * n + (k - 1)
        index += jobs


@dataclass(frozen=True)
class Campaign:
    """What to run."""

    options: SimOptions
    budget: Budget
    start: int = 1
    shard: tuple[int, int] = (1, 1)
    jobs: int = 1
    out: Path = Path("sidekick-out")
    shrink_runs: int = 120


@dataclass(frozen=True)
class RunSummary:
    """What the progress display needs of one run."""

    seed: int
    sessions: int
    sim_time: float
    faults: int
    failed: bool


@dataclass(frozen=True)
class Failure:
    """A failing seed and the files written for it."""

    seed: int
    invariant: str
    what: str
    text: str
    trace: str
    shrunk: str | None
    shrunk_steps: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


@dataclass
class CampaignResult:
    """Totals of a campaign."""

    runs: int = 0
    sessions: int = 0
    sim_time: float = 0.0
    faults: int = 0
    wall: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    interrupted: bool = False
    """Ctrl-C ended the campaign early; the totals are those of the runs that finished."""

    def add(self, summary: RunSummary) -> None:
        """Count one run."""
        self.runs += 1
        self.sessions += summary.sessions
        self.sim_time += summary.sim_time
        self.faults += summary.faults


def _summary(result: RunResult) -> RunSummary:
    return RunSummary(result.seed, int(result.stats["sessions"]), float(result.stats["sim_time"]),
                      int(result.stats["faults"]), result.violation is not None)


@dataclass(frozen=True)
class _Outcome:
    """One run as a task returns it: its summary, and for a violation the traces to write."""

    summary: RunSummary
    violation: tuple[str, str, str] | None = None  # invariant, what, text
    trace: dict[str, Any] | None = None
    shrunk: dict[str, Any] | None = None
    shrunk_steps: int | None = None


def _fuzz_one(seed: int, options: SimOptions, shrink_runs: int, report: Report) -> _Outcome:
    """One seed, wherever the executor runs it: the run, and for a violation its trace and the
    shrunk run's (the caller writes them)."""
    result = run_world(seed, options)
    if result.violation is None:
        return _Outcome(_summary(result))
    shrunk: dict[str, Any] | None = None
    steps: int | None = None
    if shrink_runs > 0:
        small = shrink(result, max_runs=shrink_runs)
        shrunk = to_trace(small, note=f"shrunk from seed {result.seed} ({result.options.steps} steps)")
        steps = len(small.steps)
    v = result.violation
    return _Outcome(_summary(result), (v.invariant, v.what, v.text), to_trace(result), shrunk, steps)


def _record_failure(outcome: _Outcome, campaign: Campaign) -> Failure:
    """Write a violation's traces into ``campaign.out``."""
    assert outcome.violation is not None and outcome.trace is not None
    seed = outcome.summary.seed
    trace_path = write_trace(campaign.out / f"seed-{seed}.trace.json", outcome.trace)
    shrunk_path = (write_trace(campaign.out / f"seed-{seed}.shrunk.json", outcome.shrunk)
                   if outcome.shrunk is not None else None)
    invariant, what, text = outcome.violation
    return Failure(seed, invariant, what, text, str(trace_path), str(shrunk_path) if shrunk_path else None,
                   outcome.shrunk_steps)


def _job_quota(budget: Budget, job: int, jobs: int) -> int | None:
    if budget.runs is None:
        return None
    return budget.runs // jobs + (1 if job < budget.runs % jobs else 0)


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, alone or inside the exception group of a Trio run."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None


def run_campaign(campaign: Campaign, progress: Callable[[RunSummary, CampaignResult], None] | None = None,
                 executor: Executor | None = None) -> CampaignResult:
    """Run the campaign on ``executor`` (default: ``campaign.jobs`` local processes, this one
    alone for one); ``progress`` is called after every run, in seed order. The totals are those of
    the seeds in order up to the budget or the first violation, whatever runs them.
    ExecutorError if a run failed or a worker died. Ctrl-C ends it early with the runs that
    finished (``interrupted``)."""
    started = time.monotonic()
    deadline = started + campaign.budget.seconds if campaign.budget.seconds is not None else None
    quota = _job_quota(campaign.budget, 0, 1)
    result = CampaignResult()

    def wanted() -> Iterator[tuple[int, SimOptions, int]]:
        for index, seed in enumerate(seeds(campaign.start, campaign.shard)):
            if (quota is not None and index >= quota) or (deadline is not None and time.monotonic() >= deadline):
                return
            yield seed, campaign.options, campaign.shrink_runs

    own = executor is None
    runner = open_executor(campaign.jobs) if executor is None else executor
    try:
        with contextlib.closing(runner.map(_fuzz_one, wanted(), label=lambda i: f"the run of seed "
                                           f"{campaign.start + i * campaign.shard[1] + campaign.shard[0] - 1}")
                                ) as outcomes:
            for outcome in outcomes:
                result.add(outcome.summary)
                if progress is not None:
                    progress(outcome.summary, result)
                if outcome.violation is not None:
                    result.failures.append(_record_failure(outcome, campaign))
                    break
    except BaseException as exc:
        if not is_interrupt(exc):
            raise
        result.interrupted = True  # the runs under way are not counted
    finally:
        if own:
            runner.close()
    result.wall = time.monotonic() - started
    return result
