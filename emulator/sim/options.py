"""What one simulated run is asked to do (``SimOptions``), what it gives back (``RunResult``), and the
planted bugs and chips it may run with."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sidekick_testbed.emulator.flash import Geometry
from sidekick_testbed.emulator.mutants import DEVICE_MUTANTS
from sidekick_testbed.emulator.sim.nemesis import FAULT_KINDS, Swarm
from sidekick_testbed.emulator.sim.oracle import Violation
from sidekick_testbed.server_stub.faults import FAULT_MODES

__all__ = ["ALL_MUTANTS", "GEOMETRY", "SQLITE_SHARE", "TIGHT_GEOMETRY", "RunResult", "SimOptions", "with_swarm"]

ALL_MUTANTS: dict[str, str] = {**DEVICE_MUTANTS, **FAULT_MODES}
"""Every planted bug ``--mutant`` accepts: device mutants, then server fault modes."""

GEOMETRY = Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=8)
"""A small chip, so garbage collection runs often within one simulated run."""
TIGHT_GEOMETRY = Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=6)
"""A chip so small that live data fills most blocks: collection moves live entries (some seeds)."""

SQLITE_SHARE = 0.25
"""The share of seeds that run the server on SQLite under ``backend="mixed"``."""

@dataclass(frozen=True)
class SimOptions:
    """What one run simulates (everything else comes from the seed)."""

    accounts: int = 2
    devices: int = 2
    steps: int = 40
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    mutant: str | None = None
    binding: str = "mixed"
    swarm: Swarm | None = None
    backend: str = "mixed"
    """The server's storage: ``sim`` (simulated), ``sqlite`` (a real database file), or ``mixed``:
    SQLite for a share of the seeds (``SQLITE_SHARE``), drawn from the seed."""
    script: tuple[tuple[str, int, int], ...] | None = None
    """Explicit fault-phase steps ``(action, device index, step number)`` instead of the seed's draw
    (what the shrinker cuts down); each step's random choices come from its own number, so removing
    a step leaves the others as they were."""

    def __post_init__(self) -> None:
        if not 1 <= self.accounts <= 16:
            raise ValueError(f"accounts must be in 1..16, not {self.accounts}")
        if not 1 <= self.devices <= 16:
            raise ValueError(f"devices must be in 1..16 per account, not {self.devices}")
        if not 0 <= self.steps <= 100_000:
            raise ValueError(f"steps must be in 0..100000, not {self.steps}")
        unknown = sorted(set(self.faults) - FAULT_KINDS.keys())
        if unknown:
            raise ValueError(f"unknown fault kind(s): {', '.join(unknown)}")
        if self.mutant is not None and self.mutant not in ALL_MUTANTS:
            raise ValueError(f"unknown mutant {self.mutant!r} (sidekick fuzz --list-mutants)")
        if self.binding not in ("raw", "http", "mixed"):
            raise ValueError(f"binding must be raw, http or mixed, not {self.binding!r}")
        if self.backend not in ("sim", "sqlite", "mixed"):
            raise ValueError(f"backend must be sim, sqlite or mixed, not {self.backend!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (traces)."""
        return {
            "accounts": self.accounts, "devices": self.devices, "steps": self.steps,
            "faults": sorted(self.faults), "mutant": self.mutant, "binding": self.binding,
            "backend": self.backend, "swarm": self.swarm.as_dict() if self.swarm is not None else None,
            "script": [list(step) for step in self.script] if self.script is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimOptions:
        """Inverse of ``as_dict`` (ValueError/TypeError/KeyError on a bad value)."""
        swarm = data.get("swarm")
        script = data.get("script")
        return cls(
            accounts=int(data["accounts"]), devices=int(data["devices"]), steps=int(data["steps"]),
            faults=frozenset(str(f) for f in data["faults"]), mutant=data.get("mutant"),
            binding=str(data.get("binding", "mixed")), backend=str(data.get("backend", "sim")),
            swarm=Swarm.from_dict(swarm) if swarm is not None else None,
            script=tuple((str(a), int(d), int(k)) for a, d, k in script) if script is not None else None,
        )


@dataclass
class RunResult:
    """The outcome of one run: its timeline, the first violation (None: clean) and counters."""

    seed: int
    options: SimOptions
    swarm: Swarm
    events: list[dict[str, Any]]
    violation: Violation | None
    stats: dict[str, Any]
    backend: str = "sim"
    """The server's storage in this run (``sim`` or ``sqlite``)."""
    steps: list[tuple[str, int, int]] = field(default_factory=list)
    """The fault-phase steps that ran: (action, device index, step number), a script that replays them."""



def with_swarm(result: RunResult) -> SimOptions:
    """The run's options with its swarm and backend made explicit (what shrinking varies)."""
    return replace(result.options, swarm=result.swarm, backend=result.backend)

