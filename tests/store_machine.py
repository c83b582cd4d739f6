"""The record store's Hypothesis state machine: store calls and power cuts, checked against the dict model."""

from __future__ import annotations

import random

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sidekick_testbed.emulator.flash import CUT_VARIANTS, Geometry, NandFlash, PowerLoss
from sidekick_testbed.emulator.store import RecordStore, StoreFull, SyncState
from sidekick_testbed.emulator.store.model import StoreModel, StoreOp, apply_op, compare
from sidekick_testbed.protocol.records import Record
from tests.strategies import bodies

GEOMETRY = Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=10)
IDS = [bytes([n]) * 16 for n in range(1, 7)]
record_ids = st.sampled_from(IDS)
small_bodies = bodies().filter(lambda b: len(repr(b)) < 400)


class StoreMachine(RuleBasedStateMachine):
    """Every step is a store call, applied to the store and the model; cuts interrupt them."""

    def __init__(self) -> None:
        super().__init__()
        self.flash = NandFlash(GEOMETRY, rng=random.Random(0))
        self.store = RecordStore.format(self.flash, device_id=b"\x09" * 16, account="bob")
        self.model = StoreModel(self.store.meta)
        self.full = False

    # ------------------------------------------------------------------ operations

    def do(self, op: StoreOp) -> None:
        before = self.model.copy()
        try:
            apply_op(self.store, op)
        except StoreFull:
            self.full = True
            self.model = before
            return
        apply_op(self.model, op)

    def ops(self, data: st.DataObject) -> StoreOp:
        """Draw any store operation valid for the model's current state."""
        kind = data.draw(st.sampled_from(["write", "delete", "push", "durable", "receipts", "pull", "dirty", "meta",
                                          "blob"]))
        meta = self.model.meta
        if kind == "write":
            return StoreOp("write_local", (data.draw(record_ids), data.draw(small_bodies)))
        if kind == "delete":
            return StoreOp("write_local", (data.draw(record_ids), data.draw(small_bodies)), (("deleted", True),))
        if kind == "push":
            return StoreOp("mark_pushed", (data.draw(st.integers(0, meta.next_lsn)),))
        if kind == "durable":
            pushed = sorted((v for v in self.model.heads.values() if v.state is SyncState.PUSHED),
                            key=lambda v: v.lsn)
            through = data.draw(st.integers(0, meta.next_lsn))
            assigned = tuple((v.lsn, v.record.record_id, data.draw(st.integers(1, 1000)))
                             for v in pushed if v.lsn <= through)
            gen = data.draw(st.sampled_from([meta.generation, meta.generation + 1]))
            return StoreOp("mark_durable", (gen, through, assigned))
        if kind == "receipts":
            pushed_through = data.draw(st.integers(0, meta.next_lsn))
            durable_through = data.draw(st.integers(0, pushed_through))
            assigned = tuple((v.lsn, v.record.record_id, data.draw(st.integers(1, 1000)))
                             for v in sorted(self.model.heads.values(), key=lambda v: v.lsn)
                             if 0 < v.lsn <= durable_through)
            gen = data.draw(st.sampled_from([meta.generation, meta.generation + 1]))
            return StoreOp("record_receipts", (pushed_through, gen, durable_through, assigned,
                                               data.draw(st.integers(0, meta.next_lsn))))
        if kind == "pull":
            records = tuple(Record(data.draw(record_ids), data.draw(st.integers(1, 1000)), data.draw(st.booleans()),
                                   data.draw(small_bodies)) for _ in range(data.draw(st.integers(0, 3))))
            return StoreOp("apply_pulled", (records, data.draw(st.integers(0, 2**32))))
        if kind == "dirty":
            return StoreOp("mark_all_dirty", ())
        if kind == "meta":
            return StoreOp("set_meta", (), (("generation", data.draw(st.integers(0, 5))),
                                            ("durable_lsn", data.draw(st.integers(0, 100)))))
        return StoreOp("write_blob", (data.draw(st.sampled_from(IDS)), data.draw(st.binary(max_size=1500))))

    # ------------------------------------------------------------------ rules

    @rule(data=st.data())
    def operate(self, data: st.DataObject) -> None:
        self.do(self.ops(data))

    @rule()
    def remount(self) -> None:
        self.store = RecordStore.mount(self.flash)

    @precondition(lambda self: not self.full)
    @rule(data=st.data(), delay=st.integers(1, 25), variant=st.sampled_from(CUT_VARIANTS))
    def power_cut(self, data: st.DataObject, delay: int, variant: str) -> None:
        op = self.ops(data)
        before = self.model.copy()
        after = self.model.copy()
        apply_op(after, op)
        self.flash.arm_power_cut(self.flash.ops + delay, variant)
        try:
            apply_op(self.store, op)
        except PowerLoss:
            self.store = RecordStore.mount(self.flash)
            wholly_before, wholly_after = not compare(self.store, before), not compare(self.store, after)
            assert wholly_before or wholly_after, "after a cut the store is neither before nor after the call"
            self.model = after if wholly_after else before
            return
        except StoreFull:
            self.flash.disarm_power_cut()
            self.full = True
            return
        self.flash.disarm_power_cut()
        self.model = after

    @precondition(lambda self: not self.full)
    @rule(delay=st.integers(1, 200), variant=st.sampled_from(CUT_VARIANTS))
    def power_cut_during_mount_and_next_write(self, delay: int, variant: str) -> None:
        self.flash.arm_power_cut(self.flash.ops + delay, variant)
        try:
            self.store = RecordStore.mount(self.flash)
            self.do(StoreOp("set_meta", (), (("anchor", self.model.meta.anchor + 1),)))
        except PowerLoss:
            self.store = RecordStore.mount(self.flash)
            bumped = self.model.copy()
            bumped.set_meta(anchor=self.model.meta.anchor + 1)
            if not compare(self.store, bumped):
                self.model = bumped
        self.flash.disarm_power_cut()

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert compare(self.store, self.model) == []

