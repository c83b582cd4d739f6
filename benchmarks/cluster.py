"""Helpers of the scaling benchmarks: a Dask cluster on 127.0.0.1 (``dask scheduler`` and N
``dask worker`` processes of one thread each, as a user starts them), the CPU time of processes,
and how busy the machine was meanwhile (other processes' CPU time, from /proc/stat)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class LocalCluster:
    """A running cluster: its scheduler file and its workers' process ids."""

    scheduler_file: str
    worker_pids: list[int]


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[LocalCluster]:
    """Start a scheduler and ``workers`` workers; stop them on leaving."""
    from distributed import Client

    with tempfile.TemporaryDirectory(prefix="sidekick-bench-") as folder:
        file = str(Path(folder) / "scheduler.json")
        dask = [sys.executable, "-m", "dask"]
        quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        processes = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                       "--dashboard-address", "127.0.0.1:0", "--scheduler-file", file], **quiet)]
        processes += [subprocess.Popen([*dask, "worker", "--scheduler-file", file, "--nthreads", "1", "--no-nanny",
                                        "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1"],
                                       **quiet) for _ in range(workers)]
        try:
            with Client(scheduler_file=file, timeout=60, set_as_default=False) as client:
                client.wait_for_workers(workers, timeout=60)
                client.run(exec, "import emulator.fleet.engine, emulator.sim.runner")  # not timed: imports
            yield LocalCluster(file, [p.pid for p in processes[1:]])
        finally:
            for process in processes:
                process.kill()
                process.wait()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of running processes (and their waited-for children)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, every core added."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK, idle / _TICK


class Busy:
    """How busy the machine was during a measurement, beside what was measured: CPU seconds
    spent by every process, and by the ones the benchmark ran (the rest is other load)."""

    def __enter__(self) -> Busy:
        self.busy0, self.idle0 = machine_cpu_seconds()
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        busy, idle = machine_cpu_seconds()
        self.busy = busy - self.busy0
        self.idle = idle - self.idle0
        self.load1 = os.getloadavg()[0]

    def figures(self, ours: float) -> dict[str, float]:
        """``ours``: CPU seconds of the benchmark's own processes in the interval."""
        return {"machine_cpu_s": round(self.busy, 1), "machine_idle_s": round(self.idle, 1),
                "other_load_cpu_s": round(max(0.0, self.busy - ours), 1), "load_average_1m": round(self.load1, 2)}
