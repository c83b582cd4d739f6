"""On-flash layout of the record store: page header, entries, and the codecs of their values.

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
from typing import NamedTuple

__all__ = [
    "CHECKPOINT",
    "COMMIT",
    "ENTRY",
    "E_BLOB",
    "E_CKPT",
    "E_HEAD",
    "E_META",
    "HEADER",
    "HEAD_PREFIX",
    "LAYOUT_VERSION",
    "PAGE_MAGIC",
    "PageHeader",
    "encode_page",
    "iter_entries",
    "parse_header",
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
