"""How a sync client reaches a server: a raw byte stream (TCP or in-memory) or HTTP POSTs.

A ``Channel`` is the device's side of one connection; a ``Connector`` opens a fresh one per sync
attempt. Every failure of the connection itself surfaces as ``TransportError`` (retryable), never
as a bare ``OSError`` or Trio resource error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from emulator.capture.streams import ClientStream, capture_stream
from protocol.http import HttpBindingError, HttpClientBinding, HttpResponse
from protocol.session import CONNECTION_CLOSED

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
    """The raw binding: frames written to and read from a Trio stream as they are."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes, deadline: float = math.inf) -> None:
        """Write ``data``; TransportError if the connection is gone, TransportTimeout at ``deadline``."""
        try:
            with trio.move_on_at(deadline):
                await self._stream.send_all(data)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(f"connection lost while sending: {exc or type(exc).__name__}") from exc
        raise TransportTimeout("the server took no data before the deadline")

    async def receive_some(self, deadline: float = math.inf) -> bytes:
        """Read what has arrived (b"" when the peer closed); TransportTimeout at ``deadline``."""
        try:
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


async def _open_tcp(host: str, port: int) -> ClientStream:
    try:
        return capture_stream(await trio.open_tcp_stream(host, port), host, port)  # recorded with --pcap
    except OSError as exc:
        raise ConnectFailed(f"cannot reach server {host}:{port}: {connect_error_reason(exc)}") from exc


def tcp_connector(host: str, port: int) -> Connector:
    """Raw binding over TCP: one new connection per call."""

    async def connect() -> Channel:
        return StreamChannel(await _open_tcp(host, port))

    return connect


class HttpChannel:
    """The HTTP binding: every ``send_all`` is one POST of the frames; the answer's body is what
    ``receive_some`` returns next. The server's session token rides on every later request; if the
    server closed the connection between two requests, ``reopen`` (when given) opens another."""

    def __init__(self, stream: trio.abc.Stream, host: str, path: str = "/sync", *,
                 reopen: Callable[[], Awaitable[trio.abc.Stream]] | None = None) -> None:
        self._stream = stream
        self._host = host
        self._path = path
        self._reopen = reopen
        self._binding = HttpClientBinding(host, path=path)
        self._token: str | None = None
        self._inbox: list[bytes] = []
        self._closed = False

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
        """One request and its whole answer (reopening the connection if the server closed it)."""
        if not self._binding.reusable:
            if self._reopen is None:
                raise TransportError("the server closed the HTTP connection")
            await StreamChannel(self._stream).aclose()
            self._stream = await self._reopen()
            self._binding = HttpClientBinding(self._host, path=self._path)
        raw = StreamChannel(self._stream)
        try:
            await raw.send_all(self._binding.request(data, self._token))
            while True:
                response = self._binding.next_response()
                if isinstance(response, HttpResponse):
                    break
                if response is CONNECTION_CLOSED:
                    raise TransportError("server closed the HTTP connection before answering")
                chunk = await raw.receive_some()
                self._binding.receive_data(chunk)
        except HttpBindingError as exc:
            raise TransportError(f"bad HTTP answer from the server: {exc}") from exc
        if response.status != 200:
            text = response.body[:120].decode("utf-8", "replace").strip()
            raise HttpStatusError(response.status, text)
        if response.session_token:
            self._token = response.session_token
        if response.body:
            self._inbox.append(response.body)

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


def http_connector(host: str, port: int, path: str = "/sync") -> Connector:
    """HTTP binding over TCP: frames POSTed per request (``protocol.http``)."""

    async def reopen() -> trio.abc.Stream:
        return await _open_tcp(host, port)

    async def connect() -> Channel:
        return HttpChannel(await reopen(), f"{host}:{port}", path, reopen=reopen)

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
