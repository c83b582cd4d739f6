"""What a check may say: requirement levels, outcomes, needs, the Fail and Inconclusive verdicts, evidence lines.

The bottom of the certify room: it imports nothing of the suite, so the wire client, the check
context and the registry can all build on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Fail", "Inconclusive", "Level", "Need", "Outcome", "TraceEntry", "expect"]


class Level(enum.Enum):
    """Requirement level of the requirement a check verifies (RFC 2119)."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


class Outcome(enum.Enum):
    """Result of one check."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


class Need(enum.Enum):
    """What a check needs from the run's configuration; missing means Inconclusive (or not applicable)."""

    SESSION = "an account and key (--account, --key-file)"
    SECOND_ACCOUNT = "a second account (--account and --key-file given twice)"
    RESTART = "a restart command (--restart-cmd)"
    RESTORE = "a restore command (--restore-cmd)"
    POWER_CUT = "a power-cut command (--power-cut-cmd)"
    TCP = "the TCP binding"
    HTTP = "the HTTP binding (--http)"


class Fail(Exception):
    """Raised by a check: the server broke the requirement; the message says how."""


class Inconclusive(Exception):
    """Raised by a check: the check could not decide (prerequisite missing or precondition unmet)."""


def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise Fail(message)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One line of evidence: a frame sent (``>``), received (``<``), or a note (``#``)."""

    time: float
    conn: str
    direction: str
    text: str

    def render(self) -> str:
        """One line: ``+0.012s c1 > PUSH seq 2 {...}``."""
        return f"+{self.time:.3f}s {self.conn} {self.direction} {self.text}"
