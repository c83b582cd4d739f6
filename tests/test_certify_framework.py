"""The certify framework without a real server: registry, selection, verdicts, reports, vectors,
and clean results against servers that are down or speak something else."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.emulator.certify import all_checks
from sidekick_testbed.emulator.certify.checks_framing import VECTORS, reference_verdict, resequence
from sidekick_testbed.emulator.certify.client import Trace
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import CheckResult, select
from sidekick_testbed.emulator.certify.local_server import free_port
from sidekick_testbed.emulator.certify.report import (
    DISCLAIMER,
    render_html,
    render_json,
    render_junit,
    render_text,
)
from sidekick_testbed.emulator.certify.runner import (
    HANDSHAKE_ID,
    RunResult,
    load_expected_failures,
    run_suite,
)
from sidekick_testbed.emulator.certify.target import Account, Target
from sidekick_testbed.emulator.certify.verdicts import Inconclusive, Level, Outcome, TraceEntry
from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError
from sidekick_testbed.protocol.framing import FrameDecoder, encode_frame
from sidekick_testbed.protocol.messages import Ping

SPEC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
CHECKS = all_checks()


def test_every_check_cites_requirements_of_the_spec() -> None:
    spec_ids = set(re.findall(r"^\| (R-[A-Z]+-\d+) \|", SPEC.read_text(encoding="utf-8"), re.M))
    cited = {req for c in CHECKS.values() for req in c.requirements}
    assert cited - spec_ids == set()
    names = [c.name for c in CHECKS.values()]
    assert len(names) == len(set(names))
    assert HANDSHAKE_ID in CHECKS


def test_every_malformed_vector_is_a_check() -> None:
    assert {f"malformed-{v.name}" for v in VECTORS} <= set(CHECKS)
    assert len(VECTORS) >= 18


def test_select_matches_ids_groups_and_requirements_in_group_order() -> None:
    pull = select(CHECKS.values(), only=["R-PULL-8"])
    assert pull and all("R-PULL-8" in c.requirements for c in pull)
    malformed = select(CHECKS.values(), only=["malformed"])
    assert {c.group for c in malformed} == {"malformed"}
    everything = select(CHECKS.values())
    groups = [c.group for c in everything]
    assert groups.index("restart") > groups.index("malformed") and groups[-1] == "restore"
    assert select(CHECKS.values(), only=["no-such-check-*"]) == []


def _result(level: Level, outcome: Outcome, *, expected: bool = False) -> CheckResult:
    base = next(c for c in CHECKS.values() if c.level is level)
    return CheckResult(base, outcome, "message <with markup>", (TraceEntry(0.0, "c1", ">", "PING seq 2"),), 0.5,
                       expected)


def _run(*results: CheckResult, strict: bool = False) -> RunResult:
    run = RunResult(Target("127.0.0.1", 1), 7, "all", strict)
    run.results.extend(results)
    return run


@pytest.mark.parametrize(("results", "strict", "code"), [
    ((Outcome.PASS,), False, 0),
    ((Outcome.PASS, Outcome.FAIL), False, 1),
    ((Outcome.INCONCLUSIVE,), False, 0),
    ((Outcome.INCONCLUSIVE,), True, 1),
    ((Outcome.SKIPPED,), True, 0),
])
def test_exit_code_follows_must_failures_and_strictness(results: tuple[Outcome, ...], strict: bool, code: int) -> None:
    assert _run(*(_result(Level.MUST, o) for o in results), strict=strict).exit_code() == code


def test_should_failures_and_expected_failures_do_not_fail_the_run() -> None:
    assert _run(_result(Level.SHOULD, Outcome.FAIL)).exit_code() == 0
    assert _run(_result(Level.MUST, Outcome.FAIL, expected=True)).exit_code() == 0


def test_expected_failures_file(tmp_path: Path) -> None:
    path = tmp_path / "baseline.txt"
    path.write_text("# vendor baseline\nR-PULL-8   # anchors not yet\n\npush-empty\n", encoding="utf-8")
    assert load_expected_failures(path) == frozenset({"R-PULL-8", "push-empty"})


def test_reports_carry_results_evidence_and_the_disclaimer() -> None:
    run = _run(_result(Level.MUST, Outcome.FAIL), _result(Level.MUST, Outcome.INCONCLUSIVE),
               _result(Level.SHOULD, Outcome.PASS))
    text = render_text(run)
    assert "FAILURES" in text and "INCONCLUSIVE (1)" in text and "PING seq 2" in text and DISCLAIMER in text
    data = json.loads(render_json(run))
    assert data["counts"] == {"pass": 1, "fail": 1, "inconclusive": 1, "skipped": 0}
    assert data["exit_code"] == 1 and data["results"][0]["evidence"]
    root = ET.fromstring(render_junit(run))
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == [r.check.name for r in run.results]
    assert len(root.findall(".//failure")) == 1
    page = render_html(run)
    assert DISCLAIMER in page and "<with markup>" not in page and "&lt;with markup&gt;" in page
    failed_section = page[page.index("<h2>Failed</h2>"):page.index("<h2>Inconclusive</h2>")]
    assert failed_section.count("<li>") == 1 and f"href='#check-0'><code>{run.results[0].check.name}" in failed_section
    assert "id='check-0'" in page and page.index("<h2>Failed</h2>") < page.index("<h2>Results</h2>")
    assert "<h2>Failed</h2>" not in render_html(_run(_result(Level.MUST, Outcome.PASS)))


@pytest.mark.parametrize("strict", [False, True])
def test_an_inconclusive_must_never_looks_green(strict: bool) -> None:
    run = _run(_result(Level.MUST, Outcome.PASS), _result(Level.MUST, Outcome.INCONCLUSIVE),
               _result(Level.SHOULD, Outcome.INCONCLUSIVE), strict=strict)
    root = ET.fromstring(render_junit(run))
    must, should = root.findall(".//testcase")[1:]
    assert must.find("failure" if strict else "error") is not None
    assert should.find("failure" if strict else "skipped") is not None
    assert (root.get("failures"), root.get("errors")) == (("2", "0") if strict else ("0", "1"))
    assert {(p.get("name"), p.get("value")) for p in must.iter("property")} >= {("outcome", "inconclusive")}
    verdict = next(line for line in render_text(run).splitlines() if line.startswith("VERDICT"))
    assert ("1 MUST check(s) were not checked" if strict else "1 of 2 MUST checks were NOT CHECKED") in verdict
    assert json.loads(render_json(run))["must_not_checked"] == 1
    assert "NOT CHECKED" in render_html(run)
    clean = _run(_result(Level.MUST, Outcome.PASS))
    assert "all 1 MUST checks decided" in render_text(clean) and "NOT CHECKED" not in render_html(clean)


def test_the_html_report_wraps_long_tokens() -> None:
    """A failure message of one 400-character token stays inside the page: the CSS wraps anywhere."""
    base = _result(Level.MUST, Outcome.FAIL)
    token = "ab" * 200
    run = _run(CheckResult(base.check, Outcome.FAIL, token, (TraceEntry(0.0, "c1", "<", token),), 0.1))
    page = render_html(run)
    style = page[page.index("<style>"):page.index("</style>")]
    assert re.search(r"td,li,pre,code,small\{overflow-wrap:anywhere", style)
    assert "white-space:pre-wrap" in style and "table-layout:fixed" in style and "overflow-x" not in style
    assert page.count(token) == 3  # the failed list, the row's message, the evidence


@given(seq=st.integers(0, 2**32 - 1), new_seq=st.integers(0, 2**32 - 1), nonce=st.integers(0, 2**64 - 1),
       broken=st.booleans())
def test_resequence_renumbers_and_keeps_the_crc_verdict(seq: int, new_seq: int, nonce: int, broken: bool) -> None:
    frame = bytearray(encode_frame(Ping(nonce), seq))
    if broken:
        frame[-1] ^= 1
    decoder = FrameDecoder()
    decoder.feed(resequence(bytes(frame), new_seq))
    if broken:
        with pytest.raises(RemoteProtocolError) as info:
            decoder.next_frame()
        assert info.value.code is ErrorCode.BAD_CRC
    else:
        got = decoder.next_frame()
        assert got is not None and got.seq == new_seq and got.message == Ping(nonce)


def test_reference_verdict_agrees_with_every_vector_manifest() -> None:
    for vector in VECTORS:
        assert reference_verdict(vector.data, 65536) is vector.code, vector.name


# ---------------------------------------------------------------------------------------- bad servers

async def _garbage_handler(stream: trio.SocketStream) -> None:
    rng = random.Random(20)
    try:
        await stream.send_all(rng.randbytes(20000))
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


async def _http_404_handler(stream: trio.SocketStream) -> None:
    try:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found")
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


async def _suite_against(handler: object | None, *, http: bool = False) -> RunResult:
    account = (Account("vendor", bytes(32)),)
    async with trio.open_nursery() as nursery:
        if handler is None:
            port = free_port()
        else:
            listeners = await nursery.start(trio.serve_tcp, handler, 0)
            port = listeners[0].socket.getsockname()[1]
        target = Target("127.0.0.1", port, http=http, accounts=account, timeout=2.0)
        run = await run_suite(target, select(CHECKS.values()), seed=1)
        nursery.cancel_scope.cancel()
    return run


@pytest.mark.parametrize(("handler", "http"), [(_garbage_handler, False), (_http_404_handler, True), (None, False)],
                         ids=["garbage-tcp", "http-404", "down"])
async def test_a_server_not_speaking_the_protocol_fails_cleanly(handler: object | None, http: bool) -> None:
    run = await _suite_against(handler, http=http)
    assert run.exit_code() == 1
    first = run.results[0]
    assert first.check.id == HANDSHAKE_ID and first.outcome is Outcome.FAIL
    rest = [r for r in run.results[1:] if r.outcome is not Outcome.SKIPPED]  # other binding: not applicable
    assert rest and all(r.outcome is Outcome.INCONCLUSIVE for r in rest)
    assert all("no session" in r.message or r.message.startswith("needs") for r in rest)


@pytest.mark.parametrize(("command", "reason"), [("exit 3", "status 3"), ("sleep 30", "did not finish")])
async def test_a_failing_or_hanging_command_makes_the_check_inconclusive(command: str, reason: str) -> None:
    target = Target("127.0.0.1", 1, restart_cmd=command, ready_timeout=0.5)
    ctx = CheckContext(target, random.Random(0), Trace())
    with pytest.raises(Inconclusive, match=reason):
        await ctx.run_command(command, "restart")


async def test_a_failed_handshake_fails_the_run_even_when_not_selected() -> None:
    target = Target("127.0.0.1", free_port(), accounts=(Account("vendor", bytes(32)),), timeout=2.0)
    run = await run_suite(target, select(CHECKS.values(), only=["R-PULL-*"]), seed=1)
    assert run.results[0].check.id == HANDSHAKE_ID and run.results[0].outcome is Outcome.FAIL
    assert run.exit_code() == 1
