"""A tiny Prometheus registry (counters, gauges, histograms) rendered as text for /metrics."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000)


def _fmt_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self._values:
            lines.append(f"{self.name} 0")
        lines += [f"{self.name}{_fmt_labels(k)} {v:g}" for k, v in sorted(self._values.items())]
        return lines


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.read():g}"]


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., then sum, then count
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(self.buckets) + 2)
            idx = bisect.bisect_left(self.buckets, value)
            if idx < len(self.buckets):
                series[idx] += 1
            series[-2] += value
            series[-1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, series in sorted(self._series.items()):
            running = 0.0
            for bound, count in zip(self.buckets, series, strict=False):
                running += count
                le = f'le="{bound:g}"'
                lines.append(f"{self.name}_bucket{_fmt_labels(key, le)} {running:g}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_fmt_labels(key, inf)} {series[-1]:g}")
            lines.append(f"{self.name}_sum{_fmt_labels(key)} {series[-2]:g}")
            lines.append(f"{self.name}_count{_fmt_labels(key)} {series[-1]:g}")
        return lines


class Metrics:
    """Every metric llmlens exports; one instance per app, passed to the parts that record."""

    def __init__(self) -> None:
        self.events_accepted = Counter("llmlens_events_accepted_total", "Events accepted into the spool, by source.")
        self.events_written = Counter("llmlens_events_written_total", "Events inserted into ClickHouse.")
        self.events_rejected = Counter("llmlens_events_rejected_total", "Events ClickHouse refused as bad data (set aside).")
        self.events_dropped = Counter("llmlens_events_dropped_total", "Proxy events not logged because the spool was full.")
        self.insert_errors = Counter("llmlens_insert_errors_total", "Failed ClickHouse inserts (retried).")
        self.batch_rows = Histogram("llmlens_insert_batch_rows", "Rows per ClickHouse insert.", SIZE_BUCKETS)
        self.insert_seconds = Histogram("llmlens_insert_seconds", "Time per ClickHouse insert.", LATENCY_BUCKETS)
        self.http_requests = Counter("llmlens_http_requests_total", "HTTP requests by route and status.")
        self.queries = Histogram("llmlens_query_seconds", "ClickHouse query time by query name.", LATENCY_BUCKETS)
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def observe_query(self, name: str, rows: int, seconds: float) -> None:
        self.queries.observe(seconds, query=name)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.events_accepted, self.events_written, self.events_rejected, self.events_dropped, self.insert_errors,
            self.batch_rows, self.insert_seconds, self.http_requests, self.queries,
        ):
            lines += metric.render()
        for g in self.gauges:
            lines += g.render()
        return "\n".join(lines) + "\n"
