"""The reference sync server: raw TCP and HTTP bindings, admin API, one task per session.

``SyncServer`` serves one session per raw stream (``serve_stream``) and one HTTP connection per
stream (``serve_http_stream``) on any Trio stream, so simulations run it over memory streams;
``run`` listens on TCP ports. Every session runs in its own task; limits end only the session
that broke them. Randomness (server nonces, HTTP tokens) comes from the ``rng`` passed in, time
from the Trio clock.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import trio

from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.http import HttpBindingError, HttpRequest, HttpServerBinding
from protocol.session import CONNECTION_CLOSED, NEED_DATA
from server_stub.faults import FaultSet
from server_stub.handler import SessionHandler
from server_stub.http_binding import HttpSessions
from server_stub.limits import Limits
from server_stub.metrics import Metrics
from server_stub.session_log import log_session
from server_stub.storage import Storage

__all__ = ["Address", "ServerAddresses", "SyncServer"]

log = logging.getLogger("sidekick.server")

RECEIVE_SIZE = 65536
Address = tuple[str, int]
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class ServerAddresses:
    """Where ``run`` listens (ports resolved when 0 was asked)."""

    tcp: Address | None = None
    http: Address | None = None
    admin: Address | None = None


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

    __slots__ = ("stream", "scope", "late", "inside", "_receive_before", "_send_before")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.late = ""
        self.inside = False  # the session's loop runs inside ``scope``
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
    """When a raw session last made progress: a complete frame received or a write finished."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class SyncServer:
    """The reference server (see the module docstring)."""

    def __init__(self, storage: Storage, *, faults: FaultSet | None = None, limits: Limits | None = None,
                 rng: random.Random) -> None:
        self.storage = storage
        if faults is not None:
            storage.faults = faults
        self.faults: FaultSet = storage.faults
        self.limits = limits if limits is not None else Limits()
        self.rng = rng
        self.metrics = Metrics()
        self.http_sessions = HttpSessions(self)
        self.active_sessions = 0
        self.shutting_down = False
        self.admin_token: str | None = None
        self._received: dict[tuple[str, bytes], int] = {}
        self._wait_scopes: set[trio.CancelScope] = set()
        self._stop = trio.Event()
        self._raw_sessions = 0
        self._raw_done = trio.Event()
        self.snapshots: dict[str, Any] = {}

    # ------------------------------------------------------------------ bookkeeping

    def session_started(self, handler: SessionHandler) -> None:
        """Count a session that began."""
        self.active_sessions += 1
        self.metrics.sessions_active = self.active_sessions
        self.metrics.sessions_total[handler.summary.binding] += 1

    def session_ended(self, handler: SessionHandler) -> None:
        """Count a session that ended and log its line."""
        self.active_sessions -= 1
        self.metrics.sessions_active = self.active_sessions
        summary = handler.summary
        if summary.outcome == "open":
            summary.outcome = "dropped"
        summary.duration = trio.current_time() - summary.started
        log_session(summary)

    def note_received(self, account: str, device_id: bytes, lsn: int) -> None:
        """Remember the highest LSN received from a device (only the wrong-watermark fault reads it)."""
        key = (account, device_id)
        self._received[key] = max(self._received.get(key, 0), lsn)

    def received_lsn(self, account: str, device_id: bytes) -> int:
        """The highest LSN ever received from the device by this process."""
        return self._received.get((account, device_id), 0)

    def shutdown(self) -> None:
        """Ask ``run`` to stop: no new sessions, in-flight commits finish, sessions end."""
        self.shutting_down = True
        self._stop.set()
        for scope in list(self._wait_scopes):
            scope.cancel()

    # ------------------------------------------------------------------ raw binding

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one session of the raw binding on ``stream``; returns when it is over."""
        over = self.active_sessions >= self.limits.max_sessions
        progress = _Progress(trio.current_time())
        io = _SessionIO(stream)

        async def write(data: bytes) -> None:
            try:
                await io.write(data, trio.current_time() + self.limits.idle_timeout)
            except _Late:
                self.metrics.refusals["send_timeout"] += 1
                raise
            except _STREAM_ERRORS as exc:
                raise _Closed(str(exc)) from None
            progress.at = trio.current_time()  # a slow link that keeps reading is not idle

        handler = SessionHandler(self, write, binding="tcp", over_capacity=over)
        self.session_started(handler)
        self._raw_sessions += 1
        try:
            await self._raw_session(handler, io, progress)
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
            self.session_ended(handler)
            self._raw_sessions -= 1
            if self._raw_sessions == 0:
                self._raw_done.set()
                self._raw_done = trio.Event()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _raw_session(self, handler: SessionHandler, io: _SessionIO, progress: _Progress) -> None:
        limits = self.limits
        session = handler.session
        budget_deadline = handler.summary.started + limits.session_time
        received = 0
        scope = io.scope
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
                        progress.at = trio.current_time()
                        await handler.handle(event)
                        continue
                    if self.shutting_down and handler.authenticated:
                        await handler.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
                        break
                    self._wait_scopes.add(scope)  # shutdown cancels a session waiting for data
                    try:
                        data = await io.read(min(progress.at + limits.idle_timeout, budget_deadline))
                    except _STREAM_ERRORS:
                        return
                    finally:
                        self._wait_scopes.discard(scope)
                    received += len(data)
                    self.metrics.bytes_in += len(data)
                    if received > limits.session_bytes:
                        self.metrics.refusals["session_bytes"] += 1
                        await handler.fail(ErrorCode.BUDGET_EXCEEDED, "session byte budget exceeded")
                        break
                    session.receive_data(bytes(data))
            except _Late:
                pass
            finally:
                io.inside = False
        if io.late == "write":
            if scope.cancelled_caught:  # the scope, not ``write``, ended it: counted here
                self.metrics.refusals["send_timeout"] += 1
            return  # the peer does not read: nothing more can reach it
        if io.late == "read":
            if self.shutting_down:
                await handler.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
            elif trio.current_time() >= budget_deadline:
                self.metrics.refusals["session_time"] += 1
                await handler.fail(ErrorCode.BUDGET_EXCEEDED, "session time budget exceeded")
            else:
                self.metrics.refusals["idle_timeout"] += 1
                await handler.fail(ErrorCode.TIMEOUT, "no complete frame within the idle timeout")
        if handler.summary.outcome not in ("bye", "open"):
            await self._linger(io.stream)

    async def _linger(self, stream: trio.abc.Stream) -> None:
        """After a fatal ERROR: half-close, then read and discard briefly so the ERROR is not reset."""
        try:
            send_eof = getattr(stream, "send_eof", None)
            if send_eof is not None:
                await send_eof()
            discarded = 0
            with trio.move_on_after(self.limits.error_linger):
                while discarded < 4 * RECEIVE_SIZE:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    discarded += len(data)
        except (*_STREAM_ERRORS, trio.BusyResourceError):
            pass

    # ------------------------------------------------------------------ HTTP binding

    async def serve_http_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one HTTP/1.1 connection (any number of requests, of any sessions)."""
        limits = self.limits
        binding = HttpServerBinding(max_body=limits.max_http_body, max_header=limits.max_http_header)
        try:
            while True:
                deadline = trio.current_time() + limits.idle_timeout
                request = await self._next_request(binding, stream, deadline)
                if request is None:
                    return
                answer = await self.http_sessions.answer(request)
                self.metrics.http_status[answer.status] += 1
                body = answer.body if answer.status == 200 else answer.text.encode()
                content_type = "application/x-sidekick-frames" if answer.status == 200 else "text/plain"
                out = binding.respond(answer.status, body, session_token=answer.token, content_type=content_type)
                with trio.fail_after(limits.idle_timeout):
                    await stream.send_all(out)
                if binding.closing:
                    return
        except (*_STREAM_ERRORS, trio.TooSlowError):
            return
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _next_request(self, binding: HttpServerBinding, stream: trio.abc.Stream,
                            deadline: float) -> HttpRequest | None:
        while True:
            try:
                request = binding.next_request()
            except HttpBindingError as exc:
                status = exc.status or 400
                self.metrics.http_status[status] += 1
                if status in (413, 431) or exc.code == ErrorCode.FRAME_TOO_LARGE:
                    self.metrics.refusals["http_size"] += 1
                await stream.send_all(binding.respond(status, str(exc).encode()[:200], content_type="text/plain"))
                return None
            if request is CONNECTION_CLOSED:
                return None
            if request is not NEED_DATA:
                assert isinstance(request, HttpRequest)
                return request
            with trio.CancelScope(deadline=deadline) as scope:
                self._wait_scopes.add(scope)
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                finally:
                    self._wait_scopes.discard(scope)
            if scope.cancelled_caught:
                if not self.shutting_down:
                    self.metrics.refusals["http_idle"] += 1
                return None
            binding.receive_data(bytes(data))

    # ------------------------------------------------------------------ listening

    async def run(self, *, tcp: Address | None = None, http: Address | None = None,
                  admin: Address | None = None,
                  task_status: trio.TaskStatus[ServerAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the given addresses until ``shutdown``; ``task_status.started`` gets the addresses."""
        from server_stub.admin import serve_admin_stream

        bound: dict[str, Address] = {}
        async with trio.open_nursery() as outer:
            sessions_scope = trio.CancelScope()
            listen_scopes = [trio.CancelScope(), trio.CancelScope()]
            admin_scope = trio.CancelScope()

            async def guarded(handler: Any, stream: Any) -> None:
                try:
                    await handler(stream)
                except Exception:
                    log.exception("connection handler failed")

            async def sessions_nursery(task_status: trio.TaskStatus[trio.Nursery]) -> None:
                with sessions_scope:
                    async with trio.open_nursery() as nursery:
                        task_status.started(nursery)
                        await trio.sleep_forever()

            session_nursery = await outer.start(sessions_nursery)
            targets = [("tcp", tcp, self.serve_stream, listen_scopes[0]),
                       ("http", http, self.serve_http_stream, listen_scopes[1]),
                       ("admin", admin, lambda s: serve_admin_stream(self, s), admin_scope)]
            for name, address, handler, scope in targets:
                if address is None:
                    continue
                host, port = address
                try:
                    listeners = await trio.open_tcp_listeners(port, host=host)
                except OSError as exc:  # say which of the addresses could not be had
                    raise OSError(exc.errno, f"{exc.strerror or exc} ({name} on {host}:{port})") from exc
                sockname = listeners[0].socket.getsockname()
                bound[name] = (sockname[0], sockname[1])

                async def serve(listeners: Any = listeners, handler: Any = handler, scope: Any = scope) -> None:
                    with scope:
                        await trio.serve_listeners(lambda s: guarded(handler, s), listeners,
                                                   handler_nursery=session_nursery)

                outer.start_soon(serve)
            outer.start_soon(self._reaper)
            log.info("serving tcp=%s http=%s admin=%s generation=%#x server_id=%s", bound.get("tcp"),
                     bound.get("http"), bound.get("admin"), self.storage.generation, self.storage.server_id.hex())
            task_status.started(ServerAddresses(bound.get("tcp"), bound.get("http"), bound.get("admin")))
            await self._stop.wait()
            log.info("shutting down: %d session(s) in progress", self.active_sessions)
            self.shutting_down = True
            for scope in listen_scopes:
                scope.cancel()
            for scope in list(self._wait_scopes):
                scope.cancel()
            with trio.move_on_after(self.limits.shutdown_grace):
                if self._raw_sessions:
                    await self._raw_done.wait()
            self.http_sessions.close_all()
            sessions_scope.cancel()
            admin_scope.cancel()
            outer.cancel_scope.cancel()
        log.info("stopped")

    async def _reaper(self) -> None:
        while True:
            await trio.sleep(max(0.5, self.limits.idle_timeout / 4))
            self.http_sessions.expire()
