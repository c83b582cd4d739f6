"""The executor's contract on this machine (``emulator.executor``): results in the order of the
arguments, reports while tasks run, a task's failure raised at its turn, arguments read lazily,
and leaving a run ends its worker processes. The Dask executor: tests/test_cluster.py."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sidekick_testbed.emulator.executor import Executor, InlineExecutor, ProcessExecutor, Report, TaskFailed


def _square_with_reports(n: int, report: Report) -> int:
    for step in range(3):
        report((n, step))
    return n * n


def _fail_on(n: int, bad: int, report: Report) -> int:
    if n == bad:
        raise ValueError(f"{n} refused")
    return n


def _wait_forever(report: Report) -> None:
    report(os.getpid())
    threading.Event().wait()


@pytest.fixture(params=["inline", "processes"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with (InlineExecutor() if request.param == "inline" else ProcessExecutor(2)) as running:
        yield running


def test_results_come_in_order_with_every_report(executor: Executor) -> None:
    reports: list[tuple[int, Any]] = []
    results = list(executor.map(_square_with_reports, [(n,) for n in range(7)],
                                on_report=lambda index, payload: reports.append((index, tuple(payload)))))
    assert results == [n * n for n in range(7)]
    for n in range(7):  # each task's reports, in the order it sent them
        assert [payload for index, payload in reports if index == n] == [(n, 0), (n, 1), (n, 2)]


def test_a_failure_is_raised_at_its_turn_naming_its_task(executor: Executor) -> None:
    taken: list[int] = []
    with pytest.raises(TaskFailed, match=r"^number 4 failed: ValueError: 4 refused$"):
        for result in executor.map(_fail_on, [(n, 4) for n in range(9)], label=lambda i: f"number {i}"):
            taken.append(result)
    assert taken == [0, 1, 2, 3]


def test_arguments_are_read_a_few_ahead_of_the_results(executor: Executor) -> None:
    handed: list[int] = []

    def arguments() -> Iterator[tuple[int, int]]:
        for n in itertools.count():
            handed.append(n)
            yield n, -1

    results = executor.map(_fail_on, arguments())
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    results.close()  # type: ignore[attr-defined]
    assert len(handed) <= 5 + 16 * executor.slots  # bounded look-ahead, not the whole (endless) input


class _Enough(Exception):
    pass


def test_leaving_a_run_ends_its_worker_processes() -> None:
    pids: list[int] = []

    def on_report(index: int, pid: Any) -> None:
        pids.append(pid)
        if len(pids) == 2:
            raise _Enough  # as Ctrl-C does, from inside the wait

    with ProcessExecutor(2) as executor:
        with pytest.raises(_Enough):
            list(executor.map(_wait_forever, [(), ()], on_report=on_report))
    assert len(set(pids)) == 2
    for pid in pids:  # terminated and reaped: the tasks would otherwise wait forever
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
