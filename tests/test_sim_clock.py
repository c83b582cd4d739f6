"""sim_clock: a MockClock whose cheap current_time always equals what MockClock would say.
SimClock: virtual time that jumps when every task waits, with alarms."""

from __future__ import annotations

import math

import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.emulator.sim.clock import Alarm, SimClock, sim_clock


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=20))
def test_current_time_tracks_jumps_exactly(jumps: list[float]) -> None:
    fast, plain = sim_clock(), trio.testing.MockClock(autojump_threshold=0)
    for seconds in jumps:
        fast.jump(seconds)
        plain.jump(seconds)
        assert fast.current_time() == plain.current_time()
    assert isinstance(fast, trio.testing.MockClock)


def test_autojump_and_deadlines_work_as_on_mock_clock() -> None:
    def run(clock: trio.testing.MockClock) -> list[float]:
        seen: list[float] = []

        async def main() -> None:
            async def sleeper(delay: float) -> None:
                await trio.sleep(delay)
                seen.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                for delay in (3600.0, 0.25, 86400.0, 1.5):
                    nursery.start_soon(sleeper, delay)
            with trio.move_on_after(10.0) as scope:
                await trio.sleep_forever()
            assert scope.cancelled_caught
            seen.append(trio.current_time())

        trio.run(main, clock=clock)
        return seen

    assert run(sim_clock()) == run(trio.testing.MockClock(autojump_threshold=0)) == [
        0.25, 1.5, 3600.0, 86400.0, 86410.0]


# ---------------------------------------------------------------------------------------- SimClock


def _wake_times(clock: trio.abc.Clock, delays: list[tuple[float, bool]]) -> list[tuple[int, float]]:
    """Run sleepers (``delay``, on the clock's alarms?) and record (sleeper, wake time) in wake order."""
    seen: list[tuple[int, float]] = []

    async def main() -> None:
        async def sleeper(index: int, delay: float, alarm: bool) -> None:
            if alarm:
                assert isinstance(clock, SimClock)
                await clock.sleep_until(trio.current_time() + delay)
            else:
                await trio.sleep(delay)
            seen.append((index, trio.current_time()))

        async with trio.open_nursery() as nursery:
            for index, (delay, alarm) in enumerate(delays):
                nursery.start_soon(sleeper, index, delay, alarm)

    trio.run(main, clock=clock)
    return seen


def test_sim_clock_runs_trio_deadlines_as_mock_clock_does() -> None:
    def run(clock: trio.abc.Clock) -> list[float]:
        seen: list[float] = []

        async def main() -> None:
            with trio.move_on_after(10.0) as scope:
                await trio.sleep_forever()
            assert scope.cancelled_caught
            seen.append(trio.current_time())
            with trio.fail_after(86400):
                await trio.sleep(3600.25)
            seen.append(trio.current_time())

        trio.run(main, clock=clock)
        return seen

    assert run(SimClock()) == run(trio.testing.MockClock(autojump_threshold=0)) == [10.0, 3610.25]


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.5, 3600.0, 1e-9]), st.booleans()), max_size=12))
def test_alarms_and_deadlines_wake_at_the_same_times_as_trio_sleeps(delays: list[tuple[float, bool]]) -> None:
    with_alarms = _wake_times(SimClock(), delays)
    plain = _wake_times(trio.testing.MockClock(autojump_threshold=0), [(d, False) for d, _ in delays])
    assert sorted(with_alarms) == sorted(plain)
    assert [t for _, t in with_alarms] == sorted(t for _, t in with_alarms)  # nobody wakes out of order


def test_time_stands_still_while_any_task_can_run() -> None:
    steps: list[int] = []

    async def main() -> None:
        async def busy() -> None:
            for step in range(100):
                assert trio.current_time() == 0.0
                steps.append(step)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy)
            await clock.sleep_until(0.0)  # a time that has come: a checkpoint, not a wait for idle
            assert len(steps) < 100  # back before the busy task finished
            await clock.sleep_until(5.0)
            assert trio.current_time() == 5.0 and len(steps) == 100

    clock = SimClock()
    trio.run(main, clock=clock)


def test_ring_brings_an_alarm_forward_never_back() -> None:
    clock = SimClock()
    woke: list[float] = []

    async def sleeper(alarm: Alarm) -> None:
        await clock.wait(alarm)
        woke.append(trio.current_time())

    async def main() -> None:
        alarm = Alarm(100.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper, alarm)
            await clock.sleep_until(1.0)
            clock.ring(alarm, 500.0)  # later: ignored
            clock.ring(alarm, 7.0)
            clock.ring(alarm, 9.0)    # later than 7: ignored
        assert woke == [7.0]
        late = Alarm(50.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper, late)
            await clock.sleep_until(8.0)
            clock.ring(late, 2.0)  # already past: wakes now, not when every task waits
            for _ in range(3):
                await trio.lowlevel.checkpoint()  # this task stays runnable: time cannot move
            assert woke == [7.0, 8.0]

    trio.run(main, clock=clock)


def test_a_cancelled_alarm_wait_leaves_no_live_alarm_and_time_moves_on() -> None:
    clock = SimClock()

    async def main() -> None:
        with trio.move_on_after(3.0) as scope:
            await clock.sleep_until(1000.0)
        assert scope.cancelled_caught and trio.current_time() == 3.0
        await clock.sleep_until(4.0)  # the cancelled alarm at 1000 does not hold time back or fire
        assert trio.current_time() == 4.0
        forever = Alarm(math.inf)
        with trio.move_on_after(1.0):
            await clock.wait(forever)  # an alarm at infinity needs no heap entry
        assert trio.current_time() == 5.0

    trio.run(main, clock=clock)
    assert clock.pending_alarms <= 1  # at most the stale entry at 1000


def test_rings_do_not_grow_the_alarm_heap_without_bound() -> None:
    clock = SimClock()

    async def main() -> None:
        for round_ in range(200):
            alarm = Alarm(math.inf)

            async def sleeper(alarm: Alarm = alarm) -> None:
                await clock.wait(alarm)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sleeper)
                await trio.lowlevel.checkpoint()
                for step in range(5):
                    clock.ring(alarm, trio.current_time() + 10.0 - step)
            assert trio.current_time() == 6.0 * (round_ + 1)

    trio.run(main, clock=clock)
    assert clock.pending_alarms <= 5
