"""The store's index in RAM: where each record head, blob and the device metadata lies on flash, and
the live bytes of every block (what garbage collection weighs)."""

from __future__ import annotations

from typing import Any

from sidekick_testbed.emulator.store.format import E_BLOB, E_HEAD, E_META, ENTRY, HEAD_PREFIX, SLOT_BITS, Loc

__all__ = ["DELETED", "GEN", "KIND", "LOC", "LSN", "SIZE", "STATE", "Index"]

LOC, LSN, STATE, GEN, KIND, DELETED, SIZE = range(7)
"""Fields of a head tuple: location, lsn, state value, generation, kind, deleted, live bytes."""


class Index:
    """Heads (record id -> head tuple), blobs (id -> location), the metadata's location, and
    ``live``, the bytes of live entries per block."""

    def __init__(self, blocks: int, pages_per_block: int, capacity: int) -> None:
        self.ppb = pages_per_block
        self.cap = capacity
        """Payload bytes a page holds."""
        self.heads: dict[bytes, tuple[Any, ...]] = {}
        self.blobs: dict[bytes, Loc] = {}
        self.meta_loc: Loc = 0
        self.meta_size = 0
        self.live = [0] * blocks

    def copy(self) -> Index:
        """An independent copy."""
        twin = object.__new__(Index)
        twin.__dict__ = self.__dict__.copy()
        twin.heads = dict(self.heads)
        twin.blobs = dict(self.blobs)
        twin.live = list(self.live)
        return twin

    def apply(self, etype: int, key: bytes, value: bytes, loc: Loc) -> None:
        """Point the index at a just-committed entry."""
        if etype == E_HEAD:
            size = ENTRY.size + len(key) + len(value) if not isinstance(loc, tuple) else len(loc) * self.cap
            self.set_head(key, loc, value, 0, size)
        elif etype == E_BLOB:
            old = self.blobs.get(key)
            if old is not None:
                self.unlive(old, self.blob_size(old))
            self.blobs[key] = loc
            self.relive(loc, self.blob_size(loc))
        else:
            self.unlive(self.meta_loc, self.meta_size)
            self.meta_loc = loc
            self.meta_size = ENTRY.size + len(value)
            self.relive(loc, self.meta_size)

    def set_head(self, key: bytes, loc: Loc, buf: bytes, vpos: int, size: int) -> None:
        """Point a record's head at ``loc``; its HEAD value starts at ``buf[vpos:]``."""
        lsn, _base, state, gen, kind, deleted = HEAD_PREFIX.unpack_from(buf, vpos)
        old = self.heads.get(key)
        if old is not None:
            self.unlive(old[LOC], old[SIZE])
        self.heads[bytes(key)] = (loc, lsn, state, gen, kind, deleted, size)
        self.relive(loc, size)

    def blob_size(self, loc: Loc) -> int:
        """Live bytes of a blob stored at ``loc`` (whole pages)."""
        return len(loc) * self.cap if isinstance(loc, tuple) else self.cap

    def relive(self, loc: Loc, size: int) -> None:
        """Count ``size`` live bytes at ``loc`` (spread evenly over its fragments)."""
        shift = SLOT_BITS
        ppb = self.ppb
        if isinstance(loc, tuple):
            part = size // len(loc)
            for one in loc:
                self.live[(one >> shift) // ppb] += part
        else:
            self.live[(loc >> shift) // ppb] += size

    def unlive(self, loc: Loc, size: int) -> None:
        """Stop counting ``size`` live bytes at ``loc``."""
        shift = SLOT_BITS
        ppb = self.ppb
        if isinstance(loc, tuple):
            part = size // len(loc)
            for one in loc:
                block = (one >> shift) // ppb
                self.live[block] = max(0, self.live[block] - part)
        else:
            block = (loc >> shift) // ppb
            self.live[block] = max(0, self.live[block] - size)

    def current(self, etype: int, key: bytes) -> Loc:
        """Where the live entry of (type, key) lies."""
        if etype == E_HEAD:
            loc: Loc = self.heads[key][LOC]
            return loc
        if etype == E_BLOB:
            return self.blobs[key]
        return self.meta_loc

    def is_live(self, etype: int, key: bytes, loc: int) -> bool:
        """True if the entry at ``loc`` is (a fragment of) the live entry of (type, key)."""
        if etype == E_HEAD:
            head = self.heads.get(key)
            cur = None if head is None else head[LOC]
        elif etype == E_BLOB:
            cur = self.blobs.get(key)
        elif etype == E_META:
            cur = self.meta_loc
        else:
            return False
        return cur == loc or (isinstance(cur, tuple) and loc in cur)
