"""Server events on a timeline, read from a TOML scenario file (docs/SIMULATE.md).

Built-in scenarios ship with the package (``emulator/fleet/scenarios/NAME.toml``) and are named
without their suffix (``2009-outage``); ``find_scenario`` takes such a name or a file path.

```toml
name = "..."
[[event]]
at = "8h"              # when, from the start of the run
kind = "outage"        # crash | outage | restore | silent-rollback | slow-disk | fleet-reboot
duration = "10h"       # outage, slow-disk
backup_at = "1h"       # restore, silent-rollback: the backup taken at that time is restored
commit_delay = "2s"    # slow-disk: extra time per commit
fraction = 0.3         # fleet-reboot: share of handsets that reboot (battery pulled, reset)
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.fleet.durations import DurationError, parse_duration
from sidekick_testbed.emulator.fleet.profiles import ProfileError

EVENT_KINDS = ("crash", "outage", "restore", "silent-rollback", "slow-disk", "fleet-reboot")


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One event of the timeline; unused fields stay at their defaults."""

    at: float
    kind: str
    duration: float = 0.0
    backup_at: float = 0.0
    commit_delay: float = 0.0
    fraction: float = 0.0

    def describe(self) -> str:
        """A short human description, e.g. ``restore (backup of 1h) at 18h``."""
        from sidekick_testbed.emulator.fleet.durations import format_duration as fmt

        extra = {
            "outage": f" for {fmt(self.duration)}",
            "slow-disk": f" for {fmt(self.duration)}, +{fmt(self.commit_delay)} per commit",
            "restore": f" from the backup of {fmt(self.backup_at)}",
            "silent-rollback": f" to the backup of {fmt(self.backup_at)}, generation kept",
            "fleet-reboot": f" of {self.fraction:.0%} of handsets",
        }.get(self.kind, "")
        return f"{fmt(self.at)}: {self.kind}{extra}"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named list of server events, sorted by time."""

    name: str
    description: str
    events: tuple[ServerEvent, ...]

    @property
    def backup_times(self) -> list[float]:
        """Times at which the simulation must take a backup for a later restore."""
        return sorted({e.backup_at for e in self.events if e.kind in ("restore", "silent-rollback")})


EMPTY = Scenario("none", "no server events", ())


def _duration(table: dict[str, Any], key: str, where: str) -> float:
    if key not in table:
        return 0.0
    try:
        return parse_duration(table[key])
    except DurationError as exc:
        raise ProfileError(f"{where}: {key}: {exc}") from None


_EVENT_KEYS = {"at", "kind", "duration", "backup_at", "commit_delay", "fraction"}


def _fraction(table: dict[str, Any], where: str) -> float:
    value = table.get("fraction", 0.0)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ProfileError(f"{where}: fraction must be a number")
    return float(value)


def builtin_scenarios() -> dict[str, Traversable]:
    """The scenarios shipped with the package, by name (file name without ``.toml``), sorted."""
    folder = resources.files("sidekick_testbed.emulator.fleet").joinpath("scenarios")
    files = [entry for entry in folder.iterdir() if entry.name.endswith(".toml")]
    return {entry.name.removesuffix(".toml"): entry for entry in sorted(files, key=lambda e: e.name)}


def find_scenario(spec: str) -> Scenario:
    """A built-in scenario by name (``2009-outage``), else the TOML file at path ``spec``."""
    builtin = builtin_scenarios()
    if spec in builtin:
        return load_scenario(builtin[spec])
    if not Path(spec).is_file():
        raise ProfileError(f"{spec}: no such file, and no built-in scenario of that name "
                           f"({', '.join(builtin)}; sidekick simulate --list-scenarios)")
    return load_scenario(spec)


def load_scenario(path: str | Path | Traversable) -> Scenario:
    """Read a scenario file; raise ProfileError with the file and event on any mistake."""
    if isinstance(path, str):
        path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProfileError(f"{path}: is a directory, not a scenario file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    raw_events = data.get("event", [])
    if not isinstance(raw_events, list):
        raise ProfileError(f"{path}: events are written as [[event]] tables")
    events = []
    for number, table in enumerate(raw_events, 1):
        where = f"{path}: event {number}"
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: events are written as [[event]] tables")
        unknown = set(table) - _EVENT_KEYS
        if unknown:
            raise ProfileError(f"{where}: unknown keys {sorted(unknown)}")
        kind = table.get("kind")
        if kind not in EVENT_KINDS:
            raise ProfileError(f"{where}: kind must be one of {', '.join(EVENT_KINDS)}, not {kind!r}")
        if "at" not in table:
            raise ProfileError(f"{where}: 'at' (when) is required")
        event = ServerEvent(
            at=_duration(table, "at", where),
            kind=kind,
            duration=_duration(table, "duration", where),
            backup_at=_duration(table, "backup_at", where),
            commit_delay=_duration(table, "commit_delay", where),
            fraction=_fraction(table, where),
        )
        if kind in ("outage", "slow-disk") and event.duration <= 0:
            raise ProfileError(f"{where}: {kind} needs a duration")
        if kind in ("restore", "silent-rollback") and "backup_at" not in table:
            raise ProfileError(f"{where}: {kind} needs backup_at (when the backup it restores was taken)")
        if kind in ("restore", "silent-rollback") and event.backup_at >= event.at:
            raise ProfileError(f"{where}: backup_at must be before the {kind}")
        if kind == "fleet-reboot" and not 0 < event.fraction <= 1:
            raise ProfileError(f"{where}: fraction must be in (0, 1]")
        events.append(event)
    events.sort(key=lambda e: e.at)
    return Scenario(str(data.get("name", Path(path.name).stem)), str(data.get("description", "")), tuple(events))
