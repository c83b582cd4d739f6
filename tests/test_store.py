"""The record store: API semantics, mount, GC, full store, bad blocks, blobs, mutants."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidekick_testbed.emulator.flash import FlashFaults, Geometry, NandFlash, PowerLoss
from sidekick_testbed.emulator.mutants import Mutants
from sidekick_testbed.emulator.store import (
    InvalidRecord,
    RecordStore,
    StoreCorrupt,
    StoreError,
    StoreFull,
    SyncState,
    UnknownBlob,
)
from sidekick_testbed.emulator.store.format import parse_header
from sidekick_testbed.emulator.store.model import StoreModel, compare, random_body
from sidekick_testbed.emulator.store.mount import scan
from sidekick_testbed.protocol.records import Contact, Note, Record
from tests.strategies import bodies

SMALL = Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=12)
DEV = b"\x01" * 16


def rid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def new_store(geometry: Geometry = SMALL, faults: FlashFaults | None = None, seed: int = 1) -> RecordStore:
    flash = NandFlash(geometry, rng=random.Random(seed), faults=faults)
    return RecordStore.format(flash, device_id=DEV, account="alice", key=b"secret")


def remount(store: RecordStore) -> RecordStore:
    return RecordStore.mount(store.flash)


def test_format_then_mount_gives_the_metadata() -> None:
    store = new_store()
    again = remount(store)
    assert again.meta == store.meta
    assert (again.meta.device_id, again.meta.account, again.meta.key, again.meta.next_lsn) == \
        (DEV, "alice", b"secret", 1)
    assert again.records() == []


def test_blank_or_foreign_flash_is_not_a_store() -> None:
    flash = NandFlash(SMALL, rng=random.Random(1))
    with pytest.raises(StoreCorrupt):
        RecordStore.mount(flash)
    flash.program_page(0, 0, random.Random(2).randbytes(512))
    with pytest.raises(StoreCorrupt):
        RecordStore.mount(flash)


def test_write_local_assigns_lsns_and_keeps_heads_dirty() -> None:
    store = new_store()
    first = store.write_local(rid(1), Note("a", "x"))
    second = store.write_local(rid(2), Contact("bob"))
    third = store.write_local(rid(1), Note("a", "y"))
    assert (first.lsn, second.lsn, third.lsn) == (1, 2, 3)
    assert third.state is SyncState.DIRTY and third.base_version == 0
    again = remount(store)
    assert again.get(rid(1)) == third and again.get(rid(2)) == second
    assert [v.lsn for v in again.pending()] == [2, 3]
    assert again.meta.next_lsn == 4


def test_push_durable_cycle_and_server_versions() -> None:
    store = new_store()
    a = store.write_local(rid(1), Note("a"))
    b = store.write_local(rid(2), Note("b"))
    store.mark_pushed(a.lsn)
    assert store.get(rid(1)).state is SyncState.PUSHED  # type: ignore[union-attr]
    assert store.get(rid(2)).state is SyncState.DIRTY  # type: ignore[union-attr]
    store.mark_durable(77, b.lsn, [(a.lsn, rid(1), 9)])
    head = store.get(rid(1))
    assert head is not None and head.state is SyncState.DURABLE and head.generation == 77
    assert head.record.version == 9
    assert store.get(rid(2)).state is SyncState.DIRTY  # type: ignore[union-attr]  # never pushed
    edit = store.write_local(rid(1), Note("a2"))
    assert edit.base_version == 9 and edit.record.version == 0
    assert remount(store).get(rid(1)) == edit


@settings(max_examples=60)
@given(data=st.data(), n=st.integers(1, 6))
def test_record_receipts_equals_push_durable_and_watermark_in_one_commit(data: st.DataObject, n: int) -> None:
    one, three = new_store(), new_store()
    for store in (one, three):
        for i in range(n):
            store.write_local(rid(i), Note(f"n{i}"))
        store.mark_pushed(1)  # one already pushed in an earlier session
    pushed_through = data.draw(st.integers(0, n + 1))
    durable_through = data.draw(st.integers(0, pushed_through))
    lsns = data.draw(st.lists(st.integers(1, n), unique=True))
    assigned = [(lsn, rid(lsn - 1), 100 + lsn) for lsn in sorted(lsns)]
    durable_lsn = data.draw(st.integers(0, n + 1))
    seq = one.stats().seq
    one.record_receipts(pushed_through, 77, durable_through, assigned, durable_lsn)
    three.mark_pushed(pushed_through)
    three.mark_durable(77, durable_through, assigned)
    if durable_lsn > three.meta.durable_lsn:
        three.set_meta(durable_lsn=durable_lsn)
    assert one.records() == three.records() and one.meta == three.meta
    model = StoreModel(new_store().meta)  # the plain-dict model: independent of the store's code
    for i in range(n):
        model.write_local(rid(i), Note(f"n{i}"))
    model.mark_pushed(1)
    model.record_receipts(pushed_through, 77, durable_through, assigned, durable_lsn)
    assert compare(one, model) == []
    assert remount(one).records() == one.records() and remount(one).meta == one.meta
    assert len(_transactions_since(one, seq)) <= 1


def _transactions_since(store: RecordStore, seq: int) -> set[int]:
    """Transactions of the pages written from page sequence number ``seq`` on (a flash scan)."""
    geometry = store.flash.geometry
    found = set()
    for block in range(geometry.blocks):
        for page in range(geometry.pages_per_block):
            if not store.flash.is_erased(block, page):
                header = parse_header(store.flash.read_raw(block, page))
                if header is not None and header.seq >= seq:
                    found.add(header.txn)
    return found


def test_at_risk_is_everything_not_durable_in_the_current_generation() -> None:
    store = new_store()
    a = store.write_local(rid(1), Note("a"))
    store.write_local(rid(2), Note("b"))
    store.mark_pushed(a.lsn)
    store.mark_durable(5, a.lsn, [])
    store.set_meta(generation=5)
    assert [v.record.record_id for v in store.at_risk()] == [rid(2)]
    store.set_meta(generation=6)
    assert {v.record.record_id for v in store.at_risk()} == {rid(1), rid(2)}


def test_delete_is_a_tombstone_version() -> None:
    store = new_store()
    store.write_local(rid(1), Note("a"))
    gone = store.write_local(rid(1), Note("a"), deleted=True)
    again = remount(store)
    head = again.get(rid(1))
    assert head == gone and head is not None and head.record.deleted and head.state is SyncState.DIRTY
    assert [v.record.record_id for v in again.records()] == [rid(1)]


def test_apply_pulled_skips_local_edits_and_sets_the_anchor_in_one_commit() -> None:
    store = new_store()
    store.set_meta(generation=3)
    local = store.write_local(rid(1), Note("mine"))
    pulled = [Record(rid(1), 10, False, Note("theirs")), Record(rid(2), 11, False, Contact("x"))]
    store.apply_pulled(pulled, 11)
    again = remount(store)
    assert again.get(rid(1)) == local
    two = again.get(rid(2))
    assert two is not None and two.state is SyncState.DURABLE and two.generation == 3
    assert two.lsn == 0 and two.record.version == 11 and again.meta.anchor == 11


def test_mark_all_dirty_renumbers_every_head_in_one_commit() -> None:
    store = new_store()
    a = store.write_local(rid(1), Note("a"))
    store.apply_pulled([Record(rid(2), 4, False, Note("p"))], 4)
    store.mark_pushed(a.lsn)
    store.mark_durable(1, a.lsn, [])
    store.mark_all_dirty()
    again = remount(store)
    heads = again.pending()
    assert [v.record.record_id for v in heads] == [rid(2), rid(1)]  # old LSN order: 0 then 1
    assert [v.lsn for v in heads] == [2, 3] and all(v.state is SyncState.DIRTY for v in heads)
    assert again.meta.next_lsn == 4


def test_set_meta_rejects_unknown_fields_and_bad_values() -> None:
    store = new_store()
    with pytest.raises(TypeError):
        store.set_meta(colour="red")
    with pytest.raises(InvalidRecord):
        store.set_meta(generation=-1)
    with pytest.raises(InvalidRecord):
        store.set_meta(server_id=b"x" * 300)
    store.set_meta(server_id=b"S" * 16, generation=2**64 - 1, durable_lsn=5, anchor=6)
    assert remount(store).meta == store.meta


@given(st.lists(bodies(), min_size=1, max_size=5))
@settings(max_examples=25)
def test_any_record_body_round_trips(body_list: list[object]) -> None:
    store = new_store()
    written = [store.write_local(rid(n), body) for n, body in enumerate(body_list)]  # type: ignore[arg-type]
    again = remount(store)
    assert [again.get(rid(n)) for n in range(len(written))] == written


def test_a_record_larger_than_a_page_spans_pages() -> None:
    store = new_store()
    big = store.write_local(rid(1), Note("long", "x" * 3000))
    store.write_local(rid(2), Note("small"))
    assert remount(store).get(rid(1)) == big


def test_unencodable_record_is_a_typed_error_and_changes_nothing() -> None:
    store = new_store()
    with pytest.raises(InvalidRecord):
        store.write_local(rid(1), Note("x" * 70000))
    assert store.records() == [] and store.meta.next_lsn == 1


def test_blobs_are_written_and_read_in_chunks() -> None:
    store = new_store()
    data = random.Random(3).randbytes(5000)
    store.write_blob(b"B" * 16, data)
    store.write_blob(b"E" * 16, b"")
    again = remount(store)
    chunks = list(again.read_blob_chunks(b"B" * 16))
    assert len(chunks) > 1 and b"".join(chunks) == data
    assert again.read_blob(b"E" * 16) == b"" and again.has_blob(b"E" * 16)
    with pytest.raises(UnknownBlob):
        again.read_blob(b"?" * 16)


def test_gc_reclaims_superseded_versions_and_keeps_every_head() -> None:
    store = new_store()
    model = StoreModel(store.meta)
    rng = random.Random(4)
    for n in range(1500):
        record_id, body = rid(n % 20), random_body(rng)
        store.write_local(record_id, body)
        model.write_local(record_id, body)
    assert store.stats().gc_runs > 0
    assert compare(store, model) == []
    assert compare(remount(store), model) == []


def test_mount_from_a_checkpoint_equals_a_full_replay() -> None:
    store = new_store(Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=24))
    model = StoreModel(store.meta)
    rng = random.Random(8)
    for n in range(900):
        record_id, body = rid(n % 40), random_body(rng)
        store.write_local(record_id, body)
        model.write_local(record_id, body)
        if n % 97 == 0:
            store.write_blob(rid(n), rng.randbytes(1200))
            model.write_blob(rid(n), store.read_blob(rid(n)))
    stats = store.stats()
    assert stats.checkpoints > 1 and stats.gc_runs > 0
    fast = remount(store)
    assert fast.mounted_from_checkpoint and compare(fast, model) == []
    full = RecordStore(store.flash)
    full._replay(scan(full._reader, full.flash), None)  # no checkpoint: the whole log
    assert not full.mounted_from_checkpoint and full.digest() == fast.digest()


def test_full_store_refuses_writes_and_loses_nothing() -> None:
    store = new_store(Geometry(page_size=512, spare_size=16, pages_per_block=8, blocks=8))
    model = StoreModel(store.meta)
    rng = random.Random(5)
    with pytest.raises(StoreFull):
        for n in range(10_000):
            body = Note(f"n{n}", "y" * rng.randrange(100, 300))
            store.write_local(rid(n), body)
            model.write_local(rid(n), body)
    assert compare(store, model) == []
    again = remount(store)
    assert compare(again, model) == []
    again.mark_pushed(5)  # bookkeeping of a batch that fits one block still fits in the reserve
    model.mark_pushed(5)
    assert compare(remount(again), model) == []


def test_factory_bad_blocks_are_never_used() -> None:
    geometry = Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=40)
    store = new_store(geometry, FlashFaults(factory_bad_rate=0.2), seed=9)
    bad = set(store.flash.bad_blocks())
    assert bad
    for n in range(800):
        store.write_local(rid(n % 30), Note(str(n)))
    assert not bad & set(store.block_map()["used"] + store.block_map()["free"])
    assert len(remount(store).records()) == 30


def test_grown_bad_blocks_are_retired_and_their_data_relocated() -> None:
    store = new_store(faults=FlashFaults(program_fail_rate=0.02, erase_fail_rate=0.01), seed=11)
    model = StoreModel(store.meta)
    rng = random.Random(6)
    for n in range(300):
        body = random_body(rng)
        store.write_local(rid(n % 15), body)
        model.write_local(rid(n % 15), body)
    assert store.flash.stats.program_failures + store.flash.stats.erase_failures > 0
    assert compare(store, model) == []
    assert compare(remount(store), model) == []


def test_read_disturb_is_corrected_and_mount_retries_uncorrectable_reads() -> None:
    store = new_store()
    for n in range(50):
        store.write_local(rid(n), Note(str(n)))
    flash = store.flash
    flash.faults = FlashFaults(read_flip_rate=0.05, read_uncorrectable_rate=0.01)
    again = RecordStore.mount(flash)
    assert len(again.records()) == 50
    assert flash.stats.corrected_bits > 0


def test_format_over_an_old_store_is_atomic() -> None:
    store = new_store()
    for n in range(30):
        store.write_local(rid(n), Note(str(n)))
    flash = store.flash
    snap = flash.snapshot()
    start = flash.ops
    RecordStore.format(flash, device_id=b"\x02" * 16)
    total = flash.ops - start
    for k in range(start + 1, start + total + 1):
        for variant in ("clean", "torn"):
            flash.restore(snap)
            flash.arm_power_cut(k, variant)
            with pytest.raises(PowerLoss):
                RecordStore.format(flash, device_id=b"\x02" * 16)
            again = RecordStore.mount(flash)
            assert (len(again.records()), again.meta.device_id) in ((30, DEV), (0, b"\x02" * 16))


def test_a_store_object_is_dead_after_power_loss() -> None:
    store = new_store()
    store.flash.arm_power_cut(store.flash.ops + 1, "clean")
    with pytest.raises(PowerLoss):
        store.write_local(rid(1), Note("x"))
    with pytest.raises(StoreError):
        store.get(rid(1))
    assert remount(store).get(rid(1)) is None


def test_stats_count_kinds_and_states() -> None:
    store = new_store()
    store.write_local(rid(1), Note("a"))
    store.write_local(rid(2), Contact("b"))
    stats = store.stats()
    assert stats.by_kind == {"note": 1, "contact": 1} and stats.by_state == {"dirty": 2}
    assert stats.at_risk == 2 and stats.free_blocks > 0 and stats.free_bytes > 0


def test_skip_crc_mutant_mounts_a_torn_page() -> None:
    """The planted bug is observable: a torn commit page makes the mutant store show garbage."""
    whole = {Note("a"), Note("b" * 200)}
    diverged = 0
    for seed in range(30):
        store = new_store(seed=seed)
        store.write_local(rid(1), Note("a"))
        flash = store.flash
        flash.arm_power_cut(flash.ops + 2, "torn")
        with pytest.raises(PowerLoss):
            store.write_local(rid(1), Note("b" * 200))
        good = RecordStore.mount(flash).get(rid(1))
        assert good is not None and good.record.body in whole
        try:
            head = RecordStore.mount(flash, mutants=Mutants(frozenset({"skip-crc-check"}))).get(rid(1))
            diverged += head is None or head.record.body not in whole
        except StoreError:
            diverged += 1
    assert diverged > 0


@pytest.mark.parametrize("variant", ["torn", "clean"])
def test_a_power_cut_while_moving_data_off_a_failing_block_loses_nothing(variant: str) -> None:
    # A program fails on the block holding committed records; the store moves them elsewhere and
    # only then marks the block bad. Power fails at every operation of that move.
    cut_somewhere = False
    for k in range(1, 40):
        store = new_store(seed=k)
        store.write_local(b"A" * 16, Note("committed before the failure", "x" * 200))
        store.write_local(b"B" * 16, Note("also committed"))
        flash = store.flash
        [active] = store.block_map()["active"]  # the block that will fail under the next program
        flash._failing.add(active)
        flash.arm_power_cut(flash.ops + k, variant)
        try:
            store.set_meta(anchor=7)
        except PowerLoss:
            cut_somewhere = True
        flash.disarm_power_cut()
        again = remount(store)
        assert again.get(b"A" * 16) is not None and again.get(b"B" * 16) is not None, k
        assert again.get(b"A" * 16).record.body == Note("committed before the failure", "x" * 200)
    assert cut_somewhere
