"""What the parts of one server share: ``ServerState``.

The storage, fault set, limits, RNG and metrics; the places before authentication, the failed-
authentication throttle and the count of sessions. The session handler, both bindings and the
admin API act on a ``ServerState``; ``server.SyncServer`` is one, plus the listening. Nothing here
imports the parts that use it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

import trio

from sidekick_testbed.server_stub.admission import Admission, Holder
from sidekick_testbed.server_stub.auth_throttle import AuthThrottle, Bucket
from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.metrics import Metrics
from sidekick_testbed.server_stub.session_log import SessionSummary, log_session
from sidekick_testbed.server_stub.storage import Storage

__all__ = ["RECEIVE_SIZE", "STREAM_ERRORS", "CountedSession", "ServerState"]

log = logging.getLogger("sidekick.server")

RECEIVE_SIZE = 65536
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""What a stream raises when the peer is gone."""


class CountedSession(Protocol):
    """What the bookkeeping reads of a session (``handler.SessionHandler`` is one)."""

    @property
    def summary(self) -> SessionSummary: ...

    @property
    def authenticated(self) -> bool: ...


class ServerState:
    """The state one server's parts share (see the module docstring)."""

    def __init__(self, storage: Storage, *, faults: FaultSet | None = None, limits: Limits | None = None,
                 rng: random.Random) -> None:
        self.storage = storage
        if faults is not None:
            storage.faults = faults
        self.faults: FaultSet = storage.faults
        self.limits = limits if limits is not None else Limits()
        self.rng = rng
        self.metrics = Metrics()
        self.active_sessions = 0
        self.shutting_down = False
        self.admin_token: str | None = None
        limits = self.limits
        self.admission = Admission(limits.max_handshakes, limits.max_handshakes_per_address)
        """Places of connections and sessions before authentication (``server_stub.admission``)."""
        self.auth_throttle = AuthThrottle(Bucket(limits.auth_failures, limits.auth_failure_refill),
                                          Bucket(limits.address_auth_failures, limits.address_auth_failure_refill))
        self.authenticated: set[CountedSession] = set()
        """Sessions past HELLO_OK: what ``Limits.max_sessions`` bounds."""
        self.wait_scopes: set[trio.CancelScope] = set()
        """Scopes of reads waiting for data: shutdown cancels them."""
        self._received: dict[tuple[str, bytes], int] = {}
        self.snapshots: dict[str, Any] = {}

    def session_started(self, handler: CountedSession) -> None:
        """Count a session that began."""
        self.active_sessions += 1
        self.metrics.sessions_active = self.active_sessions
        self.metrics.sessions_total[handler.summary.binding] += 1

    def session_authenticated(self, handler: CountedSession) -> None:
        """Count a session that reached HELLO_OK."""
        self.authenticated.add(handler)
        self.metrics.sessions_authenticated = len(self.authenticated)

    def session_ended(self, handler: CountedSession) -> None:
        """Count a session that ended and log its line."""
        self.active_sessions -= 1
        self.metrics.sessions_active = self.active_sessions
        self.authenticated.discard(handler)
        self.metrics.sessions_authenticated = len(self.authenticated)
        summary = handler.summary
        if summary.outcome == "open":
            summary.outcome = "dropped"
        summary.duration = trio.current_time() - summary.started
        if handler.authenticated or summary.outcome == "AUTH_FAILED" or log.isEnabledFor(logging.DEBUG):
            log_session(summary)  # not a line per flooding HELLO: those are counted in /metrics

    @property
    def full(self) -> bool:
        """Whether ``Limits.max_sessions`` authenticated sessions are in progress (a HELLO gets BUSY)."""
        return len(self.authenticated) >= self.limits.max_sessions

    def admit(self, address: str | None, on_evict: Callable[[], None]) -> Holder:
        """A place for a connection or session before authentication (``server_stub.admission``)."""
        holder = self.admission.admit(address, trio.current_time(), on_evict)
        self.metrics.handshakes_active = len(self.admission)
        return holder

    def release(self, holder: Holder) -> None:
        """Give back a place taken by ``admit``."""
        self.admission.release(holder)
        self.metrics.handshakes_active = len(self.admission)

    def evicted(self, what: str) -> None:
        """Count a connection or session that lost its place to a newcomer."""
        self.metrics.refusals["handshake_evicted"] += 1
        self.metrics.handshakes_active = len(self.admission)
        log.debug("%s evicted before authenticating", what)

    def auth_throttled(self, account: str, address: str | None) -> bool:
        """Whether an AUTH for ``account`` from ``address`` is refused unchecked now (R-AUTH-9)."""
        if self.auth_throttle.throttled(account, address, trio.current_time()):
            self.metrics.refusals["auth_throttled"] += 1
            return True
        return False

    def auth_failed(self, account: str, address: str | None) -> None:
        """Count a failed AUTH for the throttle."""
        self.auth_throttle.failed(account, address, trio.current_time())

    def note_received(self, account: str, device_id: bytes, lsn: int) -> None:
        """Remember the highest LSN received from a device (only the wrong-watermark fault reads it)."""
        key = (account, device_id)
        self._received[key] = max(self._received.get(key, 0), lsn)

    def received_lsn(self, account: str, device_id: bytes) -> int:
        """The highest LSN ever received from the device by this process."""
        return self._received.get((account, device_id), 0)
