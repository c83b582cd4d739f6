"""A shard's figures (``FleetPart``) and the JSON report of a run, added up from its shards' parts
(``fleet_report``): the same report whatever the number of shards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidekick_testbed.emulator.fleet.config import PAGES_PER_BLOCK, FleetConfig
from sidekick_testbed.emulator.fleet.durations import format_duration
from sidekick_testbed.emulator.fleet.metrics import FleetMetrics, LossEvent, Sample, SyncRecord

__all__ = ["FleetPart", "fleet_report"]


@dataclass
class FleetPart:
    """The figures of one shard of a run (every account in a run of one process)."""

    syncs: list[SyncRecord]
    samples: list[Sample]
    losses: list[LossEvent]
    regressions: int
    user_changes: int
    reboots: int
    server_events: list[dict[str, Any]]
    store_full: int
    errors: dict[str, int]
    user_versions: int
    healed: int
    at_risk_end: int
    events_processed: int


def _merged_samples(parts: Sequence[FleetPart]) -> list[Sample]:
    """The fleet's timeline: every shard samples at the same instants; counts add up."""
    return [Sample(group[0].at, sum(s.at_risk for s in group), max(s.oldest_at_risk for s in group),
                   sum(s.devices_out_of_date for s in group), all(s.server_up for s in group),
                   sum(s.lost_so_far for s in group))
            for group in zip(*(part.samples for part in parts), strict=True)]


def fleet_report(config: FleetConfig, parts: Sequence[FleetPart]) -> dict[str, Any]:
    """The JSON report of a run from its shards' parts (one part when one process ran it all)."""
    metrics = FleetMetrics(duration=config.duration)
    for part in parts:
        metrics.syncs.extend(part.syncs)
        metrics.losses.extend(part.losses)
        metrics.regressions += part.regressions
        metrics.user_changes += part.user_changes
        metrics.reboots += part.reboots
    metrics.samples = _merged_samples(parts)
    metrics.losses.sort(key=lambda x: (x.at, x.account, x.device, x.record_id))
    metrics.server_events = parts[0].server_events  # the scenario's: the same in every shard
    errors: dict[str, int] = {}
    for part in parts:
        for text, count in part.errors.items():
            errors[text] = errors.get(text, 0) + count
    report = metrics.summary(devices=config.devices, networks={
        index: config.network.assign(index, config.devices).name for index in range(config.devices)})
    blocks = config.handset_blocks
    report["config"] = {
        "devices": config.devices,
        "accounts": config.account_count,
        "duration": format_duration(config.duration),
        "workload": config.labels.get("workload", config.workload.name),
        "network": config.labels.get("network", ", ".join(
            f"{name} {share:.0%}" for name, share in config.network.shares.items())),
        "server events": config.labels.get("scenario", config.scenario.name),
        "handset": config.handset,
        "seed": config.seed,
        "flash per handset": f"{blocks} blocks of {PAGES_PER_BLOCK} pages",
    }
    totals = report["totals"]
    totals["store_full"] = sum(part.store_full for part in parts)
    totals["handset_errors"] = sum(errors.values())
    report["handset_errors"] = dict(sorted(errors.items()))
    totals["user_versions"] = sum(part.user_versions for part in parts)
    totals["healed_handsets"] = sum(part.healed for part in parts)
    totals["records_at_risk_end"] = sum(part.at_risk_end for part in parts)
    return report
