"""Swarm testing: each seed switches on its own subset of fault kinds, each at its own intensity.

Like VOPR's swarm testing, a run does not spread every fault thinly; it picks (from the seed)
which kinds are on and how hard they hit, so rare combinations get explored across seeds.
Network kinds are per-chunk probabilities (``emulator.sim.network``); flash kinds are chip fault
rates; the others are weights of nemesis steps among the workload's steps.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidekick_testbed.emulator.flash import FlashFaults
from sidekick_testbed.emulator.sim.network import NetworkFaults

__all__ = ["FAULT_KINDS", "NETWORK_KINDS", "STEP_KINDS", "WORKLOAD_KINDS", "Swarm", "draw_swarm", "parse_faults"]

NETWORK_KINDS: dict[str, tuple[float, ...]] = {
    "drop": (0.002, 0.01, 0.03),
    "delay": (0.01, 0.05, 0.2),
    "stall": (0.002, 0.01, 0.03),
    "duplicate": (0.002, 0.01, 0.03),
    "truncate": (0.002, 0.01, 0.03),
    "corrupt": (0.002, 0.01, 0.03),
    "reset": (0.002, 0.01, 0.04),
}
FLASH_KINDS: dict[str, tuple[float, ...]] = {
    "bit-flip": (0.001, 0.01),
    "bad-block": (0.0005, 0.003),
}
STEP_KINDS: dict[str, tuple[float, ...]] = {
    "partition": (0.3, 1.0, 2.0),
    "power-cut": (1.0, 3.0, 6.0),
    "server-crash": (0.3, 1.0, 2.0),
    "server-restart": (0.3, 1.0),
    "server-restore": (0.3, 1.0, 2.0),
    "clock-jump": (0.3, 1.0),
    "storage-failure": (0.3, 1.0, 2.0),
    "commit-crash": (0.3, 1.0),
}
WORKLOAD_KINDS: dict[str, tuple[float, ...]] = {
    "edit-during-sync": (0.05, 0.2, 0.5),
    "small-frames": (1.0, 2.0, 4.0),
    "full-frames": (0.5, 1.0),
}
"""What the swarm switches like a fault besides faults: ``edit-during-sync``, the chance, per
message a handset sends, that its user edits right then (between the messages of the sync);
``small-frames``, the frame size both ends offer, in KiB; ``full-frames``, with small frames, the
share of notes long enough that two (four in a 4 KiB frame) fill a RECORDS frame to within a few
bytes of its limit, either side."""
FAULT_KINDS: dict[str, str] = {
    "drop": "a chunk of bytes is lost on a connection",
    "delay": "a chunk is held up to a few seconds",
    "stall": "device bytes reach the server after the device gave up and reconnected",
    "duplicate": "a chunk is delivered twice",
    "truncate": "part of a chunk arrives, then the connection is reset",
    "corrupt": "one bit of a chunk is flipped",
    "reset": "the connection is reset",
    "partition": "a device cannot reach the server for a while",
    "power-cut": "a handset loses power now, at a coming flash write or right after a coming erase (torn)",
    "bit-flip": "reads see bit flips within the ECC limit",
    "bad-block": "programs and erases fail, blocks grow bad",
    "server-crash": "the server process dies (now, or right after a coming storage write); storage keeps "
                    "only its durable state",
    "server-restart": "the server process stops and starts again",
    "server-restore": "the server's store is restored from an older backup (a new generation)",
    "clock-jump": "the clock jumps forward past every timeout",
    "storage-failure": "the server's storage fails: disk full for a while, I/O errors, an fsync that fails",
    "commit-crash": "the server process dies right after a coming commit is durable, before its DURABLE is sent",
    "edit-during-sync": "a user edits while a sync is under way, between its messages",
    "small-frames": "frames of 1-4 KiB: photos span chunks, pulls span frames, pushes come in small batches",
    "full-frames": "with small frames, notes that fill a RECORDS frame to within a few bytes of its limit",
}
assert set(FAULT_KINDS) == set(NETWORK_KINDS) | set(FLASH_KINDS) | set(STEP_KINDS) | set(WORKLOAD_KINDS)


def parse_faults(text: str) -> frozenset[str]:
    """``drop,power-cut,...`` (or ``all`` / ``none``) as a set of fault kinds; ValueError if unknown."""
    text = text.strip()
    if text == "all":
        return frozenset(FAULT_KINDS)
    if text in ("", "none"):
        return frozenset()
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - FAULT_KINDS.keys())
    if unknown:
        raise ValueError(f"unknown fault kind(s): {', '.join(unknown)} (known: {', '.join(FAULT_KINDS)})")
    return frozenset(names)


@dataclass(frozen=True)
class Swarm:
    """The fault kinds on in one run, each with its intensity."""

    kinds: Mapping[str, float] = field(default_factory=dict)

    def on(self, kind: str) -> bool:
        """True if ``kind`` is switched on."""
        return self.kinds.get(kind, 0.0) > 0.0

    def network(self) -> NetworkFaults:
        """Per-chunk network fault probabilities."""
        return NetworkFaults(**{name: self.kinds.get(name, 0.0) for name in NETWORK_KINDS})

    def flash(self) -> FlashFaults:
        """Chip fault rates (only what firmware must survive: correctable flips, growing bad blocks)."""
        flips = self.kinds.get("bit-flip", 0.0)
        bad = self.kinds.get("bad-block", 0.0)
        return FlashFaults(read_flip_rate=flips, program_fail_rate=bad, erase_fail_rate=bad, wear_out=False)

    def step_weights(self) -> dict[str, float]:
        """Nemesis step kinds and their weights."""
        return {name: self.kinds[name] for name in STEP_KINDS if self.on(name)}

    def without(self, kind: str) -> Swarm:
        """The same swarm with ``kind`` off (for shrinking)."""
        return Swarm({k: v for k, v in self.kinds.items() if k != kind})

    def as_dict(self) -> dict[str, float]:
        """JSON-ready, sorted."""
        return {k: self.kinds[k] for k in sorted(self.kinds)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Swarm:
        """Inverse of ``as_dict``; ValueError on unknown kinds or bad values."""
        unknown = sorted(set(data) - FAULT_KINDS.keys())
        if unknown:
            raise ValueError(f"unknown fault kind(s) in swarm: {', '.join(unknown)}")
        kinds: dict[str, float] = {}
        for name, value in data.items():
            if not isinstance(value, int | float) or not 0.0 <= float(value) <= 100.0:
                raise ValueError(f"bad intensity for {name}: {value!r}")
            kinds[name] = float(value)
        return cls(kinds)


_ADDED_KINDS = ("commit-crash",)
"""Kinds added since the first campaigns, drawn after all others so that a seed's other kinds stay
what they were."""
_DRAW_ORDER = tuple(name for table in (NETWORK_KINDS, FLASH_KINDS, STEP_KINDS, WORKLOAD_KINDS)
                    for name in table if name not in _ADDED_KINDS) + _ADDED_KINDS
_MENUS = {**NETWORK_KINDS, **FLASH_KINDS, **STEP_KINDS, **WORKLOAD_KINDS}


def draw_swarm(rng: random.Random, allowed: Iterable[str]) -> Swarm:
    """Each allowed kind is on with probability 1/2, at an intensity drawn from its menu."""
    allowed_set = set(allowed)
    kinds: dict[str, float] = {}
    for name in _DRAW_ORDER:
        on = rng.random() < 0.5
        level = rng.choice(_MENUS[name])
        if on and name in allowed_set:
            kinds[name] = level
    return Swarm(kinds)
