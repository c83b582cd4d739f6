"""The shared Hypothesis example database (``pytest --example-db``) on a real ``redis-server``
started here: a failure one pytest process finds is the first example another one tries."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.database import DirectoryBasedExampleDatabase

from sidekick_testbed.emulator.example_db import example_database

PROPERTY = '''
import os
from hypothesis import given, strategies as st

@given(st.integers(0, 10**9))
def test_below_the_threshold(n):
    with open(os.environ["SEEN"], "a") as seen:
        seen.write(f"{n}\\n")
    assert n < 123_456_789
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of its own on a free port, ready when it says so."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (.ci/run installs Debian's package)"
    port = _free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        said = []
        for line in process.stdout:
            said.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail(f"redis-server did not start: {''.join(said[-3:])}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def _pytest(folder: Path, database: str, seen: str) -> subprocess.CompletedProcess[str]:
    """A separate pytest process on the property, with the database; what it tried goes to ``seen``."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--example-db", database,
                           "test_property.py"], cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SEEN": str(folder / seen)})


def test_a_failure_found_by_one_process_is_replayed_first_by_another(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "test_property.py").write_text(PROPERTY)
    first = _pytest(tmp_path, redis_url, "first.txt")
    assert first.returncode == 1, first.stdout[-2000:]
    assert "n=123456789" in first.stdout  # found and shrunk to the threshold
    second = _pytest(tmp_path, redis_url, "second.txt")
    assert second.returncode == 1
    assert (tmp_path / "second.txt").read_text().split()[0] == "123456789"
    # the same property on another Redis database starts from scratch
    fresh = _pytest(tmp_path, redis_url.removesuffix("/0") + "/1", "fresh.txt")
    assert fresh.returncode == 1
    assert (tmp_path / "fresh.txt").read_text().split()[0] != "123456789"


def test_an_example_db_without_a_redis_there_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_property.py").write_text(PROPERTY)
    port = _free_port()
    run = _pytest(tmp_path, f"redis://127.0.0.1:{port}/0", "seen.txt")
    assert run.returncode == 4  # pytest's usage error: nothing ran
    assert f"--example-db redis://127.0.0.1:{port}/0: cannot use this Redis" in run.stderr
    assert not (tmp_path / "seen.txt").exists()


def test_a_directory_is_a_directory_database(tmp_path: Path) -> None:
    database = example_database(str(tmp_path / "examples"))
    assert isinstance(database, DirectoryBasedExampleDatabase)
    database.save(b"key", b"value")
    assert list(example_database(str(tmp_path / "examples")).fetch(b"key")) == [b"value"]
