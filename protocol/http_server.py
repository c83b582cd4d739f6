"""The server side of the HTTP/1.1 binding: RFC 9112 request framing, strictly, and ``HttpServerBinding``.

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

import re
from dataclasses import dataclass
from typing import Final, Literal

import h11

from .errors import ErrorCode, LocalProtocolError
from .framing import MIN_MAX_FRAME
from .http_common import (
    DEFAULT_PATH,
    FRAMES_CONTENT_TYPE,
    HEADER_VALUE_PATTERN,
    SESSION_HEADER,
    TOKEN_PATTERN,
    VISIBLE_PATTERN,
    HttpBindingError,
    check_token,
    find_header,
    h11_error,
    media_type,
)
from .session import CONNECTION_CLOSED, NEED_DATA, ConnectionClosed, NeedData

__all__ = ["OPENING_BODY_LIMIT", "HttpRequest", "HttpServerBinding"]

OPENING_BODY_LIMIT: Final = MIN_MAX_FRAME
"""Largest body of a request without a session token: one HELLO (R-LIMIT-2, R-HTTP-2)."""

_DIGITS = re.compile(rb"[0-9]{1,19}")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_SESSION_HEADER_BYTES: Final = SESSION_HEADER.encode("ascii")
_REASONS: Final = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    410: "Gone", 411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One complete request as the server binding parsed it."""

    method: str
    path: str
    session_token: str | None
    content_type: str | None
    body: bytes


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
        if max_body < 0 or max_header < 1 or max_opening_body < 0 or not VISIBLE_PATTERN.fullmatch(path):
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
                raise self._reject(h11_error(exc, self._eof, status)) from None
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
        content_type = media_type(find_header(headers, b"content-type"))
        if content_type != FRAMES_CONTENT_TYPE:
            raise self._reject(
                HttpBindingError(ErrorCode.BAD_FIELD, f"content type {content_type!r} is not frames", status=415)
            )
        length = find_header(headers, b"content-length")
        if length is None:
            raise self._reject(HttpBindingError(ErrorCode.BAD_FIELD, "no Content-Length", status=411))
        token = find_header(headers, SESSION_HEADER.lower().encode())
        if token is not None and not TOKEN_PATTERN.fullmatch(token):
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
            session_token=find_header(head.headers, SESSION_HEADER.lower().encode()),
            content_type=media_type(find_header(head.headers, b"content-type")),
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
        check_token(session_token)
        if not HEADER_VALUE_PATTERN.fullmatch(content_type):
            raise LocalProtocolError(ErrorCode.BAD_FIELD, f"bad content type {content_type!r}")
        must_close = self._error is not None
        if status == 200 and not must_close and retry_after is None and self._conn.their_state is h11.DONE:
            return self._ok(body, session_token, content_type)
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
            self._next_cycle()
        return out

    def _ok(self, body: bytes, session_token: str | None, content_type: str) -> bytes:
        """A 200 answer to a whole request of a kept-alive connection, written here: the bytes h11
        writes for it (status line, the headers in this order, the body by its Content-Length; h11
        adds nothing when the request keeps the connection alive), without building its events."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (content_type.encode("ascii"),
                                                                                  len(body))
        if session_token is not None:
            head += b"%s: %s\r\n" % (_SESSION_HEADER_BYTES, session_token.encode("ascii"))
        self._awaiting_response = False
        self._next_cycle()
        return head + b"\r\n" + body

    def _next_cycle(self) -> None:
        """A fresh parser for the next request, whose head ``_take_head`` checks first."""
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header)
        self._in_head = True
