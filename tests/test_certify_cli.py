"""``sidekick certify`` and the pytest plugin: usage errors, reports, clean failure on a garbage port."""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree as ET

import pytest
import trio

from sidekick_testbed.emulator.certify import pytest_plugin
from sidekick_testbed.emulator.certify.local_server import free_port
from sidekick_testbed.emulator.cli import main
from tests.certify_pytest import run_pytest


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "vendor.key"
    path.write_text(bytes(range(32)).hex() + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("args", [
    ["127.0.0.1:1", "--account", "vendor"],
    ["127.0.0.1:1", "--account", "vendor", "--key-file", "/nonexistent/key"],
    ["nohost:port", "--account", "vendor", "--key-file", "KEY"],
    ["127.0.0.1:1", "--account", "vendor", "--key-file", "NOTHEX"],
    ["127.0.0.1:1", "--only", "no-such-check"],
    ["127.0.0.1:1", "--timeout", "0"],
])
def test_usage_errors_exit_2_with_one_line(args: list[str], key_file: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not hex at all", encoding="utf-8")
    argv = ["certify", *[str(key_file) if a == "KEY" else str(bad) if a == "NOTHEX" else a for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sidekick: error:") and len(err.strip().splitlines()) == 1


def test_no_server_at_the_address_is_one_line_exit_2_and_no_report(key_file: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as bound:  # bound, not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        code = main(["certify", f"127.0.0.1:{port}", "--account", "vendor", "--key-file", str(key_file),
                     "--json", str(tmp_path / "r.json")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"sidekick: error: cannot reach 127.0.0.1:{port}: Connection refused "
                                    "(is the server running there?)")
    assert captured.out == "" and not (tmp_path / "r.json").exists()


def test_a_report_that_cannot_be_written_is_refused_before_the_suite(key_file: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certify", "127.0.0.1:1", "--account", "vendor", "--key-file", str(key_file),
                 "--html", str(key_file / "report.html")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # the suite did not run
    assert captured.err.strip() == f"sidekick: error: --html {key_file / 'report.html'}: {key_file} is not a directory"


def test_list_names_every_check_by_requirement(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certify", "127.0.0.1:1", "--list"]) == 0
    out = capsys.readouterr().out
    assert "R-PULL-8[pull-anchor-needs-ack]" in out and "R-DUR-3[durable-survives-restart]" in out


async def _garbage(stream: trio.SocketStream) -> None:
    try:
        await stream.send_all(random.Random(8).randbytes(20000))
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


async def test_cli_against_a_garbage_port_fails_cleanly_with_reports(key_file: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _garbage, 0)
        port = listeners[0].socket.getsockname()[1]
        result = await trio.run_process(
            [sys.executable, "-m", "sidekick_testbed.emulator", "certify", f"127.0.0.1:{port}", "--account", "vendor",
             "--key-file", str(key_file), "--timeout", "3", "--json", str(tmp_path / "r.json"),
             "--junit", str(tmp_path / "r.xml"), "--html", str(tmp_path / "r.html")],
            capture_stdout=True, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr + result.stdout
    assert "not a certification by anyone" in out and "FAIL" in out
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["exit_code"] == 1 and data["results"][0]["outcome"] == "fail"
    assert ET.parse(tmp_path / "r.xml").getroot().findall(".//failure")
    assert "not a certification by anyone" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_plugin_adds_nothing_without_the_option() -> None:
    config = SimpleNamespace(getoption=lambda name: None)
    items: list[object] = ["an item of the project's own run"]
    pytest_plugin.pytest_collection_modifyitems(None, config, items)  # type: ignore[arg-type]
    assert items == ["an item of the project's own run"]
    assert pytest_plugin.pytest_report_header(config) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "message"), [
    (["nohost:port"], "bad address 'nohost:port': expected HOST:PORT"),
    (["127.0.0.1:0"], "bad address '127.0.0.1:0': port 0"),
    (["127.0.0.1:1", "--sidekick-account", "vendor"], "give one --key-file for each --account, in the same order"),
    (["127.0.0.1:1", "--sidekick-account", "vendor", "--sidekick-key-file", "NOTHEX"], "does not hold a hex key"),
])
def test_plugin_option_mistakes_are_pytest_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not hex at all", encoding="utf-8")
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n", encoding="utf-8")
    args = [str(tmp_path / "bad.key") if a == "NOTHEX" else a for a in args]
    result = run_pytest(["test_one.py", "--sidekick-server", *args], tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --sidekick-server: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_plugin_items_run_beside_other_tests_and_fail_against_a_down_server(tmp_path: Path, key_file: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n", encoding="utf-8")
    result = run_pytest(["-v", "test_one.py", "--sidekick-server", f"127.0.0.1:{free_port()}", "--sidekick-account",
                         "vendor", "--sidekick-key-file", str(key_file), "--sidekick-only", "handshake",
                         "--sidekick-timeout", "2"], tmp_path)
    assert result.returncode == 1
    assert "test_one.py::test_one PASSED" in result.stdout
    assert "R-STATE-3[handshake] FAILED" in result.stdout
    assert "cannot reach" in result.stdout and "Traceback" not in result.stdout
