"""The sync client against a scripted server (built on ServerSession): receipts, regressions,
batching, blobs, retries, timeouts and the device mutants, each exercised on its own."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.flash import Geometry, NandFlash, PowerLoss
from sidekick_testbed.emulator.handset import BACKOFF_BASE, Handset, PoweredOff
from sidekick_testbed.emulator.handset.sync_client import (
    AuthRefused,
    GenerationChanged,
    ServerNotAuthentic,
    SyncFailed,
    SyncTimeout,
)
from sidekick_testbed.emulator.handset.transport import Channel, HttpChannel, memory_connector
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.protocol import auth
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import (
    Assigned,
    Auth,
    BlobAck,
    BlobChunk,
    BlobQuery,
    Bye,
    Commit,
    Durable,
    Error,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    Pull,
    PullAck,
    PullEnd,
    Push,
    PushAck,
    Records,
)
from sidekick_testbed.protocol.records import Contact, Note, Photo, Record
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA, ServerSession

KEY = bytes(range(32))
ACCOUNT = "alice"
DEVICE_ID = b"D" * 16
SERVER_ID = b"S" * 16


@dataclass
class Script:
    """A scripted server: keeps what it was told and answers by rule; tests bend the rules."""

    generation: int = 7
    durable_lsn: int = 0
    anchor: int = 0
    server_id: bytes = SERVER_ID
    max_batch: int = 256
    key: bytes = KEY
    records: list[Record] = field(default_factory=list)   # pull source, in version order
    blobs: dict[bytes, bytes] = field(default_factory=dict)
    received: list[Message] = field(default_factory=list)
    pushed_lsns: list[int] = field(default_factory=list)
    version: int = 0
    durable_generation: int | None = None       # DURABLE names this generation if set
    drop_after: Callable[[Message], bool] = lambda m: False   # close the connection after answering
    hang_on: type | None = None                  # never answer this request type
    pull_error: int | None = None                # answer PULL with this non-fatal ERROR once
    ping_before_hello_ok_answer: bool = False
    bad_server_mac: bool = False
    refuse_auth: bool = False
    sessions: int = 0

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.sessions += 1
        session = ServerSession(max_batch=self.max_batch)
        nonce = bytes([self.sessions]) * 16
        while True:
            event = session.next_event()
            if event is NEED_DATA:
                data = await stream.receive_some()
                session.receive_data(data)
                continue
            if event is CONNECTION_CLOSED:
                return
            self.received.append(event)
            if self.hang_on is not None and isinstance(event, self.hang_on):
                await trio.sleep_forever()
            answers = self.answer(session, event, nonce)
            for message in answers:
                await stream.send_all(session.send(message))
            if isinstance(event, Bye) or self.drop_after(event) or any(
                    isinstance(m, Error) and m.fatal for m in answers):
                return
            if isinstance(event, Error) and event.fatal:
                return

    def answer(self, session: ServerSession, event: Message, nonce: bytes) -> list[Message]:
        if isinstance(event, Hello):
            return [session.challenge(self.server_id, nonce)]
        if isinstance(event, Bye):
            return []
        if hasattr(event, "mac"):  # AUTH
            inputs = dict(server_nonce=nonce, device_nonce=event.device_nonce, account=ACCOUNT,  # type: ignore[union-attr]
                          device_id=session.device_id, server_id=self.server_id)
            if self.refuse_auth or not auth.verify(auth.device_mac(self.key, **inputs), event.mac):  # type: ignore[union-attr]
                return [Error(ErrorCode.AUTH_FAILED, True, "bad credentials")]
            mac = auth.server_mac(b"x" * 32 if self.bad_server_mac else self.key, **inputs)
            known = session.device_id == DEVICE_ID  # the script's history belongs to DEVICE_ID only
            return [HelloOk(self.server_id, self.generation, self.durable_lsn if known else 0,
                            self.anchor if known else 0, mac)]
        if isinstance(event, Push):
            self.pushed_lsns.extend(c.lsn for c in event.changes)
            self._pending = getattr(self, "_pending", []) + list(event.changes)
            return [PushAck(event.changes[-1].lsn)]
        if isinstance(event, Commit):
            assigned = []
            for change in getattr(self, "_pending", []):
                self.version += 1
                self.records.append(Record(change.record.record_id, self.version, change.record.deleted,
                                           change.record.body, change.record.conflict_of))
                assigned.append(Assigned(change.lsn, change.record.record_id, self.version))
            self._pending = []
            self.durable_lsn = max(self.durable_lsn, event.lsn)
            generation = self.durable_generation or self.generation
            return [Durable(generation, event.lsn, tuple(assigned))]
        if isinstance(event, Pull):
            if self.pull_error is not None:
                code, self.pull_error = self.pull_error, None
                return [Error(code, False, "refused")]
            out: list[Message] = []
            newer = [r for r in self.records if r.version > event.anchor][: event.max_records]
            for record in newer:
                out.append(Records((record,)))
                body = record.body
                if isinstance(body, Photo) and body.blob_id in self.blobs:
                    data = self.blobs[body.blob_id]
                    for offset in range(0, len(data), 30_000):
                        out.append(BlobChunk(body.blob_id, offset, len(data), data[offset:offset + 30_000]))
            end = max([event.anchor] + [r.version for r in newer])
            more = len(newer) < len([r for r in self.records if r.version > event.anchor])
            out.append(PullEnd(end, more))
            return out
        if isinstance(event, PullAck):
            self.anchor = event.anchor
            return []
        if isinstance(event, BlobQuery):
            return [BlobAck(event.blob_id, len(self.blobs.get(event.blob_id, b"")))]
        if isinstance(event, BlobChunk):
            have = self.blobs.get(event.blob_id, b"")
            if event.offset == len(have):
                self.blobs[event.blob_id] = have + event.data
            return [BlobAck(event.blob_id, len(self.blobs[event.blob_id]))]
        if isinstance(event, Ping):
            return [Pong(event.nonce)]
        if isinstance(event, Error):
            return []
        raise AssertionError(f"script has no answer for {event!r}")


def new_handset(seed: int = 1, mutants: Mutants = NO_MUTANTS, blocks: int = 64) -> Handset:
    flash = NandFlash(Geometry(blocks=blocks), rng=random.Random(seed))
    return Handset.create(flash, device_id=DEVICE_ID, account=ACCOUNT, key=KEY, rng=random.Random(seed),
                          mutants=mutants, name="phone")


def states(handset: Handset) -> dict[str, int]:
    out: dict[str, int] = {}
    for version in handset.store.records():
        out[version.state.name] = out.get(version.state.name, 0) + 1
    return out


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, Message]] = []
        self.regressions: list[str] = []

    def on_message(self, handset: Handset, direction: str, message: Message) -> None:
        self.messages.append((direction, message))

    def on_regression(self, handset: Handset, reason: str) -> None:
        self.regressions.append(reason)


async def sync_with(handset: Handset, script: Script, attempts: int = 1,  # type: ignore[no-untyped-def]
                    once: bool = False):
    """Sync against the script; the handset's error, if any, is raised as itself."""
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            connect = memory_connector(script.serve, nursery)
            if once:
                report = await handset.sync_once(connect)
            else:
                report = await handset.sync(connect, attempts=attempts)
        except Exception as exc:  # re-raised below, outside the nursery's exception group
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return report


async def test_first_sync_pushes_marks_durable_and_adopts_the_server() -> None:
    phone = new_handset()
    ids = [phone.add(Contact(f"c{i}")) for i in range(5)]
    script = Script()
    report = await sync_with(phone, script)
    assert report.pushed == 5 and report.durable == 5 and report.regression is None
    assert states(phone) == {"DURABLE": 5}
    meta = phone.store.meta
    assert (meta.server_id, meta.generation, meta.durable_lsn) == (SERVER_ID, 7, script.durable_lsn)
    assert meta.anchor == script.anchor == 5
    assert {v.record.record_id: v.record.version for v in phone.store.records()} == {
        r.record_id: r.version for r in script.records}
    assert set(ids) == {r.record_id for r in script.records}
    assert phone.store.at_risk() == []
    assert isinstance(script.received[-1], Bye)


async def test_push_ack_alone_never_marks_clean() -> None:
    phone = new_handset()
    phone.add(Note("n"))
    script = Script(drop_after=lambda m: isinstance(m, Push))
    with pytest.raises(SyncFailed):
        await sync_with(phone, script)
    assert states(phone) == {"PUSHED": 1}        # received, not durable: still at risk
    assert len(phone.store.at_risk()) == 1


async def test_mutant_mark_clean_on_push_ack_loses_the_receipt_distinction() -> None:
    phone = new_handset(mutants=Mutants(frozenset({"mark-clean-on-push-ack"})))
    phone.add(Note("n"))
    script = Script(drop_after=lambda m: isinstance(m, Push))
    with pytest.raises(SyncFailed):
        await sync_with(phone, script)
    # The server never said DURABLE, yet the mutant device believes it is safe: the bug.
    assert states(phone) == {"DURABLE": 1}
    assert phone.store.at_risk() == []


async def test_durable_in_another_generation_marks_nothing() -> None:
    phone = new_handset()
    phone.add(Note("n"))
    script = Script(durable_generation=99)
    with pytest.raises(GenerationChanged):
        await sync_with(phone, script, attempts=1, once=True)
    assert states(phone) == {"DIRTY": 1}                  # nothing marked clean, all to push again
    assert isinstance(script.received[-1], Error) and script.received[-1].fatal
    assert phone.store.meta.generation == 99 and phone.store.meta.anchor == 0


@pytest.mark.parametrize("change", ["generation", "server_id", "watermark", "anchor"])
async def test_regression_marks_everything_dirty_and_pushes_it_all(change: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    phone = new_handset()
    phone.observer = recorder
    ids = [phone.add(Note(f"n{i}")) for i in range(4)]
    script = Script()
    await sync_with(phone, script)
    before = phone.store.meta
    # The server "restores": forgets everything of this device.
    lost = Script(generation=7, durable_lsn=0, anchor=0)
    if change == "generation":
        lost.generation = 8
    elif change == "server_id":
        lost.server_id = b"T" * 16
    elif change == "watermark":
        lost.durable_lsn = before.durable_lsn - 1
        lost.anchor = before.anchor
    else:
        lost.durable_lsn = before.durable_lsn
        lost.anchor = before.anchor - 1
    with caplog.at_level(logging.WARNING, logger="sidekick.sync"):
        report = await sync_with(phone, lost)
    assert report.regression is not None and recorder.regressions == [report.regression]
    assert "REGRESSION" in caplog.text
    assert sorted(r.record_id for r in lost.records) == sorted(ids)   # everything pushed again
    assert min(lost.pushed_lsns) > before.durable_lsn                  # with fresh LSNs
    assert len(phone.live_records()) == 4 and states(phone) == {"DURABLE": 4}
    assert phone.store.meta.generation == lost.generation


async def test_first_contact_with_a_known_device_id_retires_it() -> None:
    phone = new_handset()
    phone.add(Note("after a reset"))
    script = Script(durable_lsn=50, anchor=0)  # the server remembers this device id up to LSN 50
    report = await sync_with(phone, script, attempts=2)
    assert report.regression is None
    assert report.attempts == 2
    assert phone.store.meta.device_id != DEVICE_ID  # R-IDEM-4: a new id, not LSNs above 50
    assert script.pushed_lsns == [1]
    assert states(phone) == {"DURABLE": 1}


async def test_a_trusted_server_claiming_lsns_never_issued_retires_the_device_id() -> None:
    """R-IDEM-9: nothing is pushed under the old id; the next attempt is a recovery as a new device."""
    phone = new_handset()
    ids = [phone.add(Note(f"n{i}")) for i in range(2)]
    script = Script()
    await sync_with(phone, script)
    script.durable_lsn = 99  # e.g. a cloned handset image pushed LSNs above ours under this id
    script.records.clear()
    pushed_before = len(script.pushed_lsns)
    report = await sync_with(phone, script, attempts=2)
    assert report.attempts == 2
    meta = phone.store.meta
    assert meta.device_id != DEVICE_ID and meta.durable_lsn <= max(script.pushed_lsns)
    pushes = [m for m in script.received if isinstance(m, Push)]
    assert sum(len(p.changes) for p in pushes) == pushed_before + 2  # all pushed again, once, as the new id
    assert sorted(r.record_id for r in script.records) == sorted(ids)
    assert states(phone) == {"DURABLE": 2}


async def test_an_empty_photo_uploads_its_one_empty_chunk() -> None:
    """R-BLOB-12: BLOB_QUERY cannot tell an unknown blob from a whole empty one; the chunk can."""
    phone = new_handset()
    phone.take_photo("nothing", b"")
    script = Script()
    await sync_with(phone, script)
    chunks = [m for m in script.received if isinstance(m, BlobChunk)]
    assert [(c.offset, c.total, c.data) for c in chunks] == [(0, 0, b"")]
    assert states(phone) == {"DURABLE": 1}


async def test_bad_anchor_refusal_is_a_regression_and_recovers_in_session() -> None:
    phone = new_handset()
    phone.add(Note("x"))
    await sync_with(phone, script := Script())
    script.pull_error = ErrorCode.BAD_ANCHOR
    report = await sync_with(phone, script)
    assert report.regression is not None and "anchor" in report.regression
    assert states(phone) == {"DURABLE": 1}


async def test_pushes_respect_max_batch_and_max_frame() -> None:
    phone = new_handset(blocks=128)
    for i in range(40):
        phone.add(Note(f"note {i}", "x" * 300))
    script = Script(max_batch=16)
    phone.max_frame = 4096
    await sync_with(phone, script)
    pushes = [m for m in script.received if isinstance(m, Push)]
    assert len(pushes) >= 3 and all(len(p.changes) <= 16 for p in pushes)
    lsns = [c.lsn for p in pushes for c in p.changes]
    assert lsns == sorted(lsns) and len(lsns) == 40


async def test_a_burst_is_committed_batch_by_batch_so_one_durable_lists_it_all() -> None:
    """R-LIMIT-4: never more than max_batch changes pushed and not yet listed by a DURABLE, so a
    DURABLE of a 1 KiB frame (R-LIMIT-5: 30 assignments) never has to be cut."""
    phone = new_handset(blocks=128)
    for i in range(70):
        phone.add(Note(f"note {i}"))
    script = Script(max_batch=30)
    phone.max_frame = 1024
    await sync_with(phone, script)
    unlisted: list[int] = []
    for message in script.received:
        if isinstance(message, Push):
            unlisted.extend(c.lsn for c in message.changes)
            assert len(unlisted) <= 30
        elif isinstance(message, Commit):
            assert unlisted and message.lsn == unlisted[-1]
            unlisted = []
    assert states(phone) == {"DURABLE": 70}


async def test_photo_upload_resumes_from_the_servers_offset() -> None:
    phone = new_handset()
    data = random.Random(3).randbytes(150_000)
    phone.take_photo("sunset", data)
    photo = next(v.record.body for v in phone.store.records())
    assert isinstance(photo, Photo)
    script = Script(blobs={photo.blob_id: data[:70_000]})
    await sync_with(phone, script)
    chunks = [m for m in script.received if isinstance(m, BlobChunk)]
    assert chunks[0].offset == 70_000
    assert sum(len(c.data) for c in chunks) == len(data) - 70_000
    assert script.blobs[photo.blob_id] == data


async def test_pulled_photo_blob_is_checked_and_stored() -> None:
    phone = new_handset()
    data = b"JPEG" * 1000
    blob_id = b"b" * 16
    body = Photo("cat", blob_id, len(data), hashlib.sha256(data).digest())
    script = Script(records=[Record(b"r" * 16, 1, False, body)], blobs={blob_id: data}, version=1)
    await sync_with(phone, script)
    assert phone.store.read_blob(blob_id) == data and script.anchor == 1

    other = new_handset(seed=2)
    bad = Script(records=[Record(b"r" * 16, 1, False, body)], blobs={blob_id: b"X" * len(data)}, version=1)
    with pytest.raises(SyncFailed):
        await sync_with(other, bad)
    assert bad.anchor == 0 and other.store.get(b"r" * 16) is None   # never acknowledged nor applied


async def test_auth_refused_is_not_retried() -> None:
    phone = new_handset()
    script = Script(refuse_auth=True)
    with pytest.raises(AuthRefused):
        await sync_with(phone, script, attempts=5)
    assert script.sessions == 1


async def test_server_that_cannot_prove_the_key_is_refused() -> None:
    phone = new_handset()
    phone.add(Note("secret"))
    script = Script(bad_server_mac=True)
    with pytest.raises(ServerNotAuthentic):
        await sync_with(phone, script, attempts=5)
    assert not any(isinstance(m, Push) for m in script.received)


async def test_retries_back_off_exponentially_with_jitter_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    phone = new_handset()
    phone.add(Note("n"))
    script = Script()
    failures = 3
    starts: list[float] = []

    async with trio.open_nursery() as nursery:
        inner = memory_connector(script.serve, nursery)

        async def flaky() -> Channel:
            starts.append(trio.current_time())
            if len(starts) <= failures:
                from sidekick_testbed.emulator.handset.transport import ConnectFailed
                raise ConnectFailed("refused")
            return await inner()

        report = await phone.sync(flaky, attempts=5)
        nursery.cancel_scope.cancel()
    assert report.attempts == failures + 1
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    for i, gap in enumerate(gaps):
        nominal = BACKOFF_BASE * 2 ** i
        assert 0.5 * nominal <= gap <= 1.5 * nominal
    assert len(set(round(g / (BACKOFF_BASE * 2 ** i), 6) for i, g in enumerate(gaps))) > 1  # jittered


@pytest.mark.parametrize("binding", ["raw", "http"])
async def test_a_server_that_takes_nothing_times_the_sync_out(autojump_clock: trio.testing.MockClock,
                                                              nursery: trio.Nursery, binding: str) -> None:
    """The server accepts the connection, then neither reads (raw: a lockstep stream, whose write
    ends only when read) nor answers (HTTP: reads the POST, never replies): the sync times out."""
    device_end, server_end = trio.testing.lockstep_stream_pair()

    async def deaf() -> None:
        if binding == "http":
            while await server_end.receive_some(65536):
                pass
        else:
            await trio.sleep_forever()

    nursery.start_soon(deaf)

    async def connect() -> Channel:
        from sidekick_testbed.emulator.handset.transport import StreamChannel
        return HttpChannel(device_end, "deaf.invalid") if binding == "http" else StreamChannel(device_end)

    phone = new_handset()
    phone.add(Note("n"))
    phone.timeout = 5.0
    start = trio.current_time()
    with trio.fail_after(600):  # the bug was a hang: bound the test itself
        with pytest.raises(SyncFailed) as info:
            await phone.sync(connect, attempts=1)
    assert isinstance(info.value.last, SyncTimeout)
    assert trio.current_time() - start == 5.0
    assert states(phone) == {"DIRTY": 1}  # nothing was confirmed: the record stays to be pushed


async def test_silent_server_times_out_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    phone = new_handset()
    phone.add(Note("n"))
    phone.timeout = 5.0
    script = Script(hang_on=Commit)
    start = trio.current_time()
    with pytest.raises(SyncFailed) as info:
        await sync_with(phone, script, attempts=2)
    assert isinstance(info.value.last, SyncTimeout)
    assert trio.current_time() - start >= 10.0
    assert states(phone) == {"PUSHED": 1}


async def test_power_cut_during_sync_stops_it_and_reboot_resumes(autojump_clock: trio.testing.MockClock) -> None:
    phone = new_handset()
    phone.add(Note("n"))
    script = Script(hang_on=Commit)
    async with trio.open_nursery() as nursery:
        connect = memory_connector(script.serve, nursery)

        async def cut_soon() -> None:
            await trio.sleep(1)
            phone.power_cut()

        nursery.start_soon(cut_soon)
        with pytest.raises(PoweredOff):
            await phone.sync(connect)
        nursery.cancel_scope.cancel()
    with pytest.raises(PoweredOff):
        phone.add(Note("no power"))
    phone.reboot()
    assert len(phone.store.pending()) == 1
    await sync_with(phone, Script())
    assert states(phone) == {"DURABLE": 1}


async def test_mutant_pull_ack_before_flash_acknowledges_what_a_power_cut_then_loses() -> None:
    record = Record(b"r" * 16, 1, False, Note("from the desktop"))
    for mutant, acked in ((frozenset(), False), (frozenset({"pull-ack-before-flash"}), True)):
        phone = new_handset(mutants=Mutants(mutant))
        script = Script()
        await sync_with(phone, script)          # first contact done: the next sync only pulls
        script.records, script.version = [record], 1
        phone.flash.arm_power_cut(phone.flash.ops + 1, "clean")   # the pull commit never happens
        with pytest.raises(PowerLoss):
            await sync_with(phone, script)
        phone.reboot()
        assert phone.store.get(record.record_id) is None
        assert (script.anchor == 1) is acked   # the mutant told the server it had the record


async def test_a_lost_pull_ack_is_not_taken_for_a_regression(autojump_clock: trio.testing.MockClock) -> None:
    phone = new_handset()
    phone.timeout = 5.0
    script = Script()
    script.records.append(Record(b"R" * 16, 1, False, Note("from the desktop")))
    script.version = 1
    script.hang_on = PullAck  # the PULL_ACK never reaches the server's state
    with pytest.raises(SyncFailed):
        await sync_with(phone, script)
    assert phone.store.meta.anchor == 1  # the pull is on flash
    assert script.anchor == 0           # the server never learnt it
    script.hang_on = None
    report = await sync_with(phone, script)
    assert report.regression is None    # behind us by one lost PULL_ACK: no recovery sync
    assert script.anchor == 1
    assert phone.store.meta.server_anchor == 1
    assert states(phone) == {"DURABLE": 1}


async def test_an_anchor_below_what_the_server_confirmed_is_a_regression() -> None:
    phone = new_handset()
    script = Script()
    script.records.append(Record(b"R" * 16, 1, False, Note("from the desktop")))
    script.version = 1
    await sync_with(phone, script)
    assert phone.store.meta.server_anchor == 1
    script.anchor = 0  # the server forgot a PULL_ACK it had confirmed (PONG after it)
    report = await sync_with(phone, script)
    assert report.regression is not None and "anchor" in report.regression


async def test_an_idle_poll_writes_nothing_to_flash_and_skips_the_ping() -> None:
    phone = new_handset()
    phone.add(Note("n"))
    script = Script()
    await sync_with(phone, script)
    assert any(isinstance(m, Ping) for m in script.received)  # a new anchor: confirmed by PONG
    assert phone.store.meta.server_anchor == script.anchor == 1
    programs = phone.store.flash.stats.programs
    script.received.clear()
    report = await sync_with(phone, script)
    assert [type(m) for m in script.received] == [Hello, Auth, Pull, PullAck, Bye]
    assert report.regression is None and report.pulled == 0
    assert phone.store.flash.stats.programs == programs  # nothing new: no commit, no wear
    script.records.append(Record(b"R" * 16, 2, False, Note("from the desktop")))
    script.version = 2
    script.received.clear()
    await sync_with(phone, script)
    assert any(isinstance(m, Ping) for m in script.received)
    assert phone.store.meta.server_anchor == script.anchor == 2
    assert phone.store.flash.stats.programs > programs
