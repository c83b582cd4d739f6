"""Limits against bad or greedy peers; each refusal is counted in /metrics by its reason."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Server limits (seconds are Trio clock seconds).

    ``idle_timeout``: a raw session whose link stays silent this long (nothing received, no write
    finished; the server's own PINGs do not count) is ended with ERROR TIMEOUT, and so is one
    whose write takes this long; an HTTP session that gets no request this long expires, and an
    HTTP connection silent this long is closed. ``ping_interval``: an authenticated raw session in
    READY whose link has been silent this long gets a PING (R-STATE-7), so a device that answers
    may stay idle; None means half the idle timeout, ``0`` sends none (``probe_after``). ``session_time`` and ``session_bytes`` bound one session
    (ERROR BUDGET_EXCEEDED). ``max_sessions`` bounds concurrent authenticated sessions (ERROR
    BUSY, HTTP 503).

    Before authentication (docs/SERVER.md): ``handshake_timeout`` is the time a raw connection has
    from its start to HELLO_OK, an HTTP session from its HELLO to HELLO_OK, an HTTP connection
    from its start to its first request of an authenticated session, and any HTTP request head
    from its first byte to its end (trickled bytes do not extend any of them).
    ``max_handshakes`` bounds the connections and sessions in that state, ``max_handshakes_per_address``
    those of one client address; a newcomer past a bound takes the place of the one that has
    waited longest (``server_stub.admission``). ``auth_failures`` and ``auth_failure_refill``:
    failed AUTHs one address may make for one account before its AUTHs are refused unchecked, and
    the seconds that give one back; ``address_auth_failures`` and ``address_auth_failure_refill``
    the same for one address over all accounts (R-AUTH-9).

    ``group_commit=False`` gives every write its own transaction (the benchmark's baseline).
    """

    max_frame: int = DEFAULT_MAX_FRAME
    max_batch: int = 256
    idle_timeout: float = 60.0
    session_time: float = 900.0
    session_bytes: int = 256 * 1024 * 1024
    max_sessions: int = 1000
    handshake_timeout: float = 10.0
    max_handshakes: int = 1000
    max_handshakes_per_address: int = 100
    ping_interval: float | None = None
    auth_failures: int = 5
    auth_failure_refill: float = 12.0
    address_auth_failures: int = 30
    address_auth_failure_refill: float = 2.0
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
        if min(self.idle_timeout, self.session_time, self.shutdown_grace, self.handshake_timeout,
               self.auth_failure_refill, self.address_auth_failure_refill) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.max_sessions, self.session_bytes, self.max_http_header, self.pull_records, self.max_handshakes,
               self.max_handshakes_per_address, self.auth_failures, self.address_auth_failures) < 1:
            raise ValueError("limits must be positive")
        if self.ping_interval is not None and not 0 <= self.ping_interval < self.idle_timeout:
            raise ValueError("ping_interval must be 0 (no PING) or shorter than idle_timeout")

    @property
    def probe_after(self) -> float:
        """Seconds of silence after which an idle raw session gets a PING (``math.inf``: never)."""
        if self.ping_interval is None:
            return self.idle_timeout / 2
        return self.ping_interval or math.inf
