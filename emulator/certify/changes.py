"""What a check pushes: changes of notes and other records, committed notes, and the conflict-copy ids the spec derives."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sidekick_testbed.emulator.certify.answers import assigned_version
from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.protocol.records import Note, Record, RecordBody

if TYPE_CHECKING:
    from sidekick_testbed.emulator.certify.context import CheckContext

__all__ = ["body_change", "committed_notes", "copy_id", "note_change"]


def note_change(lsn: int, record_id: bytes, title: str, *, base: int = 0, text: str = "",
                deleted: bool = False) -> Change:
    """A NOTE change: the simplest record there is."""
    return Change(lsn, base, Record(record_id, 0, deleted, Note(title, text)))


def body_change(lsn: int, record_id: bytes, body: RecordBody, *, base: int = 0, deleted: bool = False) -> Change:
    """A change of any record body."""
    return Change(lsn, base, Record(record_id, 0, deleted, body))


def copy_id(record_id: bytes, version: int, taken: int = 0) -> bytes:
    """The conflict copy id of section 13; ``taken`` = n > 0 gives the n-th id of "Taken copy ids"."""
    suffix = taken.to_bytes(4, "big") if taken else b""
    return hashlib.sha256(b"conflict" + record_id + version.to_bytes(8, "big") + suffix).digest()[:16]


async def committed_notes(ctx: CheckContext, count: int, label: str) -> list[int]:
    """Push and commit ``count`` notes from a fresh device (its session then ends); the versions assigned."""
    writer = ctx.device()
    session = await ctx.session(writer)
    changes = [note_change(writer.lsn(), ctx.new_id(), f"certify: {label} {i}") for i in range(count)]
    _, durable = await session.push_commit(changes)
    versions = [assigned_version(durable, c.lsn) for c in changes]
    await session.bye()
    return versions
