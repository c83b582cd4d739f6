"""Fuzzer throughput and time to first detection; prints JSON.

Figures: sync sessions per second on one core on the correct system, simulated seconds per wall
second, and for every mutant the wall time to first detection from several start seeds (median,
max); the cost of the oracle's flash reader per check (a check of a chip that changed decodes it,
one of a chip that did not takes the kept view); plus a cProfile summary of where a clean run
spends its time. Same-run baseline: the same worlds with every fault kind off (sessions/s without
the fault machinery's extra work). Instructions per session (callgrind) are the figure to compare
versions by on a shared machine: ``valgrind --tool=callgrind python benchmarks/fuzz.py --only
throughput --runs 12`` (less the same with ``--runs 0``), divided by the sessions it prints.

    python benchmarks/fuzz.py [--runs 30] [--starts 3] [--max-runs 150] [--mutants a,b] [--only PART]
    python benchmarks/fuzz.py --scaling [--runs 60]

``--scaling``: the campaign of ``--runs`` seeds from seed 1 in this process (the baseline), on two
local worker processes (``--jobs 2``), and on a Dask cluster started here on 127.0.0.1 with one and
two workers: wall time, CPU time, speed-up and efficiency of two workers against one (goal: at
least 1.8 times), whether every summary is the same, and how busy the machine was meanwhile.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.sim.options import ALL_MUTANTS, SimOptions
from sidekick_testbed.emulator.sim.signatures import MUTANT_SIGNATURES
from sidekick_testbed.emulator.sim.world import run_world


def throughput(runs: int, options: SimOptions, start: int = 1000) -> dict[str, Any]:
    """Sessions/s, runs/s and simulated s per wall s over ``runs`` seeds (one process, one core)."""
    sessions = 0
    sim = 0.0
    violations = 0
    kinds: dict[str, int] = {}
    began = time.process_time()
    for seed in range(start, start + runs):
        result = run_world(seed, options)
        sessions += result.stats["sessions"]
        sim += result.stats["sim_time"]
        violations += result.violation is not None
        if result.violation is not None:
            name = f"{result.violation.invariant}/{result.violation.what}"
            kinds[name] = kinds.get(name, 0) + 1
    cpu = max(time.process_time() - began, 1e-9)
    return {"runs": runs, "sessions": sessions, "cpu_seconds": round(cpu, 2),
            "sessions_per_cpu_second": round(sessions / cpu, 1), "runs_per_cpu_second": round(runs / cpu, 2),
            "simulated_seconds_per_cpu_second": round(sim / cpu, 1), "violations": violations, "violations_by_kind": kinds}


def detection(mutant: str, starts: list[int], max_runs: int) -> dict[str, Any]:
    """CPU seconds until the first violation showing the mutant (its signature), from each start
    seed; runs that break an invariant for another reason are counted in ``other_violations``."""
    times: list[float] = []
    found: list[dict[str, Any]] = []
    other = 0
    for start in starts:
        began = time.process_time()
        hit = None
        for seed in range(start, start + max_runs):
            result = run_world(seed, SimOptions(mutant=mutant))
            if result.violation is not None and result.violation.what not in MUTANT_SIGNATURES[mutant]:
                other += 1
            elif result.violation is not None:
                hit = {"seed": seed, "runs": seed - start + 1, "invariant": result.violation.invariant,
                       "what": result.violation.what}
                break
        elapsed = time.process_time() - began
        if hit is not None:
            times.append(elapsed)
            found.append(hit)
    return {
        "found": f"{len(times)}/{len(starts)}",
        "median_seconds": round(statistics.median(times), 2) if times else None,
        "max_seconds": round(max(times), 2) if times else None,
        "first_hits": found,
        "other_violations": other,
    }


def reader_cost(runs: int, start: int = 3000) -> dict[str, Any]:
    """CPU cost of the oracle's flash reader in whole runs: per check, per decode, share of a run."""
    from sidekick_testbed.emulator.sim import flash_reader  # noqa: PLC0415

    decode, read = flash_reader.FlashReader._decode, flash_reader.FlashReader.read
    spent = {"decode": 0.0, "read": 0.0}
    counts = {"decode": 0, "read": 0}

    def timed(name: str, inner: Any) -> Any:
        def wrapper(self: Any, flash: Any) -> Any:
            began = time.process_time()
            try:
                return inner(self, flash)
            finally:
                spent[name] += time.process_time() - began
                counts[name] += 1
        return wrapper

    timed_decode, timed_read = timed("decode", decode), timed("read", read)
    flash_reader.FlashReader._decode = timed_decode  # type: ignore[method-assign]
    flash_reader.FlashReader.read = timed_read  # type: ignore[method-assign]
    try:
        began = time.process_time()
        for seed in range(start, start + runs):
            run_world(seed)
        total = time.process_time() - began
    finally:
        flash_reader.FlashReader._decode = decode  # type: ignore[method-assign]
        flash_reader.FlashReader.read = read  # type: ignore[method-assign]
    return {"runs": runs, "checks": counts["read"], "decodes": counts["decode"],
            "microseconds_per_check": round(1e6 * spent["read"] / max(counts["read"], 1), 1),
            "microseconds_per_decode": round(1e6 * spent["decode"] / max(counts["decode"], 1), 1),
            "share_of_run_cpu": round(spent["read"] / max(total, 1e-9), 3)}


_ROOT = str(Path(__file__).resolve().parent.parent) + "/"
"""The repository's root: file names in the profile are shown relative to it."""


def profile_summary(runs: int, top: int = 15) -> list[dict[str, Any]]:
    """The functions where clean runs spend most time (cProfile, by own time)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for seed in range(2000, 2000 + runs):
        run_world(seed)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{filename.split('site-packages/')[-1].split(_ROOT)[-1]}:{line}({name})",
                     "calls": calls, "own_seconds": round(tottime, 3), "cumulative_seconds": round(cumtime, 3)})
    rows.sort(key=lambda row: row["own_seconds"], reverse=True)
    return rows[:top]


def scaling(runs: int) -> dict[str, Any]:
    """One campaign of ``runs`` seeds on each executor (see the module docstring)."""
    import resource

    from cluster import Busy, cpu_seconds, local_cluster

    from sidekick_testbed.emulator.executor import DaskExecutor, Executor, InlineExecutor, ProcessExecutor
    from sidekick_testbed.emulator.sim.runner import Budget, Campaign, run_campaign

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    campaign = Campaign(SimOptions(), Budget(runs=runs), start=1, out=Path("/nonexistent/no-violation-expected"))
    rows: list[dict[str, Any]] = []
    summaries = set()

    def measure(name: str, open_executor: Callable[[], Executor], workers: int, pids: list[int] | None) -> None:
        """CPU: the cluster's workers (``pids``), or this process and its children once they exited."""
        cpu0 = cpu_seconds(pids) if pids is not None else time.process_time() + children_cpu()
        with Busy() as busy:
            with open_executor() as executor:
                result = run_campaign(campaign, executor=executor)
                if pids is not None:
                    cpu = cpu_seconds(pids) - cpu0
        if pids is None:
            cpu = time.process_time() + children_cpu() - cpu0
        summaries.add((result.runs, result.sessions, round(result.sim_time, 6), result.faults, len(result.failures)))
        rows.append({"executor": name, "workers": workers, "wall_s": round(result.wall, 2), "cpu_s": round(cpu, 2),
                     "runs": result.runs, "sessions": result.sessions, "machine": busy.figures(cpu)})

    measure("this process", InlineExecutor, 1, None)
    measure("local processes", lambda: ProcessExecutor(2), 2, None)
    for workers in (1, 2):
        with local_cluster(workers) as cluster:
            measure("dask", lambda: DaskExecutor(cluster.scheduler_file), workers, cluster.worker_pids)
    one, two = rows[2]["wall_s"], rows[3]["wall_s"]
    return {
        "campaign": {"runs": runs, "seed_start": 1, "options": "default"},
        "rows": rows,
        "dask_speedup_2_workers": round(one / two, 2),
        "dask_efficiency_2_workers": round(one / two / 2, 2),
        "local_speedup_2_processes": round(rows[0]["wall_s"] / rows[1]["wall_s"], 2),
        "same_summary": len(summaries) == 1,
        "goal": {"speedup_at_least": 1.8, "met": one / two >= 1.8},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="seeds for the throughput figures")
    parser.add_argument("--starts", type=int, default=3, help="start seeds per mutant")
    parser.add_argument("--max-runs", type=int, default=150, help="runs per start before giving up")
    parser.add_argument("--mutants", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--scaling", action="store_true", help="wall time and efficiency with 1 and 2 workers")
    parser.add_argument("--only", choices=("throughput", "reader", "detection", "profile"),
                        help="print only one part")
    args = parser.parse_args()
    if args.scaling:
        print(json.dumps(scaling(args.runs if args.runs != 30 else 60), indent=2))
        return
    mutants = [m for m in args.mutants.split(",") if m] or list(ALL_MUTANTS)
    starts = [1 + 1000 * i for i in range(args.starts)]
    parts: dict[str, Any] = {
        "throughput": lambda: {"correct_system": throughput(args.runs, SimOptions()),
                               "baseline_no_faults": throughput(args.runs, SimOptions(faults=frozenset()))},
        "reader": lambda: {"oracle_reader": reader_cost(max(1, args.runs // 3))},
        "detection": lambda: {"detection": {m: detection(m, starts, args.max_runs) for m in mutants}},
        "profile": lambda: {"profile_top": profile_summary(args.profile_runs)},
    }
    report: dict[str, Any] = {}
    for name, part in parts.items():
        if args.only is None or args.only == name:
            report.update(part())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
