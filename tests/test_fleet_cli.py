"""``sidekick simulate``: a small run end to end, --compare, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import sidekick_testbed.emulator.cli.common
import sidekick_testbed.emulator.cli.simulate as simulate_cli
import sidekick_testbed.emulator.fleet.engine
from sidekick_testbed.emulator.cli import main
from sidekick_testbed.emulator.fleet.config import FleetConfig, FleetRun


def test_simulate_writes_json_and_report_and_is_deterministic(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    common = ["simulate", "--devices", "4", "--duration", "1h", "--seed", "5", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "a.json"), "--report", str(tmp_path / "r")]) == 0
    out = capsys.readouterr()
    assert "no data lost" in out.out and "report:" in out.out
    assert "wall time" in out.err                               # wall time only on stderr
    assert main([*common, "--json", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["config"]["devices"] == 4 and report["totals"]["devices"] == 4
    assert (tmp_path / "r" / "report.html").exists()


def test_jobs_split_the_run_and_give_the_same_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["simulate", "--devices", "6", "--duration", "3h", "--seed", "2", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "one.json")]) == 0
    assert main([*common, "--jobs", "3", "--json", str(tmp_path / "three.json")]) == 0
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "three.json").read_bytes()


@pytest.mark.parametrize("cores, expected", [(8, 3), (2, 2), (1, 1)])
def test_jobs_auto_takes_one_per_core_and_at_most_one_per_account(
        cores: int, expected: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    used: list[int] = []
    real = sidekick_testbed.emulator.fleet.engine.run_fleet

    def spy(config: FleetConfig, **kwargs: Any) -> FleetRun:
        used.append(kwargs["jobs"])
        return real(config, **kwargs)

    monkeypatch.setattr(sidekick_testbed.emulator.cli.common, "usable_cores", lambda: cores)
    monkeypatch.setattr(sidekick_testbed.emulator.fleet.engine, "run_fleet", spy)
    common = ["simulate", "--devices", "6", "--accounts", "3", "--duration", "2h", "--seed", "2", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "one.json")]) == 0
    assert main([*common, "--jobs", "auto", "--json", str(tmp_path / "auto.json")]) == 0
    assert used == [1, expected]
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "auto.json").read_bytes()


def test_usable_cores_is_this_process_affinity() -> None:
    assert sidekick_testbed.emulator.cli.common.usable_cores() == len(os.sched_getaffinity(0)) >= 1


def test_compare_renders_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = "2009-outage"
    for handset in ("correct", "2009"):
        assert main(["simulate", "--devices", "3", "--duration", "9h", "--server-events", scenario, "--handset",
                     handset, "--no-progress", "--json", str(tmp_path / f"{handset}.json")]) == 0
    capsys.readouterr()
    assert main(["simulate", "--compare", str(tmp_path / "2009.json"), str(tmp_path / "correct.json"),
                 "--report", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "2009 handset" in page and "correct handset" in page


@pytest.mark.parametrize("args, message", [
    (["--devices", "0"], "--devices must be at least 1"),
    (["--devices", "many"], "--devices must be a whole number"),
    (["--devices", "2", "--accounts", "3"], "cannot exceed"),
    (["--duration", "soon"], "bad duration"),
    (["--duration", "0s"], "must be positive"),
    (["--workload", "nosuch"], "unknown workload"),
    (["--workload", "missing.toml"], "no such file"),
    (["--network", "carrier-pigeon"], "bad network"),
    (["--network", "gprs=-1"], "bad network shares"),
    (["--server-events", "missing.toml"], "no such file"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--handset", "2010"], "--handset must be correct or 2009"),
    (["--jobs", "0"], "--jobs must be at least 1 (or auto)"),
    (["--jobs", "many"], "--jobs must be a whole number or auto, not 'many'"),
    (["--devices", "4", "--accounts", "2", "--jobs", "3"], "--jobs (3) cannot exceed the number of accounts (2)"),
    (["--compare", "a.json", "b.json"], "--compare needs --report"),
    (["--duration", "100000d"], "100000d of the typical workload needs 4,523,029 flash blocks a handset"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sidekick: error:") and message in err[0]


@pytest.mark.parametrize("flag, name, message", [
    ("--report", "", "exists and is not a directory"),
    ("--report", "reports", "is not a directory"),
    ("--json", "run.json", "is not a directory"),
])
def test_an_output_place_that_cannot_be_written_is_refused_before_the_run(
        flag: str, name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    target = a_file / name if name else a_file
    assert main(["simulate", "--no-progress", "--devices", "2", "--duration", "10m", flag, str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "simulated" not in err[0]


def test_a_fleet_that_cannot_fit_in_memory_is_refused_before_it_starts(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(simulate_cli, "physical_memory", lambda: 2**30)
    assert main(["simulate", "--no-progress", "--devices", "40000", "--duration", "1h"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sidekick: error: --devices 40,000 needs at least 1.2 GiB of memory (about 32 KiB a handset, "
                   "shards included), more than this machine has (1.0 GiB): simulate fewer handsets")
    assert main(["simulate", "--no-progress", "--devices", "2", "--duration", "10m", "--json", "-"]) == 0


@pytest.mark.parametrize("text, message", [
    ("[[event]]\nat = '1h'\nkind = 'meteor'\n", "kind must be one of"),
    ("[[event]]\nkind = 'crash'\n", "'at' (when) is required"),
    ("[[event]]\nat = '2h'\nkind = 'restore'\n", "needs backup_at"),
    ("[[event]]\nat = '2h'\nkind = 'restore'\nbackup_at = '3h'\n", "backup_at must be before"),
    ("[[event]]\nat = '2h'\nkind = 'outage'\n", "needs a duration"),
    ("[[event]]\nat = '2h'\nkind = 'fleet-reboot'\nfraction = 'half'\n", "fraction must be a number"),
    ("[[event]]\nat = '2h'\nkind = 'crash'\nwhen = 3\n", "unknown keys"),
    ("not toml [", "not valid TOML"),
])
def test_bad_scenario_files_are_named_in_one_line(tmp_path: Path, text: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    assert main(["simulate", "--no-progress", "--server-events", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0]


@pytest.mark.parametrize("text, message", [
    ("per_day = { contact = 1 }\nedit_fraction = 0.9\ndelete_fraction = 0.5\n", "sum to at most 1"),
    ("per_day = { pager = 1 }\n", "unknown record kind"),
    ("per_day = { contact = -1 }\n", "must be a number >= 0"),
    ("name = 'x'\n", "[per_day] table"),
    ("per_day = { contact = 1 }\nsync_interval = 'never'\n", "sync_interval"),
    ("per_day = { contact = 1 }\ninitial = { note = 1.5 }\n", "whole number"),
])
def test_bad_workload_files_are_named_in_one_line(tmp_path: Path, text: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.toml"
    path.write_text(text)
    assert main(["simulate", "--no-progress", "--workload", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_network_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "n.toml"
    path.write_text("[profile.slow]\ndown_bps = 0\nup_bps = 1\nrtt = 1\n[mix]\nslow = 1\n")
    assert main(["simulate", "--no-progress", "--network", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "down_bps and up_bps must be > 0" in err[0]


def test_compare_refuses_a_file_that_is_not_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.json").write_text("{}")
    assert main(["simulate", "--compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"),
                 "--report", str(tmp_path / "r")]) == 2
    assert "not a JSON report" in capsys.readouterr().err


def test_a_run_that_loses_records_exits_1_unless_the_loss_is_expected(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["simulate", "--devices", "6", "--duration", "20h", "--seed", "1", "--no-progress",
              "--server-events", "2009-outage"]
    assert main([*common, "--handset", "2009"]) == 1
    assert "DATA LOSS" in capsys.readouterr().out
    assert main([*common, "--handset", "2009", "--expect-loss"]) == 0
    assert main([*common, "--handset", "correct"]) == 0
    assert "no data lost" in capsys.readouterr().out
    assert main([*common, "--handset", "correct", "--expect-loss"]) == 1
    assert "--expect-loss: the run lost no records" in capsys.readouterr().err


def test_progress_in_a_log_is_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--devices", "3", "--duration", "2h", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("simulated ")]
    assert lines[-1].startswith("simulated 2.0/2.0 h: at risk ") and 5 <= len(lines) <= 10
