"""Checks of pull safety: the anchor moves only on PULL_ACK, paging, only durable changes are pulled."""

from __future__ import annotations

from sidekick_testbed.emulator.certify.answers import assigned_version
from sidekick_testbed.emulator.certify.changes import committed_notes, note_change
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Level, expect
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import Error, Pull, PullAck


@check("pull-anchor-needs-ack", "The server's anchor for a device moves only on PULL_ACK",
       requirements=("R-PULL-8", "R-PULL-10", "R-GEN-2", "R-TCP-5", "R-ERR-5"), level=Level.MUST, group="pull")
async def pull_anchor_needs_ack(ctx: CheckContext) -> None:
    versions = await committed_notes(ctx, 1, "anchor")
    reader = ctx.device()
    first = await ctx.session(reader)
    result = await first.pull(0)
    expect(result.end.anchor >= versions[0] or result.end.more,
           f"PULL_END.anchor {result.end.anchor} below the committed version {versions[0]} (R-PULL-3)")
    await first.client.send(Error(ErrorCode.BAD_ANCHOR, False, "certify declines this pull"))
    await first.ping()
    await first.bye()
    second = await ctx.session(reader)
    expect(second.hello_ok.anchor == 0,
           f"after a pull declined without PULL_ACK, HELLO_OK.anchor is {second.hello_ok.anchor}, expected 0 (R-PULL-8)")
    await second.pull(0)
    await second.client.aclose()
    third = await ctx.session(reader)
    expect(third.hello_ok.anchor == 0,
           f"after a pull cut off before PULL_ACK, HELLO_OK.anchor is {third.hello_ok.anchor}, expected 0 (R-PULL-8, R-TCP-5)")
    result = await third.pull(0)
    await third.client.send(PullAck(result.end.anchor))
    await third.ping()
    await third.bye()
    fourth = await ctx.session(reader)
    expect(fourth.hello_ok.anchor == result.end.anchor,
           f"after PULL_ACK {result.end.anchor}, HELLO_OK.anchor is {fourth.hello_ok.anchor} (R-PULL-8, R-GEN-2)")
    await fourth.bye()


@check("pull-ack-mismatch", "A PULL_ACK with another anchor than PULL_END's gets BAD_FIELD and moves nothing",
       requirements=("R-PULL-9",), level=Level.MUST, group="pull")
async def pull_ack_mismatch(ctx: CheckContext) -> None:
    await committed_notes(ctx, 1, "ack mismatch")
    reader = ctx.device()
    session = await ctx.session(reader)
    result = await session.pull(0)
    await session.client.send(PullAck(result.end.anchor + 1))
    await session.expect_error(ErrorCode.BAD_FIELD, "R-PULL-9", "PULL_ACK of another anchor")
    await session.expect_closed("R-ERR-3")
    again = await ctx.session(reader)
    expect(again.hello_ok.anchor == 0, f"a refused PULL_ACK moved the anchor to {again.hello_ok.anchor} (R-PULL-9)")
    await again.bye()


@check("pull-bad-anchor", "A PULL beyond the server's version gets a non-fatal BAD_ANCHOR; the session goes on",
       requirements=("R-PULL-5", "R-STATE-5"), level=Level.MUST, group="pull")
async def pull_bad_anchor(ctx: CheckContext) -> None:
    session = await ctx.session()
    await session.client.send(Pull(1 << 62, 10))
    await session.expect_error(ErrorCode.BAD_ANCHOR, "R-PULL-5", "PULL from anchor 2^62")
    await session.ping()
    await session.bye()


@check("pull-paging", "A pull limited to one record pages in increasing version without skipping any",
       requirements=("R-PULL-2", "R-PULL-3", "R-PULL-12"), level=Level.MUST, group="pull")
async def pull_paging(ctx: CheckContext) -> None:
    versions = await committed_notes(ctx, 3, "paging")
    session = await ctx.session()
    anchor = versions[0] - 1
    seen: list[int] = []
    for _ in range(10):
        result = await session.pull(anchor, 1)
        expect(len(result.records) <= 1, f"PULL max_records 1 returned {len(result.records)} records (R-PULL-2)")
        for record in result.records:
            expect(anchor < record.version <= result.end.anchor,
                   f"record version {record.version} outside (PULL.anchor {anchor}, PULL_END.anchor "
                   f"{result.end.anchor}] (R-PULL-3)")
            seen.append(record.version)
        expect(result.end.anchor >= anchor, f"PULL_END.anchor {result.end.anchor} below PULL.anchor {anchor} (R-PULL-3)")
        skipped = [v for v in versions if anchor < v <= result.end.anchor and v not in seen]
        expect(not skipped, f"PULL_END.anchor {result.end.anchor} passes versions {skipped} never sent (R-PULL-3)")
        await session.client.send(PullAck(result.end.anchor))
        anchor = result.end.anchor
        if all(v in seen for v in versions):
            break
        expect(result.end.more, f"PULL_END.more is false while versions {versions} were not all sent (R-PULL-12)")
    expect(all(v in seen for v in versions), f"ten pulls of one record never delivered versions "
           f"{[v for v in versions if v not in seen]} (R-PULL-3, R-PULL-12)")
    expect(seen == sorted(seen), f"pulled versions {seen} are not increasing (R-PULL-2)")
    await session.bye()


@check("pull-durable-only", "A change received but not committed is not pulled by another device",
       requirements=("R-PULL-4",), level=Level.MUST, group="pull")
async def pull_durable_only(ctx: CheckContext) -> None:
    marker = await committed_notes(ctx, 1, "marker")
    writer = ctx.device()
    session = await ctx.session(writer)
    change = note_change(writer.lsn(), ctx.new_id(), "certify: not yet committed")
    await session.push([change])
    reader = await ctx.session()
    heads, _ = await reader.pull_all(marker[0] - 1)
    expect(change.record.record_id not in heads, "another device pulled a change that was never committed (R-PULL-4)")
    _, durable = await session.commit(change.lsn)
    version = assigned_version(durable, change.lsn)
    heads, _ = await reader.pull_all(marker[0] - 1)
    head = heads.get(change.record.record_id)
    expect(head is not None and head.version == version, f"the committed change is not pulled at version {version} (R-PULL-2)")
    await session.bye()
    await reader.bye()
