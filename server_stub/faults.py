"""Fault modes: named, documented server bugs, off by default (the one registry).

Each mode imitates a plausible bug of a real sync server so that the testbed can prove it catches
it. Code asks ``faults.on("name")`` at the one place the bug lives; a name outside ``ALL_FAULT_MODES``
raises ``KeyError``, so a typo can never silently mean "off". The set is mutable (the admin API
switches modes at run time) and shared by a server and its storage.
"""

from __future__ import annotations

from collections.abc import Iterable

FAULT_MODES: dict[str, str] = {
    "ack-before-durable": "DURABLE is sent before the transaction commits; a crash then loses acknowledged changes",
    "silent-rollback": "a restore from backup keeps the old generation, so devices cannot see the lost data",
    "duplicate-on-retransmit": "a retransmitted (device, LSN) is applied again as a new version",
    "ignore-pull-ack": "the device's anchor is advanced when PULL_END is sent, not on PULL_ACK",
    "lose-tail-on-crash": "the last committed batch is dropped by a crash (a torn log tail) and the generation is kept",
    "wrong-watermark": "the durable LSN reported counts changes received but not committed",
    "reorder-versions": "a truncated pull pages records newest first, so its anchor skips older versions",
    "forget-conflict-copy": "a conflicting change overwrites the head without keeping a conflict copy",
    # Storage failures (the fuzzer's storage-failure fault kind makes commits fail):
    "durable-despite-storage-error": "a commit that fails in storage is logged and answered with DURABLE anyway",
}
"""Every fault mode, with the one line that documents it (``sidekick serve --list-faults``)."""

CERTIFICATION_FAULT_MODES: dict[str, str] = {
    "overwrite-taken-copy": "a conflict copy is written over a record already holding its copy id (R-CONFLICT-8)",
    "no-batch-total": "no limit on the changes pushed between two COMMITs, only on each PUSH (R-LIMIT-4)",
    "volatile-dedup": "duplicates are detected from memory only, so a retransmit after a restart is applied again",
    "skip-fsync": "SQLite runs with synchronous=OFF: commits reach the OS page cache, never the disk",
    "write-behind-2ms": "DURABLE is sent 2 ms before the transaction commits (a write-behind window)",
    "write-behind-10ms": "DURABLE is sent 10 ms before the transaction commits (a write-behind window)",
    "commit-lsn-watermark": "DURABLE reports the COMMIT's LSN as durable, though no change of it was received",
}
"""Bugs of a real server's store, or of paths a simulated handset never takes, planted for
``sidekick certify`` and ``sidekick fuzz --server`` against a running server (docs/CERTIFY.md). The
simulation fuzzer's mutants are the modes of ``FAULT_MODES`` only."""

ALL_FAULT_MODES: dict[str, str] = {**FAULT_MODES, **CERTIFICATION_FAULT_MODES}
"""The one registry ``FaultSet`` checks names against (``sidekick serve --list-faults``)."""

WRITE_BEHIND_S: dict[str, float] = {"write-behind-2ms": 0.002, "write-behind-10ms": 0.010}
"""The window of each write-behind fault mode, in seconds of the Trio clock."""


class UnknownFault(ValueError):
    """A fault name that is not in the registry."""


class FaultSet:
    """The fault modes switched on for one server (empty = the correct server)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._on: set[str] = set()
        for name in names:
            self.enable(name)

    @staticmethod
    def check(name: str) -> str:
        """Return ``name`` if it is a registered fault mode, else raise ``UnknownFault``."""
        if name not in ALL_FAULT_MODES:
            known = ", ".join(sorted(ALL_FAULT_MODES))
            raise UnknownFault(f"unknown fault mode {name!r} (known: {known})")
        return name

    def on(self, name: str) -> bool:
        """True if the named fault is switched on (the name must be registered)."""
        if name not in ALL_FAULT_MODES:
            raise KeyError(name)
        return name in self._on

    def enable(self, name: str) -> None:
        """Switch a fault mode on."""
        self._on.add(self.check(name))

    def disable(self, name: str) -> None:
        """Switch a fault mode off."""
        self._on.discard(self.check(name))

    @property
    def names(self) -> frozenset[str]:
        """The modes switched on."""
        return frozenset(self._on)

    def __bool__(self) -> bool:
        return bool(self._on)

    def __repr__(self) -> str:
        return f"FaultSet({sorted(self._on)!r})"


def describe() -> str:
    """The registry as text, one ``name  description`` line per mode."""
    width = max(len(name) for name in ALL_FAULT_MODES)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in ALL_FAULT_MODES.items())
