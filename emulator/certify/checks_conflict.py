"""Checks of conflicts: a stale edit keeps the overwritten version as a conflict copy; devices converge."""

from __future__ import annotations

from sidekick_testbed.emulator.certify.answers import assigned_version, brief, note_title
from sidekick_testbed.emulator.certify.changes import copy_id, note_change
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Fail, Level, expect
from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.protocol.records import Note, Record


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
    expect(head is not None and head.version == v3 and note_title(head) == "certify: stale edit on A",
           f"the record's head after the conflict is {brief(head)}; the later commit must win (R-CONFLICT-1 rule 4)")
    expect(copy is not None and copy.conflict_of == record_id and note_title(copy) == "certify: edit on B",
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
               and note_title(copy) == f"certify: taken edit on B ({case})",
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
            or note_title(r).startswith("certify: converge new")}
    view_a = {rid: (heads_a[rid].version, note_title(heads_a[rid])) for rid in mine if rid in heads_a}
    view_b = {rid: (heads_b[rid].version, note_title(heads_b[rid])) for rid in mine if rid in heads_b}
    expect(view_a == view_b, f"after full pulls the devices disagree: A holds {view_a}, B holds {view_b} (R-CONFORM-3)")
    titles = sorted(title for _, title in view_a.values())
    expect(titles == sorted(["certify: converge edit on A", "certify: converge edit on B",
                             "certify: converge new on A", "certify: converge new on B"]),
           f"after conflicting edits the account holds {titles}; both edits and both new notes must be there "
           "(R-CONFORM-3, R-CONFLICT-6)")
    await sa.bye()
    await sb.bye()
