"""Frames and the incremental decoder (protocol.framing)."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fixtures
from fixtures import make_vectors
from sidekick_testbed.emulator.frame_json import message_from_json, message_to_json
from sidekick_testbed.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sidekick_testbed.protocol.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_LEN,
    MAGIC,
    TRAILER_LEN,
    Frame,
    FrameDecoder,
    encode_frame,
)
from sidekick_testbed.protocol.messages import BlobChunk, Bye, Message, MessageType, Ping, Pong
from sidekick_testbed.protocol.records import RecordKind
from tests.strategies import messages

SMALL_MAX = 4096


def frame_bytes(mtype: int, payload: bytes, *, magic: bytes = MAGIC, version: int = 1, flags: int = 0,
                seq: int = 0, length: int | None = None, crc: int | None = None) -> bytes:
    """A frame built field by field, so that any field can be wrong."""
    header = struct.pack(">2sBBHII", magic, version, mtype, flags, seq, len(payload) if length is None else length)
    if crc is None:
        crc = zlib.crc32(header + payload)
    return header + payload + struct.pack(">I", crc)


def decode_all(data: bytes, *, chunks: list[int] | None = None, max_frame: int = DEFAULT_MAX_FRAME) -> list[Frame]:
    """Feed ``data`` (in pieces of the given sizes, else whole), then EOF; return every frame."""
    decoder = FrameDecoder(max_frame)
    frames: list[Frame] = []
    pieces = [data] if chunks is None else split(data, chunks)
    for piece in pieces + [b""]:
        decoder.feed(piece)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert decoder.buffered == 0
    return frames


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


def error_of(data: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(data, max_frame=max_frame)
    return info.value


def test_ping_frame_layout() -> None:
    frame = encode_frame(Ping(0x0102030405060708), 0x0A0B0C0D)
    header = b"SK\x01\x40\x00\x00\x0a\x0b\x0c\x0d\x00\x00\x00\x08"
    payload = bytes.fromhex("0102030405060708")
    assert frame == header + payload + zlib.crc32(header + payload).to_bytes(4, "big")
    assert len(frame) == HEADER_LEN + 8 + TRAILER_LEN


@given(st.lists(messages(), max_size=6))
def test_stream_round_trips(batch: list[Message]) -> None:
    stream = b"".join(encode_frame(m, seq) for seq, m in enumerate(batch))
    frames = decode_all(stream)
    assert [f.message for f in frames] == batch
    assert [f.seq for f in frames] == list(range(len(batch)))
    assert all(f.version == 1 and f.flags == 0 for f in frames)
    assert sum(f.size for f in frames) == len(stream)
    assert [encode_frame(f.message, f.seq) for f in frames] == [encode_frame(m, i) for i, m in enumerate(batch)]


@given(st.lists(messages(), min_size=1, max_size=4), st.lists(st.integers(1, 40), max_size=30))
def test_any_chunking_gives_the_same_frames(batch: list[Message], sizes: list[int]) -> None:
    stream = b"".join(encode_frame(m, seq) for seq, m in enumerate(batch))
    whole = decode_all(stream)
    assert decode_all(stream, chunks=sizes) == whole
    assert decode_all(stream, chunks=[1] * len(stream)) == whole


def test_eof_on_a_frame_boundary_is_clean() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.eof
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"more")


def test_seq_and_version_are_range_checked_on_encode() -> None:
    for seq in (-1, 2**32):
        with pytest.raises(LocalProtocolError):
            encode_frame(Ping(1), seq)
    with pytest.raises(LocalProtocolError):
        encode_frame(Ping(1), 0, version=256)
    assert encode_frame(Ping(1), 2**32 - 1)[2] == 1


# -- the ways a frame can be wrong ---------------------------------------------------------------------


PING = frame_bytes(0x40, bytes(8))


def test_bad_magic_is_detected_from_the_first_byte() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"X")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.BAD_MAGIC and info.value.offset == 0
    assert error_of(frame_bytes(0x40, bytes(8), magic=b"SX")).code is ErrorCode.BAD_MAGIC


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame_bytes(0x40, bytes(8), version=0), ErrorCode.BAD_VERSION),
        (frame_bytes(0x40, bytes(8), version=2), ErrorCode.BAD_VERSION),
        (frame_bytes(0x55, bytes(8)), ErrorCode.UNKNOWN_TYPE),
        (frame_bytes(0x40, bytes(8), flags=0x8000), ErrorCode.BAD_FLAGS),
        (frame_bytes(0x40, bytes(8), crc=0), ErrorCode.BAD_CRC),
        (frame_bytes(0x40, bytes(9)), ErrorCode.TRAILING_BYTES),
        (frame_bytes(0x40, bytes(7)), ErrorCode.MALFORMED_PAYLOAD),
        (frame_bytes(0x22, bytes(8) + b"\x02"), ErrorCode.BAD_FIELD),
        (PING[:-1], ErrorCode.TRUNCATED),
        (PING[:5], ErrorCode.TRUNCATED),
        (frame_bytes(0x40, b"", length=DEFAULT_MAX_FRAME), ErrorCode.FRAME_TOO_LARGE),
    ],
    ids=lambda v: v.name if isinstance(v, ErrorCode) else "",
)
def test_each_error_after_a_good_frame_reports_where_the_bad_frame_starts(data: bytes, code: ErrorCode) -> None:
    good = encode_frame(Bye("ok"), 0)
    decoder = FrameDecoder()
    decoder.feed(good + data)
    decoder.feed(b"")
    first = decoder.next_frame()
    assert first is not None and first.message == Bye("ok")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is code
    assert info.value.offset == len(good)
    # poisoned: the same error again, whatever the call
    with pytest.raises(RemoteProtocolError) as again:
        decoder.next_frame()
    assert again.value is info.value
    with pytest.raises(RemoteProtocolError) as fed:
        decoder.feed(PING)
    assert fed.value is info.value


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(SMALL_MAX)
    header = frame_bytes(0x31, b"", length=SMALL_MAX - HEADER_LEN - TRAILER_LEN + 1)[:HEADER_LEN]
    decoder.feed(header)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == HEADER_LEN


def test_a_frame_of_exactly_max_frame_is_accepted_and_max_frame_can_change() -> None:
    data_len = SMALL_MAX - HEADER_LEN - TRAILER_LEN - 36
    frame = encode_frame(BlobChunk(bytes(16), 0, data_len, bytes(data_len)), 0)
    assert len(frame) == SMALL_MAX
    assert decode_all(frame, max_frame=SMALL_MAX)[0].size == SMALL_MAX
    assert error_of(frame, max_frame=SMALL_MAX - 1).code is ErrorCode.FRAME_TOO_LARGE
    decoder = FrameDecoder(SMALL_MAX - 1)
    decoder.max_frame = SMALL_MAX
    assert decoder.max_frame == SMALL_MAX
    decoder.feed(frame)
    assert decoder.next_frame() is not None
    with pytest.raises(ValueError):
        decoder.max_frame = 3
    with pytest.raises(ValueError):
        FrameDecoder(0)


def test_partial_frame_waits_for_more() -> None:
    frame = encode_frame(Pong(9), 3)
    decoder = FrameDecoder()
    for i in range(len(frame) - 1):
        decoder.feed(frame[i : i + 1])
        assert decoder.next_frame() is None
        assert decoder.buffered == i + 1
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == Frame(1, 3, 0, Pong(9), len(frame))
    assert decoder.buffered == 0
    assert decoder.offset == len(frame)


# -- arbitrary and mutated input ------------------------------------------------------------------------


def drain(data: bytes, sizes: list[int], max_frame: int) -> list[Frame]:
    """Feed arbitrary input; only frames or RemoteProtocolError may come out, memory stays bounded."""
    decoder = FrameDecoder(max_frame)
    frames: list[Frame] = []
    try:
        for piece in split(data, sizes) + [b""]:
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
            assert decoder.buffered <= max_frame + len(piece)
            assert decoder.buffered < max_frame or not piece
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert exc.offset is not None and 0 <= exc.offset <= len(data)
    return frames


@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=20), st.sampled_from([64, 300, 4096]))
def test_arbitrary_bytes_yield_frames_or_remote_errors(data: bytes, sizes: list[int], max_frame: int) -> None:
    drain(data, sizes, max_frame)


@given(st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=10))
def test_arbitrary_bytes_after_a_valid_header(tail: bytes, sizes: list[int]) -> None:
    drain(b"SK\x01\x10\x00\x00" + tail, sizes, 512)


@given(
    st.lists(messages(), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.sampled_from(["flip", "insert", "delete", "fixcrc"]),
    st.lists(st.integers(1, 64), max_size=10),
)
def test_mutated_frames_yield_frames_or_remote_errors(
    batch: list[Message], edits: list[tuple[int, int]], how: str, sizes: list[int]
) -> None:
    frames = [bytearray(encode_frame(m, seq)) for seq, m in enumerate(batch)]
    for where, value in edits:
        frame = frames[where % len(frames)]
        i = where % len(frame)
        if how == "flip":
            frame[i] ^= value or 1
        elif how == "insert":
            frame[i:i] = bytes([value])
        elif how == "delete":
            del frame[i]
        else:  # change a payload byte and repair the CRC, so that the payload decoder sees it
            if len(frame) > HEADER_LEN + TRAILER_LEN:
                j = HEADER_LEN + where % (len(frame) - HEADER_LEN - TRAILER_LEN)
                frame[j] ^= value or 1
                frame[-4:] = zlib.crc32(frame[:-4]).to_bytes(4, "big")
    drain(b"".join(frames), sizes, DEFAULT_MAX_FRAME)


# -- golden and malformed vectors ------------------------------------------------------------------------

GOLDEN = json.loads(fixtures.path("frames", "manifest.json").read_text())
MALFORMED = json.loads(fixtures.path("malformed", "manifest.json").read_text())


def test_golden_vectors_cover_every_message_type_and_record_kind() -> None:
    assert {entry["type"] for entry in GOLDEN} == {t.name for t in MessageType}
    kinds = {
        (entry["type"], record["kind"])
        for entry in GOLDEN
        for record in [c["record"] for c in entry["fields"].get("changes", [])] + entry["fields"].get("records", [])
    }
    assert {(t, k.name) for t in ("PUSH", "RECORDS") for k in RecordKind} <= kinds
    assert any(e["type"] == "BLOB_CHUNK" and len(e["fields"]["data"]) == 2 * 32768 for e in GOLDEN)


@pytest.mark.parametrize("entry", GOLDEN, ids=lambda e: e["file"])
def test_golden_vector_decodes_to_the_stated_values_and_re_encodes_identically(entry: dict[str, Any]) -> None:
    data = fixtures.path("frames", entry["file"]).read_bytes()
    frames = decode_all(data)
    assert len(frames) == 1
    frame = frames[0]
    assert frame.message.TYPE.name == entry["type"] == MessageType(entry["type_code"]).name
    assert frame.seq == entry["seq"]
    assert frame.size == entry["size"] == len(data)
    assert frame.message == message_from_json(entry["type"], entry["fields"])
    assert message_to_json(frame.message) == entry["fields"]
    assert encode_frame(frame.message, frame.seq) == data


@pytest.mark.parametrize("entry", MALFORMED, ids=lambda e: e["file"])
def test_malformed_vector_gives_its_error_code_and_offset(entry: dict[str, Any]) -> None:
    data = fixtures.path("malformed", entry["file"]).read_bytes()
    decoder = FrameDecoder()
    decoder.feed(data)
    decoder.feed(b"")
    frames: list[Frame] = []
    with pytest.raises(RemoteProtocolError) as info:
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert info.value.code is ErrorCode[entry["code"]]
    assert int(info.value.code) == entry["code_value"]
    assert info.value.offset == entry["offset"]
    assert len(frames) == entry["frames_before"]


@pytest.mark.parametrize("entry", MALFORMED, ids=lambda e: e["file"])
def test_malformed_vector_fed_byte_by_byte_gives_the_same_error(entry: dict[str, Any]) -> None:
    data = fixtures.path("malformed", entry["file"]).read_bytes()
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(data, chunks=[1] * len(data))
    assert info.value.code is ErrorCode[entry["code"]]
    assert info.value.offset == entry["offset"]


def test_malformed_manifest_covers_every_framing_and_payload_error() -> None:
    codes = {entry["code"] for entry in MALFORMED}
    expected = {
        "BAD_MAGIC", "BAD_VERSION", "BAD_CRC", "FRAME_TOO_LARGE", "UNKNOWN_TYPE", "BAD_FLAGS", "TRUNCATED",
        "MALFORMED_PAYLOAD", "TRAILING_BYTES", "BAD_FIELD",
    }
    assert expected <= codes


def test_committed_vectors_are_what_the_generator_makes() -> None:
    for relative, data in make_vectors.build().items():
        assert fixtures.path(relative).read_bytes() == data, f"{relative} differs: run python -m fixtures.make_vectors"
    on_disk = {f"{p.parent.name}/{p.name}" for folder in ("frames", "malformed") for p in fixtures.path(folder).iterdir()}
    assert on_disk == set(make_vectors.build())
