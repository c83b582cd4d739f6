"""A fleet run split over worker processes: shard ``k`` of ``n`` simulates every account ``a``
with ``a % n == k``, its handsets and a server of its own that sees the scenario's events.

Accounts share nothing in a fleet but the server, and the server treats each account apart, so the
shards' parts add up to the run (``engine.fleet_report``). Each shard is deterministic, and so is
the report for a seed and a number of shards. Progress reaches the parent through a queue: the
bar shows the slowest shard's simulated time and the figures summed over the shards.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Callable
from typing import Any

from emulator.fleet.engine import FleetConfig, FleetPart, run_shard

__all__ = ["ShardFailed", "run_shards"]


class ShardFailed(RuntimeError):
    """A worker process failed or died; the message names the shard and the cause."""


def _worker(config: FleetConfig, shard: tuple[int, int], out: Any) -> None:
    """One worker: run its shard, send progress and then its part (or what went wrong)."""
    index = shard[0]
    try:
        part = run_shard(config, shard, progress=lambda now, figures: out.put(("progress", index, (now, figures))))
        out.put(("part", index, part))
    except BaseException as exc:  # reported to the parent, which raises ShardFailed
        out.put(("error", index, f"{type(exc).__name__}: {exc}"))


def run_shards(config: FleetConfig, jobs: int,
               progress: Callable[[float, dict[str, Any]], None] | None = None) -> list[FleetPart]:
    """Run the fleet as ``jobs`` shards in worker processes; their parts, in shard order."""
    if not 1 <= jobs <= config.account_count:
        raise ValueError("jobs must be between 1 and the number of accounts")
    context: Any = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    out = context.Queue()
    workers = [context.Process(target=_worker, args=(config, (k, jobs), out), daemon=True) for k in range(jobs)]
    for worker in workers:
        worker.start()
    parts: dict[int, FleetPart] = {}
    latest = [0.0] * jobs
    figures: list[dict[str, Any]] = [{} for _ in range(jobs)]
    silent: set[int] = set()  # workers found dead without their part, at the last look
    try:
        while len(parts) < jobs:
            try:
                kind, index, payload = out.get(timeout=1.0)
            except queue_module.Empty:
                gone = {k for k, worker in enumerate(workers) if k not in parts and not worker.is_alive()}
                dead, silent = sorted(gone & silent), gone  # dead twice with nothing in between
                if dead:  # a worker that died without a word (killed, out of memory)
                    raise ShardFailed(f"shard {dead[0] + 1} of {jobs} ended without a result "
                                      f"(exit code {workers[dead[0]].exitcode})") from None
                continue
            if kind == "part":
                parts[index] = payload
            elif kind == "error":
                raise ShardFailed(f"shard {index + 1} of {jobs} failed: {payload}")
            elif progress is not None:
                latest[index], figures[index] = payload
                progress(min(latest), {name: sum(f.get(name, 0) for f in figures) for name in figures[index]})
    finally:
        for worker in workers:
            if worker.is_alive() and len(parts) < jobs:
                worker.terminate()
            worker.join(timeout=30)
    return [parts[k] for k in range(jobs)]
