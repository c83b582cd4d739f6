"""A radio link between one handset and the in-process server, timed on the run's ``SimClock``.

Each connection is a ``RadioLink``: two one-way byte queues, no pump task. A chunk written at
time ``t`` leaves the sender when the link is free (``max(t, free_at)``), takes
``bytes * 8 / rate`` seconds on the air (the sender's ``send_all`` waits for what exceeds a
small send buffer), and arrives half a round trip later; a waiting reader sleeps on a clock alarm
that the writer brings forward to the arrival. The link breaks at ``drop_at`` (a lost radio
bearer: both ends then see a broken connection) or when the world breaks it (server crash or
outage). ``Coverage`` draws a device's periods without any coverage (partitions): connecting
then fails at once, and a partition that starts mid-sync breaks the link.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio
import trio.lowlevel

from sidekick_testbed.emulator.fleet.profiles import NetworkProfile
from sidekick_testbed.emulator.handset.transport import (
    Channel,
    ConnectFailed,
    Connector,
    TransportError,
    TransportTimeout,
)
from sidekick_testbed.emulator.sim.clock import Alarm, SimClock

__all__ = ["Coverage", "LinkTally", "RadioLink", "radio_connector"]


class _Broken(Exception):
    """The link is gone (drop, partition, server crash)."""


class _TimedOut(Exception):
    """A send or a receive reached its deadline (nothing arrived, or the send buffer did not drain)."""


@dataclass(slots=True)
class LinkTally:
    """What the links of one sync carried: bytes each way, connections opened, drops."""

    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    drops: int = 0


SEND_BUFFER = 16 * 1024
"""Bytes a sender may have queued on the air before ``send_all`` waits (a small socket buffer)."""


class _Direction:
    """One way of a link: queued chunks as (arrival time, bytes); b"" marks end of stream.
    A reader waiting for data sleeps on the ``waiter`` alarm, which the writer brings forward to
    the arrival time of what it queued: one wake-up per delivery."""

    __slots__ = ("queue", "free_at", "rate", "waiter", "closed", "clock")

    def __init__(self, rate: float, clock: SimClock) -> None:
        self.queue: deque[tuple[float, bytes]] = deque()
        self.free_at = 0.0
        self.rate = rate
        self.waiter: Alarm | None = None
        self.closed = False
        self.clock = clock

    def wake_at(self, when: float) -> None:
        if self.waiter is not None:
            self.clock.ring(self.waiter, when)


def _run_clock() -> SimClock:
    """The clock of the run this is called in: radio links need its alarms."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, SimClock):
        raise TypeError("radio links run on a SimClock: trio.run(..., clock=SimClock())")
    return clock


class RadioLink:
    """One connection: ``device`` is the handset's Channel, ``server`` the server's Trio stream.
    Made inside a ``trio.run`` on a ``SimClock``, whose alarms time it."""

    def __init__(self, profile: NetworkProfile, *, drop_at: float, tally: LinkTally) -> None:
        self.clock = clock = _run_clock()
        self.half_rtt = profile.rtt / 2
        self.up = _Direction(profile.up_bps, clock)
        self.down = _Direction(profile.down_bps, clock)
        self.drop_at = drop_at
        self.tally = tally
        self.broken = False
        self.ident = 0
        self.device = _DeviceEnd(self)
        self.server = _ServerEnd(self)

    def break_link(self) -> None:
        """Break the connection now: both ends fail on their next operation."""
        if not self.broken:
            self.broken = True
            self.up.wake_at(-math.inf)
            self.down.wake_at(-math.inf)

    def _check(self) -> None:
        if not self.broken and self.clock.current_time() >= self.drop_at:
            self.tally.drops += 1
            self.break_link()
        if self.broken:
            raise _Broken

    async def send(self, way: _Direction, data: bytes, upstream: bool, deadline: float = math.inf) -> None:
        """Queue ``data`` on ``way``; wait while more than the send buffer is still to leave.
        _TimedOut if that wait reaches ``deadline`` (the data stays queued, as on a socket)."""
        self._check()
        if way.closed:
            raise _Broken
        now = self.clock.current_time()
        done = max(now, way.free_at) + len(data) * 8 / way.rate
        way.free_at = done
        arrival = done + self.half_rtt
        way.queue.append((arrival, bytes(data)))
        way.wake_at(arrival)
        if upstream:
            self.tally.bytes_up += len(data)
        else:
            self.tally.bytes_down += len(data)
        buffered_until = done - SEND_BUFFER * 8 / way.rate
        if buffered_until > now:
            wake = min(buffered_until, self.drop_at, deadline)
            await self.clock.sleep_until(wake)
            self._check()
            if deadline <= buffered_until:
                raise _TimedOut
        # Otherwise no schedule point: the write is buffered, and every sync task blocks on its
        # next receive, so skipping the checkpoint starves nobody and saves a scheduler pass.

    async def receive(self, way: _Direction, deadline: float = math.inf) -> bytes:
        """What has arrived on ``way``; b"" at end of stream; _TimedOut from ``deadline`` on
        (what arrives at the deadline is late, as under a cancel scope with that deadline)."""
        while True:
            self._check()
            now = self.clock.current_time()
            if now >= deadline:
                raise _TimedOut
            if way.queue and way.queue[0][0] <= now:
                parts: list[bytes] = []
                while way.queue and way.queue[0][0] <= now:
                    data = way.queue[0][1]
                    if not data:
                        if not parts:
                            return b""
                        break
                    way.queue.popleft()
                    parts.append(data)
                return b"".join(parts)
            alarm = way.waiter = Alarm(min(way.queue[0][0] if way.queue else math.inf, self.drop_at, deadline))
            try:
                await self.clock.wait(alarm)
            finally:
                way.waiter = None

    def close(self, way: _Direction) -> None:
        """End of stream from the writer of ``way`` (arrives after what is queued)."""
        if not way.closed:
            way.closed = True
            arrival = max(self.clock.current_time(), way.free_at) + self.half_rtt
            way.queue.append((arrival, b""))
            way.wake_at(arrival)


class _DeviceEnd:
    """The handset's side: a ``emulator.handset.transport.Channel``."""

    def __init__(self, link: RadioLink) -> None:
        self.link = link

    async def send_all(self, data: bytes, deadline: float = math.inf) -> None:
        try:
            await self.link.send(self.link.up, data, True, deadline)
        except _Broken:
            raise TransportError("radio link lost while sending") from None
        except _TimedOut:
            raise TransportTimeout("the send buffer did not drain before the deadline") from None

    async def receive_some(self, deadline: float = math.inf) -> bytes:
        try:
            return await self.link.receive(self.link.down, deadline)
        except _Broken:
            raise TransportError("radio link lost while receiving") from None
        except _TimedOut:
            raise TransportTimeout("nothing received before the deadline") from None

    async def aclose(self) -> None:
        self.link.close(self.link.up)
        self.link.down.closed = True
        # The sync client closes its channel under a shield: a schedule point without a cancel
        # scope of its own (same order of tasks, no Cancelled raised and caught to no end).
        await trio.lowlevel.cancel_shielded_checkpoint()


class _ServerEnd(trio.abc.Stream):
    """The server's side: a Trio stream for ``SyncServer.serve_stream``."""

    def __init__(self, link: RadioLink) -> None:
        self.link = link
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_all_before(data, math.inf)

    async def send_all_before(self, data: bytes | bytearray | memoryview, deadline: float) -> None:
        """``send_all`` bounded by ``deadline`` (trio.TooSlowError), timed on the link's clock."""
        if self._closed:
            raise trio.ClosedResourceError
        try:
            await self.link.send(self.link.down, bytes(data), False, deadline)
        except _Broken:
            raise trio.BrokenResourceError("radio link lost") from None
        except _TimedOut:
            raise trio.TooSlowError from None

    async def receive_some_before(self, max_bytes: int | None, deadline: float) -> bytes:
        """``receive_some`` bounded by ``deadline`` (trio.TooSlowError), timed on the link's clock."""
        if self._closed:
            raise trio.ClosedResourceError
        try:
            return await self.link.receive(self.link.up, deadline)
        except _Broken:
            raise trio.BrokenResourceError("radio link lost") from None
        except _TimedOut:
            raise trio.TooSlowError from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.receive_some_before(max_bytes, math.inf)

    def close(self) -> None:
        """Close now (``aclose`` without the checkpoint)."""
        if not self._closed:
            self._closed = True
            self.link.close(self.link.down)
            self.link.up.closed = True

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class Coverage:
    """A device's partitions (no coverage at all): a Poisson process of windows drawn lazily."""

    __slots__ = ("rng", "rate", "mean", "start", "end")

    def __init__(self, profile: NetworkProfile, rng: random.Random) -> None:
        self.rng = rng
        self.rate = profile.partitions_per_day / 86400
        self.mean = profile.partition_mean
        self.start = math.inf
        self.end = math.inf
        if self.rate > 0 and self.mean > 0:
            self.start = rng.expovariate(self.rate)
            self.end = self.start + rng.expovariate(1 / self.mean)

    def _advance(self, now: float) -> None:
        while self.end <= now:
            self.start = self.end + self.rng.expovariate(self.rate)
            self.end = self.start + self.rng.expovariate(1 / self.mean)

    def covered(self, now: float) -> bool:
        """False while a partition lasts."""
        self._advance(now)
        return not self.start <= now

    def next_gap(self, now: float) -> float:
        """When the current or next partition starts (inf if the profile has none)."""
        self._advance(now)
        return self.start


def radio_connector(
    serve: Callable[[trio.abc.Stream], object],
    profile: NetworkProfile,
    coverage: Coverage,
    rng: random.Random,
    tally: LinkTally,
    world: RadioWorld,
) -> Connector:
    """A Connector over radio links: refuses while the device has no coverage or the server is
    down; each connection may drop (profile's rate) and breaks when a partition starts."""
    rate = profile.disconnects_per_hour / 3600

    async def connect() -> Channel:
        now = trio.current_time()
        if not coverage.covered(now) and world.partitions:
            await trio.lowlevel.checkpoint()
            raise ConnectFailed("no radio coverage")
        if not world.server_up:
            await world.clock.sleep_until(now + profile.rtt)
            raise ConnectFailed("server unavailable: connection refused")
        drop_at = math.inf
        if world.drops and rate > 0:
            drop_at = now + rng.expovariate(rate)
        if world.partitions:
            drop_at = min(drop_at, coverage.next_gap(now))
        link = RadioLink(profile, drop_at=drop_at, tally=tally)
        tally.connections += 1
        world.open(link)
        world.nursery.start_soon(_serve, serve, link, world)
        return link.device

    return connect


async def _serve(serve: Callable[[trio.abc.Stream], object], link: RadioLink, world: RadioWorld) -> None:
    """Run one server session on the link; ``serve`` closes the stream it was given when it ends."""
    try:
        await serve(link.server)  # type: ignore[misc]
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        world.close(link)
        link.server.close()


class RadioWorld:
    """What every link shares: the server's availability, the open links, fault switches."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.clock = _run_clock()
        self.server_up = True
        self.drops = True
        self.partitions = True
        self._links: dict[int, RadioLink] = {}
        self._next = 0

    def open(self, link: RadioLink) -> None:
        """Track an open link so that ``break_all`` reaches it."""
        self._next += 1
        link.ident = self._next
        self._links[link.ident] = link

    def close(self, link: RadioLink) -> None:
        """Forget a link whose server session ended."""
        self._links.pop(link.ident, None)

    def break_all(self) -> None:
        """The server went away: every open connection breaks."""
        for link in list(self._links.values()):
            link.break_link()
        self._links.clear()

    @property
    def open_links(self) -> int:
        """Connections currently open."""
        return len(self._links)
