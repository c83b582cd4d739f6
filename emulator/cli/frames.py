"""``sidekick frames decode`` and ``sidekick frames encode``: protocol frames as text, JSON and bytes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.cli.common import CliError
from sidekick_testbed.emulator.frame_json import FrameJsonError, frame_from_json, frame_to_json
from sidekick_testbed.protocol.errors import ErrorCode, ProtocolError, RemoteProtocolError
from sidekick_testbed.protocol.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_LEN,
    TRAILER_LEN,
    Frame,
    FrameDecoder,
    encode_frame,
)
from sidekick_testbed.protocol.messages import Error
from sidekick_testbed.protocol.records import Record

READ_CHUNK = 65536
HEX_SHOWN = 32  # bytes of a long byte string shown in text output
_HEX_TEXT = re.compile(rb"[0-9A-Fa-f\s]*")


def register(subparsers: Any) -> None:
    """Add ``frames decode`` and ``frames encode``."""
    frames = subparsers.add_parser("frames", help="decode or encode protocol frames")
    actions = frames.add_subparsers(dest="frames_action", metavar="ACTION", required=True)

    decode = actions.add_parser(
        "decode",
        help="print the frames in a file (binary, or hex text)",
        description="Print each frame of FILE (binary frames, or the same as hex text; - reads standard "
        "input). A malformed frame ends the output with its error code and byte offset (exit 2).",
    )
    decode.add_argument("files", nargs="+", metavar="FILE", help="frame file, or - for standard input")
    decode.add_argument("--json", action="store_true", help="print one JSON object per frame")
    decode.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME, metavar="N",
                        help=f"largest frame accepted, in bytes (default {DEFAULT_MAX_FRAME})")
    decode.set_defaults(func=run_decode)

    encode = actions.add_parser(
        "encode",
        help="turn JSON frames into binary frames",
        description="Read frames as JSON (one object, a list, or one object per line: the output of "
        "'frames decode --json') and write them as binary frames (or hex with --hex).",
    )
    encode.add_argument("file", nargs="?", default="-", metavar="FILE", help="JSON input (default: stdin)")
    encode.add_argument("-o", "--output", default="-", metavar="OUT", help="output file (default: stdout)")
    encode.add_argument("--hex", action="store_true", help="write hex text, one frame per line")
    encode.set_defaults(func=run_encode)


# -- input ---------------------------------------------------------------------------------------------


def read_input(name: str) -> bytes:
    """The bytes of a file, or of standard input for ``-``; CliError if unreadable."""
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}") from None


def frame_bytes_of(data: bytes, name: str) -> bytes:
    """Binary frames as given, or decoded from hex text (whitespace allowed)."""
    if data.strip() and _HEX_TEXT.fullmatch(data):
        digits = re.sub(rb"\s+", b"", data)
        if len(digits) % 2:
            raise CliError(f"{name}: hex text has an odd number of digits")
        return bytes.fromhex(digits.decode("ascii"))
    return data


# -- decode --------------------------------------------------------------------------------------------


def run_decode(args: argparse.Namespace) -> int:
    """``sidekick frames decode``."""
    if args.max_frame < HEADER_LEN + TRAILER_LEN:
        raise CliError(f"--max-frame must be at least {HEADER_LEN + TRAILER_LEN}")
    inputs = [(name, frame_bytes_of(read_input(name), name)) for name in args.files]
    for name, data in inputs:
        if len(inputs) > 1 and not args.json:
            print(f"# {name}")
        error = decode_stream(data, max_frame=args.max_frame, as_json=args.json)
        if error is not None:
            sys.stdout.flush()
            where = f"{name}: " if len(inputs) > 1 else ""
            print(f"error: {where}{error}", file=sys.stderr)
            return 2
    return 0


def decode_stream(data: bytes, *, max_frame: int, as_json: bool) -> RemoteProtocolError | None:
    """Print every frame of ``data``; return the error that stopped decoding, if any."""
    decoder = FrameDecoder(max_frame)
    index = 0
    try:
        for start in range(0, len(data), READ_CHUNK):
            decoder.feed(data[start : start + READ_CHUNK])
            index = _print_frames(decoder, index, as_json)
        decoder.feed(b"")
        _print_frames(decoder, index, as_json)
    except RemoteProtocolError as exc:
        return exc
    return None


def _print_frames(decoder: FrameDecoder, index: int, as_json: bool) -> int:
    while True:
        offset = decoder.offset
        frame = decoder.next_frame()
        if frame is None:
            return index
        if as_json:
            print(json.dumps(frame_to_json(frame, offset=offset)))
        else:
            print("\n".join(describe_frame(frame, index, offset)))
        index += 1


def describe_frame(frame: Frame, index: int, offset: int) -> list[str]:
    """Readable lines for one frame: a title line, then its fields indented."""
    mtype = frame.message.TYPE
    lines = [
        f"frame {index} at byte {offset}: {mtype.name} (0x{mtype:02x}) seq={frame.seq} "
        f"version={frame.version} size={frame.size}"
    ]
    lines += _describe_fields(frame.message, "  ")
    return lines


def _describe_fields(obj: Any, indent: str) -> list[str]:
    lines: list[str] = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(obj, Error) and field.name == "code":
            name = ErrorCode(value).name if value in ErrorCode._value2member_map_ else "unknown"
            lines.append(f"{indent}code: 0x{value:04x} {name}")
        elif isinstance(value, Record):
            lines += _describe_record(value, f"{indent}{field.name}: ", indent + "  ")
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{indent}{field.name}: {len(value)} item(s)")
            for i, item in enumerate(value):
                if isinstance(item, Record):
                    lines += _describe_record(item, f"{indent}  [{i}] ", indent + "    ")
                else:
                    lines.append(f"{indent}  [{i}]")
                    lines += _describe_fields(item, indent + "    ")
        else:
            lines.append(f"{indent}{field.name}: {_scalar(value)}")
    return lines


def _describe_record(record: Record, title: str, indent: str) -> list[str]:
    tags = [record.body.KIND.name, f"id={record.record_id.hex()}", f"version={record.version}"]
    if record.deleted:
        tags.append("DELETED")
    if record.conflict_of:
        tags.append(f"conflict_of={record.conflict_of.hex()}")
    return [f"{title}{' '.join(tags)}"] + _describe_fields(record.body, indent)


def _scalar(value: Any) -> str:
    if isinstance(value, bytes):
        if len(value) > HEX_SHOWN:
            return f"{value[:HEX_SHOWN].hex()}... ({len(value)} bytes)"
        return value.hex() or '""'
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value).lower() if isinstance(value, bool) else str(value)


# -- encode --------------------------------------------------------------------------------------------


def parse_json_frames(text: str, name: str) -> list[Any]:
    """A list of frame objects from one object, a list, or one object per line."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    document.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CliError(f"{name}: line {number}: not JSON ({exc.msg})") from None
    return document if isinstance(document, list) else [document]


def run_encode(args: argparse.Namespace) -> int:
    """``sidekick frames encode``."""
    raw = read_input(args.file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{args.file}: not UTF-8 JSON text") from None
    frames: list[bytes] = []
    for i, obj in enumerate(parse_json_frames(text, args.file)):
        try:
            message, seq, version = frame_from_json(obj)
            frames.append(encode_frame(message, seq, version=version))
        except FrameJsonError as exc:
            raise CliError(f"frame {i}: {exc}") from None
        except ProtocolError as exc:
            raise CliError(f"frame {i}: {exc}") from None
    output = "".join(f.hex() + "\n" for f in frames).encode("ascii") if args.hex else b"".join(frames)
    if args.output == "-":
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    else:
        try:
            Path(args.output).write_bytes(output)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0
