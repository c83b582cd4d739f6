"""Record types the handset keeps and syncs: contacts, events, to-dos, notes, photos.

Every record has a stable 16-byte id, a server version (0 until the server has
assigned one), a tombstone flag and a kind-specific body. Bodies are frozen,
slotted dataclasses; the wire form is defined once in ``protocol.wire``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

RECORD_ID_LEN = 16
BLOB_ID_LEN = 16
SHA256_LEN = 32


class RecordKind(enum.IntEnum):
    """Kind byte of a record on the wire and on flash."""

    CONTACT = 1
    EVENT = 2
    TODO = 3
    NOTE = 4
    PHOTO = 5


@dataclass(frozen=True, slots=True)
class Contact:
    """An address-book entry."""

    name: str
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    KIND = RecordKind.CONTACT


@dataclass(frozen=True, slots=True)
class CalendarEvent:
    """A calendar entry; times are seconds since the Unix epoch (UTC)."""

    title: str
    start: int
    end: int
    location: str = ""

    KIND = RecordKind.EVENT


@dataclass(frozen=True, slots=True)
class Todo:
    """A to-do item; ``due`` is seconds since the epoch, 0 for none."""

    title: str
    done: bool = False
    due: int = 0
    priority: int = 0

    KIND = RecordKind.TODO


@dataclass(frozen=True, slots=True)
class Note:
    """A free-text note."""

    title: str
    text: str = ""

    KIND = RecordKind.NOTE


@dataclass(frozen=True, slots=True)
class Photo:
    """Photo metadata; the image bytes travel as a blob named by ``blob_id``."""

    caption: str
    blob_id: bytes
    size: int
    sha256: bytes
    content_type: str = "image/jpeg"

    KIND = RecordKind.PHOTO


RecordBody = Contact | CalendarEvent | Todo | Note | Photo

BODY_TYPES: dict[RecordKind, type[RecordBody]] = {
    RecordKind.CONTACT: Contact,
    RecordKind.EVENT: CalendarEvent,
    RecordKind.TODO: Todo,
    RecordKind.NOTE: Note,
    RecordKind.PHOTO: Photo,
}


@dataclass(frozen=True, slots=True)
class Record:
    """One version of a record.

    ``version`` is the server version (per-account commit sequence) or 0 for a
    version the server has not assigned yet. ``deleted`` marks a tombstone: a
    user delete is a version like any other and syncs like one. ``conflict_of``
    is the id of the record this one is a conflict copy of (empty otherwise).
    """

    record_id: bytes
    version: int
    deleted: bool
    body: RecordBody
    conflict_of: bytes = field(default=b"")

    @property
    def kind(self) -> RecordKind:
        """The record's kind, taken from its body type."""
        return self.body.KIND
