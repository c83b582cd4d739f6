"""Checks of blobs: resumed and empty uploads, chunk totals, photos whose blob is incomplete."""

from __future__ import annotations

import hashlib

from sidekick_testbed.emulator.certify.answers import assigned_version, brief, show
from sidekick_testbed.emulator.certify.changes import body_change
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Level, expect
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import BlobAck, BlobChunk, Error, PullAck, Push
from sidekick_testbed.protocol.records import Photo


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
