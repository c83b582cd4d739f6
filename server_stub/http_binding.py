"""HTTP binding sessions: one protocol session spread over many POSTs (and connections).

A request without a session token starts a session; the token (128 bits from the server's RNG,
hex) names it in every later request. Each request's frames are fed to the session's handler and
the frames it answers make the response body. A session ends on BYE or a fatal ERROR, and expires
after ``Limits.idle_timeout`` without requests (its token then gets 410). Until HELLO_OK a session
holds a place before authentication (``server_stub.admission``, taken for the address of the
request that started it): it expires ``Limits.handshake_timeout`` after its start, and a newcomer
past the bounds may take its place (its token then gets 410 too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError
from sidekick_testbed.protocol.framing import HEADER_LEN, TRAILER_LEN
from sidekick_testbed.protocol.http import HttpRequest
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA
from sidekick_testbed.protocol.wire import HEADER_STRUCT
from sidekick_testbed.server_stub.admission import Holder
from sidekick_testbed.server_stub.handler import SessionHandler

if TYPE_CHECKING:
    from sidekick_testbed.server_stub.server import SyncServer

__all__ = ["HttpAnswer", "HttpSessions"]


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """Status, body and session token of one response; ``authenticated``: the request belongs to a
    session that has passed HELLO_OK (the connection carrying it is then a proven one)."""

    status: int
    body: bytes = b""
    token: str | None = None
    text: str = ""
    authenticated: bool = False
    retry_after: int | None = None


@dataclass(eq=False)
class _Entry:
    handler: SessionHandler
    outbox: bytearray
    last_used: float
    holder: Holder | None = None  # its place before authentication, until HELLO_OK
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
        """End sessions idle for longer than the idle timeout, and sessions still before HELLO_OK
        past the handshake deadline (the server's reaper calls this); return how many."""
        now = trio.current_time()
        stale = [(t, e) for t, e in self._sessions.items() if self._stale(e, now)]
        for token, entry in stale:
            self._expire(token, entry)
        return len(stale)

    def _stale(self, entry: _Entry, now: float) -> bool:
        limits = self.server.limits
        return not entry.lock.locked() and (
            now - entry.last_used > limits.idle_timeout
            or (entry.holder is not None and now - entry.handler.summary.started > limits.handshake_timeout))

    def _expire(self, token: str, entry: _Entry) -> None:
        handshake = entry.holder is not None and entry.holder.holding
        self.server.metrics.refusals["handshake_timeout" if handshake else "idle_timeout"] += 1
        self._end(token, entry, "handshake timeout" if handshake else "expired")

    def _end(self, token: str, entry: _Entry, outcome: str | None = None) -> None:
        """Forget the session ``token`` names, if it still names ``entry``."""
        if self._sessions.get(token) is not entry:
            return
        del self._sessions[token]
        if outcome is not None and entry.handler.summary.outcome == "open":
            entry.handler.summary.outcome = outcome
        if entry.holder is not None:
            self.server.release(entry.holder)
        self.server.session_ended(entry.handler)

    async def answer(self, request: HttpRequest, address: str | None = None) -> HttpAnswer:
        """Feed one request to its session; return the response to send. ``address``: the client's,
        for the bounds before authentication and the failed-authentication throttle."""
        server = self.server
        if request.session_token is None:
            if server.shutting_down:
                return HttpAnswer(503, text="shutting down", retry_after=5)
            if server.full:
                server.metrics.refusals["max_sessions"] += 1
                return HttpAnswer(503, text="too many sessions", retry_after=5)
            if not request.body:
                return HttpAnswer(400, text="a request without a session token must carry a HELLO (R-HTTP-2)")
            token = server.rng.randbytes(16).hex()
            outbox = bytearray()

            async def write(data: bytes) -> None:
                outbox.extend(data)

            handler = SessionHandler(server, write, binding="http", address=address)
            entry = _Entry(handler, outbox, trio.current_time())

            def evict() -> None:
                self._end(token, entry, "evicted")
                server.evicted("HTTP session")

            entry.holder = server.admit(address, evict)
            self._sessions[token] = entry
            server.session_started(handler)
        else:
            token = request.session_token
            found = self._sessions.get(token)
            if found is not None and self._stale(found, trio.current_time()):  # expired, not yet reaped
                self._expire(token, found)
                found = None
            if found is None:
                return HttpAnswer(410, text="unknown or expired session")
            entry = found
        async with entry.lock:
            entry.last_used = trio.current_time()
            holder = entry.holder
            if holder is not None:
                server.admission.progress(holder, entry.last_used)
            body = await self._feed(entry, request.body)
            entry.last_used = trio.current_time()
            authenticated = entry.handler.authenticated
            if holder is not None and authenticated and self._sessions.get(token) is entry:
                entry.holder = None
                server.release(holder)
                server.session_authenticated(entry.handler)
            if entry.handler.closed:
                self._end(token, entry)
            return HttpAnswer(200, body, token, authenticated=authenticated)

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
            if data:  # an empty body carries nothing (b"" would tell the session the stream ended)
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
        for token, entry in list(self._sessions.items()):
            self._end(token, entry, "shutdown")
