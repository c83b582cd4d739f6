"""On-flash layout of the record store: page header, entries, entry locations, and the codecs of
the values (record heads, device metadata).

Every programmed page of the store is self-describing (layout in docs/FLASH.md):

    header (36 bytes, big-endian): magic b"SR", layout version u8, flags u8 (bit 0: COMMIT, bit 1: CHECKPOINT),
        seq u64 (page sequence number, strictly increasing over the life of the chip),
        txn u64 (seq of the first page of its transaction), epoch u64 (seq of the format that
        created the store), entry count u16, payload length u16,
        crc32 u32 over the 32 header bytes before it and the payload
    payload: entries, each: type u8, key length u8, fragment index u16, fragment count u16,
        value length u16, key, value

The spare area is never programmed by the store (byte 0 of page 0 is the bad-block marker).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from sidekick_testbed.emulator.store.values import (
    STATES,
    DeviceMeta,
    InvalidRecord,
    StoreCorrupt,
    StoredVersion,
    SyncState,
)
from sidekick_testbed.protocol.errors import ProtocolError
from sidekick_testbed.protocol.wire import decode_record, encode_record

__all__ = [
    "CHECKPOINT",
    "COMMIT",
    "ENTRY",
    "E_BLOB",
    "E_CKPT",
    "E_HEAD",
    "E_META",
    "Entry",
    "HEADER",
    "HEAD_PREFIX",
    "LAYOUT_VERSION",
    "Loc",
    "PAGE_MAGIC",
    "PageHeader",
    "SLOT_BITS",
    "check_meta",
    "decode_head",
    "decode_meta",
    "encode_head",
    "encode_meta",
    "encode_page",
    "iter_entries",
    "parse_header",
    "restated",
]

PAGE_MAGIC = b"SR"
LAYOUT_VERSION = 1
COMMIT = 0x01
CHECKPOINT = 0x02
"""Flag of every page of an index checkpoint transaction (it starts at page 0 of a block)."""
HEADER = struct.Struct(">2sBBQQQHHI")
ENTRY = struct.Struct(">BBHHH")
E_META = 1
E_HEAD = 2
E_BLOB = 3
E_CKPT = 4
ENTRY_TYPES = (E_META, E_HEAD, E_BLOB, E_CKPT)

HEAD_PREFIX = struct.Struct(">QQBQBB")
"""Fixed start of a HEAD value: lsn, base_version, state, generation, kind, deleted; then the record."""

SLOT_BITS = 12
"""An entry's location is ``page index << SLOT_BITS | slot``."""
Loc = int | tuple[int, ...]
"""Where a value lies: one location, or the locations of its fragments in order."""
Entry = tuple[int, bytes, bytes]
"""An entry to write: (type, key, value)."""


class PageHeader(NamedTuple):
    """A valid page's header fields."""

    flags: int
    seq: int
    txn: int
    epoch: int
    n_entries: int
    length: int


_header = PageHeader


def encode_page(flags: int, seq: int, txn: int, epoch: int, count: int, payload: bytes) -> bytes:
    """Header + payload of one page, CRC filled in."""
    head = HEADER.pack(PAGE_MAGIC, LAYOUT_VERSION, flags, seq, txn, epoch, count, len(payload), 0)[:-4]
    return head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload


def parse_header(raw: bytes, check_crc: bool = True) -> PageHeader | None:
    """The header of a valid store page, or None (erased, torn, foreign or corrupt)."""
    if raw[:2] != PAGE_MAGIC:
        return None
    magic, version, flags, seq, txn, epoch, count, length, crc = HEADER.unpack_from(raw, 0)
    end = HEADER.size + length
    if version != LAYOUT_VERSION or end > len(raw) or txn > seq:
        return None
    if check_crc and zlib.crc32(memoryview(raw)[HEADER.size:end], zlib.crc32(memoryview(raw)[:32])) != crc:
        return None
    return _header(flags, seq, txn, epoch, count, length)


def iter_entries(raw: bytes, header: PageHeader) -> Iterator[tuple[int, int, bytes, int, int, int, int]]:
    """(slot, type, key, fragment, fragments, value offset, value length) of each entry of a page."""
    pos = HEADER.size
    end = pos + header.length
    unpack = ENTRY.unpack_from
    for slot in range(header.n_entries):
        if pos + ENTRY.size > end:
            raise ValueError("entry header past the payload")
        etype, klen, frag, nfrag, vlen = unpack(raw, pos)
        kpos = pos + ENTRY.size
        vpos = kpos + klen
        if vpos + vlen > end or frag >= nfrag or etype not in ENTRY_TYPES:
            raise ValueError("malformed entry")
        yield slot, etype, raw[kpos:vpos], frag, nfrag, vpos, vlen
        pos = vpos + vlen


# ---------------------------------------------------------------------- value codecs


def restated(value: bytes, state: SyncState, generation: int) -> bytes:
    """A stored HEAD value with its sync state and generation replaced (the record is untouched)."""
    lsn, base, _state, _gen, kind, deleted = HEAD_PREFIX.unpack_from(value, 0)
    return HEAD_PREFIX.pack(lsn, base, state.value, generation, kind, deleted) + value[HEAD_PREFIX.size:]


def encode_head(version: StoredVersion) -> bytes:
    """The HEAD value of a version; InvalidRecord if it does not encode."""
    record = version.record
    try:
        body = encode_record(record)
        prefix = HEAD_PREFIX.pack(version.lsn, version.base_version, version.state.value,
                                  version.generation, record.kind, record.deleted)
    except (ProtocolError, struct.error, AttributeError) as exc:
        raise InvalidRecord(f"cannot store record: {exc}") from None
    return prefix + body


def decode_head(value: bytes) -> StoredVersion:
    """The version a HEAD value holds; StoreCorrupt if its record does not decode."""
    lsn, base, state, gen, _kind, _deleted = HEAD_PREFIX.unpack_from(value, 0)
    try:
        record = decode_record(value[HEAD_PREFIX.size:])
    except ProtocolError as exc:
        raise StoreCorrupt(f"stored record does not decode: {exc}") from None
    return StoredVersion(record, lsn, base, STATES[state], gen)


def check_meta(meta: DeviceMeta, epoch: int) -> None:
    """InvalidRecord if ``meta`` does not encode."""
    try:
        encode_meta(meta, epoch)
    except (struct.error, UnicodeEncodeError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRecord(f"bad device metadata: {exc}") from None


def encode_meta(meta: DeviceMeta, epoch: int) -> bytes:
    """The META value: the store's epoch, then the metadata fields."""
    account = meta.account.encode("utf-8")
    for name, value in (("device_id", meta.device_id), ("key", meta.key), ("server_id", meta.server_id)):
        if not isinstance(value, bytes | bytearray) or len(value) > 255:
            raise ValueError(f"{name} must be at most 255 bytes")
    return b"".join((
        struct.pack(">QB", epoch, len(meta.device_id)), bytes(meta.device_id),
        struct.pack(">H", len(account)), account,
        struct.pack(">B", len(meta.key)), bytes(meta.key),
        struct.pack(">QB", meta.next_lsn, len(meta.server_id)), bytes(meta.server_id),
        struct.pack(">QQQQ", meta.generation, meta.durable_lsn, meta.anchor, meta.server_anchor),
    ))


def decode_meta(value: bytes) -> tuple[DeviceMeta, int]:
    """(metadata, epoch) of a META value."""
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        out = struct.unpack_from(fmt, value, pos)
        pos += struct.calcsize(fmt)
        return out

    def blob(n: int) -> bytes:
        nonlocal pos
        out = bytes(value[pos:pos + n])
        if len(out) != n:
            raise ValueError("truncated metadata")
        pos += n
        return out

    epoch, n = take(">QB")
    device_id = blob(n)
    (n,) = take(">H")
    account = blob(n).decode("utf-8")
    (n,) = take(">B")
    key = blob(n)
    next_lsn, n = take(">QB")
    server_id = blob(n)
    generation, durable_lsn, anchor = take(">QQQ")
    (server_anchor,) = take(">Q") if len(value) - pos >= 8 else (0,)
    return DeviceMeta(device_id, account, key, next_lsn, server_id, generation, durable_lsn, anchor,
                      server_anchor), epoch
