"""What the fleet's users write: the bodies of new records and of edits (each edit differs from every
earlier version) and synthetic photos."""

from __future__ import annotations

import random

from sidekick_testbed.protocol.records import (
    CalendarEvent,
    Contact,
    Note,
    Photo,
    RecordBody,
    RecordKind,
    Todo,
)

__all__ = ["PHOTO_TILE", "edited_body", "new_body", "photo_bytes"]


def _retag(text: str, tag: str) -> str:
    """``text`` with its edit tag (after " #") replaced by ``tag``."""
    return f"{text.partition(' #')[0]} #{tag}"


PHOTO_TILE = 256
"""Bytes of randomness in a synthetic photo; the rest repeats them."""


def photo_bytes(rng: random.Random, size: int) -> bytes:
    """A photo's image data: ``PHOTO_TILE`` random bytes repeated to ``size``. Unique per photo,
    with real sizes on the air and on flash; compressible, so that the flash and the server can
    hold 10,000 handsets' photos (nothing in the protocol compresses, so no figure changes)."""
    tile = rng.randbytes(min(size, PHOTO_TILE))
    return (tile * (size // len(tile) + 1))[:size]




def new_body(kind: RecordKind, index: int, n: int) -> RecordBody:
    """The body of the ``n``-th record or edit a user of handset ``index`` writes (not a photo)."""
    if kind is RecordKind.CONTACT:
        return Contact(f"Contact {index}-{n}", (f"+1555{n:07d}",), (f"c{n}@example.com",))
    if kind is RecordKind.EVENT:
        start = 1_254_355_200 + n * 3600
        return CalendarEvent(f"Event {n}", start, start + 1800, "Palo Alto")
    if kind is RecordKind.TODO:
        return Todo(f"To do {n}", False, 0, n % 3)
    return Note(f"Note {n}", f"text of note {n} on handset {index}")


def edited_body(body: RecordBody, serial: int) -> RecordBody:
    """A new body for an edit, tagged with the handset's ``serial``."""
    tag = f"v{serial}"
    if isinstance(body, Contact):
        return Contact(_retag(body.name, tag), (*body.phones[:2], f"+1555{serial:07d}"), body.emails)
    if isinstance(body, CalendarEvent):
        return CalendarEvent(_retag(body.title, tag), body.start + 900, body.end + 900, body.location)
    if isinstance(body, Todo):
        return Todo(_retag(body.title, tag), not body.done, body.due, body.priority)
    if isinstance(body, Note):
        return Note(_retag(body.title, tag), f"text of note, {tag}")
    assert isinstance(body, Photo)
    return Photo(_retag(body.caption, tag), body.blob_id, body.size, body.sha256, body.content_type)
