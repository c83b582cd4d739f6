"""Hypothesis strategies for valid records and messages of every type.

``records()`` draws a record of any kind, ``messages()`` a message of any type and
``message_of(t)`` a message of one type (a ``MessageType`` or a message class); ``bodies()``,
``changes()`` and ``blob_chunks()`` draw the parts. Every value drawn fits the wire format, so
encoding it never fails; values are not checked against session rules (e.g. LSN order).
"""

from __future__ import annotations

from typing import TypeVar

from hypothesis import strategies as st

from sidekick_testbed.protocol.messages import (
    MAC_LEN,
    MESSAGE_TYPES,
    NONCE_LEN,
    Assigned,
    Auth,
    BlobAck,
    BlobChunk,
    BlobQuery,
    Bye,
    Challenge,
    Change,
    Commit,
    Conflict,
    Durable,
    Error,
    Hello,
    HelloOk,
    Message,
    MessageType,
    Ping,
    Pong,
    Pull,
    PullAck,
    PullEnd,
    Push,
    PushAck,
    Records,
)
from sidekick_testbed.protocol.records import (
    BLOB_ID_LEN,
    RECORD_ID_LEN,
    SHA256_LEN,
    CalendarEvent,
    Contact,
    Note,
    Photo,
    Record,
    RecordBody,
    RecordKind,
    Todo,
)

T = TypeVar("T")
U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
MAX_ITEMS = 4


def text(max_size: int = 12) -> st.SearchStrategy[str]:
    """Any Unicode text that encodes to UTF-8 (no lone surrogates)."""
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


def ids(length: int = RECORD_ID_LEN) -> st.SearchStrategy[bytes]:
    """Fixed-length identifiers (record, device, server, blob ids, nonces)."""
    return st.binary(min_size=length, max_size=length)


def small_tuples(elements: st.SearchStrategy[T]) -> st.SearchStrategy[tuple[T, ...]]:
    """Tuples of up to ``MAX_ITEMS`` elements."""
    return st.lists(elements, max_size=MAX_ITEMS).map(tuple)


BODIES: dict[RecordKind, st.SearchStrategy[RecordBody]] = {
    RecordKind.CONTACT: st.builds(Contact, text(), small_tuples(text()), small_tuples(text())),
    RecordKind.EVENT: st.builds(CalendarEvent, text(), I64, I64, text()),
    RecordKind.TODO: st.builds(Todo, text(), st.booleans(), I64, U8),
    RecordKind.NOTE: st.builds(Note, text(), text(40)),
    RecordKind.PHOTO: st.builds(Photo, text(), ids(BLOB_ID_LEN), U64, ids(SHA256_LEN), text()),
}


def bodies(kind: RecordKind | None = None) -> st.SearchStrategy[RecordBody]:
    """A record body of ``kind``, or of any kind."""
    if kind is not None:
        return BODIES[kind]
    return st.one_of(*BODIES.values())


def records(kind: RecordKind | None = None) -> st.SearchStrategy[Record]:
    """A record (any version, tombstone or not, conflict copy or not) of ``kind`` or any kind."""
    return st.builds(
        Record,
        record_id=ids(),
        version=U64,
        deleted=st.booleans(),
        body=bodies(kind),
        conflict_of=st.one_of(st.just(b""), ids()),
    )


def changes() -> st.SearchStrategy[Change]:
    """One PUSH change (any LSN, base version and record)."""
    return st.builds(Change, U64, U64, records())


@st.composite
def blob_chunks(draw: st.DrawFn) -> BlobChunk:
    data = draw(st.binary(max_size=64))
    offset = draw(st.integers(0, 2**40))
    total = draw(st.integers(offset + len(data), 2**64 - 1))
    return BlobChunk(draw(ids(BLOB_ID_LEN)), offset, total, data)


MESSAGES: dict[MessageType, st.SearchStrategy[Message]] = {
    MessageType.HELLO: st.builds(Hello, U8, U8, text(), ids(), U32),
    MessageType.CHALLENGE: st.builds(Challenge, U8, ids(), ids(NONCE_LEN), U32, U16),
    MessageType.AUTH: st.builds(Auth, ids(NONCE_LEN), ids(MAC_LEN)),
    MessageType.HELLO_OK: st.builds(HelloOk, ids(), U64, U64, U64, ids(MAC_LEN)),
    MessageType.PUSH: st.builds(Push, small_tuples(changes())),
    MessageType.PUSH_ACK: st.builds(PushAck, U64),
    MessageType.COMMIT: st.builds(Commit, U64),
    MessageType.DURABLE: st.builds(Durable, U64, U64, small_tuples(st.builds(Assigned, U64, ids(), U64))),
    MessageType.CONFLICT: st.builds(Conflict, U64, ids(), U64, ids()),
    MessageType.PULL: st.builds(Pull, U64, U32),
    MessageType.RECORDS: st.builds(Records, small_tuples(records())),
    MessageType.PULL_END: st.builds(PullEnd, U64, st.booleans()),
    MessageType.PULL_ACK: st.builds(PullAck, U64),
    MessageType.BLOB_QUERY: st.builds(BlobQuery, ids(BLOB_ID_LEN)),
    MessageType.BLOB_CHUNK: blob_chunks(),
    MessageType.BLOB_ACK: st.builds(BlobAck, ids(BLOB_ID_LEN), U64),
    MessageType.PING: st.builds(Ping, U64),
    MessageType.PONG: st.builds(Pong, U64),
    MessageType.ERROR: st.builds(Error, U16, st.booleans(), text()),
    MessageType.BYE: st.builds(Bye, text()),
}
assert set(MESSAGES) == set(MESSAGE_TYPES)


def message_of(mtype: MessageType | type[Message]) -> st.SearchStrategy[Message]:
    """A message of one type, given as a ``MessageType`` or a message class."""
    key = mtype if isinstance(mtype, MessageType) else mtype.TYPE
    return MESSAGES[key]


def messages() -> st.SearchStrategy[Message]:
    """A message of any type."""
    return st.one_of(*MESSAGES.values())
