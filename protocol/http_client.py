"""The device side of the HTTP/1.1 binding: ``HttpClientBinding`` (frames POSTed, responses parsed)
and ``HttpTunnelClient`` (a forward proxy's CONNECT), sans-I/O on h11.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final

import h11

from .errors import ErrorCode, LocalProtocolError
from .framing import MAX_MAX_FRAME
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

__all__ = [
    "DEFAULT_MAX_BODY",
    "HttpClientBinding",
    "HttpResponse",
    "HttpTunnelClient",
    "TunnelOpen",
    "basic_credentials",
]

DEFAULT_MAX_BODY: Final = 64 * MAX_MAX_FRAME
"""Largest response body a client accepts: a pull page with its photos (blobs may reach 16 MiB)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One complete response as the client binding parsed it."""

    status: int
    session_token: str | None
    content_type: str | None
    body: bytes


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
        if not VISIBLE_PATTERN.fullmatch(host) or not VISIBLE_PATTERN.fullmatch(path) or not path.startswith("/"):
            raise ValueError(f"bad host {host!r} or path {path!r}")
        if proxy_authorization is not None and not HEADER_VALUE_PATTERN.fullmatch(proxy_authorization):
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
        check_token(session_token)
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
                raise self._fail(h11_error(exc, self._eof, None)) from None
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
        length = find_header(response.headers, b"content-length")
        if length is not None and int(length) > self._max_body:
            raise self._fail(
                HttpBindingError(ErrorCode.FRAME_TOO_LARGE, f"response body of {length} exceeds {self._max_body}")
            )
        content_type = media_type(find_header(response.headers, b"content-type"))
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
        token = find_header(head.headers, SESSION_HEADER.lower().encode())
        if token is not None and not TOKEN_PATTERN.fullmatch(token):
            raise self._fail(HttpBindingError(ErrorCode.BAD_FIELD, "malformed session token"))
        response = HttpResponse(
            status=head.status_code,
            session_token=token,
            content_type=media_type(find_header(head.headers, b"content-type")),
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
        if not VISIBLE_PATTERN.fullmatch(authority) or ":" not in authority:
            raise ValueError(f"a CONNECT target is HOST:PORT, got {authority!r}")
        if proxy_authorization is not None and not HEADER_VALUE_PATTERN.fullmatch(proxy_authorization):
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
                raise h11_error(exc, self._eof, None) from None
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
