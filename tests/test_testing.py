"""The public testing module: ``MemoryWorld`` runs handsets against the reference server in memory,
``ScriptedDevice`` drives one session step by step; and the module's usage example runs as written."""

from __future__ import annotations

import random
import re

import pytest
import trio

from sidekick_testbed.emulator import testing
from sidekick_testbed.emulator.testing import (
    KEY,
    MemoryWorld,
    ServerRefused,
    conflict_copies,
    device_bodies,
    live_bodies,
    note_change,
    open_memory_device,
)
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.records import Contact, Note


async def test_handsets_of_one_account_converge_over_both_bindings() -> None:
    world = MemoryWorld(seed=2)
    phone, desktop = world.handset("phone"), world.handset("desktop")
    milk = phone.add(Note("groceries", "milk"))
    ada = desktop.add(Contact("Ada"))
    async with world.running():
        await world.sync(phone)
        await world.sync(desktop, http=True)
        await world.sync(phone, http=True)
        server = live_bodies(await world.server_heads())
    assert server == {milk: Note("groceries", "milk"), ada: Contact("Ada")}
    assert device_bodies(phone) == device_bodies(desktop) == server


async def test_concurrent_edits_keep_a_conflict_copy() -> None:
    world = MemoryWorld(seed=3)
    phone, desktop = world.handset("phone"), world.handset("desktop")
    note = phone.add(Note("plan", "v1"))
    async with world.running():
        await world.sync(phone)
        await world.sync(desktop)
        phone.edit(note, Note("plan", "phone"))
        desktop.edit(note, Note("plan", "desktop"))
        await world.sync(phone)
        await world.sync(desktop)
        await world.sync(phone)
        heads = await world.server_heads()
    copies = conflict_copies(heads)
    assert len(copies) == 1 and next(iter(copies.values())).conflict_of == note
    assert {live_bodies(heads)[note], *(c.body for c in copies.values())} == {Note("plan", "phone"),
                                                                              Note("plan", "desktop")}


async def test_a_handset_of_another_account_is_provisioned_and_kept_apart() -> None:
    world = MemoryWorld(seed=4)
    alice, bob = world.handset("alice-phone"), world.handset("bob-phone", account="bob")
    alice.add(Note("alice's", ""))
    async with world.running():
        await world.sync(alice)
        await world.sync(bob)
        assert await world.server_heads("bob") == {}
    assert device_bodies(bob) == {}
    assert set(world.accounts) == {"alice", "bob"}


def test_connecting_outside_running_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="running"):
        MemoryWorld().connector()


@pytest.mark.parametrize("http", [False, True])
async def test_scripted_device_pushes_commits_and_pulls(http: bool) -> None:
    world = MemoryWorld(seed=5)
    await world.provision()
    async with trio.open_nursery() as nursery:
        device = await open_memory_device(world.server, nursery, account="alice", device_id=bytes([9]) * 16,
                                          key=KEY, rng=random.Random(5), http=http)
        await device.hello()
        change = note_change(device.rng, 1, "scripted")
        conflicts, durable = await device.push_commit([change])
        pulled = await device.pull_all()
        await device.bye()
        nursery.cancel_scope.cancel()
    assert conflicts == [] and durable.durable_lsn == 1
    assert [r.body for r in pulled.records] == [change.record.body]


async def test_scripted_device_with_a_wrong_key_is_refused() -> None:
    world = MemoryWorld(seed=6)
    await world.provision()
    async with trio.open_nursery() as nursery:
        device = await open_memory_device(world.server, nursery, account="alice", device_id=bytes(16),
                                          key=b"\x00" * 32, rng=random.Random(6))
        with pytest.raises(ServerRefused) as refused:
            await device.hello()
        nursery.cancel_scope.cancel()
    assert refused.value.error.code == ErrorCode.AUTH_FAILED


def test_the_module_usage_example_runs() -> None:
    doc = testing.__doc__
    assert doc is not None
    example = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert example is not None and "trio.run(main)" in example.group(1)
    code = "\n".join(line[4:] for line in example.group(1).splitlines())
    exec(compile(code, "emulator.testing example", "exec"), {})
