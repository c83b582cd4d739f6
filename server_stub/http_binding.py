"""The HTTP binding: connections that carry POSTs, sessions spread over many POSTs and connections.

A connection (``HttpSessions.serve_connection``) reads requests one at a time, each within its
deadlines, and answers each from its session.

A request without a session token starts a session; the token (128 bits from the server's RNG,
hex) names it in every later request. Each request's frames are fed to the session's handler and
the frames it answers make the response body. A session ends on BYE or a fatal ERROR, and expires
after ``Limits.idle_timeout`` without requests (its token then gets 410). Until HELLO_OK a session
holds a place before authentication (``server_stub.admission``, taken for the address of the
request that started it): it expires ``Limits.handshake_timeout`` after its start, and a newcomer
past the bounds may take its place (its token then gets 410 too).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import trio

from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError
from sidekick_testbed.protocol.framing import HEADER_LEN, TRAILER_LEN
from sidekick_testbed.protocol.http_common import HttpBindingError
from sidekick_testbed.protocol.http_server import HttpRequest, HttpServerBinding
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA
from sidekick_testbed.protocol.wire import HEADER_STRUCT
from sidekick_testbed.server_stub.admission import Holder
from sidekick_testbed.server_stub.handler import SessionHandler
from sidekick_testbed.server_stub.state import RECEIVE_SIZE, STREAM_ERRORS, ServerState

__all__ = ["HttpAnswer", "HttpSessions"]

log = logging.getLogger("sidekick.server")


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


class _HttpLink:
    """Times of one HTTP connection: its start, its last traffic, the first byte of the request
    head under way (infinity between requests)."""

    __slots__ = ("started", "at", "head_at", "evicted")

    def __init__(self, now: float) -> None:
        self.started = now
        self.at = now
        self.head_at = math.inf
        self.evicted = False


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
    """The HTTP connections and sessions of one server."""

    def __init__(self, server: ServerState) -> None:
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

    async def serve_connection(self, stream: trio.abc.Stream, address: str | None) -> None:
        """Serve one HTTP/1.1 connection (any number of requests, of any sessions). ``address`` is
        the client's: until the connection has carried a request of an authenticated session it
        holds a place before authentication."""
        limits = self.server.limits
        binding = HttpServerBinding(max_body=limits.max_http_body, max_header=limits.max_http_header)
        scope = trio.CancelScope()
        link = _HttpLink(trio.current_time())

        def evict() -> None:
            link.evicted = True
            scope.cancel()
            self.server.evicted("HTTP connection")

        holder = self.server.admit(address, evict)
        self.server.metrics.http_connections += 1
        send_before = getattr(stream, "send_all_before", None)
        try:
            with scope:
                while True:
                    request = await self._next_request(binding, stream, link, holder, scope)
                    if request is None:
                        return
                    answer = await self.answer(request, address)
                    self.server.metrics.http_status[answer.status] += 1
                    if holder.holding:
                        if answer.authenticated:
                            self.server.release(holder)  # the connection carries an authenticated session
                        else:
                            self.server.admission.progress(holder, trio.current_time())
                    body = answer.body if answer.status == 200 else answer.text.encode()
                    content_type = "application/x-sidekick-frames" if answer.status == 200 else "text/plain"
                    out = binding.respond(answer.status, body, session_token=answer.token, content_type=content_type,
                                          retry_after=answer.retry_after)
                    if send_before is not None:
                        await send_before(out, trio.current_time() + limits.idle_timeout)
                    else:
                        with trio.fail_after(limits.idle_timeout):
                            await stream.send_all(out)
                    link.at = trio.current_time()
                    if binding.closing:
                        return
        except (*STREAM_ERRORS, trio.TooSlowError):
            return
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self.server.release(holder)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _next_request(self, binding: HttpServerBinding, stream: trio.abc.Stream, link: _HttpLink,
                            holder: Holder, connection: trio.CancelScope) -> HttpRequest | None:
        """The next request, or None when the connection is to close (an error or a timeout was
        answered, the peer closed, the server stops). Waits at most: ``idle_timeout`` of silence;
        ``handshake_timeout`` from a request head's first byte to its end; and, while the
        connection holds a place before authentication, ``handshake_timeout`` from its start.
        A stream that keeps deadlines itself (``receive_some_before``, a simulated link on its
        clock) is left to do it; shutdown then cancels the ``connection``'s scope while it waits."""
        limits = self.server.limits
        receive_before = getattr(stream, "receive_some_before", None)
        while True:
            try:
                request = binding.next_request()
            except HttpBindingError as exc:
                status = exc.status or 400
                self.server.metrics.http_status[status] += 1
                if status in (413, 431) or exc.code == ErrorCode.FRAME_TOO_LARGE:
                    self.server.metrics.refusals["http_size"] += 1
                elif status in (400, 411, 501, 505):
                    self.server.metrics.refusals["http_framing"] += 1
                with trio.fail_after(limits.idle_timeout):
                    await stream.send_all(binding.respond(status, str(exc).encode()[:200], content_type="text/plain"))
                return None
            if request is CONNECTION_CLOSED:
                return None
            if request is not NEED_DATA:
                assert isinstance(request, HttpRequest)
                link.head_at = math.inf
                return request
            phase = binding.receiving
            if phase == "head" and link.head_at == math.inf:  # a pipelined head already here
                link.head_at = trio.current_time()
            deadline = link.at + limits.idle_timeout
            if phase == "head":
                deadline = min(deadline, link.head_at + limits.handshake_timeout)
            if holder.holding:
                deadline = min(deadline, link.started + limits.handshake_timeout)
            late = False
            if receive_before is not None:
                self.server.wait_scopes.add(connection)
                try:
                    data = await receive_before(RECEIVE_SIZE, deadline)
                except trio.TooSlowError:
                    late = True
                finally:
                    self.server.wait_scopes.discard(connection)
            else:
                with trio.CancelScope(deadline=deadline) as waiting:
                    self.server.wait_scopes.add(waiting)
                    try:
                        data = await stream.receive_some(RECEIVE_SIZE)
                    finally:
                        self.server.wait_scopes.discard(waiting)
                late = waiting.cancelled_caught
            if late:
                if self.server.shutting_down:
                    return None
                if holder.holding and trio.current_time() >= link.started + limits.handshake_timeout:
                    self.server.metrics.refusals["handshake_timeout"] += 1
                elif phase == "nothing":
                    self.server.metrics.refusals["http_idle"] += 1
                else:
                    self.server.metrics.refusals["http_request_timeout"] += 1
                if phase != "nothing":  # a request was on its way: say why it is not answered
                    self.server.metrics.http_status[408] += 1
                    with trio.move_on_after(limits.error_linger):
                        await stream.send_all(binding.timed_out())
                return None
            now = trio.current_time()
            if data:
                link.at = now
            binding.receive_data(bytes(data))
            if link.head_at == math.inf and binding.receiving == "head":
                link.head_at = now
