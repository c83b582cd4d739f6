"""The HTTP/1.1 binding's shared vocabulary: what both sides (``http_server``, ``http_client``) use.

A request is ``POST <path>`` (default ``/sync``) with ``Content-Type: application/x-sidekick-frames``,
a ``Content-Length`` and a body of zero or more frames the device sends; the response (200) carries
the server's answering frames with the same content type. The server names the session in the
``X-Sidekick-Session`` response header (an opaque token of 1 to 256 visible ASCII characters);
the device repeats it on every later request of that session. Connections are kept alive and
carry one request at a time. A request may name its target in absolute form
(``http://host:port/sync``, as a device sends it to a forward proxy).

Here: the content type, session header and default path, ``HttpBindingError``, and the checks of
header values both sides make. Sans-I/O, on h11.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import h11

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_PATH",
    "FRAMES_CONTENT_TYPE",
    "SESSION_HEADER",
    "HttpBindingError",
]

FRAMES_CONTENT_TYPE: Final = "application/x-sidekick-frames"
SESSION_HEADER: Final = "X-Sidekick-Session"
DEFAULT_PATH: Final = "/sync"

TOKEN_PATTERN = re.compile(r"[!-~]{1,256}")
"""A session token: 1 to 256 visible ASCII characters."""
VISIBLE_PATTERN = re.compile(r"[!-~]+")
"""A host, path or CONNECT target: visible ASCII, no spaces."""
HEADER_VALUE_PATTERN = re.compile(r"[!-~]([ -~]*[!-~])?")
"""A header value this binding sends: printable ASCII, no space at either end."""


class HttpBindingError(RemoteProtocolError):
    """The peer's HTTP was unacceptable; ``status`` is the answer owed (None on the client side)."""

    def __init__(self, code: ErrorCode, message: str, *, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status

    def __str__(self) -> str:
        answer = f" [HTTP {self.status}]" if self.status is not None else ""
        return super().__str__() + answer


def check_token(token: str | None) -> None:
    """Refuse (``LocalProtocolError``) a session token this side is about to send that is malformed."""
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise LocalProtocolError(
            ErrorCode.BAD_FIELD, f"session token must be 1 to 256 visible ASCII characters, got {token!r}"
        )


def find_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of header ``name`` (lower case), decoded as Latin-1; None if absent."""
    for key, value in headers:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def media_type(value: str | None) -> str | None:
    """The media type of a ``Content-Type`` value, without parameters, in lower case."""
    return None if value is None else value.split(";", 1)[0].strip().lower()


def h11_error(exc: h11.RemoteProtocolError, eof: bool, status: int | None) -> HttpBindingError:
    """The ``HttpBindingError`` for malformed HTTP h11 found (TRUNCATED if the peer closed mid-message)."""
    if eof:
        return HttpBindingError(ErrorCode.TRUNCATED, f"connection closed mid-message: {exc}", status=status)
    code = ErrorCode.FRAME_TOO_LARGE if exc.error_status_hint == 431 else ErrorCode.MALFORMED_PAYLOAD
    return HttpBindingError(code, f"malformed HTTP: {exc}", status=status)
