"""Reading the store's pages from flash: ``PageReader`` (retries, parsing, values by location) and
``PageCache``, the memo of page parsing a caller may share between mounts of one chip."""

from __future__ import annotations

from typing import Any

from sidekick_testbed.emulator.flash import NandFlash, UncorrectableError
from sidekick_testbed.emulator.store.format import (
    ENTRY,
    SLOT_BITS,
    Loc,
    PageHeader,
    iter_entries,
    parse_header,
)
from sidekick_testbed.emulator.store.values import StoreCorrupt, StoreError

__all__ = ["READ_RETRIES", "PageCache", "PageMemo", "PageReader", "Parsed"]

READ_RETRIES = 4
"""Reads of a page retried after an uncorrectable ECC error before giving up."""

Parsed = tuple[PageHeader | None, list[tuple[int, int, bytes, int, int, int, int]] | None]
"""A page parsed: (header, entries); (None, None) if it is not a valid store page."""
PageMemo = dict[int, tuple[bytes, list[Any]]]
"""Pages one bulk read already parsed: page index -> (raw bytes, entries)."""
Updates = tuple[dict[tuple[int, bytes], Any], list[Any]]
"""A page's replay updates: (type, key) -> (loc, raw, value offset, size) of its unfragmented
entries, and its fragment entries."""


class PageCache:
    """Memo of page parsing (header check, CRC, entry list), keyed by the page's bytes.

    Parsing is a pure function of the bytes read, so sharing a cache between mounts of the same
    chip (as the power-loss runner does) changes nothing but speed. Bounded: cleared when full.
    """

    def __init__(self, max_pages: int = 200_000) -> None:
        self.max_pages = max_pages
        self._parsed: dict[bytes, Parsed] = {}
        self._unchecked: dict[bytes, Parsed] = {}
        self._updates: dict[bytes, tuple[int, Updates]] = {}

    def parse(self, raw: bytes, check_crc: bool) -> Parsed:
        """(header, entries) of a page; (None, None) if it is not a valid store page."""
        memo = self._parsed if check_crc else self._unchecked
        hit = memo.get(raw)
        if hit is not None:
            return hit
        result = parse_page(raw, check_crc)
        if len(memo) >= self.max_pages:
            memo.clear()
        memo[raw] = result
        return result

    def singles(self, index: int, raw: bytes, entries: list[Any]) -> Updates:
        """Memo of the replay updates of one page at one position."""
        hit = self._updates.get(raw)
        if hit is not None and hit[0] == index:
            return hit[1]
        updates = singles(index, raw, entries)
        if len(self._updates) >= self.max_pages:
            self._updates.clear()
        self._updates[raw] = (index, updates)
        return updates


def singles(index: int, raw: bytes, entries: list[Any]) -> Updates:
    """The replay updates of the page at ``index`` (see ``Updates``)."""
    base = index << SLOT_BITS
    updates = {(etype, key): (base | slot, raw, vpos, ENTRY.size + len(key) + vlen)
               for slot, etype, key, _frag, nfrag, vpos, vlen in entries if nfrag == 1}
    fragments = [e for e in entries if e[4] != 1] if len(updates) != len(entries) else []
    return updates, fragments


def parse_page(raw: bytes, check_crc: bool) -> Parsed:
    """(header, entries) of a page; entries None if the header is valid but they are not."""
    header = parse_header(raw, check_crc)
    if header is None:
        return None, None
    try:
        return header, list(iter_entries(raw, header))
    except ValueError:
        return header, None


class PageReader:
    """Reads and parses the store's pages on one chip (through ``cache`` if given)."""

    def __init__(self, flash: NandFlash, *, check_crc: bool, cache: PageCache | None) -> None:
        self.flash = flash
        self.check_crc = check_crc
        self.cache = cache
        self.ppb = flash.geometry.pages_per_block

    def parse(self, raw: bytes) -> Parsed:
        """(header, entries) of a page read."""
        if self.cache is not None:
            return self.cache.parse(raw, self.check_crc)
        return parse_page(raw, self.check_crc)

    def singles(self, index: int, raw: bytes, entries: list[Any]) -> Updates:
        """Replay updates of a page's unfragmented entries, (type, key) -> (loc, raw, offset, size),
        and its fragment entries."""
        if self.cache is not None:
            return self.cache.singles(index, raw, entries)
        return singles(index, raw, entries)

    def read_mount(self, block: int, page: int) -> bytes:
        """A page read by mount; StoreCorrupt if it stays unreadable."""
        try:
            return self.read_retry(block, page)
        except UncorrectableError as exc:
            raise StoreCorrupt(f"page {block}:{page} unreadable: {exc}") from None

    def read_retry(self, block: int, page: int) -> bytes:
        """A page, read up to ``READ_RETRIES`` times while the ECC cannot correct it."""
        for attempt in range(READ_RETRIES):
            try:
                return self.flash.read_raw(block, page)
            except UncorrectableError:
                if attempt == READ_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def read_run(self, block: int) -> list[bytes]:
        """The programmed pages of a block from page 0 (page by page, retried, if one fails ECC)."""
        try:
            return self.flash.read_run(block)
        except UncorrectableError:
            return [self.read_mount(block, page) for page in range(self.ppb)]

    def read_raw(self, index: int) -> bytes:
        """The page at ``index``; StoreError if it stays unreadable."""
        try:
            return self.read_retry(*divmod(index, self.ppb))
        except UncorrectableError as exc:
            raise StoreError(f"flash page {index} unreadable: {exc}") from None

    def read_fragment(self, loc: int, pages: PageMemo | None = None) -> bytes:
        """One stored fragment; ``pages`` keeps the pages a bulk read parsed (no write in between)."""
        index, slot = loc >> SLOT_BITS, loc & ((1 << SLOT_BITS) - 1)
        known = pages.get(index) if pages is not None else None
        if known is None:
            raw = self.read_raw(index)
            _header, entries = self.parse(raw)
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

    def read_value(self, loc: Loc, pages: PageMemo | None = None) -> bytes:
        """A stored value, its fragments joined."""
        if isinstance(loc, tuple):
            return b"".join(self.read_fragment(one, pages) for one in loc)
        return self.read_fragment(loc, pages)
