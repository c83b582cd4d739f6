"""The handset room: one emulated Sidekick-class phone and how it syncs.

``device`` is the handset (flash, store, user operations, power, sync with retries); ``sync_client``
runs one sync session for any ``SyncDevice``, raising the errors of ``sync_errors``; ``transport``
carries the frames (raw stream or HTTP, TCP or memory); ``endpoint`` parses server and proxy URLs.
This package re-exports the handset's public names, so ``from sidekick_testbed.emulator.handset import
Handset`` works. The room imports the protocol, the flash, the store and the capture streams, never
the simulation, the fleet or certification.
"""

from sidekick_testbed.emulator.handset.device import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    Handset,
    HandsetError,
    PoweredOff,
    SyncObserver,
    UnknownRecord,
    UnsyncedData,
)

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "Handset",
    "HandsetError",
    "PoweredOff",
    "SyncObserver",
    "UnknownRecord",
    "UnsyncedData",
]
