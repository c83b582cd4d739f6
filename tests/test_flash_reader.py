"""The oracle's own flash reader agrees with the record store on every image the store writes
(random operations, power cuts torn and clean, failing programs and erases, remounts), reads a
chip without changing it, and catches a store whose RAM disagrees with its flash."""

from __future__ import annotations

import functools
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant

from sidekick_testbed.emulator.flash import FlashFaults, Geometry, NandFlash
from sidekick_testbed.emulator.mutants import Mutants
from sidekick_testbed.emulator.sim.flash_reader import ChipView, FlashReader, read_chip
from sidekick_testbed.emulator.sim.options import SimOptions
from sidekick_testbed.emulator.sim.oracle import check_chip
from sidekick_testbed.emulator.sim.world import run_world
from sidekick_testbed.emulator.store import RecordStore
from sidekick_testbed.protocol.records import Note
from tests.store_machine import StoreMachine


def differences(view: ChipView, store: RecordStore) -> list[str]:
    """Where the reader's view and the store disagree (empty: they agree)."""
    out: list[str] = []
    assert view.meta is not None, view.problem
    meta = store.meta
    for name in ("device_id", "account", "key", "next_lsn", "server_id", "generation", "durable_lsn", "anchor",
                 "server_anchor"):
        if getattr(view.meta, name) != getattr(meta, name):
            out.append(f"meta.{name}: reader {getattr(view.meta, name)!r}, store {getattr(meta, name)!r}")
    versions = {v.record.record_id: v for v in store.records()}
    if set(versions) != set(view.heads):
        out.append(f"record ids: reader {sorted(view.heads)}, store {sorted(versions)}")
    for rid in set(versions) & set(view.heads):
        v, h = versions[rid], view.heads[rid]
        got = (h.record, h.lsn, h.base_version, h.state, h.generation, h.deleted)
        want = (v.record, v.lsn, v.base_version, v.state.value, v.generation, v.record.deleted)
        if got != want:
            out.append(f"record {rid.hex()}: reader {got}, store {want}")
    if set(store.blob_ids()) != set(view.blobs):
        out.append(f"blob ids: reader {sorted(view.blobs)}, store {store.blob_ids()}")
    for bid in set(store.blob_ids()) & set(view.blobs):
        if store.read_blob(bid) != view.blobs[bid]:
            out.append(f"blob {bid.hex()} differs")
    return out


def untouched_read(flash: NandFlash, reader: FlashReader) -> ChipView:
    """Read the chip and check the read changed nothing of it."""
    before = (flash.ops, flash.rng.getstate(), flash.changes, flash.stats.reads, flash.armed)
    view = reader.read(flash)
    assert (flash.ops, flash.rng.getstate(), flash.changes, flash.stats.reads, flash.armed) == before
    return view


class ReaderMachine(StoreMachine):
    """The store's stateful test, with the reader checked against the store after every step."""

    reader = FlashReader()

    @invariant()
    def the_reader_sees_what_the_store_holds(self) -> None:
        view = untouched_read(self.flash, self.reader)
        assert differences(view, self.store) == []
        assert check_chip("d", view) is None


class FaultyReaderMachine(ReaderMachine):
    """The same on a chip whose programs and erases fail now and then (grown bad blocks)."""

    def __init__(self) -> None:
        super().__init__()
        faults = FlashFaults(program_fail_rate=0.02, erase_fail_rate=0.02, wear_out=False)
        self.flash = NandFlash(Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=16),
                               rng=random.Random(3), faults=faults)
        self.store = RecordStore.format(self.flash, device_id=b"\x09" * 16, account="bob")
        self.model.meta = self.store.meta


ReaderMachine.TestCase.settings = settings(settings(), max_examples=40, stateful_step_count=25)
FaultyReaderMachine.TestCase.settings = settings(settings(), max_examples=25, stateful_step_count=25)
TestReaderMachine = ReaderMachine.TestCase
TestFaultyReaderMachine = FaultyReaderMachine.TestCase


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1))
def test_reader_agrees_with_a_fresh_mount_of_simulated_handsets(seed: int) -> None:
    """After a whole fuzz run (GC, power cuts, torn pages, bad blocks), every handset's chip reads
    the same through the reader as through a fresh mount."""
    from sidekick_testbed.emulator.sim.world import World  # noqa: PLC0415

    world = World(seed, SimOptions(accounts=1, devices=2, steps=25))
    world.run()
    for device in world.devices:
        view = untouched_read(device.flash, FlashReader())
        store = RecordStore.mount(device.flash)
        assert differences(view, store) == []


def test_a_torn_page_is_reported_and_skipped() -> None:
    flash = NandFlash(Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=8), rng=random.Random(2))
    store = RecordStore.format(flash, device_id=b"d" * 16)
    store.write_local(b"r" * 16, Note("kept"))
    flash.arm_power_cut(flash.ops + 1, "torn")
    try:
        store.write_local(b"s" * 16, Note("torn"))
    except Exception:  # noqa: BLE001 - PowerLoss
        pass
    view = read_chip(flash)
    assert set(view.heads) == {b"r" * 16}
    assert differences(view, RecordStore.mount(flash)) == []


def test_a_chip_without_a_store_is_not_mountable() -> None:
    view = read_chip(NandFlash(Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=8)))
    assert not view.mountable and view.problem == "no committed page"
    violation = check_chip("d", view)
    assert violation is not None and violation.what == "store-unreadable"


def test_the_reader_catches_a_store_whose_ram_disagrees_with_its_flash() -> None:
    """Planted mutant ``next-lsn-in-ram``: the store's RAM says the next LSN is 2, its flash still
    says 1; everything read through the store looks right, the reader sees a reused LSN."""
    flash = NandFlash(Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=8))
    store = RecordStore.format(flash, device_id=b"d" * 16, mutants=Mutants(frozenset({"next-lsn-in-ram"})))
    version = store.write_local(b"r" * 16, Note("first"))
    assert store.get(b"r" * 16) == version and store.meta.next_lsn == 2  # the store's own view is fine
    view = read_chip(flash)
    assert view.meta is not None and view.meta.next_lsn == 1
    violation = check_chip("d", view)
    assert violation is not None and violation.what == "lsn-reuse"


def test_the_fuzzer_catches_next_lsn_in_ram_at_the_first_write() -> None:
    result = run_world(1, SimOptions(mutant="next-lsn-in-ram", faults=frozenset()))
    assert result.violation is not None and result.violation.what == "lsn-reuse"
    first_user = next(i for i, e in enumerate(result.events) if e["kind"] == "user")
    violation = next(i for i, e in enumerate(result.events) if e["kind"] == "violation")
    assert violation == first_user + 1  # no reboot needed: caught on the step that wrote it


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), blocks=st.integers(6, 12), photos=st.booleans())
def test_the_store_refuses_as_full_only_beyond_its_capacity_promise(seed: int, blocks: int, photos: bool) -> None:
    """FLASH.md's promise, checked with the oracle's own accounting: a write is refused as full only
    when the live entry bytes (read from the chip) plus the refused write exceed half the usable
    payload bytes."""
    from sidekick_testbed.emulator.sim.capacity import blob_bytes, has_room, head_bytes  # noqa: PLC0415
    from sidekick_testbed.emulator.store import StoreFull  # noqa: PLC0415
    from sidekick_testbed.protocol.records import Record  # noqa: PLC0415

    rng = random.Random(seed)
    geometry = Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=blocks)
    flash = NandFlash(geometry, rng=random.Random(seed))
    store = RecordStore.format(flash, device_id=b"d" * 16)
    ids = [rng.randbytes(16) for _ in range(40)]
    for n in range(2000):
        rid = rng.choice(ids)
        if photos and rng.random() < 0.2:
            blob, data = rng.randbytes(16), rng.randbytes(rng.randint(100, 1200))
            extra = blob_bytes(blob, len(data), geometry)
            write = functools.partial(store.write_blob, blob, data)
        else:
            body = Note(f"n{n}", "x" * rng.randint(0, 300))
            extra = head_bytes(Record(rid, 0, False, body), geometry)
            write = functools.partial(store.write_local, rid, body)
        try:
            write()
        except StoreFull:
            view = read_chip(flash)
            assert not has_room(view.live_bytes, extra, geometry, len(view.bad_blocks))
            return
