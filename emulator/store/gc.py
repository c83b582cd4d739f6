"""Garbage collection (greedy, see docs/FLASH.md) and retiring blocks that failed.

The used block with the fewest live bytes is the victim; its live entries (and those of
transactions whose commit page it holds) are rewritten in a new committed transaction, and only then
is the block erased. A block whose program failed is retired the same way, marked bad only once its
live entries are committed elsewhere. Only dead entries are ever dropped: superseded ones, and the
images of deleted photos (the store's index no longer holds them).
"""

from __future__ import annotations

from sidekick_testbed.emulator.flash import EraseError
from sidekick_testbed.emulator.mutants import Mutants
from sidekick_testbed.emulator.store.checkpoint import Checkpointer
from sidekick_testbed.emulator.store.format import SLOT_BITS, Entry
from sidekick_testbed.emulator.store.index import Index
from sidekick_testbed.emulator.store.log import Log
from sidekick_testbed.emulator.store.reading import PageReader
from sidekick_testbed.emulator.store.values import StoreFull

__all__ = ["Collector"]


class Collector:
    """Makes room in ``log`` by moving the live entries of ``index`` off a victim block."""

    def __init__(self, log: Log, index: Index, reader: PageReader, checkpointer: Checkpointer,
                 mutants: Mutants) -> None:
        self.log = log
        self.index = index
        self.reader = reader
        self.checkpointer = checkpointer
        self.mutants = mutants
        self.runs = 0
        """Blocks reclaimed."""

    def copy(self, log: Log, index: Index, checkpointer: Checkpointer) -> Collector:
        """An independent copy over the given parts."""
        twin = Collector(log, index, self.reader, checkpointer, self.mutants)
        twin.runs = self.runs
        return twin

    def ensure_space(self, pages: int, reserve: int) -> None:
        """Collect until ``pages`` pages plus ``reserve`` blocks are free; StoreFull if they cannot be."""
        log = self.log
        need = pages + reserve * log.ppb
        while log.free_pages() < need:
            if log.in_gc or not self.collect():
                raise StoreFull(f"store full: {pages} page(s) needed, {log.free_pages()} free "
                                f"({reserve} block(s) kept for garbage collection)")

    def collect(self) -> bool:
        """Reclaim one block by the greedy policy: the block with the fewest live bytes whose live
        entries can be moved; False if no block would give space back."""
        log = self.log
        live = self.index.live
        victims = sorted((live[block], block) for block in log.used
                         if block != log.active and block not in log.bad)
        for _live, block in victims:
            if self.relocate(block, erase=True):
                self.runs += 1
                return True
        return False

    def retire(self, block: int) -> None:
        """A program failed on ``block``: it is bad now; move what lives on it elsewhere, and only
        once that copy is committed mark the block bad on flash (a mount skips bad blocks, so
        marking first would lose its data to a power cut during the move)."""
        log = self.log
        log.bad.add(block)
        if log.active == block:
            log.active = None
        self.relocate(block, erase=False)
        log.flash.mark_bad(block)
        log.used.pop(block, None)

    def live_entries(self, block: int) -> list[Entry]:
        """Live entries stored on ``block`` or in transactions whose commit page is on it."""
        log = self.log
        index = self.index
        reader = self.reader
        ppb = log.ppb
        pages = [block * ppb + p for p in range(log.used.get(block, ppb))]
        pages += log.cross.get(block, [])
        found: dict[tuple[int, bytes], bytes] = {}
        for page in pages:
            _header, page_entries = reader.parse(reader.read_raw(page))
            if page_entries is None:
                continue
            for slot, etype, key, _frag, _nfrag, _vpos, _vlen in page_entries:
                if (etype, key) not in found and index.is_live(etype, key, page << SLOT_BITS | slot):
                    found[(etype, key)] = reader.read_value(index.current(etype, key))
        return [(etype, key, value) for (etype, key), value in found.items()]

    def relocate(self, block: int, *, erase: bool) -> bool:
        """Rewrite the live entries of ``block`` elsewhere, commit that, then erase the block.
        False (nothing done) if the rewrite would not fit or would not give space back."""
        log = self.log
        entries = self.live_entries(block)
        pages = log.pack(entries) if entries else []
        if erase and (len(pages) >= log.ppb or len(pages) > log.free_pages()):
            return False
        self.checkpointer.drop_if_on(block)
        was_gc = log.in_gc
        log.in_gc = True
        erased = False
        try:
            if erase and self.mutants.on("gc-erase-before-commit"):
                log.erase(block)
                erased = True
            if entries:
                log.commit(entries, reserve=0)
            if erase and not erased:
                log.erase(block)
            if erase:
                log.used.pop(block, None)
                log.free.append(block)
        except EraseError:
            log.bad.add(block)
            log.used.pop(block, None)
        finally:
            log.in_gc = was_gc
        return True
