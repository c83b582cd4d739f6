"""Checks of the HTTP binding: statuses, session tokens, the end of a session."""

from __future__ import annotations

import h11
import trio

from sidekick_testbed.emulator.certify.answers import show
from sidekick_testbed.emulator.certify.client import HttpRefusal, open_stream
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Fail, Level, Need, expect
from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.http_common import FRAMES_CONTENT_TYPE, SESSION_HEADER
from sidekick_testbed.protocol.messages import Bye, Hello, Ping

HTTP_ONLY = (Need.HTTP,)


async def http_exchange(ctx: CheckContext, method: str, target: str, headers: list[tuple[str, str]],
                        body: bytes = b"", *, chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request on a new connection; the response's status, headers and body."""
    host = f"{ctx.target.host}:{ctx.target.port}"
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("Host", host), *headers]
    if chunked:
        all_headers.append(("Transfer-Encoding", "chunked"))
    elif method == "POST":
        all_headers.append(("Content-Length", str(len(body))))
    out = conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    ctx.trace.add("http", ">", f"{method} {target} {dict(headers)} body {len(body)} bytes")
    stream = await open_stream(ctx.target.host, ctx.target.port, ctx.target.timeout)
    status, found, data = 0, {}, bytearray()
    try:
        await stream.send_all(out)
        with trio.move_on_after(ctx.target.timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    found = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError) as exc:
        ctx.trace.add("http", "<", f"broken response: {exc}")
        raise Fail(f"{method} {target}: the server's answer is not valid HTTP/1.1 ({exc})") from None
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    ctx.trace.add("http", "<", f"HTTP {status} {found} {bytes(data[:60])!r}")
    return status, found, bytes(data)


def _ping() -> bytes:
    return encode_frame(Ping(1), 0)


@check("http-statuses", "Wrong path, method, content type, length or token get the statuses of the binding",
       requirements=("R-HTTP-7", "R-HTTP-1"), level=Level.MUST, group="http", needs=HTTP_ONLY)
async def http_statuses(ctx: CheckContext) -> None:
    frames = [("Content-Type", FRAMES_CONTENT_TYPE)]
    path = ctx.target.http_path
    cases = [
        ("a path other than /sync", "POST", "/certify-nowhere", frames, _ping(), False, 404),
        ("GET", "GET", path, [], b"", False, 405),
        ("Content-Type text/plain", "POST", path, [("Content-Type", "text/plain")], _ping(), False, 415),
        ("no Content-Length (chunked)", "POST", path, frames, _ping(), True, 411),
        ("an unknown session token", "POST", path, [*frames, (SESSION_HEADER, "certify-unknown-" + ctx.new_id().hex())],
         _ping(), False, 410),
        ("a malformed session token", "POST", path, [*frames, (SESSION_HEADER, "x" * 300)], _ping(), False, 400),
    ]
    for what, method, target, headers, body, chunked, want in cases:
        status, found, _ = await http_exchange(ctx, method, target, headers, body, chunked=chunked)
        expect(status == want, f"a request with {what} got HTTP {status}, expected {want} (R-HTTP-7)")
        if want == 405:
            expect("POST" in found.get("allow", ""), "405 without 'Allow: POST' (R-HTTP-7)")


@check("http-body-too-large", "A request announcing a body over the server's limit gets 413 without being read",
       requirements=("R-HTTP-10", "R-HTTP-7"), level=Level.MUST, group="http", needs=HTTP_ONLY)
async def http_body_too_large(ctx: CheckContext) -> None:
    host = f"{ctx.target.host}:{ctx.target.port}"
    head = (f"POST {ctx.target.http_path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {FRAMES_CONTENT_TYPE}\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n").encode()
    stream = await open_stream(ctx.target.host, ctx.target.port, ctx.target.timeout)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target=ctx.target.http_path,
                          headers=[("Host", host), ("Content-Length", str(1 << 30))]))  # h11 now awaits the response
    ctx.trace.add("big", ">", "POST announcing a 1 GiB body, then 4 KiB of it")
    status = 0
    try:
        await stream.send_all(head + bytes(4096))
        with trio.move_on_after(ctx.target.timeout):
            while not status:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        break
                elif isinstance(event, h11.Response):
                    status = event.status_code
    except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError) as exc:
        ctx.trace.add("big", "<", f"connection ended: {exc}")
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    ctx.trace.add("big", "<", f"HTTP {status}" if status else "no response")
    expect(status == 413, f"a request announcing a 1 GiB body got {status or 'no answer'}, expected 413 (R-HTTP-10)")


@check("http-session-token", "The first response names the session with an unpredictable token",
       requirements=("R-HTTP-2", "R-HTTP-4"), level=Level.MUST, group="http", needs=(Need.SESSION, Need.HTTP))
async def http_session_token(ctx: CheckContext) -> None:
    tokens = []
    for _ in range(2):
        hello = encode_frame(Hello(1, 1, ctx.account().name, ctx.new_id(), 65536), 0)
        status, found, body = await http_exchange(ctx, "POST", ctx.target.http_path,
                                                  [("Content-Type", FRAMES_CONTENT_TYPE)], hello)
        expect(status == 200, f"a POST carrying HELLO got HTTP {status} (R-HTTP-2)")
        token = found.get(SESSION_HEADER.lower())
        expect(token is not None, f"the answer to HELLO has no {SESSION_HEADER} header (R-HTTP-2)")
        assert token is not None
        expect(len(token) >= 22 and token.isprintable(),
               f"session token {token!r} is too short to hold 128 random bits (R-HTTP-4)")
        tokens.append(token)
    expect(tokens[0] != tokens[1], "two sessions got the same token (R-HTTP-4)")


@check("http-session-ends", "After BYE the session's token is unknown (410)",
       requirements=("R-HTTP-8", "R-HTTP-3"), level=Level.MUST, group="http", needs=(Need.SESSION, Need.HTTP))
async def http_session_ends(ctx: CheckContext) -> None:
    session = await ctx.session()
    await session.ping()
    await session.client.send(Bye("certify"))
    await session.client.send(Ping(2))
    got = await session.client.receive()
    if not (isinstance(got, HttpRefusal) and got.status == 410):
        raise Fail(f"a request on the token of a session ended by BYE got {show(got)}, expected HTTP 410 (R-HTTP-8)")


@check("http-keep-alive", "The server keeps the HTTP connection open across the requests of a session",
       requirements=("R-HTTP-9",), level=Level.SHOULD, group="http", needs=(Need.SESSION, Need.HTTP))
async def http_keep_alive(ctx: CheckContext) -> None:
    session = await ctx.session()
    for nonce in range(3):
        await session.ping(nonce)
    expect(session.client.connections == 1,
           f"a session of 5 requests needed {session.client.connections} connections: the server closes "
           "connections it could keep (R-HTTP-9)")
    await session.bye()
