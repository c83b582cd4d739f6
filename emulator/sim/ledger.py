"""The simulation's own record of what users did and what the server promised.

Kept apart from the code under test: the ledger learns of versions when the workload creates them
and of receipts from the messages each handset sent and received (the observer hook), never from
the store's or the server's bookkeeping.

Every user version has unique content, so a version is named by its content: ``(deleted, body)``.
Its parent is what the device showed for the record when the user edited it. A version is a
*leaf* while no version was made from it. A device's receipt ``DURABLE(g, n)`` confirms, in
generation ``g``, every change the device pushed with LSN <= n in the same session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sidekick_testbed.protocol.messages import (
    BlobAck,
    BlobChunk,
    BlobQuery,
    Commit,
    Durable,
    Error,
    HelloOk,
    Message,
    PullAck,
    Push,
)
from sidekick_testbed.protocol.records import Record, RecordBody

__all__ = ["DeviceTrack", "Key", "Ledger", "Version", "key_of"]

Key = tuple[bool, RecordBody]
"""A version's identity: its tombstone flag and body (unique per user version)."""


def key_of(record: Record) -> Key:
    """The content key of a record version."""
    return (record.deleted, record.body)


@dataclass(slots=True)
class Version:
    """One version a user created."""

    vid: int
    key: Key
    record_id: bytes
    account: str
    creators: list[str]
    parent: int | None
    t: float
    children: int = 0

    @property
    def leaf(self) -> bool:
        """No version was made from this one."""
        return self.children == 0

    @property
    def label(self) -> str:
        """Short readable name, e.g. ``v12``."""
        return f"v{self.vid}"


@dataclass(slots=True)
class DeviceTrack:
    """What the ledger knows of one device: its own latest versions and its receipts."""

    name: str
    account: str
    own: dict[bytes, Key] = field(default_factory=dict)
    """record id -> this device's latest version of it, until released (confirmed, then replaced)."""
    session_pushes: dict[int, Key] = field(default_factory=dict)
    """LSN -> version pushed in the current session."""
    session_generation: int | None = None
    confirmed: dict[Key, set[int]] = field(default_factory=dict)
    """Version -> generations in which this device received DURABLE for it."""
    max_commit_lsn: int = 0
    max_pull_ack: int = 0
    sessions: int = 0
    chunk_sent: tuple[bytes, int] | None = None
    """(blob id, offset + length) of the BLOB_CHUNK awaiting its BLOB_ACK, if one is."""
    blob_query: bytes | None = None
    """The blob id of the BLOB_QUERY awaiting its BLOB_ACK, if one is."""


class Ledger:
    """Every user version (by content) and every device's receipts."""

    def __init__(self) -> None:
        self.versions: dict[Key, Version] = {}
        self.by_vid: list[Version] = []
        self.devices: dict[str, DeviceTrack] = {}
        self.released: dict[Key, set[int]] = {}
        """Version -> generations in which a device let go of it after DURABLE."""
        self.assigned: dict[tuple[bytes, int, int], int] = {}
        """(device id, LSN, generation) -> the server version a DURABLE of that generation gave the
        change that device pushed with that LSN (0: a version the server said it no longer keeps)."""
        self.changes = 0
        """Counts the versions created and the messages learnt from: unchanged, nothing a check
        of a device against the ledger reads has changed."""
        self.blob_sent: dict[tuple[str, bytes], int] = {}
        """(account, blob id) -> the furthest byte any device of the account sent of that blob in a
        BLOB_CHUNK: the most a server can hold of it, whatever reached it."""

    # ------------------------------------------------------------------ user versions

    def add_device(self, name: str, account: str) -> DeviceTrack:
        """Start tracking a device."""
        track = DeviceTrack(name, account)
        self.devices[name] = track
        return track

    def created(self, device: str, record_id: bytes, key: Key, parent: Key | None, t: float) -> Version:
        """A user on ``device`` made version ``key`` of ``record_id`` from ``parent``."""
        self.changes += 1
        track = self.devices[device]
        existing = self.versions.get(key)
        if existing is not None:  # e.g. two devices deleting the same version
            if device not in existing.creators:
                existing.creators.append(device)
            version = existing
        else:
            parent_version = self.versions.get(parent) if parent is not None else None
            version = Version(len(self.by_vid) + 1, key, record_id, track.account, [device],
                              parent_version.vid if parent_version else None, t)
            if parent_version is not None:
                parent_version.children += 1
            self.versions[key] = version
            self.by_vid.append(version)
        track.own[record_id] = key
        return version

    def label(self, key: Key) -> str:
        """``v12`` for a ledger version, ``?`` for content no user created."""
        version = self.versions.get(key)
        return version.label if version else "?"

    def leaves(self, account: str) -> list[Version]:
        """The account's leaf versions, in creation order."""
        return [v for v in self.by_vid if v.account == account and v.leaf]

    # ------------------------------------------------------------------ receipts

    def message(self, device: str, direction: str, message: Message) -> None:
        """Learn from one message a device sent or received."""
        self.changes += 1
        track = self.devices[device]
        if direction == "sent":
            if isinstance(message, Push):
                for change in message.changes:
                    track.session_pushes[change.lsn] = key_of(change.record)
            elif isinstance(message, Commit):
                track.max_commit_lsn = max(track.max_commit_lsn, message.lsn)
            elif isinstance(message, PullAck):
                track.max_pull_ack = max(track.max_pull_ack, message.anchor)
            elif isinstance(message, BlobChunk):
                end = message.offset + len(message.data)
                track.chunk_sent = (message.blob_id, end)
                track.blob_query = None
                sent = (track.account, message.blob_id)
                self.blob_sent[sent] = max(self.blob_sent.get(sent, 0), end)
            elif isinstance(message, BlobQuery):
                track.chunk_sent = None
                track.blob_query = message.blob_id
            return
        if isinstance(message, BlobAck | Error):
            track.chunk_sent = None
            track.blob_query = None
        if isinstance(message, HelloOk):
            track.chunk_sent = None
            track.blob_query = None
            track.session_pushes = {}
            track.session_generation = message.generation
            track.sessions += 1
        elif isinstance(message, Durable):
            for lsn, key in track.session_pushes.items():
                if lsn <= message.durable_lsn:
                    track.confirmed.setdefault(key, set()).add(message.generation)

    def blob_bytes_sent(self, account: str, blob_id: bytes) -> int:
        """The most of a blob the devices of ``account`` ever sent (0: none of it)."""
        return self.blob_sent.get((account, blob_id), 0)

    def confirmed_in(self, device: str, key: Key, generation: int) -> bool:
        """True if ``device`` received DURABLE for ``key`` in ``generation``."""
        return generation in self.devices[device].confirmed.get(key, ())

    def confirmed_keys(self, generation: int, account: str) -> Iterable[tuple[str, Key]]:
        """(device, version) pairs of the account confirmed durable in ``generation``."""
        for name, track in self.devices.items():
            if track.account != account:
                continue
            for key, generations in track.confirmed.items():
                if generation in generations:
                    yield name, key
