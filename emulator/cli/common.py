"""Helpers shared by the CLI modules."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed as one line, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``PORT``; raise CliError on anything else."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = default_host, text
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise CliError(f"bad address {text!r}: expected HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise CliError(f"bad address {text!r}: port out of range")
    return host, port
