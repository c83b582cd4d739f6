"""Group commit: one writer task runs every write of the store, batching concurrent requests.

Sessions submit write operations (a function of the SQLite connection); the writer takes all
requests that are waiting, runs them in ONE transaction in a worker thread (``trio.to_thread``),
commits (one fsync with ``synchronous=FULL``) and only then wakes the submitters. With grouping
off, each request gets its own transaction: the baseline. Each operation runs inside a savepoint,
so one failing operation does not undo the others of its batch.

The writer is a Trio system task started on first use in the current run; ``aclose`` stops it
after the queue is drained. Under the ``ack-before-durable`` fault the writer wakes submitters
before committing and commits later (after ``lazy_interval`` seconds of the Trio clock, or with a
later batch): a crash in between loses acknowledged writes. Under ``write-behind-2ms`` and
``write-behind-10ms`` it wakes them, waits that window, then commits. Under ``skip-fsync`` the
connection runs with ``synchronous=OFF``: a commit reaches the OS page cache only.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from sidekick_testbed.server_stub.faults import WRITE_BEHIND_S, FaultSet
from sidekick_testbed.server_stub.storage import StorageError

__all__ = ["GroupCommitter", "WriteOp"]

T = TypeVar("T")
MAX_BATCH_OPS = 1024


@dataclass(eq=False)
class WriteOp(Generic[T]):
    """One submitted write: ``fn(conn, batch_number)`` runs in the writer's transaction."""

    fn: Callable[[sqlite3.Connection, int], T]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommitter:
    """The single writer of one SQLite connection (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, *, group: bool, faults: FaultSet,
                 lazy_interval: float = 0.25, inline: bool = False) -> None:
        self._conn = conn
        self.inline = inline
        self._lazy_timer = False
        """Run each write in the caller's thread, one transaction each, no writer task (deterministic
        simulations: nothing happens outside the Trio run's own time). A lazy commit
        (``ack-before-durable``) is made by the next write or a system task ``lazy_interval`` later."""
        self.group = group
        self.faults = faults
        self.lazy_interval = lazy_interval
        self._send: trio.MemorySendChannel[WriteOp[Any]] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopped: trio.Event | None = None
        self._in_tx = False
        self._sync = "FULL"
        self._batch_number = self._read_batch_number()
        self.transactions = 0
        self.ops = 0
        self.batch_sizes: Counter[int] = Counter()
        self.closed = False

    def _read_batch_number(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'batch'").fetchone()
        return int(row[0]) if row else 0

    async def submit(self, fn: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run ``fn`` in the next transaction; return its result once that transaction committed."""
        if self.closed:
            raise StorageError("the store is closed")
        if self.inline:
            op: WriteOp[T] = WriteOp(fn)
            self._run_batch([op], self.faults.on("ack-before-durable"))
            if self._in_tx and not self._lazy_timer:  # commit later, as the writer task would
                self._lazy_timer = True
                trio.lowlevel.spawn_system_task(self._commit_later, name="sqlite-lazy-commit")
            await trio.lowlevel.checkpoint()
            if op.error is not None:
                raise op.error
            return op.result  # type: ignore[no-any-return]
        self._ensure_writer()
        assert self._send is not None
        op = WriteOp(fn)
        self._send.send_nowait(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def _ensure_writer(self) -> None:
        token = trio.lowlevel.current_trio_token()
        if self._send is not None and self._token is token:
            return
        send, receive = trio.open_memory_channel[WriteOp[Any]](float("inf"))
        self._send, self._token = send, token
        self._stopped = trio.Event()
        trio.lowlevel.spawn_system_task(self._writer, receive, self._stopped, name="sqlite-writer")

    async def _writer(self, receive: trio.MemoryReceiveChannel[WriteOp[Any]], stopped: trio.Event) -> None:
        try:
            async with receive:
                while True:
                    op: WriteOp[Any] | None = None
                    if self._in_tx:
                        with trio.move_on_after(self.lazy_interval):
                            op = await receive.receive()
                        if op is None:
                            await trio.to_thread.run_sync(self._commit_open)
                            continue
                    else:
                        try:
                            op = await receive.receive()
                        except trio.EndOfChannel:
                            break
                    batch = [op]
                    while self.group and len(batch) < MAX_BATCH_OPS:
                        try:
                            batch.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    window = next((s for name, s in WRITE_BEHIND_S.items() if self.faults.on(name)), None)
                    lazy = self.faults.on("ack-before-durable") or window is not None
                    await trio.to_thread.run_sync(self._run_batch, batch, lazy)
                    for item in batch:
                        item.done.set()
                    if window is not None and self._in_tx:
                        await trio.sleep(window)
                        await trio.to_thread.run_sync(self._commit_open)
        except trio.EndOfChannel:
            pass
        except Exception:  # the writer must never take the run down; pending writes fail instead
            self.closed = True
        finally:
            with trio.CancelScope(shield=True):
                if self._in_tx:
                    await trio.to_thread.run_sync(self._commit_open)
            stopped.set()

    async def _commit_later(self) -> None:
        """Inline mode: the open transaction of a lazy batch commits after ``lazy_interval``."""
        try:
            await trio.sleep(self.lazy_interval)
        finally:
            self._lazy_timer = False
        if not self.closed:
            self._commit_open()

    def _commit_open(self) -> None:
        if self._in_tx:
            self._in_tx = False
            try:
                self._conn.execute("COMMIT")
                self.transactions += 1
            except sqlite3.Error:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _run_batch(self, batch: list[WriteOp[Any]], lazy: bool) -> None:
        """Run ``batch`` in one transaction (worker thread)."""
        conn = self._conn
        try:
            if not self._in_tx:
                sync = "OFF" if self.faults.on("skip-fsync") else "FULL"
                if sync != self._sync:
                    conn.execute(f"PRAGMA synchronous = {sync}")
                    self._sync = sync
                conn.execute("BEGIN IMMEDIATE")
                self._in_tx = True
            self._batch_number += 1
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('batch', ?)", (self._batch_number,))
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn, self._batch_number)
                except Exception as exc:  # each op's failure is its own
                    conn.execute("ROLLBACK TO op")
                    op.error = exc
                conn.execute("RELEASE op")
            if not lazy:
                conn.execute("COMMIT")
                self._in_tx = False
                self.transactions += 1
        except sqlite3.Error as exc:
            if self._in_tx:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                self._in_tx = False
            for op in batch:
                op.error = StorageError(f"transaction failed: {exc}")
        self.ops += len(batch)
        self.batch_sizes[len(batch)] += 1

    async def aclose(self) -> None:
        """Drain the queue, commit what is open, stop the writer."""
        self.closed = True
        if self._send is not None and self._token is trio.lowlevel.current_trio_token():
            await self._send.aclose()
            assert self._stopped is not None
            await self._stopped.wait()
        elif self._in_tx:
            self._commit_open()
        self._send = None
