"""``sidekick wireshark``: where the shipped Wireshark dissector is, and installing it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.cli.common import CliError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``sidekick wireshark``."""
    parser = subparsers.add_parser(
        "wireshark", help="the Wireshark dissector for the protocol: its path, or install it",
        description="The package ships a Wireshark dissector (a Lua plugin) for the sync protocol and its "
        "HTTP binding. --install copies it into Wireshark's personal Lua plugins folder (the one tshark "
        "names in 'tshark -G folders'); --path prints where the shipped file is, for "
        "'tshark -X lua_script:PATH'. Captures come from replay/device sync/certify --pcap and serve --pcap.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--install", action="store_true", help="copy the dissector into the plugins folder")
    action.add_argument("--path", action="store_true", help="print the path of the shipped dissector")
    parser.add_argument("--dir", metavar="DIR", help="with --install: this folder instead of Wireshark's own")
    parser.set_defaults(func=_cmd_wireshark)


def _cmd_wireshark(args: argparse.Namespace) -> int:
    from sidekick_testbed.emulator.wireshark import dissector_path, install

    if args.path:
        if args.dir:
            raise CliError("--dir goes with --install")
        print(dissector_path())
        return 0
    try:
        target = install(Path(args.dir) if args.dir else None)
    except OSError as exc:
        raise CliError(f"cannot install the dissector: {exc.strerror or exc}") from None
    print(f"installed {target}; Wireshark loads it at its next start (tshark: at every run)")
    return 0
