"""The simulations' clocks: virtual time that jumps whenever every task waits.

``SimClock`` (the fleet's) is its own ``trio.abc.Clock`` with alarms that wake a parked task
without a cancel scope. ``sim_clock`` (the fuzzer's world, which jumps the clock itself) is a
``trio.testing.MockClock`` that reads virtual time without the real clock:
``MockClock.current_time`` reads ``time.perf_counter`` on every call and scales it by ``rate``. The
simulations run at rate 0 with autojump, where the answer is always the clock's virtual base, and
they ask for the time about a hundred times per sync session. ``sim_clock`` gives a MockClock
(Trio's autojump only works with one) whose ``current_time`` returns that base directly: the same
value, exactly, for as long as the rate stays 0 (nothing sets it).
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

import trio
import trio.lowlevel

if TYPE_CHECKING:
    import trio.testing

__all__ = ["Alarm", "SimClock", "sim_clock"]


def sim_clock() -> trio.testing.MockClock:
    """A MockClock with ``autojump_threshold=0`` at rate 0, with a cheap ``current_time``.
    Its rate must stay 0 (nothing here sets it): ``current_time`` ignores the rate."""
    import trio.testing  # noqa: PLC0415 - it imports pytest: only when a simulation starts

    clock = trio.testing.MockClock(autojump_threshold=0)
    if not hasattr(clock, "_virtual_base"):  # pragma: no cover - a Trio that moved it: the plain clock
        return clock
    clock.current_time = lambda: clock._virtual_base  # type: ignore[method-assign]
    return clock


class Alarm:
    """One parked task's wake-up time on a ``SimClock`` (``SimClock.ring`` brings it earlier)."""

    __slots__ = ("at", "task", "key")

    def __init__(self, at: float) -> None:
        self.at = at
        self.task: trio.lowlevel.Task | None = None
        self.key = -1  # the heap entry that is live for this alarm; -1: none


class SimClock(trio.abc.Clock):
    """Virtual time for simulations, with alarms that wake a task without a cancel scope.

    Time starts at 0 and moves only when Trio finds no task runnable (the one moment it asks
    ``deadline_to_sleep_time``): then it jumps to the earliest of Trio's deadlines and the
    clock's alarms. That is MockClock's autojump at threshold 0, in one pass of the run loop
    instead of two. ``sleep_until`` and ``Alarm`` park a task with ``wait_task_rescheduled`` and
    reschedule it at its time: no cancel scope, no ``Cancelled`` raised and caught, about a
    fifth of what ``trio.sleep_until`` costs. Trio's own deadlines (``fail_after``,
    ``CancelScope(deadline=...)``) work as on any clock.
    """

    __slots__ = ("_now", "_alarms", "_keys")

    def __init__(self) -> None:
        self._now = 0.0
        self._alarms: list[tuple[float, int, Alarm]] = []
        self._keys = 0

    def start_clock(self) -> None:
        """Nothing to start: virtual time begins at 0."""

    def current_time(self) -> float:
        """The virtual time."""
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Every task waits: jump to the earliest deadline or alarm and wake that alarm's tasks."""
        alarms = self._alarms
        while alarms and alarms[0][2].key != alarms[0][1]:
            heapq.heappop(alarms)  # an alarm rung earlier, fired or cancelled
        if not alarms or deadline < alarms[0][0]:
            if deadline == math.inf:
                return math.inf  # nothing will ever happen: wait for I/O, as MockClock does
            if deadline > self._now:
                self._now = deadline
            return 0.0
        now = self._now = max(self._now, alarms[0][0])
        while alarms and alarms[0][0] <= now:
            _, key, alarm = heapq.heappop(alarms)
            if alarm.key == key:
                self._fire(alarm)
        return 0.0

    @property
    def pending_alarms(self) -> int:
        """Alarms in the heap, live or stale (bounded by the live ones plus those rung earlier)."""
        return len(self._alarms)

    def _fire(self, alarm: Alarm) -> None:
        task = alarm.task
        alarm.task = None
        alarm.key = -1
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _arm(self, alarm: Alarm) -> None:
        if alarm.at == math.inf:
            alarm.key = -1  # never rings by itself: no heap entry to linger
            return
        self._keys += 1
        alarm.key = self._keys
        heapq.heappush(self._alarms, (alarm.at, self._keys, alarm))

    async def wait(self, alarm: Alarm) -> None:
        """Park the calling task until ``alarm`` rings (a checkpoint if its time has come). Cancellable."""
        if alarm.at <= self._now:
            alarm.task = None
            alarm.key = -1
            await trio.lowlevel.checkpoint()  # as trio.sleep_until does for a time that has passed
            return
        alarm.task = trio.lowlevel.current_task()
        self._arm(alarm)

        def abort(_: object) -> trio.lowlevel.Abort:
            alarm.task = None
            alarm.key = -1
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def ring(self, alarm: Alarm, at: float) -> None:
        """Bring ``alarm`` forward to ``at`` (now, if ``at`` has passed); later times are ignored."""
        if at >= alarm.at:
            return
        alarm.at = at
        if alarm.task is None:
            return  # not waiting yet: ``wait`` arms it at the new time
        if at <= self._now:
            self._fire(alarm)
        else:
            self._arm(alarm)

    def jump(self, seconds: float) -> None:
        """Move virtual time forward now (as ``MockClock.jump``): every deadline and alarm it
        passes fires at the run loop's next look."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._now += seconds

    async def sleep_until(self, at: float) -> None:
        """``trio.sleep_until`` on this clock's alarms (a checkpoint if ``at`` has passed)."""
        await self.wait(Alarm(at))

