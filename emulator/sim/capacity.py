"""The oracle's own accounting of a handset's capacity: when "store full" is believable.

A store that says ``StoreFull`` is not taken at its word. The oracle knows what the chip holds
(the live entries its own reader finds, ``ChipView.live_bytes``), what the refused operation would
have added (entries sized by the on-flash format of docs/FLASH.md), and the chip's geometry and
bad blocks. FLASH.md states the store's capacity promise: a write succeeds while the live entry
bytes after it are at most ``ROOM_FRACTION`` of the usable payload bytes, where usable counts the
good blocks less the two kept for garbage collection, the block being written and the block a
mount leaves unused. A refusal below that is a ``false-full`` violation.
"""

from __future__ import annotations

from sidekick_testbed.emulator.flash import Geometry
from sidekick_testbed.protocol.records import Photo, Record
from sidekick_testbed.protocol.wire import encode_record

__all__ = ["ROOM_FRACTION", "blob_bytes", "has_room", "head_bytes", "usable_bytes"]

PAGE_HEADER = 36
ENTRY_HEADER = 8
HEAD_FIELDS = 27
RESERVED_BLOCKS = 4
"""Two blocks kept for garbage collection, the block being written, the block a mount leaves unused."""
ROOM_FRACTION = 0.5
"""Live data up to this share of the usable payload always fits (entries of up to a page each pack
at least half full, and greedy collection then always finds a block to reclaim)."""


def usable_bytes(geometry: Geometry, bad_blocks: int) -> int:
    """Payload bytes of the good blocks the store may fill with live data."""
    blocks = max(0, geometry.blocks - bad_blocks - RESERVED_BLOCKS)
    return blocks * geometry.pages_per_block * (geometry.page_size - PAGE_HEADER)


def _entry_bytes(key: int, value: int, geometry: Geometry) -> int:
    """Bytes of one entry as FLASH.md lays it out: split in page-sized fragments if it does not fit."""
    cap = geometry.page_size - PAGE_HEADER
    if ENTRY_HEADER + key + value <= cap:
        return ENTRY_HEADER + key + value
    chunk = cap - ENTRY_HEADER - key
    pieces = -(-value // chunk)
    return pieces * (ENTRY_HEADER + key) + value


def head_bytes(record: Record, geometry: Geometry) -> int:
    """A HEAD entry of ``record`` (key: its id; value: the sync fields, then the wire encoding)."""
    return _entry_bytes(len(record.record_id), HEAD_FIELDS + len(encode_record(record)), geometry)


def blob_bytes(blob_id: bytes, size: int, geometry: Geometry) -> int:
    """A BLOB entry of ``size`` bytes."""
    return _entry_bytes(len(blob_id), size, geometry)


def record_bytes(record: Record, geometry: Geometry) -> int:
    """A record's head, plus its image for a live photo."""
    total = head_bytes(record, geometry)
    body = record.body
    if isinstance(body, Photo) and not record.deleted:
        total += blob_bytes(body.blob_id, body.size, geometry)
    return total


def has_room(live: int, extra: int, geometry: Geometry, bad_blocks: int) -> bool:
    """True if ``live`` entry bytes plus ``extra`` are within the store's capacity promise."""
    return live + extra <= ROOM_FRACTION * usable_bytes(geometry, bad_blocks)
