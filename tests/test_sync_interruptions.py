"""A sync interrupted at every message boundary, with and without a server crash, and by a power
cut at every flash operation: afterwards a clean sync converges, nothing lost, nothing doubled."""

from __future__ import annotations

import random

import pytest

from sidekick_testbed.emulator.flash import PowerLoss
from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.handset.sync_client import SyncError
from sidekick_testbed.emulator.handset.transport import cutting_connector
from sidekick_testbed.emulator.testing import MemoryWorld, conflict_copies, device_bodies, live_bodies
from sidekick_testbed.protocol.records import Contact, Note, RecordBody, Todo

SEED = 77


def setup() -> tuple[MemoryWorld, Handset, Handset]:
    """Phone with unsynced contacts, a to-do, a photo; desktop with a note already on the server."""
    world = MemoryWorld(seed=SEED)
    return world, world.handset("phone"), world.handset("desktop")


def populate(phone: Handset, desktop: Handset) -> None:
    rng = random.Random(SEED)
    for i in range(3):
        phone.add(Contact(f"contact {i}", (f"+1 555 01{i:02d}",)))
    phone.add(Todo("call back", priority=3))
    phone.take_photo("whiteboard", rng.randbytes(5000))
    desktop.add(Note("from the desktop"))


async def interrupted_sync(world: MemoryWorld, phone: Handset, budget: int | None = None,
                           cut_at: int | None = None, http: bool = False) -> tuple[int, int]:
    """Run the phone's sync once, cut after ``budget`` frames or at flash op ``cut_at``; return
    (frames passed, flash ops used)."""
    connect, channels = cutting_connector(world.connector(http=http), budget if budget is not None else 1 << 30)
    start = phone.flash.ops
    if cut_at is not None:
        phone.flash.arm_power_cut(start + cut_at + 1)
    try:
        await phone.sync_once(connect)
    except SyncError:
        pass
    except PowerLoss:
        assert not phone.powered
        phone.reboot()
    return channels[0].frames if channels else 0, phone.flash.ops - start


async def check_converged(world: MemoryWorld, phone: Handset, desktop: Handset,
                          expected: dict[bytes, RecordBody]) -> None:
    for handset in (phone, desktop, phone):
        await world.sync(handset, attempts=2)
    heads = await world.server_heads()
    assert live_bodies(heads) == expected
    assert conflict_copies(heads) == {}
    history = await world.storage.history("alice")
    versions_per_record: dict[bytes, int] = {}
    for stored in history:
        versions_per_record[stored.record.record_id] = versions_per_record.get(stored.record.record_id, 0) + 1
    assert set(versions_per_record.values()) == {1}, "a change was applied twice"
    for handset in (phone, desktop):
        assert device_bodies(handset) == expected
        assert handset.store.at_risk() == []


async def reference(http: bool = False) -> tuple[int, int, dict[bytes, RecordBody]]:
    world, phone, desktop = setup()
    async with world.running():
        populate(phone, desktop)
        await world.sync(desktop)
        frames, ops = await interrupted_sync(world, phone, http=http)
        expected = device_bodies(phone)
        await check_converged(world, phone, desktop, expected)
    return frames, ops, expected


@pytest.mark.parametrize("crash, http", [(False, False), (True, False), (False, True)],
                         ids=["drop", "drop+server-crash", "http-drop"])
async def test_drop_after_every_message(crash: bool, http: bool) -> None:
    total, _ops, expected_ref = await reference(http)
    assert total > 10
    for budget in range(total + 1):
        world, phone, desktop = setup()
        async with world.running():
            populate(phone, desktop)
            await world.sync(desktop)
            passed, _ = await interrupted_sync(world, phone, budget=budget, http=http)
            assert passed == min(budget, total)
            if crash:
                world.storage.crash()
            expected = {**device_bodies(phone), **device_bodies(desktop)}
            assert set(expected) == set(expected_ref)
            await check_converged(world, phone, desktop, expected)


async def test_power_cut_at_every_flash_operation_of_a_sync() -> None:
    _frames, ops, expected_ref = await reference()
    assert ops > 0
    step = max(1, ops // 40)                # sample evenly if the sync uses many operations
    points = sorted(set(range(0, ops, step)) | {ops - 1})
    for cut_at in points:
        world, phone, desktop = setup()
        async with world.running():
            populate(phone, desktop)
            await world.sync(desktop)
            await interrupted_sync(world, phone, cut_at=cut_at)
            assert phone.powered
            expected = {**device_bodies(phone), **device_bodies(desktop)}
            assert set(expected) == set(expected_ref)
            await check_converged(world, phone, desktop, expected)
