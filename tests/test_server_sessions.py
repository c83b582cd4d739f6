"""Sessions against the reference server: over real TCP sockets on 127.0.0.1 and over memory
streams (with MockClock for timeouts): sync, auth, isolation, bad peers, limits."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.testing import (
    ScriptedDevice,
    ServerClosed,
    ServerRefused,
    note_change,
    open_memory_device,
)
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.framing import FrameDecoder, encode_frame
from sidekick_testbed.protocol.messages import Auth, Change, Error, Hello, Push
from sidekick_testbed.protocol.records import Note, Photo, Record
from sidekick_testbed.protocol.session import DeviceSession
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import ServerAddresses, SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage

KEY_A = b"a" * 32
KEY_B = b"b" * 32
D1 = b"\x01" * 16
D2 = b"\x02" * 16


async def _storage(kind: str, tmp: Path) -> Any:
    storage = SimulatedStorage(random.Random(1)) if kind == "sim" else SqliteStorage(
        tmp / "s.db", rng=random.Random(1))
    await storage.add_account("alice", KEY_A)
    await storage.add_account("bob", KEY_B)
    return storage


@pytest.fixture(params=["sim", "sqlite"])
async def tcp_server(request: pytest.FixtureRequest, tmp_path: Path,
                     nursery: trio.Nursery) -> AsyncIterator[tuple[SyncServer, ServerAddresses]]:
    storage = await _storage(request.param, tmp_path)
    server = SyncServer(storage, rng=random.Random(2))
    addresses = await nursery.start(lambda task_status: server.run(tcp=("127.0.0.1", 0), task_status=task_status))
    yield server, addresses
    server.shutdown()
    await storage.aclose()


async def tcp_device(addresses: ServerAddresses, account: str, device_id: bytes, key: bytes,
                     seed: int = 0) -> ScriptedDevice:
    assert addresses.tcp is not None
    stream = await trio.open_tcp_stream(*addresses.tcp)
    return ScriptedDevice(stream, account=account, device_id=device_id, key=key, rng=random.Random(seed))


async def test_full_sync_over_tcp(tcp_server: Any) -> None:
    server, addresses = tcp_server
    rng = random.Random(5)
    one = await tcp_device(addresses, "alice", D1, KEY_A, 1)
    hello = await one.hello()
    assert (hello.generation, hello.durable_lsn, hello.anchor) == (server.storage.generation, 0, 0)
    changes = [note_change(rng, lsn, f"note {lsn}") for lsn in (2, 5, 9)]
    ack = await one.push(changes)
    assert ack.received_lsn == 9
    conflicts, durable = await one.commit(9)
    assert conflicts == [] and durable.durable_lsn == 9 and durable.generation == hello.generation
    assert [a.lsn for a in durable.assigned] == [2, 5, 9]
    await one.bye()

    two = await tcp_device(addresses, "alice", D2, KEY_A, 2)
    await two.hello()
    pulled = await two.pull_all(0, max_records=2)
    assert sorted(r.record_id for r in pulled.records) == sorted(c.record.record_id for c in changes)
    await two.ping()
    await two.bye()
    assert (await server.storage.device_state("alice", D2)).anchor == 3
    again = await tcp_device(addresses, "alice", D1, KEY_A, 3)
    assert (await again.hello()).durable_lsn == 9


async def test_photo_blob_upload_and_pull(tcp_server: Any) -> None:
    server, addresses = tcp_server
    data = bytes(random.Random(1).randbytes(150_000))
    blob_id = b"\x42" * 16
    photo = Record(b"\x43" * 16, 0, False, Photo("cat", blob_id, len(data), hashlib.sha256(data).digest()))
    one = await tcp_device(addresses, "alice", D1, KEY_A)
    await one.hello()
    with pytest.raises(ServerRefused) as refused:
        await one.push([Change(1, 0, photo)])
    assert refused.value.error.code == ErrorCode.BLOB_INCOMPLETE
    one = await tcp_device(addresses, "alice", D1, KEY_A)
    await one.hello()
    assert await one.upload_blob(blob_id, data, chunk=35_000, stop_at=70_000) == 70_000  # interrupted upload
    one = await tcp_device(addresses, "alice", D1, KEY_A)
    await one.hello()
    assert await one.upload_blob(blob_id, data, chunk=30_000) == len(data)  # resumes at 70_000
    await one.push_commit([Change(1, 0, photo)])
    two = await tcp_device(addresses, "alice", D2, KEY_A)
    await two.hello()
    pulled = await two.pull_all()
    assert pulled.blobs == {blob_id: data}


async def test_wrong_key_and_unknown_account_fail_alike(tcp_server: Any) -> None:
    _, addresses = tcp_server
    errors = []
    for account, key in (("alice", KEY_B), ("nobody", KEY_A)):
        device = await tcp_device(addresses, account, D1, key)
        with pytest.raises(ServerRefused) as refused:
            await device.hello()
        errors.append((refused.value.error.code, refused.value.error.fatal, refused.value.error.text))
    assert errors[0] == errors[1] == (ErrorCode.AUTH_FAILED, True, errors[0][2])


async def test_replayed_auth_fails(tcp_server: Any) -> None:
    _, addresses = tcp_server
    recorded = await tcp_device(addresses, "alice", D1, KEY_A)
    await recorded.hello()
    session = DeviceSession()
    stream = await trio.open_tcp_stream(*addresses.tcp)
    await stream.send_all(session.send(session.hello("alice", D1)))
    first = await _read_one(stream, session)
    from sidekick_testbed.protocol.auth import device_mac
    nonce = b"\x07" * 16
    mac = device_mac(KEY_A, server_nonce=first.server_nonce, device_nonce=nonce, account="alice",
                     device_id=D1, server_id=first.server_id)
    replay = Auth(nonce, mac)
    await stream.send_all(session.send(replay))
    await _read_one(stream, session)  # HELLO_OK: the original session works
    second = DeviceSession()
    stream2 = await trio.open_tcp_stream(*addresses.tcp)
    await stream2.send_all(second.send(second.hello("alice", D1)))
    challenge = await _read_one(stream2, second)
    assert challenge.server_nonce != first.server_nonce
    await stream2.send_all(second.send(replay))
    answer = await _read_one(stream2, second)
    assert isinstance(answer, Error) and answer.code == ErrorCode.AUTH_FAILED


async def _read_frame(stream: trio.abc.Stream) -> Any:
    """The first frame the server sends, decoded without a session (it may answer before HELLO)."""
    decoder = FrameDecoder()
    while (frame := decoder.next_frame()) is None:
        with trio.fail_after(10):
            data = bytes(await stream.receive_some(65536))
        assert data, "connection closed without an answer"
        decoder.feed(data)
    return frame.message


async def _read_one(stream: trio.abc.Stream, session: DeviceSession) -> Any:
    from sidekick_testbed.protocol.session import NEED_DATA
    while True:
        event = session.next_event()
        if event is NEED_DATA:
            with trio.fail_after(10):
                session.receive_data(bytes(await stream.receive_some(65536)))
            continue
        return event


async def test_device_of_one_account_cannot_touch_another(tcp_server: Any) -> None:
    server, addresses = tcp_server
    rng = random.Random(3)
    alice = await tcp_device(addresses, "alice", D1, KEY_A)
    await alice.hello()
    secret = note_change(rng, 1, "alice's secret")
    await alice.push_commit([secret])
    blob_id = b"\x44" * 16
    await alice.upload_blob(blob_id, b"alice's photo bytes")
    bob = await tcp_device(addresses, "bob", D1, KEY_B)  # same device id, other account
    hello = await bob.hello()
    assert hello.durable_lsn == 0
    assert (await bob.pull_all()).records == []
    assert await bob.upload_blob(blob_id, b"") == 0  # bob's query sees nothing of alice's blob
    overwrite = Change(2, 1, Record(secret.record.record_id, 0, True, secret.record.body))
    await bob.push_commit([overwrite])
    heads = await server.storage.records("alice")
    assert [(r.record_id, r.deleted) for r in heads] == [(secret.record.record_id, False)]


async def test_garbage_gets_an_error_and_others_keep_syncing(tcp_server: Any) -> None:
    _, addresses = tcp_server
    junk = await trio.open_tcp_stream(*addresses.tcp)
    await junk.send_all(random.Random(1).randbytes(5000))
    answer = await _read_frame(junk)
    assert isinstance(answer, Error) and answer.fatal and answer.code == ErrorCode.BAD_MAGIC
    device = await tcp_device(addresses, "alice", D1, KEY_A)
    await device.hello()
    await device.push_commit([note_change(random.Random(2), 1, "still served")])


async def test_malformed_frame_mid_session(tcp_server: Any) -> None:
    _, addresses = tcp_server
    device = await tcp_device(addresses, "alice", D1, KEY_A)
    await device.hello()
    frame = bytearray(encode_frame(Push(()), 2))
    frame[-1] ^= 0xFF  # bad CRC
    await device.stream.send_all(bytes(frame))
    with pytest.raises(ServerRefused) as refused:
        await device.receive()
    assert refused.value.error.code == ErrorCode.BAD_CRC


async def test_real_handset_syncs_over_tcp(tcp_server: Any) -> None:
    from sidekick_testbed.emulator.flash import Geometry, NandFlash
    from sidekick_testbed.emulator.handset import Handset
    from sidekick_testbed.emulator.handset.transport import tcp_connector
    from sidekick_testbed.protocol.records import Contact

    _, addresses = tcp_server
    one = Handset.create(NandFlash(Geometry(blocks=64)), device_id=D1, account="alice", key=KEY_A,
                         rng=random.Random(1))
    two = Handset.create(NandFlash(Geometry(blocks=64)), device_id=D2, account="alice", key=KEY_A,
                         rng=random.Random(2))
    one.add(Contact("Ada Lovelace"))
    report = await one.sync(tcp_connector(*addresses.tcp))
    assert report.durable == 1
    report = await two.sync(tcp_connector(*addresses.tcp))
    assert report.pulled == 1
    assert [v.record.body for v in two.store.records()] == [Contact("Ada Lovelace")]


# ------------------------------------------------------------------------ memory streams, mock clock


async def mem_server(limits: Limits | None = None) -> SyncServer:
    storage = SimulatedStorage(random.Random(1))
    await storage.add_account("alice", KEY_A)
    return SyncServer(storage, limits=limits, rng=random.Random(2))


async def test_trickling_peer_is_dropped_and_others_are_served(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server(Limits(idle_timeout=60, handshake_timeout=10))
    slow_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_end)
    hello = DeviceSession()
    frame = hello.send(hello.hello("alice", D1))
    start = trio.current_time()
    closed = False
    for byte in frame[:-1]:  # one byte every 3 seconds: never a complete frame
        try:
            await slow_end.send_all(bytes([byte]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed = True
            break
        with trio.move_on_after(3) as waited:
            data = await slow_end.receive_some(1000)
        if not waited.cancelled_caught:
            assert data == b""  # before HELLO the server may not send anything: it closes
            closed = True
            break
    assert closed
    assert trio.current_time() - start == 10  # the handshake deadline: trickled bytes do not extend it
    assert server.metrics.refusals["handshake_timeout"] == 1
    device = await open_memory_device(server, nursery, account="alice", device_id=D2, key=KEY_A,
                                      rng=random.Random(1))
    await device.hello()


async def test_session_limit_answers_busy(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server(Limits(max_sessions=1))
    first = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A,
                                     rng=random.Random(1))
    await first.hello()
    second = await open_memory_device(server, nursery, account="alice", device_id=D2, key=KEY_A,
                                      rng=random.Random(2))
    with pytest.raises(ServerRefused) as refused:
        await second.hello()
    assert refused.value.error.code == ErrorCode.BUSY
    await first.push_commit([note_change(random.Random(3), 1, "first still works")])
    assert server.metrics.refusals["max_sessions"] == 1


async def test_byte_budget_ends_only_that_session(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server(Limits(session_bytes=20_000))
    rng = random.Random(4)
    greedy = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A, rng=rng)
    await greedy.hello()
    with pytest.raises(ServerRefused) as refused:
        for lsn in range(1, 100):
            await greedy.push([note_change(rng, lsn, "x" * 500)])
    assert refused.value.error.code == ErrorCode.BUDGET_EXCEEDED
    other = await open_memory_device(server, nursery, account="alice", device_id=D2, key=KEY_A, rng=rng)
    await other.hello()


async def test_version_mismatch_is_refused(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server()
    device_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_end)
    session = DeviceSession(versions=(2, 3))
    await device_end.send_all(session.send(Hello(2, 3, "alice", D1, 65536)))
    answer = await _read_one(device_end, session)
    assert isinstance(answer, Error) and answer.code == ErrorCode.VERSION_UNSUPPORTED


async def test_shutdown_ends_idle_sessions(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server()
    device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A,
                                      rng=random.Random(1))
    await device.hello()
    server.shutdown()
    with pytest.raises(ServerRefused) as refused:
        await device.receive()
    assert refused.value.error.code == ErrorCode.SHUTTING_DOWN
    with pytest.raises((ServerClosed, trio.BrokenResourceError, trio.ClosedResourceError, ServerRefused)):
        late = await open_memory_device(server, nursery, account="alice", device_id=D2, key=KEY_A,
                                        rng=random.Random(2))
        await late.hello()


async def test_idle_authenticated_session_gets_timeout(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server(Limits(idle_timeout=60, ping_interval=0))
    device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A,
                                      rng=random.Random(1))
    await device.hello()
    device.timeout = 600
    start = trio.current_time()
    with pytest.raises(ServerRefused) as refused:
        await device.receive()
    assert refused.value.error.code == ErrorCode.TIMEOUT
    assert 60 <= trio.current_time() - start < 61


@pytest.mark.parametrize(("message", "code"), [
    (Push(()), ErrorCode.BAD_FIELD),
    (Push((Change(0, 0, note_change(random.Random(1), 1, "x").record),)), ErrorCode.BAD_FIELD),
])
async def test_bad_push_is_refused(autojump_clock: Any, nursery: Any, message: Push, code: ErrorCode) -> None:
    server = await mem_server()
    device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A,
                                      rng=random.Random(1))
    await device.hello()
    await device.send(message)
    with pytest.raises(ServerRefused) as refused:
        await device.receive()
    assert refused.value.error.code == code and refused.value.error.fatal


async def test_session_log_line_is_json_with_log_json(autojump_clock: Any, nursery: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from sidekick_testbed.server_stub.session_log import JsonFormatter

    server = await mem_server()
    with caplog.at_level(logging.INFO, logger="sidekick.server"):
        device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A,
                                          rng=random.Random(1))
        await device.hello()
        await device.push_commit([note_change(random.Random(2), 4, "logged")])
        await device.bye()
        await trio.testing.wait_all_tasks_blocked()
    record = next(r for r in caplog.records if r.getMessage().startswith("session "))
    assert "account=alice" in record.getMessage() and "durable_lsn=4" in record.getMessage()
    line = json.loads(JsonFormatter().format(record))
    assert (line["event"], line["account"], line["committed"], line["durable_lsn"], line["outcome"]) == (
        "session", "alice", 1, 4, "bye")


async def test_storage_failure_answers_commit_with_storage_error(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server()
    storage = server.storage
    assert isinstance(storage, SimulatedStorage)
    device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A,
                                      rng=random.Random(1))
    await device.hello()
    await device.push([note_change(random.Random(2), 1, "never durable")])
    storage.fail_next()
    with pytest.raises(ServerRefused) as refused:
        await device.commit(1)
    assert refused.value.error.code == ErrorCode.STORAGE and refused.value.error.fatal
    assert await storage.records("alice") == []


async def test_conflict_is_sent_before_durable(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server()
    rng = random.Random(3)
    one = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A, rng=rng)
    await one.hello()
    original = note_change(rng, 1, "original")
    _, durable = await one.push_commit([original])
    rid = original.record.record_id
    await one.push_commit([note_change(rng, 2, "one's edit", record_id=rid, base_version=1)])
    two = await open_memory_device(server, nursery, account="alice", device_id=D2, key=KEY_A, rng=rng)
    await two.hello()
    conflicts, durable = await two.push_commit([note_change(rng, 1, "two's edit", record_id=rid, base_version=1)])
    assert [(c.lsn, c.record_id, c.server_version) for c in conflicts] == [(1, rid, 2)]
    assert two.received[-2] == conflicts[0] and two.received[-1] == durable
    pulled = await two.pull_all()
    copy = next(r for r in pulled.records if r.record_id == conflicts[0].copy_id)
    assert copy.conflict_of == rid and copy.body.title == "one's edit"  # type: ignore[union-attr]


async def test_durable_lists_every_change_it_covers(autojump_clock: Any, nursery: Any) -> None:
    """A COMMIT of a low LSN after a retransmission: DURABLE's watermark (from an earlier session)
    covers staged duplicates above the COMMIT's LSN, so it lists them too (R-DUR-5, R-DUR-6)."""
    server = await mem_server()
    rng = random.Random(5)
    first = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A, rng=rng)
    await first.hello()
    changes = [note_change(rng, lsn, f"n{lsn}") for lsn in (1, 2, 3)]
    _, durable = await first.push_commit(changes)
    again = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A, rng=rng)
    assert (await again.hello()).durable_lsn == 3
    await again.push(changes)  # DURABLE was lost: everything is sent again
    _, second = await again.commit(1)
    assert second.durable_lsn == 3
    assert second.assigned == durable.assigned


class _SlowReader:
    """A handset on a slow link: every read of the server's bytes comes ``delay`` seconds late."""

    def __init__(self, stream: trio.abc.Stream, delay: float) -> None:
        self.stream = stream
        self.delay = delay

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep(self.delay)
        return bytes(await self.stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_a_long_pull_to_a_slow_reader_is_not_idle(autojump_clock: Any, nursery: Any) -> None:
    server = await mem_server(Limits(idle_timeout=60))
    rng = random.Random(7)
    writer = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY_A, rng=rng)
    await writer.hello()
    lsn = 0
    for _ in range(4):  # 8 notes of 20 KB: three RECORDS frames, each read 40 s after it was written
        changes = []
        for _ in range(2):
            lsn += 1
            change = note_change(rng, lsn, f"note {lsn}")
            changes.append(Change(lsn, 0, Record(change.record.record_id, 0, False,
                                                 Note(f"note {lsn}", "x" * 20_000))))
        await writer.push_commit(changes)
    await writer.bye()
    device_end, server_end = trio.testing.lockstep_stream_pair()  # a write ends when it is read
    nursery.start_soon(server.serve_stream, server_end)
    slow = _SlowReader(device_end, 0.0)
    reader = ScriptedDevice(slow, account="alice", device_id=D2, key=KEY_A, rng=random.Random(8), timeout=600)
    await reader.hello()
    slow.delay = 40.0
    pulled_from = trio.current_time()
    page = await reader.pull(0)  # sends PULL_ACK after PULL_END
    assert len(page.records) == 8 and trio.current_time() - pulled_from > 2 * 60
    await reader.ping()  # the server took the PULL_ACK: no TIMEOUT although the PULL came long ago
    assert server.metrics.refusals["idle_timeout"] == 0
    assert (await server.storage.device_state("alice", D2)).anchor == page.end.anchor
