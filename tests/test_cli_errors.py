"""How ``sidekick`` ends when a command is interrupted or fails inside a Trio run: one line, the
documented exit status, no traceback."""

from __future__ import annotations

import argparse
import pathlib

import pytest
import trio

import sidekick_testbed.emulator.cli.frames
from sidekick_testbed.emulator.cli import main
from sidekick_testbed.emulator.cli.common import CliError


def _fail_in_a_nursery(error: BaseException) -> None:
    """Raise ``error`` from a child task, as a command's Trio run does (it arrives as a group)."""
    async def child() -> None:
        raise error

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    trio.run(run)


def _patch_command(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def command(args: argparse.Namespace) -> int:
        _fail_in_a_nursery(error)
        return 0
    monkeypatch.setattr(sidekick_testbed.emulator.cli.frames, "run_decode", command)


def test_ctrl_c_inside_a_trio_run_is_interrupted_130(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _patch_command(monkeypatch, KeyboardInterrupt())
    assert main(["frames", "decode", "any.bin"]) == 130
    assert capsys.readouterr().err == "sidekick: interrupted\n"


def test_a_bug_inside_a_trio_run_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SIDEKICK_DEBUG", raising=False)
    _patch_command(monkeypatch, ZeroDivisionError("a bug"))
    assert main(["frames", "decode", "any.bin"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sidekick: internal error: ZeroDivisionError: a bug (set SIDEKICK_DEBUG=1")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_usage_error_inside_a_trio_run_is_still_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _patch_command(monkeypatch, CliError("no such thing", exit_code=2))
    assert main(["frames", "decode", "any.bin"]) == 2
    assert capsys.readouterr().err == "sidekick: error: no such thing\n"


def test_sidekick_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_DEBUG", "1")
    _patch_command(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ExceptionGroup):
        main(["frames", "decode", "any.bin"])


def test_a_command_module_that_does_not_exist_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SIDEKICK_DEBUG", raising=False)
    monkeypatch.setattr(sidekick_testbed.emulator.cli, "COMMAND_MODULES",
                        ("sidekick_testbed.emulator.cli.frames", "sidekick_testbed.emulator.cli.no_such_group"))
    assert main(["frames", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sidekick: error: command module sidekick_testbed.emulator.cli.no_such_group "
                          "failed to import: ModuleNotFoundError")
    assert len(err.splitlines()) == 1


def test_a_command_module_whose_import_raises_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str],
                                                          tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("SIDEKICK_DEBUG", raising=False)
    broken = tmp_path / "broken_commands.py"
    broken.write_text("import a_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sidekick_testbed.emulator.cli, "COMMAND_MODULES", ("broken_commands",))
    assert main(["--help"]) == 2
    err = capsys.readouterr().err
    assert "command module broken_commands failed to import" in err
    assert "a_dependency_that_is_not_installed" in err


def test_every_shipped_command_module_imports() -> None:
    parser = sidekick_testbed.emulator.cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(actions[0].choices)
    assert {"serve", "device", "fuzz", "replay", "certify", "simulate", "wireshark", "frames", "flash"} <= commands
