"""kill -9 a real ``sidekick serve`` under load: nothing DURABLE is lost, nothing applied twice;
the same with ``--fault ack-before-durable`` loses acknowledged changes (the check can fail)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from sidekick_testbed.emulator.testing import ScriptedDevice, note_change
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage

KEY = bytes(range(32))
DEVICES = 16
_SERVING = re.compile(r"serving tcp=\('([\d.]+)', (\d+)\)")


class ServerProcess:
    """``python -m emulator serve`` on ``db`` with ports chosen by the OS (read from its log)."""

    def __init__(self, db: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidekick_testbed.emulator", "serve", "--db", str(db), "--tcp", "127.0.0.1:0",
             "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = _SERVING.search(line)
            if found:
                self.tcp = (found.group(1), int(found.group(2)))
                return
        raise AssertionError("server did not start: " + "".join(self.lines))

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> str:
        """SIGTERM: the server stops cleanly; returns the rest of its log."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        rest = self.proc.stderr.read()
        assert self.proc.wait(30) == 0, rest
        return rest


def provision(db: Path) -> None:
    async def add() -> None:
        storage = SqliteStorage(db, rng=random.Random(1))
        await storage.add_account("alice", KEY)
        await storage.aclose()
    trio.run(add)


async def load_until_kill(server: ServerProcess, kill_after: int) -> dict[bytes, dict[int, bytes]]:
    """Concurrent devices push and commit; after ``kill_after`` DURABLEs the server gets kill -9.
    Returns, per device, the record id of every change some DURABLE confirmed."""
    confirmed: dict[bytes, dict[int, bytes]] = {}
    durables = [0]

    async def device(index: int) -> None:
        device_id = index.to_bytes(16, "big")
        rng = random.Random(index)
        mine = confirmed.setdefault(device_id, {})
        try:
            dev = ScriptedDevice(await trio.open_tcp_stream(*server.tcp), account="alice", device_id=device_id,
                                 key=KEY, rng=rng, timeout=20)
            await dev.hello()
            lsn = 0
            while True:
                changes = []
                for _ in range(1 + index % 3):
                    lsn += 1
                    changes.append(note_change(rng, lsn, f"device {index} change {lsn}"))
                _, durable = await dev.push_commit(changes)
                for change in changes:
                    if change.lsn <= durable.durable_lsn:
                        mine[change.lsn] = change.record.record_id
                durables[0] += 1
                if durables[0] == kill_after:
                    server.kill9()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, Exception):
            return  # the server died under us

    async with trio.open_nursery() as nursery:
        for index in range(DEVICES):
            nursery.start_soon(device, index)
    return confirmed


def audit(db: Path) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]], int]:
    """(missing confirmed changes, (device, lsn) applied more than once, versions) read from the store."""
    async def read() -> tuple[set[bytes], list[tuple[bytes | None, int | None]]]:
        storage = SqliteStorage(db, rng=random.Random(0))
        try:
            heads = {r.record_id for r in await storage.records("alice")}
            history = [(v.device_id, v.lsn) for v in await storage.history("alice")]
            return heads, history
        finally:
            await storage.aclose()
    heads, history = trio.run(read)
    seen: set[tuple[bytes | None, int | None]] = set()
    twice = [k for k in history if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return heads, twice, len(history)  # type: ignore[return-value]


def run_crash(tmp_path: Path, kill_after: int, *fault: str) -> tuple[int, list[tuple[bytes, int]], int, int]:
    db = tmp_path / "crash.db"
    provision(db)
    server = ServerProcess(db, *fault)
    confirmed = trio.run(load_until_kill, server, kill_after)
    assert server.proc.returncode == -signal.SIGKILL
    restarted = ServerProcess(db)  # restart: recovery runs, then a clean stop
    log = restarted.stop()
    assert "stopped" in log
    heads, twice, versions = audit(db)
    missing = [(device, lsn) for device, lsns in confirmed.items() for lsn, rid in lsns.items() if rid not in heads]
    total = sum(len(lsns) for lsns in confirmed.values())
    return total, missing, len(twice), versions


@pytest.mark.parametrize("kill_after", [3, 25, 80])
def test_kill_9_loses_nothing_durable(tmp_path: Path, kill_after: int) -> None:
    total, missing, twice, _ = run_crash(tmp_path, kill_after)
    assert total >= kill_after
    assert missing == []
    assert twice == 0


def test_kill_9_with_ack_before_durable_shows_a_loss(tmp_path: Path) -> None:
    total, missing, twice, _ = run_crash(tmp_path, 25, "--fault", "ack-before-durable")
    assert total >= 25
    assert missing, "the faulty server lost nothing: the check could not tell"
