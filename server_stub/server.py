"""The reference sync server: raw TCP and HTTP bindings, admin API, one task per session.

``SyncServer`` serves one session per raw stream (``serve_stream``) and one HTTP connection per
stream (``serve_http_stream``) on any Trio stream, so simulations run it over memory streams;
``run`` listens on TCP ports. Every session runs in its own task; limits end only the session
that broke them. Randomness (server nonces, HTTP tokens) comes from the ``rng`` passed in, time
from the Trio clock.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import trio

from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError
from sidekick_testbed.protocol.http import HttpBindingError, HttpRequest, HttpServerBinding
from sidekick_testbed.protocol.messages import Hello, Ping
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA
from sidekick_testbed.protocol.states import SessionState
from sidekick_testbed.server_stub.admission import Admission, Holder
from sidekick_testbed.server_stub.auth_throttle import AuthThrottle, Bucket
from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.handler import SessionHandler
from sidekick_testbed.server_stub.http_binding import HttpSessions
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.metrics import Metrics
from sidekick_testbed.server_stub.session_log import log_session
from sidekick_testbed.server_stub.storage import Storage

__all__ = ["Address", "ServerAddresses", "SyncServer", "peer_address"]

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


def peer_address(stream: trio.abc.Stream) -> str | None:
    """The client address a stream's socket is connected to, as the admission bounds count it:
    an IPv4 address, or the /64 network of an IPv6 one (one subscriber's share); None for a
    stream without a socket (in-process)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        name = sock.getpeername()
    except OSError:
        return None
    host = name[0] if isinstance(name, tuple) else str(name)
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


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


class _HttpLink:
    """Times of one HTTP connection: its start, its last traffic, the first byte of the request
    head under way (infinity between requests)."""

    __slots__ = ("started", "at", "head_at", "evicted")

    def __init__(self, now: float) -> None:
        self.started = now
        self.at = now
        self.head_at = math.inf
        self.evicted = False


class _Progress:
    """When a raw session's link was last not silent: bytes received or a write finished."""

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
        limits = self.limits
        self.admission = Admission(limits.max_handshakes, limits.max_handshakes_per_address)
        """Places of connections and sessions before authentication (``server_stub.admission``)."""
        self.auth_throttle = AuthThrottle(Bucket(limits.auth_failures, limits.auth_failure_refill),
                                          Bucket(limits.address_auth_failures, limits.address_auth_failure_refill))
        self.authenticated: set[SessionHandler] = set()
        """Sessions past HELLO_OK: what ``Limits.max_sessions`` bounds."""
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

    def session_authenticated(self, handler: SessionHandler) -> None:
        """Count a session that reached HELLO_OK."""
        self.authenticated.add(handler)
        self.metrics.sessions_authenticated = len(self.authenticated)

    def session_ended(self, handler: SessionHandler) -> None:
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

    def admit(self, address: str | None, on_evict: Any) -> Holder:
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

    def shutdown(self) -> None:
        """Ask ``run`` to stop: no new sessions, in-flight commits finish, sessions end."""
        self.shutting_down = True
        self._stop.set()
        for scope in list(self._wait_scopes):
            scope.cancel()

    # ------------------------------------------------------------------ raw binding

    async def serve_stream(self, stream: trio.abc.Stream, *, address: str | None = None) -> None:
        """Serve one session of the raw binding on ``stream``; returns when it is over. ``address``
        (default: the stream's peer, ``peer_address``) is the client address the bounds before
        authentication count."""
        if address is None:
            address = peer_address(stream)
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
            if not io.probing:
                progress.at = trio.current_time()  # a slow link that keeps reading is not idle

        def evict() -> None:
            io.evicted = True
            io.scope.cancel()
            self.evicted("raw connection")

        handler = SessionHandler(self, write, binding="tcp", address=address)
        holder = self.admit(address, evict)
        self.session_started(handler)
        self._raw_sessions += 1
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
            self.release(holder)
            self.session_ended(handler)
            self._raw_sessions -= 1
            if self._raw_sessions == 0:
                self._raw_done.set()
                self._raw_done = trio.Event()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _raw_session(self, handler: SessionHandler, io: _SessionIO, progress: _Progress,
                           holder: Holder) -> None:
        limits = self.limits
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
                                self.admission.progress(holder, trio.current_time())
                                if isinstance(event, Hello):
                                    handler.over_capacity = self.full
                            await handler.handle(event)
                            if holder.holding and handler.authenticated:
                                self.release(holder)
                                self.session_authenticated(handler)
                            continue
                        if self.shutting_down and handler.authenticated:
                            await handler.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
                            break
                        deadline = min(progress.at + limits.idle_timeout, budget_deadline)
                        if holder.holding:
                            deadline = min(deadline, handshake_deadline)
                        probe_at = math.inf
                        if session.state is SessionState.READY and handler.authenticated:
                            probe_at = progress.at + limits.probe_after
                        self._wait_scopes.add(scope)  # shutdown cancels a session waiting for data
                        try:
                            data = await io.read(min(deadline, probe_at))
                        except _STREAM_ERRORS:
                            return
                        finally:
                            self._wait_scopes.discard(scope)
                        if data:
                            progress.at = trio.current_time()  # any byte breaks the silence
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
            now = trio.current_time()
            if (io.late == "read" and not io.evicted and not self.shutting_down and now >= probe_at
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
                self.metrics.refusals["send_timeout"] += 1
            return  # the peer does not read: nothing more can reach it
        if io.late == "read":
            now = trio.current_time()
            if self.shutting_down:
                await handler.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
            elif now >= budget_deadline:
                self.metrics.refusals["session_time"] += 1
                await handler.fail(ErrorCode.BUDGET_EXCEEDED, "session time budget exceeded")
            elif holder.holding and now >= handshake_deadline:
                self.metrics.refusals["handshake_timeout"] += 1
                await handler.fail(ErrorCode.TIMEOUT, f"handshake not completed within {limits.handshake_timeout:g} s",
                                   outcome="handshake timeout")
            else:
                self.metrics.refusals["idle_timeout"] += 1
                await handler.fail(ErrorCode.TIMEOUT, f"the link was silent for {limits.idle_timeout:g} s")
        if handler.summary.outcome not in ("bye", "open") and handler.closed:
            await self._linger(io.stream)

    async def _probe(self, handler: SessionHandler, io: _SessionIO) -> None:
        """Send a PING to a session whose link has been silent (R-STATE-7); its write does not
        count as traffic, so a device that does not answer still times out."""
        io.probing = True
        try:
            await handler.send(Ping(self.rng.getrandbits(63)))
        finally:
            io.probing = False
        self.metrics.pings += 1

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

    async def serve_http_stream(self, stream: trio.abc.Stream, *, address: str | None = None) -> None:
        """Serve one HTTP/1.1 connection (any number of requests, of any sessions). ``address`` as
        for ``serve_stream``: until the connection has carried a request of an authenticated
        session it holds a place before authentication."""
        if address is None:
            address = peer_address(stream)
        limits = self.limits
        binding = HttpServerBinding(max_body=limits.max_http_body, max_header=limits.max_http_header)
        scope = trio.CancelScope()
        link = _HttpLink(trio.current_time())

        def evict() -> None:
            link.evicted = True
            scope.cancel()
            self.evicted("HTTP connection")

        holder = self.admit(address, evict)
        self.metrics.http_connections += 1
        try:
            with scope:
                while True:
                    request = await self._next_request(binding, stream, link, holder)
                    if request is None:
                        return
                    answer = await self.http_sessions.answer(request, address)
                    self.metrics.http_status[answer.status] += 1
                    if holder.holding:
                        if answer.authenticated:
                            self.release(holder)  # the connection carries an authenticated session
                        else:
                            self.admission.progress(holder, trio.current_time())
                    body = answer.body if answer.status == 200 else answer.text.encode()
                    content_type = "application/x-sidekick-frames" if answer.status == 200 else "text/plain"
                    out = binding.respond(answer.status, body, session_token=answer.token, content_type=content_type,
                                          retry_after=answer.retry_after)
                    with trio.fail_after(limits.idle_timeout):
                        await stream.send_all(out)
                    link.at = trio.current_time()
                    if binding.closing:
                        return
        except (*_STREAM_ERRORS, trio.TooSlowError):
            return
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self.release(holder)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _next_request(self, binding: HttpServerBinding, stream: trio.abc.Stream, link: _HttpLink,
                            holder: Holder) -> HttpRequest | None:
        """The next request, or None when the connection is to close (an error or a timeout was
        answered, the peer closed, the server stops). Waits at most: ``idle_timeout`` of silence;
        ``handshake_timeout`` from a request head's first byte to its end; and, while the
        connection holds a place before authentication, ``handshake_timeout`` from its start."""
        limits = self.limits
        while True:
            try:
                request = binding.next_request()
            except HttpBindingError as exc:
                status = exc.status or 400
                self.metrics.http_status[status] += 1
                if status in (413, 431) or exc.code == ErrorCode.FRAME_TOO_LARGE:
                    self.metrics.refusals["http_size"] += 1
                elif status in (400, 411, 501, 505):
                    self.metrics.refusals["http_framing"] += 1
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
            with trio.CancelScope(deadline=deadline) as waiting:
                self._wait_scopes.add(waiting)
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                finally:
                    self._wait_scopes.discard(waiting)
            if waiting.cancelled_caught:
                if self.shutting_down:
                    return None
                if holder.holding and trio.current_time() >= link.started + limits.handshake_timeout:
                    self.metrics.refusals["handshake_timeout"] += 1
                elif phase == "nothing":
                    self.metrics.refusals["http_idle"] += 1
                else:
                    self.metrics.refusals["http_request_timeout"] += 1
                if phase != "nothing":  # a request was on its way: say why it is not answered
                    self.metrics.http_status[408] += 1
                    with trio.move_on_after(limits.error_linger):
                        await stream.send_all(binding.timed_out())
                return None
            now = trio.current_time()
            if data:
                link.at = now
            binding.receive_data(bytes(data))
            if link.head_at == math.inf and binding.receiving == "head":
                link.head_at = now

    # ------------------------------------------------------------------ listening

    async def run(self, *, tcp: Address | None = None, http: Address | None = None,
                  admin: Address | None = None,
                  task_status: trio.TaskStatus[ServerAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the given addresses until ``shutdown``; ``task_status.started`` gets the addresses."""
        from sidekick_testbed.server_stub.admin import serve_admin_stream

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
        limits = self.limits
        while True:
            await trio.sleep(max(0.5, min(limits.idle_timeout, limits.handshake_timeout) / 4))
            self.http_sessions.expire()
