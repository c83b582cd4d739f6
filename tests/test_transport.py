"""Transports of the sync client: raw streams (memory, TCP) and the HTTP binding."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.handset.endpoint import ProxyURL
from sidekick_testbed.emulator.handset.transport import (
    ConnectFailed,
    HttpChannel,
    HttpStatusError,
    StreamChannel,
    TransportError,
    TransportTimeout,
    connect_error_reason,
    cutting_connector,
    http_connector,
    memory_connector,
    tcp_connector,
)
from sidekick_testbed.protocol.http_common import HttpBindingError
from sidekick_testbed.protocol.http_server import HttpServerBinding
from sidekick_testbed.protocol.session import NEED_DATA


async def test_stream_channel_carries_bytes_both_ways_and_reports_close() -> None:
    left, right = trio.testing.memory_stream_pair()
    channel = StreamChannel(left)
    await channel.send_all(b"hello")
    assert await right.receive_some() == b"hello"
    await right.send_all(b"world")
    assert await channel.receive_some() == b"world"
    await right.aclose()
    assert await channel.receive_some() == b""
    with pytest.raises(TransportError):
        await channel.send_all(b"more")
    await channel.aclose()
    await channel.aclose()  # closing twice is harmless


async def test_a_receive_deadline_is_a_typed_timeout_at_the_deadline(autojump_clock: trio.testing.MockClock,
                                                                     nursery: trio.Nursery) -> None:
    left, right = trio.testing.memory_stream_pair()
    channel = StreamChannel(left)
    start = trio.current_time()
    with pytest.raises(TransportTimeout):
        await channel.receive_some(start + 30)
    assert trio.current_time() - start == 30

    async def answer_later() -> None:
        await trio.sleep(10)
        await right.send_all(b"late but in time")

    nursery.start_soon(answer_later)
    assert await channel.receive_some(trio.current_time() + 30) == b"late but in time"
    assert trio.current_time() - start == 40
    await channel.send_all(b"still up")  # a timeout does not close the connection
    assert await right.receive_some() == b"still up"


async def test_a_send_deadline_is_a_typed_timeout_at_the_deadline(autojump_clock: trio.testing.MockClock,
                                                                   nursery: trio.Nursery) -> None:
    left, right = trio.testing.lockstep_stream_pair()  # a write ends only when the peer reads it
    channel = StreamChannel(left)
    start = trio.current_time()
    with pytest.raises(TransportTimeout):
        await channel.send_all(b"nobody reads this", start + 20)
    assert trio.current_time() - start == 20

    async def read_later() -> None:
        await trio.sleep(3)
        assert await right.receive_some() == b"read in time"

    left, right = trio.testing.lockstep_stream_pair()  # a fresh pair: a cancelled write spoils one
    channel = StreamChannel(left)
    nursery.start_soon(read_later)
    await channel.send_all(b"read in time", trio.current_time() + 20)
    assert trio.current_time() - start == 23


async def test_a_cutting_channel_passes_the_deadline_on(autojump_clock: trio.testing.MockClock,
                                                        nursery: trio.Nursery) -> None:
    async def silent(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    connect, _ = cutting_connector(memory_connector(silent, nursery), budget=3)
    channel = await connect()
    start = trio.current_time()
    with pytest.raises(TransportTimeout):
        await channel.receive_some(start + 12)
    assert trio.current_time() - start == 12
    await channel.aclose()


async def test_memory_connector_runs_the_server_half_per_connection() -> None:
    seen: list[bytes] = []

    async def serve(stream: trio.abc.Stream) -> None:
        data = await stream.receive_some()
        seen.append(data)
        await stream.send_all(data.upper())

    async with trio.open_nursery() as nursery:
        connect = memory_connector(serve, nursery)
        for word in (b"one", b"two"):
            channel = await connect()
            await channel.send_all(word)
            assert await channel.receive_some() == word.upper()
            await channel.aclose()
    assert seen == [b"one", b"two"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tcp_connector_to_a_closed_port_is_connect_failed() -> None:
    port = _closed_port()
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        await tcp_connector("127.0.0.1", port)()
    with pytest.raises(ConnectFailed):
        await http_connector("127.0.0.1", port)()


async def test_a_refused_connection_names_its_reason() -> None:
    with socket.socket() as bound:  # bound, not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}: Connection refused$"):
            await tcp_connector("127.0.0.1", port)()


def test_connect_error_reasons_are_words_not_numbers() -> None:
    refused = OSError("all attempts to connect to 127.0.0.1:1 failed")
    refused.__cause__ = ExceptionGroup("attempts", [ConnectionRefusedError(errno.ECONNREFUSED, "Error connecting")])
    assert connect_error_reason(refused) == os.strerror(errno.ECONNREFUSED)
    # The resolver's errors carry negative numbers, which os.strerror cannot name.
    unknown_host = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert connect_error_reason(unknown_host) == "Name or service not known"
    assert connect_error_reason(OSError("no route")) == "no route"


async def test_tcp_connector_over_a_real_socket() -> None:
    async def echo(stream: trio.SocketStream) -> None:
        data = await stream.receive_some()
        await stream.send_all(data[::-1])
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, echo, 0)
        port = listeners[0].socket.getsockname()[1]
        channel = await tcp_connector("127.0.0.1", port)()
        await channel.send_all(b"abc")
        assert await channel.receive_some() == b"cba"
        await channel.aclose()
        nursery.cancel_scope.cancel()


async def _http_server(stream: trio.abc.Stream, answers: list[tuple[int, bytes, str | None]],
                       seen: list[tuple[bytes, str | None]]) -> None:
    """Answer each POST with the next (status, body, token), recording (body, token) received."""
    binding = HttpServerBinding(max_body=1 << 20)
    for status, body, token in answers:
        while True:
            try:
                request = binding.next_request()
            except HttpBindingError as exc:
                await stream.send_all(binding.respond(exc.status or 400))
                return
            if request is NEED_DATA:
                binding.receive_data(await stream.receive_some())
                continue
            break
        if not hasattr(request, "body"):
            return
        seen.append((request.body, request.session_token))
        await stream.send_all(binding.respond(status, body, session_token=token))


async def test_http_channel_posts_frames_and_repeats_the_session_token() -> None:
    device_end, server_end = trio.testing.memory_stream_pair()
    seen: list[tuple[bytes, str | None]] = []
    answers = [(200, b"first-answer", "tok-1"), (200, b"", None), (200, b"third", None)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_http_server, server_end, answers, seen)
        channel = HttpChannel(device_end, "example.invalid")
        await channel.send_all(b"frames-1")
        assert await channel.receive_some() == b"first-answer"
        await channel.send_all(b"frames-2")
        assert await channel.receive_some() == b""  # an empty answer: nothing more on this exchange
        await channel.send_all(b"frames-3")
        assert await channel.receive_some() == b"third"
        await channel.aclose()
    assert seen == [(b"frames-1", None), (b"frames-2", "tok-1"), (b"frames-3", "tok-1")]


async def test_http_channel_non_200_is_a_typed_error() -> None:
    device_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_http_server, server_end, [(410, b"unknown session", None)], [])
        channel = HttpChannel(device_end, "example.invalid")
        with pytest.raises(HttpStatusError) as info:
            await channel.send_all(b"x")
        assert info.value.status == 410
        assert "unknown session" in str(info.value)


async def test_http_channel_server_closing_mid_answer_is_transport_error() -> None:
    device_end, server_end = trio.testing.memory_stream_pair()

    async def half_answer() -> None:
        await server_end.receive_some()
        await server_end.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
                                  b"Content-Type: application/x-sidekick-frames\r\n\r\nshort")
        await server_end.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(half_answer)
        channel = HttpChannel(device_end, "example.invalid")
        with pytest.raises(TransportError):
            await channel.send_all(b"x")


async def _answer_once_then_reopen(close_header: bytes, *, read_second: bool) -> list[tuple[bytes, str | None]]:
    """A first connection answers one POST (with ``close_header`` among its headers) and closes
    (after reading the second request if ``read_second``); ``reopen`` gives a second server. The
    channel's two exchanges must both succeed; returns what the servers saw."""
    seen: list[tuple[bytes, str | None]] = []
    opened: list[int] = []
    async with trio.open_nursery() as nursery:

        async def reopen() -> trio.abc.Stream:
            device_end, server_end = trio.testing.memory_stream_pair()
            opened.append(1)
            nursery.start_soon(_http_server, server_end, [(200, b"again", None)], seen)
            return device_end

        first_device, first_server = trio.testing.memory_stream_pair()

        async def answer_once() -> None:
            request = await first_server.receive_some()
            seen.append((request.rsplit(b"\r\n\r\n", 1)[1], None))
            await first_server.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n" + close_header +
                b"X-Sidekick-Session: tok\r\nContent-Type: application/x-sidekick-frames\r\n\r\nonce")
            if read_second:
                await first_server.receive_some()  # the second request arrives: closed unread
            await first_server.aclose()

        nursery.start_soon(answer_once)
        channel = HttpChannel(first_device, "example.invalid", reopen=reopen)
        await channel.send_all(b"a")
        assert await channel.receive_some() == b"once"
        await channel.send_all(b"b")
        assert await channel.receive_some() == b"again"
        await channel.aclose()
    assert opened == [1]
    return seen


async def test_http_channel_reopens_when_the_server_closed_between_requests() -> None:
    assert await _answer_once_then_reopen(b"Connection: close\r\n", read_second=False) == [(b"a", None),
                                                                                           (b"b", "tok")]


async def test_a_reused_connection_closed_before_any_answer_is_tried_once_more_on_a_new_one() -> None:
    """A proxy that closes after each answer without "Connection: close" (tinyproxy does): the
    request that met the close is sent again, once, on a new connection."""
    assert await _answer_once_then_reopen(b"", read_second=True) == [(b"a", None), (b"b", "tok")]


async def test_a_new_connection_closed_before_any_answer_is_not_tried_again() -> None:
    device_end, server_end = trio.testing.memory_stream_pair()
    opened: list[int] = []

    async def reopen() -> trio.abc.Stream:
        opened.append(1)
        raise AssertionError("a first request is never sent twice")

    async def close_unanswered() -> None:
        await server_end.receive_some()
        await server_end.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_unanswered)
        channel = HttpChannel(device_end, "example.invalid", reopen=reopen)
        with pytest.raises(TransportError, match="before any answer"):
            await channel.send_all(b"x")
    assert opened == []


async def test_through_a_proxy_requests_are_in_absolute_form_with_credentials() -> None:
    device_end, server_end = trio.testing.memory_stream_pair()
    proxy = ProxyURL("proxy.invalid", 3128, "carrier", "pw")
    async with trio.open_nursery() as nursery:
        channel = HttpChannel(device_end, "sync.invalid:7401", "/carrier/sync", proxy=proxy)
        nursery.start_soon(channel.send_all, b"frames")
        head = await server_end.receive_some()
        assert head.startswith(b"POST http://sync.invalid:7401/carrier/sync HTTP/1.1\r\n")
        assert b"\r\nhost: sync.invalid:7401\r\n" in head.lower()
        assert b"\r\nproxy-authorization: basic y2fycmllcjpwdw==\r\n" in head.lower()
        nursery.cancel_scope.cancel()


async def _fake_proxy(stream: trio.abc.Stream, answer: bytes, after: bytes = b"") -> bytes:
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some()
    await stream.send_all(answer + after)
    return request


async def test_connect_opens_a_tunnel_and_keeps_what_came_with_the_answer() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    got: list[bytes] = []

    async def proxy_once() -> None:
        stream = await listener.accept()
        got.append(await _fake_proxy(stream, b"HTTP/1.1 200 Connection established\r\n\r\n", b"early"))
        assert await stream.receive_some() == b"frames"
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy_once)
        channel = await tcp_connector("sync.invalid", 7400, proxy=ProxyURL("127.0.0.1", port))()
        assert await channel.receive_some() == b"early"
        await channel.send_all(b"frames")
        await channel.aclose()
    assert got[0].startswith(b"CONNECT sync.invalid:7400 HTTP/1.1\r\n")
    await listener.aclose()


@pytest.mark.parametrize("answer", [b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno",
                                    b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n", b""])
async def test_a_refused_or_dropped_connect_is_connect_failed(answer: bytes) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def proxy_once() -> None:
        stream = await listener.accept()
        await _fake_proxy(stream, answer)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy_once)
        with pytest.raises(ConnectFailed, match=r"through proxy http://127\.0\.0\.1:\d+: ") as info:
            await tcp_connector("sync.invalid", 7400, proxy=ProxyURL("127.0.0.1", port))()
    status = answer.split(b" ")[1].decode() if answer else "without an answer"
    assert status in str(info.value)
    await listener.aclose()


async def test_cutting_channel_cuts_at_a_frame_boundary() -> None:
    from sidekick_testbed.emulator.handset.transport import CuttingChannel
    from sidekick_testbed.protocol.framing import encode_frame
    from sidekick_testbed.protocol.messages import Ping, Pong

    left, right = trio.testing.memory_stream_pair()
    channel = CuttingChannel(StreamChannel(left), budget=3)
    await channel.send_all(encode_frame(Ping(1), 0))                     # frame 1
    frames = encode_frame(Pong(1), 0) + encode_frame(Pong(2), 1) + encode_frame(Pong(3), 2)
    await right.send_all(frames[:20])                                   # a partial frame first
    await right.send_all(frames[20:])
    got = await channel.receive_some()                                  # frames 2 and 3, not 4
    assert got == frames[: 2 * len(encode_frame(Pong(1), 0))]
    assert channel.frames == 3
    assert await channel.receive_some() == b""
    with pytest.raises(TransportError):
        await channel.send_all(encode_frame(Ping(2), 1))
    assert await right.receive_some() == encode_frame(Ping(1), 0)
    assert await right.receive_some() == b""                            # the server sees the close
