"""Hypothesis stateful test: two handsets of one account and the reference server, driven by user
operations, syncs (clean, dropped mid-way, cut by a power loss at a flash operation), reboots,
server crashes, backups and restores. Invariants, after every step, against a simple model:

* a handset never loses the latest version of a record it owns (it may become a conflict copy
  after a recovery push from the other handset, but it is never gone);
* a version a handset holds as DURABLE in the server's current generation is in the server's
  history;
* after ``converge`` (clean syncs all round) the server and both handsets hold the same records,
  every latest version is among them, and nothing is at risk on any handset.
"""

from __future__ import annotations

import random
from typing import Any

import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sidekick_testbed.emulator.flash import PowerLoss
from sidekick_testbed.emulator.handset import Handset, PoweredOff
from sidekick_testbed.emulator.handset.sync_client import SyncError
from sidekick_testbed.emulator.handset.transport import CuttingChannel, cutting_connector
from sidekick_testbed.emulator.store import SyncState
from sidekick_testbed.emulator.testing import MemoryWorld, device_heads
from sidekick_testbed.protocol.messages import Durable, Message, PullEnd, PushAck
from sidekick_testbed.protocol.records import Note, Record, RecordBody
from sidekick_testbed.server_stub.server import SyncServer

TEXT = st.text(alphabet="abcdefgh ", max_size=12)


def live(heads: dict[bytes, Record]) -> set[tuple[bytes, bytes, RecordBody]]:
    """(record id, conflict_of, body) of every live record."""
    return {(rid, r.conflict_of, r.body) for rid, r in heads.items() if not r.deleted}


def holds(heads: dict[bytes, Record], rid: bytes, body: RecordBody) -> bool:
    """True if ``body`` of ``rid`` is there, as the record or as a conflict copy of it."""
    return any(not r.deleted and r.body == body and (r.record_id == rid or r.conflict_of == rid)
               for r in heads.values())


class _CutOn:
    """Observer that, when a message of one type arrives, cuts the power or the connection."""

    def __init__(self, kind: type, power: bool, channels: list[CuttingChannel]) -> None:
        self.kind = kind
        self.power = power
        self.channels = channels

    def on_message(self, handset: Handset, direction: str, message: Message) -> None:
        if direction != "received" or not isinstance(message, self.kind):
            return
        if self.power:
            handset.power_cut()
        else:
            self.channels[-1].budget = self.channels[-1].frames   # the line drops now

    def on_regression(self, handset: Handset, reason: str) -> None:
        pass


class HandsetFleet(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = MemoryWorld(seed=1)
        self.devices = [self.world.handset("phone"), self.world.handset("desktop")]
        self.latest: dict[bytes, RecordBody | None] = {}
        self.owner: dict[bytes, int] = {}
        self.backup: Any = None
        self.run(self.world.provision)

    # -- running syncs

    def run(self, fn: Any, *args: Any) -> Any:
        self.world.server = SyncServer(self.world.storage, faults=self.world.faults,
                                       rng=random.Random(len(self.latest)))
        return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))

    def _sync(self, device: Handset, budget: int | None = None, cut_at: int | None = None,
              cut_on: type | None = None, power: bool = False) -> None:
        async def main() -> None:
            async with self.world.running():
                connect, channels = cutting_connector(
                    self.world.connector(), budget if budget is not None else 1 << 30)
                device.observer = _CutOn(cut_on, power, channels) if cut_on is not None else None
                if cut_at is not None:
                    device.flash.arm_power_cut(device.flash.ops + cut_at)
                try:
                    await device.sync_once(connect)
                except SyncError:
                    pass
                except (PowerLoss, PoweredOff):
                    device.reboot()
                device.flash.disarm_power_cut()
                device.observer = None

        self.run(main)

    def owned(self, d: int) -> list[bytes]:
        return sorted(rid for rid, o in self.owner.items() if o == d and self.latest[rid] is not None)

    # -- rules

    @rule(d=st.integers(0, 1), text=TEXT)
    def add(self, d: int, text: str) -> None:
        rid = self.devices[d].add(Note(text))
        self.latest[rid] = Note(text)
        self.owner[rid] = d

    @precondition(lambda self: self.owned(0) or self.owned(1))
    @rule(data=st.data(), text=TEXT)
    def edit(self, data: st.DataObject, text: str) -> None:
        d = data.draw(st.sampled_from([d for d in (0, 1) if self.owned(d)]))
        rid = data.draw(st.sampled_from(self.owned(d)))
        head = self.devices[d].store.get(rid)
        assert head is not None
        if head.record.deleted or head.record.conflict_of:
            return
        self.devices[d].edit(rid, Note(text))
        self.latest[rid] = Note(text)

    @precondition(lambda self: self.owned(0) or self.owned(1))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from([d for d in (0, 1) if self.owned(d)]))
        rid = data.draw(st.sampled_from(self.owned(d)))
        head = self.devices[d].store.get(rid)
        assert head is not None
        if head.record.deleted:
            return
        self.devices[d].delete(rid)
        self.latest[rid] = None

    @rule(d=st.integers(0, 1))
    def sync(self, d: int) -> None:
        self._sync(self.devices[d])

    @rule(d=st.integers(0, 1), budget=st.integers(0, 30))
    def sync_dropped(self, d: int, budget: int) -> None:
        self._sync(self.devices[d], budget=budget)

    @rule(d=st.integers(0, 1), cut_at=st.integers(1, 40))
    def sync_power_cut(self, d: int, cut_at: int) -> None:
        self._sync(self.devices[d], cut_at=cut_at)

    @rule(d=st.integers(0, 1), message=st.sampled_from([PushAck, Durable, PullEnd]), power=st.booleans())
    def sync_cut_on_message(self, d: int, message: type, power: bool) -> None:
        self._sync(self.devices[d], cut_on=message, power=power)

    @rule(d=st.integers(0, 1))
    def reboot(self, d: int) -> None:
        self.devices[d].reboot()

    @rule()
    def server_crash(self) -> None:
        self.world.storage.crash()

    @rule()
    def take_backup(self) -> None:
        self.backup = self.world.storage.backup()

    @precondition(lambda self: self.backup is not None)
    @rule()
    def restore_backup(self) -> None:
        self.world.storage.restore(self.backup)

    @rule()
    def converge(self) -> None:
        for device in self.devices * 3:
            self._sync(device)
        server = self.run(self.world.server_heads)
        for device in self.devices:
            assert device.store.at_risk() == []
            assert live(device_heads(device)) == live(server)
        for rid, body in self.latest.items():
            if body is not None:
                assert holds(server, rid, body), f"server lost {rid.hex()}"

    # -- invariants

    @invariant()
    def durable_in_the_current_generation_means_on_the_server(self) -> None:
        """Every version a handset holds as DURABLE in the server's current generation was stored
        by the server (it may have been superseded since, never unknown)."""
        generation = self.world.storage.generation
        stored = {(v.record.record_id, v.record.version) for v in self.run(self.world.storage.history, "alice")}
        for device in self.devices:
            for version in device.store.records():
                if version.state is SyncState.DURABLE and version.generation == generation:
                    key = (version.record.record_id, version.record.version)
                    assert key in stored, f"{device.name} holds {key[0].hex()} v{key[1]} as durable"

    @invariant()
    def no_handset_loses_its_own_latest_versions(self) -> None:
        for d, device in enumerate(self.devices):
            heads = device_heads(device)
            for rid in self.owned(d):
                body = self.latest[rid]
                assert body is not None
                assert holds(heads, rid, body), f"{device.name} lost its record {rid.hex()}"


HandsetFleet.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
TestHandsetFleet = HandsetFleet.TestCase
