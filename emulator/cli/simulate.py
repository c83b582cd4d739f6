"""``sidekick simulate``: a fleet of handsets over 2009-era radio links against the reference server.

Simulated time (a day passes in minutes of wall time), deterministic for a seed: the same seed
gives the same JSON, byte for byte. ``--report DIR`` writes a self-contained HTML page with plots;
``--compare A.json B.json --report DIR`` puts two runs side by side. docs/SIMULATE.md explains the
profiles, the scenario file format and every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.cli.common import CliError, parse_jobs, require_extra, require_writable
from sidekick_testbed.emulator.executor import ExecutorError, open_executor
from sidekick_testbed.emulator.fleet.durations import DurationError, format_duration, parse_duration
from sidekick_testbed.emulator.fleet.profiles import (
    NETWORKS,
    WORKLOADS,
    NetworkMix,
    ProfileError,
    load_workload,
)
from sidekick_testbed.emulator.fleet.scenario import EMPTY, builtin_scenarios, find_scenario, load_scenario

__all__ = ["register"]

_QUIET_LOGGERS = ("sidekick",)


def register(subparsers: Any) -> None:
    """Add ``sidekick simulate``."""
    sim = subparsers.add_parser(
        "simulate", help="simulate a fleet of handsets and write a report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("--devices", default="100", metavar="N", help="handsets (default 100)")
    sim.add_argument("--accounts", default=None, metavar="N",
                     help="user accounts; handsets are dealt to them in turn (default: one per handset)")
    sim.add_argument("--duration", default="24h", metavar="D", help="simulated time, e.g. 2h, 24h, 3d (default 24h)")
    sim.add_argument("--workload", default="typical", metavar="NAME|FILE",
                     help=f"user activity: {', '.join(WORKLOADS)} or a .toml file (default typical)")
    sim.add_argument("--network", default="mixed", metavar="NAME|FILE",
                     help=f"radio links: mixed, {', '.join(NETWORKS)}, name=share,... or a .toml file "
                          "(default mixed)")
    sim.add_argument("--server-events", default=None, metavar="NAME|FILE",
                     help=f"server events: a built-in scenario ({', '.join(builtin_scenarios())}; "
                          "see --list-scenarios) or a scenario .toml file")
    sim.add_argument("--list-scenarios", action="store_true", help="list the built-in scenarios and exit")
    sim.add_argument("--handset", default="correct", metavar="correct|2009",
                     help="handset behaviour: correct, or 2009 (restores from the server on reboot)")
    sim.add_argument("--seed", default="1", metavar="S", help="root seed (default 1)")
    sim.add_argument("--jobs", default=None, metavar="N|auto",
                     help="shards of accounts, each in a worker process, or auto (one per usable core, "
                          "at most one per account); the report is the same for any N (default 1; "
                          "with --cluster, one per worker thread of the cluster)")
    sim.add_argument("--cluster", default=None, metavar="ADDRESS|FILE",
                     help="run the shards on a Dask cluster: its scheduler's address (tcp://host:port) "
                          "or scheduler file (docs/SIMULATE.md)")
    sim.add_argument("--expect-loss", action="store_true",
                     help="the run is expected to lose records (the 2009 handset): exit 0 if it does, "
                          "1 if it loses none")
    sim.add_argument("--report", default=None, metavar="DIR", help="write report.html (and report.json) here")
    sim.add_argument("--json", default=None, metavar="FILE", help="write the JSON figures to FILE ('-' = stdout)")
    sim.add_argument("--compare", nargs=2, default=None, metavar=("A.json", "B.json"),
                     help="render two earlier runs side by side into --report DIR (no simulation)")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sim.set_defaults(func=_cmd_simulate)


def _int(text: str, name: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"--{name} must be a whole number, not {text!r}") from None
    if value < low:
        raise CliError(f"--{name} must be at least {low}")
    return value


HANDSET_BYTES_AT_LEAST = 32 * 1024
"""Memory a simulated handset takes at the least (about 40 KiB measured for 10 minutes of the light
workload; 150 KiB for 24 hours of the typical one: docs/SIMULATE.md)."""


def physical_memory() -> int | None:
    """Bytes of memory this machine has, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(devices: int) -> None:
    """CliError if the handsets could not fit in this machine's memory even at their smallest."""
    memory = physical_memory()
    need = devices * HANDSET_BYTES_AT_LEAST
    if memory is not None and need > memory:
        raise CliError(f"--devices {devices:,} needs at least {need / 2**30:,.1f} GiB of memory (about "
                       f"{HANDSET_BYTES_AT_LEAST // 1024} KiB a handset, shards included), more than this "
                       f"machine has ({memory / 2**30:,.1f} GiB): simulate fewer handsets")


def _list_scenarios() -> int:
    for name, source in builtin_scenarios().items():
        scenario = load_scenario(source)
        print(f"{name:<18} {scenario.name}")
        print(f"{'':<18} {'; '.join(event.describe() for event in scenario.events)}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.list_scenarios:
        return _list_scenarios()
    if args.compare:
        return _compare(args)
    from sidekick_testbed.emulator.fleet.config import FleetConfig
    from sidekick_testbed.emulator.fleet.engine import run_fleet

    devices = _int(args.devices, "devices", 1)
    if args.cluster is None:  # a cluster's workers hold the handsets, not this machine
        _check_memory(devices)
    accounts = _int(args.accounts, "accounts", 1) if args.accounts is not None else None
    if accounts is not None and accounts > devices:
        raise CliError(f"--accounts ({accounts}) cannot exceed --devices ({devices})")
    seed = _int(args.seed, "seed", 0)
    shards_possible = accounts if accounts is not None else devices
    jobs = parse_jobs(args.jobs or "1")
    if args.jobs == "auto":
        jobs = min(jobs, shards_possible)
    if args.jobs is not None and jobs > shards_possible:
        raise CliError(f"--jobs ({jobs}) cannot exceed the number of accounts "
                       f"({shards_possible}): a shard is a set of accounts")
    if args.handset not in ("correct", "2009"):
        raise CliError(f"--handset must be correct or 2009, not {args.handset!r}")
    try:
        duration = parse_duration(args.duration)
        if duration <= 0:
            raise CliError("--duration must be positive")
        workload = load_workload(args.workload)
        network = NetworkMix.parse(args.network)
        scenario = find_scenario(args.server_events) if args.server_events else EMPTY
    except (ProfileError, DurationError) as exc:
        raise CliError(str(exc)) from None
    late = [e for e in scenario.events if e.at > duration]
    if late:
        print(f"sidekick: note: {len(late)} server event(s) after the run's end are ignored", file=sys.stderr)
    try:
        config = FleetConfig(
            devices=devices, accounts=accounts, duration=duration, workload=workload, network=network,
            scenario=scenario, handset=args.handset, seed=seed,
            labels={"workload": args.workload, "network": args.network,
                    "scenario": args.server_events or "none"},
        )
    except ValueError as exc:  # what the checks above cannot see, e.g. a flash too large to model
        raise CliError(str(exc)) from None
    json_path = Path(args.json) if args.json and args.json != "-" else None
    if json_path is not None:  # checked now: a long run must not end unable to write its results
        require_writable(json_path, "--json", directory=False)
    if args.report:
        require_extra("matplotlib", "report", "--report")
        require_writable(Path(args.report), "--report", directory=True)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    started = time.perf_counter()
    try:
        executor = open_executor(jobs, args.cluster)
    except ExecutorError as exc:
        raise CliError(str(exc)) from None
    with executor:
        if args.cluster is not None and args.jobs is None:
            jobs = min(executor.slots, shards_possible)
        bar = None if args.no_progress else _progress_bar(duration)
        try:
            run = run_fleet(config, progress=bar.update if bar else None, jobs=jobs, executor=executor)
        except ExecutorError as exc:  # a shard failed, its worker died, the cluster went away
            raise CliError(str(exc)) from None
        finally:
            if bar is not None:
                bar.close()
    wall = time.perf_counter() - started
    report = run.report
    text = json.dumps(report, indent=1, sort_keys=True) + "\n"
    try:
        if args.json == "-":
            sys.stdout.write(text)
        elif json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(text, encoding="utf-8")
        page = None
        if args.report:
            from sidekick_testbed.emulator.fleet.report import write_report

            page = write_report(Path(args.report), [(_label(report), report)])
    except OSError as exc:
        raise CliError(f"cannot write the report: {exc.strerror or exc}") from None
    if args.json != "-":
        _print_summary(report, page, json_path)
    print(f"sidekick: simulated {format_duration(duration)} of {devices} handsets in {wall:.1f} s of wall time "
          f"({duration * devices / max(wall, 1e-9):,.0f} device-seconds per second) [{executor.where}]",
          file=sys.stderr)
    lost = report["totals"]["data_loss_records"] > 0
    if args.expect_loss and not lost:
        print("sidekick: --expect-loss: the run lost no records", file=sys.stderr)
    return 0 if lost == args.expect_loss else 1


class _progress_bar:  # noqa: N801 - used like a function
    """Progress on stderr: on a terminal, a tqdm bar of the simulated hours covered with the
    current figures; elsewhere (a log file, CI), a plain line at every tenth of the run."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.done = 0.0
        self.bar: Any = None
        self.next_line = 0.1
        if sys.stderr.isatty():
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=round(duration / 3600, 3), unit="h", desc="simulated", file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} h "
                                       "[{elapsed}<{remaining}{postfix}]")

    def update(self, now: float, figures: dict[str, Any]) -> None:
        hours = round(now / 3600, 3)
        if self.bar is not None:
            self.bar.set_postfix(figures, refresh=False)
            self.bar.update(hours - self.done)
        elif now >= self.next_line * self.duration - 1e-9:
            shown = ", ".join(f"{name} {value:,}" for name, value in figures.items())
            print(f"simulated {hours:.1f}/{self.duration / 3600:.1f} h: {shown}", file=sys.stderr, flush=True)
            while self.next_line * self.duration <= now + 1e-9:
                self.next_line += 0.1
        self.done = hours

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _label(report: dict[str, Any]) -> str:
    config = report.get("config", {})
    return f"{config.get('handset', '?')} handset"


def _print_summary(report: dict[str, Any], page: Path | None, json_path: Path | None) -> None:
    totals = report["totals"]
    lost = totals["data_loss_records"]
    if lost:
        print(f"DATA LOSS: {lost} records of {totals['data_loss_users']} users are on neither the server "
              "nor any of their handsets")
    else:
        print(f"no data lost: {totals['user_versions']} record versions written, all on the server or a handset")
    print(f"syncs: {totals['syncs']} ({totals['syncs_failed']} failed), retries {totals['retries']}, "
          f"conflicts {totals['conflicts']}, regressions detected {totals['regressions_detected']}")
    oldest = totals["oldest_at_risk_max_s"]
    print(f"records at risk: peak {totals['records_at_risk_max']}, oldest "
          f"{format_duration(oldest) if oldest else 'none'}; handsets out of date: peak "
          f"{totals['devices_out_of_date_max']}")
    for net, figures in report["sync_by_network"].items():
        print(f"  {net:<7} {figures['devices']:>6} handsets  p50 {figures['p50']:7.2f} s  "
              f"p95 {figures['p95']:7.2f} s  p99 {figures['p99']:7.2f} s  "
              f"{figures['bytes_per_device_per_day'] / 1024:8.1f} KiB/handset/day")
    if json_path is not None:
        print(f"JSON: {json_path}")
    if page is not None:
        print(f"report: {page}")


def _load_run(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"{path}: not a JSON report of sidekick simulate ({exc})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("totals", "timeline", "sync_by_network")):
        raise CliError(f"{path}: not a JSON report of sidekick simulate")
    return data


def _compare(args: argparse.Namespace) -> int:
    if not args.report:
        raise CliError("--compare needs --report DIR")
    require_extra("matplotlib", "report", "--compare")
    from sidekick_testbed.emulator.fleet.report import write_report

    runs = [_load_run(path) for path in args.compare]
    labels = [_label(run) for run in runs]
    if labels[0] == labels[1]:
        labels = [Path(path).stem for path in args.compare]
    if labels[0] == labels[1]:
        labels = [f"A: {labels[0]}", f"B: {labels[1]}"]
    try:
        page = write_report(Path(args.report), list(zip(labels, runs, strict=True)), name="compare.html")
    except OSError as exc:
        raise CliError(f"cannot write the report: {exc.strerror or exc}") from None
    print(f"report: {page}")
    return 0
