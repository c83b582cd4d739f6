"""Frames on the byte stream: header, payload, CRC-32 trailer; an incremental decoder.

A frame is ``magic "SK" | version u8 | type u8 | flags u16 | seq u32 | length u32`` (14 bytes,
big-endian), then ``length`` payload bytes, then the CRC-32 (zlib) of header and payload, u32.
The header layout comes from ``protocol.wire.HEADER``; the decoder checks every header field, and
the whole frame size against ``max_frame``, before it holds the body in memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .messages import MESSAGE_TYPES, Message
from .wire import HEADER_STRUCT, TRAILER_STRUCT, decode_payload, encode_payload

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_LEN",
    "MAGIC",
    "MAX_MAX_FRAME",
    "MIN_MAX_FRAME",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "TRAILER_LEN",
    "Frame",
    "FrameDecoder",
    "encode_frame",
]

MAGIC: Final = b"SK"
PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1, 1)
HEADER_LEN: Final = HEADER_STRUCT.size
TRAILER_LEN: Final = TRAILER_STRUCT.size
OVERHEAD: Final = HEADER_LEN + TRAILER_LEN
DEFAULT_MAX_FRAME: Final = 65536
MIN_MAX_FRAME: Final = 1024
MAX_MAX_FRAME: Final = 1 << 20

assert HEADER_LEN == 14 and TRAILER_LEN == 4

_KNOWN_TYPES: Final = frozenset(int(t) for t in MESSAGE_TYPES)
_VERSIONS: Final = frozenset(range(SUPPORTED_VERSIONS[0], SUPPORTED_VERSIONS[1] + 1))
_MAGIC0: Final = MAGIC[0]
_MAGIC1: Final = MAGIC[1]
_U32_MAX: Final = 0xFFFFFFFF
_pack_header = HEADER_STRUCT.pack
_unpack_header = HEADER_STRUCT.unpack_from
_pack_trailer = TRAILER_STRUCT.pack
_unpack_trailer = TRAILER_STRUCT.unpack_from
_crc32 = zlib.crc32


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: header fields, the message, and the frame's size in bytes."""

    version: int
    seq: int
    flags: int
    message: Message
    size: int


def encode_frame(message: Message, seq: int, *, version: int = PROTOCOL_VERSION) -> bytes:
    """Return the complete frame carrying ``message`` with sequence number ``seq``."""
    if not 0 <= seq <= _U32_MAX:
        raise LocalProtocolError(ErrorCode.BAD_FIELD, f"sequence number {seq} out of range")
    if not 0 <= version <= 0xFF:
        raise LocalProtocolError(ErrorCode.BAD_FIELD, f"version {version} out of range")
    payload = encode_payload(message)
    if len(payload) > _U32_MAX - OVERHEAD:
        raise LocalProtocolError(ErrorCode.FRAME_TOO_LARGE, f"payload of {len(payload)} bytes")
    header = _pack_header(MAGIC, version, message.TYPE, 0, seq, len(payload))
    crc = _crc32(payload, _crc32(header))
    return b"".join((header, payload, _pack_trailer(crc)))


def _check_max_frame(value: int) -> int:
    if not isinstance(value, int) or value < OVERHEAD:
        raise ValueError(f"max_frame must be an int of at least {OVERHEAD}, got {value!r}")
    return value


class FrameDecoder:
    """Incremental frame decoder: ``feed`` bytes (``b""`` = EOF), then take ``next_frame`` until None.

    Errors are ``RemoteProtocolError`` whose ``offset`` is the stream offset where the bad frame
    starts. After an error the decoder is poisoned: every later call raises the same error.
    Memory: ``buffered`` never exceeds ``max_frame`` plus the last chunk fed, provided the caller
    takes frames until None after each ``feed``.
    """

    __slots__ = ("_buf", "_pos", "_base", "_eof", "_error", "_max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._max_frame = _check_max_frame(max_frame)

    @property
    def max_frame(self) -> int:
        """Largest whole frame (header + payload + trailer) accepted."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = _check_max_frame(value)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos

    @property
    def offset(self) -> int:
        """Stream offset of the next byte ``next_frame`` will read."""
        return self._base + self._pos

    @property
    def eof(self) -> bool:
        """Whether EOF has been fed."""
        return self._eof

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; ``b""`` marks the end of the stream."""
        if self._error is not None:
            raise self._error
        if self._eof:
            if data:
                raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "data fed after EOF")
            return
        if not data:
            self._eof = True
            return
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more data is needed (or the stream ended)."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < HEADER_LEN:
            self._check_prefix(buf, pos, avail)
            if self._eof and avail:
                raise self._fail(ErrorCode.TRUNCATED, f"stream ended {avail} bytes into a frame header")
            return None
        magic, version, mtype, flags, seq, length = _unpack_header(buf, pos)
        size = OVERHEAD + length
        if (
            magic != MAGIC or version not in _VERSIONS or mtype not in _KNOWN_TYPES or flags
            or size > self._max_frame
        ):
            raise self._header_error(magic, version, mtype, flags, size)
        if avail < size:
            if self._eof:
                raise self._fail(ErrorCode.TRUNCATED, f"stream ended {avail} bytes into a frame of {size} bytes")
            return None
        body = pos + HEADER_LEN
        end = body + length
        view = memoryview(buf)
        try:
            if _crc32(view[pos:end]) != _unpack_trailer(buf, end)[0]:
                raise self._fail(ErrorCode.BAD_CRC, "CRC-32 mismatch")
            message = decode_payload(mtype, view[body:end])
        except RemoteProtocolError as exc:
            if exc is self._error:
                raise
            raise self._fail(exc.code, exc.message) from None
        finally:
            view.release()
        pos += size
        if pos == len(buf):
            buf.clear()
            self._base += pos
            self._pos = 0
        else:
            self._pos = pos
        return Frame(version, seq, flags, message, size)

    def _fail(self, code: ErrorCode, message: str) -> RemoteProtocolError:
        """Poison the decoder with an error about the frame starting at the current offset."""
        self._error = RemoteProtocolError(code, message, offset=self._base + self._pos)
        return self._error

    def _header_error(self, magic: bytes, version: int, mtype: int, flags: int, size: int) -> RemoteProtocolError:
        if magic != MAGIC:
            return self._fail(ErrorCode.BAD_MAGIC, f"bad magic {magic!r}")
        if version not in _VERSIONS:
            return self._fail(ErrorCode.BAD_VERSION, f"unsupported version {version}")
        if mtype not in _KNOWN_TYPES:
            return self._fail(ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{mtype:02x}")
        if flags:
            return self._fail(ErrorCode.BAD_FLAGS, f"flags 0x{flags:04x} must be 0 in version 1")
        return self._fail(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes exceeds the maximum {self._max_frame}"
        )

    def _check_prefix(self, buf: bytearray, pos: int, avail: int) -> None:
        """Reject a partial header as soon as its first bytes are wrong."""
        if avail >= 1 and buf[pos] != _MAGIC0 or avail >= 2 and buf[pos + 1] != _MAGIC1:
            raise self._fail(ErrorCode.BAD_MAGIC, f"bad magic {bytes(buf[pos : pos + 2])!r}")
        if avail >= 3 and buf[pos + 2] not in _VERSIONS:
            raise self._fail(ErrorCode.BAD_VERSION, f"unsupported version {buf[pos + 2]}")
        if avail >= 4 and buf[pos + 3] not in _KNOWN_TYPES:
            raise self._fail(ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{buf[pos + 3]:02x}")
        if avail >= 6 and (buf[pos + 4] or buf[pos + 5]):
            raise self._fail(ErrorCode.BAD_FLAGS, "flags must be 0 in version 1")
