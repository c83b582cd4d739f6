"""The sync client's contract with its callers: the device it syncs (``SyncDevice``, which ``Handset``
implements) and what one sync did (``SyncReport``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sidekick_testbed.protocol.messages import Conflict, Message

if TYPE_CHECKING:
    import random

    from sidekick_testbed.emulator.mutants import Mutants
    from sidekick_testbed.emulator.store import RecordStore

__all__ = ["SyncDevice", "SyncReport"]


class SyncDevice(Protocol):
    """What the sync client needs of the device it syncs (``Handset`` is one)."""

    @property
    def store(self) -> RecordStore:
        """The device's store, looked up on every use: after a power cut it raises."""
        ...

    @property
    def mutants(self) -> Mutants:
        """The planted bugs the device runs with."""
        ...

    @property
    def rng(self) -> random.Random:
        """The device's RNG: nonces, new device ids, pings."""
        ...

    @property
    def name(self) -> str:
        """The device's name in the log ("" for none)."""
        ...

    def on_sync_message(self, direction: str, message: Message) -> None:
        """Every message of the session, ``"sent"`` or ``"received"``, as it goes."""

    def on_sync_regression(self, reason: str) -> None:
        """The session detected a server regression (``reason`` says which)."""


@dataclass
class SyncReport:
    """What one sync did (``attempts`` counts the tries ``Handset.sync`` needed)."""

    pushed: int = 0
    durable: int = 0
    pulled: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    blob_bytes_sent: int = 0
    blob_bytes_received: int = 0
    regression: str | None = None
    generation: int = 0
    durable_lsn: int = 0
    anchor: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    attempts: int = 1
