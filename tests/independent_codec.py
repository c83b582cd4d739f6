"""A second decoder of the wire format, written from docs/PROTOCOL.md alone with ``struct``.

It imports nothing of the project: the golden vectors and the reference decoder are checked against
it (as h11 checks itself against the standard library's HTTP). Everything a message carries comes
back as plain dicts, lists, ints, bools, str and bytes, named as the spec's field tables name them.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Any

HEADER = struct.Struct(">2sBBHII")  # magic, version, type, flags, seq, length (section 3)
KINDS = {1: "CONTACT", 2: "EVENT", 3: "TODO", 4: "NOTE", 5: "PHOTO"}
TYPES = {0x01: "HELLO", 0x02: "CHALLENGE", 0x03: "AUTH", 0x04: "HELLO_OK", 0x10: "PUSH", 0x11: "PUSH_ACK",
         0x12: "COMMIT", 0x13: "DURABLE", 0x14: "CONFLICT", 0x20: "PULL", 0x21: "RECORDS", 0x22: "PULL_END",
         0x23: "PULL_ACK", 0x30: "BLOB_QUERY", 0x31: "BLOB_CHUNK", 0x32: "BLOB_ACK", 0x40: "PING", 0x41: "PONG",
         0x7E: "ERROR", 0x7F: "BYE"}


class SpecError(ValueError):
    """The bytes break the spec; ``code`` is the error name of section 16."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code


class Reader:
    """Reads the types of section 2 from a payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise SpecError("MALFORMED_PAYLOAD", "the payload ends before its last field")
        piece = self.data[self.at:self.at + n]
        self.at += n
        return piece

    def u8(self) -> int:
        return int(struct.unpack(">B", self.take(1))[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def i64(self) -> int:
        return int(struct.unpack(">q", self.take(8))[0])

    def boolean(self) -> bool:
        value = self.u8()
        if value not in (0, 1):
            raise SpecError("BAD_FIELD", f"bool byte {value}")
        return value == 1

    def ident(self) -> bytes:
        return self.take(16)

    def mac(self) -> bytes:
        return self.take(32)

    def text(self) -> str:
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError("BAD_FIELD", "a str that is not UTF-8") from None

    def bytes32(self) -> bytes:
        return self.take(self.u32())

    def texts(self) -> list[str]:
        return [self.text() for _ in range(self.u16())]

    def end(self) -> None:
        if self.at != len(self.data):
            raise SpecError("TRAILING_BYTES", f"{len(self.data) - self.at} bytes after the last field")


def record(r: Reader) -> dict[str, Any]:
    """A record of section 5."""
    kind, flags = r.u8(), r.u8()
    if kind not in KINDS or flags & 0xFE:
        raise SpecError("BAD_FIELD", f"record kind {kind}, flags {flags:#x}")
    record_id, version = r.ident(), r.u64()
    length = r.u8()
    if length not in (0, 16):
        raise SpecError("BAD_FIELD", f"conflict_of length {length}")
    conflict_of = r.take(length)
    name = KINDS[kind]
    body: dict[str, Any]
    if name == "CONTACT":
        body = {"name": r.text(), "phones": r.texts(), "emails": r.texts()}
    elif name == "EVENT":
        body = {"title": r.text(), "start": r.i64(), "end": r.i64(), "location": r.text()}
    elif name == "TODO":
        body = {"title": r.text(), "done": r.boolean(), "due": r.i64(), "priority": r.u8()}
    elif name == "NOTE":
        body = {"title": r.text(), "text": r.text()}
    else:
        body = {"caption": r.text(), "blob_id": r.ident(), "size": r.u64(), "sha256": r.mac(),
                "content_type": r.text()}
    return {"kind": name, "deleted": bool(flags & 1), "record_id": record_id, "version": version,
            "conflict_of": conflict_of, "body": body}


def payload(name: str, r: Reader) -> dict[str, Any]:
    """The fields of one message of section 4."""
    if name == "HELLO":
        return {"min_version": r.u8(), "max_version": r.u8(), "account": r.text(), "device_id": r.ident(),
                "max_frame": r.u32()}
    if name == "CHALLENGE":
        return {"version": r.u8(), "server_id": r.ident(), "server_nonce": r.ident(), "max_frame": r.u32(),
                "max_batch": r.u16()}
    if name == "AUTH":
        return {"device_nonce": r.ident(), "mac": r.mac()}
    if name == "HELLO_OK":
        return {"server_id": r.ident(), "generation": r.u64(), "durable_lsn": r.u64(), "anchor": r.u64(),
                "server_mac": r.mac()}
    if name == "PUSH":
        return {"changes": [{"lsn": r.u64(), "base_version": r.u64(), "record": record(r)} for _ in range(r.u16())]}
    if name == "PUSH_ACK":
        return {"received_lsn": r.u64()}
    if name == "COMMIT":
        return {"lsn": r.u64()}
    if name == "DURABLE":
        generation, durable_lsn = r.u64(), r.u64()
        assigned = [{"lsn": r.u64(), "record_id": r.ident(), "version": r.u64()} for _ in range(r.u16())]
        return {"generation": generation, "durable_lsn": durable_lsn, "assigned": assigned}
    if name == "CONFLICT":
        return {"lsn": r.u64(), "record_id": r.ident(), "server_version": r.u64(), "copy_id": r.ident()}
    if name == "PULL":
        return {"anchor": r.u64(), "max_records": r.u32()}
    if name == "RECORDS":
        return {"records": [record(r) for _ in range(r.u16())]}
    if name == "PULL_END":
        return {"anchor": r.u64(), "more": r.boolean()}
    if name == "PULL_ACK":
        return {"anchor": r.u64()}
    if name == "BLOB_QUERY":
        return {"blob_id": r.ident()}
    if name == "BLOB_CHUNK":
        chunk = {"blob_id": r.ident(), "offset": r.u64(), "total": r.u64(), "data": r.bytes32()}
        if chunk["offset"] + len(chunk["data"]) > chunk["total"]:
            raise SpecError("BAD_FIELD", "a chunk past the blob's total (R-MSG-2)")
        return chunk
    if name == "BLOB_ACK":
        return {"blob_id": r.ident(), "have": r.u64()}
    if name in ("PING", "PONG"):
        return {"nonce": r.u64()}
    if name == "ERROR":
        return {"code": r.u16(), "fatal": r.boolean(), "text": r.text()}
    return {"reason": r.text()}  # BYE


def decode_frame(data: bytes, *, max_frame: int = 65536) -> tuple[dict[str, Any], int]:
    """One frame at the start of ``data``: its header fields and message, and its size."""
    head = data[:HEADER.size] + bytes(HEADER.size)  # each header check as soon as its bytes are there
    magic, version, mtype, flags, seq, length = HEADER.unpack_from(head)
    if len(data) >= 2 and magic != b"SK":
        raise SpecError("BAD_MAGIC", repr(magic))
    if len(data) >= 3 and version != 1:
        raise SpecError("BAD_VERSION", str(version))
    if len(data) >= 4 and mtype not in TYPES:
        raise SpecError("UNKNOWN_TYPE", f"{mtype:#x}")
    if len(data) >= 6 and flags:
        raise SpecError("BAD_FLAGS", f"{flags:#x}")
    if len(data) < HEADER.size:
        raise SpecError("TRUNCATED", "the stream ends inside a header")
    size = 18 + length
    if size > max_frame:
        raise SpecError("FRAME_TOO_LARGE", f"{size} bytes")
    if len(data) < size:
        raise SpecError("TRUNCATED", "the stream ends inside a frame")
    (crc,) = struct.unpack_from(">I", data, 14 + length)
    if zlib.crc32(data[:14 + length]) != crc:
        raise SpecError("BAD_CRC", f"{crc:#010x}")
    reader = Reader(data[14:14 + length])
    name = TYPES[mtype]
    fields = payload(name, reader)
    reader.end()
    return {"type": name, "version": version, "seq": seq, "fields": fields}, size


def copy_id(record_id: bytes, version: int, taken: int = 0) -> bytes:
    """Section 13: SHA-256("conflict" || record_id || u64be(version) [|| u32be(n)])[:16]."""
    suffix = struct.pack(">I", taken) if taken else b""
    return hashlib.sha256(b"conflict" + record_id + struct.pack(">Q", version) + suffix).digest()[:16]
