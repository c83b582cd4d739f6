"""The oracle's checks on single messages (``emulator.sim.oracle.check_wire``), fed as the world
feeds them: each message is checked before the ledger learns of it."""

from __future__ import annotations

from sidekick_testbed.emulator.sim.ledger import Ledger
from sidekick_testbed.emulator.sim.oracle import Violation, check_wire
from sidekick_testbed.protocol.messages import (
    Assigned,
    BlobAck,
    BlobChunk,
    BlobQuery,
    Change,
    Commit,
    Durable,
    Error,
    HelloOk,
    Message,
    Push,
)
from sidekick_testbed.protocol.records import Note, Record

BLOB = b"b" * 16
OTHER = b"o" * 16


def conversation(*steps: tuple[str, Message]) -> list[Violation | None]:
    """The oracle's verdict on each message of one device's conversation."""
    ledger = Ledger()
    ledger.add_device("phone", "alice")
    verdicts = []
    for direction, message in steps:
        verdicts.append(check_wire(ledger, "phone", direction, message, None))
        ledger.message("phone", direction, message)
    return verdicts


def whats(verdicts: list[Violation | None]) -> list[str | None]:
    return [verdict.what if verdict else None for verdict in verdicts]


def test_an_accepted_chunk_is_acknowledged_up_to_its_end() -> None:
    assert whats(conversation(
        ("sent", BlobQuery(BLOB)), ("received", BlobAck(BLOB, 0)),
        ("sent", BlobChunk(BLOB, 0, 2500, b"x" * 1000)), ("received", BlobAck(BLOB, 1000)),
        ("sent", BlobChunk(BLOB, 1000, 2500, b"x" * 1000)), ("received", BlobAck(BLOB, 2000)),
        ("sent", BlobChunk(BLOB, 2000, 2500, b"x" * 500)), ("received", BlobAck(BLOB, 2500)),
    )) == [None] * 8


def test_a_receipt_other_than_the_chunks_end_is_a_violation() -> None:
    for wrong in (0, 1000, 1999, 2001, 3000):
        verdicts = conversation(("sent", BlobChunk(BLOB, 1000, 3000, b"x" * 1000)), ("received", BlobAck(BLOB, wrong)))
        assert whats(verdicts) == [None, "wrong-blob-receipt"]
        assert verdicts[1] is not None and verdicts[1].invariant == "durable-lost"


def test_the_empty_blob_is_acknowledged_with_zero() -> None:
    assert whats(conversation(("sent", BlobChunk(BLOB, 0, 0, b"")), ("received", BlobAck(BLOB, 0)))) == [None, None]
    assert whats(conversation(("sent", BlobChunk(BLOB, 0, 0, b"")), ("received", BlobAck(BLOB, 1))))[1] \
        == "wrong-blob-receipt"


def test_only_the_answer_to_a_chunk_is_held_to_the_chunks_end() -> None:
    chunk = ("sent", BlobChunk(BLOB, 0, 3000, b"x" * 1000))
    assert whats(conversation(chunk, ("received", Error(0x0B, False, "offset")), ("received", BlobAck(BLOB, 7)))) \
        == [None, None, None]                                        # refused: the chunk has no receipt
    assert whats(conversation(chunk, ("sent", BlobQuery(BLOB)), ("received", BlobAck(BLOB, 7)))) == [None] * 3
    assert whats(conversation(chunk, ("received", BlobAck(OTHER, 7)))) == [None, None]
    hello = ("received", HelloOk(b"s" * 16, 1, 0, 0, b"m" * 32))     # a new session: nothing outstanding
    assert whats(conversation(chunk, hello, ("received", BlobAck(BLOB, 7)))) == [None, None, None]


def exchange(*steps: tuple[str, str, Message]) -> list[Violation | None]:
    """The oracle's verdicts on the messages of several devices: ``phone`` and ``tablet`` of one
    account, ``stranger`` of another."""
    ledger = Ledger()
    for device, account in (("phone", "alice"), ("tablet", "alice"), ("stranger", "bob")):
        ledger.add_device(device, account)
    verdicts = []
    for device, direction, message in steps:
        verdicts.append(check_wire(ledger, device, direction, message, None))
        ledger.message(device, direction, message)
    return verdicts


HELLO_OK = HelloOk(b"s" * 16, 1, 0, 0, b"m" * 32)
FIRST_OF_THREE = (("phone", "sent", BlobChunk(BLOB, 0, 3000, b"x" * 1000)),
                  ("phone", "received", BlobAck(BLOB, 1000)),
                  ("phone", "received", HELLO_OK))  # the upload was cut; a new session resumes it


def test_a_resumed_upload_may_be_told_at_most_the_bytes_sent() -> None:
    for have in (0, 400, 1000):  # a server may hold less than it acknowledged (R-BLOB-11), never more
        verdicts = exchange(*FIRST_OF_THREE, ("phone", "sent", BlobQuery(BLOB)), ("phone", "received", BlobAck(BLOB, have)))
        assert whats(verdicts) == [None] * 5


def test_a_blob_query_answered_with_bytes_never_sent_is_a_violation() -> None:
    for have in (1001, 2000, 3000):
        verdicts = exchange(*FIRST_OF_THREE, ("phone", "sent", BlobQuery(BLOB)), ("phone", "received", BlobAck(BLOB, have)))
        assert whats(verdicts) == [None] * 4 + ["wrong-blob-receipt"]
        assert verdicts[4] is not None and verdicts[4].invariant == "durable-lost"
        assert verdicts[4].details["sent_to"] == 1000 and verdicts[4].details["have"] == have
    unsent = exchange(("phone", "sent", BlobQuery(BLOB)), ("phone", "received", BlobAck(BLOB, 1)))
    assert whats(unsent) == [None, "wrong-blob-receipt"]


def test_a_chunk_sent_by_any_device_of_the_account_counts() -> None:
    whole = (*FIRST_OF_THREE, ("tablet", "sent", BlobChunk(BLOB, 1000, 3000, b"x" * 2000)),
             ("tablet", "received", BlobAck(BLOB, 3000)))
    assert whats(exchange(*whole, ("phone", "sent", BlobQuery(BLOB)), ("phone", "received", BlobAck(BLOB, 3000)))) \
        == [None] * 7
    elsewhere = (*FIRST_OF_THREE, ("stranger", "sent", BlobChunk(BLOB, 1000, 3000, b"x" * 2000)))
    assert whats(exchange(*elsewhere, ("phone", "sent", BlobQuery(BLOB)), ("phone", "received", BlobAck(BLOB, 3000)))) \
        == [None] * 5 + ["wrong-blob-receipt"]


def pushed(lsns: range) -> tuple[str, str, Message]:
    """The phone's PUSH of one note per LSN."""
    return ("phone", "sent", Push(tuple(Change(lsn, 0, Record(bytes([lsn]) * 16, 0, False, Note(f"n{lsn}", "")))
                                        for lsn in lsns)))


def durable(watermark: int, lsns: range) -> tuple[str, str, Message]:
    """DURABLE through ``watermark`` assigning version ``lsn`` to each of ``lsns``."""
    return ("phone", "received", Durable(1, watermark, tuple(Assigned(lsn, bytes([lsn]) * 16, lsn) for lsn in lsns)))


def test_a_durable_lists_only_what_it_confirms_of_this_sessions_pushes() -> None:
    session = (("phone", "received", HELLO_OK), pushed(range(1, 61)), ("phone", "sent", Commit(60)))
    assert whats(exchange(*session, durable(60, range(1, 61)))) == [None] * 4
    assert whats(exchange(*session, durable(30, range(1, 31)))) == [None] * 4  # cut to one frame
    assert whats(exchange(*session, durable(30, range(1, 31)), durable(60, range(31, 61)))) == [None] * 5


def test_a_durable_assigning_versions_above_its_watermark_is_a_violation() -> None:
    session = (("phone", "received", HELLO_OK), pushed(range(1, 61)), ("phone", "sent", Commit(60)))
    for watermark in (2, 29):  # a cut DURABLE whose watermark is below the last LSN it lists
        verdicts = exchange(*session, durable(watermark, range(1, 31)))
        assert whats(verdicts) == [None] * 3 + ["assigned-above-watermark"]
        assert verdicts[3] is not None and verdicts[3].invariant == "durable-lost"
        assert verdicts[3].details["watermark"] == watermark


def test_a_durable_assigning_versions_to_changes_not_pushed_in_the_session_is_a_violation() -> None:
    earlier = (("phone", "received", HELLO_OK), pushed(range(1, 11)), ("phone", "sent", Commit(10)))
    later = (("phone", "received", HELLO_OK), pushed(range(6, 11)), ("phone", "sent", Commit(10)))
    assert whats(exchange(*earlier, *later, durable(10, range(6, 11)))) == [None] * 7
    assert whats(exchange(*earlier, *later, durable(10, range(1, 11))))[-1] == "assigned-not-pushed"
