"""The simulated network: in-memory connections between handsets and the server, with faults.

Every connection is four ``trio.testing`` one-way memory streams and two pump tasks (device to
server, server to device). A pump moves each chunk it reads and, with the probabilities of
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
Both bindings run over it: raw frames, and HTTP POSTs (``emulator.transport.HttpChannel``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import trio

from emulator.sim.trace_log import Timeline
from emulator.transport import Channel, ConnectFailed, Connector, HttpChannel, StreamChannel

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


class _Connection:
    """One simulated connection: its streams, its state, its id."""

    def __init__(self, number: int, device: str, binding: Binding) -> None:
        self.number = number
        self.device = device
        self.binding = binding
        import trio.testing  # noqa: PLC0415 - only here: it imports pytest, slow for every command

        self.up_send, self.up_recv = trio.testing.memory_stream_one_way_pair()      # device -> net
        self.to_server, self.server_recv = trio.testing.memory_stream_one_way_pair()  # net -> server
        self.server_send, self.down_recv = trio.testing.memory_stream_one_way_pair()  # server -> net
        self.to_device, self.device_recv = trio.testing.memory_stream_one_way_pair()  # net -> device
        self.device_stream = trio.StapledStream(self.up_send, self.device_recv)
        self.server_stream = trio.StapledStream(self.server_send, self.server_recv)
        self.reset = False

    async def abort(self) -> None:
        """Reset: every end closed at once; both peers see the connection break."""
        self.reset = True
        for stream in (self.up_recv, self.to_server, self.down_recv, self.to_device):
            await trio.aclose_forcefully(stream)


class ConnectionTap(Protocol):
    """Sees every connection as it opens (``emulator.capture.sim`` records what crosses it)."""

    def attach(self, conn: _Connection, timeline: Timeline) -> None: ...


class SimNetwork:
    """In-memory network with faults between named devices and one server."""

    def __init__(self, rng: random.Random, faults: NetworkFaults, timeline: Timeline,
                 nursery: trio.Nursery, tap: ConnectionTap | None = None) -> None:
        self.rng = rng
        self.faults = faults
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
            stream = await open_stream()
            if binding == "raw":
                return StreamChannel(stream)
            return HttpChannel(stream, "sidekick.sim", reopen=open_stream)

        return connect

    async def _connect(self, device: str, binding: Binding) -> _Connection:
        await trio.sleep(0)
        if self.partitioned(device):
            raise ConnectFailed(f"{device}: network unreachable (partition)")
        spawn = self._spawn
        if spawn is None:
            raise ConnectFailed(f"{device}: connection refused (server down)")
        self._next += 1
        conn = _Connection(self._next, device, binding)
        if self.tap is not None:
            self.tap.attach(conn, self.timeline)
        self._open[conn.number] = conn
        self.connections += 1
        spawn(binding, conn.server_stream)
        self._nursery.start_soon(self._run_connection, conn)
        return conn

    async def _run_connection(self, conn: _Connection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, conn, True)
            nursery.start_soon(self._pump, conn, False)
        self._open.pop(conn.number, None)

    # ------------------------------------------------------------------ pumps

    async def _pump(self, conn: _Connection, upstream: bool) -> None:
        source = conn.up_recv if upstream else conn.down_recv
        sink = conn.to_server if upstream else conn.to_device
        try:
            while not conn.reset:
                data = bytes(await source.receive_some())
                if not data:
                    break
                await self._wait_partition(conn.device)
                if not await self._deliver(conn, upstream, data, sink):
                    return
        except _SILENT:
            pass
        finally:
            if not conn.reset:
                await trio.aclose_forcefully(sink)
                await trio.aclose_forcefully(source)

    async def _wait_partition(self, device: str) -> None:
        until = self._partitions.get(device, 0.0)
        if until > trio.current_time():
            await trio.sleep_until(until)

    async def _deliver(self, conn: _Connection, upstream: bool, data: bytes,
                       sink: trio.abc.SendStream) -> bool:
        """Forward one chunk through the fault model; False once the connection is gone."""
        self.bytes += len(data)
        fault = self._pick(upstream)
        where = {"conn": conn.number, "device": conn.device, "dir": "up" if upstream else "down",
                 "bytes": len(data)}
        if fault is None:
            await sink.send_all(data)
            return True
        if fault == "reset":
            self._count("reset", **where)
            await conn.abort()
            return False
        if fault == "truncate":
            cut = self.rng.randrange(len(data))
            self._count("truncate", kept=cut, **where)
            if cut:
                await sink.send_all(data[:cut])
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
            await sink.send_all(bytes(mutable))
            return True
        if fault == "duplicate":
            self._count("duplicate", **where)
            await sink.send_all(data)
            await sink.send_all(data)
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
        await sink.send_all(data)
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

