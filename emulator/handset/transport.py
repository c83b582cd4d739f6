"""How a sync client reaches a server: a raw byte stream (TCP or in-memory) or HTTP POSTs.

A ``Channel`` is the device's side of one connection; a ``Connector`` opens a fresh one per sync
attempt. Every failure of the connection itself surfaces as ``TransportError`` (retryable), never
as a bare ``OSError`` or Trio resource error.

Both TCP connectors can go through a forward HTTP proxy (``emulator.handset.endpoint.ProxyURL``): the HTTP
binding sends its requests to the proxy in absolute form (``POST http://host:port/sync``), the raw
binding asks the proxy for a tunnel (``CONNECT host:port``) and runs inside it.
"""

from __future__ import annotations

import math
import os
import select
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from sidekick_testbed.emulator.capture.streams import ClientStream, capture_stream
from sidekick_testbed.emulator.handset.endpoint import ProxyURL
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.http_client import (
    HttpClientBinding,
    HttpResponse,
    HttpTunnelClient,
    TunnelOpen,
)
from sidekick_testbed.protocol.http_common import DEFAULT_PATH, HttpBindingError
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA

__all__ = [
    "RECEIVE_SIZE",
    "Channel",
    "ConnectFailed",
    "connect_error_reason",
    "CuttingChannel",
    "Connector",
    "HttpChannel",
    "HttpStatusError",
    "StreamChannel",
    "TransportError",
    "TransportTimeout",
    "cutting_connector",
    "http_connector",
    "http_memory_connector",
    "memory_connector",
    "stream_channel",
    "tcp_connector",
]

RECEIVE_SIZE = 65536
PROXY_TIMEOUT = 30.0
"""Seconds a forward proxy has to answer a CONNECT."""


class TransportError(Exception):
    """The connection failed (refused, reset, closed mid-exchange, bad HTTP answer)."""


class TransportTimeout(TransportError):
    """A send or a receive reached its deadline (the connection may still be up)."""


class ConnectFailed(TransportError):
    """The server could not be reached at all."""


class HttpStatusError(TransportError):
    """The HTTP binding answered with a status other than 200."""

    def __init__(self, status: int, text: str = "") -> None:
        super().__init__(f"HTTP status {status}" + (f": {text}" if text else ""))
        self.status = status


class Channel(Protocol):
    """The device's side of one connection to a server. ``receive_some`` returns b"" when the
    peer closed. Both raise ``TransportTimeout`` at ``deadline`` (Trio time): ``send_all`` if the
    data could not be written by then (over HTTP: the POST not answered), ``receive_some`` if
    nothing arrived. The channel keeps the deadline, so a simulated link times it on its own clock."""

    async def send_all(self, data: bytes, deadline: float = math.inf) -> None: ...

    async def receive_some(self, deadline: float = math.inf) -> bytes: ...

    async def aclose(self) -> None: ...


Connector = Callable[[], Awaitable[Channel]]


class StreamChannel:
    """The raw binding: frames written to and read from a Trio stream as they are (``initial``:
    bytes already read from the stream, returned first)."""

    def __init__(self, stream: trio.abc.Stream, initial: bytes = b"") -> None:
        self._stream = stream
        self._initial = initial

    async def send_all(self, data: bytes, deadline: float = math.inf) -> None:
        """Write ``data``; TransportError if the connection is gone, TransportTimeout at ``deadline``."""
        try:
            if deadline == math.inf:  # no cancel scope to pay for
                await self._stream.send_all(data)
                return
            with trio.move_on_at(deadline):
                await self._stream.send_all(data)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(f"connection lost while sending: {exc or type(exc).__name__}") from exc
        raise TransportTimeout("the server took no data before the deadline")

    async def receive_some(self, deadline: float = math.inf) -> bytes:
        """Read what has arrived (b"" when the peer closed); TransportTimeout at ``deadline``."""
        if self._initial:
            data, self._initial = self._initial, b""
            return data
        try:
            if deadline == math.inf:
                return bytes(await self._stream.receive_some(RECEIVE_SIZE))
            with trio.move_on_at(deadline):
                return bytes(await self._stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(f"connection lost while receiving: {exc or type(exc).__name__}") from exc
        raise TransportTimeout("nothing received before the deadline")

    async def aclose(self) -> None:
        """Close the stream (never raises)."""
        try:
            await trio.aclose_forcefully(self._stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def stream_channel(stream: trio.abc.Stream) -> Channel:
    """The raw binding over any Trio stream (TCP or a memory stream)."""
    return StreamChannel(stream)


def memory_connector(serve: Callable[[trio.abc.Stream], Awaitable[None]],
                     nursery: trio.Nursery) -> Connector:
    """A connector to an in-process server: each connection is a memory stream pair whose server
    half is handed to ``serve`` (e.g. ``SyncServer.serve_stream``) in ``nursery``."""

    async def connect() -> Channel:
        from trio.testing import memory_stream_pair  # only simulations need it (imports pytest if present)

        device_end, server_end = memory_stream_pair()
        nursery.start_soon(_serve_quietly, serve, server_end)
        return StreamChannel(device_end)

    return connect


async def _serve_quietly(serve: Callable[[trio.abc.Stream], Awaitable[None]],
                         stream: trio.abc.Stream) -> None:
    try:
        await serve(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def connect_error_reason(exc: OSError) -> str:
    """Why ``trio.open_tcp_stream`` failed, in words: the first attempt's error ("Connection
    refused"), or the resolver's ("Name or service not known"), not Trio's summary."""
    cause: BaseException = exc
    if isinstance(exc.__cause__, BaseExceptionGroup) and exc.__cause__.exceptions:
        cause = exc.__cause__.exceptions[0]
    errno = getattr(cause, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    text = getattr(cause, "strerror", None)  # the resolver's errors have negative numbers
    return str(text or cause) or type(cause).__name__


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _open_tcp(host: str, port: int, what: str = "server") -> ClientStream:
    try:
        return capture_stream(await trio.open_tcp_stream(host, port), host, port)  # recorded with --pcap
    except OSError as exc:
        raise ConnectFailed(f"cannot reach {what} {_authority(host, port)}: {connect_error_reason(exc)}") from exc


async def _open_tunnel(proxy: ProxyURL, host: str, port: int, timeout: float) -> StreamChannel:
    """A connection to ``host:port`` through ``proxy``'s CONNECT; ConnectFailed if refused or silent."""
    stream = await _open_tcp(proxy.host, proxy.port, f"proxy {proxy}")
    tunnel = HttpTunnelClient(_authority(host, port), proxy_authorization=proxy.authorization)
    try:
        with trio.move_on_after(timeout):
            await stream.send_all(tunnel.request())
            while True:
                event = tunnel.next_event()
                if isinstance(event, TunnelOpen):
                    return StreamChannel(stream, event.data)
                assert event is NEED_DATA
                tunnel.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        reason = f"the proxy did not answer CONNECT within {timeout:g} s"
    except HttpBindingError as exc:
        reason = exc.message
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        reason = f"the proxy connection failed: {exc or type(exc).__name__}"
    await trio.aclose_forcefully(stream)
    raise ConnectFailed(f"cannot reach server {_authority(host, port)} through proxy {proxy}: {reason}")


def tcp_connector(host: str, port: int, *, proxy: ProxyURL | None = None,
                  proxy_timeout: float = PROXY_TIMEOUT) -> Connector:
    """Raw binding over TCP: one new connection per call (through ``proxy``'s CONNECT if given)."""

    async def connect() -> Channel:
        if proxy is not None:
            return await _open_tunnel(proxy, host, port, proxy_timeout)
        return StreamChannel(await _open_tcp(host, port))

    return connect


class _NoAnswer(Exception):
    """A request's connection ended before any byte of its answer came."""


class HttpChannel:
    """The HTTP binding: every ``send_all`` is one POST of the frames; the answer's body is what
    ``receive_some`` returns next. The server's session token rides on every later request; if the
    server closed the connection between two requests, ``reopen`` (when given) opens another."""

    def __init__(self, stream: trio.abc.Stream, host: str, path: str = DEFAULT_PATH, *,
                 reopen: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
                 proxy: ProxyURL | None = None) -> None:
        self._stream = stream
        self._host = host
        self._path = path
        self._reopen = reopen
        self._proxy = proxy
        self._binding = self._new_binding()
        self._used = False  # the connection has carried a request
        self._token: str | None = None
        self._inbox: list[bytes] = []
        self._closed = False

    def _new_binding(self) -> HttpClientBinding:
        proxy = self._proxy
        return HttpClientBinding(self._host, path=self._path, absolute=proxy is not None,
                                 proxy_authorization=proxy.authorization if proxy is not None else None)

    async def send_all(self, data: bytes, deadline: float = math.inf) -> None:
        """POST ``data`` and queue the answer's body for ``receive_some``; TransportTimeout if the
        answer is not complete by ``deadline``."""
        if self._closed:
            raise TransportError("HTTP connection already closed")
        with trio.move_on_at(deadline):
            await self._post(data)
            return
        raise TransportTimeout("no HTTP answer from the server before the deadline")

    async def _post(self, data: bytes) -> None:
        """One request and its whole answer. The connection is reopened first if the server or a
        proxy closed it (said so, or closed it while idle without saying, as some proxies do); and
        a request on a reused connection that closes before any byte of its answer is sent once
        more on a new one: a server that did get the first copy refuses the repeated sequence
        numbers and applies nothing twice (docs/PROTOCOL.md R-HTTP-14, RFC 9112 section 9.3.1)."""
        if not self._binding.reusable or (self._used and _closed_while_idle(self._stream)):
            await self._fresh_connection()
        reused = self._used
        try:
            response = await self._exchange(data)
        except _NoAnswer as exc:
            if not reused or self._reopen is None:
                raise TransportError(str(exc)) from None
            await self._fresh_connection()
            try:
                response = await self._exchange(data)
            except _NoAnswer as again:
                raise TransportError(str(again)) from None
        if response.status != 200:
            text = response.body[:120].decode("utf-8", "replace").strip()
            raise HttpStatusError(response.status, text)
        if response.session_token:
            self._token = response.session_token
        if response.body:
            self._inbox.append(response.body)

    async def _fresh_connection(self) -> None:
        if self._reopen is None:
            raise TransportError("the server closed the HTTP connection")
        await StreamChannel(self._stream).aclose()
        self._stream = await self._reopen()
        self._binding = self._new_binding()
        self._used = False

    async def _exchange(self, data: bytes) -> HttpResponse:
        """Send one request, read its answer; ``_NoAnswer`` if the connection ended before any
        byte of the answer came."""
        raw = StreamChannel(self._stream)
        self._used = True
        received = 0
        try:
            await raw.send_all(self._binding.request(data, self._token))
            while True:
                response = self._binding.next_response()
                if isinstance(response, HttpResponse):
                    return response
                if response is CONNECTION_CLOSED:
                    raise _NoAnswer("server closed the HTTP connection before answering")
                chunk = await raw.receive_some()
                received += len(chunk)
                self._binding.receive_data(chunk)
        except HttpBindingError as exc:
            if received == 0 and exc.code == ErrorCode.TRUNCATED:
                raise _NoAnswer(f"the connection closed before any answer: {exc.message}") from exc
            raise TransportError(f"bad HTTP answer from the server: {exc}") from exc
        except TransportError as exc:
            if received == 0 and not isinstance(exc, TransportTimeout):
                raise _NoAnswer(str(exc)) from exc
            raise

    async def receive_some(self, deadline: float = math.inf) -> bytes:
        """The next queued answer body; b"" when the server has nothing more to say. Never
        waits: answers arrive with the POST (``send_all``), so ``deadline`` has nothing to bound."""
        if self._inbox:
            return self._inbox.pop(0)
        return b""

    async def aclose(self) -> None:
        """Close the connection (never raises)."""
        self._closed = True
        await StreamChannel(self._stream).aclose()


def _closed_while_idle(stream: trio.abc.Stream) -> bool:
    """Whether an idle connection has something to read (its close, or bytes nobody asked for):
    then it cannot carry another request. A look without waiting (``select`` with timeout 0), as
    HTTP clients check a kept-alive connection before they reuse it; False for a stream without
    a socket."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def http_connector(host: str, port: int, path: str = DEFAULT_PATH, *, proxy: ProxyURL | None = None) -> Connector:
    """HTTP binding over TCP: frames POSTed per request (``protocol.http_client``) to ``path``; through
    ``proxy`` (requests in absolute form) if given."""

    async def reopen() -> trio.abc.Stream:
        if proxy is not None:
            return await _open_tcp(proxy.host, proxy.port, f"proxy {proxy}")
        return await _open_tcp(host, port)

    async def connect() -> Channel:
        return HttpChannel(await reopen(), _authority(host, port), path, reopen=reopen, proxy=proxy)

    return connect


def http_memory_connector(serve_http: Callable[[trio.abc.Stream], Awaitable[None]],
                          nursery: trio.Nursery, host: str = "sidekick.invalid") -> Connector:
    """HTTP binding over an in-memory stream pair to an in-process server
    (e.g. ``SyncServer.serve_http_stream``)."""

    async def connect() -> Channel:
        from trio.testing import memory_stream_pair  # only simulations need it (imports pytest if present)

        device_end, server_end = memory_stream_pair()
        nursery.start_soon(_serve_quietly, serve_http, server_end)
        return HttpChannel(device_end, host)

    return connect


class CuttingChannel:
    """A channel that lets ``budget`` whole frames through (both directions counted), then cuts
    the connection: how tests and simulations drop a connection exactly at a message boundary."""

    def __init__(self, inner: Channel, budget: int) -> None:
        self._inner = inner
        self.budget = budget
        self.frames = 0
        self._pending = bytearray()
        self._cut = False

    async def _cut_now(self) -> None:
        self._cut = True
        await self._inner.aclose()

    async def send_all(self, data: bytes, deadline: float = math.inf) -> None:
        """Send one frame (the sync client sends one per call) unless the budget is spent."""
        if self._cut or self.frames >= self.budget:
            await self._cut_now()
            raise TransportError("connection cut")
        await self._inner.send_all(data, deadline)
        self.frames += 1
        if self.frames >= self.budget:
            await self._cut_now()

    async def receive_some(self, deadline: float = math.inf) -> bytes:
        """Whole frames only, up to the budget; then b"" (closed)."""
        while not self._cut:
            complete = _whole_frames(self._pending)
            if complete:
                out = bytearray()
                for size in complete:
                    if self.frames >= self.budget:
                        break
                    out += self._pending[:size]
                    del self._pending[:size]
                    self.frames += 1
                if self.frames >= self.budget:
                    await self._cut_now()
                if out:
                    return bytes(out)
                continue
            data = await self._inner.receive_some(deadline)
            if not data:
                self._pending.clear()
                return b""
            self._pending += data
        return b""

    async def aclose(self) -> None:
        """Close the underlying channel."""
        await self._inner.aclose()


def _whole_frames(buffer: bytearray) -> list[int]:
    """Sizes of the complete frames at the start of ``buffer`` (header length field at 10..14)."""
    sizes: list[int] = []
    offset = 0
    while len(buffer) - offset >= 14:
        size = 14 + int.from_bytes(buffer[offset + 10:offset + 14], "big") + 4
        if len(buffer) - offset < size:
            break
        sizes.append(size)
        offset += size
    return sizes


def cutting_connector(connect: Connector, budget: int) -> tuple[Connector, list[CuttingChannel]]:
    """Wrap ``connect`` so that every connection is cut after ``budget`` frames; the list collects
    the channels (``frames`` tells how many passed)."""
    opened: list[CuttingChannel] = []

    async def wrapped() -> Channel:
        channel = CuttingChannel(await connect(), budget)
        opened.append(channel)
        return channel

    return wrapped, opened
