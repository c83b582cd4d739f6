"""Limits against bad or greedy peers; each refusal is counted in /metrics by its reason."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.framing import DEFAULT_MAX_FRAME

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Server limits (seconds are Trio clock seconds).

    ``idle_timeout``: a session that for this long neither received a complete frame nor
    finished a write (raw binding), or got no request (HTTP), is ended with ERROR TIMEOUT;
    trickled bytes do not count, and a write that takes this long ends the session too. ``session_time`` and
    ``session_bytes`` bound one session (ERROR BUDGET_EXCEEDED). ``max_sessions`` bounds
    concurrent sessions (ERROR BUSY, HTTP 503). ``group_commit=False`` gives every write its own
    transaction (the benchmark's baseline).
    """

    max_frame: int = DEFAULT_MAX_FRAME
    max_batch: int = 256
    idle_timeout: float = 60.0
    session_time: float = 900.0
    session_bytes: int = 256 * 1024 * 1024
    max_sessions: int = 1000
    max_http_header: int = 8192
    max_http_body: int = 4 * DEFAULT_MAX_FRAME
    max_blob: int = 16 * 1024 * 1024
    pull_records: int = 1024
    shutdown_grace: float = 10.0
    error_linger: float = 1.0
    group_commit: bool = True

    def __post_init__(self) -> None:
        if 36 + 32 * self.max_batch > self.max_frame:
            raise ValueError("max_batch too large for max_frame (36 + 32 * max_batch <= max_frame)")
        if min(self.idle_timeout, self.session_time, self.shutdown_grace) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.max_sessions, self.session_bytes, self.max_http_header, self.pull_records) < 1:
            raise ValueError("limits must be positive")
