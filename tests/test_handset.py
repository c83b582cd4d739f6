"""The handset: user operations, power, factory reset, status; and end to end against the reference
server in-process (raw and HTTP bindings over memory streams, ``emulator.testing.MemoryWorld``) and
over real TCP sockets.
"""

from __future__ import annotations

import hashlib
import logging
import random

import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.flash import Geometry, NandFlash, PowerLoss
from sidekick_testbed.emulator.handset import Handset, HandsetError, PoweredOff, UnknownRecord, UnsyncedData
from sidekick_testbed.emulator.handset.transport import (
    http_connector,
    tcp_connector,
)
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.emulator.store import SyncState
from sidekick_testbed.emulator.testing import (
    ACCOUNT,
    KEY,
    MemoryWorld,
    conflict_copies,
    device_bodies,
    device_heads,
    live_bodies,
)
from sidekick_testbed.protocol.records import CalendarEvent, Contact, Note, Photo, Todo


def new_handset(seed: int = 0, mutants: Mutants = NO_MUTANTS) -> Handset:
    flash = NandFlash(Geometry(blocks=64), rng=random.Random(seed))
    return Handset.create(flash, device_id=b"\x07" * 16, account=ACCOUNT, key=KEY,
                          rng=random.Random(seed), mutants=mutants, name="phone")


# ---------------------------------------------------------------------------------------- local


def test_user_operations_and_their_errors() -> None:
    phone = new_handset()
    ada = phone.add(Contact("Ada", ("+44",), ("ada@example.org",)))
    meet = phone.add(CalendarEvent("Launch", 1254474000, 1254477600, "Palo Alto"))
    todo = phone.add(Todo("Back up", due=1254560400, priority=2))
    phone.edit(ada, Contact("Ada King"))
    phone.delete(meet)
    assert device_bodies(phone) == {ada: Contact("Ada King"), todo: Todo("Back up", due=1254560400, priority=2)}
    assert device_heads(phone)[meet].deleted
    with pytest.raises(UnknownRecord):
        phone.edit(meet, CalendarEvent("x", 0, 0))
    with pytest.raises(UnknownRecord):
        phone.delete(b"\x00" * 16)
    with pytest.raises(HandsetError, match="contact"):
        phone.edit(ada, Note("not a contact"))
    assert all(v.state is SyncState.DIRTY for v in phone.store.records())
    lsns = [v.lsn for v in phone.store.pending()]
    assert lsns == sorted(lsns) and len(set(lsns)) == 3


def test_photo_keeps_its_blob() -> None:
    phone = new_handset()
    data = random.Random(1).randbytes(10_000)
    rid = phone.take_photo("cat", data)
    body = device_bodies(phone)[rid]
    assert isinstance(body, Photo) and body.sha256 == hashlib.sha256(data).digest()
    phone.reboot()
    assert phone.store.read_blob(body.blob_id) == data


def test_power_cut_and_reboot_keep_committed_data() -> None:
    phone = new_handset()
    rid = phone.add(Note("kept"))
    phone.power_cut()
    assert not phone.powered
    with pytest.raises(PoweredOff):
        phone.add(Note("lost"))
    with pytest.raises(PoweredOff):
        phone.status()
    phone.reboot()
    assert device_bodies(phone) == {rid: Note("kept")}


def test_power_loss_at_every_flash_operation_of_an_edit_is_all_or_nothing() -> None:
    base = new_handset()
    rid = base.add(Note("v1"))
    snapshot = base.flash.snapshot()
    start = base.flash.ops
    base.edit(rid, Note("v2"))
    span = base.flash.ops - start
    assert span > 0
    for k in range(span):
        flash = NandFlash(Geometry(blocks=64), rng=random.Random(k))
        flash.restore(snapshot)
        phone = Handset(flash, rng=random.Random(k))
        flash.arm_power_cut(flash.ops + k + 1)
        with pytest.raises(PowerLoss):
            phone.edit(rid, Note("v2"))
        assert not phone.powered
        phone.reboot()
        assert device_bodies(phone)[rid] in (Note("v1"), Note("v2"))


def test_factory_reset_refuses_while_anything_is_not_durable(caplog: pytest.LogCaptureFixture) -> None:
    phone = new_handset()
    phone.add(Contact("Ada"))
    phone.add(Note("idea"))
    with pytest.raises(UnsyncedData) as info:
        phone.factory_reset()
    assert len(info.value.at_risk) == 2 and "1 contact" in str(info.value) and "1 note" in str(info.value)
    assert len(device_bodies(phone)) == 2
    meta = phone.store.meta
    with caplog.at_level(logging.WARNING, logger="sidekick.handset"):
        phone.factory_reset(force=True)
    assert "FORCED FACTORY RESET" in caplog.text and caplog.text.count("lost:") == 2
    assert device_bodies(phone) == {}
    after = phone.store.meta
    assert (after.device_id, after.account, after.key) == (meta.device_id, meta.account, meta.key)
    assert after.next_lsn >= meta.next_lsn


def test_status_counts_per_kind() -> None:
    phone = new_handset()
    phone.add(Contact("a"))
    rid = phone.add(Contact("b"))
    phone.add(Note("n"))
    phone.delete(rid)
    status = phone.status()
    assert status["server_id"] is None
    assert status["kinds"] == {
        "contact": {"total": 1, "deleted": 1, "dirty": 2, "pushed_not_durable": 0, "durable": 0},
        "note": {"total": 1, "deleted": 0, "dirty": 1, "pushed_not_durable": 0, "durable": 0},
    }
    assert status["at_risk"] == 3


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("http", [False, True], ids=["raw", "http"])
async def test_phone_and_desktop_converge_through_the_reference_server(http: bool) -> None:
    world = MemoryWorld(seed=3)
    phone, desktop = world.handset("phone"), world.handset("desktop")
    async with world.running():
        ada = phone.add(Contact("Ada", ("+1",)))
        pic = phone.take_photo("cat", random.Random(5).randbytes(100_000))
        note = desktop.add(Note("meeting", "tuesday"))
        for handset in (phone, desktop, phone):
            report = await world.sync(handset, http=http)
            assert report.regression is None
        assert device_bodies(phone) == device_bodies(desktop) == live_bodies(await world.server_heads())
        assert set(device_bodies(phone)) == {ada, pic, note}
        photo = device_bodies(desktop)[pic]
        assert isinstance(photo, Photo)
        assert hashlib.sha256(desktop.store.read_blob(photo.blob_id)).digest() == photo.sha256
        # edits and a delete travel too
        desktop.edit(ada, Contact("Ada King", ("+1",)))
        phone.delete(note)
        for handset in (desktop, phone, desktop):
            await world.sync(handset, http=http)
        assert device_bodies(phone) == device_bodies(desktop) == live_bodies(await world.server_heads())
        assert device_bodies(phone)[ada] == Contact("Ada King", ("+1",)) and note not in device_bodies(phone)
        for handset in (phone, desktop):
            assert handset.store.at_risk() == []


async def test_concurrent_edits_keep_both_versions_as_a_conflict_copy() -> None:
    world = MemoryWorld(seed=4)
    phone, desktop = world.handset("phone"), world.handset("desktop")
    async with world.running():
        rid = phone.add(Note("plan", "v0"))
        await world.sync(phone)
        await world.sync(desktop)
        phone.edit(rid, Note("plan", "phone's"))
        desktop.edit(rid, Note("plan", "desktop's"))
        await world.sync(phone)
        report = await world.sync(desktop)
        assert [c.record_id for c in report.conflicts] == [rid]
        await world.sync(phone)
        heads = await world.server_heads()
        copies = conflict_copies(heads)
        assert heads[rid].body == Note("plan", "desktop's")
        assert [(c.conflict_of, c.body) for c in copies.values()] == [(rid, Note("plan", "phone's"))]
        assert device_bodies(phone) == device_bodies(desktop) == live_bodies(heads)
        for handset in (phone, desktop):
            assert conflict_copies(device_heads(handset)) == copies


async def test_sync_over_real_tcp_sockets_both_bindings() -> None:
    world = MemoryWorld(seed=5)
    phone, desktop = world.handset("phone"), world.handset("desktop")
    await world.provision()
    async with trio.open_nursery() as nursery:
        raw = await nursery.start(trio.serve_tcp, world.server.serve_stream, 0)
        web = await nursery.start(trio.serve_tcp, world.server.serve_http_stream, 0)
        raw_port = raw[0].socket.getsockname()[1]
        web_port = web[0].socket.getsockname()[1]
        rid = phone.add(Contact("Grace"))
        await phone.sync(tcp_connector("127.0.0.1", raw_port))
        await desktop.sync(http_connector("127.0.0.1", web_port))
        assert device_bodies(desktop) == {rid: Contact("Grace")}
        assert phone.store.at_risk() == [] and desktop.store.at_risk() == []
        nursery.cancel_scope.cancel()


async def test_mutant_restore_from_server_on_reboot_loses_unsynced_data() -> None:
    for mutants, survives in ((NO_MUTANTS, True), (Mutants(frozenset({"restore-from-server-on-reboot"})), False)):
        world = MemoryWorld(seed=6)
        phone = world.handset("phone", mutants)
        async with world.running():
            synced = phone.add(Note("synced"))
            await world.sync(phone)
            unsynced = phone.add(Note("written offline"))
            phone.reboot()
            await world.sync(phone)
            bodies = device_bodies(phone)
            assert synced in bodies
            assert (unsynced in bodies) is survives
            assert (unsynced in live_bodies(await world.server_heads())) is survives


async def test_mutant_mark_clean_on_push_ack_loses_data_when_the_connection_drops_before_commit() -> None:
    from sidekick_testbed.emulator.handset.sync_client import SyncError
    from sidekick_testbed.emulator.handset.transport import cutting_connector

    for mutants, kept in ((NO_MUTANTS, True), (Mutants(frozenset({"mark-clean-on-push-ack"})), False)):
        world = MemoryWorld(seed=8)
        phone = world.handset("phone", mutants)
        async with world.running():
            rid = phone.add(Note("only here"))
            # HELLO, CHALLENGE, AUTH, HELLO_OK, PUSH, PUSH_ACK: then the line drops, no COMMIT
            connect, channels = cutting_connector(world.connector(), 6)
            with pytest.raises(SyncError):
                await phone.sync_once(connect)
            assert channels[0].frames == 6
            world.storage.crash()
            await world.sync(phone)
            assert (rid in live_bodies(await world.server_heads())) is kept
            assert rid in device_bodies(phone)      # the device still has it, but believes it safe
