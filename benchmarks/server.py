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
                                [--only commits|attack] [--attack-syncs 200]

Each mode's figures are those of its median round; every round's commits/s is listed too.

``attack``: the latency of a normal sync (HELLO, AUTH, PUSH of 3 notes, COMMIT, PULL, BYE, one at a
time, TCP and HTTP in turn) on one server, without an attack and during one: 1,000 slowloris
sockets (half on each binding, each closed one replaced) and a HELLO flood of at least 1,000 new
sessions per binding (``tests.attack``, a process of its own), from another client address
(127.0.0.2) and from the user's own address. Phases interleaved per round; p50/p99 of the median
round, failed syncs counted.
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

from sidekick_testbed.emulator.testing import HttpStream, ScriptedDevice, note_change

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
                subprocess.run([sys.executable, "-m", "sidekick_testbed.emulator", "accounts", "add", f"acct{index}", "--db",
                                str(self.db), "--key", KEY.hex()], check=True, capture_output=True)
        self.tcp, self.http, self.admin = free_port(), free_port(), free_port()
        store = ["--memory"] if memory else ["--db", str(self.db)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidekick_testbed.emulator", "serve", *store, "--tcp", f"127.0.0.1:{self.tcp}",
             "--http", f"127.0.0.1:{self.http}", "--admin", f"127.0.0.1:{self.admin}",
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


async def normal_syncs(server: Server, count: int, first_id: int) -> dict[str, Any]:
    """``count`` full syncs one after another, TCP and HTTP in turn; latencies by binding, failures."""
    latencies: dict[str, list[float]] = {"tcp": [], "http": []}
    failures: dict[str, int] = {}
    for index in range(count):
        binding = "tcp" if index % 2 == 0 else "http"
        rng = random.Random(first_id + index)
        started = trio.current_time()
        try:
            with trio.fail_after(30):
                raw = await trio.open_tcp_stream("127.0.0.1", server.tcp if binding == "tcp" else server.http)
                stream: Any = raw if binding == "tcp" else HttpStream(raw)
                dev = ScriptedDevice(stream, account=f"acct{index % ACCOUNTS}",
                                     device_id=(first_id + index).to_bytes(16, "big"), key=KEY, rng=rng, timeout=30)
                await dev.hello()
                await dev.push_commit([note_change(rng, lsn, "normal sync") for lsn in (1, 2, 3)])
                await dev.pull(0, max_records=50)
                await dev.bye()
                await trio.aclose_forcefully(raw)
        except Exception as exc:  # a refused or dropped sync is a figure, not a crash
            what = f"{binding}: {type(exc).__name__}: {str(exc)[:60]}"
            failures[what] = failures.get(what, 0) + 1
            continue
        latencies[binding].append(trio.current_time() - started)
    both = latencies["tcp"] + latencies["http"]
    out: dict[str, Any] = {"syncs": count, "failed": sum(failures.values())}
    for label, values in (("all", both), ("tcp", latencies["tcp"]), ("http", latencies["http"])):
        out[f"{label}_ms_p50"] = round(percentile(values, 0.50) * 1000, 2)
        out[f"{label}_ms_p99"] = round(percentile(values, 0.99) * 1000, 2)
    if failures:
        out["failures"] = failures
    return out


def under_attack(server: Server, source: str, syncs: int, first_id: int) -> dict[str, Any]:
    """Normal syncs while ``tests.attack`` runs from ``source``; the syncs' figures and the attack's."""
    root = Path(__file__).resolve().parent.parent
    attacker = subprocess.Popen(
        [sys.executable, "-m", "tests.attack", "--tcp", f"127.0.0.1:{server.tcp}", "--http",
         f"127.0.0.1:{server.http}", "--source", source, "--slow", "1000", "--flood", "2000", "--until-eof"],
        cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert attacker.stdin is not None and attacker.stdout is not None
    try:
        if attacker.stdout.readline().strip() != b"attacking":
            raise RuntimeError("the attacker did not start")
        result = trio.run(normal_syncs, server, syncs, first_id)
        attacker.stdin.close()
        counts = json.loads(attacker.stdout.readline() or b"{}")
        attacker.wait(120)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    result["attack"] = {key: counts.get(key) for key in ("slow_opened", "slow_closed_by_server", "flood_sent",
                                                         "flood_answered", "errors")}
    return result


def attack_figures(syncs: int, rounds: int) -> dict[str, Any]:
    """Sync latency without an attack and during one, phases interleaved, on one SQLite server."""
    phases = (("no_attack", None), ("attack_from_another_address", "127.0.0.2"),
              ("attack_from_the_same_address", "127.0.0.1"))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in phases}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
        server = Server(Path(folder))
        try:
            first_id = 5_000_000
            for _ in range(rounds):
                for label, source in phases:
                    first_id += syncs
                    run = (trio.run(normal_syncs, server, syncs, first_id) if source is None
                           else under_attack(server, source, syncs, first_id))
                    runs[label].append(run)
            metrics = server.metrics()
        finally:
            server.stop()
    result: dict[str, Any] = {"syncs_per_phase": syncs, "rounds": rounds}
    for label, results in runs.items():
        best = sorted(results, key=lambda r: r["all_ms_p99"])[len(results) // 2]  # the median round by p99
        result[label] = {**best, "all_ms_p99_each_round": [r["all_ms_p99"] for r in results]}
    base = result["no_attack"]["all_ms_p99"]
    for label, _ in phases[1:]:
        result[label]["p99_over_no_attack"] = round(result[label]["all_ms_p99"] / max(base, 1e-9), 2)
    result["server_refusals"] = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                                 if line.startswith("sidekick_limit_refusals_total{")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--idle-sessions", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three modes, interleaved")
    parser.add_argument("--only", choices=("commits", "attack"), default=None, help="run one part only")
    parser.add_argument("--attack-syncs", type=int, default=200, help="normal syncs per attack phase")
    args = parser.parse_args()
    if args.only == "attack":
        print(json.dumps({"attack": attack_figures(args.attack_syncs, args.rounds),
                          "load_average_1m": os.getloadavg()[0]}, indent=2))
        return
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
    if args.only is None:
        result["attack"] = attack_figures(args.attack_syncs, args.rounds)
    result["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
