"""Error codes of the spec and the two exception types of the sans-I/O core."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Error codes carried by ERROR messages (docs/PROTOCOL.md, error table)."""

    # framing (always fatal: the byte stream can no longer be trusted)
    BAD_MAGIC = 0x0101
    BAD_VERSION = 0x0102
    BAD_CRC = 0x0103
    FRAME_TOO_LARGE = 0x0104
    UNKNOWN_TYPE = 0x0105
    BAD_FLAGS = 0x0106
    BAD_SEQUENCE = 0x0107
    TRUNCATED = 0x0108
    # payload
    MALFORMED_PAYLOAD = 0x0201
    TRAILING_BYTES = 0x0202
    BAD_FIELD = 0x0203
    # session
    UNEXPECTED_MESSAGE = 0x0301
    VERSION_UNSUPPORTED = 0x0302
    AUTH_FAILED = 0x0303
    SESSION_CLOSED = 0x0304
    # sync
    BATCH_TOO_LARGE = 0x0401
    LSN_ORDER = 0x0402
    BAD_ANCHOR = 0x0403
    BLOB_INCOMPLETE = 0x0404
    BLOB_OFFSET = 0x0405
    # server condition
    BUSY = 0x0501
    TIMEOUT = 0x0502
    SHUTTING_DOWN = 0x0503
    INTERNAL = 0x0504
    STORAGE = 0x0505
    BUDGET_EXCEEDED = 0x0506


FATAL_CODES: frozenset[ErrorCode] = frozenset(ErrorCode) - {
    ErrorCode.BLOB_OFFSET,
    ErrorCode.BAD_ANCHOR,
}


class ProtocolError(Exception):
    """Base of both protocol errors; ``code`` is the spec's error code."""

    def __init__(self, code: ErrorCode, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.code.name} (0x{self.code:04x}){where}: {self.message}"


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids (bytes or order)."""
