"""The SQLite backend in a simulated run: a real database file in a temporary directory.

``SqliteStorage`` runs inline (``inline=True``: every statement in the Trio run's own thread, so
nothing happens outside simulated time and one seed gives one trace). The directory is on a RAM
file system where there is one (``/dev/shm``), so ``synchronous=FULL``'s fsyncs cost nothing; the
file, WAL and all, is SQLite's own.

How its failures are modelled: a *crash* is the death of the server process. The connections are
dropped without a commit (``SqliteStorage.crash``): an open transaction (only the
``ack-before-durable`` fault leaves one between calls) is rolled back by SQLite, what committed
stays in the file and its WAL; the next process opens the file again (``lose-tail-on-crash``
then drops the last batch, as on a real restart). The operating system does not crash: a power
failure of the server's machine (losing what the OS had not yet written) is not modelled. A
*restart* closes cleanly and opens again; a *restore* copies a backup in under a new generation
(``SqliteStorage.restore``); storage failures are injected around it (``storage_faults``).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage

__all__ = ["SimSqlite"]


class SimSqlite:
    """``SqliteStorage`` with the simulation's crash and restart (see the module docstring)."""

    def __init__(self, rng: random.Random, faults: FaultSet) -> None:
        self._rng = rng
        self._faults = faults
        shm = Path("/dev/shm")
        self.directory = Path(tempfile.mkdtemp(prefix="sidekick-fuzz-", dir=shm if shm.is_dir() else None))
        self.path = self.directory / "server.db"
        self.storage = self._open()

    def _open(self) -> SqliteStorage:
        storage = SqliteStorage(self.path, rng=self._rng, faults=self._faults, inline=True)
        self._generation = storage.generation
        return storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    @property
    def faults(self) -> FaultSet:
        """The fault modes (shared with the server)."""
        return self._faults

    @faults.setter
    def faults(self, faults: FaultSet) -> None:
        self._faults = faults
        self.storage.faults = faults

    @property
    def generation(self) -> int:
        """The store's generation (read from the file when it is opened or restored: only this
        process changes it, and the oracle asks for it at every check)."""
        return self._generation

    @property
    def server_id(self) -> bytes:
        """The store's server id."""
        return self.storage.server_id

    def crash(self) -> None:
        """The server process dies: what was not committed is gone; a new process opens the file."""
        self.storage.crash()
        self.storage = self._open()

    def restore(self, snapshot: bytes) -> int:
        """Copy a backup in under a new generation, the server process being down: like a crash,
        what it had not committed (``ack-before-durable``'s open transaction) is gone first."""
        self.storage.crash()
        self.storage = self._open()
        self._generation = self.storage.restore(snapshot)
        return self._generation

    async def aclose(self) -> None:
        """A clean stop; the next start opens the file again."""
        await self.storage.aclose()
        self.storage = self._open()

    def close(self) -> None:
        """End of the run: close and delete the directory."""
        try:
            self.storage.crash()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

