"""Built-in scenarios by name from any directory, a scenario file by path, the list; an optional
dependency that is missing is one line saying what to install."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sidekick_testbed.emulator.cli import main
from sidekick_testbed.emulator.cli.common import CliError, require_extra
from sidekick_testbed.emulator.fleet.profiles import ProfileError
from sidekick_testbed.emulator.fleet.scenario import builtin_scenarios, find_scenario, load_scenario

BUILTIN = ("2009-outage", "bad-day", "silent-rollback")


def test_builtin_scenarios_are_named_and_ship_with_the_package() -> None:
    assert tuple(builtin_scenarios()) == BUILTIN
    for name, source in builtin_scenarios().items():
        assert Path(str(source)).parent.name == "scenarios" and "emulator" in Path(str(source)).parts
        assert find_scenario(name) == load_scenario(source) and find_scenario(name).events


def test_a_file_path_still_works_and_wins_only_when_no_builtin_has_the_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "mine.toml"
    own.write_text('name = "mine"\n[[event]]\nat = "1h"\nkind = "crash"\n')
    assert find_scenario(str(own)).name == "mine"
    monkeypatch.chdir(tmp_path)
    assert find_scenario("mine.toml").events[0].kind == "crash"
    (tmp_path / "bad-day").write_text("not toml [")
    assert find_scenario("bad-day") == load_scenario(builtin_scenarios()["bad-day"])  # not the file of that name
    with pytest.raises(ProfileError, match="no such file, and no built-in scenario of that name .*2009-outage"):
        find_scenario("2010-outage")


def test_simulate_lists_and_runs_builtins_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--list-scenarios"]) == 0
    listing = capsys.readouterr().out
    assert [line.split()[0] for line in listing.splitlines() if not line.startswith(" ")] == list(BUILTIN)
    assert "18h: restore from the backup of 1h" in listing
    assert main(["simulate", "--devices", "4", "--duration", "20h", "--server-events", "2009-outage",
                 "--no-progress", "--json", "out.json"]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["config"]["server events"] == "2009-outage" and report["server_events"] and report["totals"]["syncs"] > 0
    capsys.readouterr()
    assert main(["simulate", "--server-events", "nowhere.toml", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere.toml: no such file" in err


def test_a_missing_optional_dependency_is_one_line_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError, match=r"--report needs no_such_module, which is not installed: "
                                       r"pip install 'sidekick-testbed\[report\]'"):
        require_extra("no_such_module", "report", "--report")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["simulate", "--devices", "2", "--duration", "1h", "--no-progress",
                 "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == "sidekick: error: --report needs matplotlib, which is not installed: " \
                  "pip install 'sidekick-testbed[report]'\n"
    assert not (tmp_path / "r").exists()
