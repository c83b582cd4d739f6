"""The server before and around authentication, on memory streams with MockClock: the handshake
deadline, bounded places per client address with eviction, max_sessions counting only
authenticated sessions, the idle timeout as link silence, the idle PING (R-STATE-7), the HTTP
connection's deadlines, and the failed-authentication throttle (R-AUTH-9)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.testing import HttpStream, ScriptedDevice, ServerRefused, note_change
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.http_common import FRAMES_CONTENT_TYPE
from sidekick_testbed.protocol.messages import Challenge, Error, HelloOk, Ping, Push
from sidekick_testbed.protocol.session import NEED_DATA, DeviceSession
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage

KEY = b"k" * 32
D1, D2, D3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16


async def _server(**limits: Any) -> SyncServer:
    storage = SimulatedStorage(random.Random(1))
    await storage.add_account("alice", KEY)
    await storage.add_account("bob", KEY)
    return SyncServer(storage, limits=Limits(**limits), rng=random.Random(2))


def _connect(server: SyncServer, nursery: trio.Nursery, address: str | None = None, *,
             http: bool = False) -> trio.testing.MemoryReceiveStream | Any:
    device_end, server_end = trio.testing.memory_stream_pair()
    serve = server.serve_http_stream if http else server.serve_stream
    nursery.start_soon(lambda: serve(server_end, address=address))
    return device_end


def _device(stream: Any, device_id: bytes = D1, *, http: bool = False, key: bytes = KEY,
            account: str = "alice") -> ScriptedDevice:
    return ScriptedDevice(HttpStream(stream) if http else stream, account=account, device_id=device_id, key=key,
                          rng=random.Random(device_id[0]), timeout=3600)


async def _closed(stream: Any) -> bytes:
    """Everything the server still sends, until it closes (a memory stream: no timeout needed)."""
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return data


async def _next_message(stream: Any, session: DeviceSession) -> Any:
    while (event := session.next_event()) is NEED_DATA:
        session.receive_data(bytes(await stream.receive_some(65536)))
    return event


# ------------------------------------------------------------------ the handshake deadline


async def test_a_hello_without_auth_gets_timeout_at_the_handshake_deadline(autojump_clock: Any,
                                                                          nursery: trio.Nursery) -> None:
    server = await _server(handshake_timeout=10)
    stream = _connect(server, nursery)
    session = DeviceSession()
    start = trio.current_time()
    await stream.send_all(session.send(session.hello("alice", D1)))
    assert isinstance(await _next_message(stream, session), Challenge)
    answer = await _next_message(stream, session)
    assert isinstance(answer, Error) and answer.code == ErrorCode.TIMEOUT and answer.fatal
    assert trio.current_time() - start == 10
    assert server.metrics.refusals["handshake_timeout"] == 1
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert len(server.admission) == 0 and server.active_sessions == 0


async def test_a_slow_handshake_within_the_deadline_succeeds(autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server(handshake_timeout=10)
    stream = _connect(server, nursery)
    session = DeviceSession()
    await stream.send_all(session.send(session.hello("alice", D1)))
    challenge = await _next_message(stream, session)
    await trio.sleep(9.9)
    device = _device(stream)
    device.session = session
    from sidekick_testbed.protocol.auth import device_mac
    from sidekick_testbed.protocol.messages import Auth
    nonce = b"\x05" * 16
    await device.send(Auth(nonce, device_mac(KEY, server_nonce=challenge.server_nonce, device_nonce=nonce,
                                             account="alice", device_id=D1, server_id=challenge.server_id)))
    assert isinstance(await device.receive(), HelloOk)
    await trio.sleep(25)  # authenticated: the handshake deadline no longer applies
    await device.ping()


# ------------------------------------------------------------------ places before authentication


async def test_past_the_per_address_bound_the_longest_waiting_gives_way(autojump_clock: Any,
                                                                        nursery: trio.Nursery) -> None:
    server = await _server(max_handshakes=100, max_handshakes_per_address=2)
    first = _connect(server, nursery, "10.0.0.1")
    await trio.sleep(1)
    second = _connect(server, nursery, "10.0.0.1")
    other = _connect(server, nursery, "10.0.0.9")
    await trio.sleep(1)
    newcomer = _device(_connect(server, nursery, "10.0.0.1"), D3)
    assert await _closed(first) == b""  # evicted before HELLO: closed, no frame (R-STATE-3)
    await newcomer.hello()               # the newcomer got the place and authenticated
    assert server.metrics.refusals["handshake_evicted"] == 1
    assert server.admission.held_by("10.0.0.1") == 1 and server.admission.held_by("10.0.0.9") == 1
    await _device(second, D1).hello()
    await _device(other, D2).hello()     # the other address lost nothing
    assert len(server.admission) == 0 and len(server.authenticated) == 3


async def test_past_the_total_bound_the_greediest_address_gives_way(autojump_clock: Any,
                                                                    nursery: trio.Nursery) -> None:
    server = await _server(max_handshakes=3, max_handshakes_per_address=3)
    greedy = []
    for _ in range(2):  # one second apart: Trio may start tasks of one batch in either order
        greedy.append(_connect(server, nursery, "10.0.0.1"))
        await trio.sleep(1)
    lone = _connect(server, nursery, "10.0.0.2")
    await trio.sleep(1)
    _connect(server, nursery, "10.0.0.3")
    assert await _closed(greedy[0]) == b""
    await _device(lone, D2).hello()
    assert server.admission.held_by("10.0.0.1") == 1


async def test_a_handshake_in_progress_outlasts_stalled_ones(autojump_clock: Any, nursery: trio.Nursery) -> None:
    """Progress (a frame) moves a connection to the back of its address's queue."""
    server = await _server(max_handshakes_per_address=2)
    moving = _connect(server, nursery, "10.0.0.1")
    session = DeviceSession()
    await trio.sleep(1)
    stalled = _connect(server, nursery, "10.0.0.1")
    await trio.sleep(1)
    await moving.send_all(session.send(session.hello("alice", D1)))
    assert isinstance(await _next_message(moving, session), Challenge)
    _connect(server, nursery, "10.0.0.1")
    assert await _closed(stalled) == b""
    assert server.admission.held_by("10.0.0.1") == 2


async def test_an_evicted_handshake_after_hello_is_closed_without_a_frame(autojump_clock: Any,
                                                                          nursery: trio.Nursery) -> None:
    server = await _server(max_handshakes_per_address=1)
    stream = _connect(server, nursery, "10.0.0.1")
    session = DeviceSession()
    await stream.send_all(session.send(session.hello("alice", D1)))
    assert isinstance(await _next_message(stream, session), Challenge)
    _connect(server, nursery, "10.0.0.1")
    assert await _closed(stream) == b""  # no frame: BUSY answers only a HELLO (R-TCP-6)


async def test_max_sessions_counts_only_authenticated_sessions(autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server(max_sessions=1)
    stalled = [_connect(server, nursery, f"10.0.0.{i}") for i in range(1, 6)]
    first = _device(_connect(server, nursery, "10.0.1.1"), D1)
    await first.hello()  # five connections before authentication do not make the server full
    assert len(stalled) == 5 and len(server.admission) == 5
    second = _device(_connect(server, nursery, "10.0.1.2"), D2)
    with pytest.raises(ServerRefused) as refused:
        await second.hello()
    assert refused.value.error.code == ErrorCode.BUSY
    assert server.metrics.refusals["max_sessions"] == 1


# ------------------------------------------------------------------ silence and PING


async def test_a_frame_trickled_without_pause_is_not_idle(autojump_clock: Any, nursery: trio.Nursery) -> None:
    """A big frame on a slow link: bytes every 20 s for minutes, never 60 s of silence."""
    server = await _server(idle_timeout=60)
    stream = _connect(server, nursery)
    device = _device(stream)
    await device.hello()
    frame = device.session.send(Push((note_change(random.Random(1), 1, "trickled"),)))
    start = trio.current_time()
    for index in range(0, len(frame), len(frame) // 10 + 1):
        await stream.send_all(frame[index:index + len(frame) // 10 + 1])
        await trio.sleep(20)
    assert trio.current_time() - start > 3 * 60
    answer = await device.receive()
    assert answer.TYPE.name == "PUSH_ACK"
    assert server.metrics.refusals["idle_timeout"] == 0


async def test_an_idle_device_that_answers_ping_stays(autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server(idle_timeout=60)  # PING after 30 s of silence
    device = _device(_connect(server, nursery))
    await device.hello()
    start = trio.current_time()
    with trio.move_on_after(200):
        await device.receive()  # answers every PING with PONG, returns nothing else
    assert trio.current_time() - start == 200
    assert server.metrics.pings == 200 // 30
    assert [type(m) for m in device.received[-3:]] == [Ping, Ping, Ping]
    await device.ping()
    assert server.metrics.refusals["idle_timeout"] == 0


async def test_a_device_that_does_not_answer_ping_times_out_at_the_idle_timeout(autojump_clock: Any,
                                                                               nursery: trio.Nursery) -> None:
    server = await _server(idle_timeout=60, ping_interval=20)
    stream = _connect(server, nursery)
    device = _device(stream)
    await device.hello()
    start = trio.current_time()
    ping = await _next_message(stream, device.session)
    assert isinstance(ping, Ping) and trio.current_time() - start == 20
    answer = await _next_message(stream, device.session)  # no PONG: the PING did not count as traffic
    assert isinstance(answer, Error) and answer.code == ErrorCode.TIMEOUT
    assert trio.current_time() - start == 60
    assert server.metrics.refusals["idle_timeout"] == 1 and server.metrics.pings == 1


async def test_no_ping_over_http(autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server(idle_timeout=60)
    device = _device(_connect(server, nursery, http=True), http=True)
    await device.hello()
    await trio.sleep(59)
    await device.ping()
    assert server.metrics.pings == 0


# ------------------------------------------------------------------ HTTP connections and sessions


def _post(body: bytes, token: str | None = None) -> bytes:
    head = f"POST /sync HTTP/1.1\r\nHost: h\r\nContent-Type: {FRAMES_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
    if token:
        head += f"X-Sidekick-Session: {token}\r\n"
    return head.encode() + b"\r\n" + body


async def test_an_http_session_that_does_not_authenticate_expires_at_the_handshake_deadline(
        autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server(handshake_timeout=10, idle_timeout=60)
    stream = _connect(server, nursery, "10.0.0.1", http=True)
    session = DeviceSession()
    await stream.send_all(_post(session.send(session.hello("alice", D1))))
    answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"x-sidekick-session: " in answer.lower()
    token = answer.lower().split(b"x-sidekick-session: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert len(server.http_sessions) == 1
    await trio.sleep(10.5)  # the session has not authenticated within 10 s
    later = _connect(server, nursery, "10.0.0.1", http=True)
    await later.send_all(_post(encode_frame(Ping(1), 1), token))
    assert (await later.receive_some(65536)).startswith(b"HTTP/1.1 410 ")
    assert server.metrics.refusals["handshake_timeout"] >= 1 and len(server.http_sessions) == 0


async def test_an_http_connection_that_carries_no_authenticated_request_closes_at_the_deadline(
        autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server(handshake_timeout=10, idle_timeout=60)
    stream = _connect(server, nursery, "10.0.0.1", http=True)
    start = trio.current_time()
    assert await _closed(stream) == b""  # never sent anything: closed without a word
    assert trio.current_time() - start == 10
    assert server.metrics.refusals["handshake_timeout"] == 1


async def test_a_request_head_trickled_too_long_gets_408(autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server(handshake_timeout=10, idle_timeout=60)
    stream = _connect(server, nursery, http=True)
    device = _device(stream, http=True)
    await device.hello()  # the connection now carries an authenticated session
    assert len(server.admission) == 0
    start = trio.current_time()
    request = _post(b"", "whatever")
    answer = b""

    async def trickle() -> None:  # a byte every 2 s: 60 s of head, never 60 s of silence
        for byte in request[:30]:
            await stream.send_all(bytes([byte]))
            await trio.sleep(2)

    async with trio.open_nursery() as inner:
        inner.start_soon(trickle)
        answer = await _closed(stream)
        inner.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
    assert trio.current_time() - start == 10  # the head's first byte plus the handshake timeout
    assert server.metrics.refusals["http_request_timeout"] == 1


async def test_a_kept_alive_connection_closes_after_the_idle_timeout_of_silence(autojump_clock: Any,
                                                                                nursery: trio.Nursery) -> None:
    server = await _server(handshake_timeout=10, idle_timeout=60)
    stream = _connect(server, nursery, http=True)
    device = _device(stream, http=True)
    await device.hello()
    start = trio.current_time()
    assert await _closed(stream) == b""
    assert trio.current_time() - start == 60
    assert server.metrics.refusals["http_idle"] == 1


async def test_an_empty_post_leaves_the_session_as_it_was(autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server()
    device = _device(_connect(server, nursery, http=True), http=True)
    await device.hello()
    stream = device.stream
    assert isinstance(stream, HttpStream)
    await stream.send_all(b"")  # a POST with no frames: 200, nothing in it
    assert stream.last_status == 200 and not stream.inbox
    await device.push_commit([note_change(random.Random(1), 1, "still there")])


async def test_a_post_without_token_and_without_a_hello_is_400(autojump_clock: Any, nursery: trio.Nursery) -> None:
    server = await _server()
    stream = _connect(server, nursery, http=True)
    await stream.send_all(_post(b""))
    answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert server.active_sessions == 0


# ------------------------------------------------------------------ failed-authentication throttle


async def _auth_with(server: SyncServer, nursery: trio.Nursery, address: str, key: bytes,
                     account: str = "alice") -> bool:
    device = _device(_connect(server, nursery, address), D1, key=key, account=account)
    try:
        await device.hello()
    except ServerRefused as refused:
        assert refused.error.code == ErrorCode.AUTH_FAILED
        return False
    await device.bye()
    return True


async def test_failed_auths_of_an_account_from_an_address_are_throttled(autojump_clock: Any,
                                                                        nursery: trio.Nursery) -> None:
    server = await _server(auth_failures=5, auth_failure_refill=12)
    wrong = b"w" * 32
    for _ in range(5):
        assert not await _auth_with(server, nursery, "10.0.0.1", wrong)
    assert not await _auth_with(server, nursery, "10.0.0.1", KEY)  # the right key, refused unchecked
    assert server.metrics.refusals["auth_throttled"] == 1
    assert await _auth_with(server, nursery, "10.0.0.2", KEY)      # the account is not locked out
    assert await _auth_with(server, nursery, "10.0.0.1", KEY, "bob")  # nor the address for others
    await trio.sleep(12)
    assert await _auth_with(server, nursery, "10.0.0.1", KEY)      # one failure regained after 12 s


async def test_failed_auths_from_an_address_over_all_accounts_are_throttled(autojump_clock: Any,
                                                                            nursery: trio.Nursery) -> None:
    server = await _server(auth_failures=100, address_auth_failures=3, address_auth_failure_refill=2)
    for account in ("a1", "a2", "a3"):
        assert not await _auth_with(server, nursery, "10.0.0.1", KEY, account)
    assert not await _auth_with(server, nursery, "10.0.0.1", KEY)
    assert await _auth_with(server, nursery, "10.0.0.2", KEY)
    await trio.sleep(2)
    assert await _auth_with(server, nursery, "10.0.0.1", KEY)
