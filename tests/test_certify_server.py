"""The suite against the reference server, run as a real process (one per module) with real
restart and restore commands: the correct server passes every check over TCP and HTTP; each fault
mode makes at least one named check fail; the black-box fuzzer's oracle holds and finds a fault."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from sidekick_testbed.emulator.certify import all_checks
from sidekick_testbed.emulator.certify.blackbox import blackbox_fuzz
from sidekick_testbed.emulator.certify.framework import select
from sidekick_testbed.emulator.certify.local_server import LocalServer
from sidekick_testbed.emulator.certify.runner import run_suite
from sidekick_testbed.emulator.certify.target import Account
from sidekick_testbed.emulator.certify.verdicts import Need, Outcome
from sidekick_testbed.server_stub.faults import ALL_FAULT_MODES
from tests.certify_pytest import run_pytest


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with LocalServer(tmp_path_factory.mktemp("certify-server")) as running:
        yield running


@pytest.fixture
def correct(server: LocalServer) -> Iterator[LocalServer]:
    """The server with no fault mode on (and none left on afterwards)."""
    server.set_faults(())
    yield server
    server.set_faults(())


def _not_applicable(need: Need, http: bool) -> bool:
    return (need is Need.HTTP and not http) or (need is Need.TCP and http)


@pytest.mark.parametrize("http", [False, True], ids=["tcp", "http"])
async def test_reference_server_passes_every_check(correct: LocalServer, http: bool) -> None:
    # the restart and restore checks run once, over TCP (they test the store, not the binding)
    checks = [c for c in select(all_checks().values())
              if c.group != "power-cut" and not (http and c.group in ("restart", "restore"))]
    run = await run_suite(correct.target(http=http), checks, seed=11)
    problems = [(r.check.name, r.outcome.value, r.message) for r in run.results if r.outcome is not Outcome.PASS
                and not (r.outcome is Outcome.SKIPPED and any(_not_applicable(n, http) for n in r.check.needs))]
    assert problems == []
    assert run.exit_code() == 0
    wanted = {"account-isolation"} | (set() if http else {"durable-survives-restart", "generation-after-restore"})
    assert wanted <= {r.check.id for r in run.results if r.outcome is Outcome.PASS}


def test_pytest_plugin_runs_checks_as_items_named_by_requirement(correct: LocalServer, tmp_path: Path) -> None:
    key = tmp_path / "vendor.key"
    key.write_text(correct.keys["vendor"].hex(), encoding="utf-8")
    result = run_pytest(["-v", "--sidekick-server", f"127.0.0.1:{correct.tcp_port}", "--sidekick-account", "vendor",
                         "--sidekick-key-file", str(key), "--sidekick-only", "R-PULL-*"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "R-PULL-8[pull-anchor-needs-ack] PASSED" in result.stdout


CAUGHT_BY: dict[str, tuple[str, ...]] = {
    "ack-before-durable": ("durable-survives-restart",),
    "silent-rollback": ("generation-after-restore",),
    "duplicate-on-retransmit": ("retransmit-after-durable",),
    "ignore-pull-ack": ("pull-anchor-needs-ack", "pull-ack-mismatch"),
    "lose-tail-on-crash": ("durable-survives-restart",),
    "wrong-watermark": ("watermark-only-durable",),
    "reorder-versions": ("pull-paging",),
    "forget-conflict-copy": ("conflict-copy",),
    "overwrite-taken-copy": ("conflict-copy-taken",),
    "no-batch-total": ("push-batch-total",),
    "volatile-dedup": ("retransmit-after-restart",),
    "skip-fsync": ("durable-survives-power-cut",),
    "write-behind-2ms": ("durable-survives-power-cut",),
    "write-behind-10ms": ("durable-survives-power-cut",),
    "commit-lsn-watermark": ("durable-lsn-unreceived",),
}
"""The table of docs/CERTIFY.md: fault mode -> the checks that catch it."""
NO_CLIENT_CAN_PROVOKE: dict[str, str] = {
    "durable-despite-storage-error": "the server's storage must fail; the fuzzer's storage-failure fault does it",
}
"""Fault modes whose bug shows only when the server's own storage fails (docs/CERTIFY.md)."""

NAMES: dict[str, str | tuple[str, ...]] = {
    "ack-before-durable": ("R-DUR-3", "R-BLOB-5"), "silent-rollback": "R-GEN-1", "duplicate-on-retransmit": "R-IDEM-1",
    "ignore-pull-ack": "R-PULL-", "lose-tail-on-crash": "R-DUR-3", "wrong-watermark": "R-DUR-4",
    "reorder-versions": "R-PULL-3", "forget-conflict-copy": "R-CONFLICT-1", "overwrite-taken-copy": "R-CONFLICT-8",
    "no-batch-total": "R-LIMIT-4", "volatile-dedup": "R-DUR-12", "skip-fsync": "R-DUR-3",
    "write-behind-2ms": "R-DUR-3", "write-behind-10ms": "R-DUR-3",
    "commit-lsn-watermark": "R-DUR-4",
}
"""The requirement each fault breaks (``R-PULL-``: R-PULL-8, or R-PULL-9 for a refused PULL_ACK): the
failure message of every catching check must name it, or one of them where the bug shows in two ways
(a server committing behind its acknowledgements may also fail to read a blob it acknowledged whole:
R-BLOB-5, before any crash)."""


def names(fault: str, message: str) -> bool:
    """Whether ``message`` names the requirement ``fault`` breaks."""
    wanted = NAMES[fault]
    return any(name in message for name in ((wanted,) if isinstance(wanted, str) else wanted))

POWER_CUT = frozenset(f for f, ids in CAUGHT_BY.items() if "durable-survives-power-cut" in ids)


def test_every_fault_mode_is_mapped_to_existing_checks() -> None:
    assert set(CAUGHT_BY) | set(NO_CLIENT_CAN_PROVOKE) == set(ALL_FAULT_MODES)
    assert not set(CAUGHT_BY) & set(NO_CLIENT_CAN_PROVOKE)
    assert set(CAUGHT_BY) == set(NAMES)
    assert {c for ids in CAUGHT_BY.values() for c in ids} <= set(all_checks())


@pytest.mark.parametrize("fault", sorted(set(CAUGHT_BY) - POWER_CUT))
async def test_fault_mode_fails_its_checks(fault: str, correct: LocalServer) -> None:
    correct.set_faults((fault,))
    checks = select(all_checks().values(), only=CAUGHT_BY[fault])
    run = await run_suite(correct.target(accounts=1), checks, seed=3)
    outcomes = {r.check.id: (r.outcome, r.message) for r in run.results}
    for check_id in CAUGHT_BY[fault]:
        assert outcomes[check_id][0] is Outcome.FAIL, (check_id, outcomes[check_id])
        assert names(fault, outcomes[check_id][1]), outcomes[check_id]
    assert run.exit_code() == 1


async def test_a_watermark_taken_from_commit_fails_only_the_watermark_check(correct: LocalServer) -> None:
    """DURABLE.durable_lsn = COMMIT.lsn with nothing received breaks R-DUR-4 alone: the checks of
    refused and early PUSHes judge what was applied by pulling, not by the watermark."""
    correct.set_faults(("commit-lsn-watermark",))
    checks = select(all_checks().values(), only=["state-before-auth-refused", "refused-push-no-effect",
                                                 "durable-lsn-unreceived"])
    run = await run_suite(correct.target(accounts=1), checks, seed=4)
    outcomes = {r.check.id: r.outcome for r in run.results}
    assert outcomes == {"state-before-auth-refused": Outcome.PASS, "refused-push-no-effect": Outcome.PASS,
                        "durable-lsn-unreceived": Outcome.FAIL}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """The reference server under ``sidekick powercut``: its power-cut command loses unsynced writes."""
    with LocalServer(tmp_path_factory.mktemp("certify-traced"), traced=True) as running:
        yield running


@pytest.mark.parametrize("fault", [None, *sorted(POWER_CUT)])
async def test_power_cut_check_fails_exactly_the_servers_that_do_not_sync(fault: str | None,
                                                                          traced: LocalServer) -> None:
    traced.set_faults(() if fault is None else (fault,))
    try:
        if fault == "skip-fsync":  # read when a connection opens its transaction: set it on a fresh start
            await trio.run_process(["sh", "-c", traced.restart_cmd])
            traced.wait_ready()
        checks = select(all_checks().values(), only=["durable-survives-power-cut"])
        run = await run_suite(traced.target(accounts=1), checks, seed=len(str(fault)))  # ids new per case
    finally:
        traced.set_faults(())
    (result,) = [r for r in run.results if r.check.id == "durable-survives-power-cut"]
    if fault is None:
        assert result.outcome is Outcome.PASS, result.message
    else:
        assert result.outcome is Outcome.FAIL and names(fault, result.message), result.message


@pytest.mark.parametrize(("fault", "http"), [(None, False), (None, True), ("ignore-pull-ack", False)],
                         ids=["correct-tcp", "correct-http", "ignore-pull-ack"])
async def test_blackbox_fuzz_oracle(fault: str | None, http: bool, correct: LocalServer) -> None:
    correct.set_faults(() if fault is None else (fault,))
    account = Account("vendor", correct.keys["vendor"])
    port = correct.http_port if http else correct.tcp_port
    # The shared server holds other tests' records, so one seed does not fix the whole run: the fault
    # needs an unacknowledged pull followed by a later session of the same device, which 30 sessions
    # did not always give. A faulty server gets up to 150 sessions (a run stops at 10 violations).
    report = await blackbox_fuzz("127.0.0.1", port, seed=len(str(fault)) * 7 + http, budget_s=120, http=http,
                                 account=account, max_sessions=30 if fault is None else 150)
    assert report.sessions >= 2 and report.changes_confirmed > 0 and report.trace
    if fault is None:
        assert report.violations == [], report.summary()
    else:
        assert report.violations and all("R-PULL-8" in v for v in report.violations), report.summary()


@pytest.mark.parametrize("http", [False, True], ids=["tcp", "http"])
async def test_blackbox_fuzz_finds_duplicate_on_retransmit_by_lost_receipts(http: bool, correct: LocalServer) -> None:
    """A device that loses a DURABLE's receipt pushes the change again: dense enough that the first
    few sessions find a server applying it twice."""
    correct.set_faults(("duplicate-on-retransmit",))
    report = await blackbox_fuzz("127.0.0.1", correct.http_port if http else correct.tcp_port, seed=2,
                                 budget_s=60, http=http, account=Account("vendor", correct.keys["vendor"]),
                                 max_sessions=40, stop_at_first=True)
    assert report.violations and "R-IDEM-1" in report.violations[0], report.summary()


@pytest.mark.parametrize("fault", [None, "overwrite-taken-copy"])
async def test_blackbox_squat_probe_finds_a_copy_written_over_a_taken_id(fault: str | None,
                                                                        correct: LocalServer) -> None:
    import random

    from sidekick_testbed.emulator.certify.blackbox import BlackboxReport, Commands, _Fuzzer
    from sidekick_testbed.emulator.certify.target import Target

    correct.set_faults(() if fault is None else (fault,))
    account = Account("vendor", correct.keys["vendor"])
    report = BlackboxReport(seed=1)
    fuzzer = _Fuzzer(Target("127.0.0.1", correct.tcp_port, accounts=(account,)), account, random.Random(1),
                     report, f"squat-probe {fault}".encode(), Commands())  # ids new per case
    try:
        await fuzzer.squat()
        await fuzzer.verify()
    finally:
        await fuzzer.ctx.aclose()
    if fault is None:
        assert report.violations == [], report.summary()
    else:
        assert report.violations and all("R-CONFLICT-8" in v for v in report.violations), report.summary()


def test_the_documented_fault_table_matches() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "CERTIFY.md").read_text(encoding="utf-8")
    for fault, checks in CAUGHT_BY.items():
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{fault}` |"))
        assert all(f"`{check_id}`" in row for check_id in checks), row


@pytest.mark.parametrize("fault", [None, "duplicate-on-retransmit"])
def test_fuzz_server_mode_is_clean_on_the_reference_server_and_catches_a_fault(
        server: LocalServer, fault: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick_testbed.emulator.cli import main

    server.set_faults(() if fault is None else (fault,))
    try:
        target = server.target()
        key_file = tmp_path / "vendor.key"
        key_file.write_text(server.keys["vendor"].hex())
        argv = ["fuzz", "--server", f"{target.host}:{target.port}", "--account", "vendor",
                "--key-file", str(key_file), "--budget", "3s", "--seed", "5", "--out", str(tmp_path)]
        status = main(argv)
        trace = tmp_path / "blackbox-seed-5.jsonl"
        first_ids = set(re.findall(r"device ([0-9a-f]{32})", trace.read_text()))
        # Same seed again (the server remembers the first run) and a replay of its trace: still no
        # false alarm on the correct server, the same finding on the faulty one, and new ids.
        again = main(argv) if fault is None else main([*argv[:7], "--out", str(tmp_path), "--replay", str(trace)])
        second_ids = set(re.findall(r"device ([0-9a-f]{32})", trace.read_text()))
    finally:
        server.set_faults(())
    out = capsys.readouterr().out
    assert (status, again) == ((0, 0) if fault is None else (1, 1)), out
    assert len(first_ids) == 3 and first_ids.isdisjoint(second_ids)
    header = json.loads(trace.read_text().splitlines()[0])
    assert header["seed"] == 5 and header["options"]["budget_s"] == 3.0
