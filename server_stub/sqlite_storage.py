"""SQLite store: WAL, ``synchronous=FULL``, every write through the group-commit writer.

DURABLE is reported only for changes whose transaction has committed (``GroupCommitter``). Reads
use their own connection in a worker thread (WAL lets them run beside the writer). The file, its
schema and migrations are ``sqlite_schema``'s; the rows a commit writes, ``sqlite_commit``'s.

Backups use SQLite's online backup API; a restore copies the backup in with a NEW generation
(under the ``silent-rollback`` fault: the current one), in one step, so no crash can leave the
restored data under the old generation.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from sidekick_testbed.protocol.errors import RemoteProtocolError
from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.protocol.records import Record
from sidekick_testbed.protocol.wire import decode_record
from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.group_commit import GroupCommitter
from sidekick_testbed.server_stub.semantics import apply_changes
from sidekick_testbed.server_stub.sqlite_commit import SqlTx
from sidekick_testbed.server_stub.sqlite_schema import (
    connect,
    meta,
    migrate,
    new_generation,
    set_meta,
    stored_generation,
)
from sidekick_testbed.server_stub.storage import (
    AccountExists,
    AccountInfo,
    AnchorAhead,
    BlobError,
    BlobState,
    CommitResult,
    DeviceState,
    PullPage,
    StorageError,
    StoredVersion,
    UnknownAccount,
)

__all__ = ["SqliteStorage", "backup_file"]

T = TypeVar("T")


class SqliteStorage:
    """The SQLite backend. ``rng`` draws the server id and generations of a new store and of restores."""

    def __init__(self, path: str | os.PathLike[str], *, rng: random.Random, faults: FaultSet | None = None,
                 group_commit: bool = True, inline: bool = False) -> None:
        self.path = os.fspath(path)
        self.inline = inline
        """Every statement in the caller's thread (deterministic simulations; see GroupCommitter)."""
        self._rng = rng
        self._faults = faults if faults is not None else FaultSet()
        self._volatile_dedup: dict[tuple[str, bytes], int] = {}
        try:
            self._conn = connect(self.path)
            migrate(self._conn, self._rng, self._faults)
            self._reader = connect(self.path)
            self._meta_conn = connect(self.path)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {self.path}: {exc}") from exc
        self._read_lock = trio.Lock()
        self._writer = GroupCommitter(self._conn, group=group_commit, faults=self._faults, inline=inline)
        server_id = meta(self._meta_conn, "server_id")
        assert isinstance(server_id, bytes)
        self._server_id = server_id

    # ------------------------------------------------------------------ identity

    @property
    def faults(self) -> FaultSet:
        """The fault modes this store honours (shared with its writer)."""
        return self._faults

    @faults.setter
    def faults(self, faults: FaultSet) -> None:
        self._faults = faults
        self._writer.faults = faults

    @property
    def server_id(self) -> bytes:
        """16-byte id of this store."""
        return self._server_id

    @property
    def generation(self) -> int:
        """Current generation (read from the store: another process may have restored it)."""
        return stored_generation(self._meta_conn)

    @property
    def transactions(self) -> int:
        """Transactions committed by the writer (each one fsync)."""
        return self._writer.transactions

    @property
    def batch_sizes(self) -> dict[int, int]:
        """How many transactions carried how many write requests."""
        return dict(self._writer.batch_sizes)

    @property
    def group_commit(self) -> bool:
        """Whether concurrent writes share transactions."""
        return self._writer.group

    # ------------------------------------------------------------------ plumbing

    async def _write(self, fn: Callable[[sqlite3.Connection, int], T]) -> T:
        try:
            return await self._writer.submit(fn)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.inline:
            await trio.lowlevel.checkpoint()
            try:
                return self._read_tx(fn)
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc
        async with self._read_lock:
            try:
                return await trio.to_thread.run_sync(self._read_tx, fn)
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc

    def _read_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _require_account(conn: sqlite3.Connection, account: str) -> int:
        row = conn.execute("SELECT version FROM accounts WHERE name = ?", (account,)).fetchone()
        if row is None:
            raise UnknownAccount(account)
        return int(row[0])

    # ------------------------------------------------------------------ accounts

    async def add_account(self, account: str, key: bytes) -> None:
        """Provision an account."""
        def op(conn: sqlite3.Connection, batch: int) -> None:
            if conn.execute("SELECT 1 FROM accounts WHERE name = ?", (account,)).fetchone():
                raise AccountExists(f"account {account!r} already exists")
            conn.execute("INSERT INTO accounts (name, key) VALUES (?, ?)", (account, bytes(key)))
        await self._write(op)

    async def remove_account(self, account: str) -> None:
        """Delete an account and everything it holds."""
        def op(conn: sqlite3.Connection, batch: int) -> None:
            self._require_account(conn, account)
            for table in ("heads", "versions", "devices", "blobs", "blob_chunks"):
                conn.execute(f"DELETE FROM {table} WHERE account = ?", (account,))
            conn.execute("DELETE FROM accounts WHERE name = ?", (account,))
        await self._write(op)

    async def list_accounts(self) -> list[AccountInfo]:
        """Every account, sorted by name."""
        def fn(conn: sqlite3.Connection) -> list[AccountInfo]:
            rows = conn.execute(
                "SELECT name, version, (SELECT COUNT(*) FROM heads WHERE account = name),"
                " (SELECT COUNT(*) FROM devices WHERE account = name) FROM accounts ORDER BY name"
            ).fetchall()
            return [AccountInfo(r[0], int(r[2]), int(r[3]), int(r[1])) for r in rows]
        return await self._read(fn)

    async def account_key(self, account: str) -> bytes | None:
        """The account's key, or None."""
        def fn(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT key FROM accounts WHERE name = ?", (account,)).fetchone()
            return None if row is None else bytes(row[0])
        return await self._read(fn)

    # ------------------------------------------------------------------ devices and changes

    async def device_state(self, account: str, device_id: bytes) -> DeviceState:
        """Watermark, anchor and generation, read together."""
        def fn(conn: sqlite3.Connection) -> DeviceState:
            self._require_account(conn, account)
            generation = stored_generation(conn)
            row = conn.execute(
                "SELECT applied_lsn, anchor FROM devices WHERE account = ? AND device_id = ?", (account, device_id)
            ).fetchone()
            lsn, anchor = (int(row[0]), int(row[1])) if row else (0, 0)
            return DeviceState(account, device_id, lsn, anchor, generation)
        return await self._read(fn)

    async def devices(self, account: str) -> list[DeviceState]:
        """Every device of the account."""
        def fn(conn: sqlite3.Connection) -> list[DeviceState]:
            self._require_account(conn, account)
            generation = stored_generation(conn)
            rows = conn.execute(
                "SELECT device_id, applied_lsn, anchor FROM devices WHERE account = ? ORDER BY device_id", (account,)
            ).fetchall()
            return [DeviceState(account, bytes(r[0]), int(r[1]), int(r[2]), generation) for r in rows]
        return await self._read(fn)

    async def commit(self, account: str, device_id: bytes, changes: Sequence[Change]) -> CommitResult:
        """Apply the changes in the writer's next transaction; return once it committed."""
        faults = self.faults

        def op(conn: sqlite3.Connection, batch: int) -> CommitResult:
            volatile = self._volatile_dedup if faults.on("volatile-dedup") else None
            tx = SqlTx(conn, account, batch, volatile)
            tx.prefetch([change.record.record_id for change in changes])
            applied = apply_changes(tx, device_id, changes, faults)
            tx.flush()
            generation = stored_generation(conn)
            return CommitResult(generation, applied.durable_lsn, applied.assigned, applied.conflicts)
        return await self._write(op)

    async def server_version(self, account: str) -> int:
        """The account's current server version."""
        return await self._read(lambda conn: self._require_account(conn, account))

    async def pull(self, account: str, anchor: int, limit: int) -> PullPage:
        """Heads above ``anchor`` in version order, at most ``limit``."""
        newest_first = self.faults.on("reorder-versions")

        def fn(conn: sqlite3.Connection) -> PullPage:
            version = self._require_account(conn, account)
            if anchor > version:
                raise AnchorAhead(f"anchor {anchor} is above the server version {version}")
            order = "DESC" if newest_first else "ASC"
            rows = conn.execute(
                f"SELECT data FROM heads WHERE account = ? AND version > ? ORDER BY version {order} LIMIT ?",
                (account, anchor, max(0, limit) + 1),
            ).fetchall()
            records = [decode_record(r[0]) for r in rows]
            more = len(records) > limit
            page = sorted(records[:limit], key=lambda r: r.version)
            if more:
                return PullPage(tuple(page), page[-1].version if page else anchor, True)
            return PullPage(tuple(page), version, False)
        try:
            return await self._read(fn)
        except RemoteProtocolError as exc:
            raise StorageError(f"stored record unreadable: {exc}") from exc

    async def ack_pull(self, account: str, device_id: bytes, anchor: int) -> int:
        """Record the device's anchor as max(old, anchor), durably."""
        def op(conn: sqlite3.Connection, batch: int) -> int:
            self._require_account(conn, account)
            conn.execute(
                "INSERT INTO devices (account, device_id, applied_lsn, anchor) VALUES (?, ?, 0, ?)"
                " ON CONFLICT (account, device_id) DO UPDATE SET anchor = MAX(anchor, excluded.anchor)",
                (account, device_id, anchor),
            )
            row = conn.execute(
                "SELECT anchor FROM devices WHERE account = ? AND device_id = ?", (account, device_id)
            ).fetchone()
            return int(row[0])
        return await self._write(op)

    # ------------------------------------------------------------------ blobs

    async def blob_state(self, account: str, blob_id: bytes) -> BlobState:
        """Bytes held of a blob."""
        def fn(conn: sqlite3.Connection) -> BlobState:
            self._require_account(conn, account)
            row = conn.execute(
                "SELECT have, total FROM blobs WHERE account = ? AND blob_id = ?", (account, blob_id)
            ).fetchone()
            return BlobState(int(row[0]), int(row[1])) if row else BlobState(0, 0)
        return await self._read(fn)

    async def write_blob(self, account: str, blob_id: bytes, offset: int, total: int, data: bytes) -> int:
        """Append a chunk at ``offset`` in the writer's next transaction."""
        def op(conn: sqlite3.Connection, batch: int) -> int:
            self._require_account(conn, account)
            row = conn.execute(
                "SELECT have, total FROM blobs WHERE account = ? AND blob_id = ?", (account, blob_id)
            ).fetchone()
            have, held_total = (int(row[0]), int(row[1])) if row else (0, total)
            if held_total != total:
                raise BlobError(f"blob total {total} differs from the {held_total} held")
            if offset != have:
                raise BlobError(f"chunk at offset {offset}, the server holds {have}", offset_mismatch=True)
            if offset + len(data) > total:
                raise BlobError(f"chunk ends at {offset + len(data)}, beyond total {total}")
            conn.execute(
                "INSERT INTO blobs (account, blob_id, total, have) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account, blob_id) DO UPDATE SET have = excluded.have",
                (account, blob_id, total, have + len(data)),
            )
            if data:
                conn.execute(
                    "INSERT INTO blob_chunks (account, blob_id, offset, data) VALUES (?, ?, ?, ?)",
                    (account, blob_id, offset, bytes(data)),
                )
            return have + len(data)
        return await self._write(op)

    async def read_blob(self, account: str, blob_id: bytes) -> bytes | None:
        """The complete blob, or None."""
        def fn(conn: sqlite3.Connection) -> bytes | None:
            self._require_account(conn, account)
            row = conn.execute(
                "SELECT have, total FROM blobs WHERE account = ? AND blob_id = ?", (account, blob_id)
            ).fetchone()
            if row is None or int(row[0]) != int(row[1]):
                return None
            chunks = conn.execute(
                "SELECT data FROM blob_chunks WHERE account = ? AND blob_id = ? ORDER BY offset", (account, blob_id)
            ).fetchall()
            return b"".join(bytes(c[0]) for c in chunks)
        return await self._read(fn)

    # ------------------------------------------------------------------ inspection

    async def records(self, account: str) -> list[Record]:
        """Heads in version order."""
        def fn(conn: sqlite3.Connection) -> list[Record]:
            self._require_account(conn, account)
            rows = conn.execute("SELECT data FROM heads WHERE account = ? ORDER BY version", (account,)).fetchall()
            return [decode_record(r[0]) for r in rows]
        return await self._read(fn)

    async def history(self, account: str) -> list[StoredVersion]:
        """Every applied version in version order."""
        def fn(conn: sqlite3.Connection) -> list[StoredVersion]:
            self._require_account(conn, account)
            rows = conn.execute(
                "SELECT data, device_id, lsn FROM versions WHERE account = ? ORDER BY version", (account,)
            ).fetchall()
            return [
                StoredVersion(decode_record(r[0]), None if r[1] is None else bytes(r[1]),
                              None if r[2] is None else int(r[2]))
                for r in rows
            ]
        return await self._read(fn)

    # ------------------------------------------------------------------ backup / restore

    def backup(self) -> bytes:
        """A consistent copy of the committed store, as the bytes of a SQLite database file."""
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            return conn.serialize()
        finally:
            conn.close()

    def backup_to_file(self, out: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the store to ``out`` (online backup API)."""
        backup_file(self.path, out)

    def restore(self, snapshot: bytes) -> int:
        """Replace the store with ``snapshot`` (bytes from ``backup``); return the new generation."""
        data = bytearray(snapshot)
        if len(data) >= 20 and data[18] == 2:  # a WAL-mode image: open it as a rollback-journal one
            data[18] = data[19] = 1
        source = sqlite3.connect(":memory:")
        try:
            source.deserialize(bytes(data))
            return self._restore_from(source)
        except sqlite3.Error as exc:
            raise StorageError(f"not a store backup: {exc}") from exc
        finally:
            source.close()

    def restore_from_file(self, path: str | os.PathLike[str]) -> int:
        """Replace the store with the backup file at ``path``; return the new generation."""
        if not os.path.isfile(path):
            raise StorageError(f"no backup file {os.fspath(path)}")
        source = sqlite3.connect(":memory:")
        try:
            with sqlite3.connect(os.fspath(path)) as backup_conn:
                backup_conn.backup(source)
            return self._restore_from(source)
        except sqlite3.Error as exc:
            raise StorageError(f"not a store backup: {exc}") from exc
        finally:
            source.close()

    def _restore_from(self, source: sqlite3.Connection) -> int:
        if meta(source, "server_id") is None:
            raise StorageError("the backup is not a store (no server id)")
        live = connect(self.path)
        try:
            generation = self.generation
            new = generation if self.faults.on("silent-rollback") else new_generation(self._rng)
            while new == generation and not self.faults.on("silent-rollback"):
                new = new_generation(self._rng)
            set_meta(source, "generation", new)
            set_meta(source, "server_id", self._server_id)
            set_meta(source, "clean", 0)
            source.commit()
            source.backup(live)
            return new
        finally:
            live.close()

    def crash(self) -> None:
        """Drop the connections as a dying process does (simulations): an open transaction is
        lost, the store is not marked cleanly closed; open it again to go on."""
        self._writer.closed = True
        for conn in (self._conn, self._reader, self._meta_conn):
            conn.close()

    async def aclose(self) -> None:
        """Drain the writer, mark the store cleanly closed, close the connections."""
        await self._writer.aclose()
        try:
            set_meta(self._conn, "clean", 1)
        except sqlite3.Error:
            pass
        for conn in (self._conn, self._reader, self._meta_conn):
            conn.close()


def backup_file(db: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Copy the store at ``db`` to ``out`` with SQLite's online backup API (safe while it serves)."""
    if not os.path.isfile(db):
        raise StorageError(f"no store at {os.fspath(db)}")
    src = sqlite3.connect(os.fspath(db), timeout=30.0)
    try:
        if meta(src, "server_id") is None:
            raise StorageError(f"{os.fspath(db)} is not a store")
        dst = sqlite3.connect(os.fspath(out))
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise StorageError(f"backup failed: {exc}") from exc
    finally:
        src.close()
