"""The server's storage fails too: disk full, I/O errors, failed fsyncs (the ``storage-failure`` kind).

``FailingStorage`` wraps either backend (everything not overridden is the backend's own). Its
mutating calls (``commit``, ``ack_pull``, ``write_blob``) fail with ``StorageError`` while a failure
is armed, and the server process dies on command at a coming write (``server-crash``) or right after a
coming commit, before its answer is sent (``commit-crash``):

- ``disk-full``: until a given time every mutating call fails before anything is written (ENOSPC);
- ``io-error``: the next mutating calls fail before anything is written (EIO);
- ``fsync-failure``: the next commit is written by the backend and then reported failed: whether
  its data reached the disk is unknown to the server, so it must not be confirmed (the data is in
  fact kept, as it may be on a real disk; a retransmission then finds it applied).

A correct server answers such a failure with a fatal STORAGE error and logs it; the world expects
exactly those log lines (``fired`` counts them). ``failed_lsns`` keeps, per (account, device), the
LSNs of failed commits not committed since: a DURABLE that covers one the device pushed in the same
session is a violation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio

from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.server_stub.storage import CommitResult, StorageError

__all__ = ["FAILURE_KINDS", "MARKER", "FailingStorage"]

FAILURE_KINDS = ("disk-full", "io-error", "fsync-failure")
MARKER = "injected storage failure"
"""Every injected failure's message starts with this (the log lines a correct server writes)."""


class FailingStorage:
    """A storage backend whose writes fail on command (see the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.full_until = -1.0
        self.io_errors = 0
        self.fsync_failures = 0
        self.fired = 0
        """Failures injected so far (each makes a correct server log one error)."""
        self.failed_lsns: dict[tuple[str, bytes], set[int]] = {}
        self._crash_in: int | None = None
        self._crash: Callable[[], bool] | None = None
        self._commit_crash_in: int | None = None
        self._commit_crash: Callable[[], bool] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def faults(self) -> Any:
        """The backend's fault modes (shared with the server)."""
        return self.inner.faults

    @faults.setter
    def faults(self, faults: Any) -> None:
        self.inner.faults = faults

    @property
    def generation(self) -> int:
        """The backend's generation."""
        return int(self.inner.generation)

    @property
    def server_id(self) -> bytes:
        """The backend's server id."""
        return bytes(self.inner.server_id)

    # ------------------------------------------------------------------ control

    def arm(self, kind: str, *, seconds: float = 0.0, count: int = 1) -> None:
        """Arm one failure: ``disk-full`` for ``seconds``, ``io-error`` for ``count`` calls,
        ``fsync-failure`` for ``count`` commits."""
        if kind == "disk-full":
            self.full_until = max(self.full_until, trio.current_time() + seconds)
        elif kind == "io-error":
            self.io_errors += count
        elif kind == "fsync-failure":
            self.fsync_failures += count
        else:
            raise ValueError(f"unknown storage failure {kind!r}")

    def crash_before(self, writes: int, crash: Callable[[], bool]) -> None:
        """The server process dies as it starts the ``writes``-th coming write: ``crash()`` drops
        what is not durable (True if it did) and the write waits until the server is stopped."""
        self._crash_in = writes
        self._crash = crash

    def crash_after_commit(self, commits: int, crash: Callable[[], bool]) -> None:
        """The server process dies as the ``commits``-th coming commit returns, committed and not yet
        answered: ``crash()`` (True if it did) and the commit's caller waits until the server is stopped."""
        self._commit_crash_in = commits
        self._commit_crash = crash

    def disarm(self) -> None:
        """No failure any more (the heal phase)."""
        self.full_until = -1.0
        self.io_errors = self.fsync_failures = 0
        self._crash_in = self._crash = None
        self._commit_crash_in = self._commit_crash = None

    async def _before_write(self) -> None:
        if self._crash_in is not None:
            self._crash_in -= 1
            if self._crash_in <= 0 and self._crash is not None:
                crash, self._crash, self._crash_in = self._crash, None, None
                if crash():
                    await trio.sleep_forever()  # the process is gone: cancelled with the server
        if trio.current_time() < self.full_until:
            self.fired += 1
            raise StorageError(f"{MARKER}: disk full (no space left on device)")
        if self.io_errors:
            self.io_errors -= 1
            self.fired += 1
            raise StorageError(f"{MARKER}: I/O error writing the store")

    # ------------------------------------------------------------------ mutating calls

    async def commit(self, account: str, device_id: bytes, changes: Sequence[Change]) -> CommitResult:
        """The backend's commit, failing as armed."""
        where = (account, bytes(device_id))
        try:
            await self._before_write()
        except StorageError:
            self.failed_lsns.setdefault(where, set()).update(change.lsn for change in changes)
            raise
        result: CommitResult = await self.inner.commit(account, device_id, changes)
        if self.fsync_failures:
            self.fsync_failures -= 1
            self.fired += 1
            self.failed_lsns.setdefault(where, set()).update(change.lsn for change in changes)
            raise StorageError(f"{MARKER}: fsync failed (the commit may or may not be on disk)")
        failed = self.failed_lsns.get(where)
        if failed:
            failed.difference_update(change.lsn for change in changes)
        if self._commit_crash_in is not None:
            self._commit_crash_in -= 1
            if self._commit_crash_in <= 0 and self._commit_crash is not None:
                crash, self._commit_crash, self._commit_crash_in = self._commit_crash, None, None
                if crash():
                    await trio.sleep_forever()  # the process is gone before it answered
        return result

    async def ack_pull(self, account: str, device_id: bytes, anchor: int) -> int:
        """The backend's ack_pull, failing as armed."""
        await self._before_write()
        return int(await self.inner.ack_pull(account, device_id, anchor))

    async def write_blob(self, account: str, blob_id: bytes, offset: int, total: int, data: bytes) -> int:
        """The backend's write_blob, failing as armed."""
        await self._before_write()
        return int(await self.inner.write_blob(account, blob_id, offset, total, data))
