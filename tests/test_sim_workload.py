"""The workload reaches the protocol's edges, judged by what the runs do: photo uploads cut between
two chunks and resumed from what a SQLite server holds; RECORDS frames filled to within a few bytes
of the negotiated limit."""

from __future__ import annotations

import random

from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.sim.nemesis import Swarm
from sidekick_testbed.emulator.sim.options import SimOptions
from sidekick_testbed.emulator.sim.workload import FILL_SLACK, RECORDS_OVERHEAD, Workload
from sidekick_testbed.emulator.sim.world import World
from sidekick_testbed.protocol.messages import BlobAck, BlobChunk, BlobQuery, Message, Records
from sidekick_testbed.protocol.records import Note, Record
from sidekick_testbed.protocol.wire import encode_record

SEEDS = range(1, 21)


class WatchedWorld(World):
    """A run that also notes the RECORDS frames the handsets received (their size, by the spec's
    layout) and the BLOB_QUERY answers that resumed an upload held in part."""

    def __init__(self, seed: int, options: SimOptions) -> None:
        super().__init__(seed, options)
        self.records_frames: list[int] = []
        self.part_held: list[tuple[int, int]] = []
        """(have, total) of each BLOB_QUERY answered with some but not all of the blob."""
        self._totals: dict[bytes, int] = {}
        self._asked: dict[str, bytes] = {}

    def on_message(self, handset: Handset, direction: str, message: Message) -> None:
        name = handset.name
        if isinstance(message, Records) and direction == "received":
            self.records_frames.append(RECORDS_OVERHEAD + sum(len(encode_record(r)) for r in message.records))
        elif isinstance(message, BlobChunk):
            self._totals[message.blob_id] = message.total
        elif isinstance(message, BlobQuery):
            self._asked[name] = message.blob_id
        elif isinstance(message, BlobAck) and self._asked.pop(name, None) == message.blob_id:
            total = self._totals.get(message.blob_id, 0)
            if 0 < message.have < total:
                self.part_held.append((message.have, total))
        super().on_message(handset, direction, message)


def test_frame_filling_notes_fill_a_records_frame_to_within_the_slack() -> None:
    for kib, share in ((1, 2), (2, 2), (4, 4)):
        max_frame = kib * 1024
        workload = Workload(random.Random(kib), max_frame=max_frame, fill_notes=1.0)
        sizes = [len(encode_record(Record(bytes(16), 0, False, workload.body(Note)))) for _ in range(200)]
        assert {size - workload.fill_size for size in sizes} == set(range(-FILL_SLACK, FILL_SLACK + 1))
        budget = max_frame - RECORDS_OVERHEAD
        assert budget - share < share * workload.fill_size <= budget  # `share` of them fill it, give or take


def test_small_frames_make_photos_span_chunks_and_large_frames_keep_the_old_sizes() -> None:
    def photo_sizes(max_frame: int) -> set[int]:
        workload = Workload(random.Random(7), max_frame=max_frame)
        ops = (workload.next_op([]) for _ in range(2000))
        return {len(op.photo) for op in ops if op.kind == "photo"}
    assert max(photo_sizes(1024)) > 2 * (1024 - 118)  # a 1 KiB frame's chunk (sync_client): three chunks
    assert max(photo_sizes(65536)) <= 1200
    assert not Workload(random.Random(7), max_frame=65536, fill_notes=1.0).fill_notes


def test_uploads_cut_between_chunks_resume_from_what_a_sqlite_server_holds() -> None:
    swarm = Swarm({"small-frames": 1.0, "reset": 0.04, "truncate": 0.03})
    resumed = []
    for seed in SEEDS:
        world = WatchedWorld(seed, SimOptions(backend="sqlite", swarm=swarm))
        result = world.run()
        assert result.violation is None, (seed, result.violation)
        if world.part_held:
            resumed.append(seed)
    assert len(resumed) >= 2, resumed


def test_pulls_fill_records_frames_to_their_limit() -> None:
    filled = []
    for kib in (1, 2, 4):
        swarm = Swarm({"small-frames": float(kib), "full-frames": 1.0})
        for seed in SEEDS[:10]:
            world = WatchedWorld(seed, SimOptions(swarm=swarm))
            result = world.run()
            assert result.violation is None, (kib, seed, result.violation)
            fullest = max(world.records_frames, default=0)
            assert fullest <= kib * 1024
            if fullest > kib * 1024 - FILL_SLACK:
                filled.append((kib, seed))
    assert len(filled) >= 3, filled
