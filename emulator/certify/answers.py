"""Judging the server's answers in a check: renderings for failure messages, legal refusals and ends.

``show`` and ``brief`` render what was received for a failure message; ``legal_refusal`` and
``legal_end`` tell a refusal or an end the spec allows (``Refused``, ``Ended``: Inconclusive, not
Fail) from a violation; ``expect_error`` and ``expect_closed`` check an ERROR and the end of a
session; ``assigned_version`` reads a DURABLE and ``note_title`` a pulled record.
"""

from __future__ import annotations

from sidekick_testbed.emulator.certify.client import CLOSED, SILENCE, Client, HttpRefusal, Received, describe
from sidekick_testbed.emulator.certify.verdicts import Fail, Inconclusive
from sidekick_testbed.protocol.errors import FATAL_CODES, ErrorCode
from sidekick_testbed.protocol.messages import MESSAGE_TYPES, Challenge, Durable, Error, Ping
from sidekick_testbed.protocol.records import Note, Record

__all__ = ["LEGAL_ENDS", "LEGAL_REFUSALS", "Ended", "Refused", "assigned_version", "brief", "challenge_of",
           "expect_closed", "expect_error", "legal_end", "legal_refusal", "note_title", "show"]

MESSAGE_CLASSES = tuple(MESSAGE_TYPES.values())


def show(received: Received) -> str:
    """A short description of what was received, for failure messages."""
    if received is CLOSED:
        return "the connection closed"
    if received is SILENCE:
        return "nothing"
    if isinstance(received, HttpRefusal):
        return f"HTTP status {received.status}"
    if isinstance(received, Error):
        try:
            name = ErrorCode(received.code).name
        except ValueError:
            name = f"0x{received.code:04x}"
        return f"ERROR {name} (fatal={received.fatal}, {received.text[:80]!r})"
    return received.TYPE.name


def brief(item: object) -> str:
    """A short rendering of a message, a record, a list of them, or None, for failure messages."""
    if item is None:
        return "none"
    if isinstance(item, list | tuple):
        return "[" + ", ".join(brief(i) for i in item) + "]"
    if isinstance(item, Record):
        body = item.body
        title = body.title if isinstance(body, Note) else type(body).__name__
        copy = f" copy of {item.conflict_of.hex()[:8]}" if item.conflict_of else ""
        return f"record {item.record_id.hex()[:8]} v{item.version}{' deleted' if item.deleted else ''}{copy} {title!r}"
    if isinstance(item, MESSAGE_CLASSES):
        return describe(item)
    return repr(item)


def note_title(record: Record) -> str:
    """A pulled record's title (a NOTE's), or its body's repr, to compare with what a check pushed."""
    body = record.body
    return body.title if isinstance(body, Note) else repr(body)


LEGAL_REFUSALS = frozenset({ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN})
"""Fatal ERRORs a server may answer a HELLO or AUTH with at any time (R-LIMIT-9, R-LIMIT-10)."""


def legal_refusal(received: Received) -> str | None:
    """What a legal refusal of a new session was (BUSY, SHUTTING_DOWN, HTTP 503), or None."""
    if isinstance(received, HttpRefusal) and received.status == 503:
        return "HTTP 503"
    if isinstance(received, Error) and received.code in LEGAL_REFUSALS and received.fatal:
        return ErrorCode(received.code).name
    return None


class Refused(Inconclusive):
    """The server legally declined a new session (BUSY, SHUTTING_DOWN): nothing to judge."""


def challenge_of(received: Received) -> Challenge:
    """The CHALLENGE answering a HELLO; ``Refused`` for a legal refusal, Fail for anything else."""
    if isinstance(received, Challenge):
        return received
    if (why := legal_refusal(received)) is not None:
        raise Refused(f"the server declined the session with {why}, as it may (R-LIMIT-9, R-LIMIT-10)")
    raise Fail(f"HELLO: expected CHALLENGE, got {show(received)} (R-STATE-1)")


LEGAL_ENDS = frozenset({ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT, ErrorCode.BUDGET_EXCEEDED, ErrorCode.STORAGE,
                        ErrorCode.INTERNAL})
"""Fatal ERRORs a server may end a session with for reasons of its own (R-LIMIT-7, R-LIMIT-8,
R-LIMIT-10, R-DUR-11): the session is over, nothing was broken. BUSY answers only a HELLO (R-LIMIT-13)."""


class Ended(Refused):
    """The server ended the session with a fatal ERROR it may send at any time (``LEGAL_ENDS``)."""


def legal_end(received: Received, doing: str) -> None:
    """Raise ``Ended`` if ``received`` is a legal fatal ERROR ending the session."""
    if isinstance(received, Error) and received.code in LEGAL_ENDS and received.fatal:
        raise Ended(f"{doing}: the server ended the session with {show(received)}, as it may")


def assigned_version(durable: Durable, lsn: int) -> int:
    """The version DURABLE assigned to ``lsn``; Fail if it is not listed."""
    for entry in durable.assigned:
        if entry.lsn == lsn:
            return entry.version
    raise Fail(f"DURABLE.assigned {[(a.lsn, a.version) for a in durable.assigned]} has no entry for LSN {lsn} (R-DUR-6)")


async def expect_error(client: Client, code: ErrorCode, req: str, doing: str, *,
                       also: frozenset[ErrorCode] = frozenset()) -> Error:
    """Receive an ERROR with ``code`` (or one of ``also``) and the table's fatal flag."""
    got = await client.receive()
    if not isinstance(got, Error):
        raise Fail(f"{doing}: expected ERROR {code.name} ({req}), got {show(got)}")
    if got.code != code and got.code not in also:
        raise Fail(f"{doing}: expected ERROR {code.name} ({req}), got {show(got)}")
    want_fatal = ErrorCode(got.code) in FATAL_CODES
    if got.fatal != want_fatal:
        raise Fail(f"{doing}: ERROR {ErrorCode(got.code).name} with fatal={got.fatal}, the table says {want_fatal} (R-ERR-1)")
    return got


async def expect_closed(client: Client, req: str) -> None:
    """The session is over: TCP, the connection closes with nothing more; HTTP, the token is dead."""
    if client.http:
        if client.token is None:
            return
        await client.send(Ping(1))
        got = await client.receive()
        if isinstance(got, HttpRefusal) and got.status == 410:
            return
        if isinstance(got, Error) and got.code == ErrorCode.SESSION_CLOSED:
            return
        raise Fail(f"the session should be over ({req}); a PING on its token got {show(got)}, expected HTTP 410")
    got = await client.receive()
    if got is not CLOSED:
        raise Fail(f"the server should end the session and close ({req}); got {show(got)}")
