"""The raw TCP binding's sessions: one protocol session per stream, each read and write on a deadline.

``RawSessions.serve`` runs one session's loop: frames in, the handler's answers out, and the limits
of ``Limits`` (idle and handshake timeouts, session time and byte budgets, a PING to a silent link,
a linger after a fatal ERROR). It counts the sessions in progress so that shutdown can wait for them.
"""

from __future__ import annotations

import logging
import math

import trio

from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError
from sidekick_testbed.protocol.messages import Hello, Ping
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA
from sidekick_testbed.protocol.states import SessionState
from sidekick_testbed.server_stub.admission import Holder
from sidekick_testbed.server_stub.handler import SessionHandler
from sidekick_testbed.server_stub.state import RECEIVE_SIZE, STREAM_ERRORS, ServerState

__all__ = ["RawSessions"]

log = logging.getLogger("sidekick.server")


class _Closed(Exception):
    """The connection is gone or must end now."""


class _Late(_Closed):
    """A read or a write missed its deadline."""


class _SessionIO:
    """A raw session's reads and writes, each bounded by a deadline, at one cancel scope per
    session rather than one per frame. The scope's deadline is moved to the read or write under
    way and back to infinity between them, so a frame's handling (a commit) is never cut short.
    A stream that keeps deadlines itself (``receive_some_before`` and ``send_all_before``,
    raising ``trio.TooSlowError``: a simulated link on its clock) is left to do it. ``late`` names
    the read or write under way ("" between them): after a timeout, the one that missed it."""

    __slots__ = ("stream", "scope", "late", "inside", "evicted", "probing", "_receive_before", "_send_before")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.late = ""
        self.inside = False  # the session's loop runs inside ``scope``
        self.evicted = False  # the connection lost its place before authenticating
        self.probing = False  # the write under way is the server's own PING
        self._receive_before = getattr(stream, "receive_some_before", None)
        self._send_before = getattr(stream, "send_all_before", None)

    async def read(self, deadline: float) -> bytes | bytearray:
        """Up to RECEIVE_SIZE bytes; ``_Late`` (or the scope's Cancelled) at ``deadline``."""
        self.late = "read"
        if self._receive_before is not None:
            try:
                data: bytes | bytearray = await self._receive_before(RECEIVE_SIZE, deadline)
            except trio.TooSlowError:
                raise _Late("no data before the deadline") from None
        else:
            scope = self.scope
            scope.deadline = deadline
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if scope.cancel_called:  # arrived just as the deadline came: still too late
                raise _Late("no data before the deadline")
            scope.deadline = math.inf
        self.late = ""
        return data

    async def write(self, data: bytes, deadline: float) -> None:
        """Write all of ``data``; ``_Late`` (or the scope's Cancelled) at ``deadline``."""
        if self._send_before is not None:
            try:
                await self._send_before(data, deadline)
            except trio.TooSlowError:
                self.late = "write"
                raise _Late("peer does not read") from None
        elif self.inside:
            scope = self.scope
            scope.deadline = deadline
            self.late = "write"
            await self.stream.send_all(data)
            if scope.cancel_called:  # written just as the deadline came: still too late
                raise _Late("peer does not read")
            scope.deadline = math.inf
            self.late = ""
        else:  # after the loop (a final ERROR): a scope of its own
            with trio.CancelScope(deadline=deadline) as sending:
                await self.stream.send_all(data)
            if sending.cancelled_caught:
                self.late = "write"
                raise _Late("peer does not read")


class _Progress:
    """When a raw session's link was last not silent: bytes received or a write finished."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class RawSessions:
    """The raw binding's sessions of one server (see the module docstring)."""

    def __init__(self, server: ServerState) -> None:
        self.server = server
        self._count = 0
        self._done = trio.Event()

    def __len__(self) -> int:
        return self._count

    async def all_ended(self) -> None:
        """Return once no session is in progress."""
        if self._count:
            await self._done.wait()

    async def serve(self, stream: trio.abc.Stream, address: str | None) -> None:
        """Serve one session on ``stream``; returns when it is over. ``address`` is the client
        address the bounds before authentication count."""
        progress = _Progress(trio.current_time())
        io = _SessionIO(stream)

        async def write(data: bytes) -> None:
            try:
                await io.write(data, trio.current_time() + self.server.limits.idle_timeout)
            except _Late:
                self.server.metrics.refusals["send_timeout"] += 1
                raise
            except STREAM_ERRORS as exc:
                raise _Closed(str(exc)) from None
            if not io.probing:
                progress.at = trio.current_time()  # a slow link that keeps reading is not idle

        def evict() -> None:
            io.evicted = True
            io.scope.cancel()
            self.server.evicted("raw connection")

        handler = SessionHandler(self.server, write, binding="tcp", address=address)
        holder = self.server.admit(address, evict)
        self.server.session_started(handler)
        self._count += 1
        try:
            await self._raw_session(handler, io, progress, holder)
        except _Closed:
            pass
        except Exception:  # a bug must not take the server down; the session ends
            log.exception("session failed")
            handler.summary.outcome = "internal error"
            try:
                await handler.fail(ErrorCode.INTERNAL, "internal server error")
            except (_Closed, Exception):
                pass
        finally:
            self.server.release(holder)
            self.server.session_ended(handler)
            self._count -= 1
            if self._count == 0:
                self._done.set()
                self._done = trio.Event()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _raw_session(self, handler: SessionHandler, io: _SessionIO, progress: _Progress,
                           holder: Holder) -> None:
        limits = self.server.limits
        session = handler.session
        budget_deadline = handler.summary.started + limits.session_time
        handshake_deadline = handler.summary.started + limits.handshake_timeout
        received = 0
        probe_at = math.inf
        while True:  # one pass per cancel scope: a PING (the scope's deadline passed) starts another
            scope = io.scope = trio.CancelScope()
            if io.evicted:
                scope.cancel()
            with scope:
                io.inside = True
                try:
                    while not handler.closed:
                        try:
                            event = session.next_event()
                        except RemoteProtocolError as exc:
                            await handler.refuse(exc)
                            break
                        if event is CONNECTION_CLOSED:
                            return
                        if event is not NEED_DATA:
                            if holder.holding:
                                self.server.admission.progress(holder, trio.current_time())
                                if isinstance(event, Hello):
                                    handler.over_capacity = self.server.full
                            await handler.handle(event)
                            if holder.holding and handler.authenticated:
                                self.server.release(holder)
                                self.server.session_authenticated(handler)
                            continue
                        if self.server.shutting_down and handler.authenticated:
                            await handler.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
                            break
                        deadline = min(progress.at + limits.idle_timeout, budget_deadline)
                        if holder.holding:
                            deadline = min(deadline, handshake_deadline)
                        probe_at = math.inf
                        if session.state is SessionState.READY and handler.authenticated:
                            probe_at = progress.at + limits.probe_after
                        self.server.wait_scopes.add(scope)  # shutdown cancels a session waiting for data
                        try:
                            data = await io.read(min(deadline, probe_at))
                        except STREAM_ERRORS:
                            return
                        finally:
                            self.server.wait_scopes.discard(scope)
                        if data:
                            progress.at = trio.current_time()  # any byte breaks the silence
                        received += len(data)
                        self.server.metrics.bytes_in += len(data)
                        if received > limits.session_bytes:
                            self.server.metrics.refusals["session_bytes"] += 1
                            await handler.fail(ErrorCode.BUDGET_EXCEEDED, "session byte budget exceeded")
                            break
                        session.receive_data(bytes(data))
                except _Late:
                    pass
                finally:
                    io.inside = False
            now = trio.current_time()
            if (io.late == "read" and not io.evicted and not self.server.shutting_down and now >= probe_at
                    and now < min(progress.at + limits.idle_timeout, budget_deadline)):
                io.late = ""
                await self._probe(handler, io)
                continue
            break
        if io.evicted:  # closed without a frame (docs/PROTOCOL.md R-TCP-6)
            handler.summary.outcome = "evicted"
            return
        if io.late == "write":
            if scope.cancelled_caught:  # the scope, not ``write``, ended it: counted here
                self.server.metrics.refusals["send_timeout"] += 1
            return  # the peer does not read: nothing more can reach it
        if io.late == "read":
            now = trio.current_time()
            if self.server.shutting_down:
                await handler.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
            elif now >= budget_deadline:
                self.server.metrics.refusals["session_time"] += 1
                await handler.fail(ErrorCode.BUDGET_EXCEEDED, "session time budget exceeded")
            elif holder.holding and now >= handshake_deadline:
                self.server.metrics.refusals["handshake_timeout"] += 1
                await handler.fail(ErrorCode.TIMEOUT, f"handshake not completed within {limits.handshake_timeout:g} s",
                                   outcome="handshake timeout")
            else:
                self.server.metrics.refusals["idle_timeout"] += 1
                await handler.fail(ErrorCode.TIMEOUT, f"the link was silent for {limits.idle_timeout:g} s")
        if handler.summary.outcome not in ("bye", "open") and handler.closed:
            await self._linger(io.stream)

    async def _probe(self, handler: SessionHandler, io: _SessionIO) -> None:
        """Send a PING to a session whose link has been silent (R-STATE-7); its write does not
        count as traffic, so a device that does not answer still times out."""
        io.probing = True
        try:
            await handler.send(Ping(self.server.rng.getrandbits(63)))
        finally:
            io.probing = False
        self.server.metrics.pings += 1

    async def _linger(self, stream: trio.abc.Stream) -> None:
        """After a fatal ERROR: half-close, then read and discard briefly so the ERROR is not reset."""
        try:
            send_eof = getattr(stream, "send_eof", None)
            if send_eof is not None:
                await send_eof()
            discarded = 0
            with trio.move_on_after(self.server.limits.error_linger):
                while discarded < 4 * RECEIVE_SIZE:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    discarded += len(data)
        except (*STREAM_ERRORS, trio.BusyResourceError):
            pass
