"""The seed-driven campaign: run seeds until the budget is spent or an invariant breaks.

Seeds are numbered from ``start``: the i-th seed of shard K of N is ``start + i * N + (K - 1)``,
so shards never repeat each other's seeds; ``jobs`` worker processes split a shard's sequence the
same way (worker j takes every jobs-th index). The first failing seed is written as a trace, then
shrunk, and the shrunk run written next to it; every worker then stops.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.sim.shrink import shrink
from emulator.sim.trace import to_trace, write_trace
from emulator.sim.world import RunResult, SimOptions, run_world

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


def _record_failure(result: RunResult, campaign: Campaign) -> Failure:
    assert result.violation is not None
    trace_path = write_trace(campaign.out / f"seed-{result.seed}.trace.json", to_trace(result))
    shrunk_path: Path | None = None
    steps: int | None = None
    if campaign.shrink_runs > 0:
        small = shrink(result, max_runs=campaign.shrink_runs)
        shrunk_path = write_trace(campaign.out / f"seed-{result.seed}.shrunk.json",
                                  to_trace(small, note=f"shrunk from seed {result.seed} "
                                                       f"({result.options.steps} steps)"))
        steps = len(small.steps)
    v = result.violation
    return Failure(result.seed, v.invariant, v.what, v.text, str(trace_path),
                   str(shrunk_path) if shrunk_path else None, steps)


def _job_quota(budget: Budget, job: int, jobs: int) -> int | None:
    if budget.runs is None:
        return None
    return budget.runs // jobs + (1 if job < budget.runs % jobs else 0)


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, alone or inside the exception group of a Trio run."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None


def _worker(campaign: Campaign, job: int, out: Any, stop: Any) -> None:
    """One worker process: run its seeds, report each run, record a failure, stop on request."""
    quota = _job_quota(campaign.budget, job, campaign.jobs)
    done = 0
    try:
        for seed in seeds(campaign.start, campaign.shard, job, campaign.jobs):
            if stop.is_set() or (quota is not None and done >= quota):
                break
            result = run_world(seed, campaign.options)
            done += 1
            out.put(("run", _summary(result)))
            if result.violation is not None:
                stop.set()
                out.put(("fail", _record_failure(result, campaign)))
                break
    except BaseException as exc:
        if not is_interrupt(exc):  # reported to the parent, which exits 2
            out.put(("error", f"{type(exc).__name__}: {exc}"))
        # Ctrl-C reaches every process of the group: the parent decides what it means
    finally:
        out.put(("done", job))


def run_campaign(campaign: Campaign, progress: Callable[[RunSummary, CampaignResult], None] | None = None
                 ) -> CampaignResult:
    """Run the campaign; ``progress`` is called after every run. RuntimeError if a worker failed.
    Ctrl-C ends it early with the runs that finished (``interrupted``); a second one at once."""
    started = time.monotonic()
    deadline = started + campaign.budget.seconds if campaign.budget.seconds is not None else None
    result = CampaignResult()
    if campaign.jobs == 1:
        quota = _job_quota(campaign.budget, 0, 1)
        try:
            for seed in seeds(campaign.start, campaign.shard):
                if (quota is not None and result.runs >= quota) or (
                        deadline is not None and time.monotonic() >= deadline):
                    break
                run = run_world(seed, campaign.options)
                summary = _summary(run)
                result.add(summary)
                if progress is not None:
                    progress(summary, result)
                if run.violation is not None:
                    result.failures.append(_record_failure(run, campaign))
                    break
        except BaseException as exc:
            if not is_interrupt(exc):
                raise
            result.interrupted = True  # the run under way is not counted
        result.wall = time.monotonic() - started
        return result
    context: Any = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    out = context.Queue()
    stop = context.Event()
    workers = [context.Process(target=_worker, args=(campaign, job, out, stop), daemon=True)
               for job in range(campaign.jobs)]
    for worker in workers:
        worker.start()
    running = len(workers)
    errors: list[str] = []
    finished: set[int] = set()
    silent: set[int] = set()  # workers found dead without their "done", at the last look
    try:
        while running:
            try:
                if deadline is not None and time.monotonic() >= deadline:
                    stop.set()
                try:
                    kind, payload = out.get(timeout=0.2)
                except queue_module.Empty:
                    gone = {job for job, worker in enumerate(workers) if job not in finished and not worker.is_alive()}
                    dead, silent = gone & silent, gone  # dead twice with nothing in between: no word will come
                    for job in sorted(dead):  # killed, or out of memory
                        errors.append(f"worker {job + 1} of {len(workers)} ended without a word "
                                      f"(exit code {workers[job].exitcode})")
                        finished.add(job)
                        running -= 1
                        stop.set()
                    continue
                if kind == "run":
                    result.add(payload)
                    if progress is not None:
                        progress(payload, result)
                elif kind == "fail":
                    result.failures.append(payload)
                elif kind == "error":
                    errors.append(payload)
                    stop.set()
                elif kind == "done":
                    finished.add(payload)
                    running -= 1
            except BaseException as exc:
                if not is_interrupt(exc) or result.interrupted:
                    raise  # a second Ctrl-C: leave without waiting for the workers' runs
                result.interrupted = True
                stop.set()  # the workers finish the run under way, then report and stop
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    result.wall = time.monotonic() - started
    if errors:
        raise RuntimeError(f"a fuzz worker failed: {errors[0]}")
    return result
