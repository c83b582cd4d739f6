"""What one fleet run simulates: ``FleetConfig`` (handsets, accounts, workload, network, server
events, handset behaviour, seed), the behaviours a handset may have (``HANDSETS``), the flash each
handset gets, and ``FleetRun``, what a finished run returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sidekick_testbed.emulator.flash import MAX_BLOCKS
from sidekick_testbed.emulator.fleet.durations import format_duration
from sidekick_testbed.emulator.fleet.profiles import NetworkMix, WorkloadProfile
from sidekick_testbed.emulator.fleet.scenario import EMPTY, Scenario
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.protocol.records import RecordKind

__all__ = ["HANDSETS", "PAGES_PER_BLOCK", "FleetConfig", "FleetRun"]

HANDSETS: dict[str, Mutants] = {
    "correct": NO_MUTANTS,
    "2009": Mutants(frozenset({"restore-from-server-on-reboot"})),
}
"""Handset behaviours: the correct one, and the 2009 firmware that restores from the server on reboot."""


PAGES_PER_BLOCK = 16
"""Pages in each erase block of a handset's flash (2 KiB pages)."""


def _flash_blocks(workload: WorkloadProfile, duration: float) -> int:
    """Blocks of 16 x 2 KiB pages for one handset: what the run's photos and records need, twice
    over, plus room for garbage collection."""
    days = duration / 86400
    photos = workload.per_day.get(RecordKind.PHOTO, 0.0) * days * 3 + 2
    need = photos * (workload.photo_bytes + 4096) + workload.changes_per_day * days * 3 * 1024 + 65536
    return max(24, math.ceil(2 * need / (PAGES_PER_BLOCK * 2048)) + 8)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """One fleet run. ``accounts`` defaults to one per handset; handsets are dealt to accounts
    round-robin. ``labels`` are the user's spellings (file names) echoed in the report."""

    devices: int
    workload: WorkloadProfile
    network: NetworkMix
    duration: float = 86400.0
    accounts: int | None = None
    scenario: Scenario = EMPTY
    handset: str = "correct"
    seed: int = 0
    sample_every: float = 600.0
    attempts: int = 5
    retry_base: float = 300.0
    flash_blocks: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("at least one device")
        if self.accounts is not None and not 1 <= self.accounts <= self.devices:
            raise ValueError("accounts must be between 1 and the number of devices")
        if self.duration <= 0 or self.sample_every <= 0:
            raise ValueError("duration and sample interval must be positive")
        if self.handset not in HANDSETS:
            raise ValueError(f"handset must be one of {', '.join(HANDSETS)}")
        if self.handset_blocks > MAX_BLOCKS:
            raise ValueError(f"{format_duration(self.duration)} of the {self.workload.name} workload needs "
                             f"{self.handset_blocks:,} flash blocks a handset, more than a chip has "
                             f"({MAX_BLOCKS:,}): simulate a shorter time")

    @property
    def handset_blocks(self) -> int:
        """Erase blocks of each handset's flash: ``flash_blocks``, or what the workload needs."""
        return self.flash_blocks or _flash_blocks(self.workload, self.duration)

    @property
    def account_count(self) -> int:
        """Accounts in the run."""
        return self.accounts if self.accounts is not None else self.devices


@dataclass
class FleetRun:
    """A finished run: the JSON report and figures the benchmark wants (never in the JSON)."""

    report: dict[str, Any]
    events_processed: int
    syncs: int
