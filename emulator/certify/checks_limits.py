"""Checks of limits: an oversized frame, a slow peer or many stalled sessions must not harm others."""

from __future__ import annotations

import trio

from sidekick_testbed.emulator.certify.answers import Refused, show
from sidekick_testbed.emulator.certify.changes import note_change
from sidekick_testbed.emulator.certify.client import Client, open_stream
from sidekick_testbed.emulator.certify.context import CheckContext, Session
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Fail, Level
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.http_common import FRAMES_CONTENT_TYPE
from sidekick_testbed.protocol.messages import Error, Hello, HelloOk, Pull, Records


async def _useful_work(ctx: CheckContext, session: Session, label: str) -> None:
    """A full push, commit and pull on ``session``: what other sessions must not prevent."""
    change = note_change(session.device.lsn(), ctx.new_id(), f"certify: {label}")
    await session.push_commit([change])
    await session.ping()


@check("limit-oversized-isolated", "A frame over the limit ends only its own session",
       requirements=("R-TCP-6", "R-FRAME-5", "R-LIMIT-11"), level=Level.MUST, group="limits")
async def limit_oversized_isolated(ctx: CheckContext) -> None:
    bystander = await ctx.session(label="bystander")
    offender = await ctx.session(label="offender")
    header = b"SK\x01\x10\x00\x00" + offender.client.next_seq.to_bytes(4, "big") + (1 << 24).to_bytes(4, "big")
    await offender.client.send_raw(header, "a PUSH header announcing a 16 MiB payload")
    await offender.expect_error(ErrorCode.FRAME_TOO_LARGE, "R-FRAME-5", "an oversized frame header")
    await _useful_work(ctx, bystander, "bystander of an oversized frame")
    await bystander.bye()


@check("limit-record-too-large", "A record that does not fit the device's frame is refused with FRAME_TOO_LARGE, "
       "never split", requirements=("R-LIMIT-6", "R-REC-5"), level=Level.MUST, group="limits")
async def limit_record_too_large(ctx: CheckContext) -> None:
    writer = await ctx.session(label="writer")
    change = note_change(writer.device.lsn(), ctx.new_id(), "certify: 3 KB note", text="x" * 3000)
    _, durable = await writer.push_commit([change])
    version = next(a.version for a in durable.assigned if a.lsn == change.lsn)
    await writer.bye()
    reader = await ctx.session(max_frame=1024, label="reader")
    await reader.client.send(Pull(version - 1, 1))
    got = await reader.receive()
    if isinstance(got, Records) and all(r.record_id != change.record.record_id for r in got.records):
        got = await reader.receive()  # a pull may start with another record of the account
    if not isinstance(got, Error) or got.code != ErrorCode.FRAME_TOO_LARGE or not got.fatal:
        raise Fail(f"a pull of a 3 KB record by a device that negotiated max_frame 1024 got {show(got)}; the server "
                   "cannot send it whole, so it must send a fatal FRAME_TOO_LARGE (R-LIMIT-6, R-REC-5)")


@check("limit-slow-peer", "A peer trickling its first bytes does not hold up other sessions",
       requirements=("R-TCP-6", "R-LIMIT-7", "R-LIMIT-11"), level=Level.MUST, group="limits")
async def limit_slow_peer(ctx: CheckContext) -> None:
    hello = encode_frame(Hello(1, 1, ctx.account().name, ctx.new_id(), 65536), 0)
    if ctx.target.http:
        host = f"{ctx.target.host}:{ctx.target.port}"
        data = (f"POST {ctx.target.http_path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: {FRAMES_CONTENT_TYPE}\r\nContent-Length: {len(hello)}\r\n\r\n").encode() + hello
    else:
        data = hello
    stream = await open_stream(ctx.target.host, ctx.target.port, ctx.target.timeout)
    try:
        ctx.trace.add("slow", ">", f"the first 10 of {len(data)} bytes, then a pause")
        await stream.send_all(data[:10])
        with trio.fail_after(4 * ctx.target.timeout):
            session = await ctx.session(label="fast")
            await _useful_work(ctx, session, "beside a slow peer")
            await session.bye()
        ctx.trace.add("slow", ">", "the rest, one byte every 10 ms")
        for index in range(10, len(data)):
            await stream.send_all(data[index:index + 1])
            await trio.sleep(0.01)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        ctx.trace.add("slow", "#", f"the server closed the slow connection: {exc}")
    except trio.TooSlowError:
        raise Fail("a session beside a slow peer did not complete in time (R-TCP-6)") from None
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


@check("limit-many-sessions", "Many stalled sessions get BUSY at most; others are served, and again once they go",
       requirements=("R-TCP-6", "R-LIMIT-9", "R-LIMIT-11", "R-LIMIT-13"), level=Level.MUST, group="limits")
async def limit_many_sessions(ctx: CheckContext) -> None:
    stalled: list[Client] = []
    for index in range(ctx.target.stalled_sessions):
        client = await ctx.connect(f"stalled{index}")
        await client.send(Hello(1, 1, ctx.account().name, ctx.new_id(), 65536))
        stalled.append(client)
    device = ctx.device()
    client = await ctx.connect("newcomer")
    try:
        challenge, answer = await ctx.handshake(client, device)
        busy = isinstance(answer, Error) and answer.code == ErrorCode.BUSY and answer.fatal
    except Refused:  # BUSY (or SHUTTING_DOWN) answering the HELLO
        busy = True
    if not busy and not isinstance(answer, HelloOk):
        raise Fail(f"with {len(stalled)} stalled sessions, a new session got {show(answer)}; "
                   "expected HELLO_OK or a fatal BUSY (R-LIMIT-9)")
    if isinstance(answer, HelloOk):
        session = Session(ctx, client, device, challenge, answer)
        await _useful_work(ctx, session, "beside stalled sessions")
        await session.bye()
    for other in stalled:
        await other.aclose()
    if busy:
        session = await ctx.wait_ready(device)
        await _useful_work(ctx, session, "after stalled sessions left")
        await session.bye()
