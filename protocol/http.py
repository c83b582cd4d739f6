"""The HTTP/1.1 binding: batches of frames POSTed over h11, sans-I/O on both sides.

A request is ``POST <path>`` (default ``/sync``) with ``Content-Type: application/x-sidekick-frames``,
a ``Content-Length`` and a body of zero or more frames the device sends; the response (200) carries
the server's answering frames with the same content type. The server names the session in the
``X-Sidekick-Session`` response header (an opaque token of 1 to 256 visible ASCII characters);
the device repeats it on every later request of that session. Connections are kept alive and
carry one request at a time.

Statuses (docs/PROTOCOL.md R-HTTP-7): 200 frames; 400 malformed HTTP, oversized header or malformed
session token; 404 wrong path; 405 not POST (answered with ``Allow: POST``); 410 unknown or expired
session; 411 no Content-Length; 413 body over the limit; 415 wrong content type; 503 busy (with
``Retry-After`` when given). The binding itself detects 400/404/405/411/413/415 (before reading the
body) and raises ``HttpBindingError`` with the status to answer; the answer then closes the
connection. 410 and 503 are the application's decisions, passed to ``respond``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import h11

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.framing import MAX_MAX_FRAME
from protocol.session import CONNECTION_CLOSED, NEED_DATA, ConnectionClosed, NeedData

__all__ = [
    "DEFAULT_PATH",
    "FRAMES_CONTENT_TYPE",
    "SESSION_HEADER",
    "HttpBindingError",
    "HttpClientBinding",
    "HttpRequest",
    "HttpResponse",
    "HttpServerBinding",
]

FRAMES_CONTENT_TYPE: Final = "application/x-sidekick-frames"
SESSION_HEADER: Final = "X-Sidekick-Session"
DEFAULT_PATH: Final = "/sync"
DEFAULT_MAX_BODY: Final = 64 * MAX_MAX_FRAME
"""Largest response body a client accepts: a pull page with its photos (blobs may reach 16 MiB)."""

_TOKEN = re.compile(r"[!-~]{1,256}")
_VISIBLE = re.compile(r"[!-~]+")
_HEADER_VALUE = re.compile(r"[!-~]([ -~]*[!-~])?")
_REASONS: Final = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 410: "Gone",
    411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
    500: "Internal Server Error", 503: "Service Unavailable",
}


class HttpBindingError(RemoteProtocolError):
    """The peer's HTTP was unacceptable; ``status`` is the answer owed (None on the client side)."""

    def __init__(self, code: ErrorCode, message: str, *, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status

    def __str__(self) -> str:
        answer = f" [HTTP {self.status}]" if self.status is not None else ""
        return super().__str__() + answer


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One complete request as the server binding parsed it."""

    method: str
    path: str
    session_token: str | None
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One complete response as the client binding parsed it."""

    status: int
    session_token: str | None
    content_type: str | None
    body: bytes


def _check_token(token: str | None) -> None:
    if token is not None and not _TOKEN.fullmatch(token):
        raise LocalProtocolError(
            ErrorCode.BAD_FIELD, f"session token must be 1 to 256 visible ASCII characters, got {token!r}"
        )


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of header ``name`` (lower case), decoded as Latin-1; None if absent."""
    for key, value in headers:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _media_type(value: str | None) -> str | None:
    return None if value is None else value.split(";", 1)[0].strip().lower()


def _http_error(exc: h11.RemoteProtocolError, eof: bool, status: int | None) -> HttpBindingError:
    if eof:
        return HttpBindingError(ErrorCode.TRUNCATED, f"connection closed mid-message: {exc}", status=status)
    code = ErrorCode.FRAME_TOO_LARGE if exc.error_status_hint == 431 else ErrorCode.MALFORMED_PAYLOAD
    return HttpBindingError(code, f"malformed HTTP: {exc}", status=status)


def _request_error(exc: h11.RemoteProtocolError, eof: bool) -> HttpBindingError:
    """A malformed or oversized request head is answered 400 (docs/PROTOCOL.md R-HTTP-10)."""
    return _http_error(exc, eof, 400)


class HttpServerBinding:
    """Server side: parse requests (``next_request``) and produce responses (``respond``).

    After ``next_request`` returns a request, ``respond`` must answer it before the next one is
    read. After ``HttpBindingError``, answer it with ``respond(err.status)``; the connection then
    closes (``next_request`` returns ``CONNECTION_CLOSED``).
    """

    def __init__(self, *, max_body: int, max_header: int = 8192, path: str = DEFAULT_PATH) -> None:
        if max_body < 0 or max_header < 1 or not _VISIBLE.fullmatch(path):
            raise ValueError(f"need max_body >= 0, max_header >= 1 and a path, got {max_body}, {max_header}, {path!r}")
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header)
        self._max_body = max_body
        self._max_header = max_header
        self._path = path
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._error: HttpBindingError | None = None
        self._awaiting_response = False
        self._closing = False
        self._eof = False

    @property
    def closing(self) -> bool:
        """Whether the connection must be closed once the last response is written."""
        return self._closing

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the connection; ``b""`` means the client closed it."""
        if self._eof:
            if data:
                raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "data received after EOF")
            return
        if not data:
            self._eof = True
        if not self._closing:
            self._conn.receive_data(data)

    def next_request(self) -> HttpRequest | NeedData | ConnectionClosed:
        """The next complete request, ``NEED_DATA``, or ``CONNECTION_CLOSED`` (close the connection).

        Raises ``HttpBindingError`` (with ``status``) for a request the binding refuses.
        """
        if self._closing:
            return CONNECTION_CLOSED
        if self._error is not None:
            raise self._error
        if self._awaiting_response:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "respond to the current request first")
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._reject(_request_error(exc, self._eof)) from None
            if event is h11.NEED_DATA:
                return NEED_DATA
            if isinstance(event, h11.ConnectionClosed):
                self._closing = True
                return CONNECTION_CLOSED
            if isinstance(event, h11.Request):
                self._start(event)
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._max_body:  # pragma: no cover - h11 checks length
                    raise self._reject(HttpBindingError(ErrorCode.FRAME_TOO_LARGE, "body too large", status=413))
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self._finish()
            else:  # pragma: no cover - PAUSED cannot happen while no response is owed
                raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"unexpected HTTP event {event!r}")

    def _reject(self, error: HttpBindingError) -> HttpBindingError:
        self._error = error
        return error

    def _start(self, request: h11.Request) -> None:
        """Check a request head before any of its body is read."""
        target = bytes(request.target).decode("latin-1")
        path = target.split("?", 1)[0]
        method = bytes(request.method).decode("latin-1")
        headers = request.headers
        size = len(request.method) + len(request.target) + sum(len(k) + len(v) + 4 for k, v in headers)
        if size > self._max_header:
            raise self._reject(
                HttpBindingError(ErrorCode.FRAME_TOO_LARGE, f"header of {size} bytes exceeds {self._max_header}",
                                 status=400)
            )
        if path != self._path:
            raise self._reject(HttpBindingError(ErrorCode.BAD_FIELD, f"no such path {path!r}", status=404))
        if method != "POST":
            raise self._reject(HttpBindingError(ErrorCode.BAD_FIELD, f"method {method} is not POST", status=405))
        content_type = _media_type(_header(headers, b"content-type"))
        if content_type != FRAMES_CONTENT_TYPE:
            raise self._reject(
                HttpBindingError(ErrorCode.BAD_FIELD, f"content type {content_type!r} is not frames", status=415)
            )
        length = _header(headers, b"content-length")
        if length is None:
            raise self._reject(HttpBindingError(ErrorCode.BAD_FIELD, "no Content-Length", status=411))
        if int(length) > self._max_body:
            raise self._reject(
                HttpBindingError(
                    ErrorCode.FRAME_TOO_LARGE, f"body of {length} bytes exceeds {self._max_body}", status=413
                )
            )
        token = _header(headers, SESSION_HEADER.lower().encode())
        if token is not None and not _TOKEN.fullmatch(token):
            raise self._reject(HttpBindingError(ErrorCode.BAD_FIELD, "malformed session token", status=400))
        self._head = request
        self._body = bytearray()

    def _finish(self) -> HttpRequest:
        head = self._head
        assert head is not None
        self._head = None
        self._awaiting_response = True
        body = bytes(self._body)
        self._body = bytearray()
        return HttpRequest(
            method=bytes(head.method).decode("latin-1"),
            path=bytes(head.target).decode("latin-1").split("?", 1)[0],
            session_token=_header(head.headers, SESSION_HEADER.lower().encode()),
            content_type=_media_type(_header(head.headers, b"content-type")),
            body=body,
        )

    def respond(
        self, status: int, body: bytes = b"", *, session_token: str | None = None,
        content_type: str = FRAMES_CONTENT_TYPE, retry_after: int | None = None,
    ) -> bytes:
        """The bytes of the response to the current request (or to the error just raised).

        ``retry_after`` (seconds) adds ``Retry-After``; a 405 carries ``Allow: POST``.
        """
        if self._closing:
            raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "the connection is closing")
        if not (self._awaiting_response or self._error is not None):
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "no request to answer")
        if not 200 <= status <= 599:
            raise LocalProtocolError(ErrorCode.BAD_FIELD, f"status {status} is not a final status")
        _check_token(session_token)
        if not _HEADER_VALUE.fullmatch(content_type):
            raise LocalProtocolError(ErrorCode.BAD_FIELD, f"bad content type {content_type!r}")
        must_close = self._error is not None
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if session_token is not None:
            headers.append((SESSION_HEADER, session_token))
        if status == 405:
            headers.append(("Allow", "POST"))
        if retry_after is not None:
            if retry_after < 0:
                raise LocalProtocolError(ErrorCode.BAD_FIELD, f"Retry-After {retry_after} is negative")
            headers.append(("Retry-After", str(retry_after)))
        if must_close:
            headers.append(("Connection", "close"))
        try:
            out = self._conn.send(
                h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, ""))
            )
            assert out is not None
            if body:
                data = self._conn.send(h11.Data(data=body))
                assert data is not None
                out += data
            end = self._conn.send(h11.EndOfMessage())
            assert end is not None
            out += end
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(ErrorCode.BAD_FIELD, f"cannot send response: {exc}") from None
        self._awaiting_response = False
        if must_close or self._conn.our_state is not h11.DONE or self._conn.their_state is not h11.DONE:
            self._closing = True
        else:
            self._conn.start_next_cycle()
        return out


class HttpClientBinding:
    """Client side: wrap the device's frames into POSTs (``request``), parse responses (``next_response``)."""

    def __init__(self, host: str, path: str = DEFAULT_PATH, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        if not _VISIBLE.fullmatch(host) or not _VISIBLE.fullmatch(path) or not path.startswith("/"):
            raise ValueError(f"bad host {host!r} or path {path!r}")
        self._conn = h11.Connection(h11.CLIENT)
        self._host = host
        self._path = path
        self._max_body = max_body
        self._awaiting_response = False
        self._head: h11.Response | None = None
        self._body = bytearray()
        self._error: HttpBindingError | None = None
        self._eof = False

    @property
    def reusable(self) -> bool:
        """Whether another request may be sent on this connection."""
        return self._error is None and not self._awaiting_response and self._conn.our_state is h11.IDLE

    def request(self, frames: bytes, session_token: str | None = None) -> bytes:
        """The bytes of a POST carrying ``frames``, continuing ``session_token`` if given."""
        if self._awaiting_response:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "the previous response is still owed")
        if not self.reusable:
            raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "this connection cannot carry another request")
        _check_token(session_token)
        headers = [
            ("Host", self._host),
            ("Content-Type", FRAMES_CONTENT_TYPE),
            ("Content-Length", str(len(frames))),
        ]
        if session_token is not None:
            headers.append((SESSION_HEADER, session_token))
        out = self._conn.send(h11.Request(method="POST", target=self._path, headers=headers))
        assert out is not None
        if frames:
            data = self._conn.send(h11.Data(data=frames))
            assert data is not None
            out += data
        end = self._conn.send(h11.EndOfMessage())
        assert end is not None
        self._awaiting_response = True
        return out + end

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the connection; ``b""`` means the server closed it."""
        if self._eof:
            if data:
                raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "data received after EOF")
            return
        if not data:
            self._eof = True
        self._conn.receive_data(data)

    def next_response(self) -> HttpResponse | NeedData | ConnectionClosed:
        """The next complete response, ``NEED_DATA``, or ``CONNECTION_CLOSED`` (closed while idle).

        Raises ``HttpBindingError`` for malformed HTTP, a body over ``max_body``, a 200 response
        that does not carry frames, or a connection closed while a response was owed (TRUNCATED).
        """
        if self._error is not None:
            raise self._error
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._fail(_http_error(exc, self._eof, None)) from None
            if event is h11.NEED_DATA:
                return NEED_DATA
            if isinstance(event, h11.ConnectionClosed):
                if self._awaiting_response:  # pragma: no cover - h11 reports this as an error
                    raise self._fail(HttpBindingError(ErrorCode.TRUNCATED, "closed before the response"))
                return CONNECTION_CLOSED
            if isinstance(event, h11.Response):
                self._start(event)
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._max_body:
                    raise self._fail(
                        HttpBindingError(ErrorCode.FRAME_TOO_LARGE, f"response body exceeds {self._max_body}")
                    )
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self._finish()
            elif event is h11.PAUSED:
                raise self._fail(HttpBindingError(ErrorCode.UNEXPECTED_MESSAGE, "response without a request"))
            # InformationalResponse (1xx): nothing to do

    def _fail(self, error: HttpBindingError) -> HttpBindingError:
        self._error = error
        return error

    def _start(self, response: h11.Response) -> None:
        length = _header(response.headers, b"content-length")
        if length is not None and int(length) > self._max_body:
            raise self._fail(
                HttpBindingError(ErrorCode.FRAME_TOO_LARGE, f"response body of {length} exceeds {self._max_body}")
            )
        content_type = _media_type(_header(response.headers, b"content-type"))
        if response.status_code == 200 and content_type != FRAMES_CONTENT_TYPE:
            raise self._fail(
                HttpBindingError(ErrorCode.BAD_FIELD, f"200 response of content type {content_type!r}")
            )
        self._head = response
        self._body = bytearray()

    def _finish(self) -> HttpResponse:
        head = self._head
        assert head is not None
        self._head = None
        token = _header(head.headers, SESSION_HEADER.lower().encode())
        if token is not None and not _TOKEN.fullmatch(token):
            raise self._fail(HttpBindingError(ErrorCode.BAD_FIELD, "malformed session token"))
        response = HttpResponse(
            status=head.status_code,
            session_token=token,
            content_type=_media_type(_header(head.headers, b"content-type")),
            body=bytes(self._body),
        )
        self._body = bytearray()
        self._awaiting_response = False
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
        return response
