"""``sidekick frames decode`` / ``encode``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fixtures
import sidekick_testbed.emulator.cli
from sidekick_testbed.protocol.framing import FrameDecoder, encode_frame
from sidekick_testbed.protocol.messages import Error, Message, Ping
from tests.strategies import messages

GOLDEN = json.loads(fixtures.path("frames", "manifest.json").read_text())
MALFORMED = json.loads(fixtures.path("malformed", "manifest.json").read_text())


@pytest.fixture(autouse=True)
def frames_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the real ``sidekick`` entry point with only the command group under test loaded."""
    monkeypatch.setattr(sidekick_testbed.emulator.cli, "COMMAND_MODULES", ("sidekick_testbed.emulator.cli.frames",))


def sidekick(*argv: str) -> int:
    return sidekick_testbed.emulator.cli.main(list(argv))


def set_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def capture_binary_stdout(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, write_through=True))
    return raw


def test_decode_prints_one_block_per_frame(capsys: pytest.CaptureFixture[str]) -> None:
    push = next(e for e in GOLDEN if e["type"] == "PUSH")
    assert sidekick("frames", "decode", str(fixtures.path("frames", push["file"]))) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"frame 0 at byte 0: PUSH (0x10) seq={push['seq']} version=1 size={push['size']}"
    assert "  changes: 2 item(s)" in lines
    assert any("record: CONTACT id=" in line and "version=3" in line for line in lines)
    assert any("record: NOTE" in line and "DELETED" in line for line in lines)
    assert '        name: "Ada Lovelace"' in lines


def test_decode_shows_error_code_names_and_long_bytes_shortened(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(fixtures.path("frames", e["file"])) for e in GOLDEN if e["type"] in ("ERROR", "BLOB_CHUNK")]
    assert sidekick("frames", "decode", *files) == 0
    out = capsys.readouterr().out
    assert "  code: 0x0401 BATCH_TOO_LARGE" in out
    assert "... (32768 bytes)" in out
    assert out.count("# ") == len(files)


def test_decode_reads_hex_text_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = encode_frame(Ping(7), 0) + encode_frame(Error(0x0103, True, "x"), 1)
    hex_text = data.hex()
    spaced = " ".join(hex_text[i : i + 8] for i in range(0, len(hex_text), 8)) + "\n"
    set_stdin(monkeypatch, spaced.encode())
    assert sidekick("frames", "decode", "-") == 0
    out = capsys.readouterr().out
    assert "frame 0 at byte 0: PING (0x40) seq=0" in out
    assert "frame 1 at byte 26: ERROR (0x7e) seq=1" in out


def test_odd_hex_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    set_stdin(monkeypatch, b"534b0")
    assert sidekick("frames", "decode", "-") == 2
    assert capsys.readouterr().err == "sidekick: error: -: hex text has an odd number of digits\n"


@pytest.mark.parametrize("entry", MALFORMED, ids=lambda e: e["file"])
def test_malformed_input_prints_frames_then_the_error(entry: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    path = fixtures.path("malformed", entry["file"])
    assert sidekick("frames", "decode", str(path)) == 2
    captured = capsys.readouterr()
    assert captured.out.count("frame ") == entry["frames_before"]
    code_value = entry["code_value"]
    assert captured.err.startswith(f"error: {entry['code']} (0x{code_value:04x}) at byte {entry['offset']}: ")
    assert len(captured.err.splitlines()) == 1


def test_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert sidekick("frames", "decode", str(tmp_path / "nope.bin")) == 2
    err = capsys.readouterr().err
    assert err.startswith("sidekick: error: cannot read ") and err.count("\n") == 1


def test_max_frame_option(capsys: pytest.CaptureFixture[str]) -> None:
    chunk = next(e for e in GOLDEN if e["size"] > 32768)
    path = str(fixtures.path("frames", chunk["file"]))
    assert sidekick("frames", "decode", "--max-frame", "1024", path) == 2
    assert capsys.readouterr().err.startswith("error: FRAME_TOO_LARGE (0x0104) at byte 0: ")
    assert sidekick("frames", "decode", "--max-frame", "3", path) == 2
    assert "--max-frame" in capsys.readouterr().err


def test_decode_json_lines_match_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(fixtures.path("frames", e["file"])) for e in GOLDEN]
    assert sidekick("frames", "decode", "--json", *files) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["fields"] for o in objects] == [e["fields"] for e in GOLDEN]
    assert [(o["type"], o["seq"], o["size"]) for o in objects] == [(e["type"], e["seq"], e["size"]) for e in GOLDEN]


def test_decode_json_then_encode_gives_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    files = [fixtures.path("frames", e["file"]) for e in GOLDEN]
    assert sidekick("frames", "decode", "--json", *map(str, files)) == 0
    json_lines = capsys.readouterr().out
    source = tmp_path / "frames.jsonl"
    source.write_text(json_lines)
    out = tmp_path / "frames.bin"
    assert sidekick("frames", "encode", str(source), "-o", str(out)) == 0
    assert out.read_bytes() == b"".join(f.read_bytes() for f in files)
    set_stdin(monkeypatch, json_lines.encode())
    raw = capture_binary_stdout(monkeypatch)
    assert sidekick("frames", "encode", "--hex") == 0
    assert raw.getvalue().decode().split() == [f.read_bytes().hex() for f in files]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
@given(batch=st.lists(messages(), min_size=1, max_size=3))
def test_any_frames_round_trip_through_json(
    batch: list[Message], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = b"".join(encode_frame(m, seq) for seq, m in enumerate(batch))
    set_stdin(monkeypatch, data)
    assert sidekick("frames", "decode", "--json", "-") == 0
    json_text = capsys.readouterr().out
    set_stdin(monkeypatch, json.dumps([json.loads(line) for line in json_text.splitlines()]).encode())
    out = tmp_path / "out.bin"
    assert sidekick("frames", "encode", "-o", str(out)) == 0
    assert out.read_bytes() == data


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"seq": 0, "type": "NOPE"}', "unknown message type 'NOPE'"),
        ('{"seq": 0, "type": "PING", "fields": {}}', "PING: missing field nonce"),
        ('{"seq": 0, "type": "PING", "fields": {"nonce": "1"}}', "PING.nonce: expected an integer"),
        ('{"seq": 0, "type": "PING", "fields": {"nonce": 1, "x": 2}}', "unknown field(s) x"),
        ('{"seq": 0, "type": "PING", "fields": {"nonce": -1}}', "BAD_FIELD"),
        ('{"seq": -1, "type": "PING", "fields": {"nonce": 1}}', "sequence number -1 out of range"),
        ('{"seq": 0, "type": "BLOB_QUERY", "fields": {"blob_id": "zz"}}', "not a hex string"),
        ('{"seq": 0, "type": "PUSH", "fields": {"changes": [{"lsn": 1, "base_version": 0, "record": '
         '{"record_id": "00", "version": 0, "deleted": false, "kind": "FAX", "body": {}}}]}}',
         "unknown record kind 'FAX'"),
        ("not json at all", "line 1: not JSON"),
    ],
)
def test_encode_rejects_bad_json_in_one_line(
    document: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.json"
    source.write_text(document)
    assert sidekick("frames", "encode", str(source), "-o", str(tmp_path / "out.bin")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("sidekick: error: ")
    assert not (tmp_path / "out.bin").exists()


def test_encoded_output_decodes(tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text('{"seq": 5, "type": "BYE", "fields": {"reason": "done"}}')
    out = tmp_path / "out.bin"
    assert sidekick("frames", "encode", str(source), "-o", str(out)) == 0
    decoder = FrameDecoder()
    decoder.feed(out.read_bytes())
    frame = decoder.next_frame()
    assert frame is not None and frame.seq == 5 and frame.message.TYPE.name == "BYE"


def test_console_script_prints_no_traceback_on_a_malformed_frame() -> None:
    path = fixtures.path("malformed", "06-bad-crc.bin")
    result = subprocess.run(
        [sys.executable, "-m", "sidekick_testbed.emulator", "frames", "decode", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == "error: BAD_CRC (0x0103) at byte 26: CRC-32 mismatch\n"
    assert result.stdout.startswith("frame 0 at byte 0: PING (0x40)")
