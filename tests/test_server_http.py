"""The HTTP/1.1 binding: sessions across requests and connections, statuses, expiry, limits."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.testing import (
    HttpStream,
    ScriptedDevice,
    ServerClosed,
    ServerRefused,
    note_change,
)
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.http_client import HttpClientBinding, HttpResponse
from sidekick_testbed.protocol.http_common import FRAMES_CONTENT_TYPE
from sidekick_testbed.protocol.session import NEED_DATA
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import ServerAddresses, SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage

KEY = b"k" * 32
D1 = b"\x01" * 16
D2 = b"\x02" * 16


@pytest.fixture(params=["sim", "sqlite"])
async def http_server(request: pytest.FixtureRequest, tmp_path: Path,
                      nursery: trio.Nursery) -> AsyncIterator[tuple[SyncServer, ServerAddresses]]:
    storage = SimulatedStorage(random.Random(1)) if request.param == "sim" else SqliteStorage(
        tmp_path / "s.db", rng=random.Random(1))
    await storage.add_account("alice", KEY)
    server = SyncServer(storage, rng=random.Random(2), limits=Limits(max_http_header=2048))
    addresses = await nursery.start(lambda task_status: server.run(http=("127.0.0.1", 0), task_status=task_status))
    yield server, addresses
    server.shutdown()
    await storage.aclose()


async def http_device(addresses: ServerAddresses, device_id: bytes, seed: int = 0) -> ScriptedDevice:
    assert addresses.http is not None
    stream = await trio.open_tcp_stream(*addresses.http)
    return ScriptedDevice(HttpStream(stream), account="alice", device_id=device_id, key=KEY,
                          rng=random.Random(seed))


async def test_full_sync_over_http(http_server: Any) -> None:
    server, addresses = http_server
    rng = random.Random(3)
    one = await http_device(addresses, D1)
    hello = await one.hello()
    assert hello.generation == server.storage.generation
    assert isinstance(one.stream, HttpStream) and one.stream.token is not None
    _, durable = await one.push_commit([note_change(rng, 1, "a"), note_change(rng, 2, "b")])
    assert durable.durable_lsn == 2
    await one.bye()
    two = await http_device(addresses, D2)
    await two.hello()
    pulled = await two.pull_all(0, max_records=1)
    assert len(pulled.records) == 2
    await two.ping()
    assert (await server.storage.device_state("alice", D2)).anchor == 2


async def test_session_continues_over_a_new_connection(http_server: Any) -> None:
    _, addresses = http_server
    device = await http_device(addresses, D1)
    await device.hello()
    assert isinstance(device.stream, HttpStream)
    token = device.stream.token
    await device.stream.aclose()
    device.stream = HttpStream(await trio.open_tcp_stream(*addresses.http))
    device.stream.token = token
    _, durable = await device.push_commit([note_change(random.Random(1), 1, "after reconnect")])
    assert durable.durable_lsn == 1


async def test_bye_ends_the_token(http_server: Any) -> None:
    _, addresses = http_server
    device = await http_device(addresses, D1)
    await device.hello()
    await device.bye()
    assert isinstance(device.stream, HttpStream)
    with pytest.raises(ServerClosed, match="410"):
        await device.stream.send_all(b"")


async def _raw_request(addresses: ServerAddresses, data: bytes) -> HttpResponse:
    assert addresses.http is not None
    stream = await trio.open_tcp_stream(*addresses.http)
    await stream.send_all(data)
    client = HttpClientBinding("x")
    client.request(b"")  # put the client binding in the state of awaiting a response
    while True:
        response = client.next_response()
        if isinstance(response, HttpResponse):
            await stream.aclose()
            return response
        assert response is NEED_DATA
        with trio.fail_after(10):
            client.receive_data(bytes(await stream.receive_some(65536)))


def _request(method: str = "POST", target: str = "/sync", content_type: str = FRAMES_CONTENT_TYPE,
             token: str | None = None, body: bytes = b"", extra: list[tuple[str, str]] | None = None) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "x"), ("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if token:
        headers.append(("X-Sidekick-Session", token))
    headers += extra or []
    out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
    out += conn.send(h11.Data(data=body)) if body else b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (_request(token="f" * 32), 410),
    (_request(target="/other"), 404),
    (_request(method="PUT"), 405),
    (_request(content_type="text/plain"), 415),
    (_request(extra=[("X-Padding", "p" * 4000)]), 400),  # R-HTTP-10: oversized headers get 400
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
])
async def test_statuses(http_server: Any, request_bytes: bytes, status: int) -> None:
    server, addresses = http_server
    response = await _raw_request(addresses, request_bytes)
    assert response.status == status
    if b"X-Padding" in request_bytes:
        assert server.metrics.refusals["http_size"] == 1
    device = await http_device(addresses, D1)  # the server keeps serving
    await device.hello()


async def test_protocol_error_in_body_is_a_200_with_fatal_error(http_server: Any) -> None:
    _, addresses = http_server
    response = await _raw_request(addresses, _request(body=b"garbage that is not a frame"))
    assert response.status == 200
    assert response.body[:2] == b"SK"  # an ERROR frame
    from sidekick_testbed.protocol.framing import FrameDecoder
    decoder = FrameDecoder()
    decoder.feed(response.body)
    frame = decoder.next_frame()
    assert frame is not None and frame.message.code == ErrorCode.BAD_MAGIC  # type: ignore[union-attr]


async def test_idle_http_session_expires(autojump_clock: Any, nursery: Any) -> None:
    storage = SimulatedStorage(random.Random(1))
    await storage.add_account("alice", KEY)
    server = SyncServer(storage, rng=random.Random(2), limits=Limits(idle_timeout=60))
    device_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_http_stream, server_end)
    device = ScriptedDevice(HttpStream(device_end), account="alice", device_id=D1, key=KEY, rng=random.Random(1))
    await device.hello()
    assert server.active_sessions == 1
    await trio.sleep(61)
    server.http_sessions.expire()
    assert server.active_sessions == 0
    device_end2, server_end2 = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_http_stream, server_end2)
    assert isinstance(device.stream, HttpStream)
    token = device.stream.token
    device.stream = HttpStream(device_end2)
    device.stream.token = token
    with pytest.raises(ServerClosed, match="410"):
        await device.push([note_change(random.Random(1), 1, "too late")])


async def test_http_session_limit_answers_503(autojump_clock: Any, nursery: Any) -> None:
    storage = SimulatedStorage(random.Random(1))
    await storage.add_account("alice", KEY)
    server = SyncServer(storage, rng=random.Random(2), limits=Limits(max_sessions=1))
    ends = []
    for _ in range(2):
        device_end, server_end = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve_http_stream, server_end)
        ends.append(device_end)
    first = ScriptedDevice(HttpStream(ends[0]), account="alice", device_id=D1, key=KEY, rng=random.Random(1))
    await first.hello()
    second = ScriptedDevice(HttpStream(ends[1]), account="alice", device_id=D2, key=KEY, rng=random.Random(2))
    with pytest.raises(ServerClosed, match="503"):
        await second.hello()
    assert server.metrics.refusals["max_sessions"] == 1


async def test_wrong_key_over_http(http_server: Any) -> None:
    _, addresses = http_server
    device = await http_device(addresses, D1)
    device.key = b"x" * 32
    with pytest.raises(ServerRefused) as refused:
        await device.hello()
    assert refused.value.error.code == ErrorCode.AUTH_FAILED


async def test_real_handset_syncs_over_http(http_server: Any) -> None:
    from sidekick_testbed.emulator.flash import Geometry, NandFlash
    from sidekick_testbed.emulator.handset import Handset
    from sidekick_testbed.emulator.handset.transport import http_connector
    from sidekick_testbed.protocol.records import Todo

    _, addresses = http_server
    handset = Handset.create(NandFlash(Geometry(blocks=64)), device_id=D1, account="alice", key=KEY,
                             rng=random.Random(1))
    handset.add(Todo("write the spec"))
    report = await handset.sync(http_connector(*addresses.http))
    assert report.durable == 1 and report.pulled == 1


async def test_body_ending_inside_a_frame_is_truncated(http_server: Any) -> None:
    _, addresses = http_server
    from sidekick_testbed.protocol.session import DeviceSession
    session = DeviceSession()
    hello = session.send(session.hello("alice", D1))
    response = await _raw_request(addresses, _request(body=hello[:-3]))
    assert response.status == 200
    from sidekick_testbed.protocol.framing import FrameDecoder
    decoder = FrameDecoder()
    decoder.feed(response.body)
    frame = decoder.next_frame()
    assert frame is not None and frame.message.code == ErrorCode.TRUNCATED  # type: ignore[union-attr]


async def test_a_smuggled_request_behind_content_length_and_transfer_encoding_is_never_served(
        http_server: Any) -> None:
    """RFC 9112 section 6.1: both framings in one request: refused, and the connection closed, so
    the request hidden in its body is never read (over a real socket)."""
    _, addresses = http_server
    assert addresses.http is not None
    stream = await trio.open_tcp_stream(*addresses.http)
    await stream.send_all(b"POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-sidekick-frames\r\n"
                          b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                          b"POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-sidekick-frames\r\n"
                          b"Content-Length: 0\r\n\r\n")
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ") and data.count(b"HTTP/1.1 ") == 1
    assert b"\r\nconnection: close\r\n" in data.lower()
