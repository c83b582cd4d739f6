"""HTTP binding sessions: one protocol session spread over many POSTs (and connections).

A request without a session token starts a session; the token (128 bits from the server's RNG,
hex) names it in every later request. Each request's frames are fed to the session's handler and
the frames it answers make the response body. A session ends on BYE or a fatal ERROR, and expires
after ``Limits.idle_timeout`` without requests (its token then gets 410).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.framing import HEADER_LEN, TRAILER_LEN
from protocol.http import HttpRequest
from protocol.session import CONNECTION_CLOSED, NEED_DATA
from protocol.wire import HEADER_STRUCT
from server_stub.handler import SessionHandler

if TYPE_CHECKING:
    from server_stub.server import SyncServer

__all__ = ["HttpAnswer", "HttpSessions"]


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """Status, body and session token of one response."""

    status: int
    body: bytes = b""
    token: str | None = None
    text: str = ""


@dataclass(eq=False)
class _Entry:
    handler: SessionHandler
    outbox: bytearray
    last_used: float
    bytes_in: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)


def whole_frames(body: bytes) -> bool:
    """Whether ``body`` is a sequence of whole frames by their header lengths (R-HTTP-12)."""
    offset = 0
    while offset < len(body):
        if len(body) - offset < HEADER_LEN:
            return False
        length = HEADER_STRUCT.unpack_from(body, offset)[-1]
        offset += HEADER_LEN + length + TRAILER_LEN
    return offset == len(body)


class HttpSessions:
    """The HTTP sessions of one server."""

    def __init__(self, server: SyncServer) -> None:
        self.server = server
        self._sessions: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self) -> int:
        """End sessions idle for longer than the idle timeout; return how many."""
        now = trio.current_time()
        idle = self.server.limits.idle_timeout
        stale = [t for t, e in self._sessions.items() if now - e.last_used > idle and not e.lock.locked()]
        for token in stale:
            entry = self._sessions.pop(token)
            entry.handler.summary.outcome = "expired"
            self.server.metrics.refusals["idle_timeout"] += 1
            self.server.session_ended(entry.handler)
        return len(stale)

    async def answer(self, request: HttpRequest) -> HttpAnswer:
        """Feed one request to its session; return the response to send."""
        server = self.server
        self.expire()
        if request.session_token is None:
            if server.shutting_down:
                return HttpAnswer(503, text="shutting down")
            if server.active_sessions >= server.limits.max_sessions:
                server.metrics.refusals["max_sessions"] += 1
                return HttpAnswer(503, text="too many sessions")
            token = server.rng.randbytes(16).hex()
            outbox = bytearray()

            async def write(data: bytes) -> None:
                outbox.extend(data)

            handler = SessionHandler(server, write, binding="http")
            entry = _Entry(handler, outbox, trio.current_time())
            self._sessions[token] = entry
            server.session_started(handler)
        else:
            token = request.session_token
            found = self._sessions.get(token)
            if found is None:
                return HttpAnswer(410, text="unknown or expired session")
            entry = found
        async with entry.lock:
            entry.last_used = trio.current_time()
            body = await self._feed(entry, request.body)
            entry.last_used = trio.current_time()
            if entry.handler.closed:
                self._sessions.pop(token, None)
                server.session_ended(entry.handler)
            return HttpAnswer(200, body, token)

    async def _feed(self, entry: _Entry, data: bytes) -> bytes:
        handler = entry.handler
        session = handler.session
        limits = self.server.limits
        entry.bytes_in += len(data)
        self.server.metrics.bytes_in += len(data)
        if entry.bytes_in > limits.session_bytes:
            self.server.metrics.refusals["session_bytes"] += 1
            await handler.fail(ErrorCode.BUDGET_EXCEEDED, "session byte budget exceeded")
        elif trio.current_time() - handler.summary.started > limits.session_time:
            self.server.metrics.refusals["session_time"] += 1
            await handler.fail(ErrorCode.BUDGET_EXCEEDED, "session time budget exceeded")
        elif self.server.shutting_down:
            await handler.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
        else:
            session.receive_data(data)
            while not handler.closed:
                try:
                    event = session.next_event()
                except RemoteProtocolError as exc:
                    await handler.refuse(exc)
                    break
                if event is NEED_DATA or event is CONNECTION_CLOSED:
                    break
                await handler.handle(event)
            if not handler.closed and not whole_frames(data):
                session.receive_data(b"")  # the body ends inside a frame: the stream is over (R-HTTP-12)
                try:
                    session.next_event()
                except RemoteProtocolError as exc:
                    await handler.refuse(exc)
                await handler.fail(ErrorCode.TRUNCATED, "the request body ends inside a frame")
        body = bytes(entry.outbox)
        entry.outbox.clear()
        return body

    def close_all(self) -> None:
        """Forget every session (server shutdown)."""
        for entry in self._sessions.values():
            if entry.handler.summary.outcome == "open":
                entry.handler.summary.outcome = "shutdown"
            self.server.session_ended(entry.handler)
        self._sessions.clear()
