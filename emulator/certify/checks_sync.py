"""Checks of synchronisation semantics: receipts, idempotence, pull safety, conflicts, blobs."""

from __future__ import annotations

import hashlib

from sidekick_testbed.emulator.certify.context import CheckContext, body_change, brief, note_change, show
from sidekick_testbed.emulator.certify.framework import Fail, Inconclusive, Level, check, expect
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.messages import BlobAck, BlobChunk, Change, Durable, Error, Pull, PullAck, Push
from sidekick_testbed.protocol.records import Note, Photo, Record


def copy_id(record_id: bytes, version: int, taken: int = 0) -> bytes:
    """The conflict copy id of section 13; ``taken`` = n > 0 gives the n-th id of "Taken copy ids"."""
    suffix = taken.to_bytes(4, "big") if taken else b""
    return hashlib.sha256(b"conflict" + record_id + version.to_bytes(8, "big") + suffix).digest()[:16]


def assigned_version(durable: Durable, lsn: int) -> int:
    """The version DURABLE assigned to ``lsn``; Fail if it is not listed."""
    for entry in durable.assigned:
        if entry.lsn == lsn:
            return entry.version
    raise Fail(f"DURABLE.assigned {[(a.lsn, a.version) for a in durable.assigned]} has no entry for LSN {lsn} (R-DUR-6)")


def _title(record: Record) -> str:
    body = record.body
    return body.title if isinstance(body, Note) else repr(body)


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
    expect(head is not None and head.version == v2 and _title(head) == "certify: later edit",
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
    marker = (await _committed_notes(ctx, 1, "refused push marker"))[0]
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


# ---------------------------------------------------------------------------------------- pull

async def _committed_notes(ctx: CheckContext, count: int, label: str) -> list[int]:
    writer = ctx.device()
    session = await ctx.session(writer)
    changes = [note_change(writer.lsn(), ctx.new_id(), f"certify: {label} {i}") for i in range(count)]
    _, durable = await session.push_commit(changes)
    versions = [assigned_version(durable, c.lsn) for c in changes]
    await session.bye()
    return versions


@check("pull-anchor-needs-ack", "The server's anchor for a device moves only on PULL_ACK",
       requirements=("R-PULL-8", "R-PULL-10", "R-GEN-2", "R-TCP-5", "R-ERR-5"), level=Level.MUST, group="pull")
async def pull_anchor_needs_ack(ctx: CheckContext) -> None:
    versions = await _committed_notes(ctx, 1, "anchor")
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
    await _committed_notes(ctx, 1, "ack mismatch")
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
    versions = await _committed_notes(ctx, 3, "paging")
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
    marker = await _committed_notes(ctx, 1, "marker")
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


# ---------------------------------------------------------------------------------------- conflicts

@check("conflict-copy", "A stale edit wins the head and the overwritten version is kept as a conflict copy",
       requirements=("R-CONFLICT-1", "R-CONFLICT-2", "R-CONFLICT-4", "R-CONFLICT-5", "R-CONFLICT-6"),
       level=Level.MUST, group="conflict")
async def conflict_copy(ctx: CheckContext) -> None:
    a, b = ctx.device(), ctx.device()
    record_id = ctx.new_id()
    sa = await ctx.session(a)
    first = note_change(a.lsn(), record_id, "certify: original")
    _, d1 = await sa.push_commit([first])
    v1 = assigned_version(d1, first.lsn)
    sb = await ctx.session(b)
    edit_b = note_change(b.lsn(), record_id, "certify: edit on B", base=v1)
    conflicts, d2 = await sb.push_commit([edit_b])
    expect(not conflicts, f"an up-to-date edit drew {brief(conflicts)} (R-CONFLICT-1 rule 3)")
    v2 = assigned_version(d2, edit_b.lsn)
    await sb.bye()
    edit_a = note_change(a.lsn(), record_id, "certify: stale edit on A", base=v1)
    conflicts, d3 = await sa.push_commit([edit_a])
    v3 = assigned_version(d3, edit_a.lsn)
    expected_copy = copy_id(record_id, v2)
    heads, _ = await sa.pull_all(v1)
    if not conflicts and not any(r.conflict_of == record_id for r in heads.values()):
        raise Fail(f"a stale edit (base {v1}) overwrote B's version {v2} with no CONFLICT and no conflict copy of it "
                   f"in a pull: B's version is lost (R-CONFLICT-1 rule 4, R-CONFLICT-6)")
    expect(len(conflicts) == 1, f"a stale edit drew {len(conflicts)} CONFLICT messages, expected 1 (R-CONFLICT-4)")
    got = conflicts[0]
    expect((got.lsn, got.record_id, got.server_version, got.copy_id) == (edit_a.lsn, record_id, v2, expected_copy),
           f"CONFLICT {brief(got)} expected lsn {edit_a.lsn}, server_version {v2}, copy_id {expected_copy.hex()} "
           "(R-CONFLICT-2, R-CONFLICT-4)")
    head, copy = heads.get(record_id), heads.get(expected_copy)
    expect(head is not None and head.version == v3 and _title(head) == "certify: stale edit on A",
           f"the record's head after the conflict is {brief(head)}; the later commit must win (R-CONFLICT-1 rule 4)")
    expect(copy is not None and copy.conflict_of == record_id and _title(copy) == "certify: edit on B",
           f"the conflict copy {expected_copy.hex()} is {brief(copy)}; it must keep B's edit (R-CONFLICT-1, R-CONFLICT-5)")
    assert copy is not None
    expect(copy.version == v3 + 1, f"the conflict copy has version {copy.version}, expected {v3 + 1} (R-CONFLICT-1)")
    await sa.bye()


@check("conflict-copy-taken", "A conflict copy never overwrites another record holding its copy id",
       requirements=("R-CONFLICT-8", "R-CONFLICT-2", "R-CONFLICT-6"), level=Level.MUST, group="conflict")
async def conflict_copy_taken(ctx: CheckContext) -> None:
    """Twice: B's edit (version v2) is overwritten by A's stale edit while the copy id of v2 is taken,
    first by a record of other content (the copy takes the next id), then by that very copy (no new one)."""
    for case in ("other content", "the same copy"):
        a, b, squatter = ctx.device(), ctx.device(), ctx.device()
        record_id = ctx.new_id()
        sa = await ctx.session(a)
        _, d1 = await sa.push_commit([note_change(a.lsn(), record_id, f"certify: taken original ({case})")])
        v1 = assigned_version(d1, 1)
        sb = await ctx.session(b)
        _, d2 = await sb.push_commit([note_change(b.lsn(), record_id, f"certify: taken edit on B ({case})", base=v1)])
        v2 = assigned_version(d2, 1)
        await sb.bye()
        plain = copy_id(record_id, v2)
        if case == "other content":
            held = Record(plain, 0, False, Note("certify: a record that holds the copy id", "squatter"))
            wanted = copy_id(record_id, v2, 1)
        else:
            held = Record(plain, 0, False, Note(f"certify: taken edit on B ({case})"), conflict_of=record_id)
            wanted = plain
        ss = await ctx.session(squatter)
        _, d3 = await ss.push_commit([Change(squatter.lsn(), 0, held)])
        held_version = assigned_version(d3, 1)
        await ss.bye()
        edit_a = note_change(a.lsn(), record_id, f"certify: taken stale edit on A ({case})", base=v1)
        conflicts, _ = await sa.push_commit([edit_a])
        expect(len(conflicts) == 1, f"a stale edit drew {len(conflicts)} CONFLICT messages, expected 1 (R-CONFLICT-4)")
        got = conflicts[0].copy_id
        if got != wanted:
            name = "the next id (n = 1)" if case == "other content" else "that id"
            raise Fail(f"the copy id {plain.hex()} of version {v2} already held {case} ({brief(held)}); CONFLICT "
                       f"names {got.hex()}, the copy belongs at {name} {wanted.hex()} (R-CONFLICT-8, R-CONFLICT-2)")
        heads, _ = await sa.pull_all(v1)
        at_plain, copy = heads.get(plain), heads.get(wanted)
        expect(at_plain is not None and at_plain.version == held_version and at_plain.body == held.body
               and at_plain.conflict_of == held.conflict_of,
               f"the record {plain.hex()} that held the copy id ({case}, version {held_version}) is now "
               f"{brief(at_plain)}: it was overwritten (R-CONFLICT-8)")
        expect(copy is not None and copy.conflict_of == record_id
               and _title(copy) == f"certify: taken edit on B ({case})",
               f"the conflict copy {wanted.hex()} is {brief(copy)}; it must keep B's edit (R-CONFLICT-8, R-CONFLICT-6)")
        await sa.bye()


@check("conflict-same-content", "A stale edit equal to the head is a no-op: no CONFLICT, the head's version",
       requirements=("R-CONFLICT-1", "R-DUR-6"), level=Level.MUST, group="conflict")
async def conflict_same_content(ctx: CheckContext) -> None:
    a, b = ctx.device(), ctx.device()
    record_id = ctx.new_id()
    sa = await ctx.session(a)
    _, d1 = await sa.push_commit([note_change(a.lsn(), record_id, "certify: same")])
    v1 = assigned_version(d1, 1)
    sb = await ctx.session(b)
    _, d2 = await sb.push_commit([note_change(b.lsn(), record_id, "certify: same", text="edited", base=v1)])
    v2 = assigned_version(d2, 1)
    await sb.bye()
    same = note_change(a.lsn(), record_id, "certify: same", text="edited", base=v1)
    conflicts, d3 = await sa.push_commit([same])
    expect(not conflicts, f"an edit equal to the head drew {brief(conflicts)} (R-CONFLICT-1 rule 2)")
    got = assigned_version(d3, same.lsn)
    expect(got == v2, f"a no-op change was assigned version {brief(got)}; rule 2 gives the head's {v2} (R-DUR-6)")
    await sa.bye()


# ---------------------------------------------------------------------------------------- blobs

@check("blob-upload-resume", "A blob upload resumes where the server's copy ends; the photo pulls whole",
       requirements=("R-BLOB-1", "R-BLOB-2", "R-BLOB-8", "R-PULL-1"), level=Level.MUST, group="blob")
async def blob_upload_resume(ctx: CheckContext) -> None:
    device = ctx.device()
    data = ctx.rng.randbytes(10000)
    blob_id = ctx.new_id()
    first = await ctx.session(device)
    expect(await first.blob_query(blob_id) == 0, "BLOB_QUERY of a new blob is not 0 (R-BLOB-1)")
    await first.upload(blob_id, data[:4096], chunk=4096, total=len(data))
    await first.client.aclose()
    second = await ctx.session(device)
    have = await second.blob_query(blob_id)
    expect(have == 4096, f"after 4096 bytes were acknowledged, BLOB_QUERY says {have} (R-BLOB-1)")
    await second.client.send(BlobChunk(blob_id, have + 100, len(data), data[have + 100:have + 200]))
    await second.expect_error(ErrorCode.BLOB_OFFSET, "R-BLOB-2", "a BLOB_CHUNK past the server's copy")
    await second.upload(blob_id, data, start=have, chunk=4096)
    photo = Photo("certify: photo", blob_id, len(data), hashlib.sha256(data).digest())
    change = body_change(device.lsn(), ctx.new_id(), photo)
    _, durable = await second.push_commit([change])
    version = assigned_version(durable, change.lsn)
    await second.bye()
    reader = await ctx.session()
    result = await reader.pull(version - 1, 1)
    records = [r for r in result.records if r.record_id == change.record.record_id]
    expect(bool(records), f"the committed photo (version {version}) is not pulled (R-PULL-2)")
    expect(result.blobs.get(blob_id) == data,
           f"the pulled blob has {len(result.blobs.get(blob_id, b''))} bytes, not the {len(data)} uploaded (R-BLOB-8)")
    await reader.client.send(PullAck(result.end.anchor))
    await reader.bye()


@check("blob-empty", "A 0-byte blob is held once its one empty chunk arrives, and only then",
       requirements=("R-BLOB-12", "R-BLOB-5", "R-BLOB-8"), level=Level.MUST, group="blob")
async def blob_empty(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    blob_id, empty = ctx.new_id(), hashlib.sha256(b"").digest()
    expect(await session.blob_query(blob_id) == 0, "BLOB_QUERY of a new blob is not 0 (R-BLOB-1)")
    for attempt in ("first", "repeated"):
        await session.client.send(BlobChunk(blob_id, 0, 0, b""))
        ack = await session.expect(BlobAck, f"the {attempt} empty chunk of a 0-byte blob")
        assert isinstance(ack, BlobAck)
        expect(ack.have == 0, f"the {attempt} empty chunk of a 0-byte blob got BLOB_ACK have {ack.have} (R-BLOB-12)")
    change = body_change(device.lsn(), ctx.new_id(), Photo("certify: empty photo", blob_id, 0, empty))
    _, durable = await session.push_commit([change])
    version = assigned_version(durable, change.lsn)
    result = await session.pull(version - 1, 1)
    expect(any(r.record_id == change.record.record_id for r in result.records),
           f"the committed 0-byte photo (version {version}) is not pulled (R-PULL-2)")
    expect(result.blobs.get(blob_id) == b"",
           "a pull of a 0-byte photo did not carry its one empty BLOB_CHUNK (R-BLOB-12, R-BLOB-8)")
    await session.client.send(PullAck(result.end.anchor))
    other = body_change(device.lsn(), ctx.new_id(), Photo("certify: empty, never sent", ctx.new_id(), 0, empty))
    await session.client.send(Push((other,)))
    await session.expect_error(ErrorCode.BLOB_INCOMPLETE, "R-BLOB-12",
                               "a 0-byte photo whose empty chunk was never sent")


@check("blob-total-mismatch", "A chunk whose total differs from the blob's gets BAD_FIELD",
       requirements=("R-BLOB-3",), level=Level.MUST, group="blob")
async def blob_total_mismatch(ctx: CheckContext) -> None:
    session = await ctx.session()
    blob_id = ctx.new_id()
    await session.client.send(BlobChunk(blob_id, 0, 100, bytes(50)))
    ack = await session.receive()
    expect(not isinstance(ack, Error), f"a first chunk got {show(ack)}")
    await session.client.send(BlobChunk(blob_id, 50, 200, bytes(50)))
    await session.expect_error(ErrorCode.BAD_FIELD, "R-BLOB-3", "a chunk with another total")


@check("blob-incomplete-photo", "A photo whose blob is partial, or has another SHA-256, gets BLOB_INCOMPLETE",
       requirements=("R-BLOB-5",), level=Level.MUST, group="blob")
async def blob_incomplete_photo(ctx: CheckContext) -> None:
    data = ctx.rng.randbytes(3000)
    for what, digest in (("partial", hashlib.sha256(data).digest()), ("wrong SHA-256", hashlib.sha256(b"x").digest())):
        device = ctx.device()
        session = await ctx.session(device)
        blob_id = ctx.new_id()
        if what == "partial":
            await session.client.send(BlobChunk(blob_id, 0, len(data), data[:1000]))
            ack = await session.expect(BlobAck, "BLOB_CHUNK")
            expect(isinstance(ack, BlobAck) and ack.have == 1000, f"BLOB_ACK {brief(ack)} after 1000 bytes (R-BLOB-1)")
        else:
            await session.upload(blob_id, data, chunk=2000)
        photo = Photo(f"certify: {what}", blob_id, len(data), digest)
        await session.client.send(Push((body_change(device.lsn(), ctx.new_id(), photo),)))
        await session.expect_error(ErrorCode.BLOB_INCOMPLETE, "R-BLOB-5", f"a photo whose blob is {what}")
        await session.client.aclose()


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


@check("converge", "After conflicting edits and full pulls, two devices hold the same heads",
       requirements=("R-CONFORM-3", "R-CONFLICT-5"), level=Level.MUST, group="conflict")
async def converge(ctx: CheckContext) -> None:
    a, b = ctx.device(), ctx.device()
    sa, sb = await ctx.session(a, label="a"), await ctx.session(b, label="b")
    shared = ctx.new_id()
    _, d1 = await sa.push_commit([note_change(a.lsn(), shared, "certify: converge original")])
    v1 = assigned_version(d1, 1)
    await sa.push_commit([note_change(a.lsn(), shared, "certify: converge edit on A", base=v1),
                          note_change(a.lsn(), ctx.new_id(), "certify: converge new on A")])
    await sb.push_commit([note_change(b.lsn(), shared, "certify: converge edit on B", base=v1),
                          note_change(b.lsn(), ctx.new_id(), "certify: converge new on B")])
    heads_a, _ = await sa.pull_all(v1 - 1)
    heads_b, _ = await sb.pull_all(v1 - 1)
    mine = {rid for rid, r in heads_a.items() if rid == shared or r.conflict_of == shared
            or _title(r).startswith("certify: converge new")}
    view_a = {rid: (heads_a[rid].version, _title(heads_a[rid])) for rid in mine if rid in heads_a}
    view_b = {rid: (heads_b[rid].version, _title(heads_b[rid])) for rid in mine if rid in heads_b}
    expect(view_a == view_b, f"after full pulls the devices disagree: A holds {view_a}, B holds {view_b} (R-CONFORM-3)")
    titles = sorted(title for _, title in view_a.values())
    expect(titles == sorted(["certify: converge edit on A", "certify: converge edit on B",
                             "certify: converge new on A", "certify: converge new on B"]),
           f"after conflicting edits the account holds {titles}; both edits and both new notes must be there "
           "(R-CONFORM-3, R-CONFLICT-6)")
    await sa.bye()
    await sb.bye()
