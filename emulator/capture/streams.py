"""Recording real connections: a Trio stream wrapper that writes what crosses it to a ``Capture``.

Clients (``sidekick device ... sync``, ``sidekick certify``) open their TCP connections through
``capture_stream``, which returns the stream unchanged unless a recording is active in the current
context (``recording``): then every connection becomes one TCP stream of the capture file. A server
(``sidekick serve --pcap DIR``) wraps each accepted connection with ``ServerRecorder``: one file per
connection. Addresses are synthetic loopback addresses; ports are the real ones; the real endpoints
are in the comment of each connection's first packet. Timestamps come from the real clock.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import trio

from sidekick_testbed.emulator.capture.tcp import Capture, Severity, TcpStream

__all__ = ["CapturedStream", "ClientRecorder", "ClientStream", "ServerRecorder", "capture_stream", "recording"]

_RECORDER: ContextVar[ClientRecorder | None] = ContextVar("sidekick_capture", default=None)


def _endpoints(stream: trio.abc.Stream) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """(local, peer) address of a socket stream, or None where the stream has no socket."""
    sock = getattr(stream, "socket", None)
    try:
        local = sock.getsockname()[:2] if sock is not None else None
        peer = sock.getpeername()[:2] if sock is not None else None
    except OSError:
        return None, None
    return local, peer


def _show(address: tuple[str, int] | None) -> str:
    if address is None:
        return "?"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CapturedStream(trio.abc.HalfCloseableStream):
    """``inner`` with everything sent and received written to ``tcp`` (a stream of a capture)."""

    def __init__(self, inner: trio.abc.Stream, tcp: TcpStream, capture: Capture, *, local_is_client: bool,
                 clock: Callable[[], float] = time.time, on_close: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self._tcp = tcp
        self._capture = capture
        self._local = local_is_client
        self._clock = clock
        self._on_close = on_close

    def _broken(self) -> None:
        self._tcp.reset(self._clock(), not self._local, "the connection broke (reset)")
        self._capture.flush()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send, then record what was sent."""
        try:
            await self._inner.send_all(data)
        except trio.BrokenResourceError:
            self._broken()
            raise
        self._tcp.data(self._clock(), self._local, bytes(data))
        self._capture.flush()

    async def wait_send_all_might_not_block(self) -> None:
        """As the inner stream."""
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive, then record what came (b"": the peer's FIN)."""
        try:
            data = bytes(await self._inner.receive_some(max_bytes))
        except trio.BrokenResourceError:
            self._broken()
            raise
        if data:
            self._tcp.data(self._clock(), not self._local, data)
        else:
            self._tcp.fin(self._clock(), not self._local)
        self._capture.flush()
        return data

    async def send_eof(self) -> None:
        """Half-close (if the inner stream can), recorded as our FIN."""
        send_eof = getattr(self._inner, "send_eof", None)
        if send_eof is None:
            raise trio.ClosedResourceError("this stream cannot half-close")
        await send_eof()
        self._tcp.fin(self._clock(), self._local)
        self._capture.flush()

    async def aclose(self) -> None:
        """Close, recorded as our FIN."""
        try:
            await self._inner.aclose()
        finally:
            self._tcp.fin(self._clock(), self._local)
            self._capture.flush()
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                on_close()


class ClientRecorder:
    """Records every connection a client opens (through ``capture_stream``) into one capture."""

    def __init__(self, out: BinaryIO, *, client: str, comment: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.capture = Capture(out, comment=comment)
        self.client = client
        self.clock = clock

    def wrap(self, stream: trio.SocketStream, host: str, port: int) -> CapturedStream:
        """``stream`` (just connected to ``host:port``), recorded as a new TCP stream."""
        local, peer = _endpoints(stream)
        tcp = self.capture.connect(self.clock(), self.client, server_port=port,
                                   client_port=local[1] if local else None,
                                   comment=f"{self.client}: connection to {host}:{port} "
                                           f"(real endpoints {_show(local)} -> {_show(peer)})")
        self.capture.flush()
        return CapturedStream(stream, tcp, self.capture, local_is_client=True, clock=self.clock)

    def event(self, text: str, severity: int = Severity.INFO) -> None:
        """An event at the current time (e.g. the end of a sync, a check's verdict)."""
        self.capture.event(self.clock(), text, severity=severity)
        self.capture.flush()


ClientStream = trio.SocketStream | CapturedStream
"""A client's TCP connection: as opened, or recorded."""


def capture_stream(stream: trio.SocketStream, host: str, port: int) -> ClientStream:
    """``stream`` as it is, or recorded if a ``recording`` is active in this context."""
    recorder = _RECORDER.get()
    return stream if recorder is None else recorder.wrap(stream, host, port)


@contextlib.contextmanager
def recording(out: BinaryIO, *, client: str, comment: str = "") -> Iterator[ClientRecorder]:
    """Record the connections opened inside the block (in this context and the Trio runs started in
    it) as a pcapng capture written to ``out``."""
    recorder = ClientRecorder(out, client=client, comment=comment)
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)
        recorder.capture.flush()


class ServerRecorder:
    """Records each connection a server accepts into its own file in ``folder``
    (``YYYYmmddTHHMMSS-NNNNNN-BINDING.pcapng``, UTC)."""

    def __init__(self, folder: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.clock = clock
        self._numbers = itertools.count(1)
        self.files: list[Path] = []

    def wrap(self, stream: trio.abc.Stream, binding: str) -> trio.abc.HalfCloseableStream:
        """``stream`` (just accepted on the ``binding`` listener), recorded into a new file."""
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
        path = self.folder / f"{stamp}-{next(self._numbers):06d}-{binding}.pcapng"
        out = open(path, "wb")  # noqa: SIM115 - closed with the connection (on_close)
        self.files.append(path)
        local, peer = _endpoints(stream)
        capture = Capture(out, comment=f"sidekick serve: one {binding} connection")
        tcp = capture.connect(now, "client", server_port=local[1] if local else 0,
                              client_port=peer[1] if peer else None,
                              comment=f"{binding} connection from {_show(peer)} to {_show(local)}")
        capture.flush()
        return CapturedStream(stream, tcp, capture, local_is_client=False, clock=self.clock, on_close=out.close)
