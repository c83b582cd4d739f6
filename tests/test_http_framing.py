"""Request framing by RFC 9112 on the HTTP binding: the classic request-smuggling vectors are
refused and close the connection, so that a request hidden behind one is never served."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.protocol.http_common import FRAMES_CONTENT_TYPE, HttpBindingError
from sidekick_testbed.protocol.http_server import OPENING_BODY_LIMIT, HttpRequest, HttpServerBinding
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA

CT = f"Content-Type: {FRAMES_CONTENT_TYPE}\r\n".encode()
LINE = b"POST /sync HTTP/1.1\r\nHost: sync.test\r\n" + CT
SMUGGLED = b"POST /sync HTTP/1.1\r\nHost: sync.test\r\n" + CT + b"Content-Length: 5\r\nX-Sidekick-Session: t\r\n\r\nhello"

# (what, request bytes, the status the server answers)
VECTORS: list[tuple[str, bytes, int]] = [
    ("CL.TE: Content-Length then Transfer-Encoding",
     LINE + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE.CL: Transfer-Encoding then Content-Length",
     LINE + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("TE.TE: chunked twice", LINE + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE.TE: chunked then a bogus coding",
     LINE + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", 501),
    ("Transfer-Encoding: xchunked", LINE + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("Transfer-Encoding: gzip, chunked", LINE + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("Transfer-Encoding: identity with Content-Length",
     LINE + b"Transfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n", 400),
    ("Transfer-Encoding with a space before the colon",
     LINE + b"Transfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n", 400),
    ("Transfer-Encoding folded onto a continuation line (obs-fold)",
     LINE + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding with a vertical tab", LINE + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 501),
    ("chunked alone", LINE + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    ("chunked in an HTTP/1.0 request",
     b"POST /sync HTTP/1.0\r\nHost: sync.test\r\n" + CT + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    ("two equal Content-Length lines", LINE + b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
    ("two different Content-Length lines", LINE + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\n", 400),
    ("a Content-Length list", LINE + b"Content-Length: 0, 0\r\n\r\n", 400),
    ("a signed Content-Length", LINE + b"Content-Length: +0\r\n\r\n", 400),
    ("a negative Content-Length", LINE + b"Content-Length: -1\r\n\r\n", 400),
    ("a hexadecimal Content-Length", LINE + b"Content-Length: 0x0\r\n\r\n", 400),
    ("a Content-Length past 64 bits", LINE + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("a Content-Length with a space before the colon", LINE + b"Content-Length : 0\r\n\r\n", 400),
    ("obsolete line folding", LINE + b"X-Note: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400),
    ("whitespace before the first header line", b"POST /sync HTTP/1.1\r\n Host: sync.test\r\n" + CT
     + b"Content-Length: 0\r\n\r\n", 400),
    ("bare LF line ends", b"POST /sync HTTP/1.1\nHost: sync.test\n" + CT.replace(b"\r", b"")
     + b"Content-Length: 0\n\n", 400),
    ("one bare LF hiding a header", LINE + b"X-Note: a\nContent-Length: 0\r\n\r\n", 400),
    ("a bare CR", LINE + b"X-Note: a\rContent-Length: 5\r\nContent-Length: 0\r\n\r\n", 400),
    ("a NUL in a header value", LINE + b"X-Note: a\x00b\r\nContent-Length: 0\r\n\r\n", 400),
    ("a header line without a colon", LINE + b"Content-Length 0\r\n\r\n", 400),
    ("two Host lines", b"POST /sync HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + CT + b"Content-Length: 0\r\n\r\n", 400),
    ("no Host in HTTP/1.1", b"POST /sync HTTP/1.1\r\n" + CT + b"Content-Length: 0\r\n\r\n", 400),
    ("two spaces in the request line", b"POST  /sync HTTP/1.1\r\nHost: h\r\n" + CT + b"Content-Length: 0\r\n\r\n", 400),
    ("HTTP/2 prior knowledge", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("no Content-Length at all", LINE + b"\r\n", 411),
    ("a body over the limit without a session token",
     LINE + f"Content-Length: {OPENING_BODY_LIMIT + 1}\r\n\r\n".encode(), 413),
]


def _answer(data: bytes) -> tuple[HttpBindingError, bytes, HttpServerBinding]:
    binding = HttpServerBinding(max_body=1 << 20, max_header=4096)
    binding.receive_data(data)
    with pytest.raises(HttpBindingError) as refused:
        for _ in range(3):
            got = binding.next_request()
            assert not isinstance(got, HttpRequest), "the vector was taken for a request"
            assert got is NEED_DATA
            binding.receive_data(b"")
    assert refused.value.status is not None
    return refused.value, binding.respond(refused.value.status, b"refused", content_type="text/plain"), binding


@pytest.mark.parametrize(("what", "data", "status"), VECTORS, ids=[v[0] for v in VECTORS])
def test_each_smuggling_vector_is_refused_and_the_connection_closes(what: str, data: bytes, status: int) -> None:
    error, answer, binding = _answer(data + SMUGGLED)
    assert error.status == status, f"{what}: {error}"
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert binding.closing
    assert binding.next_request() is CONNECTION_CLOSED  # the request behind it is never read


def test_a_refused_head_is_refused_before_its_end_when_a_bare_lf_arrives() -> None:
    binding = HttpServerBinding(max_body=100)
    binding.receive_data(b"POST /sync HTTP/1.1\r\nHost: h\nX-")
    with pytest.raises(HttpBindingError) as refused:
        binding.next_request()
    assert refused.value.status == 400


def test_empty_lines_before_a_request_are_ignored() -> None:
    binding = HttpServerBinding(max_body=100)
    binding.receive_data(b"\r\n\r\n" + LINE + b"Content-Length: 2\r\n\r\nhi")
    request = binding.next_request()
    assert isinstance(request, HttpRequest) and request.body == b"hi"


def test_an_absolute_form_target_is_the_same_path() -> None:
    binding = HttpServerBinding(max_body=100)
    binding.receive_data(b"POST http://sync.test:7401/sync?x=1 HTTP/1.1\r\nHost: sync.test:7401\r\n" + CT
                         + b"Content-Length: 2\r\n\r\nhi")
    request = binding.next_request()
    assert isinstance(request, HttpRequest) and (request.path, request.body) == ("/sync", b"hi")


def test_a_body_longer_than_its_length_is_the_start_of_the_next_request() -> None:
    binding = HttpServerBinding(max_body=100)
    binding.receive_data(LINE + b"Content-Length: 2\r\n\r\nhiGET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    first = binding.next_request()
    assert isinstance(first, HttpRequest) and first.body == b"hi"
    binding.respond(200)
    with pytest.raises(HttpBindingError) as refused:  # the rest is read as a request of its own
        binding.next_request()
    assert refused.value.status == 404


def test_the_opening_limit_holds_only_without_a_session_token() -> None:
    body = bytes(OPENING_BODY_LIMIT + 1)
    binding = HttpServerBinding(max_body=1 << 20)
    binding.receive_data(LINE + f"X-Sidekick-Session: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    request = binding.next_request()
    assert isinstance(request, HttpRequest) and len(request.body) == len(body)


def test_timed_out_answers_408_and_closes() -> None:
    binding = HttpServerBinding(max_body=100)
    assert binding.receiving == "nothing"
    binding.receive_data(LINE[:10])
    assert binding.next_request() is NEED_DATA
    assert binding.receiving == "head"
    answer = binding.timed_out()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
    assert binding.next_request() is CONNECTION_CLOSED


def test_receiving_follows_a_request_through_head_and_body() -> None:
    binding = HttpServerBinding(max_body=100)
    request = LINE + b"Content-Length: 4\r\n\r\nbody"
    binding.receive_data(request[:-2])
    assert binding.next_request() is NEED_DATA
    assert binding.receiving == "body"
    binding.receive_data(request[-2:] + LINE[:5])
    assert isinstance(binding.next_request(), HttpRequest)
    assert binding.receiving == "nothing"  # a response is owed: what follows waits
    binding.respond(200)
    assert binding.receiving == "head"


@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"Content-Length", b"Transfer-Encoding",
                                 b"chunked", b"0", b"5", b",", b"Host: h", b"X: y"]), max_size=30))
def test_any_head_built_from_framing_pieces_is_a_request_only_if_it_is_unambiguous(pieces: list[bytes]) -> None:
    head = LINE + b"".join(pieces)
    binding = HttpServerBinding(max_body=10, max_header=2048)
    binding.receive_data(head + b"\r\n\r\n" + b"z" * 10)
    binding.receive_data(b"")
    try:
        got = binding.next_request()
    except HttpBindingError as exc:
        assert exc.status in (400, 404, 405, 411, 413, 415, 501, 505)
        assert b"connection: close" in binding.respond(exc.status).lower()
        return
    if isinstance(got, HttpRequest):  # accepted: then its framing had exactly one way to read it
        text = (head + b"\r\n\r\n").split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in text.replace(b"\r\n", b"")
        assert b"\r" not in text.replace(b"\r\n", b"")
        lines = text.split(b"\r\n")[1:]
        assert not any(line[:1] in (b" ", b"\t") for line in lines)
        assert not any(line.lower().startswith(b"transfer-encoding:") for line in lines)
        assert sum(line.lower().startswith(b"content-length:") for line in lines) == 1
    else:
        assert got in (NEED_DATA, CONNECTION_CLOSED)
