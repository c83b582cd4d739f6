"""The malformed-input vectors: bad frames built by hand, field by field, never by the codec.

``sidekick certify`` sends each to the server under test (``checks_framing``); the decoder tests
read the same bytes from fixtures/malformed, which ``python -m fixtures.make_vectors`` writes from
``malformed()`` (a test checks that the committed files equal it).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from sidekick_testbed.protocol.errors import ErrorCode

__all__ = ["DEVICE", "PHOTO_BLOB", "Malformed", "ident", "malformed", "raw_frame", "record_bytes", "text"]


def ident(label: str, length: int = 16) -> bytes:
    """A fixed identifier derived from a label."""
    return hashlib.sha256(label.encode()).digest()[:length]


DEVICE = ident("device:alice-sidekick")
PHOTO_BLOB = ident("blob:beach.jpg")


def raw_frame(mtype: int, payload: bytes, *, magic: bytes = b"SK", version: int = 1, flags: int = 0,
              seq: int = 0, length: int | None = None, crc_xor: int = 0) -> bytes:
    header = struct.pack(">2sBBHII", magic, version, mtype, flags, seq,
                         len(payload) if length is None else length)
    return header + payload + struct.pack(">I", zlib.crc32(header + payload) ^ crc_xor)


def text(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def record_bytes(kind: int, flags: int = 0, conflict_of: bytes = b"", body: bytes | None = None) -> bytes:
    if body is None:
        body = text(b"Ada") + b"\x00\x00" + b"\x00\x00"
    return (struct.pack(">BB16sQB", kind, flags, ident("record:bad"), 7, len(conflict_of)) + conflict_of
            + body)


@dataclass(frozen=True)
class Malformed:
    name: str
    data: bytes
    code: ErrorCode
    offset: int
    frames_before: int
    description: str


def malformed() -> list[Malformed]:
    ping = raw_frame(0x40, bytes(8))
    bye = raw_frame(0x7F, text(b"ok"), seq=1)
    hello = raw_frame(0x01, b"\x01\x01" + text(b"alice") + DEVICE + struct.pack(">I", 65536))
    pair = ping + bye
    return [
        Malformed("bad-magic", ping + raw_frame(0x40, bytes(8), magic=b"SX", seq=1), ErrorCode.BAD_MAGIC,
                  len(ping), 1, "second frame starts with 'SX'"),
        Malformed("bad-version", raw_frame(0x40, bytes(8), version=2), ErrorCode.BAD_VERSION, 0, 0,
                  "protocol version 2 in a version-1 stream"),
        Malformed("unknown-type", raw_frame(0x55, b""), ErrorCode.UNKNOWN_TYPE, 0, 0, "message type 0x55"),
        Malformed("bad-flags", raw_frame(0x40, bytes(8), flags=0x0001), ErrorCode.BAD_FLAGS, 0, 0,
                  "flags 0x0001 (must be 0 in version 1)"),
        Malformed("oversized-length", raw_frame(0x31, b"", length=1 << 20)[:14], ErrorCode.FRAME_TOO_LARGE,
                  0, 0, "header announces a 1 MiB payload (default max frame 64 KiB); no body follows"),
        Malformed("bad-crc", ping + raw_frame(0x41, bytes(8), seq=1, crc_xor=0x1), ErrorCode.BAD_CRC,
                  len(ping), 1, "CRC-32 of the second frame off by one bit"),
        Malformed("truncated-header", ping[:9], ErrorCode.TRUNCATED, 0, 0, "stream ends 9 bytes into a header"),
        Malformed("truncated-body", hello[:30], ErrorCode.TRUNCATED, 0, 0, "stream ends inside a HELLO payload"),
        Malformed("bool-not-0-or-1", raw_frame(0x22, struct.pack(">QB", 21, 2)), ErrorCode.BAD_FIELD, 0, 0,
                  "PULL_END with more = 2"),
        Malformed("bad-utf8", pair + raw_frame(0x7F, text(b"\xff\xfe"), seq=2), ErrorCode.BAD_FIELD,
                  len(pair), 2, "BYE reason is not UTF-8"),
        Malformed("unknown-record-kind", raw_frame(0x21, b"\x00\x01" + record_bytes(9)), ErrorCode.BAD_FIELD,
                  0, 0, "RECORDS holding a record of kind 9"),
        Malformed("bad-record-flags", raw_frame(0x21, b"\x00\x01" + record_bytes(1, flags=0x80)),
                  ErrorCode.BAD_FIELD, 0, 0, "record flags 0x80 (only bit 0 is defined)"),
        Malformed("bad-conflict-of-length", raw_frame(0x21, b"\x00\x01" + record_bytes(1, conflict_of=b"abc")),
                  ErrorCode.BAD_FIELD, 0, 0, "conflict_of of 3 bytes (must be 0 or 16)"),
        Malformed("blob-chunk-past-total",
                  raw_frame(0x31, PHOTO_BLOB + struct.pack(">QQI", 8, 10, 4) + b"data"),
                  ErrorCode.BAD_FIELD, 0, 0, "BLOB_CHUNK bytes [8, 12) of a 10-byte blob"),
        Malformed("malformed-payload", raw_frame(0x01, b"\x01\x01" + struct.pack(">H", 200) + b"alice"),
                  ErrorCode.MALFORMED_PAYLOAD, 0, 0, "HELLO account length runs past the payload"),
        Malformed("trailing-bytes-in-payload", raw_frame(0x40, bytes(9)), ErrorCode.TRAILING_BYTES, 0, 0,
                  "PING payload of 9 bytes (8 expected)"),
        Malformed("trailing-partial-frame", pair + ping[:10], ErrorCode.TRUNCATED, len(pair), 2,
                  "two good frames, then 10 bytes of a third and EOF"),
        Malformed("trailing-garbage", ping + b"garbage!", ErrorCode.BAD_MAGIC, len(ping), 1,
                  "a good frame followed by bytes that are not a frame"),
    ]
