"""Record store benchmarks on a populated 64 MiB chip; prints JSON.

Figures: write throughput (a commit per record, and batched), mount time against a naive full-scan
mount in the same run, write amplification at steady state under updates, resident index memory
per record after mount (tracemalloc), and power-loss cuts per second for a 200-operation workload
against replaying the workload from scratch for each cut. Flash memory: bytes the chip holds per
programmed page (pages are held without their trailing 0xFF) against the whole raw page that a chip
holding whole pages would keep, after populating and after the steady-state updates.

Usage: python benchmarks/store.py [--records 10000] [--photos 50] [--updates 20000] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import statistics
import time
import tracemalloc
from typing import Any

from sidekick_testbed.emulator.flash import Geometry, NandFlash, PowerLoss
from sidekick_testbed.emulator.store import RecordStore
from sidekick_testbed.emulator.store.format import E_HEAD, HEAD_PREFIX, HEADER, iter_entries, parse_header
from sidekick_testbed.emulator.store.model import apply_op, make_workload, random_body
from sidekick_testbed.emulator.store.powerloss import PowerLossRunner
from sidekick_testbed.protocol.records import Photo, Record
from sidekick_testbed.protocol.wire import decode_record


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def cpu_timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result): on a shared machine the CPU time is
    the better estimate of the cost."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def naive_mount(flash: NandFlash) -> int:
    """Baseline: read every page of the chip and decode every record version found."""
    g = flash.geometry
    decoded = 0
    for block in range(g.blocks):
        for page in range(g.pages_per_block):
            raw = flash.read_raw(block, page)
            header = parse_header(raw)
            if header is None:
                continue
            for _slot, etype, _key, frag, nfrag, vpos, vlen in iter_entries(raw, header):
                if etype == E_HEAD and nfrag == 1 and frag == 0:
                    decode_record(raw[vpos + HEAD_PREFIX.size:vpos + vlen])
                    decoded += 1
    return decoded


def populate(records: int, photos: int, rng: random.Random) -> tuple[RecordStore, list[bytes], dict[str, Any]]:
    flash = NandFlash(Geometry(), rng=random.Random(1))
    store = RecordStore.format(flash, device_id=b"\x01" * 16, account="bench")
    ids = [rng.randbytes(16) for _ in range(records)]
    half = records // 2
    bodies = [random_body(rng) for _ in range(records)]
    def each() -> None:
        for i in range(half):
            store.write_local(ids[i], bodies[i])

    def batched() -> None:
        for n, batch in enumerate(batches):
            store.apply_pulled(batch, n)

    seconds_each, _ = timed(each)
    batches = [[Record(ids[i], i + 1, False, bodies[i]) for i in range(start, min(start + 100, records))]
               for start in range(half, records, 100)]
    seconds_batched, _ = timed(batched)
    photo_bytes = 100 * 1024
    photo_seconds = 0.0
    for _ in range(photos):
        data = rng.randbytes(photo_bytes)
        blob_id = rng.randbytes(16)
        took, _ = timed(store.write_blob, blob_id, data)
        photo_seconds += took
        store.write_local(rng.randbytes(16), Photo("photo", blob_id, len(data), hashlib.sha256(data).digest()))
    figures = {
        "commit_per_record": {"records": half, "records_per_s": round(half / seconds_each)},
        "batched_100_per_commit": {"records": records - half,
                                   "records_per_s": round((records - half) / seconds_batched)},
        "photo_write_MiB_per_s": round(photos * photo_bytes / (1 << 20) / photo_seconds, 2) if photos else None,
    }
    return store, ids, figures


def bench_mount(flash: NandFlash, repeat: int) -> dict[str, Any]:
    walls, cpus = [], []
    for _ in range(repeat):
        gc.collect()
        wall, cpu, store = cpu_timed(RecordStore.mount, flash)
        walls.append(wall)
        cpus.append(cpu)
    naive_wall, naive_cpu, decoded = cpu_timed(naive_mount, flash)
    blob_id = store.blob_ids()[0] if store.blob_ids() else None
    photo_read = timed(store.read_blob, blob_id)[0] if blob_id else None
    return {"mount_ms_wall": round(statistics.median(walls) * 1000, 1),
            "mount_ms_cpu": round(statistics.median(cpus) * 1000, 1),
            "naive_full_scan_decode_ms_wall": round(naive_wall * 1000, 1),
            "naive_full_scan_decode_ms_cpu": round(naive_cpu * 1000, 1),
            "records": len(store), "versions_decoded_by_naive": decoded,
            "photo_read_ms": round(photo_read * 1000, 2) if photo_read else None}


def bench_memory(flash: NandFlash) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    store = RecordStore.mount(flash)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(store) + len(store.blob_ids())
    return {"index_bytes": current, "bytes_per_record": round(current / n, 1), "mount_peak_bytes": peak,
            "keys": n}


def bench_write_amplification(store: RecordStore, ids: list[bytes], updates: int,
                              rng: random.Random) -> dict[str, Any]:
    for _ in range(updates):  # warm up into steady state
        store.write_local(rng.choice(ids), random_body(rng))
    host0, gc0, erases0 = store.pages_written, store.gc_pages_written, store.erases
    payload0 = store.payload_bytes_written
    ckpt0 = store.checkpoint_pages_written
    took, _ = timed(lambda: [store.write_local(rng.choice(ids), random_body(rng)) for _ in range(updates)])
    host = store.pages_written - host0
    moved = store.gc_pages_written - gc0
    ckpt = store.checkpoint_pages_written - ckpt0
    stats = store.stats()
    payload = store.payload_bytes_written - payload0
    page_size = store.flash.geometry.page_size
    return {"updates": updates, "host_pages": host, "gc_pages": moved, "checkpoint_pages": ckpt,
            "write_amplification": round((host + moved + ckpt) / host, 3),
            "write_amplification_without_checkpoints": round((host + moved) / host, 3),
            "erases": store.erases - erases0,
            "page_bytes_per_payload_byte": round((host + moved + ckpt) * page_size / payload, 2),
            "updates_per_s": round(updates / took), "free_blocks": stats.free_blocks,
            "gc_runs": stats.gc_runs}


def flash_memory(flash: NandFlash) -> dict[str, Any]:
    """Bytes of page content the chip holds per programmed page, against the raw page size."""
    pages = flash.programmed_pages()
    per_page = flash.held_bytes() / pages if pages else 0.0
    raw = flash.geometry.raw_page
    return {"programmed_pages": pages, "bytes_held_per_programmed_page": round(per_page, 1),
            "baseline_raw_page_bytes": raw, "held_over_raw": round(per_page / raw, 3)}


def bench_powerloss(cuts: int) -> dict[str, Any]:
    out: dict[str, Any] = {"workload_ops": 200}
    for every in (4, 1):
        runner = PowerLossRunner(n_ops=200, recovery_every=every)
        runner.reference(0)
        plan = random.Random(0).sample(list(runner.cuts(0)), min(cuts, runner.cut_count(0)))
        wall, cpu, results = cpu_timed(lambda r=runner, p=plan: [r.run_cut(0, k, v) for k, v in p])
        assert all(r.ok for r in results)
        out[f"cuts_per_s_recovery_checks_every_{every}"] = {"wall": round(len(plan) / wall),
                                                             "cpu": round(len(plan) / cpu)}
    # Baseline: no snapshots; replay the workload from a fresh chip up to each cut.
    ops = make_workload(0, 200)
    plan = random.Random(1).sample(list(PowerLossRunner(n_ops=200).cuts(0)), 20)
    start, cpu_start = time.perf_counter(), time.process_time()
    for k, variant in plan:
        flash = NandFlash(PowerLossRunner().geometry, rng=random.Random("flash/0"))
        store = RecordStore.format(flash, device_id=b"\x5a" * 16, account="alice", key=b"k" * 32)
        store.digest()  # the same flash operations as the runner's reference run
        flash.arm_power_cut(k, variant)
        try:
            for op in ops:
                apply_op(store, op)
                store.digest()
        except PowerLoss:
            pass
        flash.disarm_power_cut()
        RecordStore.mount(flash).digest()
    out["cuts_per_s_replay_from_scratch_baseline"] = {
        "wall": round(len(plan) / (time.perf_counter() - start), 1),
        "cpu": round(len(plan) / (time.process_time() - cpu_start), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--cuts", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.records, args.photos, args.updates, args.cuts = 1000, 5, 2000, 100
    rng = random.Random(42)
    store, ids, writes = populate(args.records, args.photos, rng)
    flash = store.flash
    memory_populated = flash_memory(flash)
    result: dict[str, Any] = {
        "geometry": {"blocks": flash.geometry.blocks, "page_size": flash.geometry.page_size,
                     "pages_per_block": flash.geometry.pages_per_block,
                     "capacity_MiB": flash.geometry.capacity >> 20},
        "populated": {"records": args.records, "photos": args.photos, "photo_KiB": 100,
                      "programmed_pages": flash.programmed_pages(), "page_header_bytes": HEADER.size},
        "writes": writes,
        "mount": bench_mount(flash, 5),
        "memory_after_mount": bench_memory(flash),
        "steady_state_updates": bench_write_amplification(store, ids, args.updates, rng),
        "powerloss": bench_powerloss(args.cuts),
    }
    result["flash_memory"] = {"after_populate": memory_populated, "after_updates": flash_memory(flash)}
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
