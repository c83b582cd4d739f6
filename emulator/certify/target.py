"""The server under test: ``Target`` and its ``Account``s, and building them from user options.

``target_from_options`` is shared by every front end of the suite (the ``sidekick certify``
command, the pytest plugin): a mistake in the options raises ``TargetError``, whose message is one
line for the user; each front end reports it in its own way (a CLI usage error, a pytest usage error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Account", "Target", "TargetError", "parse_address", "read_key", "target_from_options"]


class TargetError(ValueError):
    """A mistake in the options describing the target; ``message`` is one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Account:
    """An account on the server under test and its key."""

    name: str
    key: bytes


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test and how the run may treat it."""

    host: str
    port: int
    http: bool = False
    accounts: tuple[Account, ...] = ()
    restart_cmd: str | None = None
    restore_cmd: str | None = None
    power_cut_cmd: str | None = None
    timeout: float = 5.0
    ready_timeout: float = 30.0
    http_path: str = "/sync"
    stalled_sessions: int = 24

    @property
    def address(self) -> str:
        """``host:port`` (with the binding)."""
        return f"{self.host}:{self.port}" + (" (HTTP)" if self.http else " (TCP)")


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``PORT``; TargetError on anything else."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = default_host, text
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise TargetError(f"bad address {text!r}: expected HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise TargetError(f"bad address {text!r}: port out of range")
    return host, port


def read_key(path: str) -> bytes:
    """The key in ``path``, written as hex; TargetError if unreadable or not hex."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TargetError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TargetError(f"key file {path} is not text; it must hold the key as hex") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise TargetError(f"key file {path} does not hold a hex key") from None
    if not key:
        raise TargetError(f"key file {path} is empty")
    return key


def target_from_options(address: str, *, http: bool = False, accounts: Sequence[str] = (),
                        key_files: Sequence[str] = (), restart_cmd: str | None = None,
                        restore_cmd: str | None = None, power_cut_cmd: str | None = None,
                        timeout: float = 5.0, ready_timeout: float = 30.0) -> Target:
    """The ``Target`` the options describe (one key file per account, in order); TargetError on a mistake."""
    host, port = parse_address(address)
    if port == 0:
        raise TargetError(f"bad address {address!r}: port 0")
    if len(accounts) != len(key_files):
        raise TargetError("give one --key-file for each --account, in the same order")
    if timeout <= 0 or ready_timeout <= 0:
        raise TargetError("--timeout and --ready-timeout must be positive")
    chosen = tuple(Account(name, read_key(path)) for name, path in zip(accounts, key_files, strict=True))
    return Target(host, port, http=http, accounts=chosen, restart_cmd=restart_cmd, restore_cmd=restore_cmd,
                  power_cut_cmd=power_cut_cmd, timeout=timeout, ready_timeout=ready_timeout)
