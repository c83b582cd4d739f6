"""A handset that is really full keeps what it holds and converges once its user frees space.

The store: deleting a photo frees its image (docs/FLASH.md, "What may be dropped"), and the oracle's
reader sees the same. The world: a handset filled with photos until its store refuses, then healed;
its user deletes photos until the oracle's accounting finds room, and the run must end converged,
with no handset left out.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sidekick_testbed.emulator.flash import NandFlash
from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.sim.capacity import has_room
from sidekick_testbed.emulator.sim.flash_reader import read_chip
from sidekick_testbed.emulator.sim.options import GEOMETRY, TIGHT_GEOMETRY, SimOptions
from sidekick_testbed.emulator.sim.workload import UserOp
from sidekick_testbed.emulator.sim.world import World
from sidekick_testbed.emulator.store import RecordStore, StoreFull
from sidekick_testbed.protocol.records import Note, Photo, Record

photo_sizes = st.lists(st.integers(300, 1200), min_size=30, max_size=30)
"""Enough photos to fill either chip of the fuzzer (the default one holds about 15 KiB)."""


def filled(sizes: list[int], geometry_tight: bool, seed: int) -> tuple[NandFlash, Handset, list[bytes]]:
    """A handset whose store took photos of ``sizes`` until it refused one as full."""
    flash = NandFlash(TIGHT_GEOMETRY if geometry_tight else GEOMETRY)
    rng = random.Random(seed)
    handset = Handset.create(flash, device_id=bytes(16), account="a", key=bytes(32), rng=rng, name="h")
    photos = []
    for n, size in enumerate(sizes):
        try:
            photos.append(handset.take_photo(f"photo #{n}", rng.randbytes(size)))
        except StoreFull:
            return flash, handset, photos
    raise AssertionError("the chip never filled")


@settings(max_examples=25, deadline=None)
@given(photo_sizes, st.booleans(), st.integers(0, 2**32))
def test_deleting_photos_gives_their_room_back(sizes: list[int], tight: bool, seed: int) -> None:
    flash, handset, photos = filled(sizes, tight, seed)
    full = read_chip(flash)
    for record_id in photos:
        handset.delete(record_id)   # a full store still takes a delete that frees an image
    after = read_chip(flash)
    assert after.blobs == {}
    assert after.live_bytes < full.live_bytes - sum(len(b) for b in full.blobs.values())
    assert has_room(after.live_bytes, 0, flash.geometry, len(after.bad_blocks))
    handset.add(Note("after the clean-up", "it fits again"))
    remounted = RecordStore.mount(flash)
    assert remounted.blob_ids() == []
    assert {v.record.record_id for v in remounted.records() if v.record.deleted} == set(photos)


def run_full_handset(sizes: list[int], tight: bool, seed: int, mutant: str | None = None) -> tuple[World, list]:
    """One account of two handsets, no faults; handset 0's user takes the photos, then the heal."""
    world = World(seed, SimOptions(accounts=1, devices=2, faults=frozenset(), backend="sim", mutant=mutant),
                  script=[("user", 0)] * len(sizes))
    world.geometry = TIGHT_GEOMETRY if tight else GEOMETRY
    fill = itertools.cycle(sizes)   # the photos, then what the user takes once space is freed
    world.workload.next_op = lambda live: UserOp(  # type: ignore[method-assign]
        "photo", photo=world.workload.rng.randbytes(next(fill)), caption=f"photo #{world.workload._tag()}")
    result = world.run()
    return world, result.events if result.violation is None else [result.violation]


@settings(max_examples=8, deadline=None)
@given(photo_sizes, st.booleans(), st.integers(0, 2**32))
def test_a_full_handset_frees_space_and_converges(sizes: list[int], tight: bool, seed: int) -> None:
    world, events = run_full_handset(sizes, tight, seed)
    assert world.violation is None, world.violation
    assert any(e["kind"] == "user.full" for e in events)                      # it was really full
    assert any(e.get("note") == "to free space" for e in events)              # its user freed space
    assert not any(d.full and d.beyond for d in world.devices)                 # nobody left out at the end



def test_an_image_goes_with_the_last_live_photo_that_names_it() -> None:
    flash = NandFlash(GEOMETRY)
    store = RecordStore.format(flash, device_id=bytes(16))
    image = Photo("beach", b"i" * 16, 3, bytes(32), "image/jpeg")
    store.write_local(b"a" * 16, image, image=b"abc")
    store.write_local(b"b" * 16, image)                  # a conflict copy naming the same image
    store.write_local(b"a" * 16, image, deleted=True)
    assert store.blob_ids() == [b"i" * 16]
    store.write_local(b"b" * 16, image, deleted=True)
    assert store.blob_ids() == []
    assert RecordStore.mount(flash).blob_ids() == []
    assert read_chip(flash).blobs == {}


def test_a_pulled_tombstone_frees_the_image() -> None:
    flash = NandFlash(GEOMETRY)
    store = RecordStore.format(flash, device_id=bytes(16))
    image = Photo("beach", b"i" * 16, 3, bytes(32), "image/jpeg")
    store.write_blob(b"i" * 16, b"abc")                  # a pull writes the image, then the records
    store.apply_pulled([Record(b"a" * 16, 1, False, image)], anchor=1)
    assert store.blob_ids() == [b"i" * 16]
    store.apply_pulled([Record(b"a" * 16, 2, True, image)], anchor=2)
    assert store.blob_ids() == []
    assert RecordStore.mount(flash).blob_ids() == []
