"""The simulations' clock: a ``trio.testing.MockClock`` that reads virtual time without the real clock.

``MockClock.current_time`` reads ``time.perf_counter`` on every call and scales it by ``rate``. The
simulations run at rate 0 with autojump, where the answer is always the clock's virtual base, and
they ask for the time about a hundred times per sync session. ``sim_clock`` gives a MockClock
(Trio's autojump only works with one) whose ``current_time`` returns that base directly: the same
value, exactly, for as long as the rate stays 0 (nothing sets it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio.testing

__all__ = ["sim_clock"]


def sim_clock() -> trio.testing.MockClock:
    """A MockClock with ``autojump_threshold=0`` at rate 0, with a cheap ``current_time``.
    Its rate must stay 0 (nothing here sets it): ``current_time`` ignores the rate."""
    import trio.testing  # noqa: PLC0415 - it imports pytest: only when a simulation starts

    clock = trio.testing.MockClock(autojump_threshold=0)
    if not hasattr(clock, "_virtual_base"):  # pragma: no cover - a Trio that moved it: the plain clock
        return clock
    clock.current_time = lambda: clock._virtual_base  # type: ignore[method-assign]
    return clock
