"""pack_pages: a chip that holds compressible pages zlib-compressed behaves exactly like one that
does not (same reads, same faults, same RNG draws), and holds fewer bytes."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sidekick_testbed.emulator.flash import Geometry, NandFlash, PowerLoss, load_image, save_image

GEOMETRY = Geometry(page_size=2048, spare_size=64, pages_per_block=4, blocks=4)


def _page(kind: str, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "noise":
        return rng.randbytes(2048)
    if kind == "tiled":
        return (rng.randbytes(64) * 32)[:rng.randrange(1024, 2049)]
    return rng.randbytes(rng.randrange(0, 300)) + b"\xff" * rng.randrange(0, 40)


OPS = st.lists(st.tuples(st.sampled_from(["program", "program", "read", "run", "erase", "cut"]),
                         st.integers(0, 3), st.integers(0, 3), st.sampled_from(["noise", "tiled", "small"]),
                         st.integers(0, 1000)), max_size=40)


def _drive(flash: NandFlash, ops: list[tuple[str, int, int, str, int]]) -> list[object]:
    seen: list[object] = []
    for op, block, page, kind, seed in ops:
        try:
            if op == "program":  # mostly the block's next page (in order), sometimes a reprogram
                target = min(flash._next_page[block], 3) if seed % 4 else page
                flash.program_page(block, target, _page(kind, seed))
                seen.append("ok")
            elif op == "read":
                seen.append(flash.read_raw(block, page))
                seen.append(flash.read_page(block, page))
            elif op == "run":
                seen.append(flash.read_run(block))
            elif op == "erase":
                flash.erase_block(block)
                seen.append("erased")
            else:
                flash.arm_power_cut(flash.ops + 1 + seed % 3, "torn")
        except PowerLoss as exc:
            seen.append(("power loss", str(exc)))
        except Exception as exc:  # order, NOP and bad-block refusals must match too
            seen.append(type(exc).__name__)
    return seen


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_a_packed_chip_behaves_exactly_like_a_plain_one(ops: list[tuple[str, int, int, str, int]]) -> None:
    plain = NandFlash(GEOMETRY, rng=random.Random(9))
    packed = NandFlash(GEOMETRY, rng=random.Random(9), pack_pages=True)
    assert _drive(packed, ops) == _drive(plain, ops)
    assert packed.held_bytes() <= plain.held_bytes()
    assert packed.snapshot().ops == plain.snapshot().ops


def test_compressible_pages_are_held_small_and_noise_as_it_is(tmp_path: Path) -> None:
    packed = NandFlash(GEOMETRY, pack_pages=True)
    plain = NandFlash(GEOMETRY)
    tiled = _page("tiled", 1).ljust(2048, b"\x00")
    noise = _page("noise", 2)
    for chip in (packed, plain):
        chip.program_page(0, 0, tiled)
        chip.program_page(0, 1, noise)
    assert packed.held_bytes() - len(noise) < (plain.held_bytes() - len(noise)) // 4
    assert packed.read_page(0, 0) == plain.read_page(0, 0) == (tiled, b"\xff" * 64)
    packed.program_page(0, 0, b"\x00" * 16)  # a second program ANDs with the packed page
    assert packed.read_raw(0, 0)[:16] == b"\x00" * 16 and packed.read_raw(0, 0)[16:2048] == tiled[16:]
    save_image(packed, tmp_path / "chip.img")
    again = load_image(tmp_path / "chip.img")
    assert [again.read_raw(0, p) for p in range(2)] == [packed.read_raw(0, p) for p in range(2)]
