"""The HTTP/1.1 binding: the whole conversation through h11 on both sides, statuses, bad HTTP."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.protocol.errors import ErrorCode, LocalProtocolError
from sidekick_testbed.protocol.http_client import HttpClientBinding, HttpResponse
from sidekick_testbed.protocol.http_common import FRAMES_CONTENT_TYPE, SESSION_HEADER, HttpBindingError
from sidekick_testbed.protocol.http_server import HttpRequest, HttpServerBinding
from sidekick_testbed.protocol.messages import Bye, Pong
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA, DeviceSession, ServerSession
from sidekick_testbed.protocol.states import Role, SessionState
from tests.session_pair import SCRIPT, drain

# The SCRIPT conversation without the server's PING: a server cannot initiate over HTTP.
HTTP_SCRIPT = [*SCRIPT[:-2], (Role.SERVER, (Pong(41),)), (Role.DEVICE, (Bye("done"),))]

MAX_BODY = 1 << 20


def feed_server(server: HttpServerBinding, data: bytes, *, bytewise: bool) -> HttpRequest:
    """Feed a request whole or byte by byte; it must complete exactly at its last byte."""
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for i, chunk in enumerate(chunks):
        server.receive_data(chunk)
        got = server.next_request()
        if i < len(chunks) - 1:
            assert got is NEED_DATA
    assert isinstance(got, HttpRequest)
    return got


def feed_client(client: HttpClientBinding, data: bytes, *, bytewise: bool) -> HttpResponse:
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for i, chunk in enumerate(chunks):
        client.receive_data(chunk)
        got = client.next_response()
        if i < len(chunks) - 1:
            assert got is NEED_DATA
    assert isinstance(got, HttpResponse)
    return got


def raw_request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def post(path: str = "/sync", content_type: str = FRAMES_CONTENT_TYPE, body: bytes = b"x", extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\nHost: h\nContent-Type: {content_type}\nContent-Length: {len(body)}{extra}"
    return raw_request(head, body)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_full_conversation_over_http(bytewise: bool) -> None:
    device, server = DeviceSession(), ServerSession()
    client = HttpClientBinding("sync.example", "/sync")
    binding = HttpServerBinding(max_body=MAX_BODY)
    token: str | None = None
    for (role, requests), (answer_role, answers) in zip(HTTP_SCRIPT[0::2], [*HTTP_SCRIPT[1::2], (Role.SERVER, ())], strict=True):
        assert role is Role.DEVICE and answer_role is Role.SERVER
        frames = b"".join(device.send(m) for m in requests)
        request = feed_server(binding, client.request(frames, token), bytewise=bytewise)
        assert (request.method, request.path, request.content_type) == ("POST", "/sync", FRAMES_CONTENT_TYPE)
        assert request.session_token == token
        assert request.body == frames
        server.receive_data(request.body)
        assert drain(server) == list(requests)
        reply = b"".join(server.send(m) for m in answers)
        response = feed_client(client, binding.respond(200, reply, session_token="s-1"), bytewise=bytewise)
        assert (response.status, response.content_type, response.body) == (200, FRAMES_CONTENT_TYPE, reply)
        token = response.session_token
        assert token == "s-1"
        if answers:
            device.receive_data(response.body)
            assert drain(device) == list(answers)
        assert client.reusable and not binding.closing
    assert device.state is server.state is SessionState.CLOSED


def test_application_statuses_keep_the_connection_alive() -> None:
    client = HttpClientBinding("h")
    binding = HttpServerBinding(max_body=100)
    for status in (410, 503, 200):
        feed_server(binding, client.request(b"", "old"), bytewise=False)
        retry = 5 if status == 503 else None
        answer = binding.respond(status, b"", session_token=None, retry_after=retry)
        assert (b"retry-after: 5" in answer.lower()) == (status == 503)
        response = feed_client(client, answer, bytewise=False)
        assert response.status == status
        assert response.session_token is None
        assert client.reusable and not binding.closing


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (post(path="/other"), 404, ErrorCode.BAD_FIELD),
        (raw_request("GET /sync HTTP/1.1\nHost: h"), 405, ErrorCode.BAD_FIELD),
        (post(content_type="text/plain"), 415, ErrorCode.BAD_FIELD),
        (raw_request(f"POST /sync HTTP/1.1\nHost: h\nContent-Type: {FRAMES_CONTENT_TYPE}\nTransfer-Encoding: chunked"),
         411, ErrorCode.BAD_FIELD),
        (raw_request(f"POST /sync HTTP/1.1\nHost: h\nContent-Type: {FRAMES_CONTENT_TYPE}\nContent-Length: 101"),
         413, ErrorCode.FRAME_TOO_LARGE),
        (post(extra=f"\n{SESSION_HEADER}: a b"), 400, ErrorCode.BAD_FIELD),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, ErrorCode.MALFORMED_PAYLOAD),
        (post(extra="\nX-Padding: " + "p" * 300), 400, ErrorCode.FRAME_TOO_LARGE),
        (post(extra="\nX-Padding: " + "p" * 300)[:-40], 400, ErrorCode.FRAME_TOO_LARGE),
    ],
    ids=["404", "405", "415", "411", "413", "400-token", "400-garbage", "400-header", "400-partial-header"],
)
def test_refused_requests_get_their_status_and_close(data: bytes, status: int, code: ErrorCode) -> None:
    binding = HttpServerBinding(max_body=100, max_header=256)
    binding.receive_data(data)
    with pytest.raises(HttpBindingError) as info:
        binding.next_request()
    assert (info.value.status, info.value.code) == (status, code)
    answer = binding.respond(status, b"", content_type="text/plain")
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"connection: close" in answer.lower()
    assert (b"allow: post" in answer.lower()) == (status == 405)
    assert binding.closing
    assert binding.next_request() is CONNECTION_CLOSED


def test_oversized_body_is_refused_from_the_header_before_the_body() -> None:
    binding = HttpServerBinding(max_body=10)
    head = post(body=b"y" * 11)[:-11]  # only the head has arrived
    binding.receive_data(head)
    with pytest.raises(HttpBindingError) as info:
        binding.next_request()
    assert info.value.status == 413


def test_truncated_request_at_eof() -> None:
    binding = HttpServerBinding(max_body=100)
    binding.receive_data(post(body=b"abcdef")[:-2])
    assert binding.next_request() is NEED_DATA
    binding.receive_data(b"")
    with pytest.raises(HttpBindingError) as info:
        binding.next_request()
    assert info.value.code is ErrorCode.TRUNCATED


def test_clean_close_between_requests() -> None:
    binding = HttpServerBinding(max_body=100)
    binding.receive_data(b"")
    assert binding.next_request() is CONNECTION_CLOSED


def test_pipelined_requests_wait_for_their_responses() -> None:
    binding = HttpServerBinding(max_body=100)
    binding.receive_data(post(body=b"one") + post(body=b"two"))
    first = binding.next_request()
    assert isinstance(first, HttpRequest) and first.body == b"one"
    with pytest.raises(LocalProtocolError):
        binding.next_request()
    binding.respond(200)
    second = binding.next_request()
    assert isinstance(second, HttpRequest) and second.body == b"two"


def test_respond_without_a_request_is_refused() -> None:
    with pytest.raises(LocalProtocolError) as info:
        HttpServerBinding(max_body=1).respond(200)
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_bad_session_tokens_are_refused_locally() -> None:
    client = HttpClientBinding("h")
    with pytest.raises(LocalProtocolError):
        client.request(b"", "has space")
    binding = HttpServerBinding(max_body=100)
    feed_server(binding, client.request(b""), bytewise=False)
    with pytest.raises(LocalProtocolError):
        binding.respond(200, session_token="x" * 257)


def test_client_refuses_a_second_request_before_the_response() -> None:
    client = HttpClientBinding("h")
    client.request(b"a")
    with pytest.raises(LocalProtocolError) as info:
        client.request(b"b")
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_server_closing_the_connection_ends_reuse() -> None:
    client = HttpClientBinding("h")
    client.request(b"a")
    response = feed_client(
        client, b"HTTP/1.1 200 OK\r\nContent-Type: application/x-sidekick-frames\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n", bytewise=False,
    )
    assert response.status == 200
    assert not client.reusable
    with pytest.raises(LocalProtocolError) as info:
        client.request(b"b")
    assert info.value.code is ErrorCode.SESSION_CLOSED


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n", ErrorCode.BAD_FIELD),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-sidekick-frames\r\nContent-Length: 99\r\n\r\n",
         ErrorCode.FRAME_TOO_LARGE),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-sidekick-frames\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"64\r\n" + b"z" * 100 + b"\r\n0\r\n\r\n", ErrorCode.FRAME_TOO_LARGE),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-sidekick-frames\r\nContent-Length: 4\r\n\r\nab",
         ErrorCode.TRUNCATED),
        (b"", ErrorCode.TRUNCATED),
        (b"SMTP ready\r\n\r\n", ErrorCode.MALFORMED_PAYLOAD),
    ],
    ids=["wrong-type", "too-long", "chunked-too-long", "truncated", "closed", "garbage"],
)
def test_client_refuses_bad_responses(data: bytes, code: ErrorCode) -> None:
    client = HttpClientBinding("h", max_body=50)
    client.request(b"a")
    client.receive_data(data)
    if code is ErrorCode.TRUNCATED:
        client.receive_data(b"")
    with pytest.raises(HttpBindingError) as info:
        client.next_response()
    assert info.value.code is code
    assert not client.reusable


def test_client_sees_a_clean_close_while_idle() -> None:
    client = HttpClientBinding("h")
    client.receive_data(b"")
    assert client.next_response() is CONNECTION_CLOSED


@given(st.binary(max_size=400))
def test_random_bytes_into_the_server_binding(data: bytes) -> None:
    binding = HttpServerBinding(max_body=64, max_header=128)
    binding.receive_data(data)
    binding.receive_data(b"")
    try:
        while True:
            got = binding.next_request()
            if got is NEED_DATA or got is CONNECTION_CLOSED:
                return
            assert isinstance(got, HttpRequest) and len(got.body) <= 64
            binding.respond(200)
    except HttpBindingError as exc:
        assert exc.status is not None and 400 <= exc.status < 500


@given(st.binary(max_size=400))
def test_random_bytes_into_the_client_binding(data: bytes) -> None:
    client = HttpClientBinding("h", max_body=64)
    client.request(b"frames")
    client.receive_data(data)
    try:
        got = client.next_response()
    except HttpBindingError:
        return
    assert got is NEED_DATA or (isinstance(got, HttpResponse) and len(got.body) <= 64)


@given(st.binary(min_size=1, max_size=200), st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
def test_any_body_and_token_round_trip(body: bytes, token: str) -> None:
    client = HttpClientBinding("h")
    binding = HttpServerBinding(max_body=200)
    request = feed_server(binding, client.request(body, token), bytewise=False)
    assert (request.body, request.session_token) == (body, token)
    response = feed_client(client, binding.respond(200, body[::-1], session_token=token), bytewise=False)
    assert (response.body, response.session_token) == (body[::-1], token)


def test_bad_response_header_is_refused_and_the_binding_stays_usable() -> None:
    client = HttpClientBinding("h")
    binding = HttpServerBinding(max_body=100)
    feed_server(binding, client.request(b"q"), bytewise=False)
    with pytest.raises(LocalProtocolError) as info:
        binding.respond(200, b"", content_type="text/plain\r\nX-Evil: 1")
    assert info.value.code is ErrorCode.BAD_FIELD
    assert feed_client(client, binding.respond(200, b"ok"), bytewise=False).body == b"ok"


_TOKENS = st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
_MEDIA = st.sampled_from([FRAMES_CONTENT_TYPE, "text/plain", "application/x-sidekick-frames; v=1"])


@given(body=st.binary(max_size=300), token=_TOKENS, content_type=_MEDIA, requests=st.integers(1, 3))
def test_a_200_answer_is_the_bytes_h11_writes(body: bytes, token: str | None, content_type: str,
                                              requests: int) -> None:
    """The binding writes a kept-alive 200 itself: byte for byte what h11 writes for the same
    answer to the same request, request after request on one connection."""
    binding = HttpServerBinding(max_body=MAX_BODY)
    for _ in range(requests):
        request = post(body=b"frames")
        feed_server(binding, request, bytewise=False)
        reference = h11.Connection(h11.SERVER)
        reference.receive_data(request)
        while not isinstance(reference.next_event(), h11.EndOfMessage):
            pass
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if token is not None:
            headers.append((SESSION_HEADER, token))
        expected = b"".join(reference.send(event) or b"" for event in (
            h11.Response(status_code=200, headers=headers, reason="OK"), h11.Data(data=body), h11.EndOfMessage()))
        assert binding.respond(200, body, session_token=token, content_type=content_type) == expected
        assert not binding.closing


@pytest.mark.parametrize("head", ["POST /sync HTTP/1.0\nHost: h", "POST /sync HTTP/1.1\nHost: h\nConnection: close"],
                         ids=["http-1.0", "connection-close"])
def test_a_200_answer_to_a_request_that_closes_says_so(head: str) -> None:
    binding = HttpServerBinding(max_body=MAX_BODY)
    feed_server(binding, raw_request(f"{head}\nContent-Type: {FRAMES_CONTENT_TYPE}\nContent-Length: 1", b"x"),
                bytewise=False)
    answer = binding.respond(200, b"ok")
    assert b"\r\nConnection: close\r\n" in answer
    assert binding.closing
