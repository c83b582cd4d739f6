"""Handset sync throughput: a first sync of N records and an incremental sync of 10 changes.

Against the in-process reference server (simulated storage) over in-memory streams, and over TCP
to a ``sidekick serve`` process (SQLite storage). Prints JSON: wall time, frames and bytes each
way, and a same-run baseline (encoding the same PUSH frames alone, no session, no store, no
server). Goals: first sync of 10,000 records < 2 s in memory; incremental < 20 ms.

    python benchmarks/handset.py [--records 10000] [--no-tcp]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from sidekick_testbed.emulator.flash import Geometry, NandFlash
from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.handset.sync_client import SyncReport
from sidekick_testbed.emulator.handset.transport import Connector, tcp_connector
from sidekick_testbed.emulator.testing import MemoryWorld
from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.messages import Change, Push
from sidekick_testbed.protocol.records import Contact, Note

ACCOUNT = "bench"
KEY = bytes(range(32))


def make_handset(records: int, seed: int = 1, key: bytes = KEY) -> Handset:
    blocks = max(64, records // 40 + 64)
    flash = NandFlash(Geometry(blocks=blocks), rng=random.Random(seed))
    handset = Handset.create(flash, device_id=bytes([seed]) * 16, account=ACCOUNT, key=key,
                             rng=random.Random(seed), name="bench")
    for i in range(records):
        if i % 2:
            handset.add(Contact(f"Contact {i}", (f"+1 555 {i:07d}",), (f"c{i}@example.org",)))
        else:
            handset.add(Note(f"Note {i}", "lorem ipsum dolor sit amet " * 2))
    return handset


def figures(report: SyncReport, seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 4), "pushed": report.pushed, "pulled": report.pulled,
        "frames_sent": report.frames_sent, "frames_received": report.frames_received,
        "bytes_sent": report.bytes_sent, "bytes_received": report.bytes_received,
    }


async def timed_sync(handset: Handset, connect: Connector) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    report = await handset.sync(connect, attempts=1)
    result = figures(report, time.perf_counter() - start)
    result["cpu_seconds_this_process"] = round(time.process_time() - cpu, 4)
    return result


def edit_ten(handset: Handset) -> None:
    for version in handset.store.records()[:10]:
        body = version.record.body
        if isinstance(body, Note):
            handset.edit(version.record.record_id, Note(body.title, body.text + " edited"))
        elif isinstance(body, Contact):
            handset.edit(version.record.record_id, Contact(body.name + " (edited)", body.phones, body.emails))


def encode_baseline(handset: Handset, max_batch: int = 256) -> dict[str, Any]:
    """Encode the PUSH frames of every pending version, nothing else."""
    pending = handset.store.pending()
    changes = [Change(v.lsn, v.base_version, v.record) for v in pending]
    start, cpu = time.perf_counter(), time.process_time()
    total = 0
    for seq, i in enumerate(range(0, len(changes), max_batch)):
        total += len(encode_frame(Push(tuple(changes[i:i + max_batch])), seq))
    return {"seconds": round(time.perf_counter() - start, 4),
            "cpu_seconds_this_process": round(time.process_time() - cpu, 4),
            "frames": -(-len(changes) // max_batch), "bytes": total}


async def in_memory(records: int) -> dict[str, Any]:
    world = MemoryWorld(seed=0, accounts={ACCOUNT: KEY})
    handset = make_handset(records)
    baseline = encode_baseline(handset)
    async with world.running():
        connect = world.connector()
        first = await timed_sync(handset, connect)
        edit_ten(handset)
        incremental = await timed_sync(handset, connect)
    return {"first_sync": first, "incremental_10": incremental, "baseline_encode_push_frames": baseline}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def over_tcp(records: int) -> dict[str, Any]:
    sidekick = shutil.which("sidekick") or str(Path(sys.executable).with_name("sidekick"))
    tmp = Path(tempfile.mkdtemp(prefix="sk-bench-"))
    db, key_file = tmp / "server.db", tmp / "bench.key"
    port, admin = _free_port(), _free_port()
    try:
        subprocess.run([sidekick, "accounts", "add", ACCOUNT, "--db", str(db), "--key-file", str(key_file)],
                       check=True, capture_output=True)
        key = bytes.fromhex(key_file.read_text().strip())
        server = subprocess.Popen([sidekick, "serve", "--db", str(db), "--tcp", f"127.0.0.1:{port}",
                                   "--admin", f"127.0.0.1:{admin}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            handset = make_handset(records, seed=2, key=key)

            async def main() -> dict[str, Any]:
                connect = tcp_connector("127.0.0.1", port)
                first = await timed_sync(handset, connect)
                edit_ten(handset)
                incremental = await timed_sync(handset, connect)
                return {"first_sync": first, "incremental_10": incremental}

            return trio.run(main)
        finally:
            server.terminate()
            server.wait(timeout=10)
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--no-tcp", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"records": args.records, "cpus": os.cpu_count(),
                              "goals": {"first_sync_in_memory_s": 2.0, "incremental_10_s": 0.020}}
    result["in_memory"] = trio.run(in_memory, args.records)
    if not args.no_tcp:
        result["tcp_sidekick_serve"] = over_tcp(args.records)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
