"""Admin API: health and metrics open, everything else behind the token; inspection, faults,
backup/restore with a new generation that HELLO then reports."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from sidekick_testbed.emulator.testing import ScriptedDevice, note_change
from sidekick_testbed.server_stub.server import ServerAddresses, SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage

KEY = b"k" * 32
TOKEN = "s3cret"


@pytest.fixture(params=["sim", "sqlite"])
async def served(request: pytest.FixtureRequest, tmp_path: Path,
                 nursery: trio.Nursery) -> AsyncIterator[tuple[SyncServer, ServerAddresses]]:
    storage = SimulatedStorage(random.Random(1)) if request.param == "sim" else SqliteStorage(
        tmp_path / "s.db", rng=random.Random(1))
    await storage.add_account("alice", KEY)
    server = SyncServer(storage, rng=random.Random(2))
    server.admin_token = TOKEN
    addresses = await nursery.start(
        lambda task_status: server.run(tcp=("127.0.0.1", 0), admin=("127.0.0.1", 0), task_status=task_status))
    yield server, addresses
    server.shutdown()
    await storage.aclose()


async def call(addresses: ServerAddresses, method: str, target: str, *, token: str | None = TOKEN,
               body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One admin request; its status and body (and its headers into ``headers``, if given)."""
    assert addresses.admin is not None
    stream = await trio.open_tcp_stream(*addresses.admin)
    conn = h11.Connection(h11.CLIENT)
    sent = [("Host", "admin"), ("Content-Length", str(len(body)))]
    if token is not None:
        sent.append(("Authorization", f"Bearer {token}"))
    data = conn.send(h11.Request(method=method, target=target, headers=sent)) or b""
    data += (conn.send(h11.Data(data=body)) or b"") if body else b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
    status, payload = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.fail_after(10):
                conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
            if headers is not None:
                headers.update({k.decode(): v.decode() for k, v in event.headers})
        elif isinstance(event, h11.Data):
            payload += event.data
        elif isinstance(event, h11.EndOfMessage):
            await stream.aclose()
            return status, bytes(payload)


async def sync_one(addresses: ServerAddresses, title: str, lsn: int) -> Any:
    assert addresses.tcp is not None
    device = ScriptedDevice(await trio.open_tcp_stream(*addresses.tcp), account="alice",
                            device_id=b"\x01" * 16, key=KEY, rng=random.Random(lsn))
    hello = await device.hello()
    await device.push_commit([note_change(random.Random(lsn), lsn, title)])
    await device.bye()
    return hello


async def test_health_and_metrics_need_no_token(served: Any) -> None:
    _, addresses = served
    await sync_one(addresses, "counted", 1)
    status, body = await call(addresses, "GET", "/healthz", token=None)
    assert status == 200 and body == b"ok\n"
    status, body = await call(addresses, "GET", "/metrics", token=None)
    text = body.decode()
    assert status == 200
    for line in ("sidekick_sessions_active 0.0", 'sidekick_sessions_total{binding="tcp"} 1.0',
                 'sidekick_frames_received_total{type="COMMIT"} 1.0', "sidekick_commits_total 1.0",
                 "sidekick_durable_latency_seconds_count 1.0"):
        assert line in text.splitlines(), line


@pytest.mark.parametrize("target", ["/accounts", "/faults", "/accounts/alice/records"])
@pytest.mark.parametrize("token", [None, "wrong"])
async def test_everything_else_needs_the_token(served: Any, target: str, token: str | None) -> None:
    _, addresses = served
    status, _ = await call(addresses, "GET", target, token=token)
    assert status == 401


async def test_inspection(served: Any) -> None:
    _, addresses = served
    await sync_one(addresses, "inspected", 7)
    status, body = await call(addresses, "GET", "/accounts")
    assert status == 200 and json.loads(body)[0]["account"] == "alice"
    status, body = await call(addresses, "GET", "/accounts/alice/records")
    records = json.loads(body)
    assert [r["body"]["title"] for r in records] == ["inspected"]
    status, body = await call(addresses, "GET", "/accounts/alice/devices")
    assert json.loads(body)[0]["durable_lsn"] == 7
    status, _ = await call(addresses, "GET", "/accounts/nobody/records")
    assert status == 404


async def test_fault_control(served: Any) -> None:
    server, addresses = served
    status, body = await call(addresses, "POST", "/faults/duplicate-on-retransmit/on")
    assert status == 200 and server.faults.on("duplicate-on-retransmit")
    status, body = await call(addresses, "GET", "/faults")
    assert json.loads(body)["duplicate-on-retransmit"]["on"] is True
    await call(addresses, "POST", "/faults/duplicate-on-retransmit/off")
    assert not server.faults.on("duplicate-on-retransmit")
    status, _ = await call(addresses, "POST", "/faults/no-such-fault/on")
    assert status == 404


async def test_backup_restore_bumps_generation_and_hello_reports_it(served: Any, tmp_path: Path) -> None:
    server, addresses = served
    first = await sync_one(addresses, "in the backup", 1)
    body = json.dumps({"path": str(tmp_path / "b.db")}).encode() if isinstance(
        server.storage, SqliteStorage) else b""
    status, answer = await call(addresses, "POST", "/backup", body=body)
    assert status == 200
    backup = json.loads(answer)
    await sync_one(addresses, "after the backup", 2)
    restore_body = json.dumps({"path": backup["path"]} if "path" in backup else {"snapshot": backup["snapshot"]})
    status, answer = await call(addresses, "POST", "/restore", body=restore_body.encode())
    assert status == 200
    generation = json.loads(answer)["generation"]
    assert generation != first.generation
    hello = await sync_one(addresses, "after the restore", 3)
    assert hello.generation == generation
    assert hello.durable_lsn == 1  # the watermark of the backup: the device sees the regression
    titles = [r.body.title for r in await server.storage.records("alice")]  # type: ignore[union-attr]
    assert titles == ["in the backup", "after the restore"]


async def test_accounts_can_be_added_and_removed(served: Any) -> None:
    server, addresses = served
    body = json.dumps({"account": "carol", "key": (b"c" * 32).hex()}).encode()
    status, _ = await call(addresses, "POST", "/accounts", body=body)
    assert status == 201 and await server.storage.account_key("carol") == b"c" * 32
    status, _ = await call(addresses, "POST", "/accounts", body=body)
    assert status == 409
    status, _ = await call(addresses, "POST", "/accounts", body=b'{"account": "dave", "key": "zz"}')
    assert status == 400
    status, _ = await call(addresses, "DELETE", "/accounts/carol")
    assert status == 200 and await server.storage.account_key("carol") is None


async def test_garbage_on_the_admin_port_is_a_400(served: Any) -> None:
    _, addresses = served
    assert addresses.admin is not None
    stream = await trio.open_tcp_stream(*addresses.admin)
    await stream.send_all(b"\x00\x01garbage\r\n\r\n")
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    status, _ = await call(addresses, "GET", "/healthz", token=None)
    assert status == 200
    status, _ = await call(addresses, "GET", "/no/such/route")
    assert status == 404



@pytest.mark.parametrize(("method", "target", "token", "allow"), [
    ("POST", "/metrics", None, "GET"),
    ("DELETE", "/healthz", None, "GET"),
    ("PUT", "/accounts", TOKEN, "GET, POST"),
    ("GET", "/accounts/alice", TOKEN, "DELETE"),
    ("POST", "/accounts/alice/records", TOKEN, "GET"),
    ("GET", "/faults/x/on", TOKEN, "POST"),
    ("GET", "/backup", TOKEN, "POST"),
])
async def test_a_known_path_with_the_wrong_method_is_405_with_allow(served: Any, method: str, target: str,
                                                                   token: str | None, allow: str) -> None:
    _, addresses = served
    headers: dict[str, str] = {}
    status, _ = await call(addresses, method, target, token=token, headers=headers)
    assert (status, headers.get("allow")) == (405, allow)


async def test_a_protected_path_needs_the_token_before_its_methods_are_told(served: Any) -> None:
    _, addresses = served
    assert (await call(addresses, "PUT", "/accounts", token=None))[0] == 401
    assert (await call(addresses, "GET", "/no/such/route"))[0] == 404


async def test_metrics_pass_promtool_and_carry_the_generation_as_a_label(served: Any) -> None:
    import shutil
    import subprocess

    server, addresses = served
    await sync_one(addresses, "counted", 1)
    status, body = await call(addresses, "GET", "/metrics", token=None)
    assert status == 200
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed (Debian's prometheus package; .ci/run installs it)"
    checked = await trio.to_thread.run_sync(lambda: subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60))
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked
    lines = body.decode().splitlines()
    generation = server.storage.generation
    assert (f'sidekick_store_info{{generation="{generation:#018x}",server_id="{server.storage.server_id.hex()}"}} 1.0'
            in lines)
    assert not any(line.startswith("sidekick_generation") for line in lines)
    names = {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")}
    assert {"process_cpu_seconds_total", "process_open_fds", "process_resident_memory_bytes",
            "process_start_time_seconds", "python_info", "sidekick_build_info"} <= names
