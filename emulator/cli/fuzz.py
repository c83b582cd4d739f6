"""``sidekick fuzz``: the durability fuzz campaign; ``sidekick replay TRACE``: one failure, told.

``fuzz`` runs seeded simulations (handsets, the embedded reference server, a faulty network) until
the budget is spent or an invariant breaks. Exit 0: no violation; 1: a violation (its trace and a
shrunk reproduction are in --out); 2: usage or internal error. ``replay`` runs a trace again and
prints its story: exit 1 if the violation reproduces, 0 if not, 2 if the file is not a trace
(with ``--pcap OUT``, 0 once the capture is written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from sidekick_testbed.emulator.cli.common import (
    CliError,
    parse_hostport,
    parse_jobs,
    require_reachable,
    require_writable,
)
from sidekick_testbed.emulator.executor import ExecutorError, open_executor
from sidekick_testbed.emulator.mutants import DEVICE_MUTANTS
from sidekick_testbed.emulator.sim.nemesis import FAULT_KINDS, parse_faults
from sidekick_testbed.emulator.sim.options import ALL_MUTANTS, SimOptions
from sidekick_testbed.emulator.sim.runner import (
    Budget,
    Campaign,
    CampaignResult,
    RunSummary,
    parse_budget,
    run_campaign,
)
from sidekick_testbed.emulator.sim.story import tell
from sidekick_testbed.emulator.sim.trace import Replay, TraceError, load_trace, replay

__all__ = ["register"]


def _shard(text: str) -> tuple[int, int]:
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shard {text!r}: expected K/N, e.g. 2/8") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"bad shard {text!r}: need 1 <= K <= N")
    return k, n


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _jobs(text: str) -> int:
    try:
        return parse_jobs(text)
    except CliError as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--jobs ")) from None


def _budget(text: str) -> Budget:
    try:
        return parse_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    """Add ``fuzz`` and ``replay``."""
    fuzz = subparsers.add_parser("fuzz", help="fuzz sync sessions under faults; check durability invariants",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fuzz.add_argument("--budget", type=_budget, default=Budget(seconds=60.0), metavar="B",
                      help="wall time (60s, 5m) or number of runs (200-runs); default 60s")
    fuzz.add_argument("--seed", type=int, default=None, metavar="S",
                      help="first seed (default: a random one, printed)")
    fuzz.add_argument("--shard", type=_shard, default=(1, 1), metavar="K/N",
                      help="run only shard K of N of the seed space (CI jobs never overlap)")
    fuzz.add_argument("--mutant", metavar="NAME", help="switch on one planted bug (see --list-mutants)")
    fuzz.add_argument("--faults", default="all", metavar="LIST",
                      help="fault kinds the swarm may pick, comma separated, or all/none "
                           f"({', '.join(FAULT_KINDS)})")
    fuzz.add_argument("--devices", type=_positive, default=2, metavar="N", help="handsets per account (default 2)")
    fuzz.add_argument("--accounts", type=_positive, default=2, metavar="N", help="accounts (default 2)")
    fuzz.add_argument("--steps", type=_positive, default=40, metavar="N",
                      help="steps of the fault phase per run (default 40)")
    fuzz.add_argument("--backend", choices=("sim", "sqlite", "mixed"), default="mixed",
                      help="the server's storage: simulated, a SQLite file, or mixed (SQLite for a "
                           "quarter of the seeds; default)")
    fuzz.add_argument("--binding", choices=("raw", "http", "mixed"), default="mixed",
                      help="how handsets reach the server (default: mixed)")
    fuzz.add_argument("--out", default="sidekick-out", metavar="DIR",
                      help="where failing traces go (default ./sidekick-out)")
    fuzz.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    fuzz.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    fuzz.add_argument("--jobs", type=_jobs, default=1, metavar="N|auto",
                      help="worker processes, or auto (one per usable core) (default 1)")
    fuzz.add_argument("--cluster", metavar="ADDRESS|FILE",
                      help="run the seeds on a Dask cluster: its scheduler's address (tcp://host:port) or "
                           "scheduler file; traces are written here (docs/FUZZING.md)")
    fuzz.add_argument("--no-shrink", action="store_true", help="write the failing trace only")
    fuzz.add_argument("--list-mutants", action="store_true", help="list the planted bugs and exit")
    fuzz.add_argument("--server", metavar="HOST:PORT",
                      help="black-box mode: seeded handsets against a running server over real sockets "
                           "(with --account and --key-file; --binding http for its HTTP address)")
    fuzz.add_argument("--account", metavar="ID", help="account for --server")
    fuzz.add_argument("--key-file", metavar="F", help="the account's key as hex, for --server")
    fuzz.add_argument("--restart-cmd", metavar="CMD",
                      help="--server: kill the server hard and start it again (run the moment a DURABLE arrives)")
    fuzz.add_argument("--power-cut-cmd", metavar="CMD",
                      help="--server: cut the server's power (unsynced writes lost), e.g. `sidekick powercut cut`")
    fuzz.add_argument("--restore-cmd", metavar="CMD",
                      help="--server: restore the server from a backup taken before the run (once per campaign)")
    fuzz.add_argument("--replay", metavar="TRACE",
                      help="--server: run the seed, options and budget of a black-box trace again (new ids)")
    fuzz.set_defaults(func=run_fuzz)

    rep = subparsers.add_parser("replay", help="replay a fuzz trace exactly and tell its story",
                                description="Run a trace written by `sidekick fuzz` again and print what happened. "
                                "Exit 1 if the violation reproduces, 0 if not, 2 if the file is not a trace; with --pcap, 0 once "
                                "the capture is written.")
    rep.add_argument("trace", metavar="TRACE", help="a trace file from `sidekick fuzz --out`")
    rep.add_argument("--json", action="store_true", help="print a JSON summary instead of the story")
    rep.add_argument("--tail", type=_positive, default=None, metavar="N",
                     help="tell only the last N events")
    rep.add_argument("--pcap", metavar="OUT", help="also write the run's sessions and events as a pcapng "
                     "capture for Wireshark (docs/WIRESHARK.md); exit 0 once it is written")
    rep.set_defaults(func=run_replay)


def _list_mutants() -> int:
    width = max(len(name) for name in ALL_MUTANTS)
    for name, text in ALL_MUTANTS.items():
        side = "device" if name in DEVICE_MUTANTS else "server"
        print(f"{name:<{width}}  {side:<6}  {text}")
    return 0


def _options(args: argparse.Namespace) -> SimOptions:
    if args.mutant is not None and args.mutant not in ALL_MUTANTS:
        raise CliError(f"unknown mutant {args.mutant!r} (sidekick fuzz --list-mutants)")
    try:
        faults = parse_faults(args.faults)
        return SimOptions(accounts=args.accounts, devices=args.devices, steps=args.steps, faults=faults,
                          mutant=args.mutant, binding=args.binding, backend=args.backend)
    except ValueError as exc:
        raise CliError(str(exc)) from None


class _Progress:
    """tqdm bar on stderr: runs, seeds/s, simulated time, faults injected, failures."""

    def __init__(self, budget: Budget) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]

        total = budget.runs if budget.runs is not None else None
        self.bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True, leave=True,
                        desc="fuzz", disable=None)

    def __call__(self, summary: RunSummary, result: CampaignResult) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(f"seed {summary.seed} sim {result.sim_time:,.0f}s faults {result.faults} "
                                 f"sessions {result.sessions} failures {len(result.failures) + summary.failed}",
                                 refresh=False)

    def close(self) -> None:
        self.bar.close()


def _run_blackbox(args: argparse.Namespace) -> int:
    """``--server``: seeded scripted handsets against a running server over real sockets."""
    import trio

    from sidekick_testbed.emulator.certify.blackbox import blackbox_fuzz, load_trace, write_trace
    from sidekick_testbed.emulator.certify.target import Account
    from sidekick_testbed.emulator.cli.certify import read_key

    host, port = parse_hostport(args.server)
    if not args.account or not args.key_file:
        raise CliError("--server needs --account ID and --key-file F (the account's key as hex)")
    options = {"binding": "http" if args.binding == "http" else "tcp", "budget_s": args.budget.seconds,
               "restart_cmd": args.restart_cmd, "power_cut_cmd": args.power_cut_cmd,
               "restore_cmd": args.restore_cmd}
    seed = args.seed
    if args.replay:
        try:
            header = load_trace(Path(args.replay))
        except ValueError as exc:
            raise CliError(str(exc)) from None
        seed, options = int(header["seed"]), {**options, **header["options"]}
        print(f"sidekick fuzz: replaying {args.replay}: seed {seed}, {len(header['violations'])} violation(s) "
              "recorded", file=sys.stderr)
    elif args.budget.seconds is None:
        raise CliError("--server takes a wall-time budget (e.g. --budget 60s), not a number of runs")
    account = Account(args.account, read_key(args.key_file))
    out = Path(args.out)
    require_writable(out, "--out", directory=True)
    require_reachable(host, port)
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    http = options["binding"] == "http"
    print(f"sidekick fuzz: black-box against {host}:{port} ({options['binding']}), seed {seed}, budget "
          f"{options['budget_s']:g}s", file=sys.stderr)
    report = trio.run(lambda: blackbox_fuzz(host, port, seed=seed, budget_s=float(options["budget_s"]), http=http,
                                            account=account, restart_cmd=options["restart_cmd"],
                                            power_cut_cmd=options["power_cut_cmd"],
                                            restore_cmd=options["restore_cmd"]))
    trace_path = out / f"blackbox-seed-{seed}.jsonl"
    write_trace(trace_path, report, options)
    print(report.summary())
    print(f"trace of every frame sent and received: {trace_path} (replay: sidekick fuzz --server {args.server} "
          f"--account {args.account} --key-file {args.key_file} --replay {trace_path})", file=sys.stderr)
    if args.json:
        print(json.dumps({"result": "ok" if report.ok else "violation", "seed": seed,
                          "sessions": report.sessions, "violations": report.violations,
                          "first_violation_s": report.first_violation_s, "trace": str(trace_path)}, indent=2))
    return 0 if report.ok else 1


def run_fuzz(args: argparse.Namespace) -> int:
    """The campaign."""
    if args.list_mutants:
        return _list_mutants()
    if args.server is not None:
        if args.cluster is not None:
            raise CliError("--cluster runs the simulated campaign; it does not go with --server")
        return _run_blackbox(args)
    options = _options(args)
    start = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    out = Path(args.out)
    require_writable(out, "--out", directory=True)  # a violation's trace must not be lost at the end
    if args.junit:
        require_writable(Path(args.junit), "--junit", directory=False)
    try:
        executor = open_executor(args.jobs, args.cluster)
    except ExecutorError as exc:
        raise CliError(str(exc)) from None
    with executor:
        campaign = Campaign(options, args.budget, start=start, shard=args.shard, jobs=executor.slots, out=out,
                            shrink_runs=0 if args.no_shrink else 120)
        print(f"sidekick fuzz: seeds from {start}, shard {args.shard[0]}/{args.shard[1]}, budget {args.budget}, "
              f"mutant {args.mutant or 'none'}, {executor.slots} job(s) on {executor.where}", file=sys.stderr)
        progress = _Progress(args.budget)
        try:
            result = run_campaign(campaign, progress, executor)
        except ExecutorError as exc:  # a run failed, a worker died, the cluster went away
            raise CliError(str(exc)) from None
        finally:
            progress.close()
    summary = _summary(args, start, result, executor.slots)
    if args.junit:
        _write_junit(Path(args.junit), summary, result)
    if args.json:
        print(json.dumps(summary, indent=2))
    for failure in result.failures:
        print(f"VIOLATION seed {failure.seed}: {failure.invariant} ({failure.what}): {failure.text}", file=sys.stderr)
        print(f"  trace:  {failure.trace}", file=sys.stderr)
        if failure.shrunk:
            print(f"  shrunk: {failure.shrunk} ({failure.shrunk_steps} steps)", file=sys.stderr)
        print(f"  replay: sidekick replay {failure.shrunk or failure.trace}", file=sys.stderr)
    if not result.failures:
        ended = "interrupted after " if result.interrupted else ""
        print(f"sidekick fuzz: {ended}{result.runs} run(s), {result.sessions} sync sessions, "
              f"{result.sim_time:,.0f} simulated s, {result.faults} faults: no violation"
              f"{' so far' if result.interrupted else ''}", file=sys.stderr)
    if result.failures:
        return 1
    return 130 if result.interrupted else 0


def _summary(args: argparse.Namespace, start: int, result: CampaignResult, jobs: int) -> dict[str, Any]:
    wall = max(result.wall, 1e-9)
    return {
        "result": "violation" if result.failures else "interrupted" if result.interrupted else "clean",
        "seed_start": start,
        "shard": f"{args.shard[0]}/{args.shard[1]}",
        "jobs": jobs,
        "budget": str(args.budget),
        "mutant": args.mutant,
        "runs": result.runs,
        "sessions": result.sessions,
        "sessions_per_second": round(result.sessions / wall, 1),
        "runs_per_second": round(result.runs / wall, 2),
        "simulated_seconds": round(result.sim_time, 1),
        "faults_injected": result.faults,
        "wall_seconds": round(result.wall, 2),
        "failures": [f.as_dict() for f in result.failures],
    }


def _write_junit(path: Path, summary: dict[str, Any], result: CampaignResult) -> None:
    cases = [f'  <testcase classname="sidekick.fuzz" name={quoteattr("campaign " + summary["shard"])} '
             f'time="{summary["wall_seconds"]}"/>']
    for failure in result.failures:
        cases.append(
            f'  <testcase classname="sidekick.fuzz" name={quoteattr(f"seed {failure.seed}")}>\n'
            f'    <failure message={quoteattr(failure.text)} type={quoteattr(failure.invariant)}>'
            f'{escape(f"trace: {failure.trace}; shrunk: {failure.shrunk}; replay with: sidekick replay {failure.trace}")}'
            f'</failure>\n  </testcase>')
    xml = (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="sidekick-fuzz" tests="{len(cases)}" '
           f'failures="{len(result.failures)}" time="{summary["wall_seconds"]}">\n' + "\n".join(cases)
           + "\n</testsuite>\n")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def _replay_to_pcap(trace: dict[str, Any], path: Path) -> Replay:
    from sidekick_testbed.emulator.sim.pcap import SimTap, write_capture

    require_writable(path, "--pcap", directory=False)
    tap = SimTap()
    result = replay(trace, tap=tap)
    try:
        capture = write_capture(path, result.new_trace, tap)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"capture: {path} ({capture.streams} TCP streams, {capture.packets} TCP packets, "
          f"{capture.events} events)", file=sys.stderr)
    return result


def run_replay(args: argparse.Namespace) -> int:
    """Replay one trace and tell it."""
    try:
        trace = load_trace(args.trace)
    except TraceError as exc:
        raise CliError(str(exc)) from None
    if args.pcap is None:
        result = replay(trace)
    else:
        result = _replay_to_pcap(trace, Path(args.pcap))
    if args.json:
        print(json.dumps({
            "reproduced": result.reproduced, "exact": result.exact,
            "first_difference": result.first_difference,
            "violation": result.new_trace["violation"],
        }, indent=2))
    else:
        sys.stdout.write(tell(result.new_trace, limit=args.tail))
        if result.exact:
            print("replayed exactly: every event as recorded")
        else:
            print(f"replay differs from the recording (first difference at event {result.first_difference}): "
                  "the code changed since the trace was written")
        print("violation reproduced" if result.reproduced else "violation did not reproduce")
    if args.pcap is not None:
        return 0  # exporting: the capture is written (the story says whether the violation reproduced)
    return 1 if result.reproduced else 0
