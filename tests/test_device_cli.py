"""``sidekick device``: init, add, list, status, edit, delete, sync, reset, power-cut; one-line errors."""

from __future__ import annotations

import fcntl
import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from sidekick_testbed.emulator.cli import main
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage

KEY = bytes(range(32))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    key_file = tmp_path / "alice.key"
    key_file.write_text(KEY.hex() + "\n")
    path = tmp_path / "phone.img"
    code, out, err = run(capsys, "device", "--image", str(path), "--seed", "1", "init", "--account", "alice",
                         "--key-file", str(key_file), "--blocks", "32")
    assert code == 0, err
    return path


def dev(capsys: pytest.CaptureFixture[str], image: Path, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "device", "--image", str(image), *argv)


def status(capsys: pytest.CaptureFixture[str], image: Path) -> dict:  # type: ignore[type-arg]
    code, out, err = dev(capsys, image, "status", "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_add_every_kind_list_edit_delete(image: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(random.Random(1).randbytes(3000))
    ids = []
    for argv in (
        ("add", "contact", "Ada Lovelace", "--phone", "+44", "--email", "ada@example.org"),
        ("add", "event", "Launch", "--start", "2009-10-02T09:00", "--end", "2009-10-02T10:00"),
        ("add", "todo", "Back up", "--due", "2009-10-03", "--priority", "2"),
        ("add", "note", "Ideas", "--text", "many"),
        ("add", "photo", str(photo), "--caption", "cat"),
    ):
        code, out, err = dev(capsys, image, *argv)
        assert code == 0, err
        ids.append(out.strip())
    code, out, _ = dev(capsys, image, "list", "--json")
    rows = json.loads(out)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert {r["kind"] for r in rows} == {"contact", "event", "todo", "note", "photo"}
    assert all(r["state"] == "dirty" for r in rows)
    code, out, err = dev(capsys, image, "edit", ids[0][:8], "--name", "Ada King")
    assert code == 0, err
    code, out, _ = dev(capsys, image, "list", "--kind", "contact")
    assert "Ada King" in out and "Lovelace" not in out
    code, out, err = dev(capsys, image, "delete", ids[3])
    assert code == 0, err
    st = status(capsys, image)
    assert st["kinds"]["note"] == {"total": 0, "deleted": 1, "dirty": 1, "pushed_not_durable": 0, "durable": 0}
    assert st["at_risk"] == 5 and st["server_id"] is None


@pytest.mark.parametrize("argv, message", [
    (("add", "event", "x", "--start", "yesterday", "--end", "2009-01-01"), "not an ISO"),
    (("add", "event", "x", "--start", "2009-01-02", "--end", "2009-01-01"), "before"),
    (("add", "todo", "x", "--priority", "300"), "priority"),
    (("add", "photo", "/nonexistent/cat.jpg"), "cannot read"),
    (("edit", "ffff", "--name", "x"), "no record"),
    (("delete", "zz"), "not hex"),
    (("power-cut", "--at-op", "0"), "1 or more"),
    (("sync", "--server", "nohost:notaport"), "bad address"),
    (("sync", "--server", "https://sync.example/sync"), "only http://"),
    (("sync", "--server", "127.0.0.1:9", "--proxy", "socks5://p:1080"), "only http:// proxies"),
])
def test_bad_input_is_one_line(image: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                               message: str) -> None:
    code, out, err = dev(capsys, image, *argv)
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_edit_refuses_fields_of_another_kind(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = dev(capsys, image, "add", "note", "n")
    code, _, err = dev(capsys, image, "edit", out.strip(), "--phone", "+1")
    assert code == 2 and "has no --phone" in err


def test_image_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], image: Path) -> None:
    code, _, err = run(capsys, "device", "--image", str(tmp_path / "missing.img"), "status")
    assert code == 2 and "no image" in err
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(b"not a flash image at all" * 100)
    code, _, err = run(capsys, "device", "--image", str(garbage), "status")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run(capsys, "device", "--image", str(image), "init", "--account", "a", "--key-file",
                       str(tmp_path / "alice.key"))
    assert code == 2 and "already exists" in err
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not hex")
    code, _, err = run(capsys, "device", "--image", str(tmp_path / "new.img"), "init", "--account", "a",
                       "--key-file", str(bad_key))
    assert code == 2 and "hex" in err


def test_sync_to_a_closed_port_is_one_line(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = dev(capsys, image, "sync", "--server", f"127.0.0.1:{port}", "--attempts", "1")
    assert code == 1 and "cannot reach server" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_sync_through_a_closed_proxy_port_names_the_proxy(image: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    code, _, err = dev(capsys, image, "sync", "--server", "http://127.0.0.1:9/sync", "--attempts", "1")
    assert code == 1 and f"cannot reach proxy http://127.0.0.1:{port}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_upper_case_http_proxy_is_not_read_and_says_so(image: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    code, _, err = dev(capsys, image, "sync", "--server", f"http://127.0.0.1:{port}/sync", "--attempts", "1")
    assert code == 1 and "HTTP_PROXY is not read" in err and f"cannot reach server 127.0.0.1:{port}" in err


async def serve(nursery: trio.Nursery, storage: SimulatedStorage) -> tuple[int, int]:
    server = SyncServer(storage, rng=random.Random(0))
    raw = await nursery.start(trio.serve_tcp, server.serve_stream, 0)
    web = await nursery.start(trio.serve_tcp, server.serve_http_stream, 0)
    return raw[0].socket.getsockname()[1], web[0].socket.getsockname()[1]


def cli(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in a worker thread (it runs its own trio.run); capture its output."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_sync_status_reset_and_restore_from_backup(tmp_path: Path) -> None:
    """The 'done when' walk-through: two handsets, sync, server restored from an old backup, sync
    again, everything back, status truthful at each step."""
    storage = SimulatedStorage(random.Random(9))
    await storage.add_account("alice", KEY)
    key_file = tmp_path / "alice.key"
    key_file.write_text(KEY.hex())
    phone, desk = str(tmp_path / "phone.img"), str(tmp_path / "desk.img")

    async def sk(*argv: str) -> tuple[int, str, str]:
        return await trio.to_thread.run_sync(cli, *argv)

    async with trio.open_nursery() as nursery:
        raw, web = await serve(nursery, storage)
        for img, seed in ((phone, "1"), (desk, "2")):
            code, _, err = await sk("device", "--image", img, "--seed", seed, "init", "--account", "alice",
                                    "--key-file", str(key_file), "--blocks", "32")
            assert code == 0, err
        _, ada, _ = await sk("device", "--image", phone, "add", "contact", "Ada")
        code, _, err = await sk("device", "--image", phone, "reset")
        assert code == 1 and "refused" in err and "1 contact" in err
        code, out, err = await sk("device", "--image", phone, "sync", "--server", f"127.0.0.1:{raw}")
        assert code == 0, err
        _, out, _ = await sk("device", "--image", phone, "status", "--json")
        st = json.loads(out)
        assert st["kinds"]["contact"]["durable"] == 1 and st["at_risk"] == 0 and st["server_id"]
        backup = storage.backup()
        _, note, _ = await sk("device", "--image", desk, "add", "note", "after the backup")
        code, out, err = await sk("device", "--image", desk, "sync", "--server", f"127.0.0.1:{web}", "--http")
        assert code == 0, err
        storage.restore(backup)
        for img in (phone, desk, phone):
            code, out, err = await sk("device", "--image", img, "sync", "--server", f"127.0.0.1:{raw}")
            assert code == 0, err
            if img == desk:
                assert "SERVER REGRESSION DETECTED" in out     # desk's record was lost by the restore
        for img in (phone, desk):
            _, out, _ = await sk("device", "--image", img, "list", "--json")
            assert {r["id"] for r in json.loads(out)} == {ada.strip(), note.strip()}
        heads = {r.record_id.hex() for r in await storage.records("alice") if not r.deleted}
        assert heads == {ada.strip(), note.strip()}
        code, out, err = await sk("device", "--image", phone, "reset")
        assert code == 0, err
        _, out, _ = await sk("device", "--image", phone, "list", "--json")
        assert json.loads(out) == []
        await sk("device", "--image", phone, "sync", "--server", f"127.0.0.1:{raw}")
        _, out, _ = await sk("device", "--image", phone, "list", "--json")
        assert {r["id"] for r in json.loads(out)} == {ada.strip(), note.strip()}
        nursery.cancel_scope.cancel()


async def test_power_cut_during_a_sync_keeps_the_flash_at_the_cut(tmp_path: Path) -> None:
    storage = SimulatedStorage(random.Random(3))
    await storage.add_account("alice", KEY)
    key_file = tmp_path / "alice.key"
    key_file.write_text(KEY.hex())
    img = str(tmp_path / "phone.img")

    async def sk(*argv: str) -> tuple[int, str, str]:
        return await trio.to_thread.run_sync(cli, *argv)

    async with trio.open_nursery() as nursery:
        raw, _ = await serve(nursery, storage)
        await sk("device", "--image", img, "--seed", "1", "init", "--account", "alice", "--key-file",
                 str(key_file), "--blocks", "32")
        for i in range(3):
            await sk("device", "--image", img, "add", "note", f"n{i}")
        code, out, _ = await sk("device", "--image", img, "power-cut", "--at-op", "1")
        assert code == 0 and "armed" in out
        code, out, err = await sk("device", "--image", img, "sync", "--server", f"127.0.0.1:{raw}")
        assert code == 1 and "POWER CUT" in out and "Traceback" not in err
        _, out, _ = await sk("device", "--image", img, "status", "--json")
        st = json.loads(out)
        assert st["kinds"]["note"]["total"] == 3 and st["at_risk"] == 3   # nothing lost, nothing durable
        code, out, err = await sk("device", "--image", img, "sync", "--server", f"127.0.0.1:{raw}")
        assert code == 0, err
        _, out, _ = await sk("device", "--image", img, "status", "--json")
        assert json.loads(out)["at_risk"] == 0
        nursery.cancel_scope.cancel()


def test_a_second_command_on_the_same_image_waits_instead_of_losing_a_change(
        image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command loads the image and saves it whole: run side by side, the one that saves last
    would drop what the other wrote (a note added during a sync was lost this way)."""
    with open(str(image) + ".lock", "a", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a command in progress (a long sync) holds it
        second = subprocess.Popen([sys.executable, "-m", "sidekick_testbed.emulator", "device", "--image", str(image), "add",
                                   "note", "queued"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert second.stderr is not None
        said = second.stderr.readline()  # returns once the second command reports that it waits
        assert said.strip() == f"sidekick: waiting for another command on {image} to finish"
        assert second.poll() is None  # it cannot go on while the lock is held
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    code, listing, _ = dev(capsys, image, "list")
    assert code == 0 and "queued" in listing
