"""The SQLite store's commit path: ``SqlTx``, the rows a batch of changes reads and writes.

``semantics.apply_changes`` decides what a batch of changes does (idempotence, conflicts); ``SqlTx``
is its ``semantics.Tx`` over one account inside the group-commit writer's transaction: heads read
once per batch, heads, history rows and the account's version written back in ``flush``, the
devices' applied LSNs (or, under the ``volatile-dedup`` fault, this process's memory of them).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sidekick_testbed.protocol.records import Record
from sidekick_testbed.protocol.wire import decode_record, encode_record
from sidekick_testbed.server_stub.storage import UnknownAccount

__all__ = ["SqlTx"]


class SqlTx:
    """``semantics.Tx`` over one account inside the writer's transaction.

    Heads are read once per batch (``prefetch``) and written back with ``flush``.
    """

    def __init__(self, conn: sqlite3.Connection, account: str, batch: int,
                 volatile: dict[tuple[str, bytes], int] | None = None) -> None:
        self.conn = conn
        self.account = account
        self.batch = batch
        self.volatile = volatile
        row = conn.execute("SELECT version FROM accounts WHERE name = ?", (account,)).fetchone()
        if row is None:
            raise UnknownAccount(account)
        self.version = self._stored_version = int(row[0])
        self._heads: dict[bytes, Record | None] = {}
        self._head_rows: dict[bytes, tuple[str, bytes, int, bytes]] = {}
        self._version_rows: list[tuple[str, int, bytes, bytes | None, int | None, int, bytes]] = []

    def prefetch(self, record_ids: Sequence[bytes]) -> None:
        """Read the heads of ``record_ids`` in one query."""
        wanted = [rid for rid in dict.fromkeys(record_ids) if rid not in self._heads]
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            marks = ",".join("?" * len(part))
            rows = self.conn.execute(
                f"SELECT record_id, data FROM heads WHERE account = ? AND record_id IN ({marks})",
                (self.account, *part),
            ).fetchall()
            found = {bytes(r[0]): decode_record(r[1]) for r in rows}
            for rid in part:
                self._heads[rid] = found.get(rid)

    def head(self, record_id: bytes) -> Record | None:
        if record_id not in self._heads:
            self.prefetch([record_id])
        return self._heads[record_id]

    def server_version(self) -> int:
        return self.version

    def put(self, record: Record, device_id: bytes | None, lsn: int | None) -> None:
        data = encode_record(record)
        self._heads[record.record_id] = record
        self._head_rows[record.record_id] = (self.account, record.record_id, record.version, data)
        self._version_rows.append((self.account, record.version, record.record_id, device_id, lsn, self.batch, data))
        self.version = max(self.version, record.version)

    def flush(self) -> None:
        """Write the heads, history rows and version counter of this batch."""
        if self._head_rows:
            self.conn.executemany(
                "INSERT OR REPLACE INTO heads (account, record_id, version, data) VALUES (?, ?, ?, ?)",
                list(self._head_rows.values()),
            )
            self.conn.executemany(
                "INSERT INTO versions (account, version, record_id, device_id, lsn, batch, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                self._version_rows,
            )
        if self.version != self._stored_version:
            self.conn.execute("UPDATE accounts SET version = ? WHERE name = ?", (self.version, self.account))
        self._head_rows.clear()
        self._version_rows.clear()
        self._stored_version = self.version

    def applied_lsn(self, device_id: bytes) -> int:
        if self.volatile is not None:  # fault volatile-dedup: what this process has seen, nothing else
            return self.volatile.get((self.account, device_id), 0)
        row = self.conn.execute(
            "SELECT applied_lsn FROM devices WHERE account = ? AND device_id = ?", (self.account, device_id)
        ).fetchone()
        return int(row[0]) if row else 0

    def set_applied_lsn(self, device_id: bytes, lsn: int) -> None:
        if self.volatile is not None:
            self.volatile[(self.account, device_id)] = lsn
        self.conn.execute(
            "INSERT INTO devices (account, device_id, applied_lsn, anchor) VALUES (?, ?, ?, 0)"
            " ON CONFLICT (account, device_id) DO UPDATE SET applied_lsn = MAX(applied_lsn, excluded.applied_lsn)",
            (self.account, device_id, lsn),
        )

    def applied_version(self, device_id: bytes, lsn: int) -> tuple[bytes, int] | None:
        row = self.conn.execute(
            "SELECT record_id, version FROM versions WHERE account = ? AND device_id = ? AND lsn = ?"
            " ORDER BY version LIMIT 1",
            (self.account, device_id, lsn),
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))
