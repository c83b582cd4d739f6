"""Checks of receipts and idempotence: PUSH_ACK and DURABLE, retransmits, refused pushes, LSN order."""

from __future__ import annotations

import hashlib

from sidekick_testbed.emulator.certify.answers import assigned_version, brief, note_title
from sidekick_testbed.emulator.certify.changes import body_change, committed_notes, note_change
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Inconclusive, Level, expect
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.messages import Change, Push
from sidekick_testbed.protocol.records import Note, Photo, Record

# ---------------------------------------------------------------------------------------- receipts

@check("receipts", "PUSH_ACK names the last LSN; DURABLE covers exactly the committed changes, in this generation",
       requirements=("R-DUR-1", "R-DUR-3", "R-DUR-4", "R-DUR-6", "R-GEN-2", "R-DUR-5"), level=Level.MUST,
       group="receipts")
async def receipts(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    changes = [note_change(device.lsn(), ctx.new_id(), f"certify: receipt {i}") for i in range(3)]
    await session.push(changes[:2])
    await session.push(changes[2:])
    _, durable = await session.commit(changes[-1].lsn)
    expect(durable.generation == session.generation,
           f"DURABLE generation {durable.generation:#x} is not HELLO_OK's {session.generation:#x} (R-DUR-4)")
    expect(durable.durable_lsn == 3, f"DURABLE.durable_lsn {durable.durable_lsn} after committing LSNs 1..3 (R-DUR-3, R-DUR-4)")
    listed = sorted((a.lsn, a.record_id.hex()[:8]) for a in durable.assigned)
    wanted = sorted((c.lsn, c.record.record_id.hex()[:8]) for c in changes)
    expect(listed == wanted, f"DURABLE.assigned lists {listed}, expected one entry per committed change {wanted} (R-DUR-6)")
    versions = [a.version for a in sorted(durable.assigned, key=lambda a: a.lsn)]
    expect(all(v > 0 for v in versions) and len(set(versions)) == 3,
           f"assigned versions {versions} are not distinct server versions (R-DUR-6)")
    await session.bye()
    again = await ctx.session(device)
    if again.generation != session.generation:
        raise Inconclusive("the generation changed between two sessions; the watermarks cannot be compared")
    expect(again.hello_ok.durable_lsn == 3,
           f"HELLO_OK.durable_lsn {again.hello_ok.durable_lsn} after DURABLE through 3 (R-GEN-2, R-DUR-5)")
    await again.bye()


@check("watermark-only-durable", "The durable watermark never covers a change received but not committed",
       requirements=("R-DUR-4", "R-DUR-6"), level=Level.MUST, group="receipts")
async def watermark_only_durable(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    first, second = note_change(device.lsn(), ctx.new_id(), "certify: committed"), note_change(
        device.lsn(), ctx.new_id(), "certify: received only")
    await session.push([first])
    await session.push([second])
    _, durable = await session.commit(first.lsn)
    base = assigned_version(durable, first.lsn)
    if durable.durable_lsn >= second.lsn:  # legal only if the server made the second change durable too
        heads, _ = await session.pull_all(base - 1)
        expect(second.record.record_id in heads,
               f"COMMIT {first.lsn} got DURABLE.durable_lsn {durable.durable_lsn}, covering LSN {second.lsn}, pushed "
               "after it and not committed, which a pull does not find: the watermark covers a change the server "
               "does not hold (R-DUR-4)")
        assigned_version(durable, second.lsn)
    await session.client.aclose()
    again = await ctx.session(device)
    if again.hello_ok.durable_lsn >= second.lsn and again.generation == session.generation:
        heads, _ = await again.pull_all(base - 1)
        expect(second.record.record_id in heads,
               f"HELLO_OK.durable_lsn {again.hello_ok.durable_lsn} covers LSN {second.lsn}, pushed but never "
               "committed, and the server does not hold it (R-DUR-4)")
    await again.bye()


# ---------------------------------------------------------------------------------------- idempotence

@check("retransmit-after-durable", "A change retransmitted after its DURABLE is acknowledged, not applied again",
       requirements=("R-IDEM-1", "R-IDEM-2", "R-DUR-6", "R-CONFLICT-6"), level=Level.MUST, group="idempotence")
async def retransmit_after_durable(ctx: CheckContext) -> None:
    await retransmit_of_confirmed(ctx, restart=False)


async def retransmit_of_confirmed(ctx: CheckContext, *, restart: bool) -> None:
    """A device commits a change, another device edits the record, the server is restarted (if
    ``restart``), and the first device retransmits the change: it must be a duplicate."""
    mine, other = ctx.device(), ctx.device()
    record_id = ctx.new_id()
    original = note_change(mine.lsn(), record_id, "certify: first version")
    session = await ctx.session(mine)
    generation = session.generation
    _, durable = await session.push_commit([original])
    v1 = assigned_version(durable, original.lsn)
    await session.bye()
    editor = await ctx.session(other)
    _, edited = await editor.push_commit([note_change(other.lsn(), record_id, "certify: later edit", base=v1)])
    v2 = assigned_version(edited, 1)
    await editor.bye()
    after = ""
    if restart:
        assert ctx.target.restart_cmd is not None
        await ctx.run_command(ctx.target.restart_cmd, "restart")
        retry = await ctx.wait_ready(mine)
        if retry.generation != generation:
            raise Inconclusive("the generation changed across the restart: the device would run a recovery sync, "
                               "so its retransmission is not a duplicate any more")
        after = " after a kill -9 and restart"
    else:
        retry = await ctx.session(mine)
    expect(retry.hello_ok.durable_lsn >= original.lsn,
           f"HELLO_OK.durable_lsn {retry.hello_ok.durable_lsn}{after} below the {original.lsn} DURABLE confirmed "
           "(R-DUR-5)")
    reqs = "R-IDEM-1, R-DUR-12" if restart else "R-IDEM-1"
    await retry.push([original])
    conflicts, again = await retry.commit(original.lsn)
    expect(not conflicts, f"LSN {original.lsn}, confirmed DURABLE at version {v1}, retransmitted{after}, drew "
           f"{brief(conflicts)}: it was applied again ({reqs})")
    got = assigned_version(again, original.lsn)
    expect(got in (v1, 0), f"LSN {original.lsn} retransmitted{after} was assigned version {brief(got)}; it must be the "
           f"version it first received ({v1}), or 0 if that is no longer kept, never another (R-IDEM-2, R-DUR-6)")
    heads, _ = await retry.pull_all(v1 - 1)
    head = heads.get(record_id)
    expect(head is not None and head.version == v2 and note_title(head) == "certify: later edit",
           f"after a retransmit{after} the record's head is {brief(head)}; the later edit (version {v2}) must stay "
           f"head ({reqs})")
    copies = [r for r in heads.values() if r.conflict_of == record_id]
    expect(not copies, f"a retransmit{after} created conflict copies {brief(copies)} ({reqs})")
    await retry.bye()


@check("retransmit-after-drop", "A change pushed, lost with its connection, and pushed again is applied once",
       requirements=("R-IDEM-1", "R-IDEM-2", "R-TCP-5"), level=Level.MUST, group="idempotence")
async def retransmit_after_drop(ctx: CheckContext) -> None:
    device = ctx.device()
    changes = [note_change(device.lsn(), ctx.new_id(), f"certify: dropped {i}") for i in range(2)]
    first = await ctx.session(device)
    await first.push(changes)
    await first.client.aclose()
    second = await ctx.session(device)
    await second.push(changes)
    await second.push(changes)
    conflicts, durable = await second.commit(changes[-1].lsn)
    expect(not conflicts, f"retransmitted changes drew {brief(conflicts)} (R-IDEM-1)")
    versions = [assigned_version(durable, c.lsn) for c in changes]
    heads, _ = await second.pull_all(min(versions) - 1)
    for change, version in zip(changes, versions, strict=True):
        head = heads.get(change.record.record_id)
        expect(head is not None and head.version == version,
               f"record of LSN {change.lsn}: head {brief(head)}, DURABLE assigned {version} (R-IDEM-1, R-IDEM-2)")
    await second.bye()


@check("refused-push-no-effect", "A PUSH refused for one bad change applies none of its changes",
       requirements=("R-IDEM-7", "R-BLOB-5"), level=Level.MUST, group="idempotence")
async def refused_push_no_effect(ctx: CheckContext) -> None:
    marker = (await committed_notes(ctx, 1, "refused push marker"))[0]
    device = ctx.device()
    session = await ctx.session(device)
    good = note_change(device.lsn(), ctx.new_id(), "certify: refused with its batch")
    photo = Photo("certify: no blob", ctx.new_id(), 10, hashlib.sha256(b"0123456789").digest())
    bad = body_change(device.lsn(), ctx.new_id(), photo)
    await session.client.send(Push((good, bad)))
    await session.expect_error(ErrorCode.BLOB_INCOMPLETE, "R-BLOB-5", "a PUSH with a photo whose blob is missing")
    await session.expect_closed("R-ERR-3")
    again = await ctx.session(device)
    expect(again.hello_ok.durable_lsn == 0,
           f"this device's only PUSH was refused with BLOB_INCOMPLETE, yet HELLO_OK reports durable_lsn "
           f"{again.hello_ok.durable_lsn} for it (R-IDEM-7)")
    _, durable = await again.commit(bad.lsn)
    expect(not durable.assigned,
           f"a COMMIT in a session that pushed nothing got DURABLE.assigned {brief(list(durable.assigned))}; it lists "
           "only changes pushed in its session (R-DUR-6)")
    heads, _ = await again.pull_all(marker)
    applied = [brief(heads[c.record.record_id]) for c in (good, bad) if c.record.record_id in heads]
    expect(not applied, f"a PUSH refused with BLOB_INCOMPLETE was applied in part: a pull finds {applied} (R-IDEM-7)")
    await again.bye()


async def _push_refused(ctx: CheckContext, changes: tuple[Change, ...], code: ErrorCode, req: str, what: str) -> None:
    session = await ctx.session()
    frame = encode_frame(Push(changes), session.client.next_seq)
    if len(frame) > session.challenge.max_frame:
        raise Inconclusive(f"{what}: the PUSH needs {len(frame)} bytes, over the negotiated max_frame")
    await session.client.send(Push(changes))
    await session.expect_error(code, req, what)
    await session.expect_closed("R-ERR-3")


@check("push-lsn-order", "A PUSH whose LSNs are not increasing gets LSN_ORDER",
       requirements=("R-MSG-4",), level=Level.MUST, group="idempotence")
async def push_lsn_order(ctx: CheckContext) -> None:
    changes = (note_change(5, ctx.new_id(), "certify: b"), note_change(4, ctx.new_id(), "certify: a"))
    await _push_refused(ctx, changes, ErrorCode.LSN_ORDER, "R-MSG-4", "a PUSH with LSNs 5, 4")


@check("push-empty", "An empty PUSH gets BAD_FIELD", requirements=("R-MSG-4",), level=Level.MUST, group="idempotence")
async def push_empty(ctx: CheckContext) -> None:
    await _push_refused(ctx, (), ErrorCode.BAD_FIELD, "R-MSG-4", "an empty PUSH")


@check("push-lsn-zero", "A change with LSN 0 gets BAD_FIELD", requirements=("R-MSG-1",), level=Level.MUST,
       group="idempotence")
async def push_lsn_zero(ctx: CheckContext) -> None:
    await _push_refused(ctx, (note_change(0, ctx.new_id(), "certify: zero"),), ErrorCode.BAD_FIELD, "R-MSG-1",
                        "a change with LSN 0")


@check("push-batch-too-large", "A PUSH of max_batch + 1 changes gets BATCH_TOO_LARGE",
       requirements=("R-LIMIT-3",), level=Level.MUST, group="idempotence")
async def push_batch_too_large(ctx: CheckContext) -> None:
    probe = await ctx.session()
    count = probe.challenge.max_batch + 1
    await probe.bye()
    changes = tuple(note_change(i + 1, ctx.new_id(), "") for i in range(count))
    await _push_refused(ctx, changes, ErrorCode.BATCH_TOO_LARGE, "R-LIMIT-3", f"a PUSH of {count} changes")


@check("record-version-ignored", "The server assigns versions itself, ignoring the version a PUSH carries",
       requirements=("R-REC-4",), level=Level.MUST, group="receipts")
async def record_version_ignored(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    record_id = ctx.new_id()
    change = Change(device.lsn(), 0, Record(record_id, 1 << 40, False, Note("certify: claims a version")))
    _, durable = await session.push_commit([change])
    version = assigned_version(durable, change.lsn)
    expect(version != 1 << 40, "the server took the version the PUSH carried (R-REC-4)")
    heads, _ = await session.pull_all(version - 1)
    head = heads.get(record_id)
    expect(head is not None and head.version == version,
           f"the pulled record has version {head.version if head else None}, DURABLE assigned {version} (R-REC-4)")
    await session.bye()


@check("tombstone-syncs", "A delete is pushed, committed and pulled as a tombstone version",
       requirements=("R-REC-3",), level=Level.MUST, group="receipts")
async def tombstone_syncs(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    record_id = ctx.new_id()
    _, first = await session.push_commit([note_change(device.lsn(), record_id, "certify: to delete")])
    v1 = assigned_version(first, 1)
    delete = note_change(device.lsn(), record_id, "certify: to delete", base=v1, deleted=True)
    _, second = await session.push_commit([delete])
    v2 = assigned_version(second, delete.lsn)
    expect(v2 > v1, f"the tombstone got version {v2}, not above the record's {v1} (R-REC-3)")
    reader = await ctx.session()
    heads, _ = await reader.pull_all(v1 - 1)
    head = heads.get(record_id)
    expect(head is not None and head.deleted and head.version == v2,
           f"the pulled head after a delete is {brief(head)}; expected the tombstone at version {v2} (R-REC-3)")
    await reader.bye()
    await session.bye()


@check("push-batch-total", "The PUSH that takes the changes since the last COMMIT past max_batch gets BATCH_TOO_LARGE",
       requirements=("R-LIMIT-4",), level=Level.MUST, group="idempotence")
async def push_batch_total(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device, max_frame=1024)
    limit = session.challenge.max_batch
    for _ in range(limit):
        await session.push([note_change(device.lsn(), ctx.new_id(), "")])
    await session.client.send(Push((note_change(device.lsn(), ctx.new_id(), ""),)))
    await session.expect_error(ErrorCode.BATCH_TOO_LARGE, "R-LIMIT-4",
                               f"PUSH number {limit + 1} of one change each, with no COMMIT since the first "
                               f"(max_batch {limit})")
    await session.expect_closed("R-ERR-3")


@check("durable-lsn-unreceived", "DURABLE never reports durable an LSN the server has not received",
       requirements=("R-DUR-4",), level=Level.MUST, group="receipts")
async def durable_lsn_unreceived(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    _, durable = await session.commit(5)
    expect(durable.durable_lsn == 0,
           f"COMMIT 5 from a new device that has pushed nothing: DURABLE.durable_lsn {durable.durable_lsn}; no LSN "
           "of this device was received, so none may be reported durable (R-DUR-4)")
    changes = [note_change(device.lsn(), ctx.new_id(), f"certify: watermark {i}") for i in range(2)]
    await session.push_commit(changes)
    _, durable = await session.commit(9)
    expect(durable.durable_lsn == changes[-1].lsn,
           f"COMMIT 9 after LSNs 1..{changes[-1].lsn} were committed and nothing else pushed: DURABLE.durable_lsn "
           f"{durable.durable_lsn}, expected {changes[-1].lsn}, the highest LSN received (R-DUR-4, R-DUR-5)")
    await session.bye()


@check("push-lsn-below-applied", "A lower LSN after a higher one was applied is a duplicate; a repeated LSN is accepted",
       requirements=("R-IDEM-8", "R-DUR-6"), level=Level.MUST, group="idempotence")
async def push_lsn_below_applied(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    high = note_change(5, ctx.new_id(), "certify: LSN 5")
    _, durable = await session.push_commit([high])
    base = assigned_version(durable, 5)
    low = note_change(3, ctx.new_id(), "certify: LSN 3, after 5 was applied")
    await session.push([low])
    _, durable = await session.commit(3)
    got = assigned_version(durable, 3)
    expect(got == 0, f"LSN 3, pushed after LSN 5 was applied, was assigned version {got}; at or below the last "
           "applied LSN a change is a duplicate, given version 0 (R-IDEM-8, R-DUR-6)")
    repeat = note_change(6, ctx.new_id(), "certify: LSN 6, pushed twice")
    await session.push([repeat])
    await session.push([repeat])  # PUSH_ACK expected: LSN order holds within one PUSH only
    _, durable = await session.commit(6)
    version = assigned_version(durable, 6)
    heads, _ = await session.pull_all(base - 1)
    expect(low.record.record_id not in heads,
           f"LSN 3, pushed after LSN 5 was applied, was applied: a pull finds {brief(heads.get(low.record.record_id))} "
           "(R-IDEM-8)")
    head = heads.get(repeat.record.record_id)
    expect(head is not None and head.version == version,
           f"LSN 6 pushed twice in one session: pulled {brief(head)}, DURABLE assigned {version} (R-IDEM-1)")
    await session.bye()
