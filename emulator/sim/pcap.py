"""A simulated run as a capture: ``sidekick replay TRACE --pcap OUT``.

``SimTap`` is the simulated network's ``ConnectionTap``: it wraps the two delivering ends of each
connection (network to server, network to device) and records what they deliver, when (the Trio
clock), and where in the run's timeline, without a checkpoint or a random draw of its own, so the
run is the same run. What is recorded is what each peer received: a chunk the network corrupted
arrives corrupted, a dropped chunk does not arrive. ``write_capture`` then writes the connections as
TCP streams and the timeline's events between them (``emulator.capture.tcp``): power cuts, server
crashes and restores, user edits, sync outcomes and the violation as event packets; a network fault
as a comment on the segment it hit (a dropped chunk, which has none, as an event). Event kinds this
module does not know are kept as comments on the next packet. Timestamps are the simulated time in
seconds (time 0 is shown as 1970-01-01 00:00:00 UTC).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from sidekick_testbed.emulator.capture.tcp import (
    HTTP_PORT,
    RAW_PORT,
    SERVER_NAME,
    Capture,
    Severity,
    TcpStream,
)
from sidekick_testbed.emulator.sim.story import event_line
from sidekick_testbed.emulator.sim.trace_log import Timeline

__all__ = ["SimTap", "write_capture"]

_SEVERITY: dict[str, int] = {
    "violation": Severity.ERROR,
    "power.cut": Severity.WARNING, "user.cut": Severity.WARNING, "user.lost": Severity.WARNING,
    "server.down": Severity.WARNING, "server.restore": Severity.WARNING, "regression": Severity.WARNING,
    "server.storage-failure": Severity.WARNING,
    "power.arm": Severity.NOTICE, "clock.jump": Severity.NOTICE, "server.up": Severity.NOTICE,
    "server.crash-arm": Severity.NOTICE, "server.commit-crash-arm": Severity.NOTICE,
    "net.drop": Severity.NOTICE, "net.partition": Severity.NOTICE, "heal": Severity.NOTICE,
    "boot": Severity.NOTICE, "sync.fail": Severity.NOTICE,
    "device": Severity.INFO, "user": Severity.INFO, "user.full": Severity.INFO, "sync": Severity.INFO,
    "sync.ok": Severity.INFO, "server.backup": Severity.INFO, "quiet": Severity.INFO,
}
"""Event kinds shown as event packets, and their syslog severities."""
_SILENT = frozenset({"msg", "start", "end"})
"""Kinds that need no packet: messages are the frames themselves; start and end frame the run."""
_ON_SEGMENT = frozenset({"net.corrupt", "net.duplicate", "net.delay", "net.stall", "net.truncate", "net.reset"})
"""Network faults written as a comment on the segment (or reset) they hit."""
_MAX_EXTRA = 20


@dataclass(frozen=True, slots=True)
class _Record:
    """What one delivering end did: ``open``, ``data``, ``fin`` or ``reset``."""

    index: int  # events in the timeline when it happened: it comes after event index - 1
    time: float
    what: str
    conn: int
    upstream: bool = True
    data: bytes = b""
    device: str = ""
    binding: str = ""


class _TapPipe:
    """Records what one direction of a simulated connection delivers to its reader."""

    def __init__(self, tap: SimTap, conn: Any, upstream: bool, timeline: Timeline) -> None:
        self._tap = tap
        self._conn = conn
        self._upstream = upstream
        self._timeline = timeline

    def _record(self, what: str, data: bytes = b"") -> None:
        self._tap.records.append(_Record(len(self._timeline.events), trio.current_time(), what,
                                         self._conn.number, self._upstream, data))

    def delivered(self, data: bytes) -> None:
        """Bytes the reader now has (what failed to arrive never gets here)."""
        self._record("data", bytes(data))

    def ended(self) -> None:
        """This direction ended: an end of the stream (FIN), or part of a reset of the connection."""
        self._record("reset" if self._conn.reset else "fin")


class SimTap:
    """Records every connection of a simulated network (``emulator.sim.network.ConnectionTap``)."""

    def __init__(self) -> None:
        self.records: list[_Record] = []

    def attach(self, conn: Any, timeline: Timeline) -> None:
        """Watch the pipes the connection's two peers read from (before anything is written)."""
        self.records.append(_Record(len(timeline.events), trio.current_time(), "open", conn.number,
                                    device=conn.device, binding=conn.binding))
        conn.up_out.tap = _TapPipe(self, conn, True, timeline)
        conn.down_out.tap = _TapPipe(self, conn, False, timeline)


def _text(event: dict[str, Any]) -> str:
    if "dev" not in event and isinstance(event.get("device"), str):
        event = {**event, "dev": event["device"]}  # the story names a partitioned device "device"
    line = event_line(event)
    return " ".join((line or event["kind"]).split())


def _host(event: dict[str, Any]) -> str | None:
    """Whose event it is: the handset it names, the server for server events, else no one."""
    details = event.get("details")
    name = event.get("dev", event.get("device", details.get("device") if isinstance(details, dict) else None))
    if isinstance(name, str) and name:
        return name
    return SERVER_NAME if str(event.get("kind", "")).startswith("server.") else None


def _fault_note(event: dict[str, Any]) -> str:
    what = event["kind"][4:]
    details = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("t", "kind", "conn", "device", "dir", "bytes"))
    way = "device to server" if event.get("dir") == "up" else "server to device"
    return f"network fault: {what} ({way}, chunk of {event.get('bytes', '?')} bytes{', ' + details if details else ''})"


def _unknown(event: dict[str, Any]) -> str:
    fields = {k: v for k, v in event.items() if k not in ("t", "kind")}
    return f"t={event.get('t', 0)} {event['kind']} {json.dumps(fields, separators=(',', ':'), default=str)}"


class _Writer:
    """Merges the recorded connections with the timeline into a ``Capture``."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.streams: dict[int, TcpStream] = {}
        self.pending: dict[int, list[tuple[str | None, str]]] = defaultdict(list)  # conn -> (dir, note)
        self.extra: list[str] = []

    def _take_extra(self) -> str:
        if not self.extra:
            return ""
        shown = self.extra[:_MAX_EXTRA]
        more = len(self.extra) - len(shown)
        self.extra = []
        return "\n".join(["events of kinds this capture does not show:", *shown]
                         + ([f"... and {more} more"] if more else []))

    def _comment(self, *parts: str) -> str:
        return "\n".join(p for p in (*parts, self._take_extra()) if p)

    def record(self, rec: _Record) -> None:
        if rec.what == "open":
            port = HTTP_PORT if rec.binding == "http" else RAW_PORT
            self.streams[rec.conn] = self.capture.connect(
                rec.time, rec.device, server_port=port,
                comment=self._comment(f"connection {rec.conn} of {rec.device} ({rec.binding} binding)"))
            return
        stream = self.streams.get(rec.conn)
        if stream is None:
            return
        direction = "up" if rec.upstream else "down"
        if rec.what == "data":
            notes = [note for way, note in self.pending[rec.conn] if way in (None, direction)]
            self.pending[rec.conn] = [(way, note) for way, note in self.pending[rec.conn] if way not in (None, direction)]
            stream.data(rec.time, rec.upstream, rec.data, self._comment(*notes))
            return
        notes = [note for _, note in self.pending.pop(rec.conn, [])]
        if rec.what == "reset":
            stream.reset(rec.time, None, self._comment(*notes, "the connection is reset"))
        else:
            stream.fin(rec.time, rec.upstream, self._comment(*notes))

    def event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("kind", "?"))
        time = float(event.get("t", 0.0))
        if kind in _SILENT:
            return
        if kind in _ON_SEGMENT and isinstance(event.get("conn"), int) and event["conn"] in self.streams:
            self.pending[event["conn"]].append((event.get("dir"), _fault_note(event)))
            return
        if kind in _SEVERITY or kind.startswith("net."):
            severity = _SEVERITY.get(kind, Severity.NOTICE)
            if kind == "sync.fail" and "power" in str(event.get("why", "")):
                severity = Severity.WARNING
            text = _text(event)
            self.capture.event(time, text, severity=severity, comment=self._comment(f"t={time:.6f} s: {text}"),
                               host=_host(event))
            return
        self.extra.append(_unknown(event))

    def finish(self, end: float) -> None:
        for conn in sorted(self.pending):
            for _, note in self.pending[conn]:
                self.capture.event(end, note, severity=Severity.NOTICE)
        if self.extra:
            self.capture.event(end, "events after the last packet", severity=Severity.DEBUG,
                               comment=self._take_extra())


def write_capture(path: str | Path, trace: dict[str, Any], tap: SimTap) -> Capture:
    """Write the run of ``trace`` (its ``events``, and the connections ``tap`` recorded while it ran)
    as a pcapng file; returns the capture (its counts)."""
    events: list[dict[str, Any]] = list(trace.get("events") or [])
    violation = trace.get("violation")
    options = trace.get("options") or {}
    summary = (f"sidekick fuzz trace: seed {trace.get('seed')}, mutant {options.get('mutant') or 'none'}, "
               f"{options.get('accounts')} account(s) x {options.get('devices')} device(s); "
               + (f"violation {violation['invariant']} ({violation['what']}): {violation['text']}" if violation
                  else "no violation"))
    records = sorted(tap.records, key=lambda r: r.index)  # stable: same index keeps recording order
    with open(path, "wb") as out:
        writer = _Writer(Capture(out, comment=summary))
        for event in events:
            if event.get("kind") == "device" and isinstance(event.get("dev"), str):
                writer.capture.host(event["dev"])  # addresses in the order the handsets were made
        position = 0
        for index, event in enumerate(events):
            while position < len(records) and records[position].index <= index:
                writer.record(records[position])
                position += 1
            writer.event(event)
        for rec in records[position:]:
            writer.record(rec)
        writer.finish(float(events[-1].get("t", 0.0)) if events else 0.0)
        writer.capture.flush()
        return writer.capture
