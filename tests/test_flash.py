"""The NAND model: program/erase rules, ECC, bad blocks, wear, power cuts, snapshots and images."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.emulator.flash import (
    BadBlockError,
    EraseError,
    FlashFaults,
    Geometry,
    ImageError,
    NandFlash,
    NopExceeded,
    PowerLoss,
    ProgramError,
    ProgramOrderError,
    UncorrectableError,
    UsageError,
    load_image,
    save_image,
)

SMALL = Geometry(page_size=512, spare_size=16, pages_per_block=8, blocks=8)


def chip(**faults: float) -> NandFlash:
    return NandFlash(SMALL, rng=random.Random(7), faults=FlashFaults(**faults))  # type: ignore[arg-type]


def test_default_geometry_is_a_64_mib_slc_part() -> None:
    g = Geometry()
    assert (g.page_size, g.spare_size, g.pages_per_block, g.blocks, g.nop, g.endurance) == \
        (2048, 64, 64, 512, 4, 100_000)
    assert g.capacity == 64 << 20


def test_erased_pages_read_as_ff_and_cost_no_memory() -> None:
    flash = NandFlash(Geometry(), rng=random.Random(1))
    data, spare = flash.read_page(511, 63)
    assert data == b"\xff" * 2048 and spare == b"\xff" * 64
    assert flash.programmed_pages() == 0


@given(st.binary(min_size=512, max_size=512), st.binary(min_size=512, max_size=512))
def test_program_only_clears_bits(first: bytes, second: bytes) -> None:
    flash = chip()
    flash.program_page(0, 0, first)
    flash.program_page(0, 0, second)
    data, _ = flash.read_page(0, 0)
    assert data == bytes(a & b for a, b in zip(first, second, strict=True))


def test_short_program_is_padded_with_ff() -> None:
    flash = chip()
    flash.program_page(1, 0, b"\x00\x01", b"\x02")
    data, spare = flash.read_page(1, 0)
    assert data == b"\x00\x01" + b"\xff" * 510 and spare == b"\x02" + b"\xff" * 15


def test_erase_sets_the_whole_block_to_ff_and_counts_a_cycle() -> None:
    flash = chip()
    for page in range(3):
        flash.program_page(2, page, b"\x00" * 512)
    flash.erase_block(2)
    assert all(flash.read_page(2, p) == (b"\xff" * 512, b"\xff" * 16) for p in range(8))
    assert flash.erase_count(2) == 1
    flash.program_page(2, 0, b"\x00")  # programmable again from page 0


def test_partial_program_limit() -> None:
    flash = chip()
    for _ in range(SMALL.nop):
        flash.program_page(0, 0, b"\x7f")
    with pytest.raises(NopExceeded):
        flash.program_page(0, 0, b"\x3f")


def test_pages_of_a_block_are_programmed_in_order() -> None:
    flash = chip()
    flash.program_page(0, 3, b"\x00")
    with pytest.raises(ProgramOrderError):
        flash.program_page(0, 1, b"\x00")
    flash.program_page(0, 3, b"\x00")  # a partial program of a programmed page is allowed
    flash.program_page(0, 4, b"\x00")


@pytest.mark.parametrize("call", [
    lambda f: f.read_page(8, 0), lambda f: f.read_page(0, 8), lambda f: f.erase_block(-1),
    lambda f: f.program_page(0, 0, b"\x00" * 513), lambda f: f.program_page(0, 0, b"", b"\x00" * 17),
])
def test_bad_addresses_and_sizes_are_usage_errors(call: object) -> None:
    with pytest.raises(UsageError):
        call(chip())  # type: ignore[operator]


def test_factory_bad_blocks_are_marked_in_the_spare_area_and_refuse_writes() -> None:
    flash = NandFlash(Geometry(blocks=512), rng=random.Random(3), faults=FlashFaults(factory_bad_rate=0.02))
    bad = flash.bad_blocks()
    assert 2 <= len(bad) <= 30
    block = bad[0]
    _data, spare = flash.read_page(block, 0)
    assert spare[0] != 0xFF
    good = next(b for b in range(512) if b not in bad)
    assert flash.read_page(good, 0)[1][0] == 0xFF
    with pytest.raises(BadBlockError):
        flash.program_page(block, 1, b"\x00")
    with pytest.raises(BadBlockError):
        flash.erase_block(block)


def test_program_failure_grows_a_bad_block() -> None:
    flash = chip(program_fail_rate=1.0)
    with pytest.raises(ProgramError):
        flash.program_page(3, 0, b"\x00" * 16)
    assert flash.stats.program_failures == 1
    assert not flash.is_bad(3)  # marking it is the firmware's job, once its data is moved
    flash.faults = replace(flash.faults, program_fail_rate=0.0)
    with pytest.raises(ProgramError):  # the defect stays
        flash.program_page(3, 1, b"\x00")
    flash.mark_bad(3)
    with pytest.raises(BadBlockError):
        flash.program_page(3, 2, b"\x00")


def test_erase_failure_grows_a_bad_block() -> None:
    flash = chip(erase_fail_rate=1.0)
    with pytest.raises(EraseError):
        flash.erase_block(4)
    assert flash.is_bad(4)


def test_blocks_wear_out_past_their_endurance() -> None:
    geometry = Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=4, endurance=5)
    flash = NandFlash(geometry, rng=random.Random(2), faults=FlashFaults(wear_fail_rate=1.0))
    for _ in range(5):
        flash.erase_block(0)
    with pytest.raises(EraseError, match="worn out"):
        flash.erase_block(0)
    assert flash.is_bad(0)


def test_correctable_flips_are_corrected_and_counted() -> None:
    flash = chip(read_flip_rate=1.0)
    flash.program_page(0, 0, b"\x12" * 512)
    assert flash.read_page(0, 0)[0] == b"\x12" * 512
    assert flash.stats.corrected_bits >= 1


def test_flips_beyond_the_ecc_raise_never_return_wrong_data() -> None:
    flash = chip(read_uncorrectable_rate=1.0)
    flash.program_page(0, 0, b"\x12" * 512)
    with pytest.raises(UncorrectableError):
        flash.read_page(0, 0)
    assert flash.stats.uncorrectable_reads == 1


def test_operations_are_counted_and_logged() -> None:
    flash = chip()
    flash.program_page(0, 0, b"\x00")
    flash.read_page(0, 0)
    flash.erase_block(0)
    assert flash.ops == 3
    assert [entry[1] for entry in flash.op_log] == ["program", "read", "erase"]


def test_clean_cut_leaves_the_program_undone() -> None:
    flash = chip()
    flash.arm_power_cut(1, "clean")
    with pytest.raises(PowerLoss) as info:
        flash.program_page(0, 0, b"\x00" * 512)
    assert info.value.kind == "program" and info.value.op == 1
    assert flash.read_page(0, 0)[0] == b"\xff" * 512
    flash.program_page(0, 0, b"\x00" * 512)  # the chip works after the cut
    assert not flash.armed


def test_torn_program_programs_part_of_the_bits() -> None:
    partial = 0
    for seed in range(20):
        flash = NandFlash(SMALL, rng=random.Random(seed))
        flash.arm_power_cut(1, "torn")
        with pytest.raises(PowerLoss):
            flash.program_page(0, 0, b"\x00" * 512)
        data, _ = flash.read_page(0, 0)
        zeros = sum(8 - bin(b).count("1") for b in data)
        partial += 0 < zeros < 512 * 8
    assert partial >= 15


def test_torn_erase_leaves_the_block_partly_erased() -> None:
    flash = chip()
    for page in range(8):
        flash.program_page(0, page, b"\x00" * 512)
    flash.arm_power_cut(flash.ops + 1, "torn")
    with pytest.raises(PowerLoss):
        flash.erase_block(0)
    pages = [flash.read_page(0, p)[0] for p in range(8)]
    assert any(p == b"\xff" * 512 for p in pages)
    assert any(p != b"\xff" * 512 for p in pages)


def test_a_cut_on_a_read_is_clean() -> None:
    flash = chip()
    flash.arm_power_cut(1, "torn")
    with pytest.raises(PowerLoss) as info:
        flash.read_page(0, 0)
    assert info.value.variant == "clean"


def test_arming_a_past_operation_or_unknown_variant_is_refused() -> None:
    flash = chip()
    flash.read_page(0, 0)
    with pytest.raises(ValueError):
        flash.arm_power_cut(1)
    with pytest.raises(ValueError):
        flash.arm_power_cut(5, "sideways")


def test_snapshot_and_restore() -> None:
    flash = chip()
    flash.program_page(0, 0, b"\x01")
    snap = flash.snapshot()
    flash.program_page(0, 1, b"\x02")
    flash.erase_block(1)
    flash.restore(snap)
    assert flash.ops == 1 and flash.erase_count(1) == 0
    assert flash.read_page(0, 1)[0] == b"\xff" * 512
    flash.program_page(0, 1, b"\x03")  # the order rule state came back too
    assert flash.read_page(0, 0)[0][:1] == b"\x01"


def test_image_round_trip(tmp_path: Path) -> None:
    flash = NandFlash(SMALL, rng=random.Random(5), faults=FlashFaults(factory_bad_rate=0.2))
    flash.program_page(0, 0, b"hello", b"\x01")
    flash.program_page(0, 0, b"hallo")
    flash.erase_block(2)
    save_image(flash, tmp_path / "x.img")
    again = load_image(tmp_path / "x.img")
    assert again.geometry == SMALL and again.ops == flash.ops
    assert again.read_raw(0, 0) == flash.read_raw(0, 0)
    assert again.bad_blocks() == flash.bad_blocks() and again.erase_count(2) == 1
    with pytest.raises(NopExceeded):  # partial-program counts survive
        for _ in range(3):
            again.program_page(0, 0, b"\x00")


@pytest.mark.parametrize("mangle", [
    lambda b: b"", lambda b: b[:20], lambda b: b"XXXXXXXX" + b[8:], lambda b: b[:-3],
    lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:], lambda b: b[:-1] + bytes([b[-1] ^ 0x40]),
    lambda b: b + b"extra",
])
def test_corrupt_or_foreign_images_raise_image_error(tmp_path: Path, mangle: object) -> None:
    flash = chip()
    flash.program_page(0, 0, b"data")
    save_image(flash, tmp_path / "ok.img")
    (tmp_path / "bad.img").write_bytes(mangle((tmp_path / "ok.img").read_bytes()))  # type: ignore[operator]
    with pytest.raises(ImageError):
        load_image(tmp_path / "bad.img")


def test_missing_image_raises_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        load_image(tmp_path / "nope.img")


def test_sequential_read_stops_after_the_first_erased_page_and_counts_each_read() -> None:
    flash = chip()
    for page in range(3):
        flash.program_page(5, page, bytes([page]))
    assert [raw[:1] for raw in flash.read_run(5)] == [b"\x00", b"\x01", b"\x02"]
    assert flash.ops == 3 + 4  # three programmed pages and the erased one after them
    flash.arm_power_cut(flash.ops + 2)
    with pytest.raises(PowerLoss) as info:
        flash.read_run(5)
    assert info.value.kind == "read" and info.value.variant == "clean"
