"""``sidekick powercut``: run a server under a tracer and cut its power at its last DURABLE.

``start`` runs the server command under strace (its data directory is copied first, as the disk's
state at power-on); ``cut`` kills it, rebuilds the data directory as a power cut at the moment it
sent its last DURABLE would leave it (writes not synced are lost) and starts it again. A
``--power-cut-cmd`` for ``sidekick certify`` and ``sidekick fuzz --server`` (docs/CERTIFY.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.certify.powercut import MODELS, PowerCutError, cut, start, stop
from sidekick_testbed.emulator.cli.common import CliError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``powercut start``, ``powercut cut`` and ``powercut stop``."""
    parser = subparsers.add_parser("powercut", help="run a server under a tracer; cut its power at its last DURABLE",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="powercut_command", metavar="ACTION")
    begin = sub.add_parser("start", help="start the server under strace (in the background)")
    begin.add_argument("--state", required=True, metavar="DIR", help="where the trace, the base copy and the pid go")
    begin.add_argument("--data", metavar="DIR", help="the server's data directory (first start)")
    begin.add_argument("--model", choices=MODELS, default=None,
                       help="power: unsynced writes are lost (default); crash: a kill at the DURABLE (page cache kept)")
    begin.add_argument("--log", metavar="FILE", help="the server's output (default STATE/server.log)")
    begin.add_argument("server", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                       help="the server command (first start; later starts reuse it)")
    begin.set_defaults(func=cmd_start)
    now = sub.add_parser("cut", help="kill the server, rebuild its data as the power cut leaves it, start it again")
    now.add_argument("--state", required=True, metavar="DIR")
    now.add_argument("--model", choices=MODELS, default=None, help="override the model of the start")
    now.add_argument("--no-restart", action="store_true", help="leave the server stopped")
    now.set_defaults(func=cmd_cut)
    end = sub.add_parser("stop", help="kill the traced server (nothing is rebuilt)")
    end.add_argument("--state", required=True, metavar="DIR")
    end.set_defaults(func=cmd_stop)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def cmd_start(args: argparse.Namespace) -> int:
    """Start the server under the tracer."""
    command = list(args.server[1:] if args.server[:1] == ["--"] else args.server) or None
    if command is None and not (Path(args.state) / "config.json").exists():
        raise CliError("the first start needs the server command after --")
    try:
        pid = start(Path(args.state), data=Path(args.data) if args.data else None, command=command,
                    model=args.model, log=Path(args.log) if args.log else None)
    except PowerCutError as exc:
        raise CliError(str(exc)) from None
    print(f"sidekick powercut: server traced (strace pid {pid}); state in {args.state}")
    return 0


def cmd_cut(args: argparse.Namespace) -> int:
    """Cut, rebuild, and start again."""
    state = Path(args.state)
    try:
        report = cut(state, model=args.model)
        print(f"sidekick powercut: {report.text()}")
        if not args.no_restart:
            start(state)
    except PowerCutError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Kill the traced server."""
    stop(Path(args.state))
    return 0
