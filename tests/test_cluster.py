"""Fleet runs and fuzz campaigns on a real Dask cluster: a scheduler and workers started here as
separate processes on 127.0.0.1 (``dask scheduler``, ``dask worker``), as a user runs them.

The cluster gives the JSON of one process, byte for byte; a worker killed mid-run or a scheduler
that goes away ends the run with one line; no scheduler at the address is refused in time;
closing a run stops the shards running on the workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed  # .[test] installs it: missing, these tests fail rather than skip
import pytest

from sidekick_testbed.emulator import executor as executor_module
from sidekick_testbed.emulator.cli import main
from sidekick_testbed.emulator.executor import ClusterUnavailable, DaskExecutor, WorkerLost
from sidekick_testbed.emulator.fleet import engine
from sidekick_testbed.emulator.fleet.config import FleetConfig
from sidekick_testbed.emulator.fleet.engine import run_fleet
from sidekick_testbed.emulator.fleet.profiles import NetworkMix, load_workload

pytestmark = pytest.mark.xdist_group("dask")  # with --dist loadgroup: one worker, one shared cluster


class Cluster:
    """``dask scheduler`` and ``workers`` ``dask worker`` processes (one thread each, no nanny,
    so that a killed worker stays dead) sharing a scheduler file."""

    def __init__(self, folder: Path, workers: int) -> None:
        self.file = str(folder / "scheduler.json")
        log = (folder / "cluster.log").open("w")
        dask = [sys.executable, "-m", "dask"]
        self.scheduler = subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                           "--dashboard-address", "127.0.0.1:0", "--scheduler-file", self.file],
                                          stdout=log, stderr=log)
        self.workers = [subprocess.Popen([*dask, "worker", "--scheduler-file", self.file, "--nthreads", "1",
                                          "--no-nanny", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                                          "--host", "127.0.0.1"],
                                         stdout=log, stderr=log) for _ in range(workers)]
        self.probe: Any = None
        executor_module._wait_for_file(Path(self.file), 60)  # the scheduler is up (bounded, unlike Client's wait)
        if workers:
            self.probe = distributed.Client(scheduler_file=self.file, timeout=60, set_as_default=False)
            self.probe.wait_for_workers(workers, timeout=60)

    def pids(self) -> dict[str, int]:
        """Worker address -> process id."""
        return dict(self.probe.run(os.getpid))

    def close(self) -> None:
        if self.probe is not None:
            with contextlib.suppress(Exception):
                self.probe.close(timeout=2)
        for process in [*self.workers, self.scheduler]:
            process.kill()
            process.wait()


@contextlib.contextmanager
def cluster(folder: Path, workers: int = 2) -> Iterator[Cluster]:
    running = Cluster(folder, workers)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A healthy cluster for the tests that leave it so."""
    with cluster(tmp_path_factory.mktemp("dask")) as running:
        yield running


def _config(devices: int, duration: float, **changes: Any) -> FleetConfig:
    return FleetConfig(devices=devices, workload=load_workload("typical"), network=NetworkMix.parse("mixed"),
                       duration=duration, seed=3, **changes)


def test_simulate_on_the_cluster_gives_the_json_of_one_process(shared: Cluster, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    common = ["simulate", "--devices", "12", "--accounts", "6", "--duration", "4h", "--seed", "5", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "local.json")]) == 0
    assert main([*common, "--cluster", shared.file, "--json", str(tmp_path / "cluster.json")]) == 0
    assert "[the Dask cluster at " in capsys.readouterr().err
    assert main([*common, "--cluster", shared.file, "--jobs", "5", "--json", str(tmp_path / "five.json")]) == 0
    local = (tmp_path / "local.json").read_bytes()
    assert json.loads(local)["totals"]["syncs"] > 50
    assert (tmp_path / "cluster.json").read_bytes() == local
    assert (tmp_path / "five.json").read_bytes() == local


def test_progress_reaches_the_client_from_the_workers(shared: Cluster) -> None:
    seen: list[float] = []
    config = _config(8, 3 * 3600.0, accounts=4)
    with DaskExecutor(shared.file) as executor:
        report = run_fleet(config, jobs=2, executor=executor, progress=lambda now, figures: seen.append(now)).report
    assert report == run_fleet(config).report
    assert seen == sorted(seen) and seen[-1] == 3 * 3600.0 and len(seen) >= 18


@pytest.mark.parametrize("mutant", [None, "mark-clean-on-push-ack"])
def test_fuzz_on_the_cluster_gives_the_summary_and_traces_of_one_process(
        mutant: str | None, shared: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summaries = []
    for where in ([], ["--cluster", shared.file]):
        out = tmp_path / ("cluster" if where else "local")
        argv = ["fuzz", "--budget", "6-runs", "--seed", "1", "--steps", "12", "--json", "--out", str(out), *where,
                *(["--mutant", mutant] if mutant else [])]
        assert main(argv) == (1 if mutant else 0)
        summary = json.loads(capsys.readouterr().out)
        for failure in summary["failures"]:  # written by the client, where it was asked to
            assert Path(failure["trace"]).parent == out
            failure["trace"] = Path(failure["trace"]).read_bytes()
            failure["shrunk"] = Path(failure["shrunk"]).read_bytes()
        summaries.append({k: v for k, v in summary.items()
                          if k not in ("wall_seconds", "sessions_per_second", "runs_per_second", "jobs")})
    assert summaries[0] == summaries[1]
    assert summaries[0]["runs"] == (1 if mutant else 6) and len(summaries[0]["failures"]) == (1 if mutant else 0)


def test_a_worker_killed_mid_run_ends_the_run_with_one_line(tmp_path: Path) -> None:
    killed: list[str] = []
    with cluster(tmp_path) as running, DaskExecutor(running.file) as executor:
        pids = running.pids()

        def kill_a_busy_worker(now: float, figures: dict[str, Any]) -> None:
            if not killed:
                busy = sorted(address for address, keys in running.probe.processing().items() if keys)
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

        with pytest.raises(WorkerLost) as caught:
            run_fleet(_config(40, 86400.0), jobs=2, executor=executor, progress=kill_a_busy_worker)
    assert killed
    assert str(caught.value) in {f"Dask worker {killed[0]} died while running shard {k} of 2" for k in (1, 2)}


def test_a_lost_scheduler_ends_the_run_with_one_line(tmp_path: Path) -> None:
    with cluster(tmp_path) as running, DaskExecutor(running.file) as executor:
        def kill_the_scheduler(now: float, figures: dict[str, Any]) -> None:
            if running.scheduler.poll() is None:
                running.scheduler.kill()

        with pytest.raises(WorkerLost, match=r"^lost the connection to the Dask cluster at .* while shard [12] of 2 "
                                             r"was running$"):
            run_fleet(_config(40, 86400.0), jobs=2, executor=executor, progress=kill_the_scheduler)


class _Enough(Exception):
    """Raised from a progress report: the caller leaves the run, as on Ctrl-C."""


def test_leaving_a_run_stops_the_shards_on_the_workers(tmp_path: Path) -> None:
    """Shards that would run for minutes stop at their next report once the caller leaves the
    run (Ctrl-C, an error), so that the workers are free for new work at once."""
    def leave(index: int, payload: Any) -> None:
        raise _Enough

    config = _config(100, 30 * 86400.0)
    with cluster(tmp_path) as running, DaskExecutor(running.file) as executor:
        results = executor.map(engine._shard_task, ((config, (k, 2)) for k in range(2)), on_report=leave)
        with pytest.raises(_Enough):
            next(results)
        probes = running.probe.map(abs, [-1, -2], pure=False)
        # the shards alone would hold both workers for minutes
        assert [probe.result(timeout=60) for probe in probes] == [1, 2]


def _refused_port() -> tuple[socket.socket, int]:
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    return bound, bound.getsockname()[1]


def test_no_scheduler_at_the_address_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(executor_module, "CONNECT_TIMEOUT", 1.0)
    bound, port = _refused_port()
    with bound:
        for argv in (["simulate", "--devices", "4", "--duration", "1h", "--no-progress"],
                     ["fuzz", "--budget", "2-runs", "--seed", "1", "--out", str(tmp_path)]):
            assert main([*argv, "--cluster", f"tcp://127.0.0.1:{port}"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"sidekick: error: no Dask scheduler at tcp://127.0.0.1:{port} (")


def test_a_scheduler_without_workers_is_refused_in_time(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=0) as running:
        with pytest.raises(ClusterUnavailable, match=r"^no worker joined the Dask scheduler at .* within 2 s"):
            DaskExecutor(running.file, connect_timeout=2.0)


def test_a_scheduler_file_that_never_appears_is_refused_in_time(tmp_path: Path) -> None:
    with pytest.raises(ClusterUnavailable, match=r"^no Dask scheduler file at .*scheduler\.json \(waited 1 s for it\)$"):
        DaskExecutor(str(tmp_path / "scheduler.json"), connect_timeout=1.0)
