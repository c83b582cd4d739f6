"""Planted bugs ("mutants"), off by default: how the fuzzer itself is tested.

Each mutant is one line in ``DEVICE_MUTANTS``: a name and the real class of bug it plants. Device and
store code receive a ``Mutants`` value (never a global) and ask ``mutants.on("name")`` at the one place
the bug lives. Server-side bugs are the server's fault modes (``server_stub.faults``); the fuzzer's
``--mutant`` accepts both kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICE_MUTANTS: dict[str, str] = {
    "mark-clean-on-push-ack": "device marks a version clean on PUSH_ACK instead of DURABLE",
    "restore-from-server-on-reboot": "2009 firmware: on reboot the device drops local data and restores from the server",
    "delete-local-missing-on-server": "device deletes local records the server does not have",
    "pull-ack-before-flash": "device sends PULL_ACK before the pulled records are committed to flash",
    "gc-erase-before-commit": "store GC erases the old copy before the new copy is committed",
    "skip-crc-check": "store mounts pages without checking their CRC",
    "ignore-generation-change": "device ignores a new server generation (no recovery sync)",
    "keep-anchor-after-restore": "device keeps its old pull anchor after the server was restored",
    "next-lsn-in-ram": "store keeps the LSN counter of local writes in RAM only (its flash disagrees; a reboot reuses LSNs)",
    "refuse-pulls-as-full": "store refuses every pull that carries records as full (the handset never takes the server's data)",
}


@dataclass(frozen=True, slots=True)
class Mutants:
    """The set of planted device bugs switched on for one run (empty = correct device)."""

    names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = self.names - DEVICE_MUTANTS.keys()
        if unknown:
            raise ValueError(f"unknown device mutant(s): {', '.join(sorted(unknown))}")

    def on(self, name: str) -> bool:
        """True if the named mutant is switched on (the name must be registered)."""
        if name not in DEVICE_MUTANTS:
            raise KeyError(name)
        return name in self.names


NO_MUTANTS = Mutants()
