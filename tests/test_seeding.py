"""One seed derivation for the simulation and the fleet, and the Trio scheduler hook they rely on."""

from __future__ import annotations

import concurrent.futures
import hashlib
import tomllib
from pathlib import Path

import pytest
import trio
import trio._core._run
import trio.testing
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from sidekick_testbed.emulator.seeding import (
    SUPPORTED_TRIO,
    TrioHookMissing,
    derive_rng,
    derive_seed,
    seed_trio_scheduler,
    seeded_trio_scheduler,
)

ROOT = Path(__file__).resolve().parent.parent


def test_derived_seed_is_sha256_of_the_slash_joined_name() -> None:
    for seed, name in ((1, ("network",)), (7, ("user", 3)), (2**40, ("trio-scheduler",))):
        text = "/".join(str(part) for part in (seed, *name)).encode()
        assert derive_seed(seed, *name) == int.from_bytes(hashlib.sha256(text).digest()[:8], "big")
    assert derive_seed(5, "radio", 2) == derive_seed(5, "radio/2")  # the world's and the fleet's spelling agree


def test_component_seeds_depend_on_seed_and_name_only() -> None:
    assert len({derive_seed(1, name) for name in ("network", "workload", "nemesis", "storage")}) == 4
    assert derive_seed(1, "network") != derive_seed(2, "network")
    assert derive_rng(1, "user", 3).random() == derive_rng(1, "user", 3).random()
    assert derive_rng(1, "user", 3).random() != derive_rng(1, "user", 4).random()
    assert derive_rng(1, "user", 3).random() != derive_rng(2, "user", 3).random()


def test_the_installed_trio_is_in_the_pinned_range_and_has_the_hook() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"trio{SUPPORTED_TRIO}" in pins
    assert Version(trio.__version__) in SpecifierSet(SUPPORTED_TRIO)
    seed_trio_scheduler(1)  # raises TrioHookMissing if the private RNG moved


def _schedule(seed: int) -> list[int]:
    """The order in which ten tasks, all ready at once, first run."""
    order: list[int] = []

    async def task(index: int) -> None:
        order.append(index)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(task, index)

    with seeded_trio_scheduler(seed):
        trio.run(main)
    return order


def test_same_seed_same_schedule() -> None:
    assert _schedule(3) == _schedule(3)
    assert len({tuple(_schedule(seed)) for seed in range(8)}) > 1  # the seed does choose the order


def test_a_trio_without_the_hook_is_a_typed_error_naming_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(trio._core._run, "_r")
    with pytest.raises(TrioHookMissing, match=f"trio{SUPPORTED_TRIO}".replace(".", r"\.")) as caught:
        seed_trio_scheduler(1)
    assert caught.value.missing == "trio._core._run._r"
    with pytest.raises(TrioHookMissing), seeded_trio_scheduler(1):
        pass


def _long_schedule(seed: int) -> list[int]:
    """The order in which twenty tasks pass 200 checkpoints each: thousands of tie-breaks."""
    order: list[int] = []

    async def task(index: int) -> None:
        for _ in range(200):
            order.append(index)
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(20):
                nursery.start_soon(task, index)

    with seeded_trio_scheduler(seed):
        trio.run(main)
    return order


def test_seeded_runs_in_threads_of_one_process_each_get_their_seeds_schedule() -> None:
    """As in a Dask worker with several threads: Trio's RNG is one per process, so seeded runs take turns."""
    alone = {seed: _long_schedule(seed) for seed in (1, 2)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        together = [pool.submit(_long_schedule, seed) for seed in (1, 2) * 4]
        for future, seed in zip(together, (1, 2) * 4, strict=True):
            assert future.result() == alone[seed]


def _wake_order_at_one_deadline(seed: int, padding: list[int]) -> list[int]:
    """The order in which tasks sleeping until the same instant wake, with the cancel scopes of their
    sleeps placed at addresses that ``padding`` shifts (objects kept alive between the tasks' starts)."""
    order: list[int] = []
    kept: list[object] = []

    async def sleeper(index: int) -> None:
        await trio.sleep_until(10.0)
        order.append(index)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index, pad in enumerate(padding):
                kept.append([object() for _ in range(pad)])
                nursery.start_soon(sleeper, index)
                await trio.lowlevel.checkpoint()  # each sleeper makes its scope now, after the padding

    with seeded_trio_scheduler(seed):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return order


def test_tasks_woken_by_equal_deadlines_run_in_an_order_that_does_not_depend_on_memory_addresses() -> None:
    """Trio breaks ties between equal deadlines by the cancel scope's address: a long-lived process (a
    Dask worker) lays its memory out otherwise than a fresh one. The seeded order must not see it."""
    paddings = [[0] * 12, list(range(12)), list(range(12, 0, -1)), [7, 0, 300, 1, 0, 52, 9, 0, 0, 1000, 3, 5]]
    for seed in (1, 2, 3):
        orders = {tuple(_wake_order_at_one_deadline(seed, padding)) for padding in paddings}
        assert len(orders) == 1, orders
