"""Frame codec speed against a hand-written ``struct`` codec of the same frames, in the same run.

Cases: (a) a PING frame, (b) a PUSH of 50 contact records, (c) a 32 KiB BLOB_CHUNK. For each:
encode (message -> frame bytes) and decode (frame bytes -> Frame, through ``FrameDecoder``) in
operations and megabytes per second, the same for the baseline, and the ratio (ours / baseline
time per operation; 1.0 means as fast). construct's own compiled parser of the payload alone is
reported for reference. Prints one JSON object.

Usage: python benchmarks/codec.py [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import time
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

from sidekick_testbed.protocol import wire
from sidekick_testbed.protocol.framing import Frame, FrameDecoder, encode_frame
from sidekick_testbed.protocol.messages import BlobChunk, Change, Message, MessageType, Ping, Push
from sidekick_testbed.protocol.records import Contact, Record

# -- the baseline: a codec written by hand with struct, for exactly these three frames ---------------

HDR = struct.Struct(">2sBBHII")
CRC = struct.Struct(">I")
U16 = struct.Struct(">H")
U64 = struct.Struct(">Q")
CHANGE_HEAD = struct.Struct(">QQBB16sQB")
CHUNK_HEAD = struct.Struct(">16sQQI")


def base_frame(mtype: int, seq: int, payload: bytes) -> bytes:
    header = HDR.pack(b"SK", 1, mtype, 0, seq, len(payload))
    return b"".join((header, payload, CRC.pack(zlib.crc32(payload, zlib.crc32(header)))))


def base_open(data: bytes) -> tuple[int, memoryview]:
    magic, version, mtype, flags, seq, length = HDR.unpack_from(data)
    if magic != b"SK" or version != 1 or flags or 18 + length != len(data):
        raise ValueError("bad header")
    view = memoryview(data)
    if zlib.crc32(view[: 14 + length]) != CRC.unpack_from(data, 14 + length)[0]:
        raise ValueError("bad crc")
    return seq, view[14 : 14 + length]


def base_text(text: str) -> bytes:
    raw = text.encode()
    return U16.pack(len(raw)) + raw


def base_encode_ping(message: Ping, seq: int) -> bytes:
    return base_frame(0x40, seq, U64.pack(message.nonce))


def base_decode_ping(data: bytes) -> Frame:
    seq, payload = base_open(data)
    (nonce,) = U64.unpack_from(payload)
    return Frame(1, seq, 0, Ping(nonce), len(data))


def base_encode_push(message: Push, seq: int) -> bytes:
    parts = [U16.pack(len(message.changes))]
    for change in message.changes:
        record = change.record
        body = record.body
        assert isinstance(body, Contact)
        parts.append(CHANGE_HEAD.pack(change.lsn, change.base_version, 1, int(record.deleted),
                                      record.record_id, record.version, len(record.conflict_of)))
        parts.append(record.conflict_of)
        parts.append(base_text(body.name))
        parts.append(U16.pack(len(body.phones)))
        parts.extend(base_text(p) for p in body.phones)
        parts.append(U16.pack(len(body.emails)))
        parts.extend(base_text(e) for e in body.emails)
    return base_frame(0x10, seq, b"".join(parts))


def base_read_texts(buf: memoryview, pos: int) -> tuple[tuple[str, ...], int]:
    (count,) = U16.unpack_from(buf, pos)
    pos += 2
    items = []
    for _ in range(count):
        (n,) = U16.unpack_from(buf, pos)
        items.append(str(buf[pos + 2 : pos + 2 + n], "utf-8"))
        pos += 2 + n
    return tuple(items), pos


def base_decode_push(data: bytes) -> Frame:
    seq, buf = base_open(data)
    (count,) = U16.unpack_from(buf)
    pos = 2
    changes = []
    for _ in range(count):
        lsn, base, _kind, flags, rid, version, clen = CHANGE_HEAD.unpack_from(buf, pos)
        pos += CHANGE_HEAD.size
        conflict_of = bytes(buf[pos : pos + clen])
        pos += clen
        (n,) = U16.unpack_from(buf, pos)
        name = str(buf[pos + 2 : pos + 2 + n], "utf-8")
        pos += 2 + n
        phones, pos = base_read_texts(buf, pos)
        emails, pos = base_read_texts(buf, pos)
        changes.append(Change(lsn, base, Record(rid, version, flags == 1, Contact(name, phones, emails),
                                                conflict_of)))
    return Frame(1, seq, 0, Push(tuple(changes)), len(data))


def base_encode_chunk(message: BlobChunk, seq: int) -> bytes:
    head = CHUNK_HEAD.pack(message.blob_id, message.offset, message.total, len(message.data))
    return base_frame(0x31, seq, head + message.data)


def base_decode_chunk(data: bytes) -> Frame:
    seq, buf = base_open(data)
    blob_id, offset, total, n = CHUNK_HEAD.unpack_from(buf)
    chunk = BlobChunk(blob_id, offset, total, bytes(buf[CHUNK_HEAD.size : CHUNK_HEAD.size + n]))
    return Frame(1, seq, 0, chunk, len(data))


# -- measurement -------------------------------------------------------------------------------------


def _calibrate(func: Callable[[], object], seconds: float) -> int:
    """Calls per run so that one run lasts about ``seconds``."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            func()
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            return max(1, int(seconds * number / elapsed))
        number *= 4


def rates(funcs: list[Callable[[], object]], seconds: float, rounds: int = 5) -> list[float]:
    """Best operations per second of each function; runs alternate, so load affects all alike."""
    runs = [_calibrate(func, seconds / rounds) for func in funcs]
    best = [0.0] * len(funcs)
    for _ in range(rounds):
        for i, (func, number) in enumerate(zip(funcs, runs, strict=True)):
            start = time.perf_counter()
            for _ in range(number):
                func()
            best[i] = max(best[i], number / (time.perf_counter() - start))
    return best


def figures(ops: float, size: int) -> dict[str, float]:
    return {"ops_per_s": round(ops, 1), "mb_per_s": round(ops * size / 1e6, 2)}


def cases() -> dict[str, tuple[Message, Callable[[Any, int], bytes], Callable[[bytes], Frame]]]:
    contacts = tuple(
        Change(1000 + i, i, Record(i.to_bytes(16, "big"), 0, False,
                                   Contact(f"Contact {i:02d}", (f"+1 555 01{i:02d}",), (f"c{i}@example.org",))))
        for i in range(50)
    )
    chunk = BlobChunk(b"\xb1" * 16, 65536, 1 << 20, bytes(range(256)) * 128)
    return {
        "ping": (Ping(0x0123456789ABCDEF), base_encode_ping, base_decode_ping),
        "push_50_contacts": (Push(contacts), base_encode_push, base_decode_push),
        "blob_chunk_32k": (chunk, base_encode_chunk, base_decode_chunk),
    }


def measure(seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, (message, base_encode, base_decode) in cases().items():
        frame = encode_frame(message, 7)
        assert base_encode(message, 7) == frame, f"{name}: baseline and codec disagree"
        assert base_decode(frame) == Frame(1, 7, 0, message, len(frame))
        decoder = FrameDecoder(max_frame=1 << 20)

        def ours_decode(decoder: FrameDecoder = decoder, frame: bytes = frame) -> object:
            decoder.feed(frame)
            return decoder.next_frame()

        assert ours_decode() == base_decode(frame)
        payload = frame[14:-4]
        reference = wire.compiled(MessageType(message.TYPE))
        size = len(frame)
        enc, base_enc = rates([partial(encode_frame, message, 7), partial(base_encode, message, 7)], seconds)
        dec, base_dec, construct_parse = rates(
            [ours_decode, partial(base_decode, frame), partial(reference.parse, payload)], seconds
        )
        ours = {"encode": enc, "decode": dec}
        base = {"encode": base_enc, "decode": base_dec}
        results[name] = {
            "frame_bytes": size,
            "codec": {op: figures(ops, size) for op, ops in ours.items()},
            "baseline_struct": {op: figures(ops, size) for op, ops in base.items()},
            "ratio_time_vs_baseline": {op: round(base[op] / ours[op], 2) for op in ours},
            "construct_compiled_parse_payload_only": figures(construct_parse, len(payload)),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measured function")
    args = parser.parse_args(argv)
    results = measure(args.seconds)
    chunk = results["blob_chunk_32k"]["codec"]
    report = {
        "benchmark": "frame codec vs hand-written struct codec",
        "python": platform.python_version(),
        "cases": results,
        "goals": {
            "within_3x_of_baseline": all(
                r <= 3.0 for case in results.values() for r in case["ratio_time_vs_baseline"].values()
            ),
            "blob_chunk_at_least_50_mb_per_s": min(chunk["encode"]["mb_per_s"], chunk["decode"]["mb_per_s"])
            >= 50.0,
        },
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
