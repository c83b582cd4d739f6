"""The oracle's own reader of a handset's chip: what a mount would find, read from the raw pages.

Written from the on-flash format of docs/FLASH.md alone; it shares no code with the record store
it judges (``emulator.store``, its on-flash ``format`` included). It reads the array through
``NandFlash.held_block`` (a chip programmer's dump, like ``peek``: no operation counted, no ECC
draw, no power cut, no random number), so checking a handset never changes what happens next. It replays the whole log
(FLASH.md, "Full replay"); index checkpoints change no logical content and are skipped.

``FlashReader.read(flash)`` gives a ``ChipView``: the device metadata, every record head with its
sync state, every blob, the live bytes they take, and the pages that are not valid store pages.
Views are kept per chip until its bits change (``NandFlash.changes``), parsed pages per page content.
"""

from __future__ import annotations

import struct
import weakref
import zlib
from dataclasses import dataclass, field

from sidekick_testbed.emulator.flash import NandFlash
from sidekick_testbed.protocol.errors import ProtocolError
from sidekick_testbed.protocol.records import Photo, Record
from sidekick_testbed.protocol.wire import decode_record

__all__ = ["DIRTY", "DURABLE", "PUSHED", "ChipView", "FlashHead", "FlashMeta", "FlashReader", "read_chip"]

# Page header (FLASH.md "On-flash layout of the store"), big-endian.
_MAGIC = b"SR"
_LAYOUT = 1
_COMMIT = 0x01
_HEADER = struct.Struct(">2sBBQQQHHI")       # magic, layout, flags, seq, txn, epoch, count, len, crc32
_CRC_SPAN = 32                               # the CRC covers the header bytes before it, then the payload
_ENTRY = struct.Struct(">BBHHH")             # type, key length, fragment, fragments, value length
_META, _HEAD, _BLOB, _CKPT = 1, 2, 3, 4
_HEAD_FIELDS = struct.Struct(">QQBQBB")      # lsn, base version, state, generation, kind, deleted
_BLANK_HEADER = b"\xff" * _HEADER.size
_PHOTO = 5                                   # record kind of a photo (PROTOCOL.md, record encoding)

DIRTY, PUSHED, DURABLE = 0, 1, 2
"""Sync states of a head as stored (FLASH.md, "Sync state")."""
_STATE_NAMES = {DIRTY: "dirty", PUSHED: "pushed", DURABLE: "durable"}


@dataclass(frozen=True, slots=True)
class FlashMeta:
    """The device metadata entry."""

    epoch: int
    device_id: bytes
    account: str
    key: bytes
    next_lsn: int
    server_id: bytes
    generation: int
    durable_lsn: int
    anchor: int
    server_anchor: int


@dataclass(slots=True)
class FlashHead:
    """One record head as committed on flash."""

    record_id: bytes
    lsn: int
    base_version: int
    state: int
    generation: int
    kind: int
    deleted: bool
    value: bytes
    page: int
    """Index (block * pages per block + page) of the page holding the entry (its last fragment)."""
    seq: int
    _record: Record | None = None

    @property
    def record(self) -> Record:
        """The stored record (decoded on first use; ``ValueError`` if it does not decode)."""
        if self._record is None:
            try:
                self._record = decode_record(self.value[_HEAD_FIELDS.size:])
            except ProtocolError as exc:
                raise ValueError(f"head of record {self.record_id.hex()} does not decode: {exc}") from None
        return self._record

    @property
    def state_name(self) -> str:
        """``dirty``, ``pushed``, ``durable`` (or the raw number)."""
        return _STATE_NAMES.get(self.state, str(self.state))


@dataclass(slots=True)
class ChipView:
    """What a mount of the chip finds (``problem`` says why nothing if it would not mount)."""

    meta: FlashMeta | None = None
    heads: dict[bytes, FlashHead] = field(default_factory=dict)
    blobs: dict[bytes, bytes] = field(default_factory=dict)
    blob_pages: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    live_bytes: int = 0
    """Entry bytes (entry headers, keys, values) of everything live: what compaction must keep."""
    invalid: list[tuple[int, str]] = field(default_factory=list)
    """(page index, why) of programmed pages that are not valid store pages (torn, erased in part...)."""
    uncommitted: list[int] = field(default_factory=list)
    """Valid pages of transactions without a valid commit page."""
    bad_blocks: list[int] = field(default_factory=list)
    problem: str | None = None

    @property
    def mountable(self) -> bool:
        """True if the chip holds a store (committed pages and device metadata)."""
        return self.problem is None


@dataclass(frozen=True, slots=True)
class _Page:
    flags: int
    seq: int
    txn: int
    epoch: int
    entries: tuple[tuple[int, bytes, int, int, bytes], ...] | None
    """(type, key, fragment, fragments, value) of each entry; None if the payload is malformed."""


def _parse(raw: bytes, page_size: int) -> _Page | str:
    """A valid store page, or why not."""
    if raw[:2] != _MAGIC:
        return "no store magic"
    magic, layout, flags, seq, txn, epoch, count, length, crc = _HEADER.unpack_from(raw, 0)
    if layout != _LAYOUT:
        return f"layout version {layout}"
    end = _HEADER.size + length
    if end > page_size:
        return "payload length beyond the page"
    if txn > seq:
        return "transaction after its page"
    if zlib.crc32(raw[:_CRC_SPAN] + raw[_HEADER.size:end]) != crc:
        return "checksum mismatch"
    entries: list[tuple[int, bytes, int, int, bytes]] = []
    pos = _HEADER.size
    for _ in range(count):
        if pos + _ENTRY.size > end:
            return _Page(flags, seq, txn, epoch, None)
        etype, klen, frag, nfrag, vlen = _ENTRY.unpack_from(raw, pos)
        kpos = pos + _ENTRY.size
        vpos = kpos + klen
        if vpos + vlen > end or frag >= nfrag or etype not in (_META, _HEAD, _BLOB, _CKPT):
            return _Page(flags, seq, txn, epoch, None)
        entries.append((etype, raw[kpos:vpos], frag, nfrag, raw[vpos:vpos + vlen]))
        pos = vpos + vlen
    return _Page(flags, seq, txn, epoch, tuple(entries))


def _decode_meta(value: bytes) -> FlashMeta:
    pos = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        out = struct.unpack_from(fmt, value, pos)
        pos += struct.calcsize(fmt)
        return out

    def data(n: int) -> bytes:
        nonlocal pos
        out = value[pos:pos + n]
        if len(out) != n:
            raise ValueError("metadata truncated")
        pos += n
        return out

    epoch, n = take(">QB")
    device_id = data(n)
    (n,) = take(">H")
    account = data(n).decode("utf-8")
    (n,) = take(">B")
    key = data(n)
    next_lsn, n = take(">QB")
    server_id = data(n)
    generation, durable_lsn, anchor = take(">QQQ")
    server_anchor = take(">Q")[0] if len(value) - pos >= 8 else 0
    return FlashMeta(epoch, device_id, account, key, next_lsn, server_id, generation, durable_lsn, anchor,
                     server_anchor)


class FlashReader:
    """Reads chips (see the module docstring); one reader may serve many chips."""

    def __init__(self, max_pages: int = 100_000, *, keep_views: bool = True) -> None:
        self.keep_views = keep_views
        """Keep each chip's last view until its bits change (off for fleets of many chips)."""
        self._views: weakref.WeakKeyDictionary[NandFlash, tuple[int, ChipView]] = weakref.WeakKeyDictionary()
        self._pages: dict[bytes, _Page | str] = {}
        self._records: dict[bytes, Record] = {}
        self.max_pages = max_pages
        self.reads = 0
        """Chips decoded (views not taken from the cache)."""

    def read(self, flash: NandFlash) -> ChipView:
        """What a mount of ``flash`` would find now."""
        cached = self._views.get(flash)
        if cached is not None and cached[0] == flash.changes:
            return cached[1]
        view = self._decode(flash)
        if self.keep_views:
            self._views[flash] = (flash.changes, view)
        return view

    def _page(self, raw: bytes, page_size: int) -> _Page | str:
        hit = self._pages.get(raw)
        if hit is None:
            hit = _parse(raw.ljust(page_size, b"\xff"), page_size)
            if self.max_pages:
                if len(self._pages) >= self.max_pages:
                    self._pages.clear()
                self._pages[raw] = hit
        return hit

    def _decode(self, flash: NandFlash) -> ChipView:
        self.reads += 1
        g = flash.geometry
        ppb = g.pages_per_block
        view = ChipView()
        valid: list[tuple[int, int, _Page]] = []   # (seq, page index, page)
        size = g.page_size
        for block in range(g.blocks):
            pages = flash.held_block(block)   # pages without their trailing 0xFF bytes
            first = pages[0]
            if first is not None and len(first) > size and first[size] != 0xFF:
                view.bad_blocks.append(block)   # bad-block marker: spare byte 0 of page 0
                continue
            for page, raw in enumerate(pages):
                if raw is None or (len(raw) >= _HEADER.size and raw.startswith(_BLANK_HEADER)):
                    break   # the block's written part ends at the first page with a blank header
                index = block * ppb + page
                parsed = self._page(raw, size)
                if isinstance(parsed, str):
                    view.invalid.append((index, parsed))
                else:
                    valid.append((parsed.seq, index, parsed))
        committed = {p.txn for _s, _i, p in valid if p.flags & _COMMIT}
        kept = [item for item in valid if item[2].txn in committed]
        view.uncommitted = sorted(i for _s, i, p in valid if p.txn not in committed)
        if not kept:
            view.problem = "no committed page"
            return view
        epoch = max(p.epoch for _s, _i, p in kept)
        kept = sorted((item for item in kept if item[2].epoch == epoch), key=lambda item: item[0])
        found: dict[tuple[int, bytes], tuple[bytes, int, int, tuple[int, ...], int]] = {}
        partial: dict[tuple[int, bytes], tuple[int, list[bytes], list[int]]] = {}
        for seq, index, page in kept:
            for etype, key, frag, nfrag, value in page.entries or ():
                if etype == _CKPT:
                    continue
                name = (etype, key)
                if nfrag == 1:
                    found[name] = (value, index, seq, (index,), _ENTRY.size + len(key) + len(value))
                    continue
                if frag == 0:
                    partial[name] = (page.txn, [value], [index])
                else:
                    got = partial.get(name)
                    if got is None or got[0] != page.txn or len(got[1]) != frag:
                        partial.pop(name, None)
                        continue
                    got[1].append(value)
                    got[2].append(index)
                got = partial[name]
                if len(got[1]) == nfrag:
                    del partial[name]
                    whole = b"".join(got[1])
                    size = sum(_ENTRY.size + len(key) + len(part) for part in got[1])
                    found[name] = (whole, index, seq, tuple(got[2]), size)
        records = self._records
        blob_sizes: dict[bytes, int] = {}
        for (etype, key), (value, index, seq, pages_of, size) in found.items():
            view.live_bytes += size
            if etype == _HEAD:
                try:
                    lsn, base, state, gen, kind, deleted = _HEAD_FIELDS.unpack_from(value, 0)
                except struct.error:
                    view.invalid.append((index, f"head of record {key.hex()} too short"))
                    continue
                head = FlashHead(key, lsn, base, state, gen, kind, bool(deleted), value, index, seq)
                head._record = records.get(value)
                if head._record is None and self.max_pages:
                    try:
                        head._record = decode_record(value[_HEAD_FIELDS.size:])
                    except ProtocolError:
                        pass   # decoded (and reported) when the oracle asks for it
                    else:
                        if len(records) >= self.max_pages:
                            records.clear()
                        records[value] = head._record
                view.heads[key] = head
            elif etype == _BLOB:
                view.blobs[key] = value
                view.blob_pages[key] = pages_of
                blob_sizes[key] = size
            elif etype == _META:
                try:
                    view.meta = _decode_meta(value)
                except (struct.error, UnicodeDecodeError, ValueError) as exc:
                    view.problem = f"device metadata unreadable: {exc}"
                    return view
        if view.meta is None:
            view.problem = "no device metadata"
        _drop_deleted_images(view, blob_sizes)
        return view


def _drop_deleted_images(view: ChipView, blob_sizes: dict[bytes, int]) -> None:
    """FLASH.md: a blob that a photo tombstone names and no live photo head names is dead (the image
    of a deleted photo), like a superseded entry."""
    live: set[bytes] = set()
    deleted: set[bytes] = set()
    for head in view.heads.values():
        if head.kind != _PHOTO:
            continue
        try:
            body = head.record.body
        except ValueError:
            continue   # reported when the oracle asks for the record
        if isinstance(body, Photo):
            (deleted if head.deleted else live).add(body.blob_id)
    for blob_id in (deleted - live) & blob_sizes.keys():
        del view.blobs[blob_id]
        del view.blob_pages[blob_id]
        view.live_bytes -= blob_sizes[blob_id]


def read_chip(flash: NandFlash) -> ChipView:
    """One-off read of ``flash`` (no cache kept)."""
    return FlashReader().read(flash)
