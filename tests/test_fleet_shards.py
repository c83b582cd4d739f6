"""A fleet run split into shards of accounts (``--jobs``) on local worker processes: the same report
as one process, and a failing or dying worker is a clear error. Also the scheduler rule that made the shards agree: an
event a sync task schedules while the scheduler sleeps is taken at its own time."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sidekick_testbed.emulator.executor import TaskFailed, WorkerLost
from sidekick_testbed.emulator.fleet import engine
from sidekick_testbed.emulator.fleet.config import FleetConfig
from sidekick_testbed.emulator.fleet.engine import run_fleet, run_shard
from sidekick_testbed.emulator.fleet.profiles import NetworkMix, load_workload
from sidekick_testbed.emulator.fleet.scenario import find_scenario, load_scenario


def _config(**changes: Any) -> FleetConfig:
    settings: dict[str, Any] = {"devices": 12, "accounts": 6, "workload": load_workload("typical"),
                                "network": NetworkMix.parse("mixed"), "duration": 86400.0, "seed": 11}
    settings.update(changes)
    return FleetConfig(**settings)


@pytest.mark.parametrize(("scenario", "handset"), [("bad-day", "correct"), ("2009-outage", "2009")])
def test_shards_give_the_report_of_one_process(scenario: str, handset: str) -> None:
    """Crashes, an outage, a fleet-wide reboot and a restore reach every shard; shared accounts
    (two handsets each) stay within one shard."""
    config = _config(scenario=find_scenario(scenario), handset=handset)
    whole = json.dumps(run_fleet(config).report, sort_keys=True)
    assert json.loads(whole)["totals"]["syncs"] > 300
    for jobs in (2, 4):
        assert json.dumps(run_fleet(config, jobs=jobs).report, sort_keys=True) == whole


def test_each_shard_holds_only_its_accounts() -> None:
    config = _config(duration=3600.0)
    parts = [run_shard(config, (k, 3)) for k in range(3)]
    devices = [{s.device for s in part.syncs} for part in parts]
    assert devices == [{d for d in range(12) if d % 6 % 3 == k} for k in range(3)]
    assert sum(len(p.syncs) for p in parts) == len(run_shard(config).syncs)


def test_progress_reports_the_slowest_shard() -> None:
    seen: list[tuple[float, dict[str, Any]]] = []
    run_fleet(_config(duration=3 * 3600.0), jobs=3, progress=lambda now, figures: seen.append((now, figures)))
    times = [now for now, _ in seen]
    assert times == sorted(times) and times[-1] == 3 * 3600.0
    assert {"at risk", "lost", "syncs"} <= set(seen[-1][1])


def test_a_failing_shard_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(config: FleetConfig, shard: tuple[int, int], **_: Any) -> Any:
        if shard[0] == 1:
            raise ValueError("flash geometry refused")
        return run_shard(config, shard)

    monkeypatch.setattr(engine, "run_shard", broken)  # the forked workers inherit it
    with pytest.raises(TaskFailed, match=r"^shard 2 of 3 failed: ValueError: flash geometry refused$"):
        run_fleet(_config(duration=600.0), jobs=3)


def test_a_worker_that_dies_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def dies(config: FleetConfig, shard: tuple[int, int], **_: Any) -> Any:
        os._exit(9)

    monkeypatch.setattr(engine, "run_shard", dies)
    with pytest.raises(WorkerLost, match=r"^a worker process died without a result \(killed, or out of memory\?\)"):
        run_fleet(_config(duration=600.0), jobs=2)


def test_jobs_must_fit_the_accounts() -> None:
    with pytest.raises(ValueError, match="jobs"):
        run_fleet(_config(duration=600.0), jobs=7)


def test_a_retry_is_taken_at_its_time_while_the_scheduler_sleeps(tmp_path: Path) -> None:
    """One handset, the server down for the first hour, no other events for hours: each retry a
    failed sync schedules (from the sync's task) starts 0.75-1.25 backoffs after the failure."""
    outage = tmp_path / "outage.toml"
    outage.write_text('name = "down"\n[[event]]\nat = "0s"\nkind = "outage"\nduration = "1h"\n')
    quiet = tmp_path / "quiet.toml"
    quiet.write_text('name = "quiet"\nper_day = { note = 0 }\nreboots_per_day = 0\nsync_interval = "1h"\n')
    config = FleetConfig(devices=1, workload=load_workload(str(quiet)), network=NetworkMix.parse("wifi"),
                         duration=3 * 3600.0, seed=3, scenario=load_scenario(str(outage)), sample_every=86400.0,
                         attempts=1)
    records = run_shard(config).syncs
    failed = [s for s in records if not s.ok]
    assert len(failed) >= 3 and records[-1].ok
    for number, (before, after) in enumerate(zip(records, records[1:], strict=False), start=1):
        if before.ok:
            continue
        backoff = min(config.workload.sync_interval, config.retry_base * 2 ** (number - 1))
        gap = after.at - (before.at + before.latency)
        assert 0.75 * backoff <= gap <= 1.25 * backoff
