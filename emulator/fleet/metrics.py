"""Fleet figures: per-sync records, timeline samples, data-loss events, and the JSON summary."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _r(value: float) -> float:
    """Round for the JSON report so that output is stable and readable."""
    return round(value, 6)


@dataclass(slots=True)
class SyncRecord:
    """One sync attempt as the fleet saw it."""

    at: float
    device: int
    network: str
    latency: float
    ok: bool
    bytes_up: int
    bytes_down: int
    frames: int
    conflicts: int
    attempts: int


@dataclass(slots=True)
class Sample:
    """The fleet at one instant of simulated time."""

    at: float
    at_risk: int
    oldest_at_risk: float
    devices_out_of_date: int
    server_up: bool
    lost_so_far: int


@dataclass(slots=True)
class LossEvent:
    """A record version a user created that is gone from the device and the server."""

    at: float
    account: str
    device: int
    record_id: str
    kind: str
    created: float = 0.0


@dataclass(slots=True)
class FleetMetrics:
    """Collects everything a fleet run measures; ``summary()`` is the JSON report."""

    duration: float
    syncs: list[SyncRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    losses: list[LossEvent] = field(default_factory=list)
    regressions: int = 0
    user_changes: int = 0
    reboots: int = 0
    server_events: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, *, devices: int, networks: dict[int, str]) -> dict[str, Any]:
        """Every figure of the run as plain JSON data (deterministic for a seed)."""
        days = max(self.duration / 86400, 1e-9)
        by_net: dict[str, list[SyncRecord]] = defaultdict(list)
        for s in self.syncs:
            by_net[s.network].append(s)
        devices_by_net: dict[str, int] = defaultdict(int)
        for net in networks.values():
            devices_by_net[net] += 1
        latency = {}
        for net in sorted(by_net):
            ok = [s.latency for s in by_net[net] if s.ok]
            total_bytes = sum(s.bytes_up + s.bytes_down for s in by_net[net])
            latency[net] = {
                "devices": devices_by_net[net],
                "syncs": len(by_net[net]),
                "failed": sum(1 for s in by_net[net] if not s.ok),
                "p50": _r(percentile(ok, 50)),
                "p95": _r(percentile(ok, 95)),
                "p99": _r(percentile(ok, 99)),
                "bytes_per_device_per_day": _r(total_bytes / max(devices_by_net[net], 1) / days),
            }
        frames = [float(s.frames) for s in self.syncs if s.ok]
        lost_accounts = sorted({loss.account for loss in self.losses})
        at_risk = [s.at_risk for s in self.samples]
        return {
            "totals": {
                "devices": devices,
                "user_changes": self.user_changes,
                "syncs": len(self.syncs),
                "syncs_ok": sum(1 for s in self.syncs if s.ok),
                "syncs_failed": sum(1 for s in self.syncs if not s.ok),
                "retries": sum(max(s.attempts - 1, 0) for s in self.syncs),
                "conflicts": sum(s.conflicts for s in self.syncs),
                "reboots": self.reboots,
                "regressions_detected": self.regressions,
                "bytes_on_air": sum(s.bytes_up + s.bytes_down for s in self.syncs),
                "bytes_per_device_per_day": _r(
                    sum(s.bytes_up + s.bytes_down for s in self.syncs) / max(devices, 1) / days
                ),
                "frames_per_sync_p50": _r(percentile(frames, 50)),
                "frames_per_sync_p95": _r(percentile(frames, 95)),
                "records_at_risk_max": max(at_risk, default=0),
                "records_at_risk_mean": _r(sum(at_risk) / len(at_risk)) if at_risk else 0.0,
                "oldest_at_risk_max_s": _r(max((s.oldest_at_risk for s in self.samples), default=0.0)),
                "devices_out_of_date_max": max((s.devices_out_of_date for s in self.samples), default=0),
                "data_loss_records": len(self.losses),
                "data_loss_users": len(lost_accounts),
                "data_loss_devices": len({loss.device for loss in self.losses}),
            },
            "sync_by_network": latency,
            "timeline": [
                {
                    "t": _r(s.at),
                    "at_risk": s.at_risk,
                    "oldest_at_risk_s": _r(s.oldest_at_risk),
                    "devices_out_of_date": s.devices_out_of_date,
                    "server_up": s.server_up,
                    "lost": s.lost_so_far,
                }
                for s in self.samples
            ],
            "losses": [
                {"t": _r(x.at), "created": _r(x.created), "account": x.account, "device": x.device,
                 "record": x.record_id, "kind": x.kind}
                for x in self.losses
            ],
            "lost_users": lost_accounts,
            "server_events": self.server_events,
        }
