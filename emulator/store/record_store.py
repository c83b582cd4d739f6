"""The handset's record store: a log-structured, crash-safe store on a ``NandFlash``.

Writes go in transactions of whole pages appended to the log (layout in ``emulator.store_format``,
docs/FLASH.md). The last page of a transaction carries the COMMIT flag: a transaction whose commit
page is not valid never happened. Every key (a record's head, a blob, the device metadata) is owned
by its newest committed entry; mount keeps the committed pages of the current format epoch and
replays them in sequence order, starting from the newest intact index checkpoint if there is one
(then only blocks written after it are scanned). Mount never writes; after mount new data always
goes into a freshly erased block, so torn pages and partly erased blocks are never written over.

Each mutating call is one transaction: after ``PowerLoss`` anywhere inside it, ``RecordStore.mount``
on the same flash shows the store wholly before or wholly after the call.

Garbage collection (greedy, see docs/FLASH.md): the used block with the fewest live bytes is the
victim; its live entries (and those of transactions whose commit page it holds) are rewritten in a
new committed transaction, and only then is the block erased. Free blocks are used in round-robin
order (wear levelling), each erased right before use. A failed program or erase retires the block
(bad) and relocates what lived on it. Only superseded entries are ever dropped: a record's head
(tombstones included) is never removed, so no version that is not durable can be lost.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sidekick_testbed.emulator.flash import (
    EraseError,
    NandFlash,
    PowerLoss,
    ProgramError,
    UncorrectableError,
)
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.emulator.store.format import (
    CHECKPOINT,
    COMMIT,
    E_BLOB,
    E_CKPT,
    E_HEAD,
    E_META,
    ENTRY,
    HEAD_PREFIX,
    HEADER,
    PageHeader,
    encode_page,
    iter_entries,
    parse_header,
)
from sidekick_testbed.protocol.errors import ProtocolError
from sidekick_testbed.protocol.records import Record, RecordBody, RecordKind
from sidekick_testbed.protocol.wire import decode_record, encode_record, with_version

__all__ = [
    "DeviceMeta",
    "InvalidRecord",
    "PageCache",
    "RecordStore",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreStats",
    "StoredVersion",
    "SyncState",
    "UnknownBlob",
]

READ_RETRIES = 4
"""Reads of a page retried after an uncorrectable ECC error before giving up."""
RESERVE_BLOCKS = 2
"""Free blocks kept back from user writes so that GC can always make progress."""
SLOT_BITS = 12
_U64 = (1 << 64) - 1


class StoreError(Exception):
    """Base of the store's errors."""


class StoreFull(StoreError):
    """Not enough free flash for this write, even after garbage collection. Nothing was changed."""


class StoreCorrupt(StoreError):
    """The flash holds no mountable store (blank, foreign or damaged beyond recovery)."""


class UnknownBlob(StoreError, KeyError):
    """No blob with that id in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown blob"


class InvalidRecord(StoreError, ValueError):
    """A record or metadata value that cannot be stored (does not encode)."""


class SyncState(enum.Enum):
    """Sync state of a stored version."""

    DIRTY = 0
    """Local edit not yet acknowledged by the server."""
    PUSHED = 1
    """PUSH_ACK seen: the server received it, not durable."""
    DURABLE = 2
    """The server confirmed it durable (in ``StoredVersion.generation``)."""


_STATES = tuple(SyncState)


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One record version on the device, with its sync state."""

    record: Record
    lsn: int
    base_version: int
    state: SyncState
    generation: int


@dataclass(frozen=True, slots=True)
class DeviceMeta:
    """Device identity and sync bookkeeping, persisted with every change."""

    device_id: bytes
    account: str
    key: bytes
    next_lsn: int
    server_id: bytes
    generation: int
    durable_lsn: int
    anchor: int
    server_anchor: int = 0
    """The highest anchor the server confirmed holding for this device (HELLO_OK, or a PONG after
    PULL_ACK); the regression check compares against it, since a PULL_ACK may be lost."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A summary of the store and the flash under it."""

    blocks: int
    bad_blocks: int
    free_blocks: int
    used_blocks: int
    free_bytes: int
    records: int
    blobs: int
    blob_pages: int
    by_kind: dict[str, int]
    by_state: dict[str, int]
    at_risk: int
    seq: int
    pages_written: int
    gc_pages_written: int
    erases: int
    gc_runs: int
    checkpoints: int


@dataclass(slots=True)
class _Scan:
    """What a scan of the whole chip found."""

    pages: list[tuple[int, int, PageHeader, Any, bytes]] = field(default_factory=list)
    """Valid pages: (seq, page index, header, entries or None, raw page)."""
    free: list[int] = field(default_factory=list)
    used: dict[int, int] = field(default_factory=dict)
    """Used block -> pages scanned (programmed, up to the first erased page)."""
    bad: set[int] = field(default_factory=set)
    invalid_pages: int = 0
    max_seq: int = 0


_Parsed = tuple[PageHeader | None, list[tuple[int, int, bytes, int, int, int, int]] | None]


class PageCache:
    """Memo of page parsing (header check, CRC, entry list), keyed by the page's bytes.

    Parsing is a pure function of the bytes read, so sharing a cache between mounts of the same
    chip (as the power-loss runner does) changes nothing but speed. Bounded: cleared when full.
    """

    def __init__(self, max_pages: int = 200_000) -> None:
        self.max_pages = max_pages
        self._parsed: dict[bytes, _Parsed] = {}
        self._unchecked: dict[bytes, _Parsed] = {}
        self._updates: dict[bytes, tuple[int, tuple[dict[tuple[int, bytes], Any], list[Any]]]] = {}

    def parse(self, raw: bytes, check_crc: bool) -> _Parsed:
        """(header, entries) of a page; (None, None) if it is not a valid store page."""
        memo = self._parsed if check_crc else self._unchecked
        hit = memo.get(raw)
        if hit is not None:
            return hit
        result = _parse_page(raw, check_crc)
        if len(memo) >= self.max_pages:
            memo.clear()
        memo[raw] = result
        return result

    def singles(self, index: int, raw: bytes, entries: list[Any]) -> tuple[dict[tuple[int, bytes], Any], list[Any]]:
        """Memo of the replay updates of one page at one position."""
        hit = self._updates.get(raw)
        if hit is not None and hit[0] == index:
            return hit[1]
        updates = _singles(index, raw, entries)
        if len(self._updates) >= self.max_pages:
            self._updates.clear()
        self._updates[raw] = (index, updates)
        return updates


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _singles(index: int, raw: bytes, entries: list[Any]) -> tuple[dict[tuple[int, bytes], Any], list[Any]]:
    base = index << SLOT_BITS
    updates = {(etype, key): (base | slot, raw, vpos, ENTRY.size + len(key) + vlen)
               for slot, etype, key, _frag, nfrag, vpos, vlen in entries if nfrag == 1}
    fragments = [e for e in entries if e[4] != 1] if len(updates) != len(entries) else []
    return updates, fragments


def _parse_page(raw: bytes, check_crc: bool) -> _Parsed:
    header = parse_header(raw, check_crc)
    if header is None:
        return None, None
    try:
        return header, list(iter_entries(raw, header))
    except ValueError:
        return header, None


# Head tuple fields: location, lsn, state value, generation, kind, deleted, live bytes.
_LOC, _LSN, _STATE, _GEN, _KIND, _DEL, _SIZE = range(7)
_Loc = int | tuple[int, ...]
_Entry = tuple[int, bytes, bytes]
_PageMemo = dict[int, tuple[bytes, list[Any]]]
"""Pages one bulk read already parsed: page index -> (raw bytes, entries)."""


def _restated(value: bytes, state: SyncState, generation: int) -> bytes:
    """A stored HEAD value with its sync state and generation replaced (the record is untouched)."""
    lsn, base, _state, _gen, kind, deleted = HEAD_PREFIX.unpack_from(value, 0)
    return HEAD_PREFIX.pack(lsn, base, state.value, generation, kind, deleted) + value[HEAD_PREFIX.size:]


CHECKPOINT_MIN_BLOCKS = 4
"""An index checkpoint is written after at least this many blocks' worth of pages..."""
CHECKPOINT_RATIO = 4
"""...and at least this many times the checkpoint's own size (bounds its write cost to 1/4)."""
_CKPT_HEAD = struct.Struct(">QIII")
_CKPT_HEAD_FIELDS = struct.Struct(">QBQBBI")


class _Fallback(Exception):
    """The checkpoint cannot be used; mount replays the whole log instead."""


@dataclass(slots=True)
class _Checkpoint:
    """An index checkpoint read back: replay state keyed like ``_load``'s, and where it lies."""

    epoch: int
    found: dict[tuple[int, bytes], tuple[Any, Any, Any, int]]
    cross: dict[int, list[int]]
    pages: list[int]


def _encode_loc(loc: int | tuple[int, ...]) -> bytes:
    parts = loc if isinstance(loc, tuple) else (loc,)
    return struct.pack(f">H{len(parts)}Q", len(parts) if isinstance(loc, tuple) else 0, *parts)


def _decode_loc(data: bytes, pos: int) -> tuple[int | tuple[int, ...], int]:
    (count,) = struct.unpack_from(">H", data, pos)
    pos += 2
    if count == 0:
        (loc,) = struct.unpack_from(">Q", data, pos)
        return loc, pos + 8
    locs = struct.unpack_from(f">{count}Q", data, pos)
    return tuple(locs), pos + 8 * count


def _decode_checkpoint(data: bytes, pages: list[int]) -> _Checkpoint:
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
    return _Checkpoint(epoch, found, cross, pages)


class _Retry(Exception):
    """A program failed mid-transaction; the block is retired and the transaction rewritten."""


class RecordStore:
    """Records (heads with sync state), blobs and device metadata on one flash chip."""

    def __init__(self, flash: NandFlash, *, mutants: Mutants = NO_MUTANTS,
                 page_cache: PageCache | None = None) -> None:
        """Use ``format`` or ``mount``; this makes an empty, unattached store object."""
        g = flash.geometry
        self.flash = flash
        self.mutants = mutants
        self._check = not mutants.on("skip-crc-check")
        self._cache = page_cache
        self._ppb = g.pages_per_block
        self._cap = g.page_size - HEADER.size
        self._heads: dict[bytes, tuple[Any, ...]] = {}
        self._blobs: dict[bytes, _Loc] = {}
        self._meta_loc: _Loc = 0
        self._meta_size = 0
        self.meta = DeviceMeta(b"", "", b"", 1, b"", 0, 0, 0)
        self._epoch = 0
        self._seq = 1
        self._live = [0] * g.blocks
        self._used: dict[int, int] = {}
        self._free: deque[int] = deque()
        self._bad: set[int] = set()
        self._cross: dict[int, list[int]] = {}
        self._active: int | None = None
        self._next = 0
        self._dead = False
        self.pages_written = 0
        self.gc_pages_written = 0
        self.erases = 0
        self.gc_runs = 0
        self.payload_bytes_written = 0
        """Entry bytes (headers, keys, values) in the pages this object programmed."""
        self._in_gc = False
        self._since_ckpt = 0
        self._ckpt_every = CHECKPOINT_MIN_BLOCKS * self._ppb
        self._ckpt_pages: list[int] = []
        self.checkpoints = 0
        """Index checkpoints this object wrote."""
        self.checkpoint_pages_written = 0
        self._in_ckpt = False
        self.mounted_from_checkpoint = False
        """True if the last mount started from an index checkpoint (else it replayed the whole log)."""

    # ------------------------------------------------------------------ format, mount

    @classmethod
    def format(cls, flash: NandFlash, *, device_id: bytes, account: str = "", key: bytes = b"",
               mutants: Mutants = NO_MUTANTS, page_cache: PageCache | None = None) -> RecordStore:
        """Make a new, empty store (a new epoch: anything older on the chip is ignored, then erased)."""
        store = cls(flash, mutants=mutants, page_cache=page_cache)
        scan = store._scan()
        store._seq = scan.max_seq + 1
        store._bad = scan.bad
        store._used = dict(scan.used)
        start = (max(scan.used, default=-1) + 1) % flash.geometry.blocks
        store._free = deque(sorted(scan.free, key=lambda b: (b - start) % flash.geometry.blocks))
        if not store._free:
            victim = min(store._used)
            store._erase(victim)
            del store._used[victim]
            store._free.append(victim)
        store._epoch = store._seq
        meta = DeviceMeta(bytes(device_id), account, bytes(key), 1, b"", 0, 0, 0)
        store._check_meta(meta)
        store._commit([(E_META, b"", store._encode_meta(meta))], reserve=0)
        store.meta = meta
        for block in sorted(store._used):
            if block != store._active and store._live[block] == 0:
                try:
                    store._erase(block)
                except EraseError:
                    store._bad.add(block)
                else:
                    store._free.append(block)
                del store._used[block]
        return store

    @classmethod
    def mount(cls, flash: NandFlash, *, mutants: Mutants = NO_MUTANTS,
              page_cache: PageCache | None = None) -> RecordStore:
        """Scan the chip and rebuild the store; StoreCorrupt if it holds no store."""
        store = cls(flash, mutants=mutants, page_cache=page_cache)
        try:
            fast = store._scan_from_checkpoint()
        except _Fallback:
            fast = None
        if fast is not None:
            try:
                store._load(*fast)
                store.mounted_from_checkpoint = True
                return store
            except _Fallback:
                store = cls(flash, mutants=mutants, page_cache=page_cache)
        store._load(store._scan(), None)
        return store

    def _scan_from_checkpoint(self) -> tuple[_Scan, _Checkpoint] | None:
        """Read page 0 of every block, load the newest intact checkpoint, and scan in full only
        the blocks written since it. None if there is no usable checkpoint."""
        flash = self.flash
        g = flash.geometry
        ppb = self._ppb
        blank = b"\xff" * HEADER.size
        bad = set(flash.bad_blocks())
        first: dict[int, int] = {}
        by_seq: dict[int, int] = {}
        candidates: list[tuple[int, int]] = []
        scan = _Scan(bad=bad)
        for block in range(g.blocks):
            if block in bad:
                continue
            raw = self._read_mount(block, 0)
            if raw.startswith(blank):
                scan.free.append(block)
                continue
            header, _entries = self._parse(raw)
            if header is None:
                scan.used[block] = ppb
                continue
            first[block] = header[1]
            by_seq[header[1]] = block
            if header[0] & CHECKPOINT and header[1] == header[2]:
                candidates.append((header[1], block))
        for seq, block in sorted(candidates, reverse=True):
            checkpoint = self._read_checkpoint(block, seq, by_seq)
            if checkpoint is None:
                continue
            parse = self._parse
            for other, start in first.items():
                if start < seq:
                    scan.used[other] = ppb
                    continue
                scanned = 0
                for page, raw in enumerate(self._read_run(other)):
                    if raw.startswith(blank):
                        break
                    scanned += 1
                    header, entries = parse(raw)
                    if header is None:
                        continue
                    scan.pages.append((header[1], other * ppb + page, header, entries, raw))
                scan.used[other] = max(scanned, 1)
            scan.max_seq = max((p[0] for p in scan.pages), default=0)
            return scan, checkpoint
        return None

    def _read_run(self, block: int) -> list[bytes]:
        try:
            return self.flash.read_run(block)
        except UncorrectableError:
            return [self._read_mount(block, page) for page in range(self._ppb)]

    def _read_checkpoint(self, block: int, seq: int, by_seq: dict[int, int]) -> _Checkpoint | None:
        """The checkpoint whose first page is page 0 of ``block``, or None if it is not intact."""
        ppb = self._ppb
        page = 0
        expected = seq
        chunks: list[bytes] = []
        pages: list[int] = []
        while True:
            raw = self._read_mount(block, page)
            header, entries = self._parse(raw)
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

    def _scan(self) -> _Scan:
        flash = self.flash
        g = flash.geometry
        scan = _Scan()
        ppb = self._ppb
        blank = b"\xff" * HEADER.size
        parse = self._parse
        read_run = flash.read_run
        pages = scan.pages
        bad = set(flash.bad_blocks())
        for block in range(g.blocks):
            if block in bad:
                scan.bad.add(block)
                continue
            base = block * ppb
            try:
                run = read_run(block)
            except UncorrectableError:
                run = [self._read_mount(block, page) for page in range(ppb)]
            scanned = 0
            for page, raw in enumerate(run):
                if raw.startswith(blank):
                    break
                scanned += 1
                header, entries = parse(raw)
                if header is None:
                    scan.invalid_pages += 1
                    continue
                pages.append((header[1], base + page, header, entries, raw))
            if scanned:
                scan.used[block] = scanned
            else:
                scan.free.append(block)
        scan.max_seq = max((p[0] for p in pages), default=0)
        return scan

    def _load(self, scan: _Scan, base: _Checkpoint | None) -> None:
        g = self.flash.geometry
        ppb = self._ppb
        committed = {p[2][2] for p in scan.pages if p[2][0] & COMMIT}  # header: flags, seq, txn, epoch
        pages = [p for p in scan.pages if p[2][2] in committed]
        if not pages:
            if base is not None:
                raise _Fallback()
            raise StoreCorrupt("no store on this flash (no committed page found)")
        epoch = max(p[2][3] for p in pages)
        if base is not None and (epoch != base.epoch or min(p[2][3] for p in pages) != epoch):
            raise _Fallback()  # a format after the checkpoint: replay everything
        if min(p[2][3] for p in pages) != epoch:
            pages = [p for p in pages if p[2][3] == epoch]
        pages.sort(key=_first)
        self._epoch = epoch
        self._seq = scan.max_seq + 1
        self._bad = scan.bad
        self._used = dict(scan.used)
        start = (pages[-1][1] // ppb + 1) % g.blocks
        self._free = deque(sorted(scan.free, key=lambda b: (b - start) % g.blocks))
        # Replay: the newest committed entry of each key wins. Values: (loc, raw of the first
        # fragment, value offset there, live bytes).
        found: dict[tuple[int, bytes], tuple[_Loc, Any, Any, int]] = {}
        if base is not None:
            found.update(base.found)
            for block, others in base.cross.items():
                self._cross.setdefault(block, []).extend(others)
            self._ckpt_pages = list(base.pages)
        partial: dict[tuple[int, bytes], tuple[int, list[int], bytes, int]] = {}
        txn_pages: list[int] = []
        last_txn = -1
        cap = self._cap
        singles = self._singles
        update = found.update
        for _seq, index, header, entries, raw in pages:
            txn = header[2]
            if txn != last_txn:
                if len(txn_pages) > 1:
                    self._note_cross(txn_pages)
                txn_pages = [index]
                last_txn = txn
            else:
                txn_pages.append(index)
            if entries is None:
                continue
            updates, fragments = singles(index, raw, entries)
            update(updates)
            page_loc = index << SLOT_BITS
            for slot, etype, key, frag, nfrag, vpos, _vlen in fragments:
                if etype == E_CKPT:
                    continue
                pk = (etype, key)
                if frag == 0:
                    partial[pk] = (txn, [page_loc | slot], raw, vpos)
                else:
                    got = partial.get(pk)
                    if got is None or got[0] != txn or len(got[1]) != frag:
                        partial.pop(pk, None)
                        continue
                    got[1].append(page_loc | slot)
                if len(partial[pk][1]) == nfrag:
                    _txn, locs, first_raw, first_pos = partial.pop(pk)
                    found[pk] = (tuple(locs), first_raw, first_pos, nfrag * cap)
        if len(txn_pages) > 1:
            self._note_cross(txn_pages)
        meta_value: bytes | None = None
        heads = self._heads
        unpack = HEAD_PREFIX.unpack_from
        for (etype, key), (loc, raw, vpos, size) in found.items():
            if etype == E_HEAD:
                if raw is None:  # from the checkpoint: vpos holds the head tuple
                    heads[key] = vpos
                else:
                    lsn, _base, state, gen, kind, deleted = unpack(raw, vpos)
                    heads[key] = (loc, lsn, state, gen, kind, deleted, size)
                self._relive(loc, size)
            elif etype == E_BLOB:
                self._blobs[key] = loc
                self._relive(loc, self._blob_size(loc))
            elif etype == E_META and not isinstance(loc, tuple):
                meta_value = self._read_fragment(loc)
                self._meta_loc = loc
                self._meta_size = size
                self._relive(loc, size)
        if meta_value is None:
            if base is not None:
                raise _Fallback()
            raise StoreCorrupt("no device metadata on this flash")
        for index in self._ckpt_pages:
            self._live[index // ppb] += self._cap
        try:
            self.meta, _ = self._decode_meta(meta_value)
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise StoreCorrupt(f"device metadata unreadable: {exc}") from None

    def _singles(self, index: int, raw: bytes, entries: list[Any]) -> tuple[dict[tuple[int, bytes], Any], list[Any]]:
        """Replay updates of a page's unfragmented entries, (type, key) -> (loc, raw, offset, size),
        and its fragment entries."""
        if self._cache is not None:
            return self._cache.singles(index, raw, entries)
        return _singles(index, raw, entries)

    def _note_cross(self, txn_pages: list[int]) -> None:
        """Remember the pages of a transaction that lie outside the block holding its commit page."""
        if len(txn_pages) < 2:
            return
        commit_block = txn_pages[-1] // self._ppb
        others = [i for i in txn_pages if i // self._ppb != commit_block]
        if others:
            self._cross.setdefault(commit_block, []).extend(others)

    def clone(self) -> RecordStore:
        """An independent copy of this store object (same flash): what a RAM snapshot would give."""
        twin = object.__new__(RecordStore)
        twin.__dict__ = self.__dict__.copy()
        twin._heads = dict(self._heads)
        twin._blobs = dict(self._blobs)
        twin._live = list(self._live)
        twin._used = dict(self._used)
        twin._free = deque(self._free)
        twin._bad = set(self._bad)
        twin._cross = {block: list(pages) for block, pages in self._cross.items()}
        twin._ckpt_pages = list(self._ckpt_pages)
        return twin

    # ------------------------------------------------------------------ metadata

    def set_meta(self, **changes: Any) -> None:
        """Change device metadata fields (names of ``DeviceMeta``); committed before it returns."""
        self._alive()
        names = {f.name for f in fields(DeviceMeta)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown metadata field(s): {', '.join(sorted(unknown))}")
        meta = replace(self.meta, **changes)
        self._check_meta(meta)
        if meta == self.meta:
            return
        self._run([(E_META, b"", self._encode_meta(meta))], reserve=1)
        self.meta = meta

    # ------------------------------------------------------------------ records

    def get(self, record_id: bytes) -> StoredVersion | None:
        """The head version of a record (tombstones included), or None."""
        self._alive()
        head = self._heads.get(bytes(record_id))
        if head is None:
            return None
        return self._decode_head(self._read_value(head[_LOC]))

    def records(self) -> list[StoredVersion]:
        """Every head version, tombstones included, by record id."""
        self._alive()
        return self._decode_heads(sorted(self._heads))

    def record_ids(self) -> list[bytes]:
        """Ids of every record (tombstones included), sorted; no flash reads."""
        return sorted(self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def write_local(self, record_id: bytes, body: RecordBody, *, deleted: bool = False) -> StoredVersion:
        """A user edit (or delete, as a tombstone): the new head, next LSN, DIRTY; committed on return."""
        self._alive()
        record_id = bytes(record_id)
        head = self._heads.get(record_id)
        base = 0
        if head is not None:
            base = self._decode_head(self._read_value(head[_LOC])).record.version
        meta = self.meta
        version = StoredVersion(Record(record_id, 0, deleted, body), meta.next_lsn, base, SyncState.DIRTY, 0)
        new_meta = replace(meta, next_lsn=meta.next_lsn + 1)
        entries = [(E_HEAD, record_id, self._encode_head(version)), (E_META, b"", self._encode_meta(new_meta))]
        if self.mutants.on("next-lsn-in-ram"):
            entries.pop()
        self._run(entries, reserve=RESERVE_BLOCKS)
        self.meta = new_meta
        return version

    def pending(self) -> list[StoredVersion]:
        """Heads not DURABLE, in LSN order."""
        self._alive()
        durable = SyncState.DURABLE.value
        ids = [rid for rid, h in self._heads.items() if h[_STATE] != durable]
        ids.sort(key=lambda rid: (self._heads[rid][_LSN], rid))
        return self._decode_heads(ids)

    def at_risk(self) -> list[StoredVersion]:
        """Heads not DURABLE in the current generation (``meta.generation``), in LSN order."""
        self._alive()
        durable = SyncState.DURABLE.value
        gen = self.meta.generation
        ids = [rid for rid, h in self._heads.items() if h[_STATE] != durable or h[_GEN] != gen]
        ids.sort(key=lambda rid: (self._heads[rid][_LSN], rid))
        return self._decode_heads(ids)

    def mark_pushed(self, through_lsn: int) -> None:
        """DIRTY heads with lsn <= through_lsn become PUSHED (one commit)."""
        self._alive()
        changed = self._receipt_entries(through_lsn, 0, 0, ())
        if changed:
            self._run(changed, reserve=1)

    def mark_durable(self, generation: int, through_lsn: int,
                     assigned: Sequence[tuple[int, bytes, int]]) -> None:
        """PUSHED heads with lsn <= through_lsn become DURABLE in ``generation``; ``assigned``
        (lsn, record_id, server version) sets the server version of those heads. One commit."""
        self._alive()
        if not 0 <= generation <= _U64:
            raise InvalidRecord(f"generation {generation} out of range")
        changed = self._receipt_entries(0, generation, through_lsn, assigned)
        if changed:
            self._run(changed, reserve=1)

    def record_receipts(self, pushed_through: int, generation: int, durable_through: int,
                        assigned: Sequence[tuple[int, bytes, int]], durable_lsn: int) -> None:
        """A session's receipts in ONE commit (none if nothing changes): what ``mark_pushed``
        (``pushed_through``), then ``mark_durable`` (``generation``, ``durable_through``,
        ``assigned``), then raising ``meta.durable_lsn`` to ``durable_lsn`` would do in three."""
        self._alive()
        if not 0 <= generation <= _U64:
            raise InvalidRecord(f"generation {generation} out of range")
        changed = self._receipt_entries(pushed_through, generation, durable_through, assigned)
        meta = self.meta
        if durable_lsn > meta.durable_lsn:
            meta = replace(meta, durable_lsn=durable_lsn)
            self._check_meta(meta)
            changed.append((E_META, b"", self._encode_meta(meta)))
        if changed:
            self._run(changed, reserve=1)
            self.meta = meta

    def _receipt_entries(self, pushed_through: int, generation: int, durable_through: int,
                         assigned: Sequence[tuple[int, bytes, int]]) -> list[_Entry]:
        """The rewritten heads: DIRTY with lsn <= ``pushed_through`` become PUSHED, then PUSHED with
        lsn <= ``durable_through`` DURABLE in ``generation``; ``assigned`` sets server versions."""
        by_lsn = {(lsn, bytes(rid)): v for lsn, rid, v in assigned}
        versions = {rid for _lsn, rid in by_lsn}
        dirty, pushed = SyncState.DIRTY.value, SyncState.PUSHED.value
        pages: _PageMemo = {}
        changed: list[_Entry] = []
        for rid, h in self._heads.items():
            lsn = h[_LSN]
            becomes_pushed = h[_STATE] == dirty and 0 < lsn <= pushed_through
            becomes_durable = (becomes_pushed or h[_STATE] == pushed) and 0 < lsn <= durable_through
            new_version = by_lsn.get((lsn, rid)) if rid in versions and lsn > 0 else None
            if not becomes_pushed and not becomes_durable and new_version is None:
                continue
            value = self._read_value(h[_LOC], pages)
            if new_version is not None:
                value = value[:HEAD_PREFIX.size] + with_version(value[HEAD_PREFIX.size:], new_version)
            if becomes_durable:
                value = _restated(value, SyncState.DURABLE, generation)
            elif becomes_pushed:
                value = _restated(value, SyncState.PUSHED, h[_GEN])
            changed.append((E_HEAD, rid, value))
        return changed

    def apply_pulled(self, records: Sequence[Record], anchor: int) -> None:
        """Store pulled server versions as DURABLE in ``meta.generation`` and set ``meta.anchor``,
        in one commit (none if neither changes). A record whose local head is not DURABLE in that
        generation is skipped (the local edit will be pushed; the server resolves the conflict)."""
        self._alive()
        meta = self.meta
        durable = SyncState.DURABLE.value
        latest: dict[bytes, Record] = {}
        for record in records:
            head = self._heads.get(record.record_id)
            if head is not None and (head[_STATE] != durable or head[_GEN] != meta.generation):
                continue
            latest[record.record_id] = record
        if not latest and anchor == meta.anchor:
            return  # nothing new (an idle poll): no commit, no flash wear
        if records and self.mutants.on("refuse-pulls-as-full"):
            raise StoreFull("store full: the pulled records do not fit")
        entries: list[_Entry] = [
            (E_HEAD, rid, self._encode_head(StoredVersion(rec, 0, rec.version, SyncState.DURABLE,
                                                           meta.generation)))
            for rid, rec in latest.items()
        ]
        new_meta = replace(meta, anchor=anchor)
        self._check_meta(new_meta)
        entries.append((E_META, b"", self._encode_meta(new_meta)))
        self._run(entries, reserve=RESERVE_BLOCKS)
        self.meta = new_meta

    def mark_all_dirty(self) -> None:
        """Recovery sync: every head gets a fresh LSN (in old LSN order) and state DIRTY; one commit."""
        self._alive()
        meta = self.meta
        lsn = meta.next_lsn
        entries: list[_Entry] = []
        ids = sorted(self._heads, key=lambda r: (self._heads[r][_LSN], r))
        for rid, version in zip(ids, self._decode_heads(ids), strict=True):
            version = replace(version, lsn=lsn, state=SyncState.DIRTY, generation=0)
            entries.append((E_HEAD, rid, self._encode_head(version)))
            lsn += 1
        new_meta = replace(meta, next_lsn=lsn)
        entries.append((E_META, b"", self._encode_meta(new_meta)))
        self._run(entries, reserve=1)
        self.meta = new_meta

    # ------------------------------------------------------------------ blobs

    def write_blob(self, blob_id: bytes, data: bytes) -> None:
        """Store a blob (photo bytes), spread over as many pages as it needs; one commit."""
        self._alive()
        blob_id = bytes(blob_id)
        if not 1 <= len(blob_id) <= 255:
            raise InvalidRecord("blob id must be 1..255 bytes")
        self._run([(E_BLOB, blob_id, bytes(data))], reserve=RESERVE_BLOCKS)

    def has_blob(self, blob_id: bytes) -> bool:
        """True if the blob is stored."""
        return bytes(blob_id) in self._blobs

    def read_blob_chunks(self, blob_id: bytes) -> Iterator[bytes]:
        """The blob's bytes, one page-sized chunk at a time; UnknownBlob if absent."""
        self._alive()
        loc = self._blobs.get(bytes(blob_id))
        if loc is None:
            raise UnknownBlob(f"no blob {bytes(blob_id).hex()}")
        for part in (loc if isinstance(loc, tuple) else (loc,)):
            yield self._read_fragment(part)

    def read_blob(self, blob_id: bytes) -> bytes:
        """The whole blob; UnknownBlob if absent."""
        return b"".join(self.read_blob_chunks(blob_id))

    def blob_ids(self) -> list[bytes]:
        """Ids of the stored blobs, sorted."""
        return sorted(self._blobs)

    # ------------------------------------------------------------------ summaries

    def stats(self) -> StoreStats:
        """Free/used blocks, counts by kind and state, write counters."""
        g = self.flash.geometry
        by_kind: dict[str, int] = {}
        by_state: dict[str, int] = {}
        for h in self._heads.values():
            kind = RecordKind(h[_KIND]).name.lower()
            by_kind[kind] = by_kind.get(kind, 0) + 1
            state = _STATES[h[_STATE]].name.lower()
            by_state[state] = by_state.get(state, 0) + 1
        gen = self.meta.generation
        durable = SyncState.DURABLE.value
        at_risk = sum(1 for h in self._heads.values() if h[_STATE] != durable or h[_GEN] != gen)
        free_pages = len(self._free) * self._ppb + (self._ppb - self._next if self._active is not None else 0)
        blob_pages = sum(len(loc) if isinstance(loc, tuple) else 1 for loc in self._blobs.values())
        return StoreStats(
            blocks=g.blocks, bad_blocks=len(self._bad), free_blocks=len(self._free),
            used_blocks=len(self._used), free_bytes=free_pages * self._cap, records=len(self._heads),
            blobs=len(self._blobs), blob_pages=blob_pages, by_kind=by_kind, by_state=by_state,
            at_risk=at_risk, seq=self._seq, pages_written=self.pages_written,
            gc_pages_written=self.gc_pages_written, erases=self.erases, gc_runs=self.gc_runs,
            checkpoints=self.checkpoints)

    def digest(self) -> bytes:
        """A fingerprint of the logical content (heads, blobs, metadata) read back from flash."""
        self._alive()
        parts = [self._encode_meta(self.meta)]
        pages: _PageMemo = {}
        for rid in sorted(self._heads):
            parts.append(rid + self._read_value(self._heads[rid][_LOC], pages))
        for bid in sorted(self._blobs):
            parts.append(bid + struct.pack(">I", zlib.crc32(self.read_blob(bid))))
        return hashlib.blake2b(b"\x00".join(parts), digest_size=16).digest()

    def block_map(self) -> dict[str, list[int]]:
        """Blocks by role: bad, free, used, active."""
        return {"bad": sorted(self._bad), "free": sorted(self._free),
                "used": sorted(b for b in self._used if b != self._active),
                "active": [] if self._active is None else [self._active]}

    def live_bytes(self, block: int) -> int:
        """Bytes of live entries on a block."""
        return self._live[block]

    # ------------------------------------------------------------------ transactions

    @property
    def dead(self) -> bool:
        """True once power was lost under this store object (mount the flash again)."""
        return self._dead

    def _alive(self) -> None:
        if self._dead:
            raise StoreError("power was lost under this store object: mount the flash again")

    def _run(self, entries: list[_Entry], reserve: int) -> None:
        """Commit entries as one transaction; the store object dies on PowerLoss."""
        try:
            self._commit(entries, reserve)
            if self._since_ckpt >= self._ckpt_every:
                self._checkpoint()
        except PowerLoss:
            self._dead = True
            raise

    def _pack(self, entries: list[_Entry]) -> list[list[tuple[int, int, bytes, int, int, bytes]]]:
        """Split entries into pages: (entry no, type, key, fragment, fragments, value part)."""
        cap = self._cap
        pages: list[list[tuple[int, int, bytes, int, int, bytes]]] = []
        cur: list[tuple[int, int, bytes, int, int, bytes]] = []
        used = 0
        for n, (etype, key, value) in enumerate(entries):
            need = ENTRY.size + len(key) + len(value)
            if need <= cap:
                if used + need > cap:
                    pages.append(cur)
                    cur, used = [], 0
                cur.append((n, etype, key, 0, 1, value))
                used += need
                continue
            if cur:
                pages.append(cur)
                cur, used = [], 0
            chunk = cap - ENTRY.size - len(key)
            count = -(-len(value) // chunk)
            if count > 0xFFFF:
                raise InvalidRecord(f"value of {len(value)} bytes is too large for the store")
            for i in range(count):
                pages.append([(n, etype, key, i, count, value[i * chunk:(i + 1) * chunk])])
        if cur:
            pages.append(cur)
        return pages

    def _commit(self, entries: list[_Entry], reserve: int) -> None:
        if not entries:
            return
        pages = self._pack(entries)
        for _attempt in range(16):
            self._ensure_space(len(pages), reserve)
            try:
                locs = self._write_pages(pages, len(entries))
            except _Retry:
                continue
            break
        else:
            raise StoreError("too many program failures in one write")
        for (etype, key, value), loc in zip(entries, locs, strict=True):
            self._apply(etype, key, value, loc)

    def _write_pages(self, pages: list[list[tuple[int, int, bytes, int, int, bytes]]],
                     n_entries: int, flags: int = 0) -> list[_Loc]:
        frags: list[list[int]] = [[] for _ in range(n_entries)]
        txn = self._seq
        written: list[int] = []
        last = len(pages) - 1
        for i, page_entries in enumerate(pages):
            payload = b"".join(
                ENTRY.pack(etype, len(key), frag, nfrag, len(part)) + key + part
                for _n, etype, key, frag, nfrag, part in page_entries)
            seq = self._seq
            self._seq += 1
            self.payload_bytes_written += len(payload)
            page_flags = flags | (COMMIT if i == last else 0)
            page = encode_page(page_flags, seq, txn, self._epoch, len(page_entries), payload)
            index = self._program(page)
            written.append(index)
            for slot, entry in enumerate(page_entries):
                frags[entry[0]].append(index << SLOT_BITS | slot)
        self._note_cross(written)
        return [f[0] if len(f) == 1 else tuple(f) for f in frags]

    def _program(self, data: bytes) -> int:
        """Program one page at the head of the log; the page index."""
        if self._active is None or self._next >= self._ppb:
            self._open_block()
        block = self._active
        assert block is not None
        page = self._next
        self._next += 1
        self._used[block] = self._next
        try:
            self.flash.program_page(block, page, data)
        except ProgramError:
            self._retire(block)
            raise _Retry from None
        if self._in_gc:
            self.gc_pages_written += 1
        elif self._in_ckpt:
            self.checkpoint_pages_written += 1
        else:
            self.pages_written += 1
        self._since_ckpt += 1
        return block * self._ppb + page

    def _open_block(self) -> None:
        while True:
            if not self._free:
                raise StoreFull("no free block left")
            block = self._free.popleft()
            try:
                self._erase(block)
            except EraseError:
                self._bad.add(block)
                continue
            self._active = block
            self._next = 0
            self._used[block] = 0
            return

    def _erase(self, block: int) -> None:
        self._live[block] = 0
        self._cross.pop(block, None)
        try:
            self.flash.erase_block(block)
        finally:
            self.erases += 1

    def _retire(self, block: int) -> None:
        """A program failed on ``block``: it is bad now; move what lives on it elsewhere, and only
        once that copy is committed mark the block bad on flash (a mount skips bad blocks, so
        marking first would lose its data to a power cut during the move)."""
        self._bad.add(block)
        if self._active == block:
            self._active = None
        self._relocate(block, erase=False)
        self.flash.mark_bad(block)
        self._used.pop(block, None)

    # ------------------------------------------------------------------ checkpoint

    def _checkpoint(self) -> None:
        """Write the whole index as one transaction starting on a fresh block, so that a mount
        reads it and replays only what was written after it. Skipped if space is short."""
        value = self._encode_checkpoint()
        pages = self._pack([(E_CKPT, b"", value)])
        self._since_ckpt = 0
        try:
            self._ensure_space(len(pages) + self._ppb, RESERVE_BLOCKS)
        except StoreFull:
            return
        while True:
            # GC (or a retired block) may have moved entries: encode the index as it is now.
            pages = self._pack([(E_CKPT, b"", self._encode_checkpoint())])
            self._active = None
            self._in_ckpt = True
            try:
                written = self._write_pages(pages, 1, CHECKPOINT)
            except _Retry:
                continue
            finally:
                self._in_ckpt = False
            break
        for index in self._ckpt_pages:
            self._unlive(index << SLOT_BITS, self._cap)
        loc = written[0]
        self._ckpt_pages = [part >> SLOT_BITS for part in (loc if isinstance(loc, tuple) else (loc,))]
        for index in self._ckpt_pages:
            self._relive(index << SLOT_BITS, self._cap)
        self._since_ckpt = 0
        self.checkpoints += 1
        self._ckpt_every = max(CHECKPOINT_MIN_BLOCKS * self._ppb, CHECKPOINT_RATIO * len(pages))

    def _encode_checkpoint(self) -> bytes:
        out = [_CKPT_HEAD.pack(self._epoch, len(self._heads), len(self._blobs), len(self._cross)),
               _encode_loc(self._meta_loc), struct.pack(">I", self._meta_size)]
        for key, head in self._heads.items():
            loc, lsn, state, gen, kind, deleted, size = head
            out.append(bytes((len(key),)) + key)
            out.append(_encode_loc(loc))
            out.append(_CKPT_HEAD_FIELDS.pack(lsn, state, gen, kind, deleted, size))
        for key, loc in self._blobs.items():
            out.append(bytes((len(key),)) + key)
            out.append(_encode_loc(loc))
        for block, others in self._cross.items():
            out.append(struct.pack(f">II{len(others)}Q", block, len(others), *others))
        return b"".join(out)

    # ------------------------------------------------------------------ garbage collection

    def _free_pages(self) -> int:
        tail = self._ppb - self._next if self._active is not None else 0
        return len(self._free) * self._ppb + tail

    def _ensure_space(self, pages: int, reserve: int) -> None:
        need = pages + reserve * self._ppb
        while self._free_pages() < need:
            if self._in_gc or not self._collect():
                raise StoreFull(f"store full: {pages} page(s) needed, {self._free_pages()} free "
                                f"({reserve} block(s) kept for garbage collection)")

    def _collect(self) -> bool:
        """Reclaim one block by the greedy policy: the block with the fewest live bytes whose live
        entries can be moved; False if no block would give space back."""
        victims = sorted((self._live[block], block) for block in self._used
                         if block != self._active and block not in self._bad)
        for _live, block in victims:
            if self._relocate(block, erase=True):
                self.gc_runs += 1
                return True
        return False

    def _live_entries(self, block: int) -> list[_Entry]:
        """Live entries stored on ``block`` or in transactions whose commit page is on it."""
        ppb = self._ppb
        pages = [block * ppb + p for p in range(self._used.get(block, ppb))]
        pages += self._cross.get(block, [])
        found: dict[tuple[int, bytes], bytes] = {}
        for index in pages:
            _header, page_entries = self._parse(self._read_raw(index))
            if page_entries is None:
                continue
            for slot, etype, key, _frag, _nfrag, _vpos, _vlen in page_entries:
                if (etype, key) not in found and self._is_live(etype, key, index << SLOT_BITS | slot):
                    found[(etype, key)] = self._read_value(self._current(etype, key))
        return [(etype, key, value) for (etype, key), value in found.items()]

    def _relocate(self, block: int, *, erase: bool) -> bool:
        """Rewrite the live entries of ``block`` elsewhere, commit that, then erase the block.
        False (nothing done) if the rewrite would not fit or would not give space back."""
        entries = self._live_entries(block)
        pages = self._pack(entries) if entries else []
        if erase and (len(pages) >= self._ppb or len(pages) > self._free_pages()):
            return False
        if any(index // self._ppb == block for index in self._ckpt_pages):
            for index in self._ckpt_pages:
                self._unlive(index << SLOT_BITS, self._cap)
            self._ckpt_pages = []
            self._since_ckpt = self._ckpt_every  # write a new one after the next commit
        was_gc = self._in_gc
        self._in_gc = True
        erased = False
        try:
            if erase and self.mutants.on("gc-erase-before-commit"):
                self._erase(block)
                erased = True
            if entries:
                self._commit(entries, reserve=0)
            if erase and not erased:
                self._erase(block)
            if erase:
                self._used.pop(block, None)
                self._free.append(block)
        except EraseError:
            self._bad.add(block)
            self._used.pop(block, None)
        finally:
            self._in_gc = was_gc
        return True

    def _current(self, etype: int, key: bytes) -> _Loc:
        if etype == E_HEAD:
            loc: _Loc = self._heads[key][_LOC]
            return loc
        if etype == E_BLOB:
            return self._blobs[key]
        return self._meta_loc

    def _is_live(self, etype: int, key: bytes, loc: int) -> bool:
        if etype == E_HEAD:
            head = self._heads.get(key)
            cur = None if head is None else head[_LOC]
        elif etype == E_BLOB:
            cur = self._blobs.get(key)
        elif etype == E_META:
            cur = self._meta_loc
        else:
            return False
        return cur == loc or (isinstance(cur, tuple) and loc in cur)

    # ------------------------------------------------------------------ index

    def _apply(self, etype: int, key: bytes, value: bytes, loc: _Loc) -> None:
        """Point the index at a just-committed entry."""
        if etype == E_HEAD:
            size = ENTRY.size + len(key) + len(value) if not isinstance(loc, tuple) else len(loc) * self._cap
            self._set_head(key, loc, value, 0, size)
        elif etype == E_BLOB:
            old = self._blobs.get(key)
            if old is not None:
                self._unlive(old, self._blob_size(old))
            self._blobs[key] = loc
            self._relive(loc, self._blob_size(loc))
        else:
            self._unlive(self._meta_loc, self._meta_size)
            self._meta_loc = loc
            self._meta_size = ENTRY.size + len(value)
            self._relive(loc, self._meta_size)

    def _set_head(self, key: bytes, loc: _Loc, buf: bytes, vpos: int, size: int) -> None:
        lsn, _base, state, gen, kind, deleted = HEAD_PREFIX.unpack_from(buf, vpos)
        old = self._heads.get(key)
        if old is not None:
            self._unlive(old[_LOC], old[_SIZE])
        self._heads[bytes(key)] = (loc, lsn, state, gen, kind, deleted, size)
        self._relive(loc, size)

    def _blob_size(self, loc: _Loc) -> int:
        return len(loc) * self._cap if isinstance(loc, tuple) else self._cap

    def _relive(self, loc: _Loc, size: int) -> None:
        shift = SLOT_BITS
        ppb = self._ppb
        if isinstance(loc, tuple):
            part = size // len(loc)
            for one in loc:
                self._live[(one >> shift) // ppb] += part
        else:
            self._live[(loc >> shift) // ppb] += size

    def _unlive(self, loc: _Loc, size: int) -> None:
        shift = SLOT_BITS
        ppb = self._ppb
        if isinstance(loc, tuple):
            part = size // len(loc)
            for one in loc:
                block = (one >> shift) // ppb
                self._live[block] = max(0, self._live[block] - part)
        else:
            block = (loc >> shift) // ppb
            self._live[block] = max(0, self._live[block] - size)

    # ------------------------------------------------------------------ reading

    def _read_mount(self, block: int, page: int) -> bytes:
        try:
            return self._read_retry(block, page)
        except UncorrectableError as exc:
            raise StoreCorrupt(f"page {block}:{page} unreadable: {exc}") from None

    def _read_retry(self, block: int, page: int) -> bytes:
        for attempt in range(READ_RETRIES):
            try:
                return self.flash.read_raw(block, page)
            except UncorrectableError:
                if attempt == READ_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _read_raw(self, index: int) -> bytes:
        try:
            return self._read_retry(*divmod(index, self._ppb))
        except UncorrectableError as exc:
            raise StoreError(f"flash page {index} unreadable: {exc}") from None

    def _read_fragment(self, loc: int, pages: _PageMemo | None = None) -> bytes:
        """One stored fragment; ``pages`` keeps the pages a bulk read parsed (no write in between)."""
        index, slot = loc >> SLOT_BITS, loc & ((1 << SLOT_BITS) - 1)
        known = pages.get(index) if pages is not None else None
        if known is None:
            raw = self._read_raw(index)
            _header, entries = self._parse(raw)
            if entries is None:
                raise StoreCorrupt(f"live page {index} fails its checksum")
            if pages is not None:
                pages[index] = (raw, entries)
        else:
            raw, entries = known
        if slot < len(entries):
            _s, _etype, _key, _frag, _nfrag, vpos, vlen = entries[slot]
            return raw[vpos:vpos + vlen]
        raise StoreCorrupt(f"live entry {index}/{slot} missing")

    def _parse(self, raw: bytes) -> _Parsed:
        if self._cache is not None:
            return self._cache.parse(raw, self._check)
        return _parse_page(raw, self._check)

    def _read_value(self, loc: _Loc, pages: _PageMemo | None = None) -> bytes:
        if isinstance(loc, tuple):
            return b"".join(self._read_fragment(one, pages) for one in loc)
        return self._read_fragment(loc, pages)

    def _decode_heads(self, rids: Sequence[bytes]) -> list[StoredVersion]:
        """The heads of ``rids``, in that order, reading and parsing each flash page once."""
        heads = self._heads
        pages: _PageMemo = {}
        return [self._decode_head(self._read_value(heads[rid][_LOC], pages)) for rid in rids]

    # ------------------------------------------------------------------ codecs

    @staticmethod
    def _encode_head(version: StoredVersion) -> bytes:
        record = version.record
        try:
            body = encode_record(record)
            prefix = HEAD_PREFIX.pack(version.lsn, version.base_version, version.state.value,
                                      version.generation, record.kind, record.deleted)
        except (ProtocolError, struct.error, AttributeError) as exc:
            raise InvalidRecord(f"cannot store record: {exc}") from None
        return prefix + body

    @staticmethod
    def _decode_head(value: bytes) -> StoredVersion:
        lsn, base, state, gen, _kind, _deleted = HEAD_PREFIX.unpack_from(value, 0)
        try:
            record = decode_record(value[HEAD_PREFIX.size:])
        except ProtocolError as exc:
            raise StoreCorrupt(f"stored record does not decode: {exc}") from None
        return StoredVersion(record, lsn, base, _STATES[state], gen)

    def _check_meta(self, meta: DeviceMeta) -> None:
        try:
            self._encode_meta(meta)
        except (struct.error, UnicodeEncodeError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRecord(f"bad device metadata: {exc}") from None

    def _encode_meta(self, meta: DeviceMeta) -> bytes:
        account = meta.account.encode("utf-8")
        for name, value in (("device_id", meta.device_id), ("key", meta.key), ("server_id", meta.server_id)):
            if not isinstance(value, bytes | bytearray) or len(value) > 255:
                raise ValueError(f"{name} must be at most 255 bytes")
        return b"".join((
            struct.pack(">QB", self._epoch, len(meta.device_id)), bytes(meta.device_id),
            struct.pack(">H", len(account)), account,
            struct.pack(">B", len(meta.key)), bytes(meta.key),
            struct.pack(">QB", meta.next_lsn, len(meta.server_id)), bytes(meta.server_id),
            struct.pack(">QQQQ", meta.generation, meta.durable_lsn, meta.anchor, meta.server_anchor),
        ))

    @staticmethod
    def _decode_meta(value: bytes) -> tuple[DeviceMeta, int]:
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


