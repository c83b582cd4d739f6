"""Index checkpoints: the whole index written as one transaction starting on a fresh block, so that a
mount reads it and replays only what was written after it.

``Checkpointer`` writes them (and forgets one whose block garbage collection reclaims);
``read_checkpoint`` reads one back for mount. The value's codec is here too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from sidekick_testbed.emulator.store.format import (
    CHECKPOINT,
    COMMIT,
    E_BLOB,
    E_CKPT,
    E_HEAD,
    E_META,
    SLOT_BITS,
    Loc,
)
from sidekick_testbed.emulator.store.index import Index
from sidekick_testbed.emulator.store.log import Log, Retry
from sidekick_testbed.emulator.store.reading import PageReader
from sidekick_testbed.emulator.store.values import RESERVE_BLOCKS, StoreFull

__all__ = ["CHECKPOINT_MIN_BLOCKS", "CHECKPOINT_RATIO", "Checkpoint", "Checkpointer", "read_checkpoint"]

CHECKPOINT_MIN_BLOCKS = 4
"""An index checkpoint is written after at least this many blocks' worth of pages..."""
CHECKPOINT_RATIO = 4
"""...and at least this many times the checkpoint's own size (bounds its write cost to 1/4)."""
_CKPT_HEAD = struct.Struct(">QIII")
_CKPT_HEAD_FIELDS = struct.Struct(">QBQBBI")


@dataclass(slots=True)
class Checkpoint:
    """An index checkpoint read back: replay state keyed like mount's replay, and where it lies."""

    epoch: int
    found: dict[tuple[int, bytes], tuple[Any, Any, Any, int]]
    cross: dict[int, list[int]]
    pages: list[int]


class Checkpointer:
    """Writes index checkpoints of ``index`` through ``log`` once enough pages were written."""

    def __init__(self, log: Log, index: Index) -> None:
        self.log = log
        self.index = index
        self.pages: list[int] = []
        """Pages of the newest checkpoint (its bytes count as live)."""
        self.every = CHECKPOINT_MIN_BLOCKS * log.ppb
        """Pages written after which the next checkpoint is due."""
        self.count = 0
        """Index checkpoints this object wrote."""

    def copy(self, log: Log, index: Index) -> Checkpointer:
        """An independent copy over ``log`` and ``index``."""
        twin = object.__new__(Checkpointer)
        twin.__dict__ = self.__dict__.copy()
        twin.log = log
        twin.index = index
        twin.pages = list(self.pages)
        return twin

    def write(self) -> None:
        """Write the whole index as one transaction starting on a fresh block. Skipped if space is short."""
        log = self.log
        index = self.index
        value = self.encode()
        pages = log.pack([(E_CKPT, b"", value)])
        log.since_ckpt = 0
        try:
            log.ensure_space(len(pages) + log.ppb, RESERVE_BLOCKS)
        except StoreFull:
            return
        while True:
            # GC (or a retired block) may have moved entries: encode the index as it is now.
            pages = log.pack([(E_CKPT, b"", self.encode())])
            log.active = None
            log.in_ckpt = True
            try:
                written = log.write_pages(pages, 1, CHECKPOINT)
            except Retry:
                continue
            finally:
                log.in_ckpt = False
            break
        for page in self.pages:
            index.unlive(page << SLOT_BITS, index.cap)
        loc = written[0]
        self.pages = [part >> SLOT_BITS for part in (loc if isinstance(loc, tuple) else (loc,))]
        for page in self.pages:
            index.relive(page << SLOT_BITS, index.cap)
        log.since_ckpt = 0
        self.count += 1
        self.every = max(CHECKPOINT_MIN_BLOCKS * log.ppb, CHECKPOINT_RATIO * len(pages))

    def drop_if_on(self, block: int) -> None:
        """Forget the checkpoint if it lies (partly) on ``block``; a new one follows the next commit."""
        ppb = self.log.ppb
        if any(page // ppb == block for page in self.pages):
            for page in self.pages:
                self.index.unlive(page << SLOT_BITS, self.index.cap)
            self.pages = []
            self.log.since_ckpt = self.every

    def encode(self) -> bytes:
        """The checkpoint value of the index as it is now."""
        index = self.index
        cross = self.log.cross
        out = [_CKPT_HEAD.pack(self.log.epoch, len(index.heads), len(index.blobs), len(cross)),
               _encode_loc(index.meta_loc), struct.pack(">I", index.meta_size)]
        for key, head in index.heads.items():
            loc, lsn, state, gen, kind, deleted, size = head
            out.append(bytes((len(key),)) + key)
            out.append(_encode_loc(loc))
            out.append(_CKPT_HEAD_FIELDS.pack(lsn, state, gen, kind, deleted, size))
        for key, loc in index.blobs.items():
            out.append(bytes((len(key),)) + key)
            out.append(_encode_loc(loc))
        for block, others in cross.items():
            out.append(struct.pack(f">II{len(others)}Q", block, len(others), *others))
        return b"".join(out)


def read_checkpoint(reader: PageReader, block: int, seq: int, by_seq: dict[int, int]) -> Checkpoint | None:
    """The checkpoint whose first page is page 0 of ``block``, or None if it is not intact
    (``by_seq``: block whose page 0 has that sequence number)."""
    ppb = reader.ppb
    page = 0
    expected = seq
    chunks: list[bytes] = []
    pages: list[int] = []
    while True:
        raw = reader.read_mount(block, page)
        header, entries = reader.parse(raw)
        if (header is None or entries is None or header[1] != expected or header[2] != seq
                or not header[0] & CHECKPOINT or len(entries) != 1 or entries[0][1] != E_CKPT):
            return None
        _slot, _etype, _key, frag, _nfrag, vpos, vlen = entries[0]
        if frag != len(chunks):
            return None
        chunks.append(raw[vpos:vpos + vlen])
        pages.append(block * ppb + page)
        if header[0] & COMMIT:
            break
        expected += 1
        page += 1
        if page == ppb:
            next_block = by_seq.get(expected)
            if next_block is None:
                return None
            block, page = next_block, 0
    try:
        return _decode_checkpoint(b"".join(chunks), pages)
    except (struct.error, ValueError, IndexError):
        return None


def _encode_loc(loc: Loc) -> bytes:
    parts = loc if isinstance(loc, tuple) else (loc,)
    return struct.pack(f">H{len(parts)}Q", len(parts) if isinstance(loc, tuple) else 0, *parts)


def _decode_loc(data: bytes, pos: int) -> tuple[Loc, int]:
    (count,) = struct.unpack_from(">H", data, pos)
    pos += 2
    if count == 0:
        (loc,) = struct.unpack_from(">Q", data, pos)
        return loc, pos + 8
    locs = struct.unpack_from(f">{count}Q", data, pos)
    return tuple(locs), pos + 8 * count


def _decode_checkpoint(data: bytes, pages: list[int]) -> Checkpoint:
    epoch, n_heads, n_blobs, n_cross = _CKPT_HEAD.unpack_from(data, 0)
    pos = _CKPT_HEAD.size
    found: dict[tuple[int, bytes], tuple[Any, Any, Any, int]] = {}
    meta_loc, pos = _decode_loc(data, pos)
    (meta_size,) = struct.unpack_from(">I", data, pos)
    pos += 4
    found[(E_META, b"")] = (meta_loc, None, None, meta_size)
    fields_size = _CKPT_HEAD_FIELDS.size
    unpack = _CKPT_HEAD_FIELDS.unpack_from
    for _ in range(n_heads):
        klen = data[pos]
        key = data[pos + 1:pos + 1 + klen]
        loc, pos = _decode_loc(data, pos + 1 + klen)
        lsn, state, gen, kind, deleted, size = unpack(data, pos)
        pos += fields_size
        found[(E_HEAD, key)] = (loc, None, (loc, lsn, state, gen, kind, deleted, size), size)
    for _ in range(n_blobs):
        klen = data[pos]
        key = data[pos + 1:pos + 1 + klen]
        loc, pos = _decode_loc(data, pos + 1 + klen)
        found[(E_BLOB, key)] = (loc, None, None, 0)
    cross: dict[int, list[int]] = {}
    for _ in range(n_cross):
        block, count = struct.unpack_from(">II", data, pos)
        cross[block] = list(struct.unpack_from(f">{count}Q", data, pos + 8))
        pos += 8 + 8 * count
    if pos != len(data):
        raise ValueError("trailing bytes in checkpoint")
    return Checkpoint(epoch, found, cross, pages)
