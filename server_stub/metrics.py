"""Server metrics, rendered in the Prometheus text exposition format for /metrics.

The server counts in plain attributes (no locks, no per-sample objects on the session path);
``Metrics.render`` turns them into metric families and prometheus_client writes the text, so
names, types, label escaping and number formats follow the format's own implementation. Beside
the server's families come prometheus_client's ``process_*`` (CPU time, memory, open and maximum
file descriptors, start time: read from /proc where the platform has it) and ``python_info``,
and ``sidekick_build_info``. The store's generation is a label of ``sidekick_store_info``, never a
sample value: a sample is a float64, exact only to 2**53, and generations are 64-bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.framing import PROTOCOL_VERSION

__all__ = ["CONTENT_TYPE", "Histogram", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The exposition format /metrics answers in (0.0.4: every Prometheus reads it)."""


def _version() -> str:
    try:
        return metadata.version("sidekick-testbed")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "unknown"


class Histogram:
    """A cumulative histogram with fixed upper bounds."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        """Add ``times`` observations of ``value``."""
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += times
                break
        else:
            self.counts[-1] += times
        self.total += value * times
        self.count += times

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram as a metric family (cumulative buckets, ``+Inf`` last)."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((f"{bound:g}", running))
        buckets.append(("+Inf", self.count))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled_counter(name: str, documentation: str, label: str, values: dict[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


class Metrics:
    """Counters and gauges of one server."""

    def __init__(self) -> None:
        self.sessions_active = 0
        self.sessions_authenticated = 0
        self.handshakes_active = 0
        self.sessions_total: Counter[str] = Counter()     # by binding
        self.frames_in: Counter[str] = Counter()          # by message type
        self.frames_out: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors_sent: Counter[str] = Counter()        # by error code name
        self.refusals: Counter[str] = Counter()           # by limit
        self.commits = 0
        self.changes_applied = 0
        self.conflicts = 0
        self.auth_failures = 0
        self.pings = 0
        self.http_connections = 0
        self.http_status: Counter[int] = Counter()
        self.durable_latency = Histogram(LATENCY_BUCKETS)
        self._registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        self._store: Any = None

    def error_sent(self, code: int) -> None:
        """Count one ERROR frame sent."""
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"0x{code:04x}"
        self.errors_sent[name] += 1

    def render(self, storage: Any) -> str:
        """Prometheus text for this server and its storage."""
        self._store = storage
        try:
            self._registry.register(self)
            return generate_latest(self._registry).decode()
        finally:
            self._registry.unregister(self)
            self._store = None

    def collect(self) -> Iterator[Metric]:
        """The server's metric families (prometheus_client's collector interface)."""
        yield GaugeMetricFamily("sidekick_sessions_active", "Sessions in progress, authenticated or not.",
                                value=self.sessions_active)
        yield GaugeMetricFamily("sidekick_sessions_authenticated", "Sessions past HELLO_OK (bounded by max_sessions).",
                                value=self.sessions_authenticated)
        yield GaugeMetricFamily("sidekick_handshakes_active",
                                "Connections and HTTP sessions holding a place before authentication.",
                                value=self.handshakes_active)
        yield _labelled_counter("sidekick_sessions", "Sessions started, by binding.", "binding", self.sessions_total)
        yield _labelled_counter("sidekick_frames_received", "Frames received, by message type.", "type", self.frames_in)
        yield _labelled_counter("sidekick_frames_sent", "Frames sent, by message type.", "type", self.frames_out)
        yield _counter("sidekick_bytes_received", "Protocol bytes received.", self.bytes_in)
        yield _counter("sidekick_bytes_sent", "Protocol bytes sent.", self.bytes_out)
        yield _labelled_counter("sidekick_errors_sent", "ERROR frames sent, by code.", "code", self.errors_sent)
        yield _labelled_counter("sidekick_limit_refusals", "Sessions, connections or requests refused by a limit.",
                                "limit", self.refusals)
        yield _counter("sidekick_auth_failures", "Failed authentications (throttled ones included).", self.auth_failures)
        yield _counter("sidekick_pings", "PINGs sent to idle sessions (R-STATE-7).", self.pings)
        yield _counter("sidekick_commits", "COMMITs answered with DURABLE.", self.commits)
        yield _counter("sidekick_changes_applied", "Changes covered by DURABLE.", self.changes_applied)
        yield _counter("sidekick_conflicts", "CONFLICTs sent.", self.conflicts)
        yield _counter("sidekick_http_connections", "HTTP binding connections accepted.", self.http_connections)
        yield _labelled_counter("sidekick_http_responses", "HTTP binding responses, by status.", "status",
                                self.http_status)
        yield self.durable_latency.family("sidekick_durable_latency_seconds",
                                          "COMMIT received to DURABLE sent (durable lag).")
        storage = self._store
        transactions = getattr(storage, "transactions", None)
        if transactions is not None:
            yield _counter("sidekick_storage_transactions", "Storage transactions committed (one fsync each).",
                           transactions)
        sizes = getattr(storage, "batch_sizes", None)
        if sizes:
            histogram = Histogram(BATCH_BUCKETS)
            for size, count in sizes.items():
                histogram.observe(size, count)
            yield histogram.family("sidekick_commit_batch_size", "Write requests per storage transaction.")
        if storage is not None:
            yield InfoMetricFamily("sidekick_store", "The store's identity: its generation and server id, as labels.",
                                   value={"generation": f"{storage.generation:#018x}",
                                          "server_id": storage.server_id.hex()})
        yield InfoMetricFamily("sidekick_build", "The server's build.",
                               value={"version": _version(), "protocol": str(PROTOCOL_VERSION)})
