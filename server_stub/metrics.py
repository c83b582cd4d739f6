"""Server metrics, rendered in the Prometheus text exposition format for /metrics."""

from __future__ import annotations

from collections import Counter
from typing import Any

from protocol.errors import ErrorCode

__all__ = ["Histogram", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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

    def render(self, name: str) -> list[str]:
        """The ``_bucket``, ``_sum`` and ``_count`` lines."""
        lines = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


class Metrics:
    """Counters and gauges of one server."""

    def __init__(self) -> None:
        self.sessions_active = 0
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
        self.http_status: Counter[int] = Counter()
        self.durable_latency = Histogram(LATENCY_BUCKETS)

    def error_sent(self, code: int) -> None:
        """Count one ERROR frame sent."""
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"0x{code:04x}"
        self.errors_sent[name] += 1

    def render(self, storage: Any) -> str:
        """Prometheus text for this server and its storage."""
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                out.append(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}")

        metric("sidekick_sessions_active", "gauge", "Sessions in progress.", [("", self.sessions_active)])
        metric("sidekick_sessions_total", "counter", "Sessions started, by binding.",
               [(f'{{binding="{b}"}}', n) for b, n in sorted(self.sessions_total.items())] or [("", 0)])
        metric("sidekick_frames_received_total", "counter", "Frames received, by message type.",
               [(f'{{type="{t}"}}', n) for t, n in sorted(self.frames_in.items())])
        metric("sidekick_frames_sent_total", "counter", "Frames sent, by message type.",
               [(f'{{type="{t}"}}', n) for t, n in sorted(self.frames_out.items())])
        metric("sidekick_bytes_received_total", "counter", "Protocol bytes received.", [("", self.bytes_in)])
        metric("sidekick_bytes_sent_total", "counter", "Protocol bytes sent.", [("", self.bytes_out)])
        metric("sidekick_errors_sent_total", "counter", "ERROR frames sent, by code.",
               [(f'{{code="{c}"}}', n) for c, n in sorted(self.errors_sent.items())])
        metric("sidekick_limit_refusals_total", "counter", "Sessions or requests refused by a limit.",
               [(f'{{limit="{r}"}}', n) for r, n in sorted(self.refusals.items())])
        metric("sidekick_auth_failures_total", "counter", "Failed authentications.", [("", self.auth_failures)])
        metric("sidekick_commits_total", "counter", "COMMITs answered with DURABLE.", [("", self.commits)])
        metric("sidekick_changes_applied_total", "counter", "Changes covered by DURABLE.",
               [("", self.changes_applied)])
        metric("sidekick_conflicts_total", "counter", "CONFLICTs sent.", [("", self.conflicts)])
        metric("sidekick_http_responses_total", "counter", "HTTP binding responses, by status.",
               [(f'{{status="{s}"}}', n) for s, n in sorted(self.http_status.items())])
        out.append("# HELP sidekick_durable_latency_seconds COMMIT received to DURABLE sent (durable lag).")
        out.append("# TYPE sidekick_durable_latency_seconds histogram")
        out.extend(self.durable_latency.render("sidekick_durable_latency_seconds"))
        transactions = getattr(storage, "transactions", None)
        if transactions is not None:
            metric("sidekick_storage_transactions_total", "counter",
                   "Storage transactions committed (one fsync each).", [("", transactions)])
        sizes = getattr(storage, "batch_sizes", None)
        if sizes:
            out.append("# HELP sidekick_commit_batch_size Write requests per storage transaction.")
            out.append("# TYPE sidekick_commit_batch_size histogram")
            histogram = Histogram((1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
            for size, count in sizes.items():
                histogram.observe(size, count)
            out.extend(histogram.render("sidekick_commit_batch_size"))
        metric("sidekick_generation", "gauge", "Current store generation.", [("", storage.generation)])
        return "\n".join(out) + "\n"
