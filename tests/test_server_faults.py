"""Every fault mode demonstrably misbehaves as named, and the correct server does not."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from sidekick_testbed.emulator.testing import ServerRefused, note_change, open_memory_device
from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.protocol.records import Note, Record
from sidekick_testbed.server_stub.faults import FAULT_MODES, FaultSet, UnknownFault, describe
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage

KEY = b"k" * 32
D1 = b"\x01" * 16
D2 = b"\x02" * 16
R1 = b"\xaa" * 16


def change(lsn: int, title: str, rid: bytes = R1, base: int = 0) -> Change:
    return Change(lsn, base, Record(rid, 0, False, Note(title)))


async def sim(*faults: str) -> SimulatedStorage:
    storage = SimulatedStorage(random.Random(1), faults=FaultSet(faults))
    await storage.add_account("alice", KEY)
    return storage


def test_registry_is_documented_and_checked() -> None:
    for name in ("ack-before-durable", "silent-rollback", "duplicate-on-retransmit", "ignore-pull-ack",
                 "lose-tail-on-crash", "wrong-watermark"):
        assert name in FAULT_MODES and name in describe()
    with pytest.raises(UnknownFault):
        FaultSet(["no-such-fault"])
    with pytest.raises(KeyError):
        FaultSet().on("no-such-fault")


@pytest.mark.parametrize("on", [False, True])
async def test_ack_before_durable_loses_acknowledged_commit_on_crash(on: bool) -> None:
    storage = await sim(*(["ack-before-durable"] if on else []))
    result = await storage.commit("alice", D1, [change(1, "acknowledged")])
    assert result.durable_lsn == 1
    storage.crash()
    kept = await storage.records("alice")
    assert (kept == []) is on


@pytest.mark.parametrize("on", [False, True])
async def test_ack_before_durable_on_sqlite(on: bool, tmp_path: Path) -> None:
    faults = FaultSet()
    storage = SqliteStorage(tmp_path / "s.db", rng=random.Random(1), faults=faults)
    await storage.add_account("alice", KEY)
    if on:
        faults.enable("ack-before-durable")
    result = await storage.commit("alice", D1, [change(1, "acknowledged")])
    assert result.durable_lsn == 1
    storage._conn.close()  # the process dies: nothing more reaches the file
    storage._writer.closed = True
    reopened = SqliteStorage(tmp_path / "s.db", rng=random.Random(2))
    kept = await reopened.records("alice")
    assert (kept == []) is on
    await reopened.aclose()


@pytest.mark.parametrize("on", [False, True])
async def test_silent_rollback_keeps_the_generation(on: bool) -> None:
    storage = await sim(*(["silent-rollback"] if on else []))
    snapshot = storage.backup()
    before = storage.generation
    await storage.commit("alice", D1, [change(1, "lost")])
    storage.restore(snapshot)
    assert (storage.generation == before) is on
    assert await storage.records("alice") == []


@pytest.mark.parametrize("on", [False, True])
async def test_duplicate_on_retransmit_applies_twice(on: bool) -> None:
    storage = await sim(*(["duplicate-on-retransmit"] if on else []))
    await storage.commit("alice", D1, [change(1, "once")])
    await storage.commit("alice", D1, [change(1, "once")])
    applied = [(v.device_id, v.lsn) for v in await storage.history("alice")]
    assert (applied.count((D1, 1)) == 2) is on


@pytest.mark.parametrize("on", [False, True])
async def test_lose_tail_on_crash_drops_last_batch(on: bool) -> None:
    storage = await sim(*(["lose-tail-on-crash"] if on else []))
    await storage.commit("alice", D1, [change(1, "first", rid=b"\x01" * 16)])
    await storage.commit("alice", D1, [change(2, "second", rid=b"\x02" * 16)])
    generation = storage.generation
    storage.crash()
    assert len(await storage.records("alice")) == (1 if on else 2)
    assert storage.generation == generation


@pytest.mark.parametrize("on", [False, True])
async def test_lose_tail_on_crash_on_sqlite(on: bool, tmp_path: Path) -> None:
    faults = FaultSet(["lose-tail-on-crash"] if on else [])
    storage = SqliteStorage(tmp_path / "s.db", rng=random.Random(1), faults=faults)
    await storage.add_account("alice", KEY)
    await storage.commit("alice", D1, [change(1, "first", rid=b"\x01" * 16)])
    await storage.commit("alice", D1, [change(2, "second", rid=b"\x02" * 16)])
    await storage._writer.aclose()  # no clean close: as after kill -9
    reopened = SqliteStorage(tmp_path / "s.db", rng=random.Random(2), faults=faults)
    assert len(await reopened.records("alice")) == (1 if on else 2)
    assert (await reopened.device_state("alice", D1)).durable_lsn == (1 if on else 2)
    await reopened.aclose()


@pytest.mark.parametrize("on", [False, True])
async def test_forget_conflict_copy_loses_a_version(on: bool) -> None:
    storage = await sim(*(["forget-conflict-copy"] if on else []))
    await storage.commit("alice", D1, [change(1, "base")])
    await storage.commit("alice", D1, [change(2, "edit one", base=1)])
    result = await storage.commit("alice", D2, [change(1, "edit two", base=1)])
    titles = {r.body.title for r in await storage.records("alice")}  # type: ignore[union-attr]
    assert ("edit one" not in titles) is on
    assert (result.conflicts == ()) is on


@pytest.mark.parametrize("on", [False, True])
async def test_reorder_versions_skips_records_in_paged_pull(on: bool) -> None:
    storage = await sim(*(["reorder-versions"] if on else []))
    rng = random.Random(3)
    await storage.commit("alice", D1, [change(i, f"n{i}", rid=rng.randbytes(16)) for i in range(1, 6)])
    seen: list[int] = []
    anchor, more = 0, True
    while more:
        page = await storage.pull("alice", anchor, 2)
        seen.extend(r.version for r in page.records)
        anchor, more = page.anchor, page.more
    assert (sorted(seen) != [1, 2, 3, 4, 5]) is on


async def _server(*faults: str) -> tuple[SyncServer, SimulatedStorage]:
    storage = await sim(*faults)
    return SyncServer(storage, rng=random.Random(7)), storage


@pytest.mark.parametrize("on", [False, True])
async def test_ignore_pull_ack_advances_anchor_without_ack(on: bool, nursery: Any) -> None:
    server, storage = await _server(*(["ignore-pull-ack"] if on else []))
    await storage.commit("alice", D2, [change(1, "from another device")])
    rng = random.Random(1)
    device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY, rng=rng)
    await device.hello()
    page = await device.pull(0, ack=False)
    assert page.end is not None and page.end.anchor == 1
    await device.bye()
    again = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY, rng=rng)
    hello = await again.hello()
    assert (hello.anchor == 1) is on


@pytest.mark.parametrize("on", [False, True])
async def test_wrong_watermark_reports_uncommitted_changes(on: bool, nursery: Any) -> None:
    server, storage = await _server(*(["wrong-watermark"] if on else []))
    rng = random.Random(1)
    device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY, rng=rng)
    await device.hello()
    await device.push([note_change(rng, 5, "pushed, never committed")])
    await device.bye()
    again = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY, rng=rng)
    hello = await again.hello()
    assert (hello.durable_lsn == 5) is on
    assert await storage.records("alice") == []


@pytest.mark.parametrize("on", [False, True])
async def test_durable_despite_storage_error_confirms_a_failed_commit(on: bool, nursery: Any) -> None:
    server, storage = await _server(*(["durable-despite-storage-error"] if on else []))
    rng = random.Random(1)
    device = await open_memory_device(server, nursery, account="alice", device_id=D1, key=KEY, rng=rng)
    await device.hello()
    await device.push([note_change(rng, 3, "the disk is full")])
    storage.fail_next(1)
    if on:
        _conflicts, durable = await device.commit(3)
        assert durable.durable_lsn == 3  # confirmed, yet nothing was written
    else:
        with pytest.raises(ServerRefused) as refused:
            await device.commit(3)
        assert refused.value.error.fatal
    assert await storage.records("alice") == []


async def test_faults_can_be_switched_at_run_time() -> None:
    faults = FaultSet()
    storage = SimulatedStorage(random.Random(1), faults=faults)
    server = SyncServer(storage, faults=faults, rng=random.Random(2))
    faults.enable("duplicate-on-retransmit")
    assert server.faults.on("duplicate-on-retransmit") and storage.faults.on("duplicate-on-retransmit")
    faults.disable("duplicate-on-retransmit")
    assert not storage.faults.on("duplicate-on-retransmit")


def test_every_fault_has_a_test() -> None:
    source = Path(__file__).read_text()
    for name in FAULT_MODES:
        assert f'"{name}"' in source.replace(f'"{name}" in', ""), name
    trio.run(trio.sleep, 0)


async def test_server_fault_set_reaches_the_sqlite_writer(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "s.db", rng=random.Random(1))
    faults = FaultSet()
    SyncServer(storage, faults=faults, rng=random.Random(2))
    faults.enable("ack-before-durable")
    assert storage._writer.faults.on("ack-before-durable")
    await storage.aclose()
