"""One executor for every parallel run: this process, worker processes on this machine, or a Dask
distributed cluster.

``Executor.map(fn, arguments, on_report=...)`` calls ``fn(*args, report)`` for each tuple that
``arguments`` yields, wherever the executor runs its tasks, and yields the results in the order of
``arguments``. ``arguments`` is read lazily, a few tasks ahead of the results taken (so a caller
can stop handing out work: a deadline, a budget), and closing the iterator of results stops the
tasks still running. ``report(payload)``, called inside a task, reaches
``on_report(index, payload)`` in the caller's process while the task runs (a progress bar).

* ``InlineExecutor``: the tasks run in this process, one after the other.
* ``ProcessExecutor``: ``concurrent.futures.ProcessPoolExecutor`` on this machine. A worker that
  dies (killed, out of memory) breaks the pool, and the run ends with ``WorkerLost``.
* ``DaskExecutor``: a ``distributed.Client`` on a running Dask cluster (``dask scheduler`` and
  ``dask worker``, dask-ssh, Kubernetes, a batch system). Connecting is bounded by a timeout;
  a worker that dies while running one of the run's tasks, or the scheduler going away, ends the
  run with ``WorkerLost``; closing the results cancels the cluster's work (a running task stops
  at its next report).

Every failure is an ``ExecutorError`` with a message of one line.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import queue
import re
import signal
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["CONNECT_TIMEOUT", "ClusterUnavailable", "DaskExecutor", "Executor", "ExecutorError", "InlineExecutor",
           "ProcessExecutor", "Report", "TaskFailed", "TaskStopped", "WorkerLost", "open_executor"]

CONNECT_TIMEOUT = 10.0
"""Seconds to reach a Dask scheduler (and for it to have a worker) before giving up."""

Report = Callable[[Any], None]
"""What a task calls to send its caller a payload (progress)."""

_QUIET = ("distributed", "tornado", "asyncio")
_LOOK_AHEAD = 2
"""Tasks submitted per slot beyond those running: workers never wait for the caller."""
_BUFFERED = 16
"""Results (per slot) held for the caller ahead of the one it waits for, at most."""


class ExecutorError(RuntimeError):
    """The run cannot go on: a task failed, a worker died, the cluster is gone or unreachable."""


class TaskFailed(ExecutorError):
    """A task raised an exception."""


class WorkerLost(ExecutorError):
    """A worker died while running a task of the run, or the connection to the cluster was lost."""


class ClusterUnavailable(ExecutorError):
    """No Dask scheduler at the address, or no worker joined it in time."""


class TaskStopped(Exception):
    """Raised by ``report`` inside a task whose run was stopped (Ctrl-C, a violation, an error)."""


def _default_label(index: int) -> str:
    return f"task {index + 1}"


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Executor(ABC):
    """Runs tasks somewhere; see the module's docstring."""

    slots: int
    """Tasks that run at once."""
    where: str
    """Where the tasks run, in words (for messages)."""

    @abstractmethod
    def map(self, fn: Callable[..., Any], arguments: Iterable[tuple[Any, ...]], *,
            on_report: Callable[[int, Any], None] | None = None,
            label: Callable[[int], str] = _default_label) -> Iterator[Any]:
        """``fn(*args, report)`` for each ``args``; the results in order. ExecutorError if one
        fails; ``label(index)`` names a task in messages. Close the iterator to stop early."""

    def close(self) -> None:  # noqa: B027 - nothing to release in this process
        """Release the workers or the cluster's connection."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class InlineExecutor(Executor):
    """The tasks run in this process, in order; ``report`` calls ``on_report`` at once; a task's
    exception is a ``TaskFailed`` here too."""

    slots = 1
    where = "this process"

    def map(self, fn: Callable[..., Any], arguments: Iterable[tuple[Any, ...]], *,
            on_report: Callable[[int, Any], None] | None = None,
            label: Callable[[int], str] = _default_label) -> Iterator[Any]:
        for index, args in enumerate(arguments):
            def report(payload: Any, index: int = index) -> None:
                if on_report is not None:
                    on_report(index, payload)

            try:
                result = fn(*args, report)
            except Exception as exc:  # as the pools report it; Ctrl-C (not an Exception) goes through
                raise TaskFailed(f"{label(index)} failed: {_cause(exc)}") from exc
            yield result


@dataclass(frozen=True)
class _Raised:
    """A task's failure, raised when the caller reaches it (after the tasks before it)."""

    error: ExecutorError


class _Pooled(Executor):
    """Submits a window of tasks ahead and yields their results in order."""

    def map(self, fn: Callable[..., Any], arguments: Iterable[tuple[Any, ...]], *,
            on_report: Callable[[int, Any], None] | None = None,
            label: Callable[[int], str] = _default_label) -> Iterator[Any]:
        pending = iter(arguments)
        running: dict[int, Any] = {}
        results: dict[int, Any] = {}
        submitted = taken = 0
        exhausted = False
        try:
            while True:
                while (not exhausted and len(running) < _LOOK_AHEAD * self.slots
                       and len(running) + len(results) < _BUFFERED * self.slots):
                    args = next(pending, None)
                    if args is None:
                        exhausted = True
                        break
                    running[submitted] = self._submit(submitted, fn, args)
                    submitted += 1
                if taken in results:
                    result = results.pop(taken)
                    taken += 1
                    if isinstance(result, _Raised):  # in order: the tasks before it come first
                        raise result.error
                    yield result
                    continue
                if not running:
                    return
                for index, kind, value in self._wait(running, label):
                    if kind == "report":
                        if on_report is not None and index in running:
                            on_report(index, value)
                    elif index in running:
                        del running[index]
                        results[index] = value
        finally:
            if running:
                self._abandon(running)

    @abstractmethod
    def _submit(self, index: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Start ``fn(*args, report)``; a handle for ``_wait`` and ``_abandon``."""

    @abstractmethod
    def _wait(self, running: dict[int, Any], label: Callable[[int], str]) -> list[tuple[int, str, Any]]:
        """Block until something happens; ``(index, "report", payload)`` and ``(index, "done",
        result)``, reports first (a task's failure is a ``_Raised`` result). ExecutorError if a
        worker died or the cluster went away."""

    @abstractmethod
    def _abandon(self, running: dict[int, Any]) -> None:
        """Stop the tasks still running; their results are not wanted."""


# ---------------------------------------------------------------------- local processes

_reports: Any = None
"""In a worker process of ``ProcessExecutor``: the queue its tasks' reports go to."""


def _start_worker(reports: Any) -> None:
    """A worker process of ``ProcessExecutor``: Ctrl-C is the parent's to handle (it ends the
    workers), so that an idle worker does not die with a traceback of its own."""
    global _reports
    _reports = reports
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(fn: Callable[..., Any], args: tuple[Any, ...], index: int) -> Any:
    def report(payload: Any) -> None:
        _reports.put((index, payload))

    return fn(*args, report)


class ProcessExecutor(_Pooled):
    """``workers`` processes on this machine (forked where the platform can, so that they start
    with this process's modules as they are). Leaving a run early ends the workers: the executor
    then takes no more runs."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.slots = workers
        self.where = f"{workers} local worker processes"
        context: Any = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._reports = context.SimpleQueue()
        self._pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                            initargs=(self._reports,))

    def _submit(self, index: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        try:
            return self._pool.submit(_run_in_worker, fn, args, index)
        except concurrent.futures.BrokenExecutor:
            raise WorkerLost("a worker process died without a result (killed, or out of memory?)") from None

    def _wait(self, running: dict[int, Any], label: Callable[[int], str]) -> list[tuple[int, str, Any]]:
        futures = {future: index for index, future in running.items()}
        # Bounded, so that reports reach the caller while every task is still running.
        done, _ = concurrent.futures.wait(futures, timeout=0.1, return_when=concurrent.futures.FIRST_COMPLETED)
        events: list[tuple[int, str, Any]] = []
        while not self._reports.empty():
            index, payload = self._reports.get()
            events.append((index, "report", payload))
        for future in sorted(done, key=futures.__getitem__):
            index = futures[future]
            exc = future.exception()
            if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
                raise WorkerLost("a worker process died without a result (killed, or out of memory?) "
                                 f"while {label(index)} was running")
            outcome = future.result() if exc is None else _Raised(TaskFailed(f"{label(index)} failed: {_cause(exc)}"))
            events.append((index, "done", outcome))
        return events

    def _abandon(self, running: dict[int, Any]) -> None:
        for future in running.values():
            future.cancel()
        self._terminate()

    def _terminate(self) -> None:
        terminate = getattr(self._pool, "terminate_workers", None)  # Python 3.14
        if terminate is not None:
            terminate()
        else:
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------- Dask


def _run_on_dask(fn: Callable[..., Any], args: tuple[Any, ...], index: int, topic: str, stop: str) -> Any:
    """A task on a Dask worker: reports go to the client as events of ``topic``; a report after
    the run's stop event is set raises TaskStopped (looked at most once a second)."""
    from distributed import Event, get_worker

    worker = get_worker()
    looked = [time.monotonic()]

    def report(payload: Any) -> None:
        worker.log_event(topic, [index, payload])
        now = time.monotonic()
        if now - looked[0] >= 1.0:
            looked[0] = now
            try:
                stopped = Event(stop).is_set()
            except Exception:  # the scheduler is gone: nobody wants the result
                stopped = True
            if stopped:
                raise TaskStopped("the run was stopped")

    return fn(*args, report)


class DaskExecutor(_Pooled):
    """A Dask cluster: ``where`` is the scheduler's address (``tcp://host:port``, ``host:port``) or
    a scheduler file (``dask scheduler --scheduler-file``). The scheduler and the workers need this project
    installed, at the same version as the client."""

    def __init__(self, where: str, *, connect_timeout: float | None = None) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise ClusterUnavailable("--cluster needs Dask: pip install 'sidekick-testbed[cluster]'") from None
        _quiet_logs()
        timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.where = f"the Dask cluster at {where}"
        address = where if "://" in where or re.fullmatch(r"[^/\\]+:\d+", where) else None
        try:
            if address is not None:
                self._client = Client(address, timeout=timeout, set_as_default=False)
            else:  # a scheduler file: waited for until the timeout, as the scheduler may be starting
                _wait_for_file(Path(where), timeout)
                self._client = Client(scheduler_file=where, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterUnavailable(f"no Dask scheduler at {where} ({_cause(exc)})") from None
        try:
            self._client.wait_for_workers(1, timeout=timeout)
            self.slots = max(1, sum(self._client.nthreads().values()))
        except (OSError, TimeoutError) as exc:
            self._client.close(timeout=2)
            raise ClusterUnavailable(f"no worker joined the Dask scheduler at {where} within {timeout:g} s "
                                     f"({_cause(exc)})") from None
        self._token = uuid.uuid4().hex
        self._topic = f"sidekick-report-{self._token}"
        self._stop = f"sidekick-stop-{self._token}"
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._client.subscribe_topic(self._topic, lambda event: self._events.put(("report", event[1])))
        self._client.subscribe_topic("all", lambda event: self._events.put(("cluster", event[1])))
        self._keys: dict[str, int] = {}

    def _submit(self, index: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        key = f"sidekick-{getattr(fn, '__name__', 'task')}-{self._token}-{len(self._keys)}"
        self._keys[key] = index
        future = self._client.submit(_run_on_dask, fn, args, index, self._topic, self._stop, key=key,
                                     pure=False)
        future.add_done_callback(lambda _: self._events.put(("done", index)))
        return future

    def _wait(self, running: dict[int, Any], label: Callable[[int], str]) -> list[tuple[int, str, Any]]:
        events: list[tuple[int, str, Any]] = []
        while not events:
            try:
                kind, value = self._events.get(timeout=1.0)
            except queue.Empty:
                if self._client.status in ("closing", "closed"):
                    raise WorkerLost(f"lost the connection to {self.where}") from None
                continue
            if kind == "report":
                index, payload = value
                events.append((index, "report", payload))
            elif kind == "cluster":
                self._check_removal(value, running, label)
            elif value in running:
                events.append((value, "done", self._outcome(running[value], value, label)))
        return events

    def _check_removal(self, message: Any, running: dict[int, Any], label: Callable[[int], str]) -> None:
        if not isinstance(message, dict) or message.get("action") != "remove-worker" or message.get("expected"):
            return
        lost = sorted(index for key in message.get("processing-tasks", ())
                      if (index := self._keys.get(str(key))) is not None and index in running)
        if lost:
            raise WorkerLost(f"Dask worker {message.get('worker', '?')} died while running {label(lost[0])}")

    def _outcome(self, future: Any, index: int, label: Callable[[int], str]) -> Any:
        if future.status == "cancelled":
            raise WorkerLost(f"lost the connection to {self.where} while {label(index)} was running")
        if future.status == "error":
            return _Raised(TaskFailed(f"{label(index)} failed: {_cause(future.exception())}"))
        try:
            return future.result()
        except Exception as exc:
            raise WorkerLost(f"cannot fetch the result of {label(index)} from {self.where}: {_cause(exc)}") from None

    def _abandon(self, running: dict[int, Any]) -> None:
        from distributed import Event

        if self._client.status != "running":  # the scheduler is gone, and its work with it
            return
        with contextlib.suppress(Exception):
            Event(self._stop, client=self._client).set()
        with contextlib.suppress(Exception):
            self._client.cancel(list(running.values()), force=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close(timeout=5 if self._client.status == "running" else 0.5)


def _wait_for_file(path: Path, timeout: float) -> None:
    """ClusterUnavailable unless ``path`` exists within ``timeout`` seconds (``distributed.Client``
    would wait for a scheduler file for ever)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline:
            raise ClusterUnavailable(f"no Dask scheduler file at {path} (waited {timeout:g} s for it)")
        time.sleep(0.05)


def _quiet_logs() -> None:
    """Dask's and Tornado's own log lines off: what goes wrong (a lost scheduler) is reported in
    one line by the caller."""
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in _QUIET]
    for name in {*_QUIET, *names}:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def open_executor(jobs: int, cluster: str | None = None, *, connect_timeout: float | None = None) -> Executor:
    """The executor for ``--jobs`` and ``--cluster``: the cluster when one is named, else ``jobs``
    local processes (this process alone for one)."""
    if cluster is not None:
        return DaskExecutor(cluster, connect_timeout=connect_timeout)
    return InlineExecutor() if jobs == 1 else ProcessExecutor(jobs)

