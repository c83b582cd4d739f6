"""Self-contained trace files: everything needed to replay a run exactly, and its timeline.

A trace is JSON: ``format``, ``version``, ``testbed`` (package version), ``seed``, ``options``
(the swarm made explicit), the ``violation`` (invariant, what, text, versions and devices
involved) or null, ``stats`` and ``events`` (one JSON object per line, in order). Replaying runs
the seed with the options again; the same code gives the same events, byte for byte.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.sim.network import ConnectionTap
from sidekick_testbed.emulator.sim.options import RunResult, SimOptions, with_swarm
from sidekick_testbed.emulator.sim.world import World

__all__ = [
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "Replay",
    "TraceError",
    "load_trace",
    "replay",
    "testbed_version",
    "to_trace",
    "trace_bytes",
    "write_trace",
]

TRACE_FORMAT = "sidekick-fuzz-trace"
TRACE_VERSION = 1
MAX_TRACE_BYTES = 512 * 1024 * 1024


class TraceError(ValueError):
    """The file is not a trace this version can replay."""


def testbed_version() -> str:
    """The installed package's version (``unknown`` when not installed)."""
    try:
        return metadata.version("sidekick-testbed")
    except metadata.PackageNotFoundError:
        return "unknown"


def to_trace(result: RunResult, *, note: str = "") -> dict[str, Any]:
    """The trace of a run (options carry the swarm, so the trace replays without the seed's draw)."""
    trace: dict[str, Any] = {
        "format": TRACE_FORMAT,
        "version": TRACE_VERSION,
        "testbed": testbed_version(),
        "seed": result.seed,
        "options": with_swarm(result).as_dict(),
        "violation": result.violation.as_dict() if result.violation else None,
        "stats": result.stats,
    }
    if note:
        trace["note"] = note
    trace["events"] = result.events
    return trace


def trace_bytes(trace: dict[str, Any]) -> bytes:
    """Canonical bytes of a trace: header fields, then one event per line."""
    head = {k: v for k, v in trace.items() if k != "events"}
    lines = [json.dumps(event, separators=(",", ":"), ensure_ascii=False) for event in trace.get("events", [])]
    text = json.dumps(head, indent=1, ensure_ascii=False)
    body = ",\n".join(lines)
    return (text[:-2] + ',\n "events": [\n' + body + "\n ]\n}\n").encode()


def write_trace(path: str | Path, trace: dict[str, Any]) -> Path:
    """Write ``trace`` to ``path`` (parent directories created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(trace_bytes(trace))
    return target


def load_trace(path: str | Path) -> dict[str, Any]:
    """Read and validate a trace file; TraceError with a one-line reason otherwise."""
    target = Path(path)
    try:
        size = target.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise TraceError(f"{target}: {size} bytes is too large for a trace")
        data = json.loads(target.read_bytes())
    except OSError as exc:
        raise TraceError(f"cannot read {target}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{target} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != TRACE_FORMAT:
        raise TraceError(f"{target} is not a {TRACE_FORMAT} file")
    if data.get("version") != TRACE_VERSION:
        raise TraceError(f"{target}: trace version {data.get('version')!r}, this testbed reads {TRACE_VERSION}")
    if not isinstance(data.get("seed"), int) or not isinstance(data.get("options"), dict):
        raise TraceError(f"{target}: seed or options missing")
    if not isinstance(data.get("events", []), list):
        raise TraceError(f"{target}: events is not a list")
    try:
        SimOptions.from_dict(data["options"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"{target}: bad options: {exc}") from None
    return data


class Replay:
    """A trace run again: the new result, whether the violation came back, whether it matched exactly."""

    def __init__(self, trace: dict[str, Any], result: RunResult) -> None:
        self.trace = trace
        self.result = result
        self.new_trace = to_trace(result, note=str(trace.get("note", "")))
        old = trace.get("violation")
        new = self.new_trace["violation"]
        self.reproduced = new is not None and (old is None or new["invariant"] == old["invariant"])
        self.exact = self.new_trace["events"] == trace.get("events") and new == old
        self.first_difference = self._first_difference()

    def _first_difference(self) -> int | None:
        old = self.trace.get("events") or []
        new = self.new_trace["events"]
        for index, (a, b) in enumerate(zip(old, new, strict=False)):
            if a != b:
                return index
        return None if len(old) == len(new) else min(len(old), len(new))


def replay(trace: dict[str, Any], *, tap: ConnectionTap | None = None) -> Replay:
    """Run the trace's seed with its options again (``tap``: record its connections, e.g. to a pcap)."""
    options = SimOptions.from_dict(trace["options"])
    return Replay(trace, World(int(trace["seed"]), options, tap=tap).run())
