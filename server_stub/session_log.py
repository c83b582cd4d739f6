"""One log line per session, readable or JSON (``sidekick serve --log-json``); ``SessionSummary``, its fields."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass

__all__ = ["JsonFormatter", "SessionSummary", "configure_logging", "log_session"]

log = logging.getLogger("sidekick.server")


@dataclass
class SessionSummary:
    """What one session did: the fields of its log line."""

    binding: str
    account: str = ""
    device: str = ""
    pushed: int = 0
    committed: int = 0
    pulled: int = 0
    conflicts: int = 0
    durable_lsn: int = 0
    outcome: str = "open"
    started: float = 0.0
    duration: float = 0.0


def log_session(summary: SessionSummary) -> None:
    """Log the end of one session (nothing is built when INFO is off, as in fleet simulations)."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = asdict(summary)
    fields["duration"] = round(summary.duration, 4)
    del fields["started"]
    log.info(
        "session %s account=%s device=%s pushed=%d committed=%d pulled=%d conflicts=%d durable_lsn=%d "
        "duration=%.3fs outcome=%s",
        summary.binding, summary.account or "-", summary.device or "-", summary.pushed, summary.committed,
        summary.pulled, summary.conflicts, summary.durable_lsn, summary.duration, summary.outcome,
        extra={"fields": {"event": "session", **fields}},
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, logger, message and any structured ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {"level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        return json.dumps(data, sort_keys=True)


def configure_logging(*, json_lines: bool, level: int = logging.INFO) -> None:
    """Send the server's log to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("sidekick")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
