"""October 2009, replayed: the server loses its data and is restored from an older backup.

Two users, three handsets. They create, edit and delete records and photos, and sync; a backup is
taken; they keep working and syncing (the server confirms all of it DURABLE); the server's store
is restored from the older backup; every handset reboots and syncs. Every record every user ever
created (in its latest version) must be back on the server and on every handset of its account,
and no handset may lose anything at any point. The same with the server's ``silent-rollback``
fault (the restore keeps the generation) shows what the handsets can and cannot detect; the device
mutants show that the scenario catches each planted bug.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.emulator.testing import (
    MemoryWorld,
    conflict_copies,
    device_bodies,
    device_heads,
    live_bodies,
)
from sidekick_testbed.protocol.records import CalendarEvent, Contact, Note, Record, RecordBody, Todo


@dataclass
class Ledger:
    """The oracle: the latest body of every record each user created (None = deleted)."""

    latest: dict[str, dict[bytes, RecordBody | None]] = field(default_factory=dict)
    history: dict[bytes, list[RecordBody]] = field(default_factory=dict)
    losses: list[str] = field(default_factory=list)
    last_seen: dict[str, dict[bytes, RecordBody]] = field(default_factory=dict)

    def write(self, handset: Handset, rid: bytes, body: RecordBody | None) -> None:
        self.latest.setdefault(handset.store.meta.account, {})[rid] = body
        if body is not None:
            self.history.setdefault(rid, []).append(body)

    def expected(self, account: str) -> dict[bytes, RecordBody]:
        return {rid: b for rid, b in self.latest.get(account, {}).items() if b is not None}

    def check_no_loss(self, handset: Handset, when: str) -> None:
        """Nothing the handset held before may vanish unless a user deleted it."""
        now = device_bodies(handset)
        before = self.last_seen.get(handset.name, {})
        latest = self.latest.get(handset.store.meta.account, {})
        for rid in before:
            if rid not in now and latest.get(rid, "absent") is not None:
                self.losses.append(f"{handset.name} lost {rid.hex()} {when}")
        self.last_seen[handset.name] = now


@dataclass
class Outcome:
    regressions: dict[str, str | None]
    ledger: Ledger
    server: dict[str, dict[bytes, RecordBody]]
    devices: dict[str, dict[bytes, RecordBody]]
    copies: dict[str, dict[bytes, Record]]
    accounts: dict[str, str]


def _add(ledger: Ledger, handset: Handset, body: RecordBody) -> bytes:
    rid = handset.add(body)
    ledger.write(handset, rid, body)
    return rid


def _edit(ledger: Ledger, handset: Handset, rid: bytes, body: RecordBody) -> None:
    handset.edit(rid, body)
    ledger.write(handset, rid, body)


def _delete(ledger: Ledger, handset: Handset, rid: bytes) -> None:
    handset.delete(rid)
    ledger.write(handset, rid, None)


async def run_2009(*, faults: tuple[str, ...] = (), mutants: Mutants = NO_MUTANTS,
                   seed: int = 2009) -> Outcome:
    world = MemoryWorld(seed=seed, faults=faults)
    phone = world.handset("alice-phone", mutants)
    desktop = world.handset("alice-desktop", mutants)
    bob = world.handset("bob-phone", mutants, account="bob")
    handsets = (phone, desktop, bob)
    ledger = Ledger()
    rng = random.Random(seed)
    regressions: dict[str, str | None] = {h.name: None for h in handsets}

    async def sync(handset: Handset) -> None:
        report = await world.sync(handset)
        regressions[handset.name] = regressions[handset.name] or report.regression
        for h in handsets:
            ledger.check_no_loss(h, f"after {handset.name} synced")

    async with world.running():
        # September: everyone builds up data and syncs.
        ada = _add(ledger, phone, Contact("Ada Lovelace", ("+44 20 0000",)))
        _add(ledger, phone, CalendarEvent("Launch", 1254474000, 1254477600, "Palo Alto"))
        plan = _add(ledger, desktop, Note("Plan", "ship it"))
        rid = phone.take_photo("team", rng.randbytes(40_000))
        ledger.write(phone, rid, device_bodies(phone)[rid])
        _add(ledger, bob, Contact("Bob's mum", ("+1 555 0100",)))
        _add(ledger, bob, Todo("Renew contract", due=1254560400, priority=1))
        for handset in (phone, desktop, bob, phone, desktop):
            await sync(handset)

        backup = world.storage.backup()          # the last good backup

        # Early October: more work, all confirmed DURABLE by the server.
        _edit(ledger, phone, ada, Contact("Ada King", ("+44 20 0000",), ("ada@example.org",)))
        _delete(ledger, desktop, plan)
        _add(ledger, desktop, Note("Minutes", "restore drill"))
        _add(ledger, bob, Contact("Carol", ("+1 555 0199",)))
        for handset in (phone, desktop, bob, phone, desktop):
            await sync(handset)
        for handset in handsets:
            assert handset.store.at_risk() == []

        # The catastrophe: the store is lost and restored from the older backup.
        world.storage.restore(backup)

        # Users notice nothing; phones reboot (batteries, resets), and sync.
        for handset in handsets:
            handset.reboot()
            ledger.check_no_loss(handset, "after reboot")
        _add(ledger, bob, Note("written after the outage"))
        for handset in (phone, desktop, bob, phone, desktop, bob):
            await sync(handset)

        server = {acct: live_bodies(await world.server_heads(acct)) for acct in ("alice", "bob")}
        copies = {acct: conflict_copies(await world.server_heads(acct)) for acct in ("alice", "bob")}
        copies.update({h.name: conflict_copies(device_heads(h)) for h in handsets})
    return Outcome(
        regressions=regressions, ledger=ledger, server=server,
        devices={h.name: device_bodies(h) for h in handsets},
        accounts={h.name: h.store.meta.account for h in handsets}, copies=copies,
    )


def assert_everything_back(outcome: Outcome) -> None:
    ledger = outcome.ledger
    assert ledger.losses == []
    for account in ("alice", "bob"):
        assert outcome.server[account] == ledger.expected(account), f"server lost {account}'s data"
    for name, bodies in outcome.devices.items():
        assert bodies == ledger.expected(outcome.accounts[name]), f"{name} differs from the ledger"
        assert outcome.copies[name] == outcome.copies[outcome.accounts[name]]
    # A recovery push over an older restored version keeps that version as a conflict copy: it
    # must be an earlier version of the record, never anything invented.
    for copies in outcome.copies.values():
        for copy in copies.values():
            assert copy.body in ledger.history[copy.conflict_of]


async def test_2009_restore_from_older_backup_loses_nothing() -> None:
    outcome = await run_2009()
    assert all(reason is not None and "generation" in reason for reason in outcome.regressions.values())
    assert_everything_back(outcome)


async def test_2009_with_silent_rollback_what_devices_detect() -> None:
    """The restore keeps the generation. Every handset pushed past the backup, so each sees its
    durable watermark go back, and the data is restored as with a new generation."""
    outcome = await run_2009(faults=("silent-rollback",))
    regressions = outcome.regressions
    assert regressions["alice-phone"] is not None and "watermark" in regressions["alice-phone"]
    assert regressions["bob-phone"] is not None and "watermark" in regressions["bob-phone"]
    assert regressions["alice-desktop"] is not None
    assert all("went back" in (reason or "") for reason in regressions.values())   # never "changed"
    assert_everything_back(outcome)


async def test_silent_rollback_a_device_with_nothing_after_the_backup_cannot_tell() -> None:
    """A handset that neither pushed nor pulled after the backup holds an intact watermark and
    anchor: it sees nothing (the spec says so); the others repair the server for it."""
    world = MemoryWorld(seed=11, faults=("silent-rollback",))
    quiet, busy = world.handset("quiet"), world.handset("busy")
    async with world.running():
        mine = quiet.add(Note("quiet's note"))
        for handset in (quiet, busy, quiet):
            await world.sync(handset)
        backup = world.storage.backup()
        theirs = busy.add(Note("busy's late note"))
        await world.sync(busy)
        world.storage.restore(backup)
        quiet_report = await world.sync(quiet)
        assert quiet_report.regression is None              # undetectable from quiet's receipts
        assert theirs not in device_bodies(quiet)
        busy_report = await world.sync(busy)
        assert busy_report.regression is not None           # busy sees its watermark go back
        await world.sync(quiet)
        assert set(device_bodies(quiet)) == {mine, theirs} == set(live_bodies(await world.server_heads()))


@pytest.mark.parametrize("mutant", [
    "restore-from-server-on-reboot",
    "delete-local-missing-on-server",
    "ignore-generation-change",
    "keep-anchor-after-restore",
])
async def test_2009_catches_each_device_mutant(mutant: str) -> None:
    outcome = await run_2009(mutants=Mutants(frozenset({mutant})))
    with pytest.raises(AssertionError):
        assert_everything_back(outcome)


async def test_keep_anchor_after_restore_misses_records_recreated_below_the_old_anchor() -> None:
    for mutants, converges in ((NO_MUTANTS, True), (Mutants(frozenset({"keep-anchor-after-restore"})), False)):
        world = MemoryWorld(seed=12)
        phone, desktop = world.handset("phone", mutants), world.handset("desktop", mutants)
        async with world.running():
            phone.add(Note("n0"))
            await world.sync(phone)
            backup = world.storage.backup()
            for i in range(1, 6):
                phone.add(Note(f"n{i}"))
                await world.sync(phone)
            world.storage.restore(backup)
            late = desktop.add(Note("desktop, after the restore"))
            await world.sync(desktop)   # gets a server version below the phone's old anchor
            report = await world.sync(phone)
            assert report.regression is not None
            assert (late in device_bodies(phone)) is converges


async def test_silent_rollback_a_device_that_only_pulled_sees_its_anchor_go_back() -> None:
    world = MemoryWorld(seed=13, faults=("silent-rollback",))
    writer, reader = world.handset("writer"), world.handset("reader")
    async with world.running():
        writer.add(Note("before the backup"))
        await world.sync(writer)
        await world.sync(reader)
        backup = world.storage.backup()
        late = writer.add(Note("after the backup"))
        await world.sync(writer)
        await world.sync(reader)                 # reader pulls past the backup point, pushes nothing
        world.storage.restore(backup)
        report = await world.sync(reader)
        assert report.regression is not None and "anchor" in report.regression
        assert late in device_bodies(reader)     # and the reader's recovery push restores it
        assert late in live_bodies(await world.server_heads())
