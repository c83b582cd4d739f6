"""The golden vectors against a decoder written from docs/PROTOCOL.md with ``struct`` alone.

Every golden frame decodes with the independent decoder to the same fields as with the project's
decoder, and agrees with the spec's formulas (copy ids, the conflict rules' version numbering,
R-LIMIT-5); every malformed vector fails the independent decoder with the manifest's code at the
manifest's offset; the spec's own examples (section 7's MACs, section 13's copy id, section 19's
frames) decode and verify.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest

from sidekick_testbed.protocol.errors import RemoteProtocolError
from sidekick_testbed.protocol.framing import FrameDecoder
from sidekick_testbed.protocol.records import Record
from tests.independent_codec import KINDS, SpecError, copy_id, decode_frame

ROOT = Path(__file__).resolve().parent.parent
FRAMES = ROOT / "fixtures" / "frames"
MALFORMED = ROOT / "fixtures" / "malformed"
SPEC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
GOLDEN = sorted(FRAMES.glob("*.bin"))


def _independent(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    frame, size = decode_frame(data)
    assert size == len(data), f"{path.name}: {len(data) - size} bytes after the frame"
    return frame


def _plain(value: Any) -> Any:
    """The project's decoded message in the independent decoder's shape."""
    if isinstance(value, Record):
        body = {f.name: _plain(getattr(value.body, f.name)) for f in dataclasses.fields(value.body)}
        return {"kind": KINDS[int(value.kind)], "deleted": value.deleted, "record_id": value.record_id,
                "version": value.version, "conflict_of": value.conflict_of, "body": body}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def test_there_are_golden_vectors_of_every_message_type() -> None:
    kinds = {_independent(path)["type"] for path in GOLDEN}
    assert len(GOLDEN) >= 31 and len(kinds) == 20


@pytest.mark.parametrize("path", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden_vector_decodes_alike_with_both_decoders(path: Path) -> None:
    mine = _independent(path)
    decoder = FrameDecoder()
    decoder.feed(path.read_bytes())
    decoder.feed(b"")
    frame = decoder.next_frame()
    assert frame is not None and decoder.next_frame() is None
    assert (frame.message.TYPE.name, frame.seq, frame.version) == (mine["type"], mine["seq"], mine["version"])
    assert _plain(frame.message) == mine["fields"]
    entry = next(e for e in json.loads((FRAMES / "manifest.json").read_text()) if e["file"] == path.name)
    assert (entry["type"], entry["seq"], entry["size"]) == (mine["type"], mine["seq"], path.stat().st_size)


def _by_type() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in GOLDEN:
        frame = _independent(path)
        found.setdefault(frame["type"], []).append(frame["fields"])
    return found


def test_golden_vectors_follow_the_spec_formulas() -> None:
    messages = _by_type()
    for challenge in messages["CHALLENGE"]:  # R-LIMIT-5, R-LIMIT-1
        assert 1024 <= challenge["max_frame"] <= 1 << 20
        assert 36 + 32 * challenge["max_batch"] <= challenge["max_frame"]
    conflicts = messages["CONFLICT"]
    assert conflicts
    for conflict in conflicts:  # R-CONFLICT-2
        assert conflict["copy_id"] == copy_id(conflict["record_id"], conflict["server_version"])
    pulled = [r for records in messages["RECORDS"] for r in records["records"]]
    for records in messages["RECORDS"]:  # R-PULL-2: increasing server versions
        versions = [r["version"] for r in records["records"]]
        assert versions == sorted(set(versions))
    copies = [r for r in pulled if r["conflict_of"]]
    assert copies
    for copy in copies:  # a conflict copy's id is the formula's for some overwritten version below its own
        overwritten = [v for v in range(copy["version"]) if copy_id(copy["conflict_of"], v) == copy["record_id"]]
        assert len(overwritten) == 1, f"{copy['record_id'].hex()} is no copy id of {copy['conflict_of'].hex()}"
    for conflict in conflicts:  # rule 4: the change gets V, the copy V + 1, with H's version in CONFLICT
        v = next(a["version"] for d in messages["DURABLE"] for a in d["assigned"]
                 if (a["lsn"], a["record_id"]) == (conflict["lsn"], conflict["record_id"]))
        copy = next(r for r in pulled if r["record_id"] == conflict["copy_id"])
        assert copy["conflict_of"] == conflict["record_id"] and copy["version"] == v + 1
        assert conflict["server_version"] < v
    for durable in messages["DURABLE"]:  # R-DUR-4, R-DUR-6
        assert all(a["lsn"] <= durable["durable_lsn"] for a in durable["assigned"])
        assert len({a["version"] for a in durable["assigned"]}) == len(durable["assigned"])
    photos = {r["body"]["blob_id"]: r["body"] for r in pulled if r["kind"] == "PHOTO"}
    for chunk in messages["BLOB_CHUNK"]:  # R-BLOB-3, R-BLOB-4
        assert 54 + len(chunk["data"]) <= 65536
        if chunk["blob_id"] in photos:
            assert chunk["total"] == photos[chunk["blob_id"]]["size"]


def _stream_error(data: bytes) -> tuple[str, int, int]:
    """Decode frame after frame until the first error: its code, offset and the frames before it."""
    offset = count = 0
    while offset < len(data):
        try:
            _, size = decode_frame(data[offset:])
        except SpecError as exc:
            return exc.code, offset, count
        offset += size
        count += 1
    raise AssertionError("no error in a malformed vector")


@pytest.mark.parametrize("entry", json.loads((MALFORMED / "manifest.json").read_text()), ids=lambda e: e["file"])
def test_malformed_vector_fails_the_independent_decoder_as_the_manifest_says(entry: dict[str, Any]) -> None:
    data = (MALFORMED / entry["file"]).read_bytes()
    assert _stream_error(data) == (entry["code"], entry["offset"], entry["frames_before"])
    decoder = FrameDecoder()
    decoder.feed(data)
    decoder.feed(b"")
    with pytest.raises(RemoteProtocolError) as info:
        while decoder.next_frame() is not None:
            pass
    assert info.value.code.name == entry["code"]


def _spec_hex(label: str) -> bytes:
    """A frame of section 19's listing, joined across its continuation line."""
    match = re.search(rf"^[DS]> {label} +([0-9a-f]+)(?:\n +([0-9a-f]+))?", SPEC, re.M)
    assert match is not None, label
    return bytes.fromhex(match.group(1) + (match.group(2) or ""))


def test_the_specs_own_examples_hold() -> None:
    import zlib

    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert copy_id(b"\xaa" * 16, 1).hex() == "27b4a4d03fe66889c51d7a24eaa4bdef"
    assert "`27b4a4d03fe66889c51d7a24eaa4bdef`" in SPEC
    transcript = b"".join(len(x).to_bytes(4, "big") + x for x in (
        b"sidekick/v1/auth/device", b"\x11" * 16, b"\x22" * 16, b"alice", bytes(range(16)), b"\x5e" * 16))
    device = hmac.new(b"\x42" * 32, transcript, "sha256").hexdigest()
    server = hmac.new(b"\x42" * 32, transcript.replace(b"auth/device", b"auth/server"), "sha256").hexdigest()
    assert f"device_mac = {device}" in SPEC and f"server_mac = {server}" in SPEC
    frames = {label: decode_frame(_spec_hex(label))[0] for label in (
        "CHALLENGE", "AUTH", "HELLO_OK", "PUSH_ACK", "COMMIT", "DURABLE", "PULL", "RECORDS", "PULL_END",
        "PULL_ACK", "BYE")}
    assert frames["AUTH"]["fields"]["mac"].hex() == device
    assert frames["HELLO_OK"]["fields"]["server_mac"].hex() == server
    assert frames["DURABLE"]["fields"]["assigned"] == [{"lsn": 42, "record_id": b"\xaa" * 16, "version": 1}]
    assert [f["seq"] for f in frames.values()] == [0, 1, 1, 2, 3, 3, 4, 4, 5, 5, 6]
