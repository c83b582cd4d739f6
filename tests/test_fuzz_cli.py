"""``sidekick fuzz`` and ``sidekick replay`` from the command line, and the campaign runner."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sidekick_testbed.emulator.cli import main
from sidekick_testbed.emulator.sim import runner
from sidekick_testbed.emulator.sim.options import ALL_MUTANTS, RunResult, SimOptions
from sidekick_testbed.emulator.sim.runner import Budget, parse_budget, seeds


def test_list_mutants_names_device_and_server_bugs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuzz", "--list-mutants"]) == 0
    out = capsys.readouterr().out
    for name in ALL_MUTANTS:
        assert name in out
    assert "device" in out and "server" in out


@pytest.mark.parametrize("argv, message", [
    (["fuzz", "--mutant", "no-such-bug"], "unknown mutant"),
    (["fuzz", "--faults", "drop,meteor"], "unknown fault kind"),
    (["fuzz", "--server", "localhost:1"], "--account ID and --key-file"),
    (["fuzz", "--server", "localhost:port"], "bad address"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where, message", [
    (["--out", "FILE"], "exists and is not a directory"),
    (["--out", "FILE/traces"], "is not a directory"),
    (["--junit", "FILE/fuzz.xml"], "is not a directory"),
])
def test_an_output_place_that_cannot_be_written_is_refused_before_the_campaign(
        where: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    argv = [w.replace("FILE", str(a_file)) for w in where]
    if "--out" not in where:
        argv += ["--out", str(tmp_path / "out")]
    assert main(["fuzz", "--budget", "3-runs", "--seed", "1", "--mutant", "mark-clean-on-push-ack", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "seeds from" not in err  # refused before any run: no violation to lose


def test_black_box_with_no_server_there_is_a_usage_error_not_a_violation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "a.key"
    key.write_text("ab" * 32, encoding="utf-8")
    with socket.socket() as bound:  # bound, not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        code = main(["fuzz", "--server", f"127.0.0.1:{port}", "--account", "a", "--key-file", str(key),
                     "--budget", "5s", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(f"cannot reach 127.0.0.1:{port}: Connection refused (is the server running there?)")
    assert "VIOLATION" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["fuzz", "--budget", "soon"], ["fuzz", "--shard", "3/2"], ["fuzz", "--jobs", "0"],
                                  ["fuzz", "--jobs", "most"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_clean_campaign_exits_0_with_a_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "fuzz.xml"
    code = main(["fuzz", "--budget", "3-runs", "--seed", "1", "--json", "--out", str(tmp_path / "out"),
                 "--junit", str(junit), "--steps", "15"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["result"] == "clean" and summary["runs"] == 3 and summary["failures"] == []
    assert summary["sessions"] > 0 and summary["simulated_seconds"] > 0
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "0" and suite.get("tests") == "1"
    assert not (tmp_path / "out").exists()


def test_ctrl_c_ends_the_campaign_with_the_runs_that_finished(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    real_run_world = runner.run_world
    calls = itertools.count()

    def interrupted_third_run(seed: int, options: SimOptions) -> RunResult:
        if next(calls) == 2:  # Ctrl-C inside a Trio run arrives as an exception group
            raise BaseExceptionGroup("from a nursery", [KeyboardInterrupt()])
        return real_run_world(seed, options)

    monkeypatch.setattr(runner, "run_world", interrupted_third_run)
    code = main(["fuzz", "--budget", "10-runs", "--seed", "1", "--steps", "10", "--json", "--out", str(tmp_path)])
    assert code == 130
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["result"] == "interrupted" and summary["runs"] == 2 and summary["failures"] == []
    assert "sidekick fuzz: interrupted after 2 run(s)" in captured.err and "no violation so far" in captured.err


def test_a_worker_that_dies_ends_the_campaign_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    real_run_world = runner.run_world

    def dying_run_world(seed: int, options: SimOptions) -> RunResult:
        if seed == 3:
            os._exit(9)  # gone without a word, as when the kernel kills it for memory
        return real_run_world(seed, options)

    monkeypatch.setattr(runner, "run_world", dying_run_world)  # the forked workers inherit it
    code = main(["fuzz", "--budget", "4-runs", "--jobs", "2", "--seed", "1", "--steps", "10",
                 "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sidekick: error: a worker process died without a result (killed, or out of memory?)")
    assert not any("Traceback" in line for line in err)


def test_a_run_that_raises_names_its_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def broken(seed: int, options: SimOptions) -> RunResult:
        raise ValueError(f"world {seed} refused")

    monkeypatch.setattr(runner, "run_world", broken)
    assert main(["fuzz", "--budget", "4-runs", "--jobs", "2", "--seed", "7", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "sidekick: error: the run of seed 7 failed: ValueError: world 7 refused")


def _without_wall_time(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("wall_seconds", "sessions_per_second", "runs_per_second",
                                                          "jobs")}


@pytest.mark.parametrize("mutant", [None, "mark-clean-on-push-ack"])
def test_jobs_give_the_summary_and_traces_of_one_process(mutant: str | None, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Seeds are counted in order up to the budget or the first violation, whatever runs them."""
    summaries = []
    for jobs in ("1", "2"):
        out = tmp_path / jobs
        argv = ["fuzz", "--budget", "5-runs", "--seed", "1", "--steps", "12", "--jobs", jobs, "--json",
                "--out", str(out), *(["--mutant", mutant] if mutant else [])]
        assert main(argv) == (1 if mutant else 0)
        summary = json.loads(capsys.readouterr().out)
        assert summary["jobs"] == int(jobs)
        for failure in summary["failures"]:
            failure["trace"] = Path(failure["trace"]).read_bytes()
            failure["shrunk"] = Path(failure["shrunk"]).read_bytes()
        summaries.append(_without_wall_time(summary))
    assert summaries[0] == summaries[1]
    assert len(summaries[0]["failures"]) == (1 if mutant else 0)


@pytest.mark.parametrize("error, interrupt", [
    (KeyboardInterrupt(), True),
    (BaseExceptionGroup("nursery", [KeyboardInterrupt()]), True),
    (BaseExceptionGroup("outer", [ExceptionGroup("inner", [ValueError()]), KeyboardInterrupt()]), True),
    (ExceptionGroup("nursery", [ValueError()]), False),
    (ValueError(), False),
])
def test_is_interrupt_finds_ctrl_c_inside_groups(error: BaseException, interrupt: bool) -> None:
    assert runner.is_interrupt(error) is interrupt


def test_mutant_campaign_exits_1_and_its_trace_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    junit = tmp_path / "fuzz.xml"
    code = main(["fuzz", "--budget", "5-runs", "--seed", "1", "--mutant", "mark-clean-on-push-ack",
                 "--out", str(out), "--junit", str(junit), "--json"])
    assert code == 1
    summary = json.loads(capsys.readouterr().out)
    failure = summary["failures"][0]
    assert failure["invariant"] == "discard-before-durable"
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"seed-{failure['seed']}.shrunk.json", f"seed-{failure['seed']}.trace.json"]
    assert ET.parse(junit).getroot().get("failures") == "1"
    for name in files:
        assert main(["replay", str(out / name)]) == 1
        story = capsys.readouterr().out
        assert "INVARIANT BROKEN" in story and "replayed exactly" in story and "violation reproduced" in story
        assert re.search(r"^  generation: 0x[0-9a-f]+$", story, re.MULTILINE)  # in hex, as in the story
    assert main(["replay", "--json", str(out / files[0])]) == 1
    assert json.loads(capsys.readouterr().out)["exact"] is True


def test_replay_of_a_file_that_is_not_a_trace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["replay", str(bad)]) == 2
    assert main(["replay", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "not a sidekick-fuzz-trace" in err and "cannot read" in err and "Traceback" not in err


def test_two_jobs_run_disjoint_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuzz", "--budget", "2-runs", "--seed", "4", "--jobs", "2", "--json", "--steps", "10",
                 "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 2


def test_jobs_auto_takes_one_job_per_usable_core(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import sidekick_testbed.emulator.cli.common

    monkeypatch.setattr(sidekick_testbed.emulator.cli.common, "usable_cores", lambda: 2)
    assert main(["fuzz", "--budget", "2-runs", "--seed", "4", "--jobs", "auto", "--json", "--steps", "10",
                 "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["jobs"] == 2 and summary["runs"] == 2


def test_budgets_parse() -> None:
    assert parse_budget("60s") == Budget(seconds=60)
    assert parse_budget("2m") == Budget(seconds=120)
    assert parse_budget("500-runs") == Budget(runs=500)
    assert parse_budget("7") == Budget(runs=7)
    for bad in ("", "0s", "-3", "fast", "0-runs"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_shards_and_jobs_split_the_seed_space_without_overlap() -> None:
    taken: list[int] = []
    for k in (1, 2, 3):
        for job in (0, 1):
            taken += list(itertools.islice(seeds(100, (k, 3), job, 2), 10))
    assert len(taken) == len(set(taken)) == 60
    assert sorted(taken) == list(range(100, 160))


def test_a_campaign_keeps_the_handsets_log_lines_to_itself(tmp_path: Path) -> None:
    """The simulated handsets' warnings (a detected regression, a recovery sync) belong to the runs'
    stories, not to the user's terminal: a campaign's standard error is its progress and its verdict."""
    done = subprocess.run([sys.executable, "-m", "sidekick_testbed.emulator", "fuzz", "--budget", "40-runs",
                           "--seed", "1", "--json"], capture_output=True, text=True, timeout=300, check=False,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runs"] == 40
    assert "REGRESSION" not in done.stderr and "recovery sync" not in done.stderr, done.stderr[-2000:]
