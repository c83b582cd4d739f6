"""``sidekick certify HOST:PORT``: run the conformance and durability suite against a server."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

import trio

from sidekick_testbed.emulator.certify import all_checks
from sidekick_testbed.emulator.certify import target as certify_target
from sidekick_testbed.emulator.certify.coverage import coverage
from sidekick_testbed.emulator.certify.coverage import render_text as coverage_text
from sidekick_testbed.emulator.certify.framework import PROFILES, CheckResult, select
from sidekick_testbed.emulator.certify.report import (
    DISCLAIMER,
    render_html,
    render_json,
    render_junit,
    render_text,
)
from sidekick_testbed.emulator.certify.runner import RunResult, load_expected_failures, run_suite
from sidekick_testbed.emulator.certify.target import Target, TargetError
from sidekick_testbed.emulator.cli.common import (
    CliError,
    pcap_recording,
    require_reachable,
    require_writable,
)

__all__ = ["read_key", "register", "target_from_args"]


def register(subparsers: Any) -> None:
    """Add the ``certify`` subcommand."""
    parser = subparsers.add_parser(
        "certify", help="run the conformance and durability suite against a server",
        description="Run the conformance and durability suite against a sync server. " + DISCLAIMER,
    )
    parser.add_argument("address", metavar="HOST:PORT", help="the server's TCP (or, with --http, HTTP) address")
    parser.add_argument("--http", action="store_true", help="use the HTTP binding (POST /sync)")
    parser.add_argument("--account", action="append", default=[], metavar="ID",
                        help="account to test with (give twice, each with --key-file, for isolation checks)")
    parser.add_argument("--key-file", action="append", default=[], metavar="F",
                        help="file holding the account's key as hex (one per --account, in order)")
    parser.add_argument("--restart-cmd", metavar="CMD",
                        help="shell command that kills the server hard (kill -9) and starts it again")
    parser.add_argument("--power-cut-cmd", metavar="CMD",
                        help="shell command that cuts the server's power: it loses what it wrote but did not sync "
                             "(e.g. `sidekick powercut cut`), and starts it again")
    parser.add_argument("--restore-cmd", metavar="CMD",
                        help="shell command that restores the server's store from an earlier backup and restarts it")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only checks whose id, group or requirement id matches this glob (repeatable)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="all",
                        help="levels to run: must, should (MUST+SHOULD) or all (default)")
    parser.add_argument("--expected-failures", metavar="FILE",
                        help="baseline: check ids or requirement ids expected to fail, one per line")
    parser.add_argument("--strict", action="store_true", help="inconclusive checks fail the run")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--junit", metavar="FILE", help="write the results as JUnit XML")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    parser.add_argument("--pcap", metavar="OUT", help="write every connection of the run as a pcapng capture "
                        "for Wireshark, each check's verdict as an event (docs/WIRESHARK.md)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for any one answer (default 5)")
    parser.add_argument("--ready-timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for the server after a restart or restore command (default 30)")
    parser.add_argument("--seed", type=int, default=None, help="seed for ids and generated input (default: random)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines, no table, no evidence: failures, inconclusive checks and the verdict")
    parser.set_defaults(func=cmd_certify)


def read_key(path: str) -> bytes:
    """The key in ``path``, written as hex; CliError if unreadable or not hex."""
    try:
        return certify_target.read_key(path)
    except TargetError as exc:
        raise CliError(exc.message) from None


def target_from_args(args: argparse.Namespace) -> Target:
    """The ``Target`` the arguments describe; CliError on a usage mistake."""
    try:
        return certify_target.target_from_options(
            args.address, http=args.http, accounts=args.account, key_files=args.key_file,
            restart_cmd=args.restart_cmd, restore_cmd=args.restore_cmd, power_cut_cmd=args.power_cut_cmd,
            timeout=args.timeout, ready_timeout=args.ready_timeout)
    except TargetError as exc:
        raise CliError(exc.message) from None


def _write(path: str | None, text: str) -> None:
    if path:
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_certify(args: argparse.Namespace) -> int:
    """Run the suite; exit 0 when no MUST check failed, 1 when one did."""
    checks = select(all_checks().values(), only=args.only)
    if args.list:
        for c in checks:
            print(f"{c.name:<44} {c.level.value:<6} {c.group:<12} {c.title}")
        print(f"\nrequirements of docs/PROTOCOL.md and the checks that exercise them (all {len(all_checks())} checks):")
        print(coverage_text(coverage(all_checks().values())), end="")
        return 0
    if not checks:
        raise CliError(f"no check matches --only {' '.join(args.only)}")
    target = target_from_args(args)
    expected: frozenset[str] = frozenset()
    if args.expected_failures:
        try:
            expected = load_expected_failures(Path(args.expected_failures))
        except OSError as exc:
            raise CliError(f"cannot read {args.expected_failures}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CliError(f"cannot read {args.expected_failures}: not UTF-8 text") from None
    for flag, path in (("--json", args.json), ("--junit", args.junit), ("--html", args.html), ("--pcap", args.pcap)):
        if path:  # checked before the suite, which may take minutes
            require_writable(Path(path), flag, directory=False)
    require_reachable(target.host, target.port, target.timeout)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    if not args.quiet:
        print(f"certifying {target.address} with {len(checks)} checks (seed {seed})", flush=True)

    def progress(result: CheckResult) -> None:
        if recorder is not None:  # --pcap: each verdict as an event after the check's connections
            recorder.event(f"check {result.check.name}: {result.outcome.value}")
        if not args.quiet:
            print(f"  {result.outcome.value:<12} {result.check.name}", flush=True)

    with pcap_recording(args.pcap, client="certify", comment=f"sidekick certify {target.address} (seed {seed})") \
            as recorder:
        run: RunResult = trio.run(lambda: run_suite(target, checks, seed=seed, profile=args.profile,
                                                    strict=args.strict, expected=expected, on_result=progress))
    sys.stdout.write(render_text(run, evidence=not args.quiet, table=not args.quiet))
    _write(args.json, render_json(run))
    _write(args.junit, render_junit(run))
    _write(args.html, render_html(run))
    return run.exit_code()
