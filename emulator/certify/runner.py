"""Run a selection of checks against a target and collect their results.

The ``handshake`` check runs first; if it does not pass, every other check is Inconclusive (not
run), so a server that is down, speaks another protocol, or refuses the given key gives a short,
clear report: one failed check saying why. Every check runs under a time budget; a check that exceeds it fails
(the server hangs). A check's randomness comes from ``random.Random(f"{seed}:{check id}")``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from sidekick_testbed.emulator.certify import all_checks
from sidekick_testbed.emulator.certify.client import ServerViolation, Trace
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import PROFILES, Check, CheckResult
from sidekick_testbed.emulator.certify.target import Target
from sidekick_testbed.emulator.certify.verdicts import Fail, Inconclusive, Need, Outcome

__all__ = ["HANDSHAKE_ID", "RunResult", "is_expected", "load_expected_failures", "run_check", "run_suite", "unmet_needs"]

HANDSHAKE_ID = "handshake"
EVIDENCE_LINES = 40


@dataclass(slots=True)
class RunResult:
    """The results of one run, in the order the checks ran."""

    target: Target
    seed: int
    profile: str
    strict: bool
    results: list[CheckResult] = field(default_factory=list)
    duration: float = 0.0
    expected: frozenset[str] = frozenset()

    def count(self, outcome: Outcome) -> int:
        """How many results have ``outcome``."""
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def failed_must(self) -> list[CheckResult]:
        """Failed MUST checks that are not expected failures."""
        return [r for r in self.results if r.counts_as_failure]

    @property
    def inconclusive(self) -> list[CheckResult]:
        """Checks that could not decide."""
        return [r for r in self.results if r.outcome is Outcome.INCONCLUSIVE]

    @property
    def newly_passing(self) -> list[CheckResult]:
        """Checks listed as expected failures that passed."""
        return [r for r in self.results if r.outcome is Outcome.PASS and is_expected(r.check, self.expected)]

    def exit_code(self) -> int:
        """0 when no selected MUST check failed (and, with ``strict``, none was inconclusive), else 1."""
        if self.failed_must:
            return 1
        if self.strict and self.inconclusive:
            return 1
        return 0

    def group_durations(self) -> dict[str, float]:
        """Seconds spent per check group."""
        totals: dict[str, float] = {}
        for r in self.results:
            totals[r.check.group] = totals.get(r.check.group, 0.0) + r.duration
        return totals


def is_expected(check: Check, expected: frozenset[str]) -> bool:
    """Whether the baseline lists this check (by id, name or one of its requirement ids)."""
    return bool(expected & {check.id, check.name, *check.requirements})


def load_expected_failures(path: Path) -> frozenset[str]:
    """Read a baseline file: one check id, check name or requirement id per line; ``#`` comments."""
    names: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            names.add(entry)
    return frozenset(names)


def unmet_needs(check: Check, target: Target) -> tuple[Outcome, str] | None:
    """Skipped (other binding) or Inconclusive (missing configuration) with the reason, or None."""
    needs = check.needs
    if Need.HTTP in needs and not target.http:
        return Outcome.SKIPPED, "applies to the HTTP binding only (use --http)"
    if Need.TCP in needs and target.http:
        return Outcome.SKIPPED, "applies to the TCP binding only"
    missing = [
        need for need, present in (
            (Need.SESSION, bool(target.accounts)),
            (Need.SECOND_ACCOUNT, len(target.accounts) >= 2),
            (Need.RESTART, bool(target.restart_cmd)),
            (Need.RESTORE, bool(target.restore_cmd)),
            (Need.POWER_CUT, bool(target.power_cut_cmd)),
        ) if need in needs and not present
    ]
    if missing:
        return Outcome.INCONCLUSIVE, "needs " + " and ".join(need.value for need in missing)
    return None


def _budget(check: Check, target: Target) -> float:
    base = max(30.0, 12 * target.timeout)
    if check.needs & {Need.RESTART, Need.RESTORE, Need.POWER_CUT}:
        return base + 2 * target.ready_timeout
    return base


async def run_check(check: Check, target: Target, *, seed: int) -> CheckResult:
    """Run one check against ``target``; never raises (except for cancellation)."""
    trace = Trace()
    ctx = CheckContext(target, random.Random(f"{seed}:{check.id}"), trace)
    start = trio.current_time()
    outcome, message = Outcome.PASS, "ok"
    budget = _budget(check, target)
    try:
        with trio.move_on_after(budget) as scope:
            await check.run(ctx)
        if scope.cancelled_caught:
            outcome, message = Outcome.FAIL, f"the check did not finish within {budget:g}s: the server hangs (R-CONFORM-2)"
    except Fail as exc:
        outcome, message = Outcome.FAIL, str(exc)
    except ServerViolation as exc:
        outcome, message = Outcome.FAIL, str(exc)
    except Inconclusive as exc:
        outcome, message = Outcome.INCONCLUSIVE, str(exc)
    except Exception as exc:  # a check that cannot run must not end the run
        outcome, message = Outcome.INCONCLUSIVE, f"the check could not run: {type(exc).__name__}: {exc}"
    finally:
        await ctx.aclose()
    duration = trio.current_time() - start
    evidence = tuple(trace.entries[-EVIDENCE_LINES:]) if outcome is not Outcome.PASS else ()
    return CheckResult(check, outcome, message, evidence, duration)


async def run_suite(
    target: Target, checks: Iterable[Check], *, seed: int, profile: str = "all", strict: bool = False,
    expected: frozenset[str] = frozenset(), on_result: Callable[[CheckResult], None] | None = None,
) -> RunResult:
    """Run ``checks`` (already selected and ordered) and return the results."""
    levels = PROFILES[profile]
    run = RunResult(target, seed, profile, strict, expected=expected)
    start = trio.current_time()
    gate: CheckResult | None = None
    ordered = sorted(checks, key=lambda c: c.id != HANDSHAKE_ID)
    registry = all_checks()
    if target.accounts and (not ordered or ordered[0].id != HANDSHAKE_ID) and HANDSHAKE_ID in registry:
        gate = await run_check(registry[HANDSHAKE_ID], target, seed=seed)
        if gate.outcome is not Outcome.PASS:  # not selected, but it explains every other result
            run.results.append(gate)
            if on_result is not None:
                on_result(gate)
    for check in ordered:
        if check.level not in levels:
            result = CheckResult(check, Outcome.SKIPPED, f"{check.level.value} check, not in profile {profile!r}")
        elif (unmet := unmet_needs(check, target)) is not None:
            result = CheckResult(check, unmet[0], unmet[1])
        elif gate is not None and gate.outcome is not Outcome.PASS:
            result = CheckResult(check, Outcome.INCONCLUSIVE,
                                 f"not run: no session could be established ({gate.message})")
        else:
            result = await run_check(check, target, seed=seed)
        if check.id == HANDSHAKE_ID:
            gate = result
        if result.outcome is Outcome.FAIL and is_expected(check, expected):
            result = CheckResult(check, result.outcome, result.message, result.evidence, result.duration, True)
        run.results.append(result)
        if on_result is not None:
            on_result(result)
    run.duration = trio.current_time() - start
    return run
