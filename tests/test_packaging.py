"""The wheel: what it installs (no top-level ``fixtures``), beside the PyPI ``fixtures`` package in a
fresh virtual environment, and the README's tour run from there, in a directory outside the clone.

The wheel is built once per session from a copy of the working tree (the tree stays clean); pip
takes the dependencies from its cache. The tour's commands are read from README.md; the only
changes are the server's ports (free ones instead of 7400-7402) and a wait for the server to listen.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.server_process import serve_process

pytestmark = pytest.mark.xdist_group("wheel")  # one worker builds the wheel and its venv, once

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                 ".pytest_cache", ".mypy_cache", ".ruff_cache", "sidekick-out", "out")


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{shlex.join(command)}: {done.stderr[-2000:]}"
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built by pip from a copy of the working tree."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work / "out"), str(source)])
    (built,) = (work / "out").glob("sidekick_testbed-*.whl")
    return built


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the PyPI ``fixtures`` package, then the wheel (with the
    ``report`` extra the tour's last command needs)."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = str(env_dir / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
    run([*pip, "fixtures"])
    run([*pip, f"sidekick-testbed[report] @ {wheel.as_uri()}"])
    return env_dir


def test_the_wheel_ships_packages_and_their_data_not_fixtures(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("sidekick_testbed-")}
    assert tops == {"sidekick_testbed"}  # one import name, the distribution's: nothing shadows another's
    assert not [n for n in names if n.startswith("sidekick_testbed/__init__")]  # a namespace package
    assert {"sidekick_testbed/emulator/fleet/scenarios/2009-outage.toml",
            "sidekick_testbed/emulator/fleet/scenarios/bad-day.toml",
            "sidekick_testbed/emulator/fleet/scenarios/silent-rollback.toml",
            "sidekick_testbed/emulator/wireshark/sidekick.lua"} <= set(names)
    folders = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
               for top in ("protocol", "emulator", "server_stub") for init in (ROOT / top).rglob("__init__.py")}
    shipped = {name.rsplit("/", 1)[0].replace("/", ".") for name in names if name.endswith("/__init__.py")}
    assert shipped == {f"sidekick_testbed.{folder}" for folder in folders}  # pyproject's list is complete
    assert not [n for n in names if n.startswith(("fixtures/", "tests/", "benchmarks/"))]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if re.search(r"matplotlib|hypothesis", r)], core


def test_wheel_installs_beside_pypi_fixtures_and_both_import(venv: Path, tmp_path: Path) -> None:
    probe = """
import importlib.metadata as md, fixtures
import importlib.util, sidekick_testbed.protocol, sidekick_testbed.emulator, sidekick_testbed.server_stub
assert not [n for n in ('protocol', 'emulator', 'server_stub') if importlib.util.find_spec(n)]
from sidekick_testbed.emulator.fleet.scenario import find_scenario
assert hasattr(fixtures, "Fixture") and hasattr(fixtures, "MonkeyPatch"), fixtures.__file__
assert md.distribution("fixtures").locate_file("fixtures/__init__.py") == __import__("pathlib").Path(fixtures.__file__)
assert find_scenario("2009-outage").events
print(fixtures.__file__)
"""
    done = run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=_clean_env(tmp_path))
    assert str(venv) in done.stdout
    check = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "check"],
                           capture_output=True, text=True, timeout=300, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return env


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def tour_commands() -> list[tuple[str, int]]:
    """The README tour's commands (continuations joined) with the exit status each comment
    announces (``exit N``; 0 if none)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## A tour in five minutes", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands: list[tuple[str, int]] = []
    pending = ""
    for line in block.splitlines():
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1]
            continue
        pending = ""
        command, _, comment = line.partition("  # ")
        if command.strip():
            status = re.search(r"exit (\d)", comment)
            commands.append((command.strip(), int(status.group(1)) if status else 0))
    return commands


def test_the_readme_tour_runs_from_the_wheel_outside_the_clone(venv: Path, tmp_path: Path) -> None:
    commands = tour_commands()
    assert any("--server-events 2009-outage" in c for c, _ in commands)
    assert not [c for c, _ in commands if "fixtures/" in c]
    home = tmp_path / "home"
    here = tmp_path / "elsewhere"
    home.mkdir()
    here.mkdir()
    env = _clean_env(home)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    tcp, http, admin = _free_ports(3)
    with contextlib.ExitStack() as stack:
        for command, status in commands:
            command = command.replace("127.0.0.1:7400", f"127.0.0.1:{tcp}").replace("127.0.0.1:7401", f"127.0.0.1:{http}")
            if command.startswith("sidekick serve") and command.endswith("&"):
                stack.enter_context(serve_process(
                    [*shlex.split(command[:-1]), "--tcp", f"127.0.0.1:{tcp}", "--http", f"127.0.0.1:{http}",
                     "--admin", f"127.0.0.1:{admin}"], cwd=here, env=env, stop=signal.SIGINT))
                continue
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=here, env=env, capture_output=True,
                                  text=True, timeout=600, check=False)
            assert done.returncode == status, \
                f"{command}: exit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
            assert "Traceback" not in done.stderr, done.stderr
    assert (here / "report-2009" / "report.html").is_file() and (here / "certify.html").is_file()
    assert (here / "failure.pcapng").stat().st_size > 0 and (here / "sync.pcapng").stat().st_size > 0
    plugin = home / ".local" / "lib" / "wireshark" / "plugins" / "sidekick.lua"
    assert plugin.is_file()
    shown = subprocess.run(["tshark", "-r", str(here / "failure.pcapng"), "-Y", "sidekick"], env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert shown.returncode == 0 and "HELLO seq=0" in shown.stdout, shown.stderr

