"""The coverage table: every requirement of docs/PROTOCOL.md against the checks that name it, and
every server MUST a client can observe covered; docs/CERTIFY.md and ``certify --list`` show it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidekick_testbed.emulator.certify import all_checks
from sidekick_testbed.emulator.certify.coverage import (
    BEGIN,
    DEVICE_ONLY,
    END,
    EVERY_CHECK,
    NOT_OBSERVABLE,
    REQUIREMENTS,
    coverage,
    figures,
    render_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


def test_the_requirement_list_is_the_specs() -> None:
    rows = re.findall(r"^\| (R-[A-Z]+-\d+) \| (MUST|SHOULD|MAY) \|", SPEC, re.M)
    assert list(REQUIREMENTS.items()) == rows


def test_every_observable_server_must_is_covered_and_every_reason_is_needed() -> None:
    named = {r for c in all_checks().values() for r in c.requirements}
    assert named <= set(REQUIREMENTS), named - set(REQUIREMENTS)
    assert not named & DEVICE_ONLY, "a check claims a requirement that binds the device only"
    assert not named & set(NOT_OBSERVABLE), "a requirement with a check is observable"
    assert not named & set(EVERY_CHECK), "a requirement with a check of its own needs no 'every check' note"
    assert (DEVICE_ONLY | set(NOT_OBSERVABLE) | set(EVERY_CHECK)) <= set(REQUIREMENTS)
    rows = coverage(all_checks().values())
    assert [r.requirement for r in rows if r.status == "NOT CHECKED"] == []
    f = figures(rows)
    assert f["covered"] == f["observable"] and f["musts"] == f["server_musts"] + f["device_musts"]


def test_certify_md_holds_the_generated_table() -> None:
    doc = (ROOT / "docs" / "CERTIFY.md").read_text(encoding="utf-8")
    table = doc[doc.index(BEGIN) + len(BEGIN):doc.index(END)].strip("\n")
    assert table + "\n" == render_markdown(coverage(all_checks().values())), \
        "docs/CERTIFY.md is stale: python -m emulator.certify.coverage writes the table again"


def test_certify_list_shows_the_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick_testbed.emulator.cli import main

    assert main(["certify", "127.0.0.1:9", "--list"]) == 0
    out = capsys.readouterr().out
    assert "MUST requirements" in out
    for requirement in REQUIREMENTS:
        assert re.search(rf"^{requirement} ", out, re.M), requirement
