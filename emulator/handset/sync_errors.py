"""The errors of a sync attempt (``run_sync`` and ``Handset.sync`` raise them): which failures a retry
may cure (``retryable``) and which it cannot."""

from __future__ import annotations

from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError

__all__ = [
    "AuthRefused",
    "ConnectionLost",
    "DeviceIdRetired",
    "GenerationChanged",
    "PeerProtocolError",
    "ServerError",
    "ServerNotAuthentic",
    "SyncError",
    "SyncFailed",
    "SyncTimeout",
]

_RETRYABLE_CODES = frozenset({
    ErrorCode.BUSY, ErrorCode.TIMEOUT, ErrorCode.SHUTTING_DOWN, ErrorCode.INTERNAL, ErrorCode.STORAGE,
    ErrorCode.BLOB_INCOMPLETE, ErrorCode.BLOB_OFFSET, ErrorCode.BAD_ANCHOR, ErrorCode.BAD_CRC,
    ErrorCode.TRUNCATED, ErrorCode.BAD_SEQUENCE, ErrorCode.MALFORMED_PAYLOAD, ErrorCode.UNEXPECTED_MESSAGE,
})


class SyncError(Exception):
    """A sync did not complete. ``retryable``: another attempt may succeed."""

    retryable = True


class DeviceIdRetired(SyncError):
    """The server knows this device id with a history we cannot continue; a new id was taken."""


class ConnectionLost(SyncError):
    """The connection closed or broke before the sync finished."""


class SyncTimeout(SyncError):
    """The server did not answer within the timeout (Trio clock)."""


class PeerProtocolError(SyncError):
    """The server sent bytes or messages the protocol forbids."""

    def __init__(self, error: RemoteProtocolError) -> None:
        super().__init__(f"protocol error from the server: {error}")
        self.error = error


class ServerError(SyncError):
    """The server answered with ERROR."""

    def __init__(self, code: int, fatal: bool, text: str) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"0x{code:04x}"
        super().__init__(f"server error {name}: {text}" if text else f"server error {name}")
        self.code = code
        self.fatal = fatal
        self.text = text
        self.retryable = code in _RETRYABLE_CODES


class AuthRefused(ServerError):
    """The server refused the device's credentials (AUTH_FAILED, or an unknown account)."""

    retryable = False

    def __init__(self, code: int, fatal: bool, text: str) -> None:
        super().__init__(code, fatal, text)
        self.retryable = False


class ServerNotAuthentic(SyncError):
    """HELLO_OK did not prove that the server knows the device key."""

    retryable = False


class GenerationChanged(SyncError):
    """DURABLE named another generation than this session's HELLO_OK (the server was restored
    mid-session); nothing is marked clean, the next sync runs the recovery."""


class SyncFailed(SyncError):
    """Every attempt failed; ``last`` is the final attempt's error."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"sync failed after {attempts} attempt(s): {last}")
        self.attempts = attempts
        self.last = last
        self.retryable = False
