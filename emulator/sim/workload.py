"""What users do: create, edit and delete records of every kind, take photos, edit the same
records on several handsets. Every version's content is unique (a counter is part of it), so the
ledger can name a version by its content.

Sizes follow the negotiated frame: with small frames, photos span several BLOB_CHUNKs, and (on
seeds with ``full-frames``) notes are long enough that two or four of them fill a RECORDS frame
to within a few bytes of its limit, either side of it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME
from sidekick_testbed.protocol.records import CalendarEvent, Contact, Note, Photo, RecordBody, Todo

__all__ = ["FILL_SLACK", "NOTE_OVERHEAD", "RECORDS_OVERHEAD", "UserOp", "Workload"]

_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Dennis", "Frances", "Niklaus", "Radia")
_WORDS = ("lunch", "call", "review", "flight", "dentist", "groceries", "demo", "backup", "gym", "party")

RECORDS_OVERHEAD = 20
"""Bytes of a RECORDS frame besides its records: header and CRC (18), the list's count (2)
(PROTOCOL.md sections 3 and 4)."""
NOTE_OVERHEAD = 31
"""Bytes of a note record besides its title and text: kind, flags, id, version, an empty
``conflict_of``, the two strings' lengths (PROTOCOL.md sections 2 and 5)."""
FILL_SLACK = 4
"""A frame-filling note is this many bytes either side of its share of the frame."""


@dataclass(frozen=True, slots=True)
class UserOp:
    """One user action on one handset: ``add``, ``import`` (several adds), ``edit``, ``delete``
    or ``photo``."""

    kind: str
    body: RecordBody | None = None
    record_id: bytes | None = None
    photo: bytes = b""
    caption: str = ""
    bodies: tuple[RecordBody, ...] = ()


class Workload:
    """Draws user operations from its own RNG; content is unique per version."""

    def __init__(self, rng: random.Random, *, max_frame: int = DEFAULT_MAX_FRAME, fill_notes: float = 0.0) -> None:
        self.rng = rng
        self.counter = 0
        small = max_frame < DEFAULT_MAX_FRAME
        self.photo_max = 2400 if small else 1200
        """Largest photo: with small frames, up to three chunks of a 1 KiB frame."""
        budget = max_frame - RECORDS_OVERHEAD
        share = max(2, -(-budget // 1024))  # two notes of at most 1 KiB fill a 1 or 2 KiB frame, four a 4 KiB one
        self.fill_size = budget // share if small else 0
        """The encoded size around which frame-filling notes are drawn (0: none)."""
        self.fill_notes = fill_notes if small else 0.0
        """The share of notes sized to fill a frame (``full-frames``)."""

    def _tag(self) -> int:
        self.counter += 1
        return self.counter

    def body(self, kind: type[RecordBody]) -> RecordBody:
        """A new body of ``kind`` with unique content."""
        n = self._tag()
        rng = self.rng
        word = rng.choice(_WORDS)
        if kind is Contact:
            name = rng.choice(_NAMES)
            return Contact(f"{name} #{n}", (f"+1555{n:07d}",), (f"{name.lower()}{n}@example.com",))
        if kind is CalendarEvent:
            start = 1_257_000_000 + n * 3600
            return CalendarEvent(f"{word} #{n}", start, start + 1800 * rng.randint(1, 4), rng.choice(("", "HQ")))
        if kind is Todo:
            return Todo(f"{word} #{n}", rng.random() < 0.3, 0, rng.randint(0, 3))
        if self.fill_notes and rng.random() < self.fill_notes:
            return self._filling_note(f"{word} #{n}")
        return Note(f"{word} #{n}", " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 12))))

    def _filling_note(self, title: str) -> Note:
        """A note whose record encodes to ``fill_size`` bytes, give or take ``FILL_SLACK``."""
        rng = self.rng
        size = self.fill_size + rng.randint(-FILL_SLACK, FILL_SLACK)
        length = size - NOTE_OVERHEAD - len(title.encode())
        words = " ".join(rng.choice(_WORDS) for _ in range(length // 4 + 1))
        return Note(title, words[:length])

    def edited(self, old: RecordBody) -> RecordBody:
        """A new version of ``old``: same kind, unique content."""
        if isinstance(old, Photo):
            return Photo(f"{old.caption.split(' #')[0]} #{self._tag()}", old.blob_id, old.size, old.sha256,
                         old.content_type)
        return self.body(type(old))

    def next_op(self, live: list[tuple[bytes, RecordBody]]) -> UserOp:
        """The next action, given the live records the handset shows (id, body), by id."""
        rng = self.rng
        roll = rng.random()
        if not live or roll < 0.3:
            if rng.random() < 0.15:
                kind = rng.choice((Contact, CalendarEvent, Todo, Note))
                return UserOp("import", bodies=tuple(self.body(kind) for _ in range(rng.randint(4, 14))))
            if rng.random() < 0.3:
                size = rng.randint(100, self.photo_max)
                return UserOp("photo", photo=rng.randbytes(size), caption=f"{rng.choice(_WORDS)} #{self._tag()}")
            kind = rng.choice((Contact, CalendarEvent, Todo, Note))
            return UserOp("add", body=self.body(kind))
        # Edits favour the records with the smallest ids, the same on every handset of the account
        # once synced: concurrent edits of the same record.
        index = min(int(rng.expovariate(0.5)), len(live) - 1) if rng.random() < 0.6 else rng.randrange(len(live))
        record_id, body = live[index]
        if roll < 0.85:
            return UserOp("edit", body=self.edited(body), record_id=record_id)
        return UserOp("delete", record_id=record_id)
