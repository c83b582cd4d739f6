"""Short, JSON-ready summaries of protocol messages for the timeline and the story."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidekick_testbed.emulator.sim.ledger import Key, key_of
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import (
    BlobAck,
    BlobChunk,
    BlobQuery,
    Bye,
    Commit,
    Conflict,
    Durable,
    Error,
    HelloOk,
    Message,
    Pull,
    PullAck,
    PullEnd,
    Push,
    PushAck,
    Records,
)

__all__ = ["summarize"]


def summarize(message: Message, label: Callable[[Key], str]) -> dict[str, Any]:
    """``{"m": TYPE, ...}`` with the fields that matter for durability; ``label`` names versions."""
    out: dict[str, Any] = {"m": type(message).TYPE.name}
    if isinstance(message, HelloOk):
        out.update(gen=f"{message.generation:#x}", durable=message.durable_lsn, anchor=message.anchor)
    elif isinstance(message, Push):
        out["changes"] = [[c.lsn, c.base_version, c.record.record_id.hex()[:8], label(key_of(c.record))]
                          for c in message.changes]
    elif isinstance(message, PushAck):
        out["lsn"] = message.received_lsn
    elif isinstance(message, Commit):
        out["lsn"] = message.lsn
    elif isinstance(message, Durable):
        out.update(gen=f"{message.generation:#x}", lsn=message.durable_lsn,
                   assigned=[[a.lsn, a.version] for a in message.assigned])
    elif isinstance(message, Conflict):
        out.update(lsn=message.lsn, rec=message.record_id.hex()[:8], copy=message.copy_id.hex()[:8])
    elif isinstance(message, Pull):
        out["anchor"] = message.anchor
    elif isinstance(message, Records):
        out["records"] = [[r.record_id.hex()[:8], r.version, label(key_of(r))] for r in message.records]
    elif isinstance(message, PullEnd):
        out.update(anchor=message.anchor, more=message.more)
    elif isinstance(message, PullAck):
        out["anchor"] = message.anchor
    elif isinstance(message, BlobQuery):
        out["blob"] = message.blob_id.hex()[:8]
    elif isinstance(message, BlobChunk):
        out.update(blob=message.blob_id.hex()[:8], offset=message.offset, size=len(message.data),
                   total=message.total)
    elif isinstance(message, BlobAck):
        out.update(blob=message.blob_id.hex()[:8], have=message.have)
    elif isinstance(message, Error):
        try:
            code = ErrorCode(message.code).name
        except ValueError:
            code = f"{message.code:#x}"
        out.update(code=code, fatal=message.fatal, text=message.text[:80])
    elif isinstance(message, Bye):
        out["reason"] = message.reason[:80]
    return out
