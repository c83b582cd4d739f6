"""Network and workload profiles for fleet simulations, and their TOML file formats.

Network figures are effective application-level rates of the era, not air-interface peaks:

* GPRS (2.5G, 2009): multislot class 10 (4 down / 2 up timeslots) with CS-2 coding gives
  4 x 13.4 = 53.6 kbit/s down and 26.8 kbit/s up at best (3GPP TS 45.002 / 45.003); field
  throughput was about 40 / 15 kbit/s, with round trips of 600-1000 ms.
* EDGE (EGPRS): MCS-5..MCS-9 at 22-59 kbit/s per slot; about 200 / 80 kbit/s in the field,
  round trips of 300-500 ms.
* 3G (UMTS R99 with early HSDPA): about 1,500 / 384 kbit/s, round trips of 150-200 ms.
* Wi-Fi (802.11g behind a 2009 home DSL line): about 6,000 / 800 kbit/s, round trips of ~40 ms.
* tunnel: EDGE figures with long partitions (a commuter in a tunnel or a building basement).

Loss is modelled as a dropped connection (the radio bearer was lost), which is what a sync
protocol over TCP sees; ``disconnects_per_hour`` is its rate while a sync is running, and
``partition_*`` describe periods with no coverage at all.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.fleet.durations import DurationError, parse_duration
from sidekick_testbed.protocol.records import RecordKind


class ProfileError(ValueError):
    """A profile name or file that cannot be used."""


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """A radio link: rates in bit/s, round trip and partition statistics in seconds."""

    name: str
    down_bps: float
    up_bps: float
    rtt: float
    disconnects_per_hour: float = 0.0
    partitions_per_day: float = 0.0
    partition_mean: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        numbers = (self.down_bps, self.up_bps, self.rtt, self.disconnects_per_hour, self.partitions_per_day,
                   self.partition_mean)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            raise ProfileError(f"network profile {self.name!r}: rates and times must be numbers")
        if self.down_bps <= 0 or self.up_bps <= 0:
            raise ProfileError(f"network profile {self.name!r}: down_bps and up_bps must be > 0")
        if min(self.rtt, self.disconnects_per_hour, self.partitions_per_day, self.partition_mean) < 0:
            raise ProfileError(f"network profile {self.name!r}: rtt, disconnects and partitions must be >= 0")
        if self.partitions_per_day > 0 and self.partition_mean <= 0:
            raise ProfileError(f"network profile {self.name!r}: partitions need partition_mean > 0")

    def transfer_time(self, nbytes: int, *, upstream: bool) -> float:
        """Seconds to carry ``nbytes`` one way, half a round trip included."""
        rate = self.up_bps if upstream else self.down_bps
        return self.rtt / 2 + nbytes * 8 / rate


NETWORKS: dict[str, NetworkProfile] = {
    p.name: p
    for p in (
        NetworkProfile("gprs", 40_000, 15_000, 0.8, 2.0, 2.0, 600.0,
                       "3GPP TS 45.002 class 10, CS-2; field figures of 2008-2009"),
        NetworkProfile("edge", 200_000, 80_000, 0.4, 1.0, 1.0, 300.0,
                       "EGPRS MCS-5..9, 4 slots; field figures of 2008-2009"),
        NetworkProfile("3g", 1_500_000, 384_000, 0.18, 0.5, 0.5, 120.0,
                       "UMTS R99 uplink, early HSDPA downlink"),
        NetworkProfile("wifi", 6_000_000, 800_000, 0.04, 0.1, 0.0, 0.0,
                       "802.11g behind a 2009 ADSL line"),
        NetworkProfile("tunnel", 200_000, 80_000, 0.4, 3.0, 12.0, 2400.0,
                       "EDGE figures with long coverage gaps"),
    )
}

DEFAULT_MIX: dict[str, float] = {"gprs": 0.25, "edge": 0.35, "3g": 0.25, "wifi": 0.1, "tunnel": 0.05}


@dataclass(frozen=True, slots=True)
class WorkloadProfile:
    """A user's activity: changes per day by kind (``edit_fraction`` of them edit and
    ``delete_fraction`` delete an existing record of that kind, the rest create one), photo size,
    power cycles per day, the sync policy (``sync_delay`` after a change, every ``sync_interval``)
    and ``initial``: records of each kind a handset holds, unsynced, when the run starts."""

    name: str
    per_day: dict[RecordKind, float]
    edit_fraction: float = 0.4
    delete_fraction: float = 0.05
    photo_bytes: int = 150_000
    reboots_per_day: float = 0.2
    sync_delay: float = 60.0
    sync_interval: float = 3600.0
    description: str = ""
    initial: dict[RecordKind, int] = field(default_factory=dict)

    @property
    def changes_per_day(self) -> float:
        """Total user changes per day, all kinds."""
        return sum(self.per_day.values())


WORKLOADS: dict[str, WorkloadProfile] = {
    w.name: w
    for w in (
        WorkloadProfile(
            "light",
            {RecordKind.CONTACT: 1, RecordKind.EVENT: 1, RecordKind.TODO: 1, RecordKind.NOTE: 0.5,
             RecordKind.PHOTO: 0.2},
            description="checks the phone a few times a day",
        ),
        WorkloadProfile(
            "typical",
            {RecordKind.CONTACT: 2, RecordKind.EVENT: 4, RecordKind.TODO: 5, RecordKind.NOTE: 3,
             RecordKind.PHOTO: 1.5},
            description="a messaging-heavy Sidekick user of 2009",
        ),
        WorkloadProfile(
            "heavy",
            {RecordKind.CONTACT: 6, RecordKind.EVENT: 12, RecordKind.TODO: 20, RecordKind.NOTE: 12,
             RecordKind.PHOTO: 8},
            reboots_per_day=0.5,
            description="organises a life on the handset, many photos",
        ),
    )
}

_KIND_NAMES = {k.name.lower(): k for k in RecordKind}


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None


def _seconds(table: dict[str, Any], key: str, default: float) -> float:
    try:
        return parse_duration(table.get(key, default))
    except DurationError as exc:
        raise ProfileError(f"{key}: {exc}") from None


def load_workload(spec: str) -> WorkloadProfile:
    """A workload by name (light, typical, heavy) or from a TOML file (docs/SIMULATE.md)."""
    if spec in WORKLOADS:
        return WORKLOADS[spec]
    path = Path(spec)
    if not path.suffix:
        raise ProfileError(f"unknown workload {spec!r}: choose {', '.join(WORKLOADS)} or a .toml file")
    data = _load_toml(path)
    per_day_raw = data.get("per_day", {})
    if not isinstance(per_day_raw, dict) or not per_day_raw:
        raise ProfileError(f"{path}: [per_day] table with records per day by kind is required")
    per_day: dict[RecordKind, float] = {}
    for name, value in per_day_raw.items():
        if name not in _KIND_NAMES:
            raise ProfileError(f"{path}: unknown record kind {name!r} (use {', '.join(_KIND_NAMES)})")
        if not isinstance(value, int | float) or value < 0:
            raise ProfileError(f"{path}: per_day.{name} must be a number >= 0")
        per_day[_KIND_NAMES[name]] = float(value)
    initial_raw = data.get("initial", {})
    if not isinstance(initial_raw, dict):
        raise ProfileError(f"{path}: [initial] must be a table of records by kind")
    initial: dict[RecordKind, int] = {}
    for name, value in initial_raw.items():
        if name not in _KIND_NAMES:
            raise ProfileError(f"{path}: unknown record kind {name!r} in [initial]")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10_000:
            raise ProfileError(f"{path}: initial.{name} must be a whole number in 0..10000")
        initial[_KIND_NAMES[name]] = value
    unknown = set(data) - _WORKLOAD_KEYS
    if unknown:
        raise ProfileError(f"{path}: unknown keys {sorted(unknown)}")
    try:
        profile = WorkloadProfile(
            name=str(data.get("name", path.stem)),
            per_day=per_day,
            edit_fraction=float(data.get("edit_fraction", 0.4)),
            delete_fraction=float(data.get("delete_fraction", 0.05)),
            photo_bytes=int(data.get("photo_bytes", 150_000)),
            reboots_per_day=float(data.get("reboots_per_day", 0.2)),
            sync_delay=_seconds(data, "sync_delay", 60.0),
            sync_interval=_seconds(data, "sync_interval", 3600.0),
            description=str(data.get("description", "")),
            initial=initial,
        )
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    _check_workload(profile, path)
    return profile


_WORKLOAD_KEYS = {"name", "description", "per_day", "edit_fraction", "delete_fraction", "photo_bytes",
                  "reboots_per_day", "sync_delay", "sync_interval", "initial"}


def _check_workload(w: WorkloadProfile, path: Path) -> None:
    if not (0 <= w.edit_fraction <= 1 and 0 <= w.delete_fraction <= 1
            and w.edit_fraction + w.delete_fraction <= 1):
        raise ProfileError(f"{path}: edit_fraction and delete_fraction must be in 0..1 and sum to at most 1")
    if not 1 <= w.photo_bytes <= 16 * 1024 * 1024:
        raise ProfileError(f"{path}: photo_bytes must be in 1..16777216")
    if w.reboots_per_day < 0:
        raise ProfileError(f"{path}: reboots_per_day must be >= 0")
    if w.sync_delay < 0 or w.sync_interval <= 0:
        raise ProfileError(f"{path}: sync_delay must be >= 0 and sync_interval > 0")
    if sum(w.per_day.values()) > 100_000:
        raise ProfileError(f"{path}: more than 100000 changes per day per handset")


@dataclass(frozen=True, slots=True)
class NetworkMix:
    """Which network profiles a fleet uses and in which shares (shares sum to 1)."""

    profiles: dict[str, NetworkProfile]
    shares: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> NetworkMix:
        """A profile name, ``mixed`` (the default mix), ``gprs=0.5,edge=0.5``, or a TOML file."""
        if spec == "mixed":
            return cls(dict(NETWORKS), dict(DEFAULT_MIX))
        if spec in NETWORKS:
            return cls({spec: NETWORKS[spec]}, {spec: 1.0})
        if spec.endswith(".toml"):
            return cls._from_file(Path(spec))
        shares: dict[str, float] = {}
        for part in spec.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in NETWORKS:
                raise ProfileError(
                    f"bad network {spec!r}: use mixed, one of {', '.join(NETWORKS)}, "
                    "name=share,... or a .toml file"
                )
            try:
                shares[name] = float(value)
            except ValueError:
                raise ProfileError(f"bad share {value!r} for {name}") from None
        return cls({n: NETWORKS[n] for n in shares}, _normalised(shares, spec))

    @classmethod
    def _from_file(cls, path: Path) -> NetworkMix:
        data = _load_toml(path)
        profiles = dict(NETWORKS)
        names = {f.name for f in fields(NetworkProfile)}
        for name, table in data.get("profile", {}).items():
            if not isinstance(table, dict):
                raise ProfileError(f"{path}: [profile.{name}] must be a table")
            unknown = set(table) - names
            if unknown:
                raise ProfileError(f"{path}: profile.{name}: unknown keys {sorted(unknown)}")
            try:
                profiles[name] = NetworkProfile(name=name, **{k: v for k, v in table.items() if k != "name"})
            except TypeError as exc:
                raise ProfileError(f"{path}: profile.{name}: {exc}") from None
        mix = data.get("mix")
        if not isinstance(mix, dict) or not mix:
            raise ProfileError(f"{path}: a [mix] table of profile = share is required")
        for name in mix:
            if name not in profiles:
                raise ProfileError(f"{path}: mix names unknown profile {name!r}")
        try:
            shares = {str(k): float(v) for k, v in mix.items()}
        except (TypeError, ValueError):
            raise ProfileError(f"{path}: [mix] shares must be numbers") from None
        return cls({n: profiles[n] for n in shares}, _normalised(shares, str(path)))

    def assign(self, index: int, count: int) -> NetworkProfile:
        """The profile of device ``index`` of ``count``: deterministic, in proportion to the shares."""
        position = (index + 0.5) / count
        cumulative = 0.0
        last = next(reversed(self.shares))
        for name, share in self.shares.items():
            cumulative += share
            if position < cumulative:
                return self.profiles[name]
        return self.profiles[last]


def _normalised(shares: dict[str, float], spec: str) -> dict[str, float]:
    total = sum(shares.values())
    if total <= 0 or any(v < 0 for v in shares.values()):
        raise ProfileError(f"bad network shares in {spec!r}: they must be >= 0 and not all 0")
    return {name: value / total for name, value in shares.items()}
