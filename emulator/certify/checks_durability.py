"""Checks of durability across a hard restart (``--restart-cmd``) and a restore (``--restore-cmd``)."""

from __future__ import annotations

import trio

from emulator.certify.checks_sync import assigned_version, copy_id
from emulator.certify.client import ServerViolation
from emulator.certify.context import CheckContext, Device, Session, note_change
from emulator.certify.framework import Fail, Level, Need, check, expect
from protocol.messages import BlobAck, BlobChunk


@check("durable-survives-restart", "Every change confirmed DURABLE survives a kill -9 right after its DURABLE",
       requirements=("R-DUR-3", "R-CONFORM-1", "R-DUR-5", "R-DUR-12", "R-CONFLICT-3", "R-GEN-1"), level=Level.MUST,
       group="restart", needs=(Need.SESSION, Need.RESTART))
async def durable_survives_restart(ctx: CheckContext) -> None:
    """Two devices commit; right after the last DURABLE the server is killed while a blob upload keeps
    its writer busy (so no idle moment lets a lazy commit slip in before the kill), then verified."""
    devices = [ctx.device() for _ in range(2)]
    sessions = [await ctx.session(device, label=f"d{i}") for i, device in enumerate(devices)]
    generation = sessions[0].generation
    confirmed: dict[bytes, int] = {}
    watermarks: dict[bytes, int] = {}
    for round_ in range(2):
        for device, session in zip(devices, sessions, strict=True):
            changes = [note_change(device.lsn(), ctx.new_id(), f"certify: restart {round_}.{i}") for i in range(3)]
            _, durable = await session.push_commit(changes)
            for change in changes:
                confirmed[change.record.record_id] = assigned_version(durable, change.lsn)
            watermarks[device.device_id] = durable.durable_lsn
    # last: a conflict, whose copy must be durable with the change that caused it (R-CONFLICT-3)
    record_id = next(iter(confirmed))
    stale = note_change(devices[0].lsn(), record_id, "certify: restart conflict", base=confirmed[record_id])
    newer = note_change(devices[1].lsn(), record_id, "certify: restart edit", base=confirmed[record_id])
    _, durable = await sessions[1].push_commit([newer])
    overwritten = assigned_version(durable, newer.lsn)
    watermarks[devices[1].device_id] = durable.durable_lsn
    conflicts, durable = await sessions[0].push_commit([stale])
    expect(len(conflicts) == 1, f"a stale edit drew {len(conflicts)} CONFLICT messages (R-CONFLICT-4)")
    confirmed[record_id] = assigned_version(durable, stale.lsn)
    confirmed[copy_id(record_id, overwritten)] = confirmed[record_id] + 1
    watermarks[devices[0].device_id] = durable.durable_lsn
    ctx.trace.note(f"{len(confirmed)} changes confirmed DURABLE; killing the server while a blob upload goes on")
    busy = trio.Event()

    async def keep_writer_busy(session: Session) -> None:
        total, chunk = 1 << 20, 1024
        blob_id, offset = ctx.new_id(), 0
        try:
            while True:
                if offset >= total:
                    blob_id, offset = ctx.new_id(), 0
                await session.client.send(BlobChunk(blob_id, offset, total, bytes(chunk)))
                await session.expect(BlobAck, "BLOB_CHUNK")
                offset += chunk
                busy.set()
        except (Fail, ServerViolation) as exc:
            ctx.trace.note(f"the upload stops: {exc}")
        finally:
            busy.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_writer_busy, sessions[1])
        await busy.wait()
        assert ctx.target.restart_cmd is not None
        try:
            await ctx.run_command(ctx.target.restart_cmd, "restart")
        finally:
            nursery.cancel_scope.cancel()
    for session in sessions:
        await session.client.aclose()
    after = await ctx.wait_ready(devices[0])
    await _verify(ctx, after, devices, generation, confirmed, watermarks, "a kill -9 and restart")


async def _verify(ctx: CheckContext, first: Session, devices: list[Device], generation: int,
                  confirmed: dict[bytes, int], watermarks: dict[bytes, int], event: str) -> None:
    if first.generation != generation:
        ctx.trace.note(f"the generation changed across {event}: devices will run recovery syncs")
        return
    for device in devices:
        session = first if device is devices[0] else await ctx.session(device)
        told = watermarks[device.device_id]
        expect(session.hello_ok.durable_lsn >= told,
               f"after {event} in the same generation, HELLO_OK.durable_lsn is {session.hello_ok.durable_lsn}, "
               f"below the {told} DURABLE confirmed (R-DUR-5, R-CONFORM-1)")
    heads, _ = await first.pull_all(min(confirmed.values()) - 1, tolerate_bad_anchor=True)
    lost = [rid.hex() for rid, version in confirmed.items()
            if rid not in heads or heads[rid].version < version]
    if lost:
        raise Fail(f"after {event} the server kept generation {generation:#x} but lost {len(lost)} of "
                   f"{len(confirmed)} changes it had confirmed DURABLE (R-DUR-3, R-CONFORM-1, R-GEN-1): {lost[:4]}")


@check("generation-after-restore", "A restore from backup gives a new generation and keeps the server id",
       requirements=("R-GEN-1", "R-GEN-3", "R-CONFORM-1"), level=Level.MUST, group="restore",
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
        return
    heads, _ = await after.pull_all(version - 1, tolerate_bad_anchor=True)
    if change.record.record_id not in heads:
        raise Fail(f"after a restore the server kept generation {generation:#x} and lost a change it had "
                   "confirmed DURABLE: devices cannot see the loss (R-GEN-1, R-CONFORM-1)")
    raise Fail(f"a restore from backup kept generation {generation:#x}; a restore must draw a new one (R-GEN-1)")
