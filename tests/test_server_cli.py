"""``sidekick accounts``, ``backup``, ``restore`` and ``serve`` argument handling."""

from __future__ import annotations

import errno
import os
import random
import socket
from pathlib import Path

import pytest
import trio

from sidekick_testbed.emulator.cli import main
from sidekick_testbed.server_stub.faults import ALL_FAULT_MODES
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def store_state(db: Path) -> tuple[int, list[str]]:
    async def read() -> tuple[int, list[str]]:
        storage = SqliteStorage(db, rng=random.Random(0))
        try:
            return storage.generation, [a.account for a in await storage.list_accounts()]
        finally:
            await storage.aclose()
    return trio.run(read)


def test_accounts_add_writes_hex_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, key_file = tmp_path / "s.db", tmp_path / "alice.key"
    code, out, _ = run(capsys, "accounts", "add", "alice", "--db", str(db), "--key-file", str(key_file))
    assert code == 0 and "alice" in out
    key = bytes.fromhex(key_file.read_text().strip())
    assert len(key) == 32 and key_file.read_text().count("\n") == 1

    async def stored() -> bytes | None:
        storage = SqliteStorage(db, rng=random.Random(0))
        try:
            return await storage.account_key("alice")
        finally:
            await storage.aclose()
    assert trio.run(stored) == key


def test_serve_names_the_address_it_cannot_listen_on(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "serve", "--memory", "--tcp", f"127.0.0.1:{port}", "--http", "127.0.0.1:0",
                           "--admin", "127.0.0.1:0")
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"sidekick: error: cannot listen: {os.strerror(errno.EADDRINUSE)} "
                                            f"(tcp on 127.0.0.1:{port})")


def test_accounts_add_never_overwrites_a_key_file_nor_leaves_one_without_account(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, key_file = tmp_path / "s.db", tmp_path / "alice.key"
    assert run(capsys, "accounts", "add", "alice", "--db", str(db), "--key-file", str(key_file))[0] == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    alice_key = key_file.read_text()
    code, _, err = run(capsys, "accounts", "add", "bob", "--db", str(db), "--key-file", str(key_file))
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert key_file.read_text() == alice_key  # alice's key is still there
    assert store_state(db)[1] == ["alice"]  # and bob was not added without a key
    second = tmp_path / "again.key"
    code, _, err = run(capsys, "accounts", "add", "alice", "--db", str(db), "--key-file", str(second))
    assert code == 2 and "already exists in" in err
    assert not second.exists()  # a key for no account is not left behind


def test_accounts_add_with_given_key_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "s.db")
    assert run(capsys, "accounts", "add", "bob", "--db", db, "--key", "ab" * 16)[0] == 0
    code, _, err = run(capsys, "accounts", "add", "bob", "--db", db, "--key", "ab" * 16)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "accounts", "list", "--db", db)
    assert code == 0 and out.startswith("bob\t")
    assert run(capsys, "accounts", "remove", "bob", "--db", db)[0] == 0
    code, _, err = run(capsys, "accounts", "remove", "bob", "--db", db)
    assert code == 2 and "no account" in err


@pytest.mark.parametrize("key", ["zz", "abcd"])
def test_bad_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    code, _, err = run(capsys, "accounts", "add", "x", "--db", str(tmp_path / "s.db"), "--key", key)
    assert code == 2 and err.startswith("sidekick: error:") and err.count("\n") == 1


def test_missing_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("accounts", "list", "--db", str(tmp_path / "none.db")),
                 ("backup", "--db", str(tmp_path / "none.db"), str(tmp_path / "out.db")),
                 ("restore", "--db", str(tmp_path / "s.db"), str(tmp_path / "none.db"))):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.startswith("sidekick: error:") and err.count("\n") == 1


@pytest.mark.parametrize("fault", [[], ["--fault", "silent-rollback"]])
def test_backup_and_restore_generation(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       fault: list[str]) -> None:
    db, backup = tmp_path / "s.db", tmp_path / "b.db"
    run(capsys, "accounts", "add", "alice", "--db", str(db), "--key", "cd" * 16)
    before, _ = store_state(db)
    assert run(capsys, "backup", "--db", str(db), str(backup))[0] == 0
    run(capsys, "accounts", "add", "late", "--db", str(db), "--key", "cd" * 16)
    code, out, _ = run(capsys, "restore", "--db", str(db), str(backup), *fault)
    assert code == 0
    after, accounts = store_state(db)
    assert accounts == ["alice"]
    assert (after == before) is bool(fault)
    assert f"{after:#x}" in out


def test_restore_refuses_a_non_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, junk = tmp_path / "s.db", tmp_path / "junk.db"
    run(capsys, "accounts", "add", "alice", "--db", str(db), "--key", "cd" * 16)
    junk.write_bytes(b"not a database" * 100)
    code, _, err = run(capsys, "restore", "--db", str(db), str(junk))
    assert code == 2 and err.count("\n") == 1


def test_serve_lists_faults_and_refuses_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "serve", "--list-faults")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(ALL_FAULT_MODES)
    code, _, err = run(capsys, "serve", "--memory", "--fault", "no-such-fault")
    assert code == 2 and "unknown fault mode" in err
    code, _, err = run(capsys, "serve", "--memory", "--tcp", "localhost:notaport")
    assert code == 2 and err.count("\n") == 1


@pytest.mark.parametrize("argv", [("--max-handshakes", "0"), ("--max-handshakes-per-address", "-1"),
                                  ("--handshake-timeout", "0"), ("--idle-timeout", "-5")])
def test_serve_bounds_must_be_positive(capsys: pytest.CaptureFixture[str], argv: tuple[str, str]) -> None:
    code, _, err = run(capsys, "serve", "--memory", *argv)
    assert code == 2 and err.count("\n") == 1 and "must be" in err
