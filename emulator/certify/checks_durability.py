"""Checks of durability across a hard restart (``--restart-cmd``), a power cut (``--power-cut-cmd``) and a
restore (``--restore-cmd``)."""

from __future__ import annotations

import hashlib

from sidekick_testbed.emulator.certify.answers import assigned_version
from sidekick_testbed.emulator.certify.changes import body_change, copy_id, note_change
from sidekick_testbed.emulator.certify.checks_sync import retransmit_of_confirmed
from sidekick_testbed.emulator.certify.context import CheckContext, Device, Session
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Fail, Level, Need, expect
from sidekick_testbed.protocol.messages import PullAck
from sidekick_testbed.protocol.records import Photo


@check("durable-survives-restart", "Every change confirmed DURABLE survives a kill -9 at the moment its DURABLE arrives",
       requirements=("R-DUR-3", "R-CONFORM-1", "R-DUR-5", "R-DUR-12", "R-CONFLICT-3", "R-GEN-1", "R-PULL-14",
                     "R-BLOB-6"),
       level=Level.MUST, group="restart", needs=(Need.SESSION, Need.RESTART))
async def durable_survives_restart(ctx: CheckContext) -> None:
    """Two devices commit; the restart command, started ahead and held, is released the moment the
    last DURABLE arrives (a server that writes behind its DURABLE has no time left), then verified."""
    assert ctx.target.restart_cmd is not None
    await _durable_across(ctx, ctx.target.restart_cmd, "restart", "a kill -9 and restart")


@check("durable-survives-power-cut", "Every change confirmed DURABLE survives a power cut at its DURABLE",
       requirements=("R-DUR-3", "R-CONFORM-1", "R-DUR-5", "R-DUR-12", "R-CONFLICT-3", "R-GEN-1", "R-PULL-14",
                     "R-BLOB-6"),
       level=Level.MUST, group="power-cut", needs=(Need.SESSION, Need.POWER_CUT))
async def durable_survives_power_cut(ctx: CheckContext) -> None:
    """As the restart check, with the power-cut command: what the server wrote but did not sync is
    lost (``sidekick powercut`` cuts at the last DURABLE the server sent, docs/CERTIFY.md)."""
    assert ctx.target.power_cut_cmd is not None
    await _durable_across(ctx, ctx.target.power_cut_cmd, "power-cut", "a power cut and restart")


async def _durable_across(ctx: CheckContext, command: str, what: str, event: str) -> None:
    devices = [ctx.device() for _ in range(2)]
    sessions = [await ctx.session(device, label=f"d{i}") for i, device in enumerate(devices)]
    generation = sessions[0].generation
    confirmed: dict[bytes, int] = {}
    watermarks: dict[bytes, int] = {}
    blob = ctx.rng.randbytes(3000)
    photo = Photo(f"certify: {what} photo", ctx.new_id(), len(blob), hashlib.sha256(blob).digest())
    held = await sessions[0].blob_query(photo.blob_id)  # a run of the same seed may have sent it before
    if held < len(blob):
        await sessions[0].upload(photo.blob_id, blob, start=held, chunk=1000)
    photo_id = ctx.new_id()
    for round_ in range(2):
        for device, session in zip(devices, sessions, strict=True):
            changes = [note_change(device.lsn(), ctx.new_id(), f"certify: {what} {round_}.{i}") for i in range(3)]
            _, durable = await session.push_commit(changes)
            for change in changes:
                confirmed[change.record.record_id] = assigned_version(durable, change.lsn)
            watermarks[device.device_id] = durable.durable_lsn
    # last: a conflict, whose copy must be durable with the change that caused it (R-CONFLICT-3)
    record_id = next(iter(confirmed))
    stale = note_change(devices[0].lsn(), record_id, f"certify: {what} conflict", base=confirmed[record_id])
    newer = note_change(devices[1].lsn(), record_id, f"certify: {what} edit", base=confirmed[record_id])
    _, durable = await sessions[1].push_commit([newer])
    overwritten = assigned_version(durable, newer.lsn)
    watermarks[devices[1].device_id] = durable.durable_lsn
    # device 1 acknowledges a pull; the PONG after it says the anchor is recorded (R-PULL-14)
    pulled = await sessions[1].pull(min(confirmed.values()) - 1, 1)
    await sessions[1].client.send(PullAck(pulled.end.anchor))
    await sessions[1].ping()
    anchors = {devices[1].device_id: pulled.end.anchor}
    # last: the conflict, with the photo, whose blob must be durable with it (R-CONFLICT-3, R-BLOB-6)
    photo_change = body_change(devices[0].lsn(), photo_id, photo)
    try:
        await sessions[0].push([stale, photo_change])
    except Fail as exc:
        raise Fail(f"BLOB_ACK said all {len(blob)} bytes of blob {photo.blob_id.hex()} are held, then the PUSH of "
                   f"its photo failed: {exc} (R-BLOB-5, R-BLOB-1)") from None
    armed = await ctx.arm_command(command, what)
    conflicts, durable = await sessions[0].commit(photo_change.lsn, on_durable=armed.fire)
    await armed.finish()
    confirmed[photo_id] = assigned_version(durable, photo_change.lsn)
    expect(len(conflicts) == 1, f"a stale edit drew {len(conflicts)} CONFLICT messages (R-CONFLICT-4)")
    confirmed[record_id] = assigned_version(durable, stale.lsn)
    confirmed[copy_id(record_id, overwritten)] = confirmed[record_id] + 1
    watermarks[devices[0].device_id] = durable.durable_lsn
    ctx.trace.note(f"{len(confirmed)} changes confirmed DURABLE before the {what}")
    for session in sessions:
        await session.client.aclose()
    after = await ctx.wait_ready(devices[0])
    await _verify(ctx, after, devices, generation, confirmed, watermarks, event, anchors)
    if after.generation == generation:
        pulled = await after.pull(confirmed[photo_id] - 1, 1)
        expect(pulled.blobs.get(photo.blob_id) == blob,
               f"after {event} the photo confirmed DURABLE is pulled with {len(pulled.blobs.get(photo.blob_id, b''))} "
               f"of its {len(blob)} blob bytes: the blob was not durable with the photo (R-BLOB-6, R-BLOB-8)")


@check("retransmit-after-restart", "A change retransmitted after a kill -9 and restart is a duplicate, not applied again",
       requirements=("R-IDEM-1", "R-DUR-12", "R-IDEM-2"), level=Level.MUST, group="restart",
       needs=(Need.SESSION, Need.RESTART))
async def retransmit_after_restart(ctx: CheckContext) -> None:
    """The last applied LSN must be stored with the changes (R-DUR-12): a server that keeps it in
    memory only applies a retransmission again after a restart."""
    await retransmit_of_confirmed(ctx, restart=True)


async def _verify(ctx: CheckContext, first: Session, devices: list[Device], generation: int,
                  confirmed: dict[bytes, int], watermarks: dict[bytes, int], event: str,
                  anchors: dict[bytes, int]) -> None:
    if first.generation != generation:
        ctx.trace.note(f"the generation changed across {event}: devices will run recovery syncs")
        return
    heads, _ = await first.pull_all(min(confirmed.values()) - 1, tolerate_bad_anchor=True)
    lost = [rid.hex() for rid, version in confirmed.items()
            if rid not in heads or heads[rid].version < version]
    if lost:
        raise Fail(f"after {event} the server kept generation {generation:#x} but lost {len(lost)} of "
                   f"{len(confirmed)} changes it had confirmed DURABLE (R-DUR-3, R-CONFORM-1, R-GEN-1): {lost[:4]}")
    for device in devices:
        session = first if device is devices[0] else await ctx.session(device)
        told = watermarks[device.device_id]
        expect(session.hello_ok.durable_lsn >= told,
               f"after {event} in the same generation, HELLO_OK.durable_lsn is {session.hello_ok.durable_lsn}, "
               f"below the {told} DURABLE confirmed (R-DUR-5, R-DUR-12)")
        acked = anchors.get(device.device_id, 0)
        expect(session.hello_ok.anchor >= acked,
               f"after {event} in the same generation, HELLO_OK.anchor is {session.hello_ok.anchor}, below the "
               f"{acked} a PULL_ACK recorded before a PONG answered (R-PULL-14)")


@check("generation-after-restore", "A restore from backup gives a new generation and keeps the server id",
       requirements=("R-GEN-1", "R-GEN-3", "R-CONFORM-1", "R-GEN-11"), level=Level.MUST, group="restore",
       needs=(Need.SESSION, Need.RESTORE))
async def generation_after_restore(ctx: CheckContext) -> None:
    device = ctx.device()
    session = await ctx.session(device)
    generation, server_id = session.generation, session.challenge.server_id
    change = note_change(device.lsn(), ctx.new_id(), "certify: before restore")
    _, durable = await session.push_commit([change])
    version = assigned_version(durable, change.lsn)
    await session.bye()
    assert ctx.target.restore_cmd is not None
    await ctx.run_command(ctx.target.restore_cmd, "restore")
    after = await ctx.wait_ready(device)
    expect(after.challenge.server_id == server_id,
           f"the server id changed across a restore ({server_id.hex()} -> {after.challenge.server_id.hex()}) (R-GEN-3)")
    if after.generation != generation:
        expect(after.hello_ok.durable_lsn == 0 and after.hello_ok.anchor == 0,
               f"after a restore from a backup taken before this device's first session, HELLO_OK reports "
               f"durable_lsn {after.hello_ok.durable_lsn} and anchor {after.hello_ok.anchor} for it; the backup "
               "holds neither (R-GEN-11)")
        return
    heads, _ = await after.pull_all(version - 1, tolerate_bad_anchor=True)
    if change.record.record_id not in heads:
        raise Fail(f"after a restore the server kept generation {generation:#x} and lost a change it had "
                   "confirmed DURABLE: devices cannot see the loss (R-GEN-1, R-CONFORM-1)")
    raise Fail(f"a restore from backup kept generation {generation:#x}; a restore must draw a new one (R-GEN-1)")
