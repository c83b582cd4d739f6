"""The reference sync server assembled: its parts wired together, and the listening.

``SyncServer`` is the state its parts share (``server_stub.state``) with the raw binding's
sessions (``server_stub.raw_binding``), the HTTP binding's connections and sessions
(``server_stub.http_binding``) and the admin API (``server_stub.admin``). It serves one session per
raw stream (``serve_stream``) and one HTTP connection per stream (``serve_http_stream``) on any
Trio stream, so simulations run it over memory streams; ``run`` listens on TCP ports. Every
session runs in its own task; limits end only the session that broke them. Randomness (server
nonces, HTTP tokens) comes from the ``rng`` passed in, time from the Trio clock.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import dataclass
from typing import Any

import trio

from sidekick_testbed.server_stub.admin import serve_admin_stream
from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.http_binding import HttpSessions
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.raw_binding import RawSessions
from sidekick_testbed.server_stub.state import ServerState
from sidekick_testbed.server_stub.storage import Storage

__all__ = ["Address", "ServerAddresses", "SyncServer", "peer_address"]

log = logging.getLogger("sidekick.server")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ServerAddresses:
    """Where ``run`` listens (ports resolved when 0 was asked)."""

    tcp: Address | None = None
    http: Address | None = None
    admin: Address | None = None


def peer_address(stream: trio.abc.Stream) -> str | None:
    """The client address a stream's socket is connected to, as the admission bounds count it:
    an IPv4 address, or the /64 network of an IPv6 one (one subscriber's share); None for a
    stream without a socket (in-process)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        name = sock.getpeername()
    except OSError:
        return None
    host = name[0] if isinstance(name, tuple) else str(name)
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class SyncServer(ServerState):
    """The reference server (see the module docstring)."""

    def __init__(self, storage: Storage, *, faults: FaultSet | None = None, limits: Limits | None = None,
                 rng: random.Random) -> None:
        super().__init__(storage, faults=faults, limits=limits, rng=rng)
        self.http_sessions = HttpSessions(self)
        self.raw_sessions = RawSessions(self)
        self._stop = trio.Event()

    def shutdown(self) -> None:
        """Ask ``run`` to stop: no new sessions, in-flight commits finish, sessions end."""
        self.shutting_down = True
        self._stop.set()
        for scope in list(self.wait_scopes):
            scope.cancel()

    async def serve_stream(self, stream: trio.abc.Stream, *, address: str | None = None) -> None:
        """Serve one session of the raw binding on ``stream``; returns when it is over. ``address``
        (default: the stream's peer, ``peer_address``) is the client address the bounds before
        authentication count."""
        if address is None:
            address = peer_address(stream)
        await self.raw_sessions.serve(stream, address)

    async def serve_http_stream(self, stream: trio.abc.Stream, *, address: str | None = None) -> None:
        """Serve one HTTP/1.1 connection (any number of requests, of any sessions). ``address`` as
        for ``serve_stream``: until the connection has carried a request of an authenticated
        session it holds a place before authentication."""
        if address is None:
            address = peer_address(stream)
        await self.http_sessions.serve_connection(stream, address)

    # ------------------------------------------------------------------ listening

    async def run(self, *, tcp: Address | None = None, http: Address | None = None,
                  admin: Address | None = None,
                  task_status: trio.TaskStatus[ServerAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the given addresses until ``shutdown``; ``task_status.started`` gets the addresses."""
        bound: dict[str, Address] = {}
        async with trio.open_nursery() as outer:
            sessions_scope = trio.CancelScope()
            listen_scopes = [trio.CancelScope(), trio.CancelScope()]
            admin_scope = trio.CancelScope()

            async def guarded(handler: Any, stream: Any) -> None:
                try:
                    await handler(stream)
                except Exception:
                    log.exception("connection handler failed")

            async def sessions_nursery(task_status: trio.TaskStatus[trio.Nursery]) -> None:
                with sessions_scope:
                    async with trio.open_nursery() as nursery:
                        task_status.started(nursery)
                        await trio.sleep_forever()

            session_nursery = await outer.start(sessions_nursery)
            targets = [("tcp", tcp, self.serve_stream, listen_scopes[0]),
                       ("http", http, self.serve_http_stream, listen_scopes[1]),
                       ("admin", admin, lambda s: serve_admin_stream(self, s), admin_scope)]
            for name, address, handler, scope in targets:
                if address is None:
                    continue
                host, port = address
                try:
                    listeners = await trio.open_tcp_listeners(port, host=host)
                except OSError as exc:  # say which of the addresses could not be had
                    raise OSError(exc.errno, f"{exc.strerror or exc} ({name} on {host}:{port})") from exc
                sockname = listeners[0].socket.getsockname()
                bound[name] = (sockname[0], sockname[1])

                async def serve(listeners: Any = listeners, handler: Any = handler, scope: Any = scope) -> None:
                    with scope:
                        await trio.serve_listeners(lambda s: guarded(handler, s), listeners,
                                                   handler_nursery=session_nursery)

                outer.start_soon(serve)
            outer.start_soon(self._reaper)
            log.info("serving tcp=%s http=%s admin=%s generation=%#x server_id=%s", bound.get("tcp"),
                     bound.get("http"), bound.get("admin"), self.storage.generation, self.storage.server_id.hex())
            task_status.started(ServerAddresses(bound.get("tcp"), bound.get("http"), bound.get("admin")))
            await self._stop.wait()
            log.info("shutting down: %d session(s) in progress", self.active_sessions)
            self.shutting_down = True
            for scope in listen_scopes:
                scope.cancel()
            for scope in list(self.wait_scopes):
                scope.cancel()
            with trio.move_on_after(self.limits.shutdown_grace):
                await self.raw_sessions.all_ended()
            self.http_sessions.close_all()
            sessions_scope.cancel()
            admin_scope.cancel()
            outer.cancel_scope.cancel()
        log.info("stopped")

    async def _reaper(self) -> None:
        limits = self.limits
        while True:
            await trio.sleep(max(0.5, min(limits.idle_timeout, limits.handshake_timeout) / 4))
            self.http_sessions.expire()
