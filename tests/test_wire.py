"""Payload and record codec (protocol.wire): round trips, field validation, typed errors only."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.protocol import wire
from sidekick_testbed.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sidekick_testbed.protocol.messages import (
    MESSAGE_TYPES,
    Assigned,
    BlobChunk,
    Bye,
    Challenge,
    Change,
    Durable,
    Error,
    Hello,
    Message,
    MessageType,
    Ping,
    PullEnd,
    Push,
    Records,
)
from sidekick_testbed.protocol.records import CalendarEvent, Contact, Note, Photo, Record, RecordKind, Todo
from tests.strategies import message_of, messages, records

RID = bytes(range(16))


def contact_record(**changes: object) -> Record:
    base: dict[str, object] = {
        "record_id": RID, "version": 7, "deleted": False, "body": Contact("Ann", ("555",), ())
    }
    base.update(changes)
    return Record(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
@given(data=st.data())
def test_every_message_type_round_trips(mtype: MessageType, data: st.DataObject) -> None:
    message = data.draw(message_of(mtype))
    payload = wire.encode_payload(message)
    decoded = wire.decode_payload(mtype, payload)
    assert decoded == message
    assert type(decoded) is MESSAGE_TYPES[mtype]
    assert wire.encode_payload(decoded) == payload


@pytest.mark.parametrize("kind", list(RecordKind), ids=lambda k: k.name)
@given(data=st.data())
def test_every_record_kind_round_trips(kind: RecordKind, data: st.DataObject) -> None:
    record = data.draw(records(kind))
    encoded = wire.encode_record(record)
    assert encoded[0] == kind
    assert wire.decode_record(encoded) == record
    assert wire.decode_record(memoryview(encoded)) == record


@given(messages())
def test_decode_accepts_memoryview_and_bytearray(message: Message) -> None:
    payload = wire.encode_payload(message)
    assert wire.decode_payload(message.TYPE, memoryview(payload)) == message
    assert wire.decode_payload(message.TYPE, bytearray(payload)) == message


@given(records(), st.integers(min_value=0, max_value=2**64 - 1))
def test_with_version_equals_encoding_the_record_with_that_version(record: Record, version: int) -> None:
    encoded = wire.encode_record(record)
    patched = wire.with_version(encoded, version)
    assert patched == wire.encode_record(Record(record.record_id, version, record.deleted, record.body,
                                                record.conflict_of))
    assert wire.decode_record(patched).version == version


@pytest.mark.parametrize(("encoded", "version"), [(b"\x04\x00" + RID + b"\x00" * 7, 1), (b"", 0),
                                                   (wire.encode_record(contact_record()), -1),
                                                   (wire.encode_record(contact_record()), 2**64)])
def test_with_version_refuses_what_is_not_a_record_or_a_version(encoded: bytes, version: int) -> None:
    with pytest.raises(LocalProtocolError) as refused:
        wire.with_version(encoded, version)
    assert refused.value.code == ErrorCode.BAD_FIELD


def test_record_layout_is_the_documented_one() -> None:
    record = Record(RID, 0x0102030405060708, True, Note("t", "x"), conflict_of=b"\xaa" * 16)
    encoded = wire.encode_record(record)
    assert encoded == (
        b"\x04\x01" + RID + bytes.fromhex("0102030405060708") + b"\x10" + b"\xaa" * 16
        + b"\x00\x01t" + b"\x00\x01x"
    )


@given(st.binary(min_size=2, max_size=2), st.integers(0, 255), st.integers(0, 255),
       st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_header_struct_agrees_with_the_definition(
    magic: bytes, version: int, mtype: int, flags: int, seq: int, length: int
) -> None:
    packed = wire.HEADER_STRUCT.pack(magic, version, mtype, flags, seq, length)
    assert len(packed) == wire.HEADER_STRUCT.size == 14
    assert packed == wire.HEADER.build(
        {"magic": magic, "version": version, "type": mtype, "flags": flags, "seq": seq, "length": length}
    )
    assert wire.TRAILER_STRUCT.size == 4


# -- decode: bad values ------------------------------------------------------------------------------


def decode_code(mtype: MessageType, payload: bytes) -> ErrorCode:
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_payload(mtype, payload)
    return info.value.code


def test_bool_byte_other_than_0_or_1_is_bad_field() -> None:
    good = wire.encode_payload(PullEnd(5, True))
    assert decode_code(MessageType.PULL_END, good[:-1] + b"\x02") is ErrorCode.BAD_FIELD
    error = wire.encode_payload(Error(1, False, ""))
    assert decode_code(MessageType.ERROR, error[:2] + b"\xff" + error[3:]) is ErrorCode.BAD_FIELD


def test_todo_done_byte_is_checked() -> None:
    encoded = bytearray(wire.encode_record(contact_record(body=Todo("x", True))))
    done_at = 1 + 1 + 16 + 8 + 1 + 2 + 1
    assert encoded[done_at] == 1
    encoded[done_at] = 7
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_record(bytes(encoded))
    assert info.value.code is ErrorCode.BAD_FIELD


def test_invalid_utf8_is_bad_field() -> None:
    payload = b"\x00\x02\xc3\x28"
    assert decode_code(MessageType.BYE, payload) is ErrorCode.BAD_FIELD


def test_unknown_record_kind_is_bad_field() -> None:
    encoded = bytearray(wire.encode_record(contact_record()))
    encoded[0] = 9
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_record(bytes(encoded))
    assert info.value.code is ErrorCode.BAD_FIELD
    push = bytearray(wire.encode_payload(Push((Change(1, 0, contact_record()),))))
    push[2 + 16] = 0
    assert decode_code(MessageType.PUSH, bytes(push)) is ErrorCode.BAD_FIELD


def test_unknown_record_flag_bits_are_bad_field() -> None:
    encoded = bytearray(wire.encode_record(contact_record()))
    encoded[1] = 0x02
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_record(bytes(encoded))
    assert info.value.code is ErrorCode.BAD_FIELD


def test_conflict_of_of_wrong_length_is_bad_field() -> None:
    encoded = wire.encode_record(contact_record())
    head, tail = encoded[:26], encoded[27:]
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_record(head + b"\x03abc" + tail)
    assert info.value.code is ErrorCode.BAD_FIELD


def test_blob_chunk_past_its_total_is_bad_field() -> None:
    payload = bytes(16) + struct.pack(">QQI", 4, 5, 2) + b"ab"
    assert decode_code(MessageType.BLOB_CHUNK, payload) is ErrorCode.BAD_FIELD


def test_trailing_bytes_in_payload() -> None:
    payload = wire.encode_payload(Ping(1)) + b"\x00"
    assert decode_code(MessageType.PING, payload) is ErrorCode.TRAILING_BYTES
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_record(wire.encode_record(contact_record()) + b"x")
    assert info.value.code is ErrorCode.TRAILING_BYTES


@given(messages(), st.data())
def test_cut_payload_is_malformed(message: Message, data: st.DataObject) -> None:
    payload = wire.encode_payload(message)
    if not payload:
        return
    cut = data.draw(st.integers(0, len(payload) - 1))
    assert decode_code(message.TYPE, payload[:cut]) in {ErrorCode.MALFORMED_PAYLOAD, ErrorCode.BAD_FIELD}


def test_unknown_type_code() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_payload(0x55, b"")
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
@given(payload=st.binary(max_size=200))
def test_arbitrary_payload_gives_message_or_remote_error(mtype: MessageType, payload: bytes) -> None:
    try:
        message = wire.decode_payload(mtype, payload)
    except RemoteProtocolError as exc:
        assert exc.code in {ErrorCode.MALFORMED_PAYLOAD, ErrorCode.BAD_FIELD, ErrorCode.TRAILING_BYTES}
    else:
        assert wire.encode_payload(message) == payload


@given(st.binary(max_size=200))
def test_arbitrary_record_bytes_give_record_or_remote_error(data: bytes) -> None:
    try:
        record = wire.decode_record(data)
    except RemoteProtocolError:
        pass
    else:
        assert wire.encode_record(record) == data


# -- encode: values that do not fit -------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Hello(1, 1, "acct", b"short", 65536),
        Hello(1, 256, "acct", bytes(16), 65536),
        Hello(1, 1, "acct", bytes(16), -1),
        Ping(2**64),
        Challenge(1, bytes(16), bytes(15), 1024, 1),
        Challenge(1, bytes(16), bytes(16), 1024, 65536),
        Bye("\ud800"),
        Bye("x" * 65536),
        Error(0x10000, True, ""),
        Error(1, 1, ""),  # type: ignore[arg-type]
        PullEnd(1, None),  # type: ignore[arg-type]
        Durable(1, 1, (Assigned(1, bytes(17), 1),)),
        Push((Change(-1, 0, contact_record()),)),
        Push((Change(1, 0, contact_record(record_id=b"")),)),
        Push((Change(1, 0, contact_record(conflict_of=b"x")),)),
        Push((Change(1, 0, contact_record(body="not a body")),)),
        Push((Change(1, 0, contact_record(version=2**64)),)),
        Records((contact_record(deleted=2),)),
        Records((contact_record(body=Photo("c", bytes(16), 1, bytes(31))),)),
        Records((contact_record(body=Todo("t", priority=256)),)),
        Records((contact_record(body=CalendarEvent("e", 2**63, 0)),)),
        Records((contact_record(body=Contact("x", phones=("",) * 65536)),)),
        BlobChunk(bytes(16), 0, 1, b"ab"),
    ],
    ids=repr,
)
def test_encode_rejects_values_that_do_not_fit(message: Message) -> None:
    with pytest.raises(LocalProtocolError) as info:
        wire.encode_payload(message)
    assert info.value.code is ErrorCode.BAD_FIELD


def test_encode_rejects_non_messages_and_non_records() -> None:
    with pytest.raises(LocalProtocolError):
        wire.encode_payload(contact_record())  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        wire.encode_record(Ping(1))  # type: ignore[arg-type]


def test_too_many_items_is_bad_field() -> None:
    change = Change(1, 0, contact_record())
    with pytest.raises(LocalProtocolError) as info:
        wire.encode_payload(Push((change,) * 65536))
    assert info.value.code is ErrorCode.BAD_FIELD
    assert wire.decode_payload(MessageType.PUSH, wire.encode_payload(Push((change,) * 3))) == Push(
        (change,) * 3
    )


# -- agreement with construct's own reading of the definitions ------------------------------------------


def plain(value: object) -> object:
    """A message or record in the shape of the construct definitions (dicts, lists, ints)."""
    if isinstance(value, Record):
        return {
            "kind": int(value.body.KIND), "flags": int(value.deleted), "record_id": value.record_id,
            "version": value.version, "conflict_of": value.conflict_of, "body": plain(value.body),
        }
    if hasattr(value, "__dataclass_fields__"):
        return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, bool):
        return int(value)
    return value


@given(messages())
def test_construct_reads_and_writes_the_same_bytes(message: Message) -> None:
    payload = wire.encode_payload(message)
    reference = wire.compiled(message.TYPE)
    container = reference.parse(payload)
    assert plain(container) == plain(message)
    assert reference.build(container) == payload


@given(records())
def test_construct_reads_and_writes_the_same_record(record: Record) -> None:
    encoded = wire.encode_record(record)
    container = wire.compiled().parse(encoded)
    assert plain(container) == plain(record)
    assert wire.compiled().build(container) == encoded
