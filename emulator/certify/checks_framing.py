"""Checks of framing and malformed input: the malformed vectors (``emulator.certify.malformed``,
also written to fixtures/malformed for the decoder tests) plus generated ones.

The fixture vectors are decoder vectors; here each bad frame is re-numbered to the session's next
sequence number (keeping its CRC valid, or wrong, as it was) and sent in READY, where the server
must answer with exactly the vector's error code (the header, CRC and payload checks come before
the sequence and state checks). Generated inputs take their expected code from the reference
decoder (``protocol.framing.FrameDecoder``), which applies the checks in the spec's order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from sidekick_testbed.emulator.certify.answers import expect_closed, expect_error, show
from sidekick_testbed.emulator.certify.changes import note_change
from sidekick_testbed.emulator.certify.client import CLOSED, Client, HttpRefusal, Received
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import CheckFunc, check
from sidekick_testbed.emulator.certify.malformed import malformed
from sidekick_testbed.emulator.certify.verdicts import Fail, Level, Need, expect
from sidekick_testbed.protocol.errors import ErrorCode, RemoteProtocolError
from sidekick_testbed.protocol.framing import HEADER_LEN, TRAILER_LEN, FrameDecoder, encode_frame
from sidekick_testbed.protocol.messages import Error, Ping, Pong, Pull, PullAck, PullEnd, Push

CODE_REQUIREMENTS: dict[ErrorCode, tuple[str, ...]] = {
    ErrorCode.BAD_MAGIC: ("R-FRAME-1",),
    ErrorCode.BAD_VERSION: ("R-FRAME-2", "R-VER-5"),
    ErrorCode.UNKNOWN_TYPE: ("R-FRAME-3",),
    ErrorCode.BAD_FLAGS: ("R-FRAME-4",),
    ErrorCode.FRAME_TOO_LARGE: ("R-FRAME-5",),
    ErrorCode.BAD_CRC: ("R-FRAME-6",),
    ErrorCode.BAD_SEQUENCE: ("R-FRAME-8",),
    ErrorCode.TRUNCATED: ("R-FRAME-10",),
    ErrorCode.MALFORMED_PAYLOAD: ("R-ENC-2",),
    ErrorCode.TRAILING_BYTES: ("R-ENC-2",),
    ErrorCode.BAD_FIELD: ("R-ENC-1", "R-REC-1", "R-MSG-2"),
}


@dataclass(frozen=True, slots=True)
class Vector:
    """One malformed-input vector (named as its file in fixtures/malformed)."""

    name: str
    data: bytes
    code: ErrorCode
    offset: int
    description: str


def load_vectors() -> list[Vector]:
    """The malformed vectors, numbered as their files are."""
    return [Vector(f"{number:02d}-{bad.name}", bad.data, bad.code, bad.offset, bad.description)
            for number, bad in enumerate(malformed(), 1)]


def resequence(frame: bytes, seq: int) -> bytes:
    """``frame`` (possibly partial, possibly followed by more bytes) with header seq ``seq``.

    A CRC that was right stays right, a wrong one stays wrong; a partial header keeps its bytes.
    """
    if len(frame) < 10:
        return frame
    out = bytearray(frame)
    out[6:10] = seq.to_bytes(4, "big")
    if len(frame) >= HEADER_LEN:
        length = int.from_bytes(frame[10:14], "big")
        end = HEADER_LEN + length
        if end + TRAILER_LEN <= len(frame):
            was_right = zlib.crc32(frame[:end]) == int.from_bytes(frame[end:end + TRAILER_LEN], "big")
            crc = zlib.crc32(bytes(out[:end])) ^ (0 if was_right else 1)
            out[end:end + TRAILER_LEN] = crc.to_bytes(4, "big")
    return bytes(out)


def reference_verdict(data: bytes, max_frame: int) -> ErrorCode | None:
    """The error the reference decoder finds in ``data`` followed by EOF (None: all frames valid)."""
    decoder = FrameDecoder(max_frame)
    try:
        decoder.feed(data)
        decoder.feed(b"")
        while decoder.next_frame() is not None:
            pass
    except RemoteProtocolError as exc:
        return exc.code
    return None


async def _error_then_close(client: Client, code: ErrorCode, req: str, doing: str) -> None:
    if code is ErrorCode.TRUNCATED and not client.http:
        got = await client.receive()
        if got is CLOSED:
            return
        if not isinstance(got, Error) or got.code != code:
            raise Fail(f"{doing}: expected ERROR TRUNCATED or a close ({req}), got {show(got)}")
        await expect_closed(client, req)
        return
    await expect_error(client, code, req, doing)
    await expect_closed(client, "R-ERR-3")


def _register_vector(vector: Vector) -> None:
    reqs = (*CODE_REQUIREMENTS.get(vector.code, ("R-ERR-3",)), "R-ERR-3", "R-ERR-1", "R-TCP-4", "R-HTTP-12",
            "R-CONFORM-2")

    async def run(ctx: CheckContext) -> None:
        session = await ctx.session()
        data = resequence(vector.data[vector.offset:], session.client.next_seq)
        await session.client.send_raw(data, f"malformed vector {vector.name}: {vector.description}")
        await session.client.send_eof()
        await _error_then_close(session.client, vector.code, reqs[0], f"vector {vector.name} ({vector.description})")

    func: CheckFunc = run
    check(f"malformed-{vector.name}", f"Malformed input in READY ({vector.description}) gets {vector.code.name}",
          requirements=reqs, level=Level.MUST, group="malformed")(func)


VECTORS = load_vectors()
for _vector in VECTORS:
    _register_vector(_vector)


@check("malformed-before-hello", "Every malformed vector as the first bytes of a connection gets an ERROR or a close",
       requirements=("R-CONFORM-2", "R-ERR-3", "R-STATE-3"), level=Level.MUST, group="malformed", needs=())
async def malformed_before_hello(ctx: CheckContext) -> None:
    for vector in VECTORS:
        client = await ctx.connect()
        await client.send_raw(vector.data, f"vector {vector.name} before HELLO")
        await client.send_eof()
        got = await client.receive()
        _allowed_first_answer(got, f"vector {vector.name} before HELLO")
        if isinstance(got, Error):
            await expect_closed(client, "R-ERR-3")
        await client.aclose()


def _allowed_first_answer(got: Received, doing: str) -> None:
    if got is CLOSED:
        return
    if isinstance(got, HttpRefusal):
        expect(400 <= got.status < 500, f"{doing}: HTTP {got.status}")
        return
    if not isinstance(got, Error):
        raise Fail(f"{doing}: got {show(got)}; only a fatal ERROR or a close may answer (R-ERR-3, R-STATE-3)")
    expect(got.fatal, f"{doing}: {show(got)} must be fatal (R-ERR-3)")


@check("malformed-generated", "Seeded corruptions of valid frames get the reference decoder's error code",
       requirements=("R-FRAME-6", "R-FRAME-5", "R-FRAME-1", "R-ERR-3", "R-CONFORM-2"), level=Level.MUST,
       group="malformed")
async def malformed_generated(ctx: CheckContext) -> None:
    rng = ctx.rng
    cases = 8
    for index in range(cases):
        session = await ctx.session()
        client = session.client
        seq = client.next_seq
        lsn = session.device.lsn()
        frame = bytearray(encode_frame(Push((note_change(lsn, ctx.new_id(), f"certify: corrupt {index}"),)), seq))
        kind = index % 4
        if kind == 3:
            data = bytes(rng.randbytes(rng.randrange(1, 2048)))
            what = f"{len(data)} random bytes"
        else:
            region = (0, HEADER_LEN) if kind == 0 else (HEADER_LEN, len(frame))
            bit = rng.randrange(region[0] * 8, region[1] * 8)
            frame[bit // 8] ^= 1 << (bit % 8)
            data = bytes(frame)
            what = f"a PUSH frame with bit {bit} flipped"
        verdict = reference_verdict(data, client.max_frame)
        await client.send_raw(data, what)
        await client.send_eof()
        if verdict is None:
            got = await client.receive()
            expect(not isinstance(got, Error) or not got.fatal or got.code != ErrorCode.INTERNAL,
                   f"{what}: {show(got)}")
        else:
            await _error_then_close(client, verdict, CODE_REQUIREMENTS.get(verdict, ("R-ERR-3",))[0], what)
        await client.aclose()
    after = await ctx.session()
    await after.ping()
    await after.bye()


async def _refused_seq(ctx: CheckContext, delta: int, what: str) -> None:
    session = await ctx.session()
    client = session.client
    await session.ping(1)
    await client.send(Ping(2), seq=client.next_seq + delta)
    await _error_then_close(client, ErrorCode.BAD_SEQUENCE, "R-FRAME-8", what)


@check("bad-sequence-gap", "A frame numbered one too high gets BAD_SEQUENCE",
       requirements=("R-FRAME-8", "R-ERR-3"), level=Level.MUST, group="framing")
async def bad_sequence_gap(ctx: CheckContext) -> None:
    await _refused_seq(ctx, 1, "a PING skipping one sequence number")


@check("bad-sequence-repeat", "A frame repeating the previous sequence number gets BAD_SEQUENCE",
       requirements=("R-FRAME-8", "R-ERR-3"), level=Level.MUST, group="framing")
async def bad_sequence_repeat(ctx: CheckContext) -> None:
    await _refused_seq(ctx, -1, "a PING repeating the previous sequence number")


@check("split-and-joined-frames", "Frames split across writes, and two frames in one write, are read correctly",
       requirements=("R-TCP-2",), level=Level.MUST, group="framing", needs=(Need.SESSION, Need.TCP))
async def split_and_joined(ctx: CheckContext) -> None:
    session = await ctx.session()
    client = session.client
    frame = encode_frame(Ping(77), client.next_seq)
    client.next_seq += 1
    await client.write_slowly(frame, chunk=1, delay=0.002)
    pong = await client.receive()
    expect(isinstance(pong, Pong) and pong.nonce == 77, f"a PING written byte by byte got {show(pong)} (R-TCP-2)")
    await client.send(Pull(session.hello_ok.anchor, 1))
    end = None
    while end is None:
        got = await client.receive()
        if isinstance(got, PullEnd):
            end = got
        elif isinstance(got, Error) or got is CLOSED:
            raise Fail(f"PULL: expected RECORDS/BLOB_CHUNK/PULL_END, got {show(got)} (R-PULL-1)")
    joined = encode_frame(PullAck(end.anchor), client.next_seq) + encode_frame(Ping(78), client.next_seq + 1)
    client.next_seq += 2
    await client.send_raw(joined, "PULL_ACK and PING in one write")
    pong = await client.receive()
    expect(isinstance(pong, Pong) and pong.nonce == 78, f"PULL_ACK+PING in one write got {show(pong)} (R-TCP-2)")
    await session.bye()


@check("early-header-reject", "A bad magic or type is refused as soon as its byte arrives",
       requirements=("R-FRAME-11",), level=Level.SHOULD, group="framing", needs=(Need.SESSION, Need.TCP))
async def early_header_reject(ctx: CheckContext) -> None:
    for prefix, code in ((b"SX", ErrorCode.BAD_MAGIC), (b"SK\x01\x55", ErrorCode.UNKNOWN_TYPE)):
        session = await ctx.session()
        await session.client.send_raw(prefix, f"only {len(prefix)} bytes of a header")
        await expect_error(session.client, code, "R-FRAME-11", f"a header cut after {prefix!r}")
        await session.client.aclose()
