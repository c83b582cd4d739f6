"""The ``sidekick`` command: one argparse parser, one module per subcommand group.

argparse (standard library) is used rather than click or typer: no extra dependency, sub-commands
and typed options are all this tool needs, and usage errors already exit with status 2.
Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommands and
sets ``func`` (a callable taking the parsed namespace, returning the exit status). A module that fails
to import is an installation error (:class:`CommandModuleError`, exit status 2), never a command that
silently goes missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sidekick_testbed.emulator.cli.common import CliError

COMMAND_MODULES = (
    "sidekick_testbed.emulator.cli.frames",
    "sidekick_testbed.emulator.cli.flash",
    "sidekick_testbed.emulator.cli.serve",
    "sidekick_testbed.emulator.cli.device",
    "sidekick_testbed.emulator.cli.fuzz",
    "sidekick_testbed.emulator.cli.certify",
    "sidekick_testbed.emulator.cli.powercut",
    "sidekick_testbed.emulator.cli.simulate",
    "sidekick_testbed.emulator.cli.wireshark",
)


class CommandModuleError(Exception):
    """A subcommand's module could not be imported: the installation is broken."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"command module {module} failed to import: {type(cause).__name__}: {cause}")
        self.module = module


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``sidekick`` parser; :class:`CommandModuleError` if a command module is broken."""
    parser = argparse.ArgumentParser(
        prog="sidekick",
        description="Sidekick-class handset emulator, reference sync server and durability fuzzer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise CommandModuleError(name, exc) from exc
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sidekick`` console script."""
    try:
        parser = build_parser()
    except CommandModuleError as exc:
        if os.environ.get("SIDEKICK_DEBUG"):
            raise
        print(f"sidekick: error: {exc} (a broken installation; set SIDEKICK_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"sidekick: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        return 0
    except BaseExceptionGroup as group:  # from a nursery: Ctrl-C inside a Trio run arrives this way
        if group.subgroup(KeyboardInterrupt) is not None:
            return _interrupted()
        usage = group.subgroup(CliError)
        if usage is not None:
            error = _first_leaf(usage)
            assert isinstance(error, CliError)
            print(f"sidekick: error: {error.message}", file=sys.stderr)
            return error.exit_code
        if not isinstance(group, Exception) or os.environ.get("SIDEKICK_DEBUG"):
            raise
        return _internal_error(group)
    except Exception as exc:  # last line of defence: one line, traceback only on request
        if os.environ.get("SIDEKICK_DEBUG"):
            raise
        return _internal_error(exc)


def _interrupted() -> int:
    print("sidekick: interrupted", file=sys.stderr)
    return 130


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside nested exception groups (``exc`` itself if it is none)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _internal_error(exc: Exception) -> int:
    leaf = _first_leaf(exc)
    print(f"sidekick: internal error: {type(leaf).__name__}: {leaf} (set SIDEKICK_DEBUG=1 for a traceback)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
