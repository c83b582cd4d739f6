"""The HTTP/1.1 binding: batches of frames POSTed over h11, sans-I/O on both sides.

A request is ``POST <path>`` (default ``/sync``) with ``Content-Type: application/x-sidekick-frames``,
a ``Content-Length`` and a body of zero or more frames the device sends; the response (200) carries
the server's answering frames with the same content type. The server names the session in the
``X-Sidekick-Session`` response header (an opaque token of 1 to 256 visible ASCII characters);
the device repeats it on every later request of that session. Connections are kept alive and
carry one request at a time. A request may name its target in absolute form
(``http://host:port/sync``, as a device sends it to a forward proxy).

Statuses (docs/PROTOCOL.md R-HTTP-7): 200 frames; 400 malformed HTTP, an oversized or ambiguous
request head, or a malformed session token; 404 wrong path; 405 not POST (answered with
``Allow: POST``); 408 a request that did not arrive whole in time; 410 unknown or expired session;
411 no Content-Length; 413 body over the limit; 415 wrong content type; 501 a transfer coding
other than chunked; 503 busy (with ``Retry-After`` when given); 505 an HTTP version other than 1.x.
The binding itself detects 400/404/405/411/413/415/501/505 (before reading the body) and raises
``HttpBindingError`` with the status to answer; the answer then closes the connection. 408, 410
and 503 are the application's decisions (408 through ``timed_out``).

Request framing follows RFC 9112 strictly, so that no proxy in front can read a request's
boundaries differently (request smuggling, R-HTTP-15): the head must end its lines with CRLF (no
bare LF, no bare CR) and carry no obsolete line folding; the body is framed by exactly one
``Content-Length`` of digits. Any ``Transfer-Encoding`` is refused and the connection closed: with
a ``Content-Length`` beside it 400 (RFC 9112 section 6.1), ``chunked`` alone 411, another coding
501. A request without a session token may carry at most ``OPENING_BODY_LIMIT`` bytes (one HELLO).
The head is checked by this module before h11 parses it; h11 never sees a rejected head.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

import h11

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .framing import MAX_MAX_FRAME, MIN_MAX_FRAME
from .session import CONNECTION_CLOSED, NEED_DATA, ConnectionClosed, NeedData

__all__ = [
    "DEFAULT_PATH",
    "FRAMES_CONTENT_TYPE",
    "OPENING_BODY_LIMIT",
    "SESSION_HEADER",
    "HttpBindingError",
    "HttpClientBinding",
    "HttpRequest",
    "HttpResponse",
    "HttpServerBinding",
    "HttpTunnelClient",
    "TunnelOpen",
    "basic_credentials",
]

FRAMES_CONTENT_TYPE: Final = "application/x-sidekick-frames"
SESSION_HEADER: Final = "X-Sidekick-Session"
DEFAULT_PATH: Final = "/sync"
DEFAULT_MAX_BODY: Final = 64 * MAX_MAX_FRAME
"""Largest response body a client accepts: a pull page with its photos (blobs may reach 16 MiB)."""
OPENING_BODY_LIMIT: Final = MIN_MAX_FRAME
"""Largest body of a request without a session token: one HELLO (R-LIMIT-2, R-HTTP-2)."""

_TOKEN = re.compile(r"[!-~]{1,256}")
_VISIBLE = re.compile(r"[!-~]+")
_HEADER_VALUE = re.compile(r"[!-~]([ -~]*[!-~])?")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_REASONS: Final = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    410: "Gone", 411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
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


def _malformed(text: str, status: int = 400) -> HttpBindingError:
    return HttpBindingError(ErrorCode.MALFORMED_PAYLOAD, text, status=status)


def _target_path(target: str) -> str:
    """The path of a request target in origin form (``/sync?x``) or absolute form
    (``http://host:port/sync``, RFC 9112 section 3.2.2); other forms are returned as they are."""
    if target[:7].lower() == "http://":
        rest = target[7:]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    return target.split("?", 1)[0]


def _check_head(head: bytes) -> HttpBindingError | None:
    """RFC 9112's framing rules that h11 leaves lenient, checked on a whole request head (without
    its final empty line): CRLF line ends only, no obsolete line folding, at most one
    Content-Length of digits, and no Transfer-Encoding at all (see the module docstring)."""
    if _BARE_LF.search(head):
        return _malformed("a bare LF in the request head (lines must end with CRLF)")
    if _BARE_CR.search(head):
        return _malformed("a bare CR in the request head")
    lines = head.split(b"\r\n")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return _malformed("obsolete line folding in the request head (RFC 9112 section 5.2)")
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif name == b"transfer-encoding":
            codings.append(value.strip(b" \t").lower())
    if codings:
        if lengths:
            return _malformed("Content-Length together with Transfer-Encoding (RFC 9112 section 6.1)")
        if codings == [b"chunked"]:
            return HttpBindingError(ErrorCode.BAD_FIELD, "a chunked body: this binding needs a Content-Length",
                                    status=411)
        return HttpBindingError(ErrorCode.BAD_FIELD, "a transfer coding other than chunked", status=501)
    if len(lengths) > 1:
        return _malformed("more than one Content-Length")
    if lengths and not _DIGITS.fullmatch(lengths[0]):
        return _malformed(f"Content-Length {lengths[0][:40]!r} is not a number")
    return None


class HttpServerBinding:
    """Server side: parse requests (``next_request``) and produce responses (``respond``).

    After ``next_request`` returns a request, ``respond`` must answer it before the next one is
    read. After ``HttpBindingError``, answer it with ``respond(err.status)``; the connection then
    closes (``next_request`` returns ``CONNECTION_CLOSED``). ``receiving`` tells what part of the
    next request has arrived, so that the caller can bound the time each part takes.
    """

    def __init__(self, *, max_body: int, max_header: int = 8192, path: str = DEFAULT_PATH,
                 max_opening_body: int = OPENING_BODY_LIMIT) -> None:
        if max_body < 0 or max_header < 1 or max_opening_body < 0 or not _VISIBLE.fullmatch(path):
            raise ValueError(f"need max_body >= 0, max_header >= 1 and a path, got {max_body}, {max_header}, {path!r}")
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header)
        self._max_body = max_body
        self._max_opening_body = min(max_body, max_opening_body)
        self._max_header = max_header
        self._path = path
        self._pending = bytearray()  # bytes of the next request not yet handed to h11
        self._in_head = True         # the next request's head is being collected in _pending
        self._scanned = 0            # bytes of _pending checked for bare LF and CR
        self._head: h11.Request | None = None
        self._limit = max_body
        self._body = bytearray()
        self._error: HttpBindingError | None = None
        self._awaiting_response = False
        self._closing = False
        self._eof = False

    @property
    def closing(self) -> bool:
        """Whether the connection must be closed once the last response is written."""
        return self._closing

    @property
    def receiving(self) -> Literal["nothing", "head", "body"]:
        """What has arrived of the next request: ``nothing`` yet (an idle connection, or one
        whose request awaits its response), part of its ``head``, or the head and part of its
        ``body``."""
        if self._awaiting_response or self._error is not None or self._closing:
            return "nothing"
        if self._in_head:
            return "head" if self._pending.lstrip(b"\r\n") else "nothing"
        return "body"

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the connection; ``b""`` means the client closed it."""
        if self._eof:
            if data:
                raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "data received after EOF")
            return
        if not data:
            self._eof = True
        if self._closing:
            return
        if self._in_head or self._awaiting_response:
            self._pending += data
        else:
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
        if self._in_head:
            found = self._take_head()
            if found is not True:
                return found
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = 501 if exc.error_status_hint == 501 else 400
                raise self._reject(_http_error(exc, self._eof, status)) from None
            if event is h11.NEED_DATA:
                return NEED_DATA
            if isinstance(event, h11.ConnectionClosed):  # pragma: no cover - h11 reports EOF mid-request as an error
                self._closing = True
                return CONNECTION_CLOSED
            if isinstance(event, h11.Request):
                self._start(event)
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._limit:  # pragma: no cover - h11 keeps to Content-Length
                    raise self._reject(HttpBindingError(ErrorCode.FRAME_TOO_LARGE, "body too large", status=413))
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self._finish()
            else:  # pragma: no cover - PAUSED cannot happen while no response is owed
                raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"unexpected HTTP event {event!r}")

    def _take_head(self) -> NeedData | ConnectionClosed | Literal[True]:
        """Hand the next request's head to h11 once it is whole and passes ``_check_head``. A bare
        LF or CR is refused as soon as it arrives; the bytes already looked at are not scanned again."""
        pending = self._pending
        if not self._scanned:
            while pending[:2] == b"\r\n":  # RFC 9112 section 2.2: empty lines before a request line are ignored
                del pending[:2]
        if not pending:
            if self._eof:
                self._closing = True
                return CONNECTION_CLOSED
            return NEED_DATA
        limit = self._max_header + 4
        end = pending.find(b"\r\n\r\n", max(0, self._scanned - 3), limit)
        stop = end if end >= 0 else min(len(pending), limit)
        if end < 0 and pending[stop - 1:stop] == b"\r":
            stop -= 1  # a CR whose LF has not arrived yet
        if _BARE_LF.search(pending, self._scanned, stop) or _BARE_CR.search(pending, self._scanned, stop):
            raise self._reject(_malformed("a bare LF or CR in the request head (lines must end with CRLF)"))
        self._scanned = stop
        if end < 0:
            if len(pending) > self._max_header:
                raise self._reject(HttpBindingError(
                    ErrorCode.FRAME_TOO_LARGE, f"request head exceeds {self._max_header} bytes", status=400))
            if self._eof:
                raise self._reject(HttpBindingError(ErrorCode.TRUNCATED, "connection closed mid-head", status=400))
            return NEED_DATA
        problem = _check_head(bytes(pending[:end]))
        if problem is not None:
            raise self._reject(problem)
        self._in_head = False
        self._scanned = 0
        self._conn.receive_data(bytes(pending))
        pending.clear()
        if self._eof:
            self._conn.receive_data(b"")
        return True

    def _reject(self, error: HttpBindingError) -> HttpBindingError:
        self._error = error
        return error

    def _start(self, request: h11.Request) -> None:
        """Check a request head before any of its body is read."""
        target = bytes(request.target).decode("latin-1")
        path = _target_path(target)
        method = bytes(request.method).decode("latin-1")
        headers = request.headers
        size = len(request.method) + len(request.target) + sum(len(k) + len(v) + 4 for k, v in headers)
        if size > self._max_header:
            raise self._reject(
                HttpBindingError(ErrorCode.FRAME_TOO_LARGE, f"header of {size} bytes exceeds {self._max_header}",
                                 status=400)
            )
        if request.http_version not in (b"1.0", b"1.1"):
            raise self._reject(HttpBindingError(
                ErrorCode.BAD_FIELD, f"HTTP/{request.http_version.decode('latin-1')} is not HTTP/1.x", status=505))
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
        token = _header(headers, SESSION_HEADER.lower().encode())
        if token is not None and not _TOKEN.fullmatch(token):
            raise self._reject(HttpBindingError(ErrorCode.BAD_FIELD, "malformed session token", status=400))
        self._limit = self._max_body if token is not None else self._max_opening_body
        if int(length) > self._limit:
            what = "" if token is not None else " without a session token"
            raise self._reject(
                HttpBindingError(
                    ErrorCode.FRAME_TOO_LARGE, f"body of {length} bytes{what} exceeds {self._limit}", status=413
                )
            )
        self._head = request
        self._body = bytearray()

    def _finish(self) -> HttpRequest:
        head = self._head
        assert head is not None
        self._head = None
        self._awaiting_response = True
        leftover, _ = self._conn.trailing_data  # the next request's bytes: checked before h11 reads them
        self._pending = bytearray(leftover)
        body = bytes(self._body)
        self._body = bytearray()
        return HttpRequest(
            method=bytes(head.method).decode("latin-1"),
            path=_target_path(bytes(head.target).decode("latin-1")),
            session_token=_header(head.headers, SESSION_HEADER.lower().encode()),
            content_type=_media_type(_header(head.headers, b"content-type")),
            body=body,
        )

    def timed_out(self) -> bytes:
        """The 408 response for a request that has not arrived whole in time; the connection
        then closes. Only while no response is owed (``receiving`` is ``head`` or ``body``)."""
        if self._awaiting_response or self._closing or self._error is not None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "no request is arriving")
        self._error = HttpBindingError(ErrorCode.TRUNCATED, "request not complete in time", status=408)
        return self.respond(408, b"request not complete in time\n", content_type="text/plain")

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
        else:  # a fresh parser for the next request, whose head _take_head checks first
            self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header)
            self._in_head = True
        return out


def basic_credentials(user: str, password: str) -> str:
    """The value of an ``Authorization`` or ``Proxy-Authorization`` header for Basic credentials."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class HttpClientBinding:
    """Client side: wrap the device's frames into POSTs (``request``), parse responses (``next_response``).

    ``absolute=True`` sends the target in absolute form (``http://host/path``), as a request to a
    forward proxy must (RFC 9112 section 3.2.2); ``proxy_authorization`` is then sent as the
    ``Proxy-Authorization`` header.
    """

    def __init__(self, host: str, path: str = DEFAULT_PATH, *, max_body: int = DEFAULT_MAX_BODY,
                 absolute: bool = False, proxy_authorization: str | None = None) -> None:
        if not _VISIBLE.fullmatch(host) or not _VISIBLE.fullmatch(path) or not path.startswith("/"):
            raise ValueError(f"bad host {host!r} or path {path!r}")
        if proxy_authorization is not None and not _HEADER_VALUE.fullmatch(proxy_authorization):
            raise ValueError("bad Proxy-Authorization value")
        self._conn = h11.Connection(h11.CLIENT)
        self._host = host
        self._path = path
        self._target = f"http://{host}{path}" if absolute else path
        self._proxy_authorization = proxy_authorization
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
        if self._proxy_authorization is not None:
            headers.append(("Proxy-Authorization", self._proxy_authorization))
        out = self._conn.send(h11.Request(method="POST", target=self._target, headers=headers))
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


@dataclass(frozen=True, slots=True)
class TunnelOpen:
    """The proxy opened the tunnel; ``data`` is what it already relayed from the far end."""

    data: bytes


class HttpTunnelClient:
    """A ``CONNECT`` request to a forward proxy (RFC 9110 section 9.3.6), sans-I/O: send
    ``request()``, feed the proxy's answer to ``receive_data``; ``next_event`` returns ``TunnelOpen``
    once a 2xx answer came (the connection is then a byte stream to ``authority``), ``NEED_DATA``
    before, and raises ``HttpBindingError`` with the proxy's ``status`` if it refused."""

    def __init__(self, authority: str, *, proxy_authorization: str | None = None,
                 max_answer: int = 65536) -> None:
        if not _VISIBLE.fullmatch(authority) or ":" not in authority:
            raise ValueError(f"a CONNECT target is HOST:PORT, got {authority!r}")
        if proxy_authorization is not None and not _HEADER_VALUE.fullmatch(proxy_authorization):
            raise ValueError("bad Proxy-Authorization value")
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_answer)
        self._authority = authority
        self._proxy_authorization = proxy_authorization
        self._max_answer = max_answer
        self._status: h11.Response | None = None
        self._body = bytearray()
        self._eof = False

    def request(self) -> bytes:
        """The bytes of the CONNECT request."""
        headers = [("Host", self._authority)]
        if self._proxy_authorization is not None:
            headers.append(("Proxy-Authorization", self._proxy_authorization))
        out = self._conn.send(h11.Request(method="CONNECT", target=self._authority, headers=headers))
        end = self._conn.send(h11.EndOfMessage())
        assert out is not None and end is not None
        return out + end

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the proxy; ``b""`` means it closed the connection."""
        if self._eof:
            return
        self._eof = not data
        self._conn.receive_data(data)

    def next_event(self) -> TunnelOpen | NeedData:
        """``TunnelOpen`` after a 2xx answer, ``NEED_DATA`` before; ``HttpBindingError`` if refused."""
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                if self._status is not None or self._eof:  # a refusal whose body broke off, or no answer
                    raise self._refused() from None
                raise _http_error(exc, self._eof, None) from None
            if event is h11.NEED_DATA:
                return NEED_DATA
            if event is h11.PAUSED:  # h11 pauses once the tunnel is open
                return TunnelOpen(bytes(self._conn.trailing_data[0]))
            if isinstance(event, h11.Response):
                self._status = event
            elif isinstance(event, h11.Data):
                if len(self._body) < 200:
                    self._body += event.data[:200]
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                raise self._refused()
            # InformationalResponse (1xx): nothing to do

    def _refused(self) -> HttpBindingError:
        head = self._status
        if head is None:
            return HttpBindingError(ErrorCode.TRUNCATED, "the proxy closed the connection without an answer")
        reason = bytes(head.reason).decode("latin-1", "replace")
        return HttpBindingError(ErrorCode.BAD_FIELD, f"the proxy refused CONNECT {self._authority}: "
                                f"{head.status_code} {reason}".rstrip(), status=head.status_code)
