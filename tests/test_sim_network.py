"""The simulated network: every fault kind, partitions, a down server, both bindings' plumbing."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.emulator.handset.transport import ConnectFailed, TransportError
from sidekick_testbed.emulator.sim.network import FAULT_KINDS, NetworkFaults, SimNetwork
from sidekick_testbed.emulator.sim.trace_log import Timeline


class Recorder:
    """A server that records what each connection received (until EOF or a break)."""

    def __init__(self, nursery: trio.Nursery, *, echo: bool = False) -> None:
        self.nursery = nursery
        self.echo = echo
        self.received: list[bytearray] = []
        self.closed: list[bool] = []

    def spawn(self, binding: str, stream: trio.abc.Stream) -> None:
        index = len(self.received)
        self.received.append(bytearray())
        self.closed.append(False)
        self.nursery.start_soon(self._serve, index, stream)

    async def _serve(self, index: int, stream: trio.abc.Stream) -> None:
        try:
            while True:
                data = await stream.receive_some()
                if not data:
                    break
                self.received[index] += data
                if self.echo:
                    await stream.send_all(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed[index] = True
        await trio.aclose_forcefully(stream)


async def _network(nursery: trio.Nursery, faults: NetworkFaults, seed: int = 1,
                   echo: bool = False) -> tuple[SimNetwork, Recorder, Timeline]:
    timeline = Timeline()
    network = SimNetwork(random.Random(seed), faults, timeline, nursery)
    server = Recorder(nursery, echo=echo)
    network.set_server(server.spawn)
    return network, server, timeline


async def test_clean_network_carries_bytes_both_ways_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        network, server, timeline = await _network(nursery, NetworkFaults(), echo=True)
        channel = await network.connector("dev", "raw")()
        for word in (b"one", b"two", b"three"):
            await channel.send_all(word)
            got = b""
            while len(got) < len(word):
                got += await channel.receive_some()
            assert got == word
        await channel.aclose()
        await trio.sleep(1)
        assert server.received == [bytearray(b"onetwothree")] and server.closed == [True]
        assert timeline.events == [] and not network.injected
        nursery.cancel_scope.cancel()


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20), st.integers(0, 2**32))
def test_without_faults_every_byte_arrives_once_in_order(chunks: list[bytes], seed: int) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            network, server, _ = await _network(nursery, NetworkFaults(), seed)
            channel = await network.connector("dev", "raw")()
            for chunk in chunks:
                await channel.send_all(chunk)
            await channel.aclose()
            await trio.sleep(1)
            assert bytes(server.received[0]) == b"".join(chunks)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _one_way(faults: NetworkFaults, payload: bytes = b"x" * 64) -> tuple[Recorder, Timeline, SimNetwork]:
    async with trio.open_nursery() as nursery:
        network, server, timeline = await _network(nursery, faults)
        channel = await network.connector("dev", "raw")()
        try:
            await channel.send_all(payload)
        except TransportError:
            pass
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    return server, timeline, network


async def test_drop_loses_the_chunk_and_logs_it(autojump_clock: trio.testing.MockClock) -> None:
    server, timeline, network = await _one_way(NetworkFaults(drop=1.0))
    assert server.received == [bytearray()]
    assert [e["kind"] for e in timeline.events] == ["net.drop"] and network.injected["drop"] == 1


async def test_corrupt_flips_exactly_one_bit(autojump_clock: trio.testing.MockClock) -> None:
    payload = bytes(range(64))
    server, timeline, _ = await _one_way(NetworkFaults(corrupt=1.0), payload)
    got = bytes(server.received[0])
    assert len(got) == len(payload)
    diff = [a ^ b for a, b in zip(got, payload, strict=True) if a != b]
    assert len(diff) == 1 and bin(diff[0]).count("1") == 1
    event = timeline.events[0]
    assert event["kind"] == "net.corrupt" and got[event["offset"]] != payload[event["offset"]]


async def test_duplicate_delivers_twice(autojump_clock: trio.testing.MockClock) -> None:
    server, _, _ = await _one_way(NetworkFaults(duplicate=1.0), b"abc")
    assert bytes(server.received[0]) == b"abcabc"


async def test_truncate_delivers_a_strict_prefix_then_resets(autojump_clock: trio.testing.MockClock) -> None:
    payload = b"0123456789" * 5
    server, timeline, _ = await _one_way(NetworkFaults(truncate=1.0), payload)
    got = bytes(server.received[0])
    assert len(got) < len(payload) and payload.startswith(got) and server.closed == [True]
    assert timeline.events[0]["kept"] == len(got)


async def test_reset_breaks_the_connection_for_both_ends(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        network, server, _ = await _network(nursery, NetworkFaults(reset=1.0))
        channel = await network.connector("dev", "raw")()
        await channel.send_all(b"hello")
        await trio.sleep(1)
        assert server.received == [bytearray()] and server.closed == [True]
        assert await channel.receive_some() == b""
        nursery.cancel_scope.cancel()


async def test_delay_holds_the_chunk_at_most_max_delay(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        network, server, timeline = await _network(nursery, NetworkFaults(delay=1.0, max_delay=5.0))
        channel = await network.connector("dev", "raw")()
        start = trio.current_time()
        await channel.send_all(b"late")
        while not server.received[0]:
            await trio.sleep(0.01)
        waited = trio.current_time() - start
        assert 0 <= waited <= 5.0 + 0.02
        assert timeline.events[0]["kind"] == "net.delay"
        nursery.cancel_scope.cancel()


async def test_stall_reaches_the_server_after_the_device_gave_up(autojump_clock: trio.testing.MockClock) -> None:
    """Reordering across reconnects: bytes of a closed connection arrive after a new one opened."""
    async with trio.open_nursery() as nursery:
        network, server, _ = await _network(nursery, NetworkFaults(stall=1.0, stall_min=40.0, stall_max=50.0))
        old = await network.connector("dev", "raw")()
        await old.send_all(b"stale COMMIT")
        await trio.sleep(30)
        await old.aclose()
        network.set_faults(NetworkFaults())
        new = await network.connector("dev", "raw")()
        await new.send_all(b"fresh HELLO")
        await trio.sleep(1)
        assert server.received == [bytearray(), bytearray(b"fresh HELLO")]
        await trio.sleep(30)
        assert server.received[0] == bytearray(b"stale COMMIT")
        nursery.cancel_scope.cancel()


async def test_partition_refuses_connects_and_holds_open_connections_until_it_ends(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        network, server, timeline = await _network(nursery, NetworkFaults())
        channel = await network.connector("dev", "raw")()
        network.partition("dev", 60.0)
        with pytest.raises(ConnectFailed, match="partition"):
            await network.connector("dev", "raw")()
        other = await network.connector("other", "raw")()  # only that device is cut off
        await channel.send_all(b"held")
        await trio.sleep(30)
        assert server.received[0] == bytearray()
        await trio.sleep(31)
        assert server.received[0] == bytearray(b"held")
        await network.connector("dev", "raw")()
        assert timeline.events[0]["kind"] == "net.partition"
        await other.aclose()
        nursery.cancel_scope.cancel()


async def test_server_down_refuses_and_reset_all_breaks_open_connections(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        network, server, _ = await _network(nursery, NetworkFaults())
        channel = await network.connector("dev", "raw")()
        network.set_server(None)
        await network.reset_all()
        with pytest.raises(ConnectFailed, match="refused"):
            await network.connector("dev", "raw")()
        assert await channel.receive_some() == b""
        with pytest.raises(TransportError):
            await channel.send_all(b"x")
        nursery.cancel_scope.cancel()


async def test_http_binding_rides_the_same_network(autojump_clock: trio.testing.MockClock) -> None:
    """The HTTP channel POSTs through the simulated connection (the server sees an HTTP request)."""
    async with trio.open_nursery() as nursery:
        network, server, _ = await _network(nursery, NetworkFaults())
        channel = await network.connector("dev", "http")()
        with trio.move_on_after(5):
            await channel.send_all(b"frames")
        assert server.received[0].startswith(b"POST /sync HTTP/1.1")
        assert server.received[0].endswith(b"frames")
        nursery.cancel_scope.cancel()


@given(st.dictionaries(st.sampled_from(FAULT_KINDS), st.floats(0, 1, allow_nan=False), min_size=1))
def test_fault_probabilities_are_checked(values: dict[str, float]) -> None:
    if sum(values.values()) > 1.0:
        with pytest.raises(ValueError, match="more than 1"):
            NetworkFaults(**values)
    else:
        assert NetworkFaults(**values).any == any(values.values())


def test_bad_binding_and_bad_values_are_refused() -> None:
    with pytest.raises(ValueError):
        NetworkFaults(drop=-0.1)
    with pytest.raises(ValueError):
        NetworkFaults(stall_min=10, stall_max=5)
