"""What users do: create, edit and delete records of every kind, take photos, edit the same
records on several handsets. Every version's content is unique (a counter is part of it), so the
ledger can name a version by its content."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sidekick_testbed.protocol.records import CalendarEvent, Contact, Note, Photo, RecordBody, Todo

__all__ = ["UserOp", "Workload"]

_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Dennis", "Frances", "Niklaus", "Radia")
_WORDS = ("lunch", "call", "review", "flight", "dentist", "groceries", "demo", "backup", "gym", "party")


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

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counter = 0

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
        return Note(f"{word} #{n}", " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 12))))

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
                size = rng.randint(100, 1200)
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
