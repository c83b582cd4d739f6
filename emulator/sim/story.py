"""A trace told as a story: who did what, which messages crossed, where power was cut, where an
invariant broke. One line per event, time in simulated seconds."""

from __future__ import annotations

from typing import Any

__all__ = ["event_line", "tell"]

_ARROW = {"sent": "->", "received": "<-"}


def _message(event: dict[str, Any]) -> str:
    name = str(event.get("m", "?"))
    if name == "PUSH":
        parts = [f"{label}(lsn {lsn}, base {base}, rec {rec})" for lsn, base, rec, label in event.get("changes", [])]
        return f"PUSH {', '.join(parts)}"
    if name == "RECORDS":
        parts = [f"{label}(rec {rec} v{version})" for rec, version, label in event.get("records", [])]
        return f"RECORDS {', '.join(parts)}"
    if name == "DURABLE":
        return f"DURABLE gen {event.get('gen')} through lsn {event.get('lsn')}"
    if name == "HELLO_OK":
        return (f"HELLO_OK gen {event.get('gen')}, server holds durable lsn {event.get('durable')}, "
                f"anchor {event.get('anchor')}")
    rest = {k: v for k, v in event.items() if k not in ("t", "kind", "dev", "dir", "m")}
    return name + ("" if not rest else " " + ", ".join(f"{k} {v}" for k, v in rest.items()))


def _nth(n: Any) -> str:
    n = int(n)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _line(event: dict[str, Any]) -> str | None:
    kind = event["kind"]
    dev = event.get("dev", "")
    if kind == "msg":
        return f"{dev:<10} {_ARROW.get(event.get('dir', ''), '  ')} {_message(event)}"
    if kind == "user":
        parent = f" from {event['parent']}" if "parent" in event else ""
        note = f" ({event['note']})" if "note" in event else ""
        return f"{dev:<10} user {event['op']}s record {event['rec']}: {event['v']}{parent}{note}"
    if kind == "user.lost":
        return f"{dev:<10} user {event['op']} did not reach flash before the power cut"
    if kind == "sync":
        return f"{dev:<10} sync starts"
    if kind == "sync.ok":
        extra = f", REGRESSION: {event['regression']}" if event.get("regression") else ""
        return (f"{dev:<10} sync done: pushed {event['pushed']}, pulled {event['pulled']}, "
                f"conflicts {event['conflicts']}{extra}")
    if kind == "sync.fail":
        return f"{dev:<10} sync failed: {event['why']}"
    if kind == "power.arm":
        if "erases" in event:
            return (f"{dev:<10} POWER will fail at the first write after its {_nth(event['erases'])} flash erase "
                    f"from now ({event['variant']})")
        return f"{dev:<10} POWER will fail at its {_nth(event['writes'])} flash write from now ({event['variant']})"
    if kind == "server.crash-arm":
        return f"{'server':<10} will CRASH as it starts its {_nth(event['writes'])} storage write from now"
    if kind == "server.commit-crash-arm":
        return f"{'server':<10} will CRASH as its {_nth(event['commits'])} commit from now is durable, before DURABLE"
    if kind == "server.storage-failure":
        extent = f"for {event['seconds']} s" if "seconds" in event else f"{event.get('count', 1)} time(s)"
        return f"{'server':<10} STORAGE FAILS: {event['failure']} {extent}"
    if kind == "power.cut":
        return f"{dev:<10} POWER CUT ({event.get('during', '')})"
    if kind == "user.cut":
        return f"{dev:<10} POWER CUT during a user operation"
    if kind == "boot":
        return f"{dev:<10} boots (mounts its flash)"
    if kind == "regression":
        return f"{dev:<10} detects a server regression: {event['reason']}"
    if kind.startswith("net."):
        what = kind[4:]
        return f"{dev:<10} network {what} on connection {event.get('conn', '')} ({event.get('dir', '')}, " \
               f"{event.get('bytes', '')} bytes)" if what != "partition" else \
               f"{dev:<10} PARTITIONED from the server for {event['seconds']} s"
    if kind.startswith("server."):
        rest = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("t", "kind"))
        return f"{'server':<10} {kind[7:].upper()} {rest}"
    if kind == "clock.jump":
        return f"{'clock':<10} jumps {event['seconds']} s"
    if kind == "heal":
        return "---------- HEAL: faults off, every device syncs until quiet ----------"
    if kind == "quiet":
        return f"---------- quiet after {event['round']} round(s) ----------"
    if kind == "violation":
        return f"!!!!!!!!!! INVARIANT BROKEN ({event['invariant']}, {event['what']}): {event['text']}"
    if kind == "device":
        return f"{dev:<10} handset {event['id']} on the {event['binding']} binding"
    if kind in ("start", "end"):
        return None
    return f"{dev:<10} {kind}"


def tell(trace: dict[str, Any], *, limit: int | None = None) -> str:
    """The story of ``trace`` (``limit``: only the last ``limit`` events before the end)."""
    options = trace.get("options", {})
    swarm = options.get("swarm") or {}
    head = [
        f"seed {trace.get('seed')}  mutant {options.get('mutant') or 'none'}  "
        f"{options.get('accounts')} account(s) x {options.get('devices')} device(s), {options.get('steps')} steps",
        "faults on: " + (", ".join(f"{k} {v:g}" for k, v in sorted(swarm.items())) or "none"),
    ]
    violation = trace.get("violation")
    events = trace.get("events") or []
    shown = events if limit is None or len(events) <= limit else events[-limit:]
    if len(shown) < len(events):
        head.append(f"... {len(events) - len(shown)} earlier event(s) not shown ...")
    lines = head
    for event in shown:
        line = _line(event)
        if line is not None:
            lines.append(f"{event.get('t', 0):>10.3f}s  {line}")
    if violation:
        lines.append("")
        lines.append(f"broken: invariant {violation['invariant']} ({violation['what']})")
        lines.append(f"  {violation['text']}")
        details = violation.get("details") or {}
        for key in sorted(details):
            value = details[key]
            if key == "flash" and isinstance(value, list):
                lines.append("  on the flash:")
                lines.extend(f"    {line}" for line in value)
                continue
            if key == "generation" and isinstance(value, int):
                value = f"{value:#x}"  # as the story above writes generations
            lines.append(f"  {key}: {value}")
    else:
        lines.append("")
        lines.append("no invariant broken")
    return "\n".join(lines) + "\n"


def event_line(event: dict[str, Any]) -> str | None:
    """One event as the story tells it, without its time (None for events the story leaves out)."""
    return _line(event)
