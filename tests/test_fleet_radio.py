"""The radio link: arrival times on the Trio clock, drops, partitions, and the world's switches."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing

from sidekick_testbed.emulator.fleet.profiles import NetworkProfile
from sidekick_testbed.emulator.fleet.radio import (
    SEND_BUFFER,
    Coverage,
    LinkTally,
    RadioLink,
    RadioWorld,
    radio_connector,
)
from sidekick_testbed.emulator.handset.transport import ConnectFailed, TransportError, TransportTimeout
from sidekick_testbed.emulator.sim.clock import SimClock

LAB = NetworkProfile("lab", down_bps=80_000, up_bps=40_000, rtt=0.2)


@pytest.fixture
def fleet_clock() -> SimClock:
    """The run's clock (pytest-trio uses any Clock fixture): radio links time themselves on it."""
    return SimClock()


async def test_a_chunk_arrives_after_its_air_time_and_half_a_round_trip(fleet_clock: SimClock) -> None:
    tally = LinkTally()
    link = RadioLink(LAB, drop_at=math.inf, tally=tally)
    start = trio.current_time()
    await link.device.send_all(b"x" * 1000)          # 1000 B at 40 kbit/s: 0.2 s on the air
    assert trio.current_time() == start              # buffered: the sender does not wait
    data = await link.server.receive_some()
    assert data == b"x" * 1000
    assert trio.current_time() - start == pytest.approx(0.2 + 0.1)
    await link.server.send_all(b"y" * 2000)          # 2000 B at 80 kbit/s: 0.2 s
    assert await link.device.receive_some() == b"y" * 2000
    assert trio.current_time() - start == pytest.approx(0.3 + 0.2 + 0.1)
    assert (tally.bytes_up, tally.bytes_down, tally.drops) == (1000, 2000, 0)


async def test_a_sender_waits_only_for_what_exceeds_the_send_buffer(fleet_clock: SimClock) -> None:
    link = RadioLink(LAB, drop_at=math.inf, tally=LinkTally())
    size = SEND_BUFFER + 5000
    start = trio.current_time()
    await link.device.send_all(b"z" * size)
    assert trio.current_time() - start == pytest.approx(5000 * 8 / 40_000)
    assert len(await link.server.receive_some()) == size
    assert trio.current_time() - start == pytest.approx(size * 8 / 40_000 + 0.1)


async def test_chunks_queue_behind_each_other_and_close_arrives_last(fleet_clock: SimClock) -> None:
    link = RadioLink(LAB, drop_at=math.inf, tally=LinkTally())
    start = trio.current_time()
    await link.server.send_all(b"a" * 1000)   # 0.1 s each at 80 kbit/s
    await link.server.send_all(b"b" * 1000)
    await link.server.aclose()
    assert await link.device.receive_some() == b"a" * 1000
    assert trio.current_time() - start == pytest.approx(0.1 + 0.1)
    assert await link.device.receive_some() == b"b" * 1000
    assert trio.current_time() - start == pytest.approx(0.2 + 0.1)
    assert await link.device.receive_some() == b""


async def test_a_drop_breaks_both_ends_at_its_time(fleet_clock: SimClock) -> None:
    tally = LinkTally()
    link = RadioLink(LAB, drop_at=5.0 + trio.current_time(), tally=tally)
    start = trio.current_time()
    with pytest.raises(TransportError):
        await link.device.receive_some()
    assert trio.current_time() - start == pytest.approx(5.0)
    with pytest.raises(trio.BrokenResourceError):
        await link.server.send_all(b"late")
    assert tally.drops == 1


async def test_break_link_wakes_a_waiting_reader(fleet_clock: SimClock) -> None:
    link = RadioLink(LAB, drop_at=math.inf, tally=LinkTally())
    async with trio.open_nursery() as nursery:
        async def breaker() -> None:
            await trio.sleep(3)
            link.break_link()
        nursery.start_soon(breaker)
        with pytest.raises(trio.BrokenResourceError):
            await link.server.receive_some()
    assert trio.current_time() == pytest.approx(3.0)


def test_coverage_windows_are_drawn_from_the_rng_alone() -> None:
    tunnel = NetworkProfile("t", 1e5, 1e5, 0.1, partitions_per_day=24, partition_mean=600)
    a = Coverage(tunnel, random.Random(3))
    b = Coverage(tunnel, random.Random(3))
    probes = [a.covered(t) for t in range(0, 86400, 300)]
    assert probes == [b.covered(t) for t in range(0, 86400, 300)]
    assert 0 < probes.count(False) < len(probes)
    nothing = Coverage(NetworkProfile("w", 1e6, 1e6, 0.04), random.Random(3))
    assert nothing.covered(1e9) and nothing.next_gap(0) == math.inf


async def test_connector_refuses_while_the_server_is_down_and_serves_when_up(fleet_clock: SimClock) -> None:
    served: list[bytes] = []

    async def serve(stream: trio.abc.Stream) -> None:
        served.append(bytes(await stream.receive_some()))
        await stream.send_all(b"pong")

    tally = LinkTally()
    async with trio.open_nursery() as nursery:
        world = RadioWorld(nursery)
        connect = radio_connector(serve, LAB, Coverage(LAB, random.Random(1)), random.Random(2), tally, world)
        world.server_up = False
        with pytest.raises(ConnectFailed):
            await connect()
        world.server_up = True
        channel = await connect()
        await channel.send_all(b"ping")
        assert await channel.receive_some() == b"pong"
        await channel.aclose()
    assert served == [b"ping"] and tally.connections == 1 and world.open_links == 0


async def test_a_radio_link_refuses_a_clock_without_alarms(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(TypeError, match="SimClock"):
        RadioLink(LAB, drop_at=math.inf, tally=LinkTally())


async def test_receive_deadlines_are_kept_by_the_link(fleet_clock: SimClock) -> None:
    """Both ends time a receive on the link's clock: data before the deadline is returned, nothing
    by the deadline is a timeout at exactly the deadline (the link stays up)."""
    link = RadioLink(LAB, drop_at=math.inf, tally=LinkTally())
    start = trio.current_time()
    with pytest.raises(TransportTimeout):
        await link.device.receive_some(start + 7.5)
    assert trio.current_time() - start == 7.5
    with pytest.raises(trio.TooSlowError):
        await link.server.receive_some_before(None, start + 9.0)
    assert trio.current_time() - start == 9.0
    await link.server.send_all(b"a" * 1000)      # arrives 0.1 + 0.1 s later
    assert await link.device.receive_some(trio.current_time() + 0.25) == b"a" * 1000
    await link.device.send_all(b"b" * 400)       # arrives 0.08 + 0.1 s later
    assert await link.server.receive_some_before(None, trio.current_time() + 1) == b"b" * 400
    assert trio.current_time() - start == pytest.approx(9.0 + 0.2 + 0.18)
    await link.server.send_all(b"c" * 1000)      # arrives exactly at the deadline: late
    arrival = link.down.queue[-1][0]
    with pytest.raises(TransportTimeout):
        await link.device.receive_some(arrival)
    assert trio.current_time() == arrival
    assert await link.device.receive_some(arrival + 1) == b"c" * 1000  # still there to read


async def test_a_send_deadline_ends_the_wait_for_the_send_buffer(fleet_clock: SimClock) -> None:
    link = RadioLink(LAB, drop_at=math.inf, tally=LinkTally())
    size = SEND_BUFFER + 8000                     # 8000 B over the buffer: 0.8 s at 80 kbit/s
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await link.server.send_all_before(b"p" * size, start + 0.5)
    assert trio.current_time() - start == 0.5
    assert len(await link.device.receive_some()) == size  # what was written stays queued
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):           # the wait would end exactly at the deadline: late
        await link.server.send_all_before(b"p" * size, start + 0.8)
    assert trio.current_time() - start == pytest.approx(0.8)
    await link.server.send_all_before(b"q" * 100, trio.current_time() + 0.5)  # buffered: no wait


async def test_the_handset_end_keeps_a_send_deadline(fleet_clock: SimClock) -> None:
    link = RadioLink(LAB, drop_at=math.inf, tally=LinkTally())
    start = trio.current_time()
    with pytest.raises(TransportTimeout):      # 4000 B over the buffer: 0.8 s at 40 kbit/s
        await link.device.send_all(b"u" * (SEND_BUFFER + 4000), start + 0.3)
    assert trio.current_time() - start == 0.3
    await link.device.send_all(b"v" * 10, trio.current_time() + 5)
