"""Reports of a certification run: a text summary table, JSON, JUnit XML, self-contained HTML."""

from __future__ import annotations

import html
import json
from typing import Any
from xml.etree import ElementTree as ET

from sidekick_testbed.emulator.certify.framework import CheckResult
from sidekick_testbed.emulator.certify.runner import RunResult
from sidekick_testbed.emulator.certify.verdicts import Level, Outcome

__all__ = ["DISCLAIMER", "render_html", "render_json", "render_junit", "render_text", "summary_lines", "to_dict",
           "unchecked_musts"]

DISCLAIMER = (
    "Passing this suite is evidence that the server behaves as docs/PROTOCOL.md requires where these "
    "checks look; it is not a certification by anyone."
)

_MARK = {Outcome.PASS: "PASS", Outcome.FAIL: "FAIL", Outcome.INCONCLUSIVE: "INCONCLUSIVE", Outcome.SKIPPED: "skip"}


def _label(result: CheckResult) -> str:
    if result.expected_failure:
        return "XFAIL"
    return _MARK[result.outcome]


def render_text(run: RunResult, *, evidence: bool = True, table: bool = True) -> str:
    """The summary table, then failures with evidence, inconclusive checks, and the verdict."""
    lines = [f"sidekick certify: {run.target.address}, seed {run.seed}, profile {run.profile}"]
    if table:
        width = max((len(r.check.name) for r in run.results), default=10)
        lines += ["", f"{'result':<12} {'level':<6} {'check':<{width}}  title"]
        for r in run.results:
            lines.append(f"{_label(r):<12} {r.check.level.value:<6} {r.check.name:<{width}}  {r.check.title}")
    failed = [r for r in run.results if r.outcome is Outcome.FAIL]
    if failed:
        lines += ["", "FAILURES"]
        for r in failed:
            tag = " (expected failure)" if r.expected_failure else ""
            lines.append(f"- {r.check.name} [{r.check.level.value}]{tag}: {r.message}")
            lines.append(f"  requirements: {', '.join(r.check.requirements)}")
            if evidence and r.evidence:
                lines.append("  evidence (frames exchanged, last ones):")
                lines += [f"    {e.render()}" for e in r.evidence]
    if run.inconclusive:
        lines += ["", f"INCONCLUSIVE ({len(run.inconclusive)}): these checks could not decide"
                  + (" and fail the run (--strict)" if run.strict else "")]
        lines += [f"- {r.check.name} [{r.check.level.value}]: {r.message}" for r in run.inconclusive]
    if run.newly_passing:
        lines += ["", "Listed as expected failures but passing now (remove them from the baseline):"]
        lines += [f"- {r.check.name}" for r in run.newly_passing]
    lines += ["", *summary_lines(run)]
    return "\n".join(lines) + "\n"


def unchecked_musts(run: RunResult) -> tuple[int, int]:
    """(MUST checks that apply to the binding, those of them left inconclusive: not checked)."""
    musts = [r for r in run.results if r.check.level is Level.MUST and r.outcome is not Outcome.SKIPPED]
    return len(musts), sum(1 for r in musts if r.outcome is Outcome.INCONCLUSIVE)


def summary_lines(run: RunResult) -> list[str]:
    """Counts, time per group, verdict, how many MUSTs were not checked, and the disclaimer."""
    lines = [(f"{run.count(Outcome.PASS)} passed, {run.count(Outcome.FAIL)} failed, "
              f"{run.count(Outcome.INCONCLUSIVE)} inconclusive, {run.count(Outcome.SKIPPED)} skipped "
              f"in {run.duration:.1f}s")]
    groups = ", ".join(f"{g} {t:.1f}s" for g, t in run.group_durations().items())
    lines.append(f"time per group: {groups}")
    musts, unchecked = unchecked_musts(run)
    must_failed = run.failed_must
    if must_failed:
        lines.append(f"VERDICT: {len(must_failed)} MUST check(s) failed; each failure above names the requirement "
                     "broken and shows the frames exchanged.")
    elif run.exit_code():
        lines.append(f"VERDICT: no MUST check failed, but {unchecked} MUST check(s) were not checked and --strict "
                     "is set.")
    elif unchecked:
        lines.append(f"VERDICT: no MUST check failed, but {unchecked} of {musts} MUST checks were NOT CHECKED "
                     "(inconclusive, listed above): this run is not a pass of the suite (--strict fails it).")
    else:
        lines.append(f"VERDICT: no MUST check failed; all {musts} MUST checks decided.")
    if run.inconclusive:
        lines.append(f"{len(run.inconclusive)} check(s) INCONCLUSIVE: they neither passed nor failed (listed above).")
    lines.append(DISCLAIMER)
    return lines


def _result_dict(r: CheckResult) -> dict[str, Any]:
    return {
        "id": r.check.id,
        "name": r.check.name,
        "title": r.check.title,
        "group": r.check.group,
        "level": r.check.level.value,
        "requirements": list(r.check.requirements),
        "outcome": r.outcome.value,
        "expected_failure": r.expected_failure,
        "message": r.message,
        "duration_s": round(r.duration, 4),
        "evidence": [e.render() for e in r.evidence],
    }


def to_dict(run: RunResult) -> dict[str, Any]:
    """The JSON-ready form of a run."""
    return {
        "target": run.target.address,
        "seed": run.seed,
        "profile": run.profile,
        "strict": run.strict,
        "exit_code": run.exit_code(),
        "duration_s": round(run.duration, 3),
        "counts": {o.value: run.count(o) for o in Outcome},
        "must_checks": unchecked_musts(run)[0],
        "must_not_checked": unchecked_musts(run)[1],
        "group_durations_s": {g: round(t, 3) for g, t in run.group_durations().items()},
        "disclaimer": DISCLAIMER,
        "results": [_result_dict(r) for r in run.results],
    }


def render_json(run: RunResult) -> str:
    """The run as a JSON document."""
    return json.dumps(to_dict(run), indent=2) + "\n"


_JUNIT_COUNTS = {"failures": "failure", "errors": "error", "skipped": "skipped"}


def render_junit(run: RunResult) -> str:
    """The run as JUnit XML: one testsuite per group, one testcase per check named by requirement id."""
    root = ET.Element("testsuites", name="sidekick certify", tests=str(len(run.results)),
                      time=f"{run.duration:.3f}")
    suites: dict[str, ET.Element] = {}
    for r in run.results:
        suite = suites.get(r.check.group)
        if suite is None:
            suite = ET.SubElement(root, "testsuite", name=f"certify.{r.check.group}")
            suites[r.check.group] = suite
        case = ET.SubElement(suite, "testcase", classname=f"certify.{r.check.group}", name=r.check.name,
                             time=f"{r.duration:.3f}")
        ET.SubElement(case, "properties").extend(
            ET.Element("property", name="requirement", value=req) for req in r.check.requirements)
        detail = "\n".join(e.render() for e in r.evidence)
        if r.outcome is Outcome.FAIL and not r.expected_failure and r.check.level is Level.MUST:
            node = ET.SubElement(case, "failure", message=r.message, type="MUST")
            node.text = detail
        elif r.outcome is Outcome.FAIL:
            node = ET.SubElement(case, "skipped", message=f"{r.check.level.value} failure"
                                 f"{' (expected)' if r.expected_failure else ''}: {r.message}")
            node.text = detail
        elif r.outcome is Outcome.INCONCLUSIVE:
            # A MUST left unchecked must not look green on a dashboard: an error (not a failure of the
            # server) unless --strict makes it a failure; SHOULD and MAY ones are skipped.
            ET.SubElement(case.find("properties"), "property", name="outcome",  # type: ignore[arg-type]
                          value="inconclusive")
            if run.strict:
                node = ET.SubElement(case, "failure", message=f"inconclusive: {r.message}", type="inconclusive")
            elif r.check.level is Level.MUST:
                node = ET.SubElement(case, "error", message=f"MUST not checked (inconclusive): {r.message}",
                                     type="inconclusive")
            else:
                node = ET.SubElement(case, "skipped", message=f"inconclusive: {r.message}")
            node.text = detail
        elif r.outcome is Outcome.SKIPPED:
            ET.SubElement(case, "skipped", message=r.message)
    for suite in suites.values():
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        for kind, tag in _JUNIT_COUNTS.items():
            suite.set(kind, str(sum(1 for c in cases if c.find(tag) is not None)))
    for kind in _JUNIT_COUNTS:
        root.set(kind, str(sum(int(suite.get(kind, "0")) for suite in suites.values())))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.pass{background:#e6f4e6}.fail{background:#fbe3e3}.inconclusive{background:#fff3cd}.skipped{color:#888}
pre{background:#f6f6f6;padding:6px;font-size:12px;white-space:pre-wrap}.note{border:2px solid #999;padding:8px;margin:1em 0}
td,li,pre,code,small{overflow-wrap:anywhere;word-break:break-word}table{table-layout:fixed}
th:nth-child(1),th:nth-child(2),th:nth-child(6){width:7em}th:nth-child(3),th:nth-child(4){width:16em}
"""


def render_html(run: RunResult) -> str:
    """A self-contained HTML page (no external assets): verdict, failed checks (each linked to its
    row), inconclusive checks, results with evidence."""
    esc = html.escape
    must_failed = run.failed_must
    musts, unchecked = unchecked_musts(run)
    verdict = (f"{len(must_failed)} MUST check(s) failed" if must_failed else "No MUST check failed")
    rows = []
    failed: list[str] = []
    for index, r in enumerate(run.results):
        cls = "fail" if r.outcome is Outcome.FAIL else r.outcome.value
        if r.outcome is Outcome.FAIL:
            failed.append(f"<li><a href='#check-{index}'><code>{esc(r.check.name)}</code></a> "
                          f"[{esc(r.check.level.value)}{', expected' if r.expected_failure else ''}]: "
                          f"{esc(r.message)}</li>")
        evidence = ""
        if r.evidence:
            evidence = "<details><summary>evidence</summary><pre>" + esc(
                "\n".join(e.render() for e in r.evidence)) + "</pre></details>"
        rows.append(
            f"<tr class='{cls}' id='check-{index}'><td>{esc(_label(r))}</td><td>{esc(r.check.level.value)}</td>"
            f"<td><code>{esc(r.check.name)}</code></td><td>{esc(', '.join(r.check.requirements))}</td>"
            f"<td>{esc(r.check.title)}<br><small>{esc(r.message if r.outcome is not Outcome.PASS else '')}</small>"
            f"{evidence}</td><td>{r.duration:.2f}s</td></tr>")
    inconclusive = "".join(f"<li><code>{esc(r.check.name)}</code>: {esc(r.message)}</li>" for r in run.inconclusive)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sidekick certify: {esc(run.target.address)}</title>
<style>{_CSS}</style></head><body>
<h1>sidekick certify: {esc(run.target.address)}</h1>
<p class="note">{esc(DISCLAIMER)}</p>
<h2>{esc(verdict)}</h2>
{f"<p class='note'>{unchecked} of {musts} MUST checks were NOT CHECKED (inconclusive): this run is not a pass "
 f"of the suite.</p>" if unchecked else ""}
<p>{run.count(Outcome.PASS)} passed, {run.count(Outcome.FAIL)} failed, {run.count(Outcome.INCONCLUSIVE)} inconclusive,
{run.count(Outcome.SKIPPED)} skipped in {run.duration:.1f}s (seed {run.seed}, profile {esc(run.profile)}).</p>
{f"<h2>Failed</h2><ul>{''.join(failed)}</ul>" if failed else ""}
{f"<h2>Inconclusive</h2><ul>{inconclusive}</ul>" if inconclusive else ""}
<h2>Results</h2>
<table><tr><th>result</th><th>level</th><th>check</th><th>requirements</th><th>title / message</th><th>time</th></tr>
{''.join(rows)}
</table></body></html>
"""
