"""The check framework: the registry of checks, their results, profiles and selection.

A check is an async function taking a ``CheckContext``; it returns normally to pass, raises
``Fail`` to fail and ``Inconclusive`` when it cannot decide (a prerequisite is missing, e.g. no
restart command); those verdicts live in ``verdicts``. The ``check`` decorator registers a check
under its id. Every check names the requirement ids of docs/PROTOCOL.md it verifies, its level
(MUST, SHOULD, MAY) and its group. The evidence of a result is the trace of frames exchanged,
decoded, up to the point where the check ended.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidekick_testbed.emulator.certify.verdicts import Level, Need, Outcome, TraceEntry

if TYPE_CHECKING:
    from sidekick_testbed.emulator.certify.context import CheckContext

__all__ = ["GROUP_ORDER", "PROFILES", "REGISTRY", "Check", "CheckFunc", "CheckResult", "check", "select"]

CheckFunc = Callable[["CheckContext"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Check:
    """A registered check: identity, the requirements it verifies, and its body."""

    id: str
    title: str
    requirements: tuple[str, ...]
    level: Level
    group: str
    run: CheckFunc = field(compare=False, repr=False)
    needs: frozenset[Need] = frozenset({Need.SESSION})

    @property
    def name(self) -> str:
        """Test-item name: the primary requirement id and the check id, ``R-FRAME-1[bad-magic]``."""
        return f"{self.requirements[0]}[{self.id}]"

    def matches(self, pattern: str) -> bool:
        """Whether a glob ``pattern`` matches the id, the name, the group or a requirement id."""
        names = (self.id, self.name, self.group, *self.requirements)
        return any(fnmatch.fnmatchcase(name, pattern) for name in names)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check, with the message and the evidence trace."""

    check: Check
    outcome: Outcome
    message: str
    evidence: tuple[TraceEntry, ...] = ()
    duration: float = 0.0
    expected_failure: bool = False

    @property
    def counts_as_failure(self) -> bool:
        """A failed MUST check that is not listed as an expected failure."""
        return self.outcome is Outcome.FAIL and self.check.level is Level.MUST and not self.expected_failure


GROUP_ORDER: tuple[str, ...] = (
    "connect", "framing", "version", "auth", "isolation", "state", "idempotence", "receipts",
    "pull", "conflict", "blob", "limits", "malformed", "http", "restart", "power-cut", "restore",
)
"""Groups run in this order: the restart and restore checks last, as they disturb the server."""

REGISTRY: dict[str, Check] = {}
"""Every check, by id, in registration order."""


def check(
    id: str, title: str, *, requirements: Iterable[str], level: Level, group: str,
    needs: Iterable[Need] = (Need.SESSION,),
) -> Callable[[CheckFunc], CheckFunc]:
    """Decorator registering an async check function under ``id``."""
    reqs = tuple(requirements)
    if not reqs or not all(r.startswith("R-") for r in reqs):
        raise ValueError(f"check {id!r} must cite requirement ids R-AREA-N, got {reqs!r}")
    if group not in GROUP_ORDER:
        raise ValueError(f"check {id!r}: unknown group {group!r}")

    def register(func: CheckFunc) -> CheckFunc:
        if id in REGISTRY:
            raise ValueError(f"check id {id!r} registered twice")
        REGISTRY[id] = Check(id, title, reqs, level, group, func, frozenset(needs))
        return func

    return register


PROFILES: dict[str, frozenset[Level]] = {
    "must": frozenset({Level.MUST}),
    "should": frozenset({Level.MUST, Level.SHOULD}),
    "all": frozenset(Level),
}


def select(checks: Iterable[Check], *, only: Iterable[str] = ()) -> list[Check]:
    """The checks matching any ``only`` pattern (all when none), in group order."""
    patterns = tuple(only)
    chosen = [c for c in checks if not patterns or any(c.matches(p) for p in patterns)]
    return sorted(chosen, key=lambda c: GROUP_ORDER.index(c.group))
