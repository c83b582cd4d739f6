"""Parse and format durations written as ``90s``, ``30m``, ``24h``, ``2d`` or ``1h30m``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


class DurationError(ValueError):
    """A duration string that does not parse."""


def parse_duration(text: str | int | float) -> float:
    """Return seconds for ``text``; a bare number is seconds."""
    if isinstance(text, int | float):
        if text < 0:
            raise DurationError(f"negative duration {text!r}")
        return float(text)
    cleaned = text.strip().lower().replace(" ", "")
    try:
        value = float(cleaned)
    except ValueError:
        pass
    else:
        if value < 0:
            raise DurationError(f"negative duration {text!r}")
        return value
    pos = 0
    total = 0.0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned:
        raise DurationError(f"bad duration {text!r}: use e.g. 90s, 30m, 24h, 2d, 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds compactly, e.g. ``1h30m``, ``45s``, ``250ms``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    out = []
    remaining = int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            out.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(out) or "0s"
