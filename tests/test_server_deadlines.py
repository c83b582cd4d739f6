"""A raw session's read and write deadlines: on a plain stream (the session's one cancel scope)
and on a stream that keeps deadlines itself (``receive_some_before``/``send_all_before``, as the
fleet's radio links do). Both kinds must end a session the same way at the same time."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.testing import ScriptedDevice, ServerRefused
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.session import DeviceSession
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage

KEY = b"k" * 32
DEVICE = b"\x01" * 16


class SelfTimedStream(trio.abc.Stream):
    """A stream that keeps its own deadlines (trio.TooSlowError) over another stream. It counts
    the calls, so that a test can tell which of the server's paths ran."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.timed_reads = 0
        self.timed_writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def send_all_before(self, data: bytes | bytearray | memoryview, deadline: float) -> None:
        self.timed_writes += 1
        with trio.move_on_at(deadline):
            await self.inner.send_all(data)
            return
        raise trio.TooSlowError

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def receive_some_before(self, max_bytes: int | None, deadline: float) -> bytes | bytearray:
        self.timed_reads += 1
        with trio.move_on_at(deadline):
            return await self.inner.receive_some(max_bytes)
        raise trio.TooSlowError

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(params=["scoped", "self-timed"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _server(limits: Limits) -> SyncServer:
    storage = SimulatedStorage(random.Random(1))
    await storage.add_account("alice", KEY)
    return SyncServer(storage, limits=limits, rng=random.Random(2))


def _serve(server: SyncServer, nursery: trio.Nursery, kind: str, server_end: trio.abc.Stream) -> trio.abc.Stream:
    stream = SelfTimedStream(server_end) if kind == "self-timed" else server_end
    nursery.start_soon(server.serve_stream, stream)
    return stream


async def _device(server: SyncServer, nursery: trio.Nursery, kind: str) -> tuple[ScriptedDevice, trio.abc.Stream]:
    device_end, server_end = trio.testing.memory_stream_pair()
    stream = _serve(server, nursery, kind, server_end)
    device = ScriptedDevice(device_end, account="alice", device_id=DEVICE, key=KEY, rng=random.Random(3),
                            timeout=3600)
    return device, stream


async def _ping(device: ScriptedDevice) -> None:
    """PING and wait for PONG. A server that already ended the session may have closed the stream
    before the PING: then its ERROR is still there to read (ServerRefused either way)."""
    try:
        await device.ping()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await device.receive()
        raise AssertionError("the stream closed without an ERROR") from None


def _check_path(kind: str, stream: trio.abc.Stream, *, reads: bool = True) -> None:
    """The self-timed stream's own deadlines were used (for reads, and for writes)."""
    if kind == "self-timed":
        assert isinstance(stream, SelfTimedStream)
        assert stream.timed_writes > 0 and (stream.timed_reads > 0 or not reads)


@pytest.mark.parametrize(("quiet_for", "ends"), [(59.999, False), (60.0, True), (75.0, True)])
async def test_a_frame_within_the_idle_timeout_keeps_the_session(autojump_clock: Any, nursery: Any, kind: str,
                                                                 quiet_for: float, ends: bool) -> None:
    """A frame that arrives before the idle deadline is served; one that arrives at it is late."""
    server = await _server(Limits(idle_timeout=60, ping_interval=0))
    device, stream = await _device(server, nursery, kind)
    await device.hello()
    start = trio.current_time()
    await trio.sleep(quiet_for)
    if ends:
        with pytest.raises(ServerRefused) as refused:
            await _ping(device)
        assert refused.value.error.code == ErrorCode.TIMEOUT
        assert server.metrics.refusals["idle_timeout"] == 1
    else:
        await device.ping()
        assert server.metrics.refusals["idle_timeout"] == 0
    assert trio.current_time() - start == quiet_for  # the answer (PONG or ERROR) took no time
    _check_path(kind, stream)


async def test_the_idle_timeout_fires_at_the_same_time_on_both_paths(autojump_clock: Any, nursery: Any,
                                                                    kind: str) -> None:
    server = await _server(Limits(idle_timeout=45, ping_interval=0))
    device, stream = await _device(server, nursery, kind)
    await device.hello()
    start = trio.current_time()
    with pytest.raises(ServerRefused) as refused:
        await device.receive()
    assert refused.value.error.code == ErrorCode.TIMEOUT
    assert trio.current_time() - start == 45
    _check_path(kind, stream)


async def test_the_session_time_budget_ends_a_chatty_session(autojump_clock: Any, nursery: Any, kind: str) -> None:
    server = await _server(Limits(idle_timeout=60, session_time=100, ping_interval=0))
    device, stream = await _device(server, nursery, kind)
    start = trio.current_time()
    await device.hello()
    for _ in range(3):  # a frame every 30 s: never idle
        await trio.sleep(30)
        await _ping(device)
    with pytest.raises(ServerRefused) as refused:
        await device.receive()  # then quiet: the budget, not the idle timeout, ends it at 100 s
    assert refused.value.error.code == ErrorCode.BUDGET_EXCEEDED
    assert trio.current_time() - start == 100
    assert server.metrics.refusals["session_time"] == 1
    _check_path(kind, stream)


async def test_a_peer_that_does_not_read_is_dropped_after_the_idle_timeout(autojump_clock: Any, nursery: Any,
                                                                         kind: str) -> None:
    """The server's CHALLENGE cannot be written (a lockstep stream: a write ends when it is read)."""
    server = await _server(Limits(idle_timeout=30))
    device_end, server_end = trio.testing.lockstep_stream_pair()
    stream = SelfTimedStream(server_end) if kind == "self-timed" else server_end
    session = DeviceSession()
    nursery.start_soon(device_end.send_all, session.send(session.hello("alice", DEVICE)))
    start = trio.current_time()
    with trio.fail_after(300):
        await server.serve_stream(stream)  # returns when the session is over
    assert trio.current_time() - start == 30
    assert server.metrics.refusals["send_timeout"] == 1
    assert server.metrics.refusals["idle_timeout"] == 0
    assert server.active_sessions == 0
    _check_path(kind, stream, reads=False)


async def test_shutdown_reaches_a_session_waiting_for_data(autojump_clock: Any, nursery: Any, kind: str) -> None:
    server = await _server(Limits(idle_timeout=600))
    device, stream = await _device(server, nursery, kind)
    await device.hello()
    await trio.sleep(5)
    start = trio.current_time()
    server.shutdown()
    with pytest.raises(ServerRefused) as refused:
        await device.receive()
    assert refused.value.error.code == ErrorCode.SHUTTING_DOWN
    assert trio.current_time() == start
    _check_path(kind, stream)
