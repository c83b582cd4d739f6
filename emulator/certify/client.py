"""A raw test client over TCP or HTTP that records every frame it sends and receives.

Unlike the handset's sync client it sends whatever a check asks for (illegal messages, wrong
sequence numbers, raw bytes) and judges nothing itself except the frames the server sends: bytes
that do not decode, or a gap in the server's sequence numbers, raise ``ServerViolation``. Every wait
is bounded by a timeout (``trio.move_on_after``); silence is a result (``SILENCE``), never a hang.
Over HTTP every send is one POST (continuing the session token) and the response's frames are what
``receive`` returns next.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Final

import trio

from sidekick_testbed.emulator.capture.streams import ClientStream, capture_stream
from sidekick_testbed.emulator.certify.verdicts import TraceEntry
from sidekick_testbed.emulator.frame_json import message_to_json
from sidekick_testbed.emulator.handset.transport import connect_error_reason
from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError
from sidekick_testbed.protocol.framing import MIN_MAX_FRAME, FrameDecoder, encode_frame
from sidekick_testbed.protocol.http_client import HttpClientBinding, HttpResponse
from sidekick_testbed.protocol.http_common import HttpBindingError
from sidekick_testbed.protocol.messages import Error, Message, Ping, Pong
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA

__all__ = [
    "CLOSED",
    "SILENCE",
    "Client",
    "ConnectFailed",
    "HttpRefusal",
    "Received",
    "ServerViolation",
    "Trace",
    "describe",
]

READ_SIZE: Final = 65536
TEXT_LIMIT: Final = 400


class Closed(enum.Enum):
    """Sentinel type: the server closed the connection."""

    CLOSED = "CLOSED"


class Silence(enum.Enum):
    """Sentinel type: nothing arrived within the timeout (or, over HTTP, the response held no more frames)."""

    SILENCE = "SILENCE"


CLOSED: Final = Closed.CLOSED
SILENCE: Final = Silence.SILENCE


@dataclass(frozen=True, slots=True)
class HttpRefusal:
    """A non-200 HTTP response (it carries no frames)."""

    status: int
    body: bytes


Received = Message | Closed | Silence | HttpRefusal


class ConnectFailed(Exception):
    """The server could not be reached."""


class ServerViolation(Exception):
    """The server sent bytes that are not a valid frame, or frames out of sequence."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 40 and all(c in "0123456789abcdef" for c in value):
        return value[:16] + f"..({len(value) // 2}B)"
    if isinstance(value, list):
        shown = [_short(v) for v in value[:6]]
        return shown + [f"... {len(value) - 6} more"] if len(value) > 6 else shown
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    return value


def describe(message: Message, seq: int | None = None) -> str:
    """A one-line decoded rendering of a message (long byte strings shortened)."""
    head = message.TYPE.name if seq is None else f"{message.TYPE.name} seq {seq}"
    if isinstance(message, Error):
        try:
            name = ErrorCode(message.code).name
        except ValueError:
            name = f"0x{message.code:04x}"
        return f"{head} {name} fatal={message.fatal} text={message.text[:120]!r}"
    text = json.dumps(_short(message_to_json(message)), separators=(",", ":"))
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + "..."
    return f"{head} {text}"


class Trace:
    """The evidence log of one check: every connection's frames and notes, time-stamped."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.entries: list[TraceEntry] = []
        self.server_bytes = bytearray()
        """Everything any server connection sent during the check (for secret scanning)."""

    def add(self, conn: str, direction: str, text: str) -> None:
        """Append one entry."""
        self.entries.append(TraceEntry(trio.current_time() - self.start, conn, direction, text))

    def note(self, text: str) -> None:
        """Append a note not tied to a connection."""
        self.add("--", "#", text)


class Client:
    """One connection to the server (raw TCP or HTTP) with a frame recorder."""

    def __init__(self, stream: ClientStream, *, host: str, port: int, http_path: str | None,
                 trace: Trace, label: str, timeout: float) -> None:
        self._stream: ClientStream | None = stream
        self.host = host
        self.port = port
        self._http_path = http_path
        self._trace = trace
        self.label = label
        self.timeout = timeout
        self._decoder = FrameDecoder(MIN_MAX_FRAME)
        self.next_seq = 0
        self.recv_seq = 0
        self.version = 1
        self._eof = False
        self._refusals: list[HttpRefusal] = []
        self.token: str | None = None
        self._binding: HttpClientBinding | None = None
        self.connections = 1
        """TCP connections this client has used (HTTP opens another when the server closed one)."""

    # ------------------------------------------------------------------ opening

    @classmethod
    async def connect(cls, host: str, port: int, *, http_path: str | None, trace: Trace, label: str,
                      timeout: float) -> Client:
        """Open a connection; ``ConnectFailed`` if the server cannot be reached within ``timeout``."""
        stream = await open_stream(host, port, timeout)
        trace.add(label, "#", f"connected to {host}:{port}" + (" (HTTP)" if http_path else ""))
        return cls(stream, host=host, port=port, http_path=http_path, trace=trace, label=label, timeout=timeout)

    @property
    def http(self) -> bool:
        """Whether this client speaks the HTTP binding."""
        return self._http_path is not None

    @property
    def max_frame(self) -> int:
        """Largest frame accepted from the server."""
        return self._decoder.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._decoder.max_frame = value

    # ------------------------------------------------------------------ sending

    async def send(self, message: Message, *, seq: int | None = None, version: int | None = None) -> None:
        """Send one message, numbered ``seq`` (default: the next number) with header ``version``."""
        number = self.next_seq if seq is None else seq
        frame = encode_frame(message, number, version=self.version if version is None else version)
        self.next_seq = number + 1
        self._trace.add(self.label, ">", describe(message, number))
        await self._write(frame)

    async def send_raw(self, data: bytes, note: str) -> None:
        """Send raw bytes (over HTTP: as one POST body), recorded with ``note``."""
        self._trace.add(self.label, ">", f"raw {len(data)} bytes: {note} [{data[:48].hex()}{'..' if len(data) > 48 else ''}]")
        await self._write(data)

    async def send_eof(self) -> None:
        """Shut down our sending side (TCP half-close)."""
        self._trace.add(self.label, ">", "half-close (EOF)")
        if self._stream is not None and not self.http:
            try:
                await self._stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _write(self, data: bytes) -> None:
        if self.http:
            await self._post(data)
            return
        if self._stream is None:
            self._trace.add(self.label, "#", "not sent: connection already closed")
            return
        try:
            with trio.move_on_after(self.timeout) as scope:
                await self._stream.send_all(data)
            if scope.cancelled_caught:
                self._trace.add(self.label, "#", f"send stalled for {self.timeout:g}s (server not reading)")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._trace.add(self.label, "#", f"send failed, connection closed by the server ({exc or type(exc).__name__})")

    async def write_slowly(self, data: bytes, *, chunk: int, delay: float) -> None:
        """TCP only: write ``data`` in pieces of ``chunk`` bytes, ``delay`` seconds apart."""
        self._trace.add(self.label, ">", f"{len(data)} bytes in pieces of {chunk}, {delay:g}s apart")
        for start in range(0, len(data), chunk):
            if self._stream is None:
                return
            try:
                await self._stream.send_all(data[start:start + chunk])
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._trace.add(self.label, "#", "connection closed by the server while trickling")
                return
            await trio.sleep(delay)

    # ------------------------------------------------------------------ HTTP

    async def _post(self, body: bytes) -> None:
        assert self._http_path is not None
        if self._binding is None or not self._binding.reusable or self._stream is None:
            if self._stream is not None and self._binding is not None:
                await self._close_stream()
            if self._stream is None:
                self._stream = await open_stream(self.host, self.port, self.timeout)
                self.connections += 1
                self._trace.add(self.label, "#", "new HTTP connection")
            self._binding = HttpClientBinding(f"{self.host}:{self.port}", path=self._http_path)
        binding = self._binding
        stream = self._stream
        response: HttpResponse | None = None
        try:
            await stream.send_all(binding.request(body, self.token))
            with trio.move_on_after(self.timeout):
                while response is None:
                    event = binding.next_response()
                    if isinstance(event, HttpResponse):
                        response = event
                    elif event is CONNECTION_CLOSED:
                        break
                    else:
                        assert event is NEED_DATA
                        binding.receive_data(await stream.receive_some(READ_SIZE))
        except HttpBindingError as exc:
            self._trace.add(self.label, "<", f"invalid HTTP response: {exc}")
            await self._close_stream()
            raise ServerViolation(f"invalid HTTP response: {exc}", exc.code) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._trace.add(self.label, "#", f"HTTP connection failed: {exc or type(exc).__name__}")
            await self._close_stream()
            return
        if response is None:
            self._trace.add(self.label, "#", f"no HTTP response within {self.timeout:g}s")
            await self._close_stream()
            return
        self._trace.server_bytes += response.body
        if response.status != 200:
            self._trace.add(self.label, "<", f"HTTP {response.status} {response.body[:80]!r}")
            self._refusals.append(HttpRefusal(response.status, response.body))
            return
        if response.session_token:
            self.token = response.session_token
        self._trace.add(self.label, "<", f"HTTP 200, {len(response.body)} bytes of frames")
        if response.body:
            self._feed(response.body)

    # ------------------------------------------------------------------ receiving

    def _feed(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
        except RemoteProtocolError as exc:
            raise self._violation(f"undecodable bytes from the server: {exc}", exc.code) from None

    def _violation(self, text: str, code: ErrorCode | None) -> ServerViolation:
        self._trace.add(self.label, "<", text)
        return ServerViolation(text, code)

    def _take_frame(self) -> Message | None:
        try:
            frame = self._decoder.next_frame()
        except RemoteProtocolError as exc:
            raise self._violation(f"the server sent bytes that are not a valid frame: {exc}", exc.code) from None
        if frame is None:
            return None
        self._trace.add(self.label, "<", describe(frame.message, frame.seq))
        if frame.seq != self.recv_seq:
            raise self._violation(
                f"server frame numbered {frame.seq}, expected {self.recv_seq} (R-FRAME-7)", ErrorCode.BAD_SEQUENCE
            )
        self.recv_seq += 1
        return frame.message

    async def receive(self, timeout: float | None = None) -> Received:
        """The next message from the server, ``CLOSED``, ``SILENCE`` or an ``HttpRefusal``.

        A server PING (raw binding) is answered with PONG here, as a device must, and not returned.
        """
        wait = self.timeout if timeout is None else timeout
        with trio.move_on_after(wait):
            while True:
                message = self._take_frame()
                if isinstance(message, Ping):
                    if self.http:
                        raise self._violation("the server sent PING over HTTP (R-HTTP-11, R-STATE-7)", None)
                    await self.send(Pong(message.nonce))  # a device answers a server PING (R-STATE-7)
                    continue
                if message is not None:
                    return message
                if self._refusals:
                    return self._refusals.pop(0)
                if self._eof:
                    return CLOSED
                if self.http or self._stream is None:
                    return SILENCE
                try:
                    data = await self._stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._trace.add(self.label, "<", f"connection reset ({exc or type(exc).__name__})")
                    data = b""
                if data:
                    self._trace.server_bytes += data
                    self._feed(data)
                else:
                    self._trace.add(self.label, "<", "EOF (server closed the connection)")
                    self._eof = True
                    self._feed(b"")
        self._trace.add(self.label, "#", f"nothing received within {wait:g}s")
        return SILENCE

    # ------------------------------------------------------------------ closing

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def aclose(self) -> None:
        """Close the connection (never raises)."""
        await self._close_stream()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def open_stream(host: str, port: int, timeout: float) -> ClientStream:
    """A TCP connection to ``host:port``; ``ConnectFailed`` on refusal, error or timeout."""
    try:
        with trio.fail_after(timeout):
            return capture_stream(await trio.open_tcp_stream(host, port), host, port)  # recorded with --pcap
    except trio.TooSlowError:
        raise ConnectFailed(f"cannot reach {host}:{port}: no connection within {timeout:g}s") from None
    except OSError as exc:
        raise ConnectFailed(f"cannot reach {host}:{port}: {connect_error_reason(exc)}") from None
