"""The store's log: committing transactions of whole pages at the head of the log, and the block
bookkeeping under it (free, used, bad and active blocks, cross-block transactions, write counters).

The log asks for space before it writes (``ensure_space``) and hands a block whose program failed to
``retire``; the store wires both to its garbage collector.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from sidekick_testbed.emulator.flash import EraseError, NandFlash, ProgramError
from sidekick_testbed.emulator.store.format import COMMIT, ENTRY, SLOT_BITS, Entry, Loc, encode_page
from sidekick_testbed.emulator.store.index import Index
from sidekick_testbed.emulator.store.values import InvalidRecord, StoreError, StoreFull

__all__ = ["Log", "PagePlan", "Retry"]

PagePlan = list[list[tuple[int, int, bytes, int, int, bytes]]]
"""Entries split into pages: per page, (entry no, type, key, fragment, fragments, value part)."""


class Retry(Exception):
    """A program failed mid-transaction; the block is retired and the transaction rewritten."""


def _not_wired(*args: int) -> None:
    """``ensure_space`` and ``retire`` until the store wires its garbage collector."""
    raise StoreError("the log has no garbage collector wired")


class Log:
    """Appends pages to the active block, opening (erasing) free blocks in order as it goes."""

    def __init__(self, flash: NandFlash, index: Index) -> None:
        g = flash.geometry
        self.flash = flash
        self.index = index
        self.ppb = g.pages_per_block
        self.cap = index.cap
        self.seq = 1
        """Sequence number of the next page written."""
        self.epoch = 0
        """Sequence number of the format that made the store."""
        self.used: dict[int, int] = {}
        """Used block -> pages written (or scanned) on it."""
        self.free: deque[int] = deque()
        self.bad: set[int] = set()
        self.cross: dict[int, list[int]] = {}
        """Block holding a commit page -> pages of that transaction on other blocks."""
        self.active: int | None = None
        self.next = 0
        """Next page to program on the active block."""
        self.pages_written = 0
        self.gc_pages_written = 0
        self.checkpoint_pages_written = 0
        self.erases = 0
        self.payload_bytes_written = 0
        """Entry bytes (headers, keys, values) in the pages this log programmed."""
        self.in_gc = False
        self.in_ckpt = False
        self.since_ckpt = 0
        """Pages programmed since the last index checkpoint."""
        self.ensure_space: Callable[[int, int], None] = _not_wired
        """Make room for (pages, reserve blocks) or raise StoreFull."""
        self.retire: Callable[[int], None] = _not_wired
        """Take a block whose program failed out of service, moving what lives on it."""

    def copy(self, index: Index) -> Log:
        """An independent copy over ``index`` (callbacks not wired)."""
        twin = object.__new__(Log)
        twin.__dict__ = self.__dict__.copy()
        twin.index = index
        twin.used = dict(self.used)
        twin.free = deque(self.free)
        twin.bad = set(self.bad)
        twin.cross = {block: list(pages) for block, pages in self.cross.items()}
        twin.ensure_space = _not_wired
        twin.retire = _not_wired
        return twin

    def free_pages(self) -> int:
        """Pages left in free blocks and at the end of the active block."""
        tail = self.ppb - self.next if self.active is not None else 0
        return len(self.free) * self.ppb + tail

    def commit(self, entries: list[Entry], reserve: int) -> None:
        """Write entries as one transaction and point the index at them."""
        if not entries:
            return
        pages = self.pack(entries)
        for _attempt in range(16):
            self.ensure_space(len(pages), reserve)
            try:
                locs = self.write_pages(pages, len(entries))
            except Retry:
                continue
            break
        else:
            raise StoreError("too many program failures in one write")
        apply = self.index.apply
        for (etype, key, value), loc in zip(entries, locs, strict=True):
            apply(etype, key, value, loc)

    def pack(self, entries: list[Entry]) -> PagePlan:
        """Split entries into pages: (entry no, type, key, fragment, fragments, value part)."""
        cap = self.cap
        pages: PagePlan = []
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

    def write_pages(self, pages: PagePlan, n_entries: int, flags: int = 0) -> list[Loc]:
        """Program the pages of one transaction (the last with COMMIT); each entry's location."""
        frags: list[list[int]] = [[] for _ in range(n_entries)]
        txn = self.seq
        written: list[int] = []
        last = len(pages) - 1
        for i, page_entries in enumerate(pages):
            payload = b"".join(
                ENTRY.pack(etype, len(key), frag, nfrag, len(part)) + key + part
                for _n, etype, key, frag, nfrag, part in page_entries)
            seq = self.seq
            self.seq += 1
            self.payload_bytes_written += len(payload)
            page_flags = flags | (COMMIT if i == last else 0)
            page = encode_page(page_flags, seq, txn, self.epoch, len(page_entries), payload)
            index = self.program(page)
            written.append(index)
            for slot, entry in enumerate(page_entries):
                frags[entry[0]].append(index << SLOT_BITS | slot)
        self.note_cross(written)
        return [f[0] if len(f) == 1 else tuple(f) for f in frags]

    def program(self, data: bytes) -> int:
        """Program one page at the head of the log; the page index."""
        if self.active is None or self.next >= self.ppb:
            self.open_block()
        block = self.active
        assert block is not None
        page = self.next
        self.next += 1
        self.used[block] = self.next
        try:
            self.flash.program_page(block, page, data)
        except ProgramError:
            self.retire(block)
            raise Retry from None
        if self.in_gc:
            self.gc_pages_written += 1
        elif self.in_ckpt:
            self.checkpoint_pages_written += 1
        else:
            self.pages_written += 1
        self.since_ckpt += 1
        return block * self.ppb + page

    def open_block(self) -> None:
        """Erase the next free block and make it the active one."""
        while True:
            if not self.free:
                raise StoreFull("no free block left")
            block = self.free.popleft()
            try:
                self.erase(block)
            except EraseError:
                self.bad.add(block)
                continue
            self.active = block
            self.next = 0
            self.used[block] = 0
            return

    def erase(self, block: int) -> None:
        """Erase a block (nothing on it lives any more)."""
        self.index.live[block] = 0
        self.cross.pop(block, None)
        try:
            self.flash.erase_block(block)
        finally:
            self.erases += 1

    def note_cross(self, txn_pages: list[int]) -> None:
        """Remember the pages of a transaction that lie outside the block holding its commit page."""
        if len(txn_pages) < 2:
            return
        commit_block = txn_pages[-1] // self.ppb
        others = [i for i in txn_pages if i // self.ppb != commit_block]
        if others:
            self.cross.setdefault(commit_block, []).extend(others)
