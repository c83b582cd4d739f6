"""The handset's record store: a log-structured, crash-safe store on a ``NandFlash``.

Writes go in transactions of whole pages appended to the log (``log``; layout in ``format``,
docs/FLASH.md). The last page of a transaction carries the COMMIT flag: a transaction whose commit
page is not valid never happened. Every key (a record's head, a blob, the device metadata) is owned
by its newest committed entry (``index``); ``mount`` rebuilds the index from the chip, after which
new data always goes into a freshly erased block, so torn pages and partly erased blocks are never
written over. Free blocks are used in round-robin order (wear levelling), each erased right before
use; ``gc`` reclaims blocks and retires failed ones, ``checkpoint`` bounds the work of a mount.

Each mutating call is one transaction: after ``PowerLoss`` anywhere inside it, ``RecordStore.mount``
on the same flash shows the store wholly before or wholly after the call. Only dead entries are
ever dropped: superseded ones, and the image of a deleted photo (a blob a photo tombstone names and
no live photo head names); a record's head (tombstones included) is never removed, so no version
that is not durable can be lost.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from typing import Any

from sidekick_testbed.emulator.flash import EraseError, NandFlash, PowerLoss
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.emulator.store.checkpoint import Checkpoint, Checkpointer
from sidekick_testbed.emulator.store.format import (
    E_BLOB,
    E_HEAD,
    E_META,
    HEAD_PREFIX,
    HEADER,
    Entry,
    check_meta,
    decode_head,
    encode_head,
    encode_meta,
    restated,
)
from sidekick_testbed.emulator.store.gc import Collector
from sidekick_testbed.emulator.store.index import DELETED, GEN, KIND, LOC, LSN, STATE, Index
from sidekick_testbed.emulator.store.log import Log
from sidekick_testbed.emulator.store.mount import Fallback, Scan, replay, scan, scan_from_checkpoint
from sidekick_testbed.emulator.store.reading import PageCache, PageMemo, PageReader
from sidekick_testbed.emulator.store.values import (
    RESERVE_BLOCKS,
    STATES,
    U64,
    DeviceMeta,
    InvalidRecord,
    StoredVersion,
    StoreError,
    StoreFull,
    StoreStats,
    SyncState,
    UnknownBlob,
)
from sidekick_testbed.protocol.records import Photo, Record, RecordBody, RecordKind
from sidekick_testbed.protocol.wire import with_version

__all__ = ["RecordStore"]


class RecordStore:
    """Records (heads with sync state), blobs and device metadata on one flash chip.

    The parts, each with its own state: ``_reader`` (reads and parses pages), ``_index`` (where
    every entry lies, live bytes per block), ``_log`` (writes transactions, block bookkeeping),
    ``_checkpointer`` (index checkpoints) and ``_collector`` (garbage collection); the log asks the
    collector for space and hands it blocks to retire.
    """

    def __init__(self, flash: NandFlash, *, mutants: Mutants = NO_MUTANTS,
                 page_cache: PageCache | None = None) -> None:
        """Use ``format`` or ``mount``; this makes an empty, unattached store object."""
        g = flash.geometry
        self.flash = flash
        self.mutants = mutants
        self._reader = PageReader(flash, check_crc=not mutants.on("skip-crc-check"), cache=page_cache)
        index = Index(g.blocks, g.pages_per_block, g.page_size - HEADER.size)
        log = Log(flash, index)
        checkpointer = Checkpointer(log, index)
        self._wire(index, log, checkpointer, Collector(log, index, self._reader, checkpointer, mutants))
        self.meta = DeviceMeta(b"", "", b"", 1, b"", 0, 0, 0)
        self._dead = False
        self.mounted_from_checkpoint = False
        """True if the last mount started from an index checkpoint (else it replayed the whole log)."""

    def _wire(self, index: Index, log: Log, checkpointer: Checkpointer, collector: Collector) -> None:
        """Keep the parts; the log's requests for space and for retiring a block go to the collector."""
        self._index = index
        self._log = log
        self._checkpointer = checkpointer
        self._collector = collector
        log.ensure_space = collector.ensure_space
        log.retire = collector.retire

    # ------------------------------------------------------------------ format, mount

    @classmethod
    def format(cls, flash: NandFlash, *, device_id: bytes, account: str = "", key: bytes = b"",
               mutants: Mutants = NO_MUTANTS, page_cache: PageCache | None = None) -> RecordStore:
        """Make a new, empty store (a new epoch: anything older on the chip is ignored, then erased)."""
        store = cls(flash, mutants=mutants, page_cache=page_cache)
        log = store._log
        found = scan(store._reader, flash)
        log.seq = found.max_seq + 1
        log.bad = found.bad
        log.used = dict(found.used)
        start = (max(found.used, default=-1) + 1) % flash.geometry.blocks
        log.free = deque(sorted(found.free, key=lambda b: (b - start) % flash.geometry.blocks))
        if not log.free:
            victim = min(log.used)
            log.erase(victim)
            del log.used[victim]
            log.free.append(victim)
        log.epoch = log.seq
        meta = DeviceMeta(bytes(device_id), account, bytes(key), 1, b"", 0, 0, 0)
        check_meta(meta, log.epoch)
        log.commit([(E_META, b"", store._encode_meta(meta))], reserve=0)
        store.meta = meta
        live = store._index.live
        for block in sorted(log.used):
            if block != log.active and live[block] == 0:
                try:
                    log.erase(block)
                except EraseError:
                    log.bad.add(block)
                else:
                    log.free.append(block)
                del log.used[block]
        return store

    @classmethod
    def mount(cls, flash: NandFlash, *, mutants: Mutants = NO_MUTANTS,
              page_cache: PageCache | None = None) -> RecordStore:
        """Scan the chip and rebuild the store; StoreCorrupt if it holds no store."""
        store = cls(flash, mutants=mutants, page_cache=page_cache)
        try:
            fast = scan_from_checkpoint(store._reader, flash)
        except Fallback:
            fast = None
        if fast is not None:
            try:
                store._replay(*fast)
                store.mounted_from_checkpoint = True
                return store
            except Fallback:
                store = cls(flash, mutants=mutants, page_cache=page_cache)
        store._replay(scan(store._reader, flash), None)
        return store

    def _replay(self, found: Scan, base: Checkpoint | None) -> None:
        """Rebuild the parts from a scan (and the checkpoint it started from)."""
        self.meta = replay(found, base, self._reader, self._index, self._log, self._checkpointer)
        self._drop_deleted_images(set(self._index.blobs))

    def clone(self) -> RecordStore:
        """An independent copy of this store object (same flash): what a RAM snapshot would give."""
        twin = object.__new__(RecordStore)
        twin.__dict__ = self.__dict__.copy()
        index = self._index.copy()
        log = self._log.copy(index)
        checkpointer = self._checkpointer.copy(log, index)
        twin._wire(index, log, checkpointer, self._collector.copy(log, index, checkpointer))
        return twin

    # ------------------------------------------------------------------ counters

    @property
    def pages_written(self) -> int:
        """Pages of user writes this object programmed."""
        return self._log.pages_written

    @property
    def gc_pages_written(self) -> int:
        """Pages garbage collection programmed (moved entries)."""
        return self._log.gc_pages_written

    @property
    def checkpoint_pages_written(self) -> int:
        """Pages of index checkpoints this object programmed."""
        return self._log.checkpoint_pages_written

    @property
    def payload_bytes_written(self) -> int:
        """Entry bytes (headers, keys, values) in the pages this object programmed."""
        return self._log.payload_bytes_written

    @property
    def erases(self) -> int:
        """Block erases this object did."""
        return self._log.erases

    @property
    def gc_runs(self) -> int:
        """Blocks garbage collection reclaimed."""
        return self._collector.runs

    @property
    def checkpoints(self) -> int:
        """Index checkpoints this object wrote."""
        return self._checkpointer.count

    # ------------------------------------------------------------------ metadata

    def set_meta(self, **changes: Any) -> None:
        """Change device metadata fields (names of ``DeviceMeta``); committed before it returns."""
        self._alive()
        names = {f.name for f in fields(DeviceMeta)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown metadata field(s): {', '.join(sorted(unknown))}")
        meta = replace(self.meta, **changes)
        check_meta(meta, self._log.epoch)
        if meta == self.meta:
            return
        self._run([(E_META, b"", self._encode_meta(meta))], reserve=1)
        self.meta = meta

    # ------------------------------------------------------------------ records

    def get(self, record_id: bytes) -> StoredVersion | None:
        """The head version of a record (tombstones included), or None."""
        self._alive()
        head = self._index.heads.get(bytes(record_id))
        if head is None:
            return None
        return decode_head(self._reader.read_value(head[LOC]))

    def records(self) -> list[StoredVersion]:
        """Every head version, tombstones included, by record id."""
        self._alive()
        return self._decode_heads(sorted(self._index.heads))

    def record_ids(self) -> list[bytes]:
        """Ids of every record (tombstones included), sorted; no flash reads."""
        return sorted(self._index.heads)

    def __len__(self) -> int:
        return len(self._index.heads)

    def write_local(self, record_id: bytes, body: RecordBody, *, deleted: bool = False,
                    image: bytes | None = None) -> StoredVersion:
        """A user edit (or delete, as a tombstone): the new head, next LSN, DIRTY; committed on return.
        ``image``: a new photo's bytes, stored as its blob in the same commit."""
        self._alive()
        record_id = bytes(record_id)
        head = self._index.heads.get(record_id)
        base = 0
        if head is not None:
            base = decode_head(self._reader.read_value(head[LOC])).record.version
        meta = self.meta
        version = StoredVersion(Record(record_id, 0, deleted, body), meta.next_lsn, base, SyncState.DIRTY, 0)
        new_meta = replace(meta, next_lsn=meta.next_lsn + 1)
        entries = [(E_HEAD, record_id, encode_head(version)), (E_META, b"", self._encode_meta(new_meta))]
        if self.mutants.on("next-lsn-in-ram"):
            entries.pop()
        if image is not None:
            if not isinstance(body, Photo):
                raise InvalidRecord("only a photo has an image")
            entries.insert(0, (E_BLOB, body.blob_id, bytes(image)))
        freed = body.blob_id if deleted and isinstance(body, Photo) and head is not None and not head[DELETED] \
            else None
        # deleting a photo frees its image: that delete may use a block of the reserve kept for GC
        self._run(entries, reserve=1 if freed is not None else RESERVE_BLOCKS)
        self.meta = new_meta
        if freed is not None:
            self._drop_deleted_images({freed})
        return version

    def pending(self) -> list[StoredVersion]:
        """Heads not DURABLE, in LSN order."""
        self._alive()
        durable = SyncState.DURABLE.value
        ids = [rid for rid, h in self._index.heads.items() if h[STATE] != durable]
        ids.sort(key=lambda rid: (self._index.heads[rid][LSN], rid))
        return self._decode_heads(ids)

    def at_risk(self) -> list[StoredVersion]:
        """Heads not DURABLE in the current generation (``meta.generation``), in LSN order."""
        self._alive()
        durable = SyncState.DURABLE.value
        gen = self.meta.generation
        ids = [rid for rid, h in self._index.heads.items() if h[STATE] != durable or h[GEN] != gen]
        ids.sort(key=lambda rid: (self._index.heads[rid][LSN], rid))
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
        if not 0 <= generation <= U64:
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
        if not 0 <= generation <= U64:
            raise InvalidRecord(f"generation {generation} out of range")
        changed = self._receipt_entries(pushed_through, generation, durable_through, assigned)
        meta = self.meta
        if durable_lsn > meta.durable_lsn:
            meta = replace(meta, durable_lsn=durable_lsn)
            check_meta(meta, self._log.epoch)
            changed.append((E_META, b"", self._encode_meta(meta)))
        if changed:
            self._run(changed, reserve=1)
            self.meta = meta

    def _receipt_entries(self, pushed_through: int, generation: int, durable_through: int,
                         assigned: Sequence[tuple[int, bytes, int]]) -> list[Entry]:
        """The rewritten heads: DIRTY with lsn <= ``pushed_through`` become PUSHED, then PUSHED with
        lsn <= ``durable_through`` DURABLE in ``generation``; ``assigned`` sets server versions."""
        by_lsn = {(lsn, bytes(rid)): v for lsn, rid, v in assigned}
        versions = {rid for _lsn, rid in by_lsn}
        dirty, pushed = SyncState.DIRTY.value, SyncState.PUSHED.value
        pages: PageMemo = {}
        changed: list[Entry] = []
        for rid, h in self._index.heads.items():
            lsn = h[LSN]
            becomes_pushed = h[STATE] == dirty and 0 < lsn <= pushed_through
            becomes_durable = (becomes_pushed or h[STATE] == pushed) and 0 < lsn <= durable_through
            new_version = by_lsn.get((lsn, rid)) if rid in versions and lsn > 0 else None
            if not becomes_pushed and not becomes_durable and new_version is None:
                continue
            value = self._reader.read_value(h[LOC], pages)
            if new_version is not None:
                value = value[:HEAD_PREFIX.size] + with_version(value[HEAD_PREFIX.size:], new_version)
            if becomes_durable:
                value = restated(value, SyncState.DURABLE, generation)
            elif becomes_pushed:
                value = restated(value, SyncState.PUSHED, h[GEN])
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
            head = self._index.heads.get(record.record_id)
            if head is not None and (head[STATE] != durable or head[GEN] != meta.generation):
                continue
            latest[record.record_id] = record
        if not latest and anchor == meta.anchor:
            return  # nothing new (an idle poll): no commit, no flash wear
        if records and self.mutants.on("refuse-pulls-as-full"):
            raise StoreFull("store full: the pulled records do not fit")
        entries: list[Entry] = [
            (E_HEAD, rid, encode_head(StoredVersion(rec, 0, rec.version, SyncState.DURABLE,
                                                           meta.generation)))
            for rid, rec in latest.items()
        ]
        new_meta = replace(meta, anchor=anchor)
        check_meta(new_meta, self._log.epoch)
        entries.append((E_META, b"", self._encode_meta(new_meta)))
        self._run(entries, reserve=RESERVE_BLOCKS)
        self.meta = new_meta
        self._drop_deleted_images({r.body.blob_id for r in records if isinstance(r.body, Photo)})

    def mark_all_dirty(self) -> None:
        """Recovery sync: every head gets a fresh LSN (in old LSN order) and state DIRTY; one commit."""
        self._alive()
        meta = self.meta
        lsn = meta.next_lsn
        entries: list[Entry] = []
        ids = sorted(self._index.heads, key=lambda r: (self._index.heads[r][LSN], r))
        for rid, version in zip(ids, self._decode_heads(ids), strict=True):
            version = replace(version, lsn=lsn, state=SyncState.DIRTY, generation=0)
            entries.append((E_HEAD, rid, encode_head(version)))
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

    def _drop_deleted_images(self, candidates: set[bytes]) -> None:
        """Of ``candidates``, drop the blobs a photo tombstone names and no live photo head names
        (the images of deleted photos: dead, like superseded entries; a mount drops them too)."""
        candidates &= self._index.blobs.keys()
        if not candidates:
            return
        photo = RecordKind.PHOTO.value
        ids = [rid for rid, h in self._index.heads.items() if h[KIND] == photo]
        live: set[bytes] = set()
        deleted: set[bytes] = set()
        for version in self._decode_heads(ids):
            body = version.record.body
            if isinstance(body, Photo):
                (deleted if version.record.deleted else live).add(body.blob_id)
        index = self._index
        for blob_id in sorted((candidates & deleted) - live):
            loc = index.blobs.pop(blob_id)
            index.unlive(loc, index.blob_size(loc))

    def has_blob(self, blob_id: bytes) -> bool:
        """True if the blob is stored."""
        return bytes(blob_id) in self._index.blobs

    def read_blob_chunks(self, blob_id: bytes) -> Iterator[bytes]:
        """The blob's bytes, one page-sized chunk at a time; UnknownBlob if absent."""
        self._alive()
        loc = self._index.blobs.get(bytes(blob_id))
        if loc is None:
            raise UnknownBlob(f"no blob {bytes(blob_id).hex()}")
        for part in (loc if isinstance(loc, tuple) else (loc,)):
            yield self._reader.read_fragment(part)

    def read_blob(self, blob_id: bytes) -> bytes:
        """The whole blob; UnknownBlob if absent."""
        return b"".join(self.read_blob_chunks(blob_id))

    def blob_ids(self) -> list[bytes]:
        """Ids of the stored blobs, sorted."""
        return sorted(self._index.blobs)

    # ------------------------------------------------------------------ summaries

    def stats(self) -> StoreStats:
        """Free/used blocks, counts by kind and state, write counters."""
        g = self.flash.geometry
        by_kind: dict[str, int] = {}
        by_state: dict[str, int] = {}
        for h in self._index.heads.values():
            kind = RecordKind(h[KIND]).name.lower()
            by_kind[kind] = by_kind.get(kind, 0) + 1
            state = STATES[h[STATE]].name.lower()
            by_state[state] = by_state.get(state, 0) + 1
        gen = self.meta.generation
        durable = SyncState.DURABLE.value
        at_risk = sum(1 for h in self._index.heads.values() if h[STATE] != durable or h[GEN] != gen)
        free_pages = self._log.free_pages()
        blob_pages = sum(len(loc) if isinstance(loc, tuple) else 1 for loc in self._index.blobs.values())
        return StoreStats(
            blocks=g.blocks, bad_blocks=len(self._log.bad), free_blocks=len(self._log.free),
            used_blocks=len(self._log.used), free_bytes=free_pages * self._index.cap, records=len(self._index.heads),
            blobs=len(self._index.blobs), blob_pages=blob_pages, by_kind=by_kind, by_state=by_state,
            at_risk=at_risk, seq=self._log.seq, pages_written=self._log.pages_written,
            gc_pages_written=self._log.gc_pages_written, erases=self._log.erases, gc_runs=self._collector.runs,
            checkpoints=self._checkpointer.count)

    def digest(self) -> bytes:
        """A fingerprint of the logical content (heads, blobs, metadata) read back from flash."""
        self._alive()
        parts = [self._encode_meta(self.meta)]
        pages: PageMemo = {}
        for rid in sorted(self._index.heads):
            parts.append(rid + self._reader.read_value(self._index.heads[rid][LOC], pages))
        for bid in sorted(self._index.blobs):
            parts.append(bid + struct.pack(">I", zlib.crc32(self.read_blob(bid))))
        return hashlib.blake2b(b"\x00".join(parts), digest_size=16).digest()

    def block_map(self) -> dict[str, list[int]]:
        """Blocks by role: bad, free, used, active."""
        return {"bad": sorted(self._log.bad), "free": sorted(self._log.free),
                "used": sorted(b for b in self._log.used if b != self._log.active),
                "active": [] if self._log.active is None else [self._log.active]}

    def live_bytes(self, block: int) -> int:
        """Bytes of live entries on a block."""
        return self._index.live[block]

    # ------------------------------------------------------------------ transactions

    @property
    def dead(self) -> bool:
        """True once power was lost under this store object (mount the flash again)."""
        return self._dead

    def _alive(self) -> None:
        if self._dead:
            raise StoreError("power was lost under this store object: mount the flash again")

    def _run(self, entries: list[Entry], reserve: int) -> None:
        """Commit entries as one transaction; the store object dies on PowerLoss."""
        try:
            self._log.commit(entries, reserve)
            if self._log.since_ckpt >= self._checkpointer.every:
                self._checkpointer.write()
        except PowerLoss:
            self._dead = True
            raise


    def _encode_meta(self, meta: DeviceMeta) -> bytes:
        return encode_meta(meta, self._log.epoch)

    def _decode_heads(self, rids: Sequence[bytes]) -> list[StoredVersion]:
        """The heads of ``rids``, in that order, reading and parsing each flash page once."""
        heads = self._index.heads
        read_value = self._reader.read_value
        pages: PageMemo = {}
        return [decode_head(read_value(heads[rid][LOC], pages)) for rid in rids]
