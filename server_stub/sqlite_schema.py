"""The SQLite store's file: connection settings, the schema and its migrations, the ``meta`` table.

A store is one SQLite database in WAL mode with ``synchronous=FULL``. Its schema is versioned with
``PRAGMA user_version`` and migrated on open (``MIGRATIONS``, ``migrate``). The ``meta`` table holds
the server id, the generation, the writer's batch counter and whether the store was closed cleanly;
``lose-tail-on-crash``: on opening a store that was not, the versions of the last committed batch
are dropped and the generation is kept.
"""

from __future__ import annotations

import random
import sqlite3

from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.storage import StorageError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "connect",
    "meta",
    "migrate",
    "new_generation",
    "set_meta",
    "stored_generation",
]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
        "CREATE TABLE accounts (name TEXT PRIMARY KEY, key BLOB NOT NULL, version INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE heads (account TEXT NOT NULL, record_id BLOB NOT NULL, version INTEGER NOT NULL,"
        " data BLOB NOT NULL, PRIMARY KEY (account, record_id)) WITHOUT ROWID",
        "CREATE INDEX heads_by_version ON heads (account, version)",
        "CREATE TABLE versions (account TEXT NOT NULL, version INTEGER NOT NULL, record_id BLOB NOT NULL,"
        " device_id BLOB, lsn INTEGER, batch INTEGER NOT NULL, data BLOB NOT NULL,"
        " PRIMARY KEY (account, version)) WITHOUT ROWID",
        "CREATE INDEX versions_by_lsn ON versions (account, device_id, lsn)",
        "CREATE TABLE devices (account TEXT NOT NULL, device_id BLOB NOT NULL, applied_lsn INTEGER NOT NULL,"
        " anchor INTEGER NOT NULL, PRIMARY KEY (account, device_id)) WITHOUT ROWID",
        "CREATE TABLE blobs (account TEXT NOT NULL, blob_id BLOB NOT NULL, total INTEGER NOT NULL,"
        " have INTEGER NOT NULL, PRIMARY KEY (account, blob_id))",
        "CREATE TABLE blob_chunks (account TEXT NOT NULL, blob_id BLOB NOT NULL, offset INTEGER NOT NULL,"
        " data BLOB NOT NULL, PRIMARY KEY (account, blob_id, offset))",
    ),
)
"""Schema migrations: entry ``i`` takes ``user_version`` from ``i`` to ``i + 1``."""
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str) -> sqlite3.Connection:
    """A connection to the store at ``path``: autocommit (transactions are explicit), WAL, synchronous=FULL."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def meta(conn: sqlite3.Connection, key: str) -> object:
    """The ``meta`` value of ``key``, or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def stored_generation(conn: sqlite3.Connection) -> int:
    """The store's current generation."""
    value = meta(conn, "generation")
    assert isinstance(value, int)
    return value


def set_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    """Set the ``meta`` value of ``key``."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def new_generation(rng: random.Random) -> int:
    """A generation id drawn from ``rng`` (never 0)."""
    return (rng.getrandbits(63) or 1)  # SQLite integers are signed 64-bit


def migrate(conn: sqlite3.Connection, rng: random.Random, faults: FaultSet) -> None:
    """Bring the store's schema to ``SCHEMA_VERSION`` in one transaction; give a new store its server id
    and first generation (from ``rng``); mark the store open (not cleanly closed)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > SCHEMA_VERSION:
            raise StorageError(f"store schema {current} is newer than this server's {SCHEMA_VERSION}")
        for index in range(current, SCHEMA_VERSION):
            for statement in MIGRATIONS[index]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if meta(conn, "server_id") is None:
            set_meta(conn, "server_id", rng.randbytes(16))
            set_meta(conn, "generation", new_generation(rng))
            set_meta(conn, "batch", 0)
        elif meta(conn, "clean") == 0 and faults.on("lose-tail-on-crash"):
            _drop_last_batch(conn)
        set_meta(conn, "clean", 0)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _drop_last_batch(conn: sqlite3.Connection) -> None:
    """Fault ``lose-tail-on-crash``: forget the versions of the last batch, keep the generation."""
    row = conn.execute("SELECT MAX(batch) FROM versions").fetchone()
    if row is None or row[0] is None:
        return
    batch = int(row[0])
    touched = conn.execute(
        "SELECT DISTINCT account, record_id FROM versions WHERE batch = ?", (batch,)
    ).fetchall()
    devices = conn.execute(
        "SELECT DISTINCT account, device_id FROM versions WHERE batch = ? AND device_id IS NOT NULL", (batch,)
    ).fetchall()
    conn.execute("DELETE FROM versions WHERE batch = ?", (batch,))
    for account, record_id in touched:
        last = conn.execute(
            "SELECT version, data FROM versions WHERE account = ? AND record_id = ? ORDER BY version DESC LIMIT 1",
            (account, record_id),
        ).fetchone()
        if last is None:
            conn.execute("DELETE FROM heads WHERE account = ? AND record_id = ?", (account, record_id))
        else:
            conn.execute(
                "UPDATE heads SET version = ?, data = ? WHERE account = ? AND record_id = ?",
                (last[0], last[1], account, record_id),
            )
    for account, device_id in devices:
        conn.execute(
            "UPDATE devices SET applied_lsn = COALESCE((SELECT MAX(lsn) FROM versions WHERE account = ?"
            " AND device_id = ?), 0) WHERE account = ? AND device_id = ?",
            (account, device_id, account, device_id),
        )
    conn.execute(
        "UPDATE accounts SET version = COALESCE((SELECT MAX(version) FROM versions"
        " WHERE versions.account = accounts.name), 0)"
    )
