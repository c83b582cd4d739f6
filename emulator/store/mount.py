"""Mount: scan the chip and rebuild the index and the log's bookkeeping from what is on it.

Mount keeps the committed pages of the current format epoch and replays them in sequence order (the
newest committed entry of each key wins), starting from the newest intact index checkpoint if there
is one (then only blocks written after it are scanned). Mount never writes.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sidekick_testbed.emulator.flash import NandFlash, UncorrectableError
from sidekick_testbed.emulator.store.checkpoint import Checkpoint, Checkpointer, read_checkpoint
from sidekick_testbed.emulator.store.format import (
    CHECKPOINT,
    COMMIT,
    E_BLOB,
    E_CKPT,
    E_HEAD,
    E_META,
    HEAD_PREFIX,
    HEADER,
    SLOT_BITS,
    Loc,
    PageHeader,
    decode_meta,
)
from sidekick_testbed.emulator.store.index import Index
from sidekick_testbed.emulator.store.log import Log
from sidekick_testbed.emulator.store.reading import PageReader
from sidekick_testbed.emulator.store.values import DeviceMeta, StoreCorrupt

__all__ = ["Fallback", "Scan", "replay", "scan", "scan_from_checkpoint"]


class Fallback(Exception):
    """The checkpoint cannot be used; mount replays the whole log instead."""


@dataclass(slots=True)
class Scan:
    """What a scan of the whole chip found."""

    pages: list[tuple[int, int, PageHeader, Any, bytes]] = field(default_factory=list)
    """Valid pages: (seq, page index, header, entries or None, raw page)."""
    free: list[int] = field(default_factory=list)
    used: dict[int, int] = field(default_factory=dict)
    """Used block -> pages scanned (programmed, up to the first erased page)."""
    bad: set[int] = field(default_factory=set)
    invalid_pages: int = 0
    max_seq: int = 0


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def scan_from_checkpoint(reader: PageReader, flash: NandFlash) -> tuple[Scan, Checkpoint] | None:
    """Read page 0 of every block, load the newest intact checkpoint, and scan in full only
    the blocks written since it. None if there is no usable checkpoint."""
    g = flash.geometry
    ppb = reader.ppb
    blank = b"\xff" * HEADER.size
    bad = set(flash.bad_blocks())
    first: dict[int, int] = {}
    by_seq: dict[int, int] = {}
    candidates: list[tuple[int, int]] = []
    scan = Scan(bad=bad)
    for block in range(g.blocks):
        if block in bad:
            continue
        raw = reader.read_mount(block, 0)
        if raw.startswith(blank):
            scan.free.append(block)
            continue
        header, _entries = reader.parse(raw)
        if header is None:
            scan.used[block] = ppb
            continue
        first[block] = header[1]
        by_seq[header[1]] = block
        if header[0] & CHECKPOINT and header[1] == header[2]:
            candidates.append((header[1], block))
    for seq, block in sorted(candidates, reverse=True):
        checkpoint = read_checkpoint(reader, block, seq, by_seq)
        if checkpoint is None:
            continue
        parse = reader.parse
        for other, start in first.items():
            if start < seq:
                scan.used[other] = ppb
                continue
            scanned = 0
            for page, raw in enumerate(reader.read_run(other)):
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


def scan(reader: PageReader, flash: NandFlash) -> Scan:
    """Read every programmed page of the chip."""
    g = flash.geometry
    found = Scan()
    ppb = reader.ppb
    blank = b"\xff" * HEADER.size
    parse = reader.parse
    read_run = flash.read_run
    pages = found.pages
    bad = set(flash.bad_blocks())
    for block in range(g.blocks):
        if block in bad:
            found.bad.add(block)
            continue
        base = block * ppb
        try:
            run = read_run(block)
        except UncorrectableError:
            run = [reader.read_mount(block, page) for page in range(ppb)]
        scanned = 0
        for page, raw in enumerate(run):
            if raw.startswith(blank):
                break
            scanned += 1
            header, entries = parse(raw)
            if header is None:
                found.invalid_pages += 1
                continue
            pages.append((header[1], base + page, header, entries, raw))
        if scanned:
            found.used[block] = scanned
        else:
            found.free.append(block)
    found.max_seq = max((p[0] for p in pages), default=0)
    return found


def replay(scan: Scan, base: Checkpoint | None, reader: PageReader, index: Index, log: Log,
           checkpointer: Checkpointer) -> DeviceMeta:
    """Rebuild ``index``, ``log`` and ``checkpointer`` from a scan (and the checkpoint it started
    from); the device metadata. Fallback if the checkpoint does not fit the scan."""
    g = reader.flash.geometry
    ppb = reader.ppb
    committed = {p[2][2] for p in scan.pages if p[2][0] & COMMIT}  # header: flags, seq, txn, epoch
    pages = [p for p in scan.pages if p[2][2] in committed]
    if not pages:
        if base is not None:
            raise Fallback()
        raise StoreCorrupt("no store on this flash (no committed page found)")
    epoch = max(p[2][3] for p in pages)
    if base is not None and (epoch != base.epoch or min(p[2][3] for p in pages) != epoch):
        raise Fallback()  # a format after the checkpoint: replay everything
    if min(p[2][3] for p in pages) != epoch:
        pages = [p for p in pages if p[2][3] == epoch]
    pages.sort(key=_first)
    log.epoch = epoch
    log.seq = scan.max_seq + 1
    log.bad = scan.bad
    log.used = dict(scan.used)
    start = (pages[-1][1] // ppb + 1) % g.blocks
    log.free = deque(sorted(scan.free, key=lambda b: (b - start) % g.blocks))
    # Replay: the newest committed entry of each key wins. Values: (loc, raw of the first
    # fragment, value offset there, live bytes).
    found: dict[tuple[int, bytes], tuple[Loc, Any, Any, int]] = {}
    if base is not None:
        found.update(base.found)
        for block, others in base.cross.items():
            log.cross.setdefault(block, []).extend(others)
        checkpointer.pages = list(base.pages)
    partial: dict[tuple[int, bytes], tuple[int, list[int], bytes, int]] = {}
    txn_pages: list[int] = []
    last_txn = -1
    cap = index.cap
    singles = reader.singles
    update = found.update
    for _seq, page_index, header, entries, raw in pages:
        txn = header[2]
        if txn != last_txn:
            if len(txn_pages) > 1:
                log.note_cross(txn_pages)
            txn_pages = [page_index]
            last_txn = txn
        else:
            txn_pages.append(page_index)
        if entries is None:
            continue
        updates, fragments = singles(page_index, raw, entries)
        update(updates)
        page_loc = page_index << SLOT_BITS
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
        log.note_cross(txn_pages)
    meta_value: bytes | None = None
    heads = index.heads
    relive = index.relive
    unpack = HEAD_PREFIX.unpack_from
    for (etype, key), (loc, raw, vpos, size) in found.items():
        if etype == E_HEAD:
            if raw is None:  # from the checkpoint: vpos holds the head tuple
                heads[key] = vpos
            else:
                lsn, _base, state, gen, kind, deleted = unpack(raw, vpos)
                heads[key] = (loc, lsn, state, gen, kind, deleted, size)
            relive(loc, size)
        elif etype == E_BLOB:
            index.blobs[key] = loc
            relive(loc, index.blob_size(loc))
        elif etype == E_META and not isinstance(loc, tuple):
            meta_value = reader.read_fragment(loc)
            index.meta_loc = loc
            index.meta_size = size
            relive(loc, size)
    if meta_value is None:
        if base is not None:
            raise Fallback()
        raise StoreCorrupt("no device metadata on this flash")
    for page_index in checkpointer.pages:
        index.live[page_index // ppb] += cap
    try:
        meta, _ = decode_meta(meta_value)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise StoreCorrupt(f"device metadata unreadable: {exc}") from None
    return meta
