"""The event timeline of one simulated run: what happened, when (Trio clock), in order."""

from __future__ import annotations

from typing import Any

import trio

Event = dict[str, Any]


class Timeline:
    """Append-only list of JSON-ready events, each stamped with the simulated time ``t``."""

    def __init__(self, *, limit: int = 200_000) -> None:
        self.events: list[Event] = []
        self.limit = limit
        self.dropped = 0

    def record(self, kind: str, **fields: Any) -> None:
        """Append one event (beyond ``limit`` events only a count is kept: memory stays bounded)."""
        if len(self.events) >= self.limit:
            self.dropped += 1
            return
        event: Event = {"t": round(trio.current_time(), 6), "kind": kind}
        event.update(fields)
        self.events.append(event)
