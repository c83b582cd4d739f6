"""The simulated network: in-memory connections between handsets and the server, with faults.

Every connection is four one-way pipes and two pump tasks (device to server, server to device). A pump moves each chunk it reads and, with the probabilities of
``NetworkFaults`` drawn from the network's own seeded RNG, does one of:

- ``drop``: the chunk is lost, the stream goes on (the receiver sees a gap);
- ``delay``: the chunk (and everything behind it) waits up to ``max_delay`` seconds;
- ``stall``: device-to-server bytes wait longer than the device's timeout and still reach the
  server afterwards, while the device has already reconnected (reordering across reconnects);
- ``duplicate``: the chunk is delivered twice;
- ``truncate``: part of the chunk is delivered, then the connection is reset;
- ``corrupt``: one bit of the chunk is flipped;
- ``reset``: the connection is reset before the chunk.

``partition(device, seconds)`` makes a device unreachable: connects fail and bytes on its open
connections wait until the partition ends. While the server is down, connects are refused.
Both bindings run over it: raw frames, and HTTP POSTs (``emulator.handset.transport.HttpChannel``).

While no fault can touch a new connection (no per-chunk fault on, no partition possible: a swarm
without network faults, and every connection of the heal phase), its two ends are joined
directly, without pump tasks: what one end sends is at once readable at the other. The pipes are
the network's own (``_Pipe``): a byte buffer and at most one parked reader, with the close and
reset behaviour of Trio's memory streams at a fraction of their cost.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import trio

from sidekick_testbed.emulator.handset.transport import (
    RECEIVE_SIZE,
    Channel,
    ConnectFailed,
    Connector,
    HttpChannel,
    StreamChannel,
    TransportError,
    TransportTimeout,
)
from sidekick_testbed.emulator.sim.clock import Alarm, SimClock
from sidekick_testbed.emulator.sim.trace_log import Timeline

__all__ = ["FAULT_KINDS", "Binding", "ConnectionTap", "NetworkFaults", "ServerSpawner", "SimNetwork"]

Binding = str  # "raw" or "http"
ServerSpawner = Callable[[Binding, trio.abc.Stream], None]
"""Starts the server's handler for one new connection (the server's end of the stream)."""

FAULT_KINDS = ("drop", "delay", "stall", "duplicate", "truncate", "corrupt", "reset")
_SILENT = (trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    """Per-chunk probability of each fault (0 = off), and the delays they use."""

    drop: float = 0.0
    delay: float = 0.0
    stall: float = 0.0
    duplicate: float = 0.0
    truncate: float = 0.0
    corrupt: float = 0.0
    reset: float = 0.0
    max_delay: float = 5.0
    stall_min: float = 35.0
    stall_max: float = 120.0

    def __post_init__(self) -> None:
        for name in FAULT_KINDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"network fault probability {name}={value} outside [0, 1]")
        if sum(getattr(self, name) for name in FAULT_KINDS) > 1.0:
            raise ValueError("network fault probabilities add up to more than 1")
        if self.max_delay < 0 or not 0 <= self.stall_min <= self.stall_max:
            raise ValueError("bad network delays")

    @property
    def any(self) -> bool:
        """True if some fault can happen."""
        return any(getattr(self, name) for name in FAULT_KINDS)

    def as_dict(self) -> dict[str, float]:
        """Every field, for traces."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Pipe:
    """One direction of a connection: bytes written wait in a buffer for the one reader.

    A write after the reader closed raises ``BrokenResourceError``; a read returns what is
    buffered, then ``b""`` once the writer closed (end of stream). A read with a deadline waits
    on an alarm of the world's ``SimClock`` (no cancel scope) and raises ``trio.TooSlowError``.
    """

    __slots__ = ("buffer", "eof", "broken", "reader", "alarm", "clock", "tap")

    def __init__(self, clock: SimClock | None) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.broken = False
        self.reader: trio.lowlevel.Task | None = None
        self.alarm: Alarm | None = None
        self.clock = clock
        self.tap: PipeTap | None = None
        """Sees what this pipe delivers to its reader (a packet capture); changes nothing."""

    def write(self, data: bytes) -> None:
        if self.broken:
            raise trio.BrokenResourceError("connection reset")
        if self.eof:
            raise trio.ClosedResourceError("the stream is closed")
        self.buffer += data
        if self.tap is not None:
            self.tap.delivered(data)
        self._wake()

    def close_writer(self) -> None:
        if self.tap is not None and not self.eof:
            self.tap.ended()
        self.eof = True
        self._wake()

    def close_reader(self) -> None:
        if self.tap is not None and not self.eof:
            self.tap.ended()
        self.broken = True
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        reader = self.reader
        if reader is not None:
            self.reader = None
            trio.lowlevel.reschedule(reader)
        alarm = self.alarm
        if alarm is not None and self.clock is not None:
            self.alarm = None
            self.clock.ring(alarm, self.clock.current_time())

    async def read(self, max_bytes: int | None, deadline: float = math.inf) -> bytes:
        if not self.buffer and not self.eof:
            if self.reader is not None or self.alarm is not None:
                raise trio.BusyResourceError("another task is reading")
            if deadline != math.inf and self.clock is not None:
                alarm = self.alarm = Alarm(deadline)
                try:
                    await self.clock.wait(alarm)
                finally:
                    self.alarm = None
                if not self.buffer and not self.eof:
                    raise trio.TooSlowError
            else:
                self.reader = trio.lowlevel.current_task()

                def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
                    self.reader = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.checkpoint()
        buffer = self.buffer
        if max_bytes is None or max_bytes >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        return data


class _End(trio.abc.Stream):
    """One end of a connection: writes into one pipe, reads from another."""

    def __init__(self, out: _Pipe, into: _Pipe) -> None:
        self._out = out
        self._in = into
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._out.write(bytes(data))
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        return await self._in.read(max_bytes)

    async def receive_some_before(self, max_bytes: int | None, deadline: float) -> bytes:
        """``receive_some`` bounded by ``deadline`` (``trio.TooSlowError``), on the world's clock."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        return await self._in.read(max_bytes, deadline)

    async def send_all_before(self, data: bytes | bytearray | memoryview, deadline: float) -> None:
        """``send_all``: it never waits (the network takes every byte at once)."""
        await self.send_all(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.close_writer()
            self._in.close_reader()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class _RawChannel:
    """The raw binding's device end (an ``emulator.handset.transport.Channel``), its deadlines kept by
    the world's clock instead of a cancel scope per read."""

    def __init__(self, end: _End) -> None:
        self._end = end

    async def send_all(self, data: bytes, deadline: float = math.inf) -> None:
        try:
            await self._end.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"connection lost while sending: {exc or type(exc).__name__}") from exc

    async def receive_some(self, deadline: float = math.inf) -> bytes:
        try:
            return await self._end.receive_some_before(RECEIVE_SIZE, deadline)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"connection lost while receiving: {exc or type(exc).__name__}") from exc
        except trio.TooSlowError:
            raise TransportTimeout("nothing received before the deadline") from None

    async def aclose(self) -> None:
        self._end.close()
        await trio.lowlevel.checkpoint()


class _Connection:
    """One simulated connection: its pipes, its state, its id. ``direct``: the two ends share
    their pipes (no pumps); otherwise pumps move chunks from ``up_in`` to ``up_out`` and from
    ``down_in`` to ``down_out`` through the fault model."""

    def __init__(self, number: int, device: str, binding: Binding, direct: bool, clock: SimClock | None) -> None:
        self.number = number
        self.device = device
        self.binding = binding
        self.direct = direct
        self.up_in = _Pipe(clock)                                  # device -> net
        self.up_out = self.up_in if direct else _Pipe(clock)       # net -> server
        self.down_in = _Pipe(clock)                                # server -> net
        self.down_out = self.down_in if direct else _Pipe(clock)   # net -> device
        self.device_stream = _End(self.up_in, self.down_out)
        self.server_stream = _End(self.down_in, self.up_out)
        self.reset = False

    async def abort(self) -> None:
        """Reset: every end closed at once; both peers see the connection break."""
        self.reset = True
        for pipe in (self.up_in, self.down_in):
            pipe.close_reader()
        for pipe in (self.up_out, self.down_out):
            pipe.close_writer()
        await trio.lowlevel.checkpoint()


class PipeTap(Protocol):
    """Sees one direction of a connection as its reader gets it."""

    def delivered(self, data: bytes) -> None: ...

    def ended(self) -> None: ...


class ConnectionTap(Protocol):
    """Sees every connection as it opens (``emulator.sim.pcap`` records what crosses it)."""

    def attach(self, conn: _Connection, timeline: Timeline) -> None: ...


class SimNetwork:
    """In-memory network with faults between named devices and one server."""

    def __init__(self, rng: random.Random, faults: NetworkFaults, timeline: Timeline,
                 nursery: trio.Nursery, *, partitions: bool = True, clock: SimClock | None = None,
                 tap: ConnectionTap | None = None) -> None:
        self.rng = rng
        self.clock = clock
        """The run's clock, if a ``SimClock``: reads with deadlines wait on its alarms."""
        self.faults = faults
        self.partitions = partitions
        """Whether partitions may happen (else, with no chunk faults, connections are direct)."""
        self.timeline = timeline
        self._nursery = nursery
        self._spawn: ServerSpawner | None = None
        self._partitions: dict[str, float] = {}
        self._open: dict[int, _Connection] = {}
        self._next = 0
        self.injected: Counter[str] = Counter()
        self.connections = 0
        self.bytes = 0
        self.tap = tap

    # ------------------------------------------------------------------ control

    def set_server(self, spawn: ServerSpawner | None) -> None:
        """The server now accepting connections (None: down, connects are refused)."""
        self._spawn = spawn

    def set_faults(self, faults: NetworkFaults) -> None:
        """Replace the fault probabilities (``NetworkFaults()`` heals the network)."""
        self.faults = faults

    def partition(self, device: str, seconds: float) -> None:
        """Make ``device`` unreachable for ``seconds`` of simulated time."""
        until = trio.current_time() + seconds
        self._partitions[device] = max(until, self._partitions.get(device, 0.0))
        self._count("partition", device=device, seconds=round(seconds, 3))

    def heal(self) -> None:
        """No more faults, no partitions."""
        self.faults = NetworkFaults()
        self._partitions.clear()
        self.partitions = False

    async def reset_all(self) -> None:
        """Reset every open connection (the server process died)."""
        for conn in [self._open[number] for number in sorted(self._open)]:
            await conn.abort()

    def partitioned(self, device: str) -> bool:
        """True while ``device`` is cut off."""
        return self._partitions.get(device, 0.0) > trio.current_time()

    # ------------------------------------------------------------------ connecting

    def connector(self, device: str, binding: Binding) -> Connector:
        """How ``device`` reaches the server over ``binding`` ("raw" or "http")."""
        if binding not in ("raw", "http"):
            raise ValueError(f"unknown binding {binding!r}")

        async def open_stream() -> trio.abc.Stream:
            return (await self._connect(device, binding)).device_stream

        async def connect() -> Channel:
            conn = await self._connect(device, binding)
            if binding == "raw":
                return _RawChannel(conn.device_stream) if self.clock is not None else StreamChannel(conn.device_stream)
            return HttpChannel(conn.device_stream, "sidekick.sim", reopen=open_stream)

        return connect

    async def _connect(self, device: str, binding: Binding) -> _Connection:
        await trio.sleep(0)
        if self.partitioned(device):
            raise ConnectFailed(f"{device}: network unreachable (partition)")
        spawn = self._spawn
        if spawn is None:
            raise ConnectFailed(f"{device}: connection refused (server down)")
        self._next += 1
        conn = _Connection(self._next, device, binding, not self.partitions and not self.faults.any, self.clock)
        if self.tap is not None:
            self.tap.attach(conn, self.timeline)
        self._open[conn.number] = conn
        self.connections += 1
        spawn(binding, conn.server_stream)
        if conn.direct:  # no pump to end it: forget it once both directions are closed
            for number in [n for n, c in self._open.items() if c.direct and c.up_in.eof and c.down_in.eof]:
                del self._open[number]
        else:
            self._nursery.start_soon(self._run_connection, conn)
        return conn

    async def _run_connection(self, conn: _Connection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, conn, True)
            nursery.start_soon(self._pump, conn, False)
        self._open.pop(conn.number, None)

    # ------------------------------------------------------------------ pumps

    async def _pump(self, conn: _Connection, upstream: bool) -> None:
        source = conn.up_in if upstream else conn.down_in
        sink = conn.up_out if upstream else conn.down_out
        try:
            while not conn.reset:
                data = await source.read(None)
                if not data:
                    break
                await self._wait_partition(conn.device)
                if not await self._deliver(conn, upstream, data, sink):
                    return
        except _SILENT:
            pass
        finally:
            if not conn.reset:
                sink.close_writer()
                source.close_reader()

    async def _wait_partition(self, device: str) -> None:
        until = self._partitions.get(device, 0.0)
        if until > trio.current_time():
            await trio.sleep_until(until)

    async def _deliver(self, conn: _Connection, upstream: bool, data: bytes, sink: _Pipe) -> bool:
        """Forward one chunk through the fault model; False once the connection is gone."""
        self.bytes += len(data)
        fault = self._pick(upstream)
        where = {"conn": conn.number, "device": conn.device, "dir": "up" if upstream else "down",
                 "bytes": len(data)}
        if fault is None:
            sink.write(data)
            return True
        if fault == "reset":
            self._count("reset", **where)
            await conn.abort()
            return False
        if fault == "truncate":
            cut = self.rng.randrange(len(data))
            self._count("truncate", kept=cut, **where)
            if cut:
                sink.write(data[:cut])
            await conn.abort()
            return False
        if fault == "drop":
            self._count("drop", **where)
            return True
        if fault == "corrupt":
            index = self.rng.randrange(len(data))
            bit = self.rng.randrange(8)
            self._count("corrupt", offset=index, bit=bit, **where)
            mutable = bytearray(data)
            mutable[index] ^= 1 << bit
            sink.write(bytes(mutable))
            return True
        if fault == "duplicate":
            self._count("duplicate", **where)
            sink.write(data)
            sink.write(data)
            return True
        if fault == "delay":
            seconds = self.rng.uniform(0.0, self.faults.max_delay)
            self._count("delay", seconds=round(seconds, 3), **where)
        else:
            seconds = self.rng.uniform(self.faults.stall_min, self.faults.stall_max)
            self._count("stall", seconds=round(seconds, 3), **where)
        await trio.sleep(seconds)
        if conn.reset:
            return False
        sink.write(data)
        return True

    def _pick(self, upstream: bool) -> str | None:
        faults = self.faults
        if not faults.any:
            return None
        roll = self.rng.random()
        for name in FAULT_KINDS:
            if name == "stall" and not upstream:
                continue
            chance = getattr(faults, name)
            if roll < chance:
                return name
            roll -= chance
        return None

    def _count(self, kind: str, **fields: object) -> None:
        self.injected[kind] += 1
        self.timeline.record("net." + kind, **fields)

