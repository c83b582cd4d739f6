"""sim_clock: a MockClock whose cheap current_time always equals what MockClock would say."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from emulator.sim.clock import sim_clock


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
