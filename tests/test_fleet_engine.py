"""The fleet engine: determinism, a tiny fleet against hand-computed figures, and the 2009 scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidekick_testbed.emulator.fleet.config import FleetConfig
from sidekick_testbed.emulator.fleet.engine import run_fleet
from sidekick_testbed.emulator.fleet.profiles import NetworkMix, load_workload
from sidekick_testbed.emulator.fleet.scenario import find_scenario, load_scenario

LAB_NETWORK = """
[profile.lab]
down_bps = 80000
up_bps = 80000
rtt = 0.5
[mix]
lab = 1
"""

FIXED_WORKLOAD = """
name = "fixed"
per_day = { contact = 0 }
initial = { contact = 3, note = 2 }
reboots_per_day = 0
sync_interval = "1h"
"""


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _run(**changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"devices": 6, "workload": load_workload("typical"),
                                "network": NetworkMix.parse("mixed"), "duration": 7200.0, "seed": 7}
    settings.update(changes)
    return run_fleet(FleetConfig(**settings)).report


def test_same_seed_same_json_and_another_seed_another_run() -> None:
    scenario = find_scenario("bad-day")
    first = json.dumps(_run(scenario=scenario, duration=4 * 3600.0), sort_keys=True)
    again = json.dumps(_run(scenario=scenario, duration=4 * 3600.0), sort_keys=True)
    assert first == again
    other = json.dumps(_run(scenario=scenario, duration=4 * 3600.0, seed=8), sort_keys=True)
    assert other != first


def test_tiny_fleet_matches_hand_computed_figures(tmp_path: Path) -> None:
    """Two handsets, five unsynced records each at t=0, no user activity, a loss-free 80 kbit/s
    link with 0.5 s round trips, periodic syncs every hour for 3 hours. Handset 0 first syncs at
    (0 + 1/2) / 2 of the interval = 15 min, handset 1 at 45 min; then every hour: 3 syncs each."""
    report = _run(devices=2, duration=3 * 3600.0, workload=load_workload(_write(tmp_path, "w.toml", FIXED_WORKLOAD)),
                  network=NetworkMix.parse(_write(tmp_path, "n.toml", LAB_NETWORK)))
    totals = report["totals"]
    assert (totals["syncs"], totals["syncs_ok"], totals["syncs_failed"], totals["retries"]) == (6, 6, 0, 0)
    assert (totals["user_versions"], totals["user_changes"], totals["conflicts"]) == (10, 0, 0)
    assert totals["data_loss_records"] == 0 and totals["records_at_risk_end"] == 0
    timeline = {point["t"]: point for point in report["timeline"]}
    assert len(timeline) == 3 * 6 + 1                                   # every 10 minutes, 0..3h
    # at risk: 10 until 15 min, 5 until 45 min, then none; the oldest is as old as the run
    assert [timeline[t]["at_risk"] for t in (0, 600, 1200, 2400, 3000, 3600)] == [10, 10, 5, 5, 0, 0]
    assert [timeline[t]["oldest_at_risk_s"] for t in (0, 600, 1200, 2400, 3000)] == [0, 600, 1200, 2400, 0]
    assert totals["records_at_risk_max"] == 10 and totals["oldest_at_risk_max_s"] == 2400
    assert totals["devices_out_of_date_max"] == 0
    # frames: a sync with nothing to push or pull is HELLO CHALLENGE AUTH HELLO_OK PULL PULL_END
    # PULL_ACK BYE (8: the anchor is already confirmed, so no PING/PONG); the first one adds PUSH
    # PUSH_ACK COMMIT DURABLE, one RECORDS, and PING PONG to confirm its new anchor (15)
    assert (totals["frames_per_sync_p50"], totals["frames_per_sync_p95"]) == (8, 15)
    lab = report["sync_by_network"]["lab"]
    # an idle sync is 3 round trips (handshake 2, pull 1) plus its bytes on the air
    assert 3 * 0.5 <= lab["p50"] <= 3 * 0.5 + totals["bytes_on_air"] * 8 / 80_000 / 2
    # the first one adds 3 round trips (push, commit, ping)
    assert 6 * 0.5 <= lab["p99"] <= 6 * 0.5 + totals["bytes_on_air"] * 8 / 80_000 / 2
    assert totals["bytes_per_device_per_day"] == pytest.approx(totals["bytes_on_air"] / 2 / (3 / 24))


@pytest.fixture(scope="module")
def outage_runs() -> dict[str, dict[str, Any]]:
    scenario = find_scenario("2009-outage")
    return {handset: _run(devices=9, duration=86400.0, scenario=scenario, handset=handset)
            for handset in ("correct", "2009")}


def test_2009_outage_with_the_2009_handset_loses_users_data(outage_runs: dict[str, dict[str, Any]]) -> None:
    report = outage_runs["2009"]
    totals = report["totals"]
    assert totals["data_loss_records"] > 0 and totals["data_loss_users"] > 0
    assert totals["data_loss_records"] == len(report["losses"])
    assert report["timeline"][-1]["lost"] > 0
    # what was in the backup (taken at 1h) came back with the restore: every lost version is newer
    assert min(loss["created"] for loss in report["losses"]) >= 3600
    assert all(loss["t"] >= loss["created"] for loss in report["losses"])
    assert all(point["lost"] == 0 for point in report["timeline"] if point["t"] < 3600)


def test_2009_outage_with_the_correct_handset_loses_nothing(outage_runs: dict[str, dict[str, Any]]) -> None:
    report = outage_runs["correct"]
    totals = report["totals"]
    assert totals["data_loss_records"] == 0 and report["losses"] == []
    assert totals["regressions_detected"] >= 1           # the restore was seen and recovered from
    assert totals["reboots"] >= 1                        # a third of the fleet lost power at 12h
    # the restore put records back at risk (the server lost them) until the handsets re-pushed them
    at_restore = [p["at_risk"] for p in report["timeline"] if 18 * 3600 <= p["t"] <= 18 * 3600 + 600]
    before = [p["at_risk"] for p in report["timeline"] if 2 * 3600 <= p["t"] < 3 * 3600]
    assert max(at_restore) > max(before)
    assert not any(p["server_up"] for p in report["timeline"] if 8 * 3600 < p["t"] < 18 * 3600)


def test_silent_rollback_is_caught_by_watermarks_and_repaired(tmp_path: Path) -> None:
    """The faulty server keeps its generation, but the durable watermarks it reports go back: the
    correct handsets see that, push again, and nothing is lost."""
    scenario = load_scenario(_write(tmp_path, "s.toml", """
[[event]]
at = "90m"
kind = "silent-rollback"
backup_at = "30m"
"""))
    report = _run(devices=6, duration=2 * 3600.0, scenario=scenario, workload=load_workload("heavy"))
    totals = report["totals"]
    assert totals["data_loss_records"] == 0
    assert totals["regressions_detected"] >= 1
    at_risk = {point["t"]: point["at_risk"] for point in report["timeline"]}
    assert at_risk[5400] > max(at_risk[t] for t in range(0, 5400, 600))   # the rollback's spike
    assert totals["records_at_risk_end"] == 0


def test_losses_at_a_reboot_are_judged_by_what_the_flash_holds_whatever_the_handset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A handset that drops its data when it boots is caught at that boot, with no mutant label:
    the loss accounting reads every handset's chip the same way (here the correct handset's boot
    is made to start from an empty store, as the 2009 firmware did)."""
    from sidekick_testbed.emulator.handset import device as handset_module  # noqa: PLC0415

    real_boot = handset_module.Handset._boot

    def forgetful_boot(self: handset_module.Handset) -> None:
        real_boot(self)
        meta = self.store.meta
        self._store = handset_module._format(self.flash, device_id=meta.device_id, account=meta.account,
                                             key=meta.key, mutants=self.mutants)

    monkeypatch.setattr(handset_module.Handset, "_boot", forgetful_boot)
    scenario = find_scenario("2009-outage")
    report = _run(devices=9, duration=20 * 3600.0, scenario=scenario, handset="correct")
    losses = report["losses"]
    assert losses, "the forgetful boots lost nothing?"
    # the server is down from 8h to 18h, handsets reboot meanwhile (a third of the fleet at 12h):
    # the losses are counted at those boots, before the restore at 18h (not only after it, or at the end)
    assert 8 * 3600 <= min(loss["t"] for loss in losses) < 18 * 3600
