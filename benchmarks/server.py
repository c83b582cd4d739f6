"""Reference server throughput: group commit against one transaction per commit, in one run.

Starts ``sidekick serve`` on a SQLite file (a real process), drives concurrent scripted devices
over TCP and prints JSON: commits/s and DURABLE latency percentiles with group commit and with
``--no-group-commit`` (the baseline), sessions/s for a small full sync, server memory per idle
session (resident set size growth divided by the sessions held open), and the same commit load on
the in-memory store (``--memory``): the ceiling the protocol processing allows on this machine.
The disk's own figures come first (fsync of a 4 KiB write, one SQLite WAL transaction with
``synchronous=FULL``, in the same folder). Group commit cannot beat a store that costs nothing,
so its speed-up is bounded by the in-memory store's commits/s over the baseline's
(``speedup_ceiling``): on a disk with a fast fsync that bound is low.

    python benchmarks/server.py [--devices 100] [--seconds 5] [--batch 5] [--rounds 3]

Each mode's figures are those of its median round; every round's commits/s is listed too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.scripted_device import ScriptedDevice, note_change  # noqa: E402

KEY = bytes(range(32))
ACCOUNTS = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``sidekick serve`` process on a fresh SQLite store."""

    def __init__(self, folder: Path, *extra: str, memory: bool = False) -> None:
        self.db = folder / "bench.db"
        if not memory:
            for index in range(ACCOUNTS):
                subprocess.run([sys.executable, "-m", "emulator", "accounts", "add", f"acct{index}", "--db",
                                str(self.db), "--key", KEY.hex()], check=True, capture_output=True)
        self.tcp, self.admin = free_port(), free_port()
        store = ["--memory"] if memory else ["--db", str(self.db)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emulator", "serve", *store, "--tcp", f"127.0.0.1:{self.tcp}",
             "--http", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{self.admin}",
             "--admin-token", "bench", "--max-sessions", "5000", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        if memory:
            for index in range(ACCOUNTS):
                body = json.dumps({"account": f"acct{index}", "key": KEY.hex()}).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{self.admin}/accounts", data=body,
                                                 headers={"X-Admin-Token": "bench"}, method="POST")
                urllib.request.urlopen(request, timeout=5).read()

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def device(port: int, index: int) -> ScriptedDevice:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return ScriptedDevice(stream, account=f"acct{index % ACCOUNTS}", device_id=index.to_bytes(16, "big"),
                          key=KEY, rng=random.Random(index), timeout=60)


def disk_figures(folder: Path, samples: int = 200) -> dict[str, Any]:
    """fsync latency of a 4 KiB write and of a one-row SQLite WAL transaction, in ``folder``."""
    import sqlite3

    fsyncs: list[float] = []
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(samples):
            started = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            fsyncs.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    transactions: list[float] = []
    conn = sqlite3.connect(folder / "probe.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (data BLOB)")
        for _ in range(samples):
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (b"y" * 200,))
            conn.execute("COMMIT")
            transactions.append(time.perf_counter() - started)
    finally:
        conn.close()
    return {"fsync_4k_ms_p50": round(percentile(fsyncs, 0.5) * 1000, 3),
            "sqlite_transaction_ms_p50": round(percentile(transactions, 0.5) * 1000, 3)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def commit_load(port: int, devices: int, seconds: float, batch: int) -> dict[str, Any]:
    latencies: list[float] = []
    ready = trio.Event()
    deadline = [0.0]
    connected = [0]

    async def run(index: int) -> None:
        dev = await device(port, index)
        await dev.hello()
        connected[0] += 1
        if connected[0] == devices:
            deadline[0] = trio.current_time() + seconds
            ready.set()
        await ready.wait()
        rng = random.Random(index)
        lsn = 0
        while trio.current_time() < deadline[0]:
            changes = []
            for _ in range(batch):
                lsn += 1
                changes.append(note_change(rng, lsn, f"d{index} n{lsn}"))
            await dev.push(changes)
            started = trio.current_time()
            await dev.commit(lsn)
            latencies.append(trio.current_time() - started)
        await dev.bye()

    begin = [0.0]
    async with trio.open_nursery() as nursery:
        for index in range(devices):
            nursery.start_soon(run, index)
        await ready.wait()
        begin[0] = trio.current_time()
    elapsed = trio.current_time() - begin[0]
    return {
        "commits": len(latencies),
        "commits_per_s": round(len(latencies) / elapsed, 1),
        "changes_per_s": round(len(latencies) * batch / elapsed, 1),
        "durable_latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 2),
        "durable_latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 2),
    }


async def session_rate(port: int, workers: int, seconds: float) -> dict[str, Any]:
    done = [0]
    deadline = trio.current_time() + seconds

    async def run(worker: int) -> None:
        n = 0
        rng = random.Random(worker)
        while trio.current_time() < deadline:
            n += 1
            dev = await device(port, 10_000 + worker * 100_000 + n)
            await dev.hello()
            await dev.push_commit([note_change(rng, lsn, "sync") for lsn in (1, 2, 3)])
            await dev.pull(0, max_records=50)
            await dev.bye()
            await dev.stream.aclose()  # type: ignore[union-attr]
            done[0] += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for worker in range(workers):
            nursery.start_soon(run, worker)
    return {"sessions_per_s": round(done[0] / (trio.current_time() - start), 1), "sessions": done[0],
            "workers": workers, "records_pulled_per_session": "<= 50"}


async def idle_memory(server: Server, sessions: int) -> dict[str, Any]:
    before = server.rss()
    held: list[ScriptedDevice] = []
    for index in range(sessions):
        dev = await device(server.tcp, 900_000 + index)
        await dev.hello()
        held.append(dev)
    await trio.sleep(0.5)
    after = server.rss()
    for dev in held:
        await dev.stream.aclose()  # type: ignore[union-attr]
    return {"idle_sessions": sessions, "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "bytes_per_idle_session": (after - before) // sessions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--idle-sessions", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three modes, interleaved")
    args = parser.parse_args()
    result: dict[str, Any] = {"devices": args.devices, "changes_per_commit": args.batch,
                              "seconds_per_phase": args.seconds, "store": "SQLite on disk, WAL, synchronous=FULL"}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
        result["disk"] = disk_figures(Path(folder))
    modes = (("group_commit", ("",)), ("baseline_no_group_commit", ("--no-group-commit",)),
             ("ceiling_in_memory_store", ("--memory",)))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in modes}
    for round_number in range(args.rounds):  # modes interleaved: a busy machine affects them alike
        for label, (flag,) in modes:
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
                memory = flag == "--memory"
                server = Server(Path(folder), *([flag] if flag and not memory else []), memory=memory)
                try:
                    run = trio.run(commit_load, server.tcp, args.devices, args.seconds, args.batch)
                    for line in server.metrics().splitlines():
                        if line.startswith("sidekick_storage_transactions_total"):
                            run["transactions"] = int(float(line.split()[-1]))
                    runs[label].append(run)
                    if label == "group_commit" and round_number == 0:
                        result["full_sync"] = trio.run(session_rate, server.tcp, 10, args.seconds)
                        result["memory"] = trio.run(idle_memory, server, args.idle_sessions)
                finally:
                    server.stop()
    for label, results in runs.items():
        best = sorted(results, key=lambda r: r["commits_per_s"])[len(results) // 2]  # the median round
        result[label] = {**best, "commits_per_s_each_round": [r["commits_per_s"] for r in results]}
    group, base = result["group_commit"], result["baseline_no_group_commit"]
    result["speedup_commits_per_s"] = round(group["commits_per_s"] / max(base["commits_per_s"], 1e-9), 2)
    result["speedup_ceiling"] = round(
        result["ceiling_in_memory_store"]["commits_per_s"] / max(base["commits_per_s"], 1e-9), 2)
    result["group_commit_share_of_ceiling"] = round(
        group["commits_per_s"] / max(result["ceiling_in_memory_store"]["commits_per_s"], 1e-9), 2)
    result["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
