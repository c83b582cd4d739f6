"""The chip holds pages without their trailing 0xFF, yet behaves as a chip of whole pages.

A reference chip keeps whole raw pages and applies the documented rules (AND on program, NOP and
page order, erase to 0xFF, torn programs and erases, program and erase failures, bad-block marks),
drawing from its own RNG in the chip's order; every read of the real chip must equal it, and the
two RNGs must stay in step. Then: what a small page costs in memory, and ``op_log_len``.
"""

from __future__ import annotations

import random
import tempfile
import tracemalloc
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sidekick_testbed.emulator.flash import (
    BadBlockError,
    EraseError,
    FlashError,
    FlashFaults,
    Geometry,
    NandFlash,
    NopExceeded,
    PowerLoss,
    ProgramError,
    ProgramOrderError,
    load_image,
    save_image,
)
from sidekick_testbed.emulator.store import RecordStore
from sidekick_testbed.emulator.store.model import random_body

GEOMETRY = Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=6, nop=3)
FF = b"\xff"
SEED = 11


@dataclass
class ReferenceChip:
    """Whole raw pages and the chip's rules, written plainly."""

    g: Geometry
    rng: random.Random
    pages: dict[int, bytes] = field(default_factory=dict)
    nop: dict[int, int] = field(default_factory=dict)
    next_page: list[int] = field(default_factory=list)
    erase_counts: list[int] = field(default_factory=list)
    bad: set[int] = field(default_factory=set)
    failing: set[int] = field(default_factory=set)
    ops: int = 0

    def __post_init__(self) -> None:
        self.next_page = [0] * self.g.blocks
        self.erase_counts = [0] * self.g.blocks
        self.erased = FF * self.g.raw_page

    def copy(self) -> ReferenceChip:
        twin = ReferenceChip(self.g, random.Random())
        twin.rng.setstate(self.rng.getstate())
        twin.pages, twin.nop = dict(self.pages), dict(self.nop)
        twin.next_page, twin.erase_counts = list(self.next_page), list(self.erase_counts)
        twin.bad, twin.failing, twin.ops = set(self.bad), set(self.failing), self.ops
        return twin

    def page(self, index: int) -> bytes:
        return self.pages.get(index, self.erased)

    def read_run(self, block: int, first: int) -> list[bytes]:
        out = []
        for page in range(first, self.g.pages_per_block):
            self.ops += 1
            index = block * self.g.pages_per_block + page
            if index not in self.pages:
                break
            out.append(self.pages[index])
        return out

    def program(self, block: int, page: int, data: bytes, spare: bytes, cut: str | None,
                fail: bool) -> type[FlashError] | None:
        """Apply a program; the error it raises, if any."""
        g = self.g
        index = block * g.pages_per_block + page
        if block in self.bad:
            return BadBlockError
        used = self.nop.get(index, 0)
        if used >= g.nop:
            return NopExceeded
        if used == 0 and page < self.next_page[block]:
            return ProgramOrderError
        new = data.ljust(g.page_size, FF) + spare.ljust(g.spare_size, FF)
        old = self.pages.get(index)
        if old is not None:
            new = bytes(a & b for a, b in zip(old, new, strict=True))
        self.ops += 1
        if cut is not None:
            if cut == "torn":
                self._store(index, block, page, used, self._torn(old, new))
            return PowerLoss
        if block in self.failing or (fail and self.rng.random() < 1.0):
            self._store(index, block, page, used, self._torn(old, new))
            self.failing.add(block)
            return ProgramError
        self._store(index, block, page, used, new)
        return None

    def erase(self, block: int, cut: str | None, fail: bool) -> type[FlashError] | None:
        """Apply an erase; the error it raises, if any."""
        if block in self.bad:
            return BadBlockError
        self.ops += 1
        indices = range(block * self.g.pages_per_block, (block + 1) * self.g.pages_per_block)
        if cut is not None:
            if cut == "torn":
                for index in indices:
                    if index in self.pages:
                        roll = self.rng.random()
                        if roll < 1 / 3:
                            del self.pages[index]
                        elif roll < 2 / 3:
                            bits = int.from_bytes(self.pages[index], "big") | self.rng.getrandbits(8 * self.g.raw_page)
                            self.pages[index] = bits.to_bytes(self.g.raw_page, "big")
                self._after_erase(block)
            return PowerLoss
        if fail and self.rng.random() < 1.0:
            self.erase_counts[block] += 1
            self.mark_bad(block)
            return EraseError
        for index in indices:
            self.pages.pop(index, None)
        self._after_erase(block)
        return None

    def mark_bad(self, block: int) -> None:
        self.bad.add(block)
        index = block * self.g.pages_per_block
        raw = self.page(index)
        self.pages[index] = raw[:self.g.page_size] + b"\x00" + raw[self.g.page_size + 1:]

    def _torn(self, old: bytes | None, new: bytes) -> bytes:
        base = old if old is not None else self.erased
        n = len(new)
        if self.rng.random() < 0.5:
            cut = self.rng.randrange(n)
            return new[:cut] + base[cut:]
        base_int = int.from_bytes(base, "big")
        keep = base_int & ~int.from_bytes(new, "big") & self.rng.getrandbits(8 * n)
        return (base_int & ~keep).to_bytes(n, "big")

    def _store(self, index: int, block: int, page: int, used: int, raw: bytes) -> None:
        if raw != self.erased or index in self.pages:  # a program that left no bit spent a NOP only
            self.pages[index] = raw
        self.nop[index] = used + 1
        self.next_page[block] = max(self.next_page[block], page + 1)

    def _after_erase(self, block: int) -> None:
        self.erase_counts[block] += 1
        first = block * self.g.pages_per_block
        highest = -1
        for index in range(first, first + self.g.pages_per_block):
            if index in self.pages:
                self.nop[index] = 1
                highest = index - first
            else:
                self.nop.pop(index, None)
        self.next_page[block] = highest + 1


def page_bytes(size: int) -> st.SearchStrategy[bytes]:
    """Bytes up to ``size``: random, ending in a run of 0xFF, all 0xFF, or few distinct values."""
    return st.one_of(
        st.binary(max_size=size),
        st.tuples(st.binary(max_size=size), st.integers(1, size)).map(lambda t: (t[0] + FF * t[1])[:size]),
        st.integers(0, size).map(lambda n: FF * n),
        st.lists(st.sampled_from([0x00, 0x0F, 0xF0, 0x7F, 0xFE, 0xFF]), max_size=size).map(bytes),
    )


blocks = st.integers(0, GEOMETRY.blocks - 1)
pages = st.integers(0, GEOMETRY.pages_per_block - 1)
cuts = st.sampled_from([None, None, None, "clean", "torn"])
rare = st.integers(0, 19).map(lambda n: n == 0)


class CompactChipMachine(RuleBasedStateMachine):
    """Programs, reads, erases, cuts, failures, bad marks, snapshots and images on both chips."""

    def __init__(self) -> None:
        super().__init__()
        self.chip = NandFlash(GEOMETRY, rng=random.Random(SEED))
        self.ref = ReferenceChip(GEOMETRY, random.Random(SEED))
        self.snaps: list[tuple[object, ReferenceChip]] = []

    def expect(self, error: type[FlashError] | None, call: Callable[[], object]) -> None:
        """Run ``call`` on the chip: it must raise exactly ``error`` (or nothing if None)."""
        try:
            call()
        except FlashError as exc:
            assert type(exc) is error, (exc, error)
        else:
            assert error is None, f"expected {error}"
        finally:
            self.chip.disarm_power_cut()
            self.chip.faults = FlashFaults()

    def address(self, data: st.DataObject) -> tuple[int, int]:
        """Mostly a programmed page, else any page."""
        held = sorted(self.ref.pages)
        if held and data.draw(st.integers(0, 3)) > 0:
            return divmod(data.draw(st.sampled_from(held)), GEOMETRY.pages_per_block)
        return data.draw(blocks), data.draw(pages)

    @rule(data=st.data(), block=blocks, cut=cuts, fail=rare)
    def program(self, data: st.DataObject, block: int, cut: str | None, fail: bool) -> None:
        # Mostly the block's next page or a programmed one (a reprogram), sometimes any page.
        page = data.draw(st.one_of(st.just(min(self.ref.next_page[block], GEOMETRY.pages_per_block - 1)),
                                   st.integers(0, max(self.ref.next_page[block] - 1, 0)), pages))
        payload = data.draw(page_bytes(GEOMETRY.page_size))
        spare = data.draw(st.one_of(st.just(b""), page_bytes(GEOMETRY.spare_size)))
        if cut is not None:
            self.chip.arm_power_cut(self.chip.ops + 1, cut)
        if fail and cut is None:
            self.chip.faults = FlashFaults(program_fail_rate=1.0)
        error = self.ref.program(block, page, payload, spare, cut, fail and cut is None)
        self.expect(error, lambda: self.chip.program_page(block, page, payload, spare))

    @rule(data=st.data(), cut=cuts, fail=rare)
    def erase(self, data: st.DataObject, cut: str | None, fail: bool) -> None:
        # Mostly a block holding programmed pages (what a torn erase leaves depends on them).
        held = sorted({i // GEOMETRY.pages_per_block for i in self.ref.pages} - self.ref.bad)
        block = data.draw(st.sampled_from(held) if held and data.draw(st.integers(0, 3)) > 0 else blocks)
        failing = fail and cut is None
        if cut is not None:
            self.chip.arm_power_cut(self.chip.ops + 1, cut)
        if failing:
            self.chip.faults = FlashFaults(erase_fail_rate=1.0)
        error = self.ref.erase(block, cut, failing)
        self.expect(error, lambda: self.chip.erase_block(block))

    @rule(data=st.data())
    def read_page(self, data: st.DataObject) -> None:
        block, page = self.address(data)
        self.ref.ops += 1
        whole = self.ref.page(block * GEOMETRY.pages_per_block + page)
        assert self.chip.read_page(block, page) == (whole[:GEOMETRY.page_size], whole[GEOMETRY.page_size:])

    @rule(data=st.data())
    def read_raw(self, data: st.DataObject) -> None:
        block, page = self.address(data)
        self.ref.ops += 1
        assert self.chip.read_raw(block, page) == self.ref.page(block * GEOMETRY.pages_per_block + page)

    @rule(data=st.data())
    def read_run(self, data: st.DataObject) -> None:
        block, first = self.address(data)
        assert self.chip.read_run(block, first) == self.ref.read_run(block, first)

    @rule(block=blocks)
    def read_cut(self, block: int) -> None:
        self.chip.arm_power_cut(self.chip.ops + 1, "torn")
        self.ref.ops += 1
        self.expect(PowerLoss, lambda: self.chip.read_raw(block, 0))

    @rule(block=blocks, roll=st.integers(0, 3))
    def mark_bad(self, block: int, roll: int) -> None:
        if roll:  # rarely: a bad block stays bad, and a chip of bad blocks does little
            return
        self.chip.mark_bad(block)
        self.ref.mark_bad(block)

    @rule()
    def snapshot(self) -> None:
        snap = self.chip.snapshot()
        assert {i: p.ljust(GEOMETRY.raw_page, FF) for i, p in snap.pages.items()} == self.ref.pages
        self.snaps.append((snap, self.ref.copy()))

    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        if not self.snaps:
            return
        snap, ref = data.draw(st.sampled_from(self.snaps))
        self.chip.restore(snap)  # type: ignore[arg-type]
        failing = self.ref.failing  # failing blocks are the hardware's, not part of a snapshot
        self.ref = ref.copy()
        self.ref.failing = set(failing)

    @rule()
    def image_round_trip(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chip.img"
            save_image(self.chip, path)
            loaded = load_image(path)
        g = GEOMETRY
        for index in range(g.pages):
            assert loaded.read_raw(*divmod(index, g.pages_per_block)) == self.ref.page(index)
        assert loaded.bad_blocks() == sorted(self.ref.bad)

    @invariant()
    def agrees_with_the_reference(self) -> None:
        chip, ref = self.chip, self.ref
        assert chip.ops == ref.ops
        assert chip.rng.getstate() == ref.rng.getstate()
        assert chip.programmed_pages() == len(ref.pages)
        assert all(chip.is_erased(*divmod(i, GEOMETRY.pages_per_block)) == (i not in ref.pages)
                   for i in range(GEOMETRY.pages))
        assert [chip.erase_count(b) for b in range(GEOMETRY.blocks)] == ref.erase_counts
        assert chip.bad_blocks() == sorted(ref.bad)

    @invariant()
    def holds_only_what_precedes_the_trailing_ff(self) -> None:
        assert self.chip.held_bytes() == sum(len(p.rstrip(FF)) for p in self.ref.pages.values())


TestCompactChip = CompactChipMachine.TestCase


def test_a_small_page_costs_its_content_not_the_whole_page() -> None:
    g = Geometry()
    flash = NandFlash(g, rng=random.Random(1))
    rng = random.Random(2)
    count = 256
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            # A commit page: header and payload, then nothing (0xFF) to the end of the page.
            flash.program_page(*divmod(i, g.pages_per_block), rng.randbytes(336) + b"\x00")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert flash.held_bytes() == count * 337
    assert held / count < g.raw_page / 3


def test_a_store_of_small_records_holds_a_fraction_of_its_raw_pages() -> None:
    flash = NandFlash(Geometry(pages_per_block=16, blocks=64), rng=random.Random(3))
    store = RecordStore.format(flash, device_id=b"\x03" * 16, account="carol")
    rng = random.Random(4)
    ids = [rng.randbytes(16) for _ in range(40)]
    for _ in range(200):
        store.write_local(rng.choice(ids), random_body(rng))
    assert flash.programmed_pages() > 100
    assert flash.held_bytes() / flash.programmed_pages() < flash.geometry.raw_page / 2
    remounted = RecordStore.mount(flash)
    assert remounted.digest() == store.digest()


def drive(flash: NandFlash, steps: list[tuple[str, int, int]]) -> None:
    """Apply (kind, block, page) operations, ignoring the chip's refusals."""
    for kind, block, page in steps:
        try:
            if kind == "program":
                flash.program_page(block, page, bytes([page, block]))
            elif kind == "read":
                flash.read_raw(block, page)
            else:
                flash.erase_block(block)
        except FlashError:
            pass


op_steps = st.lists(st.tuples(st.sampled_from(["program", "read", "erase"]), blocks, pages), max_size=30)


@given(length=st.integers(0, 12), steps=op_steps)
def test_op_log_keeps_the_last_op_log_len_operations(length: int, steps: list[tuple[str, int, int]]) -> None:
    short = NandFlash(GEOMETRY, rng=random.Random(5), op_log_len=length)
    full = NandFlash(GEOMETRY, rng=random.Random(5), op_log_len=100)
    drive(short, steps)
    drive(full, steps)
    assert isinstance(short.op_log, deque) and short.op_log.maxlen == length
    assert list(short.op_log) == (list(full.op_log)[-length:] if length else [])
    assert short.ops == full.ops
    everywhere = [divmod(i, GEOMETRY.pages_per_block) for i in range(GEOMETRY.pages)]
    assert [short.read_raw(*at) for at in everywhere] == [full.read_raw(*at) for at in everywhere]


def test_op_log_len_defaults_to_op_log_len_attribute() -> None:
    flash = NandFlash(GEOMETRY)
    assert flash.op_log.maxlen == NandFlash.OP_LOG_LEN == 256
    flash.read_raw(0, 0)
    assert list(flash.op_log) == [(1, "read", 0, 0)]


def test_op_log_len_zero_keeps_no_log() -> None:
    flash = NandFlash(GEOMETRY, op_log_len=0)
    flash.program_page(0, 0, b"\x00")
    flash.read_raw(0, 0)
    flash.erase_block(0)
    assert flash.ops == 3 and len(flash.op_log) == 0


def test_negative_op_log_len_is_refused() -> None:
    with pytest.raises(ValueError, match="op_log_len"):
        NandFlash(GEOMETRY, op_log_len=-1)
