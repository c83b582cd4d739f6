"""Helpers shared by the CLI modules."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidekick_testbed.emulator.capture.streams import ClientRecorder


class CliError(Exception):
    """A user-facing error: printed as one line, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``PORT``; raise CliError on anything else."""
    from sidekick_testbed.emulator.certify.target import TargetError, parse_address

    try:
        return parse_address(text, default_host)
    except TargetError as exc:
        raise CliError(exc.message) from None


def require_extra(module: str, extra: str, what: str) -> None:
    """CliError (one line: what to install) unless the optional dependency ``module`` is importable."""
    if importlib.util.find_spec(module) is None:
        raise CliError(f"{what} needs {module}, which is not installed: pip install 'sidekick-testbed[{extra}]'")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity where the platform says, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def parse_jobs(text: str) -> int:
    """``--jobs``: a whole number of at least 1, or ``auto`` (one per usable core)."""
    if text == "auto":
        return usable_cores()
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"--jobs must be a whole number or auto, not {text!r}") from None
    if value < 1:
        raise CliError("--jobs must be at least 1 (or auto)")
    return value


def require_reachable(host: str, port: int, timeout: float = 5.0) -> None:
    """CliError unless a TCP connection to ``host:port`` opens within ``timeout`` seconds (it is
    closed at once). For commands that test a running server: no server at the address is a
    usage mistake (exit 2), not a failed check or a violation."""
    import trio

    from sidekick_testbed.emulator.certify.client import ConnectFailed, open_stream

    async def probe() -> None:
        stream = await open_stream(host, port, timeout)
        await trio.aclose_forcefully(stream)

    try:
        trio.run(probe)
    except ConnectFailed as exc:
        raise CliError(f"{exc} (is the server running there?)") from None


def require_writable(path: Path, flag: str, *, directory: bool) -> None:
    """CliError unless ``path`` (a folder if ``directory``, else a file) can be written when the
    run ends: checked before a long run, so that its results are not lost at its end. Creates
    nothing: it writes and removes a probe file in the nearest folder that exists."""
    if path.exists():
        if directory != path.is_dir():
            raise CliError(f"{flag} {path}: " + ("exists and is not a directory" if directory else "is a directory"))
        folder = path if directory else path.parent
    else:
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise CliError(f"{flag} {path}: {folder} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CliError(f"{flag} {path}: cannot write in {folder}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def pcap_recording(path: str | None, *, client: str, comment: str) -> Iterator[ClientRecorder | None]:
    """With ``--pcap PATH``: the connections opened in the block are written to PATH as a pcapng
    capture (host ``client``, section comment ``comment``). Without: nothing is recorded."""
    if path is None:
        yield None
        return
    from sidekick_testbed.emulator.capture.streams import recording

    try:
        out = open(path, "wb")  # noqa: SIM115 - closed below, after the recording ends
    except OSError as exc:
        raise CliError(f"--pcap {path}: cannot write: {exc.strerror or exc}") from None
    with out, recording(out, client=client, comment=comment) as recorder:
        yield recorder
