"""benchmarks/mutation.py runs its killer on the mutated copy: the copy's files are what the killer's
environment imports, and the script refuses to measure when anything of the project comes from elsewhere."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_benchmark", ROOT / "benchmarks" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mutation = _load_benchmark()


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result: Path = mutation.copy_tree(tmp_path_factory.mktemp("mutation"))
    return result


def _run_in_killer_env(copy: Path, env: dict[str, str], code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_a_change_made_in_the_copy_is_what_the_killer_runs(copy: Path) -> None:
    store = copy / "emulator" / "store" / "format.py"
    handler = copy / "server_stub" / "handler.py"
    original = store.read_text(), handler.read_text()
    try:
        store.write_text(original[0] + "\nCHANGED_IN_THE_COPY = 'store'\n")
        handler.write_text(original[1] + "\nCHANGED_IN_THE_COPY = 'handler'\n")
        out = _run_in_killer_env(copy, mutation.killer_env(copy),
                                 "from sidekick_testbed.emulator.store import format as f\n"
                                 "from sidekick_testbed.server_stub import handler as h\n"
                                 "print(f.CHANGED_IN_THE_COPY, h.CHANGED_IN_THE_COPY)")
    finally:
        store.write_text(original[0])
        handler.write_text(original[1])
    assert out == "store handler"


def test_the_killer_imports_nothing_of_the_project_from_outside_the_copy(copy: Path) -> None:
    modules = mutation.mutated_modules(copy, list(mutation.FILES))
    assert "sidekick_testbed.emulator.store.record_store" in modules
    assert "sidekick_testbed.server_stub.sqlite_commit" in modules
    assert not [name for name in modules if name.endswith((".model", ".powerloss"))]
    assert mutation.imported_from_outside(copy, mutation.killer_env(copy), modules) == []
    assert mutation.refusal(copy, mutation.killer_env(copy), list(mutation.FILES)) is None


def test_refused_when_the_copy_is_not_first_on_the_path(copy: Path, tmp_path: Path) -> None:
    env = {**mutation.killer_env(copy), "PYTHONPATH": str(tmp_path)}
    outside = mutation.imported_from_outside(copy, env, ["sidekick_testbed.emulator.store"])
    assert "sidekick_testbed.emulator.store" in [entry.split(" ")[0] for entry in outside]
    refused = mutation.refusal(copy, env, ["store"])
    assert refused is not None and "sidekick_testbed.emulator.store (" in refused
    assert "\n" not in refused


def _partial_copy(copy: Path, tmp_path: Path, folders: tuple[str, ...]) -> Path:
    partial: Path = tmp_path / "src" / mutation.PACKAGE
    for folder in folders:
        shutil.copytree(copy / folder, partial / folder)
    return partial


def test_refused_when_a_package_of_the_copy_is_missing(copy: Path, tmp_path: Path) -> None:
    """A folder absent from the copy would be taken from the installed namespace: refused, named."""
    partial = _partial_copy(copy, tmp_path, ("emulator", "protocol"))
    refused = mutation.refusal(partial, mutation.killer_env(partial), ["handler"])
    assert refused is not None and "sidekick_testbed.server_stub.handler (" in refused
    assert "sidekick_testbed.emulator" not in refused


def test_refused_when_a_module_of_the_copy_is_missing(copy: Path, tmp_path: Path) -> None:
    """The installed project's import hook supplies a module its package in the copy lacks: refused, named."""
    partial = _partial_copy(copy, tmp_path, ("emulator", "protocol", "server_stub"))
    (partial / "server_stub" / "sim_storage.py").unlink()
    refused = mutation.refusal(partial, mutation.killer_env(partial), ["sim_storage"])
    assert refused is not None and "sidekick_testbed.server_stub.sim_storage (" in refused


def test_refused_when_the_copy_does_not_import(copy: Path, tmp_path: Path) -> None:
    partial = _partial_copy(copy, tmp_path, ("emulator", "protocol", "server_stub"))
    broken = partial / "server_stub" / "sim_storage.py"
    broken.write_text(broken.read_text() + "\nraise RuntimeError('the copy is broken')\n")
    refused = mutation.refusal(partial, mutation.killer_env(partial), ["sim_storage"])
    assert refused is not None and "cannot import" in refused and "the copy is broken" in refused
