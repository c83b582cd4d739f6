"""An attacker without an account, for the tests and benchmarks/server.py: slowloris sockets (a
request trickled a byte at a time, never finished) and a flood of HELLOs (each one a new session
that never authenticates), over real sockets from a chosen source address.

    python -m tests.attack --tcp HOST:PORT --http HOST:PORT [--source 127.0.0.2] [--slow 1000]
        [--flood 1000] [--seconds S]

prints ``attacking`` once the slowloris sockets are open, runs the attack until the flood has sent
``--flood`` HELLOs and ``--seconds`` have passed (with ``--until-eof``: and standard input is
closed), then prints one JSON line of counts. The open-files limit is raised as far as the hard
limit allows.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.http_common import FRAMES_CONTENT_TYPE
from sidekick_testbed.protocol.messages import Hello

__all__ = ["AttackCounts", "hello_flood", "raise_open_files", "slowloris"]

HELLO = encode_frame(Hello(1, 1, "victim", bytes(16), 65536), 0)


@dataclass
class AttackCounts:
    """What an attack did."""

    slow_opened: int = 0
    slow_closed_by_server: int = 0
    flood_sent: int = 0
    flood_answered: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def raise_open_files(wanted: int) -> int:
    """Raise the soft limit of open files to ``wanted`` (at most the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def http_hello_request(host: str, port: int) -> bytes:
    """A complete POST carrying one HELLO, without a session token."""
    return (f"POST /sync HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {FRAMES_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(HELLO)}\r\n\r\n").encode() + HELLO


async def _open(host: str, port: int, source: str | None) -> trio.SocketStream:
    return await trio.open_tcp_stream(host, port, local_address=source)


async def slowloris(host: str, port: int, count: int, data: bytes, *, source: str | None, interval: float,
                    counts: AttackCounts, stop: trio.Event, task_status: trio.TaskStatus[None],
                    first: int = 1, reopen: bool = False) -> None:
    """Open ``count`` connections that send the ``first`` bytes of ``data``, then one more byte per
    ``interval`` (never the last one; ``reopen``: a connection the server closed is replaced by
    a new one); ``task_status.started()`` once all are open; run until ``stop`` is set."""
    held: list[tuple[trio.SocketStream, int]] = []  # (connection, bytes of data sent on it)

    async def open_one() -> None:
        try:
            stream = await _open(host, port, source)
            await stream.send_all(data[:first])
        except OSError as exc:
            counts.error(f"slow open: {exc.strerror or exc}")
            return
        held.append((stream, first))
        counts.slow_opened += 1

    try:
        for _ in range(count):
            await open_one()
        task_status.started()
        while not stop.is_set():
            with trio.move_on_after(interval):
                await stop.wait()
            if stop.is_set():
                break
            current, held[:] = list(held), []
            lost = 0
            for stream, sent in current:
                if sent >= len(data) - 1:  # never the last byte
                    held.append((stream, sent))
                    continue
                try:
                    await stream.send_all(data[sent:sent + 1])
                    held.append((stream, sent + 1))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    counts.slow_closed_by_server += 1
                    await trio.aclose_forcefully(stream)
                    lost += 1
            for _ in range(lost if reopen else 0):  # a slowloris keeps its count up
                await open_one()
    finally:
        for stream, _ in held:
            await trio.aclose_forcefully(stream)


async def hello_flood(host: str, port: int, *, http: bool, source: str | None, workers: int,
                      done: Callable[[], bool], counts: AttackCounts) -> None:
    """HELLOs, each on a new connection, from ``workers`` tasks until ``done()``: over HTTP a
    POST whose answer is read (a new session each time), else a raw HELLO whose CHALLENGE is
    read. The connection is then dropped: nobody ever authenticates."""
    request = http_hello_request(host, port) if http else HELLO

    async def worker() -> None:
        while not done():
            counts.flood_sent += 1
            try:
                stream = await _open(host, port, source)
            except OSError as exc:
                counts.error(f"flood open: {exc.strerror or exc}")
                await trio.sleep(0.01)
                continue
            try:
                with trio.move_on_after(10):
                    await stream.send_all(request)
                    answer = await stream.receive_some(4096)
                    what = answer[:12].decode("latin-1") if http else ("CHALLENGE" if answer[3:4] == b"\x02"
                                                                       else answer[:4].hex())
                    counts.flood_answered[what] = counts.flood_answered.get(what, 0) + 1
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                counts.error(f"flood: {type(exc).__name__}")
            finally:
                await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _main(args: argparse.Namespace) -> AttackCounts:
    counts = AttackCounts()
    stop = trio.Event()
    tcp, http = _address(args.tcp), _address(args.http)
    head = http_hello_request(*http)
    async with trio.open_nursery() as nursery:
        half = args.slow // 2
        await nursery.start(lambda task_status: slowloris(*tcp, half, HELLO, source=args.source, interval=1.0,
                                                          counts=counts, stop=stop, task_status=task_status,
                                                          reopen=True))
        await nursery.start(lambda task_status: slowloris(*http, args.slow - half, head, source=args.source,
                                                          interval=1.0, counts=counts, stop=stop,
                                                          task_status=task_status, reopen=True))
        print("attacking", flush=True)
        deadline = trio.current_time() + args.seconds
        eof = trio.Event()
        if args.until_eof:
            async def wait_eof() -> None:
                await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
                eof.set()
            nursery.start_soon(wait_eof)
        else:
            eof.set()

        def done() -> bool:
            return counts.flood_sent >= args.flood and trio.current_time() >= deadline and eof.is_set()

        async with trio.open_nursery() as floods:
            floods.start_soon(lambda: hello_flood(*http, http=True, source=args.source, workers=25, done=done,
                                                  counts=counts))
            floods.start_soon(lambda: hello_flood(*tcp, http=False, source=args.source, workers=25, done=done,
                                                  counts=counts))
        stop.set()
        nursery.cancel_scope.cancel()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tcp", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--source", default=None)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--until-eof", action="store_true", help="also run until standard input closes")
    args = parser.parse_args()
    raise_open_files(4 * args.slow + 1024)
    counts = trio.run(_main, args)
    print(json.dumps(counts.__dict__), flush=True)


if __name__ == "__main__":
    sys.exit(main())
